"""Score Resemblyzer, an off-the-shelf encoder, on one fold's trials.

Resemblyzer (``pip install resemblyzer``: GE2E trained on LibriSpeech and
VoxCeleb 1 and 2, weights inside the wheel) embeds each test utterance as
its README says (``preprocess_wav`` then ``embed_utterance``); a trial's
score is the cosine of its two embeddings. The fold's test speakers and
trials are prepared exactly as the recipe prepares them (same options,
same seed), and the report is written in the recipe's layout
(``<out>/verification/summary.json`` with ``trials/full_cosine`` and
the score file), so ``run_ablation.py --configs resemblyzer`` pools it
with the trained configurations::

    python resemblyzer_baseline.py --data_folder=DATA --output_folder=OUT \\
        --n_folds=5 --fold=0
"""

import argparse
import json
import os
import sys

import numpy as np
import yaml
from speechbrain.dataio.dataio import load_data_csv
from tqdm import tqdm

from dampit.dataio.prepare_folder import prepare_folder
from dampit.dataio.trials import read_trials
from dampit.metrics.report import write_report
from dampit.utils.atomic import atomic_write_text

try:  # optional: only this baseline needs it
    import resemblyzer
except ImportError:
    resemblyzer = None


def score_fold(prepared, embed_file, out, progress=True):
    """Embed the test utterances of a prepared folder with ``embed_file(path)
    -> vector``, score its trials by cosine and write ``<out>/verification``;
    return the ``full_cosine`` report."""
    rows = load_data_csv(os.path.join(prepared, "test.csv"))
    trials = read_trials(os.path.join(prepared, "trials.txt"))
    needed = sorted({u for t in trials for u in t[1:]})
    emb = {}
    for utt in tqdm(needed, desc="embedding", disable=not progress):
        vector = np.asarray(embed_file(rows[utt]["wav"]), dtype=np.float64)
        emb[utt] = vector / np.linalg.norm(vector)
    scores = [float(emb[e] @ emb[t]) for _, e, t in trials]
    ver = os.path.join(out, "verification")
    report = write_report(
        scores,
        np.array([t[0] for t in trials]),
        os.path.join(ver, "trials"),
        "full_cosine",
        trial_ids=[(e, t) for _, e, t in trials],
    )
    text = json.dumps({"trials/full_cosine": report}, indent=2)
    atomic_write_text(os.path.join(ver, "summary.json"), text)
    return report


def folders(text):
    """``--data_folder``: one folder, or a YAML list of them.

    Example
    -------
    >>> folders("/data/so762"), folders("[/a, /b]")
    ('/data/so762', ['/a', '/b'])
    """
    return yaml.safe_load(text) if text.startswith("[") else text


def main(argv=None):
    """Prepare the fold as the recipe does, embed, score, report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_folder", required=True, type=folders)
    p.add_argument("--output_folder", required=True)
    p.add_argument("--n_folds", type=int, required=True)
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--test_corpora", type=folders, default=None)
    args, _ = p.parse_known_args(argv)  # the tool's training-only options
    if resemblyzer is None:
        sys.exit(
            "error: the resemblyzer baseline needs `pip install resemblyzer`"
        )
    prepared = os.path.join(args.output_folder, "prepared")
    prepare_folder(
        args.data_folder,
        prepared,
        n_folds=args.n_folds,
        fold=args.fold,
        test_corpora=args.test_corpora,
    )
    encoder = resemblyzer.VoiceEncoder("cpu", verbose=False)

    def embed_file(path):
        return encoder.embed_utterance(resemblyzer.preprocess_wav(path))

    report = score_fold(prepared, embed_file, args.output_folder)
    print(f"[resemblyzer] EER {100 * report['eer']:.2f} %")


if __name__ == "__main__":
    main()
