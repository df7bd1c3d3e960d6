"""``dampit-embed``: embed audio files with an exported model.

::

    dampit-embed --model model/ data/wavs/ files.txt a.wav --out emb/

Inputs are folders (searched recursively for audio files), audio files or
list files (one path a line, or ``ID<TAB>path``). ``--out`` becomes an
embedding store (:mod:`dampit.metrics.embedding_store`: ``embeddings.npy``
``[N, D]``, ``ids.txt``, ``paths.txt``), replaced as one unit; a second
``dampit-embed`` into the same ``--out`` while one runs is refused in one
line, before its work. A file name with a line break is refused before
the work too. A bad file
(missing, not audio, empty, silent, shorter than 400 samples) stops the
run naming it, unless ``--skip-bad`` leaves it out (listed in
``bad_files.txt``). Other sample rates are resampled, channels averaged.
"""

import contextlib
import os
import sys
import warnings

from dampit.cli import common
from dampit.dataio.audio import AudioError, load_audio
from dampit.metrics import embedding_store as store

PROG = "dampit-embed"


def _drop_bad(items, sample_rate):
    good, bad = [], ""
    for uid, path in items:
        try:
            with warnings.catch_warnings(action="ignore"):
                load_audio(path, sample_rate, min_samples=400)
            good.append((uid, path))
        except AudioError as err:
            warnings.warn(f"skipping {path}: {err}", stacklevel=1)
            bad += f"{path}\t{err}\n"
    if not good:
        raise common.CliError("every input file is bad; nothing to embed")
    return good, bad


def _embed(args):
    common.check_args(args, out_folder=True)
    names = os.listdir(args.out) if os.path.isdir(args.out) else []
    if names and not {store.EMBEDDINGS_FILE, store.IDS_FILE} <= set(names):
        raise common.CliError(f"--out {args.out} is not an embedding store")
    items = common.list_audio_inputs(args.inputs)
    with contextlib.ExitStack() as stack:
        common.hold_output(stack, args.out)  # a second writer: refused now
        return _embed_into(args, items)


def _embed_into(args, items):
    warnings.filterwarnings("ignore", ".*threshold")  # embed decides nothing
    model = common.open_model(args)
    items, bad = (
        _drop_bad(items, model.sample_rate) if args.skip_bad else (items, "")
    )
    ids, emb = common.embed(model, items, args)
    files = {"paths.txt": "".join(f"{p}\n" for _, p in items)}
    if bad:
        files["bad_files.txt"] = bad
    with common.writing(args.out):
        store.save_embeddings(args.out, ids, emb, files)
    skipped = f"; {bad.count(chr(10))} bad file(s) skipped" if bad else ""
    print(
        f"[dampit] {len(ids)} embeddings of size {emb.shape[1]} -> "
        f"{args.out} (embeddings.npy, ids.txt){skipped}"
    )
    return 0


def main(argv=None):
    """Run ``dampit-embed``; returns 0, or 2 on bad input."""
    parser = common.Parser(PROG, "Embed audio files with a dampit model.")
    add = parser.add_argument
    add("inputs", nargs="+", help="folders, list files, audio files")
    add("--out", required=True, help="embedding store folder to write")
    add("--skip-bad", action="store_true", help="leave out bad audio files")
    args = parser.parse_args(argv)
    return common.run(PROG, args, lambda: _embed(args))


if __name__ == "__main__":
    sys.exit(main())
