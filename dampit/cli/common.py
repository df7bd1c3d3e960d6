"""Helpers shared by dampit's console scripts: inputs, model, errors."""

import logging
import os
import sys

from dampit.dataio.trials import AUDIO_EXTENSIONS, utt_to_id

__all__ = [
    "CliError",
    "add_model_args",
    "fail",
    "list_audio_inputs",
    "open_model",
]


class CliError(ValueError):
    """Bad command-line input; the message names the file/line/argument."""


def add_model_args(parser):
    """Add ``--model``, ``--device``, ``--trust`` and ``--batch-size``.

    Arguments
    ---------
    parser : argparse.ArgumentParser
        The parser to extend.

    Example
    -------
    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_model_args(p)
    >>> p.parse_args(["--model", "m"]).trust
    False
    """
    parser.add_argument(
        "--model", required=True, help="exported model folder (dampit-export)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda:0...")
    parser.add_argument(
        "--trust",
        action="store_true",
        help="load the model even if its hyperparams.yaml uses tags outside "
        "dampit's allow-list (it can then run arbitrary code)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="files per forward pass"
    )


def open_model(args):
    """Load ``args.model`` (see :func:`dampit.inference.api.load_model`).

    Arguments
    ---------
    args : argparse.Namespace
        With ``model``, ``device`` and ``trust``.

    Returns
    -------
    dampit.inference.api.DampitSpeakerRecognition
        The loaded model.
    """
    from dampit.inference.api import load_model

    logging.getLogger("speechbrain").setLevel(logging.WARNING)
    return load_model(args.model, device=args.device, trust=args.trust)


def _is_audio(path):
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def _scan_folder(folder, exts):
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in exts:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, folder).replace(os.sep, "/")
                found.append((utt_to_id(rel), path))
    return found


def _read_list(path):
    items = []
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.rstrip("\n").rstrip("\r")
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            if "\t" in text:
                uid, wav = (t.strip() for t in text.split("\t", 1))
            else:
                wav = text.strip()
                uid = utt_to_id(wav)
            full = wav if os.path.isabs(wav) else os.path.join(base, wav)
            items.append((uid, full, f"{path}:{lineno}"))
    return items


def list_audio_inputs(inputs, exts=(".wav", ".flac")):
    """Expand folders, list files and audio files into ``(id, path)``.

    Arguments
    ---------
    inputs : list of str
        Each is a folder (searched recursively for ``exts``; IDs are the
        relative paths without extension), an audio file (ID: its path
        without extension) or a list file: one audio path a line (relative
        to the list's folder; ID: the path without extension) or
        ``ID<TAB>path``; blank lines and ``#`` comments are skipped.
    exts : tuple of str
        Extensions searched in folders.

    Returns
    -------
    list of tuple
        ``(id, path)`` in input order.

    Raises
    ------
    CliError
        For a missing input, an empty folder, missing listed files (with
        their list line) or duplicate IDs.

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(d, "spk1"))
    >>> open(os.path.join(d, "spk1", "a.wav"), "wb").close()
    >>> list_audio_inputs([d]) == [("spk1/a", os.path.join(d, "spk1", "a.wav"))]
    True
    """
    exts = tuple(e.lower() for e in exts)
    items, origin = [], {}
    for arg in inputs:
        if os.path.isdir(arg):
            found = _scan_folder(arg, exts)
            if not found:
                raise CliError(f"no {'/'.join(exts)} files under {arg}")
            for uid, path in found:
                items.append((uid, path))
                origin.setdefault(uid, []).append(path)
        elif _is_audio(arg):
            uid = utt_to_id(arg)
            items.append((uid, arg))
            origin.setdefault(uid, []).append(arg)
        elif os.path.isfile(arg):
            listed = _read_list(arg)
            if not listed:
                raise CliError(f"list file {arg} names no audio files")
            missing = [
                (w, where) for _, w, where in listed if not os.path.isfile(w)
            ]
            if missing:
                shown = "; ".join(f"{where}: {w}" for w, where in missing[:5])
                more = (
                    f" (and {len(missing) - 5} more)"
                    if len(missing) > 5
                    else ""
                )
                raise CliError(
                    f"{len(missing)} listed audio file(s) not found: "
                    f"{shown}{more}"
                )
            for uid, path, where in listed:
                items.append((uid, path))
                origin.setdefault(uid, []).append(where)
        else:
            raise CliError(f"input not found: {arg}")
    dups = {u: w for u, w in origin.items() if len(w) > 1}
    if dups:
        uid, where = next(iter(dups.items()))
        raise CliError(
            f"{len(dups)} duplicate utterance ID(s), e.g. {uid!r} from "
            f"{', '.join(where[:3])}; give IDs explicitly (ID<TAB>path lines)"
        )
    return items


def fail(prog, err, code=2):
    """Print ``prog: error: err`` to stderr and return ``code``.

    Arguments
    ---------
    prog : str
        Program name.
    err : Exception or str
        The error.
    code : int
        Exit status returned.

    Returns
    -------
    int
        ``code``.

    Example
    -------
    >>> fail("dampit-x", "bad", 3)
    3
    """
    print(f"{prog}: error: {err}", file=sys.stderr)
    return code
