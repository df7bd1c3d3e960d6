"""Adaptive symmetric score normalisation (AS-norm1).

Matejka et al., Interspeech 2017, as SpeechBrain's VoxCeleb recipe computes
it (``score_norm: s-norm`` with ``cohort_size``): each utterance is scored
against a cohort; its ``top_k`` highest cohort scores give a mean and an
unbiased standard deviation (``torch.std``), and a trial score ``s`` becomes
``0.5 * ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t)``. The statistics are
computed once per utterance, from chunked ``[chunk, M]`` score blocks.
"""

import numpy as np

from dampit.metrics.scoring import ScoringVectors

__all__ = ["TOP_K", "as_norm", "cohort_statistics"]

_BLOCK_BYTES = 2**26
#: Cohort scores kept per utterance by default.
TOP_K = 300


def cohort_statistics(vectors, rows, cohort, top_k=TOP_K, chunk_size=None):
    """Mean and standard deviation (ddof 1) of each utterance's ``top_k``
    highest cohort scores.

    Arguments
    ---------
    vectors, cohort : ScoringVectors
        The utterances and the cohort, built with the same method.
    rows : array-like of int
        [R] rows of ``vectors``.
    top_k : int or None
        Cohort scores kept (None: all, plain S-norm).
    chunk_size : int, optional
        Rows per block (default: about 64 MB of scores).

    Returns
    -------
    mean, std : numpy.ndarray
        float64 [R].

    Example
    -------
    >>> sv = ScoringVectors.from_embeddings([[1.0, 0.0]], "dot")
    >>> co = [[1.0, 0.0], [3.0, 0.0], [-9.0, 0.0]]
    >>> co = ScoringVectors.from_embeddings(co, "dot")
    >>> cohort_statistics(sv, [0], co, top_k=2)
    (array([2.]), array([1.41421356]))
    """
    m = len(cohort)
    k = m if top_k is None else min(int(top_k), m)
    if k < 2:
        raise ValueError(
            f"top_k={top_k} with a cohort of {m}: need at least 2 cohort "
            "scores per utterance"
        )
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    step = chunk_size or max(1, _BLOCK_BYTES // (24 * m))
    mean, std = np.empty(rows.size), np.empty(rows.size)
    for s in range(0, rows.size, step):
        blk = vectors.score_block(rows[s : s + step], cohort)
        blk = np.partition(blk, m - k, axis=1)[:, m - k :]
        mean[s : s + step] = blk.mean(axis=1)
        std[s : s + step] = blk.std(axis=1, ddof=1)
    bad = np.flatnonzero(~(std > 1e-12 * np.maximum(np.abs(mean), 1.0)))
    if bad.size:
        i = int(rows[bad[0]])
        raise ValueError(
            f"utterance {vectors.ids[i] if vectors.ids else f'row {i}'}: its "
            f"top-{k} cohort scores are all equal (standard deviation 0); "
            "AS-norm is undefined"
        )
    return mean, std


def as_norm(
    scores, enrol_idx, test_idx, vectors, cohort, top_k=TOP_K, chunk_size=None
):
    """AS-normalise trial scores with a cohort.

    Arguments
    ---------
    scores : array-like
        [T] raw scores of the trials.
    enrol_idx, test_idx : array-like of int
        [T] rows of ``vectors``.
    vectors : ScoringVectors, array or tensor
        The utterances (raw embeddings: scored by cosine).
    cohort : ScoringVectors, array or tensor
        The cohort, scored like ``vectors``.
    top_k : int or None
        Cohort scores kept per utterance (None: all).
    chunk_size : int, optional
        Utterances per cohort block.

    Returns
    -------
    numpy.ndarray
        float64 [T].

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> emb, cohort = rng.normal(size=(4, 8)), rng.normal(size=(20, 8))
    >>> sv = ScoringVectors.from_embeddings(emb, "cosine")
    >>> raw = sv.score_pairs([0, 1], [2, 3])
    >>> as_norm(raw, [0, 1], [2, 3], sv, cohort).shape
    (2,)
    """
    if not isinstance(vectors, ScoringVectors):
        vectors = ScoringVectors.from_embeddings(vectors, "cosine")
    if not isinstance(cohort, ScoringVectors):
        cohort = ScoringVectors.from_embeddings(cohort, vectors.method)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    ie, it = (np.ravel(x).astype(np.int64) for x in (enrol_idx, test_idx))
    if not s.size == ie.size == it.size:
        raise ValueError(
            f"{s.size} scores, {ie.size} enrol and {it.size} test indices"
        )
    uniq, inv = np.unique(np.r_[ie, it], return_inverse=True)
    mu, sd = cohort_statistics(vectors, uniq, cohort, top_k, chunk_size)
    ke, kt = inv[: ie.size], inv[ie.size :]
    return 0.5 * ((s - mu[ke]) / sd[ke] + (s - mu[kt]) / sd[kt])
