"""Scoring: closed-form multi-crop scores and a trial list over a store.

Closed-form 10 x 10 multi-crop trial scoring (crop statistics of every
utterance, then one dot per trial: ``dampit.metrics.scoring``) against the
naive loop over the 100 crop pairs of every trial; then a trial list scored
over an embedding store of growing size toward Vox1-E
(``read_trial_indices`` + ``ScoringVectors('dot')`` + ``score_pairs`` + EER
+ minDCF, in its own interpreter) against one pass over the store, and its
peak anonymous memory against the mean vectors' size. Ratio: reference time
/ closed-form time (> 1: closed form faster); store rows: figure /
reference.

Closed form: 37,720 random trials (the original ``veri_test.txt``'s
size) over 4,874 utterances (VoxCeleb1's test set) x 10 crops x D = 2048
random float32 embeddings, the ``"dot"`` method (the original code's
score); quick: 1,000 utterances, D = 512. The pair loop is timed on a
subset and extrapolated linearly (its cost per trial is constant). The
store rows use random embeddings written with ``EmbeddingStoreWriter``;
``full`` scores Vox1-E itself (145,160 x 10 x 2048: 11.9 GB of disk).
"""

import os
import shutil
import tempfile

import numpy as np
import scale_inputs
from benchlib import (
    AnonPeak,
    Clock,
    isolated,
    median_time,
    row,
    status_mb,
    timed,
)

from dampit.dataio.trials import read_trial_indices
from dampit.inference.embedding_store import (
    EmbeddingStore,
    EmbeddingStoreWriter,
)
from dampit.metrics.error_rates import compute_eer, compute_min_dcf
from dampit.metrics.scoring import ScoringVectors

N_TRIALS = 37_720
VOX1E = (145160, 579818)  # Vox1-E cleaned: utterances, trials
STORES = {  # (utterances, trials) pairs and the embedding dimension
    "quick": ([(2000, 8000)], 256),
    "default": ([(7258, 28991), (14516, 57982)], 2048),
    "full": ([(14516, 57982), VOX1E], 2048),
}
KEY_ROWS = ("multicrop_closed_form_vs_pair_loop",)


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


def closed_form(crops, enrol_idx, test_idx):
    """Crop statistics of every utterance, then one dot per trial; the
    arguments and the scores of :func:`pair_loop`."""
    sv = ScoringVectors.from_embeddings(crops, "dot")
    return sv.score_pairs(enrol_idx, test_idx)


def store_scoring(folder, trials, n_utts, n_crops, dim):
    """Random crop embeddings written to a store; one pass over it (the
    reference); then trial list -> multi-crop mean ("dot", the paper's)
    -> EER, minDCF, with the peak anonymous memory of that part."""
    rng, out, step = np.random.default_rng(0), {}, 256
    with EmbeddingStoreWriter(folder, n_utts, (n_crops, dim)) as w:
        for s in range(0, n_utts, step):
            m = min(step, n_utts - s)
            emb = rng.standard_normal((m, n_crops, dim), np.float32)
            w.add_batch([f"u{u:07d}" for u in range(s, s + m)], emb)
    out["gb"] = n_utts * n_crops * dim * 4 / 1e9
    emb = EmbeddingStore(folder).embeddings
    with timed(out, "read_"):
        for s in range(0, len(emb), step):
            np.asarray(emb[s : s + step]).sum()
    out["base_anon_mb"], peak = status_mb("RssAnon"), AnonPeak()
    with timed(out):
        store = EmbeddingStore(folder)
        enrol, test, labels, names = read_trial_indices(trials)
        rows = np.array([store.index[n] for n in names])
        enrol, test = rows[enrol], rows[test]
        vectors = ScoringVectors.from_embeddings(store, "dot")
        scores = vectors.score_pairs(enrol, test)
        out["eer"] = compute_eer(scores, labels)[0]
        out["min_dcf"] = compute_min_dcf(scores, labels)[0]
    out["peak_anon_mb"] = peak.stop()
    out["n_trials"], out["n_utts"] = len(scores), len(store)
    out["vectors_mb"] = vectors.vectors.nbytes / 2**20
    return out


def store_rows(mode):
    """Rows of :func:`store_scoring` at the sizes of ``mode``."""
    sizes, dim = STORES[mode]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dampit_bench_") as tmp:
        for n_utts, n_trials in sizes:
            store = os.path.join(tmp, f"store{n_utts}")
            ids = [f"u{u:07d}" for u in range(n_utts)]
            trials = os.path.join(tmp, f"trials{n_utts}.txt")
            scale_inputs.write_id_trials(trials, ids, n_trials)
            sc = isolated(
                __file__,
                "store_scoring",
                folder=store,
                trials=trials,
                n_utts=n_utts,
                n_crops=10,
                dim=dim,
            )
            shutil.rmtree(store)
            anon = sc["peak_anon_mb"] - sc["base_anon_mb"]
            tag = f"U={n_utts},T={n_trials},D={dim}"
            rows.append(
                row(
                    f"score_multicrop_eer_mindcf_{tag}",
                    sc["wall_s"],
                    "s",
                    sc["read_wall_s"],
                    "read_trial_indices + ScoringVectors('dot') + "
                    f"score_pairs + EER + minDCF over a {sc['gb']:.2f} GB "
                    "store / one pass over the store (wall); EER "
                    f"{100 * sc['eer']:.1f}% (random embeddings)",
                )
            )
            rows.append(
                row(
                    f"score_peak_anon_memory_{tag}",
                    anon,
                    "MB",
                    sc["vectors_mb"],
                    "RssAnon peak increase of the scoring / the [U, D] "
                    "float32 mean vectors (a memory-mapped temporary file); "
                    f"VmHWM {sc['peak_rss_mb']:.0f} MB counts the store's "
                    "mapped pages too (page cache); goal < 1 GB: "
                    f"{'met' if anon < 1024 else 'NOT met'}",
                )
            )
    return rows


def run(mode):
    """BENCHMARKS.md rows at ``mode``'s sizes (quick, default, full)."""
    quick = mode == "quick"
    n_utts, dim, n_loop = (1000, 512, 200) if quick else (4874, 2048, 1000)
    crops, ie, it = make_data(n_utts, 10, dim, N_TRIALS)
    setting = (
        f"{N_TRIALS} trials, {n_utts} utterances x 10 crops x D={dim} "
        "float32, method 'dot'"
    )
    clock = Clock("cpu", "wall")
    t_cf = median_time(clock, lambda: closed_form(crops, ie, it), 3)
    scores = closed_form(crops, ie, it)
    t_loop = median_time(
        clock, lambda: pair_loop(crops, ie[:n_loop], it[:n_loop]), 1
    )
    t_loop_all = t_loop * N_TRIALS / n_loop
    err_loop = np.abs(
        pair_loop(crops, ie[:n_loop], it[:n_loop]) - scores[:n_loop]
    )
    return [
        row(
            "multicrop_closed_form_vs_pair_loop",
            t_cf,
            "s",
            t_loop_all,
            f"{setting}; closed form (median of 3, wall) vs a Python loop "
            f"over the 100 crop pairs (np.dot each), timed on {n_loop} "
            f"trials ({t_loop:.2f} s) and extrapolated to {N_TRIALS}; max "
            f"|diff| {err_loop.max():.2e} (scores up to "
            f"{np.abs(scores).max():.1f}); ratio = loop / closed form",
            ratio=t_loop_all / t_cf,
        ),
        *store_rows(mode),
    ]
