"""What dampit's console scripts share: arguments, checks, inputs, errors.

A user error ends a command with one line on stderr and exit status 2
(its traceback with ``--verbose``); warnings are one line too.
"""

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import tempfile
import warnings
from os.path import isfile

import numpy as np
import torch

from dampit.dataio.audio import AUDIO_EXTENSIONS, AudioError
from dampit.dataio.preparation import DataPreparationError, scan_audio_tree
from dampit.dataio.trials import TrialListError, utf8_lines, utt_to_id
from dampit.inference.api import ModelFolderError, load_model
from dampit.inference.embedding_store import check_id
from dampit.inference.export import ExportError
from dampit.inference.profiles import ProfileError
from dampit.utils.file_lock import LockError, output_lock

USER_ERRORS = (
    AudioError,
    DataPreparationError,
    ExportError,
    LockError,
    ModelFolderError,
    ProfileError,
    TrialListError,
)


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


FINITE = _checked(float, math.isfinite, "need a finite number")
DEVICE = _checked(str, _device_ok, "not an available cpu or cuda:N device")
POSITIVE = _checked(int, lambda n: n >= 1, "need an integer >= 1")
SEED = _checked(int, lambda n: n >= 0, "need an integer >= 0")
RATE = _checked(float, lambda x: 0 < x < 1, "need a rate between 0 and 1")
SECONDS = _checked(
    float, lambda x: math.isfinite(x) and x > 0, "need seconds > 0"
)


class Parser(argparse.ArgumentParser):
    """dampit's parser: model arguments (unless not ``model``),
    ``--verbose``, one-line errors (exit 2), and ``examples`` (text as
    written) after the options in ``--help``.

    Example
    -------
    >>> parser = Parser("dampit-x", "Do x.", "  dampit-x --model m")
    >>> parser.parse_args(["--model", "m"]).batch_size
    16
    >>> parser.format_help().splitlines()[-1]
    '  dampit-x --model m'
    """

    def __init__(self, prog, description, examples=None, model=True):
        super().__init__(
            prog=prog,
            description=description,
            epilog=examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add = self.add_argument
        if model:
            add("--model", required=True, help="model folder (dampit-export)")
            add("--device", default="cpu", type=DEVICE, help="cpu, cuda:0...")
            add("--trust", action="store_true", help="from_hparams: runs YAML")
            add(
                "--batch-size",
                default=16,
                type=POSITIVE,
                help="files per batch",
            )
            add("--no-progress", action="store_true")
        add("--verbose", action="store_true", help="show error tracebacks")

    def error(self, message):
        """Exit 2 with one line (no usage)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def check_args(args, out_folder):
    """Before any work: ``--out`` is new or a folder (``out_folder``) or
    a regular file (else: a device or pipe would be replaced), its name
    has no line break, its folder takes a new file; ``--model`` exists."""
    if args.out:
        out = os.path.abspath(args.out)
        if out_folder and os.path.exists(out) and not os.path.isdir(out):
            raise CliError(f"--out {out} is not a folder")
        if not out_folder and os.path.isdir(out):
            raise CliError(f"--out {out} is a folder")
        if not out_folder and os.path.exists(out) and not isfile(out):
            raise CliError(
                f"--out {out} is not a regular file (a device, a pipe): it "
                "would be replaced (- writes to standard output)"
            )
        if out.splitlines() != [out]:
            raise CliError(f"--out {out!r}: the name has a line break")
        parent = os.path.dirname(out)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        try:
            tempfile.TemporaryFile(dir=parent).close()
        except OSError as err:
            raise CliError(f"--out {out}: cannot write in {parent}: {err}")
    if not os.path.isdir(args.model):
        raise CliError(f"--model {args.model}: folder not found")


def first_line(path):
    """The first line of a file (at most 4096 bytes), read as UTF-8."""
    with open(path, "rb") as f:
        return f.readline(4096).decode("utf-8", "replace")


def check_out_file(out, inputs, folders, own, what):
    """Before any work: the ``--out`` file replaces only what the command
    wrote. Refused in one line: one of ``inputs`` (``(name, path)``
    pairs; a None path is skipped), a path inside one of ``folders``
    (``(argument, folder)`` pairs), an existing non-empty file for which
    ``own(path)`` is false (``what`` names the command's output).

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> notes = os.path.join(d, "notes.txt")
    >>> _ = open(notes, "w").write("mine\\n")
    >>> check_out_file(notes, [], [], lambda p: False, "a report")
    Traceback (most recent call last):
    ...
    dampit.cli.common.CliError: --out ... is not a report: nothing replaced
    >>> check_out_file(notes, [], [("--model", d)], None, "a report")
    Traceback (most recent call last):
    ...
    dampit.cli.common.CliError: --out ... inside --model ...: nothing replaced
    """
    real = os.path.realpath(out)
    for name, path in inputs:
        if path and os.path.realpath(path) == real:
            raise CliError(f"--out {out} is the {name} file: nothing replaced")
    for flag, folder in folders:
        folder = os.path.realpath(folder)
        if os.path.commonpath([real, folder]) == folder:
            raise CliError(
                f"--out {out} is inside {flag} {folder}: nothing replaced"
            )
    if os.path.isfile(real) and os.path.getsize(real) > 0 and not own(real):
        raise CliError(f"--out {out} is not {what}: nothing replaced")


def _list_file(path):
    """``(id, path, origin)`` of a list file's lines (UTF-8, BOM or not);
    a line ``ID<TAB>`` without a path is refused naming it."""
    items, base = [], os.path.dirname(os.path.abspath(path))
    for n, text in utf8_lines(path):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        uid, _, wav = (s.strip() for s in text.rpartition("\t"))
        if not wav:
            raise CliError(f"{path}:{n}: no audio path after the tab")
        if not isfile(full := os.path.join(base, wav)):
            raise CliError(f"{path}:{n}: audio file not found: {wav}")
        items.append((uid or utt_to_id(wav), full, f"{path}:{n}"))
    return items


def list_audio_inputs(inputs, ids=True):
    """``(id, path)`` of audio files, folders (``scan_audio_tree``: searched
    recursively, hidden names skipped; ID: ``utt_to_id`` of the relative
    path) and list files (a path, relative to the list, or ``ID<TAB>path``
    a line). A file name with a line break or an ID that ``ids.txt``
    cannot hold is refused here, before any work. The same file (its real
    path) under the same ID again (a file, folder or list line given
    twice) is kept once; an ID of two different files is refused. With
    ``ids`` False (enrolment: IDs name nothing), each file's ID is its real
    path, so that only repeats of one file are dropped.

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(d, "spk1"))
    >>> open(os.path.join(d, "spk1", "a.wav"), "wb").close()
    >>> list_audio_inputs([d]) == [("spk1/a", os.path.join(d, "spk1", "a.wav"))]
    True
    >>> len(list_audio_inputs([d, d]))
    1
    """
    found, seen, kept = [], {}, []
    for arg in inputs:
        if os.path.isdir(arg):
            tree = scan_audio_tree(arg, min_depth=1)
            tree = [(r, os.path.join(arg, *r.split("/"))) for r in tree]
            tree = [(utt_to_id(r), p, p) for r, p in tree if isfile(p)]
            if not tree:
                raise CliError(f"no {'/'.join(AUDIO_EXTENSIONS)} under {arg}")
            found += tree
        elif not isfile(arg):
            raise CliError(f"input not found: {arg}")
        elif os.path.splitext(arg)[1].lower() in AUDIO_EXTENSIONS:
            found.append((utt_to_id(arg), arg, arg))
        elif not (listed := _list_file(arg)):
            raise CliError(f"{arg}: lists no audio files")
        else:
            found += listed
    for uid, path, origin in found:
        if path.splitlines() != [path]:
            raise CliError(f"{origin!r}: the file name has a line break")
        real = os.path.realpath(path)
        if not ids:
            uid = real
        try:
            check_id(uid)
        except ValueError as err:
            raise CliError(f"{origin}: {err}") from None
        if uid not in seen:
            seen[uid] = (real, origin)
            kept.append((uid, path))
        elif seen[uid][0] != real:
            raise CliError(
                f"{origin}: duplicate ID {uid!r} (also {seen[uid][1]})"
            )
    return kept


@contextlib.contextmanager
def writing(path):
    """Turn an OSError (disk full, read-only) into one naming ``path``."""
    try:
        yield
    except OSError as err:
        msg = err.strerror or str(err)
        if path not in msg:
            msg = f"cannot write {path}: {msg}"
        name = err.filename
        if isinstance(name, str) and name not in msg:
            msg = f"{msg} ({name})"  # the file inside ``path``
        raise CliError(msg)


def hold_output(stack, path):
    """Lock the output ``path`` for this command until ``stack`` closes
    (:func:`dampit.utils.file_lock.output_lock`): another command writing
    it raises ``LockError``; a folder where no lock can be made, one line.
    """
    with writing(path):
        stack.enter_context(output_lock(path))


def open_model(args):
    """``load_model`` of ``--model`` on ``--device`` (``--trust``)."""
    return load_model(args.model, device=args.device, trust=args.trust)


def embed(model, items, args):
    """``(ids, [N, D] embeddings)`` of ``items``; the model refuses
    non-finite ones (``ModelFolderError``, as in the Python API)."""
    return model.embed_files(items, args.batch_size, not args.no_progress)


def embed_paths(model, paths, args):
    """``(embeddings, rows)`` of audio ``paths`` (a trial list's files):
    each distinct path embedded once, ``embeddings[rows[k]]`` that of
    ``paths[k]``."""
    files = {p: k for k, p in enumerate(dict.fromkeys(paths))}
    _, emb = embed(model, list(files), args)
    return emb, np.array([files[p] for p in paths])


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def terminated_as_exit():
    """SIGTERM (``kill``, a job scheduler) raises ``SystemExit`` in the
    main thread, so that what a command was writing is cleaned up as on an
    error (elsewhere, or outside the main thread: nothing changes)."""
    try:
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(prog, args, work):
    """``work()``'s exit status; a user error prints one line, returns 2."""
    log = logging.StreamHandler()  # dampit's logged warnings, one line
    log.setFormatter(logging.Formatter(f"{prog}: warning: %(message)s"))
    log.setLevel(logging.WARNING)
    logging.getLogger().addHandler(log)
    with warnings.catch_warnings(), terminated_as_exit():
        warnings.showwarning = lambda msg, *_: log.stream.write(
            f"{prog}: warning: {msg}\n"
        )
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
