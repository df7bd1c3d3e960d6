"""``dampit-embed``: embed audio files with an exported model.

::

    dampit-embed --model model/ data/wavs/ files.txt a.wav --out emb/

Inputs are folders (searched recursively for audio files), audio files or
list files (one path a line, or ``ID<TAB>path``). ``--out`` becomes an
embedding store (:mod:`dampit.metrics.embedding_store`: ``embeddings.npy``
``[N, D]``, ``ids.txt``, ``paths.txt``), replaced as one unit. A bad file
(missing, not audio, empty, silent, shorter than 400 samples) stops the
run naming it, unless ``--skip-bad`` leaves it out (listed in
``bad_files.txt``). Other sample rates are resampled, channels averaged.
"""

import os
import sys
import warnings

from dampit.cli import common
from dampit.dataio.audio import AudioError, load_audio
from dampit.metrics.embedding_store import (
    EMBEDDINGS_FILE,
    IDS_FILE,
    save_embeddings,
)

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
    out = args.out
    if os.path.isdir(out) and os.listdir(out):
        if not {EMBEDDINGS_FILE, IDS_FILE} <= set(os.listdir(out)):
            raise common.CliError(f"--out {out} is not an embedding store")
    items = common.list_audio_inputs(args.inputs)
    model = common.open_model(args)
    bad = ""
    if args.skip_bad:
        items, bad = _drop_bad(items, model.sample_rate)
    ids, emb = common.embed(model, items, args)
    files = {"paths.txt": "".join(f"{p}\n" for _, p in items)}
    with common.writing(out):
        save_embeddings(out, ids, emb, {**files, "bad_files.txt": bad})
    print(
        f"[dampit] {len(ids)} embeddings of size {emb.shape[1]} -> "
        f"{os.path.join(out, EMBEDDINGS_FILE)} (index: {IDS_FILE})"
        + (f"; {bad.count(chr(10))} bad file(s) skipped" if bad else "")
    )
    return 0


def main(argv=None):
    """Run ``dampit-embed``; returns 0, or 2 on bad input."""
    parser = common.Parser(
        PROG,
        "Embed audio files (folders, list files "
        "or files) with an exported dampit model.",
    )
    parser.add_argument("inputs", nargs="+", help="folders, list files, audio")
    parser.add_argument("--out", required=True, help="output store folder")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out bad audio files instead of failing",
    )
    args = parser.parse_args(argv)
    return common.run(PROG, args, lambda: _embed(args))


if __name__ == "__main__":
    sys.exit(main())
