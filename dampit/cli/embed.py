"""``dampit-embed``: embed audio files with an exported model.

::

    dampit-embed --model model/ data/wavs/ files.txt a.wav --out emb/
    dampit-embed --model model/ meeting.wav --out windows/ --window 1.5

Inputs are folders (searched recursively for audio files), audio files or
list files (one path a line, or ``ID<TAB>path``). ``--out`` becomes an
embedding store (:mod:`dampit.inference.embedding_store`: ``embeddings.npy``
``[N, D]``, ``ids.txt``, ``paths.txt``), replaced as one unit (a folder
that is not an embedding store, or is a profile store of
``dampit-enroll``, is refused before the work); a second
``dampit-embed`` into the same ``--out`` while one runs is refused in one
line, before its work. A file name with a line break is refused before
the work too, and so is an ID of two different files (the same file
given twice is embedded once); a file whose header cannot be read is
refused before the first forward pass. A bad file
(missing, not audio, empty, silent, shorter than 400 samples) stops the
run naming it, unless ``--skip-bad`` leaves it out (listed in
``bad_files.txt``). Other sample rates are resampled, channels averaged.

``--window S`` embeds windows of ``S`` seconds, one every ``--hop``
seconds (default ``S``), of files of any length, read block by block
(:mod:`dampit.dataio.windows`): a row a window, its ID
``file_id@start-end``, and ``segments.tsv`` (ID, file ID, start, end);
the last windows of a file are kept when they last half a window or
more, and a file shorter than half a window is bad. ``--trim`` leaves
out the windows with too little speech (an energy measure relative to
the file's own loud frames).
"""

import contextlib
import os
import sys
import warnings

from dampit.cli import common
from dampit.dataio.audio import AudioError, check_audio, load_audio
from dampit.dataio.windows import header_windows
from dampit.inference import embedding_store as store
from dampit.inference import profiles
from dampit.inference.extract import check_windows

PROG = "dampit-embed"
EXAMPLES = """examples:
  dampit-embed --model model/ wavs/ a.wav files.txt --out emb/
  dampit-embed --model model/ meeting.wav --out windows/ --window 1.5
  dampit-embed --model model/ calls/ --out windows/ --window 3 --hop 1.5 \\
      --trim
With --window: one row a window, its ID 'file_id@start-end' (seconds),
and segments.tsv in --out (id, file, start, end)."""


def _check_file(path, sample_rate, window):
    """Raise ``AudioError`` for a file that cannot be embedded: whole
    (``window`` None: decoded) or by windows (a block-wise check)."""
    if window is None:
        load_audio(path, sample_rate, min_samples=400)
    else:
        check_audio(path, window / 2, sample_rate)


def _drop_bad(items, sample_rate, window):
    good, bad = [], ""
    for uid, path in items:
        try:
            with warnings.catch_warnings(action="ignore"):
                _check_file(path, sample_rate, window)
            good.append((uid, path))
        except AudioError as err:
            warnings.warn(f"skipping {path}: {err}", stacklevel=1)
            bad += f"{path}\t{err}\n"
    if not good:
        raise common.CliError("every input file is bad; nothing to embed")
    return good, bad


def _check_window_args(args, sample_rate=None):
    """``--window`` / ``--hop`` / ``--trim``, before any work."""
    if args.window is None and args.hop is not None:
        raise common.CliError("--hop needs --window")
    if args.window is None and args.trim:
        raise common.CliError("--trim needs --window")
    if args.window is None:
        return
    try:
        check_windows(args.window, args.hop, sample_rate)
    except ValueError as err:
        raise common.CliError(
            f"--window {args.window:g} --hop {args.hop:g}: {err}"
        ) from None


def _embed(args):
    common.check_args(args, out_folder=True)
    if args.window is not None and args.hop is None:
        args.hop = args.window
    _check_window_args(args)
    names = os.listdir(args.out) if os.path.isdir(args.out) else []
    if names and not {store.EMBEDDINGS_FILE, store.IDS_FILE} <= set(names):
        raise common.CliError(f"--out {args.out} is not an embedding store")
    if profiles.META_FILE in names:
        raise common.CliError(
            f"--out {args.out} is a profile store (dampit-enroll): nothing "
            "replaced"
        )
    items = common.list_audio_inputs(args.inputs)
    if args.window is not None:
        for uid, path in items:
            if "\t" in uid:
                raise common.CliError(
                    f"{path}: ID {uid!r} has a tab (segments.tsv is "
                    "tab-separated)"
                )
    with contextlib.ExitStack() as stack:
        common.hold_output(stack, args.out)  # a second writer: refused now
        return _embed_into(args, items)


def _embed_into(args, items):
    warnings.filterwarnings("ignore", ".*threshold")  # embed decides nothing
    model = common.open_model(args)
    _check_window_args(args, model.sample_rate)
    bad = ""
    if args.skip_bad:
        items, bad = _drop_bad(items, model.sample_rate, args.window)
    if args.window is None:
        ids, emb = common.embed(model, items, args)
        files = {"paths.txt": "".join(f"{p}\n" for _, p in items)}
        what = ""
    else:
        ids, emb, files, what = _embed_windows(model, items, args)
    if bad:
        files["bad_files.txt"] = bad
    with common.writing(args.out):
        store.save_embeddings(args.out, ids, emb, files)
    skipped = f"; {bad.count(chr(10))} bad file(s) skipped" if bad else ""
    print(
        f"[dampit] {len(ids)} embeddings of size {emb.shape[1]} -> "
        f"{args.out} (embeddings.npy, ids.txt){what}{skipped}"
    )
    return 0


def _embed_windows(model, items, args):
    """``(ids, embeddings, files, note)`` of the windows: the store's text
    files, and what the summary line adds."""
    ids, segments, emb = model.embed_windows(
        items,
        args.window,
        args.hop,
        args.trim,
        args.batch_size,
        not args.no_progress,
    )
    total = sum(header_windows(p, args.window, args.hop) for _, p in items)
    if not ids:
        raise common.CliError(
            f"--trim left out all {total} windows of the input: no speech "
            "found; nothing written"
        )
    path = dict(items)
    files = {
        "paths.txt": "".join(f"{path[f]}\n" for f, _, _ in segments),
        store.SEGMENTS_FILE: store.segments_text(ids, segments),
    }
    note = (
        f"; windows of {args.window:g} s every {args.hop:g} s in segments.tsv"
    )
    if args.trim:
        note += f", {total - len(ids)} of {total} left out by --trim"
    return ids, emb, files, note


def main(argv=None):
    """Run ``dampit-embed``; returns 0, or 2 on bad input."""
    parser = common.Parser(
        PROG, "Embed audio files, or windows of them, with a model.", EXAMPLES
    )
    add = parser.add_argument
    add("inputs", nargs="+", help="folders, list files, audio files")
    add("--out", required=True, help="embedding store folder to write")
    add("--skip-bad", action="store_true", help="leave out bad audio files")
    add("--window", type=common.SECONDS, metavar="S", help="window seconds")
    add("--hop", type=common.SECONDS, metavar="S", help="seconds between")
    add("--trim", action="store_true", help="leave out silent windows")
    args = parser.parse_args(argv)
    return common.run(PROG, args, lambda: _embed(args))


if __name__ == "__main__":
    sys.exit(main())
