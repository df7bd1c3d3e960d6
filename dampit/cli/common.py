"""What dampit's console scripts share: arguments, checks, inputs, errors.

A user error ends a command with one line on stderr and exit status 2
(its traceback with ``--verbose``); warnings are one line too.
"""

import argparse
import contextlib
import glob
import logging
import math
import os
import sys
import tempfile
import warnings
from os.path import isfile

import numpy as np
import torch

from dampit.dataio.audio import AUDIO_EXTENSIONS, AudioError
from dampit.dataio.trials import TrialListError, utt_to_id
from dampit.inference.api import ModelFolderError, load_model

USER_ERRORS = (AudioError, ModelFolderError, TrialListError)


class CliError(ValueError):
    """Bad command-line input; the message names the file/line/argument."""


def _checked(convert, ok, what):
    """An argparse type: ``convert(text)`` if ``ok`` of it, else ``what``."""

    def parse(text):
        with contextlib.suppress(ValueError, RuntimeError):
            if ok(value := convert(text)):
                return value
        raise argparse.ArgumentTypeError(f"{what}, got {text!r}")

    return parse


def _device_ok(text):
    dev, n_gpus = torch.device(text), torch.cuda.device_count()
    return dev.type == "cpu" or dev.type == "cuda" and (dev.index or 0) < n_gpus


finite_float = _checked(float, math.isfinite, "need a finite number")


class Parser(argparse.ArgumentParser):
    """dampit's parser: model arguments, one-line errors (exit 2)."""

    def __init__(self, prog, description):
        super().__init__(prog=prog, description=description)
        self.add_argument("--model", required=True, help="model folder")
        self.add_argument(
            "--device",
            default="cpu",
            type=_checked(str, _device_ok, "not an available cpu/cuda:N"),
        )
        self.add_argument(
            "--trust",
            action="store_true",
            help="load with SpeechBrain's from_hparams, which runs the "
            "folder's hyperparams.yaml: only for folders you trust",
        )
        self.add_argument(
            "--batch-size",
            default=16,
            type=_checked(int, lambda n: n >= 1, "need an integer >= 1"),
        )
        self.add_argument("--no-progress", action="store_true")
        self.add_argument("--verbose", action="store_true", help="tracebacks")

    def error(self, message):
        """Exit 2 with one line (no usage)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def check_args(args, out_folder):
    """Check ``--out`` and ``--model`` before any work.

    ``--out`` must not be a folder (file) or a file (folder), and the
    folder it goes in must take a new file.
    """
    out = os.path.abspath(args.out or ".")
    if args.out and os.path.exists(out) and os.path.isdir(out) != out_folder:
        raise CliError(f"--out {out} is {'not ' * out_folder}a folder")
    parent = os.path.dirname(out)
    while args.out and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as err:
        raise CliError(f"--out {out}: cannot write in {parent}: {err}")
    if not os.path.isdir(args.model):
        raise CliError(f"--model {args.model}: folder not found")


def read_lines(path):
    """Yield ``(line_number, text)`` of a UTF-8 file (BOM allowed).

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "l.txt")
    >>> _ = open(p, "wb").write(b"\\xef\\xbb\\xbfa b\\n")
    >>> list(read_lines(p))
    [(1, 'a b')]
    """
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise CliError(f"{path}:{n}: not UTF-8 ({err.reason})")
            yield n, text.rstrip("\r\n")


def _is_audio(path):
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def _list_file(path):
    """``(id, path, origin)`` of a list file's lines."""
    base, items = os.path.dirname(os.path.abspath(path)), []
    for n, text in read_lines(path):
        uid, _, wav = (s.strip() for s in text.rpartition("\t"))
        if wav and not text.lstrip().startswith("#"):
            full = os.path.join(base, wav)  # unchanged when absolute
            if not os.path.isfile(full):
                raise CliError(f"{path}:{n}: audio file not found: {wav}")
            items.append((uid or utt_to_id(wav), full, f"{path}:{n}"))
    return items


def list_audio_inputs(inputs):
    """Expand folders, list files and audio files into ``(id, path)``.

    Folders are searched recursively (ID: relative path without
    extension); audio files give their path without extension; list files
    have one path a line (relative to the list) or ``ID<TAB>path``.

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(d, "spk1"))
    >>> open(os.path.join(d, "spk1", "a.wav"), "wb").close()
    >>> list_audio_inputs([d]) == [("spk1/a", os.path.join(d, "spk1", "a.wav"))]
    True
    """
    found, seen = [], {}
    for arg in inputs:
        if os.path.isdir(arg):
            tree = glob.glob(os.path.join(arg, "**", "*"), recursive=True)
            tree = [p for p in sorted(tree) if _is_audio(p) and isfile(p)]
            found += [(utt_to_id(os.path.relpath(p, arg)), p, p) for p in tree]
            if not tree:
                raise CliError(f"no {'/'.join(AUDIO_EXTENSIONS)} under {arg}")
        elif _is_audio(arg) or not isfile(arg):
            if not isfile(arg):
                raise CliError(f"input not found: {arg}")
            found.append((utt_to_id(arg), arg, arg))
        elif not (listed := _list_file(arg)):
            raise CliError(f"{arg}: lists no audio files")
        else:
            found += listed
    for uid, _, origin in found:
        if seen.setdefault(uid, origin) != origin:
            raise CliError(f"{origin}: duplicate ID {uid!r} (also {seen[uid]})")
    return [(uid, path) for uid, path, _ in found]


@contextlib.contextmanager
def writing(path):
    """Turn an OSError (disk full, read-only) into one naming ``path``."""
    try:
        yield
    except OSError as err:
        msg = err.strerror or str(err)
        raise CliError(msg if path in msg else f"cannot write {path}: {msg}")


def open_model(args):
    """``load_model`` of ``--model`` on ``--device`` (``--trust``)."""
    return load_model(args.model, device=args.device, trust=args.trust)


def embed(model, items, args):
    """``(ids, [N, D] embeddings)`` of ``items``; non-finite ones refused."""
    ids, emb = model.embed_files(items, args.batch_size, not args.no_progress)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise CliError(
            f"{args.model}: the model gives NaN/inf embeddings "
            f"({bad.sum()} of {len(ids)} files): broken weights"
        )
    return ids, emb


def run(prog, args, work):
    """``work()``'s exit status; a user error prints one line, returns 2."""

    def show(message, *_, **__):
        print(f"{prog}: warning: {message}", file=sys.stderr)

    log = logging.StreamHandler()  # warnings of dampit's loggers, one line
    log.setLevel(logging.WARNING)
    log.setFormatter(logging.Formatter(f"{prog}: warning: %(message)s"))
    logging.getLogger().addHandler(log)
    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            return work()
        except (CliError, *USER_ERRORS) as err:
            if args.verbose:
                raise
            msg = "; ".join(filter(None, map(str.strip, str(err).split("\n"))))
            print(f"{prog}: error: {msg}", file=sys.stderr)
            return 2
        finally:
            logging.getLogger().removeHandler(log)
