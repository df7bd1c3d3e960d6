"""Benchmark of multi-crop trial scoring: closed form against pair loops.

The paper's test protocol scores a VoxCeleb1 trial by the mean of the
10 x 10 = 100 crop-pair scores. dampit computes it in closed form from
per-utterance crop statistics (``dampit.metrics.multicrop``); the paper
reports about 5 hours for its test.

Setting (full mode): 4,874 utterances (the VoxCeleb1 test set) x 10 crops
x D = 2048 random float32 embeddings, 37,720 random trials (the size of
the original ``veri_test.txt``), the ``"dot"`` method (the original
code's score). Quick mode: 1,000 utterances, D = 512, the same 37,720
trials.

Rows (``run(quick)``; ``ratio > 1`` always means "ours is faster"):

1. ``multicrop_closed_form_vs_pair_loop``: closed form (crop statistics of
   every utterance + one dot product per trial), seconds for the whole
   list, against the naive loop over the 100 crop pairs of every trial
   (``np.dot`` per pair, as a straightforward port of the original code).
   That loop is timed on a subset of trials and extrapolated linearly to
   the whole list (its cost per trial does not depend on the trial);
   ratio = loop time / closed-form time.
2. ``multicrop_closed_form_vs_trial_matmul``: the same against a loop over
   trials that scores each trial's 100 pairs with one 10 x 10 matrix
   product (timed on a subset, extrapolated likewise).
3. ``multicrop_closed_form_vs_batched_pairs``: against all 100 pair
   scores of every trial, batched over trials (``batched_pairs``, no
   Python loop per trial), measured on the whole list.

The notes give the largest absolute difference between the closed form
and each reference on the trials both computed.

Usage: ``python tools/bench_scoring.py [--quick]``.
"""

import argparse
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dampit.metrics.multicrop import ScoringVectors  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import format_rows  # noqa: E402

N_TRIALS = 37_720


def make_data(n_utts, n_crops, dim, n_trials, seed=0):
    """Random crop embeddings and a random trial list.

    Arguments
    ---------
    n_utts : int
        Utterances.
    n_crops : int
        Crops per utterance.
    dim : int
        Embedding dimension.
    n_trials : int
        Trials.
    seed : int
        Random seed.

    Returns
    -------
    crops : numpy.ndarray
        float32 [n_utts, n_crops, dim].
    enrol_idx, test_idx : numpy.ndarray
        int64 [n_trials].
    """
    rng = np.random.default_rng(seed)
    crops = rng.standard_normal((n_utts, n_crops, dim), dtype=np.float32)
    crops += 0.1  # raw, uncentred embeddings
    pairs = rng.integers(0, n_utts, size=(2, n_trials))
    return crops, pairs[0], pairs[1]


def pair_loop(crops, enrol_idx, test_idx):
    """Mean of the crop-pair dot products, one pair at a time.

    Arguments
    ---------
    crops : numpy.ndarray
        [U, C, D] crop embeddings.
    enrol_idx, test_idx : numpy.ndarray
        Trial rows.

    Returns
    -------
    numpy.ndarray
        float64 scores.
    """
    out = np.empty(len(enrol_idx))
    for k, (e, t) in enumerate(zip(enrol_idx, test_idx)):
        ce, ct = crops[e], crops[t]
        total = 0.0
        for i in range(ce.shape[0]):
            for j in range(ct.shape[0]):
                total += float(np.dot(ce[i], ct[j]))
        out[k] = total / (ce.shape[0] * ct.shape[0])
    return out


def trial_matmul_loop(crops, enrol_idx, test_idx):
    """:func:`pair_loop`'s float64 scores, one matrix product per trial."""
    out = np.empty(len(enrol_idx))
    for k, (e, t) in enumerate(zip(enrol_idx, test_idx)):
        out[k] = float((crops[e] @ crops[t].T).mean(dtype=np.float64))
    return out


def batched_pairs(crops, enrol_idx, test_idx, chunk=1024):
    """Like :func:`pair_loop`, all C x C pairs of ``chunk`` trials in one
    float64 einsum."""
    out = np.empty(len(enrol_idx))
    for s in range(0, len(enrol_idx), chunk):
        e = crops[enrol_idx[s : s + chunk]].astype(np.float64)
        t = crops[test_idx[s : s + chunk]].astype(np.float64)
        out[s : s + chunk] = np.einsum("bcd,bkd->bck", e, t).mean(axis=(1, 2))
    return out


def closed_form(crops, enrol_idx, test_idx):
    """Crop statistics of every utterance, then one dot per trial.

    Arguments
    ---------
    crops : numpy.ndarray
        [U, C, D] crop embeddings.
    enrol_idx, test_idx : numpy.ndarray
        Trial rows.

    Returns
    -------
    numpy.ndarray
        float64 scores.
    """
    sv = ScoringVectors.from_embeddings(crops, "dot")
    return sv.score_pairs(enrol_idx, test_idx)


def _best_time(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(quick):
    """Run the benchmark.

    Arguments
    ---------
    quick : bool
        Small sizes (well under a minute).

    Returns
    -------
    list of dict
        Rows with name, figure, unit, reference, ratio, note.
    """
    if quick:
        n_utts, dim, n_loop, n_mm = 1000, 512, 200, 2000
    else:
        n_utts, dim, n_loop, n_mm = 4874, 2048, 1000, 8000
    n_crops = 10
    crops, ie, it = make_data(n_utts, n_crops, dim, N_TRIALS)
    setting = (
        f"{N_TRIALS} trials, {n_utts} utterances x {n_crops} crops x "
        f"D={dim} float32, method 'dot'"
    )
    t_cf, scores = _best_time(lambda: closed_form(crops, ie, it), 3)
    t_stats, sv = _best_time(
        lambda: ScoringVectors.from_embeddings(crops, "dot"), 3
    )
    t_pairs, _ = _best_time(lambda: sv.score_pairs(ie, it), 3)
    split = (
        f"closed form {t_cf:.3f} s = crop statistics {t_stats:.3f} s + "
        f"scoring {t_pairs:.3f} s"
    )

    t_loop, ref = _best_time(
        lambda: pair_loop(crops, ie[:n_loop], it[:n_loop]), 1
    )
    t_loop_all = t_loop * N_TRIALS / n_loop
    err_loop = float(np.abs(ref - scores[:n_loop]).max())

    t_mm, ref_mm = _best_time(
        lambda: trial_matmul_loop(crops, ie[:n_mm], it[:n_mm]), 1
    )
    t_mm_all = t_mm * N_TRIALS / n_mm
    err_mm = float(np.abs(ref_mm - scores[:n_mm]).max())

    t_batch, ref_b = _best_time(lambda: batched_pairs(crops, ie, it), 1)
    err_b = float(np.abs(ref_b - scores).max())
    scale = float(np.abs(scores).max())
    return [
        {
            "name": "multicrop_closed_form_vs_pair_loop",
            "figure": t_cf,
            "unit": "s",
            "reference": t_loop_all,
            "ratio": t_loop_all / t_cf,
            "note": (
                f"{setting}; {split} (one dot per trial) vs a Python "
                f"loop over the 100 crop pairs (np.dot "
                f"each), timed on {n_loop} trials ({t_loop:.2f} s) and "
                f"extrapolated to {N_TRIALS}; max |diff| {err_loop:.2e} "
                f"(scores up to {scale:.1f}); ratio = loop / closed form"
            ),
        },
        {
            "name": "multicrop_closed_form_vs_trial_matmul",
            "figure": t_cf,
            "unit": "s",
            "reference": t_mm_all,
            "ratio": t_mm_all / t_cf,
            "note": (
                f"{setting}; vs a loop over trials with one 10x10 matrix "
                f"product each, timed on {n_mm} trials ({t_mm:.2f} s) and "
                f"extrapolated; max |diff| {err_mm:.2e}; ratio = loop / "
                "closed form"
            ),
        },
        {
            "name": "multicrop_closed_form_vs_batched_pairs",
            "figure": t_cf,
            "unit": "s",
            "reference": t_batch,
            "ratio": t_batch / t_cf,
            "note": (
                f"{setting}; vs batched_pairs (all 100 pair scores "
                f"per trial, batched, float64), whole list; max |diff| "
                f"{err_b:.2e}; ratio = batched pairs / closed form"
            ),
        },
    ]


def main(argv=None):
    """Command line: print the rows.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    list of dict
        The rows.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    print(format_rows(rows))
    return rows


if __name__ == "__main__":
    main()
