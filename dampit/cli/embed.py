"""``dampit-embed``: embed audio files with an exported model.

::

    dampit-embed --model model/ data/wavs/ --out emb/
    dampit-embed --model model/ files.txt a.wav b.flac --out emb/

Inputs are folders (searched recursively for ``.wav``/``.flac``), audio
files, or list files (one path a line, or ``ID<TAB>path``). The output
folder is a :mod:`dampit.metrics.embedding_store`: ``embeddings.npy``
(``[N, D]`` float32, whole-utterance embeddings, the model's
``encode_batch`` in frame-exact padded batches) and ``ids.txt`` (the index:
one ID a line, in row order), plus ``paths.txt`` (the file of each row).
Everything is written atomically; a progress bar shows the files done.

Bad input: a missing, unreadable (not audio), empty (no samples), silent
(all zeros) or too short (< 400 samples) file stops the run with an error
naming the file, unless ``--skip-bad`` (then it is left out, with a
warning, and listed in ``bad_files.txt``). Files at another sample rate
are resampled to the model's with a warning; several channels are
averaged to mono.
"""

import argparse
import logging
import os
import sys
import warnings

from dampit.cli.common import (
    CliError,
    add_model_args,
    fail,
    list_audio_inputs,
    open_model,
)

__all__ = ["embed", "main"]

PROG = "dampit-embed"


def embed(model, items, out, batch_size=16, skip_bad=False, progress=True):
    """Embed ``items`` and write the store to ``out``.

    Arguments
    ---------
    model : dampit.inference.api.DampitSpeakerRecognition
        A loaded model.
    items : list of tuple
        ``(id, path)``.
    out : str
        Output folder.
    batch_size : int
        Files per forward pass.
    skip_bad : bool
        Leave out bad files (listed in ``bad_files.txt``) instead of
        failing.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``n``, ``dim``, ``skipped`` (list of (path, reason)), ``out``.
    """
    from dampit.dataio.audio import AudioError, load_audio
    from dampit.metrics.embedding_store import save_embeddings
    from dampit.utils.atomic import atomic_write_text

    skipped = []
    if skip_bad:
        good = []
        for uid, path in items:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    load_audio(path, model.sample_rate, min_samples=400)
            except AudioError as err:
                warnings.warn(f"skipping {path}: {err}", stacklevel=2)
                skipped.append((path, str(err)))
            else:
                good.append((uid, path))
        items = good
        if not items:
            raise CliError("every input file is bad; nothing to embed")
    ids, emb = model.embed_files(
        items, batch_size=batch_size, progress=progress
    )
    os.makedirs(out, exist_ok=True)
    save_embeddings(out, ids=ids, embeddings=emb)
    atomic_write_text(
        os.path.join(out, "paths.txt"), "".join(f"{p}\n" for _, p in items)
    )
    bad_file = os.path.join(out, "bad_files.txt")
    if skipped:
        atomic_write_text(
            bad_file, "".join(f"{p}\t{why}\n" for p, why in skipped)
        )
    elif os.path.exists(bad_file):
        os.remove(bad_file)
    return {
        "n": len(ids),
        "dim": int(emb.shape[1]),
        "skipped": skipped,
        "out": out,
    }


def main(argv=None):
    """Run ``dampit-embed``.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 on bad input.
    """
    from dampit.dataio.audio import AudioError
    from dampit.inference.api import ModelFolderError
    from dampit.inference.safe_yaml import UnsafeYAMLError

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Embed audio files (folders, list files or files) with "
        "an exported dampit model; writes <out>/embeddings.npy and "
        "<out>/ids.txt.",
    )
    parser.add_argument("inputs", nargs="+", help="folders, list files, audio")
    parser.add_argument("--out", required=True, help="output folder")
    add_model_args(parser)
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out unreadable/empty/silent files instead of failing",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        items = list_audio_inputs(args.inputs)
        model = open_model(args)
        res = embed(
            model,
            items,
            args.out,
            batch_size=args.batch_size,
            skip_bad=args.skip_bad,
            progress=not args.no_progress,
        )
    except (
        AudioError,
        CliError,
        ModelFolderError,
        UnsafeYAMLError,
    ) as err:
        return fail(PROG, err)
    print(
        f"[dampit] {res['n']} embeddings of size {res['dim']} -> "
        f"{os.path.join(args.out, 'embeddings.npy')} (index: ids.txt)"
        + (
            f"; {len(res['skipped'])} bad file(s) skipped"
            if res["skipped"]
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
