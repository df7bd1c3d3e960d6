"""Adaptive symmetric score normalisation (AS-norm).

Matejka et al., "Analysis of score normalization in multilingual speaker
recognition", Interspeech 2017 (AS-norm1): every utterance is scored
against a cohort of impostor embeddings; the ``top_k`` highest of those
scores give a mean and a standard deviation per utterance, and a trial's
score ``s`` becomes::

    0.5 * ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t)

(``mode="s-norm"``; ``"z-norm"`` keeps the enrolment term only, ``"t-norm"``
the test term only; ``top_k=None`` uses the whole cohort: plain S-norm).
This is what SpeechBrain's VoxCeleb recipe (``speaker_verification_cosine.py``,
``score_norm`` and ``cohort_size``) computes, with the same unbiased standard
deviation (``ddof=1``, as ``torch.std``).

The cohort statistics are computed once per utterance, not once per trial,
from ``[chunk, M]`` blocks of cohort scores (bounded memory), with
``numpy.partition`` for the top-k.
"""

import numpy as np
from tqdm import tqdm

__all__ = ["as_norm", "cohort_statistics"]

_BLOCK_BYTES = 2**26


def cohort_statistics(
    vectors, rows, cohort, top_k=300, ddof=1, chunk_size=None, progress=False
):
    """Mean and standard deviation of each utterance's top-k cohort scores.

    Arguments
    ---------
    vectors : dampit.metrics.multicrop.ScoringVectors
        The utterances.
    rows : array-like of int
        [R] rows of ``vectors`` to compute statistics for.
    cohort : dampit.metrics.multicrop.ScoringVectors
        [M] cohort utterances, built with the same scoring method.
    top_k : int or None
        Keep the ``top_k`` highest cohort scores (None or >= M: all).
    ddof : int
        Delta degrees of freedom of the standard deviation (1: unbiased,
        as SpeechBrain; 0: population).
    chunk_size : int, optional
        Rows per block (default: about 64 MB of scores).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    mean : numpy.ndarray
        float64 [R].
    std : numpy.ndarray
        float64 [R].

    Raises
    ------
    ValueError
        ``top_k`` too small for ``ddof``, or a zero standard deviation.

    Example
    -------
    >>> from dampit.metrics.multicrop import ScoringVectors
    >>> sv = ScoringVectors.from_embeddings([[1.0, 0.0]], "dot")
    >>> co = [[1.0, 0.0], [3.0, 0.0], [-9.0, 0.0]]
    >>> co = ScoringVectors.from_embeddings(co, "dot")
    >>> cohort_statistics(sv, [0], co, top_k=2)
    (array([2.]), array([1.41421356]))
    """
    m = len(cohort)
    k = m if top_k is None else min(int(top_k), m)
    if k < 1 or k <= ddof:
        raise ValueError(
            f"top_k={top_k} with a cohort of {m}: need more than ddof={ddof} "
            "cohort scores per utterance"
        )
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    step = chunk_size or max(1, _BLOCK_BYTES // (8 * 3 * max(1, m)))
    mean = np.empty(rows.size, dtype=np.float64)
    std = np.empty(rows.size, dtype=np.float64)
    for s in tqdm(
        range(0, rows.size, step), desc="cohort scores", disable=not progress
    ):
        blk = vectors.score_block(rows[s : s + step], cohort)
        if k < m:
            blk = np.partition(blk, m - k, axis=1)[:, m - k :]
        mean[s : s + step] = blk.mean(axis=1)
        std[s : s + step] = blk.std(axis=1, ddof=ddof)
    # Equal scores give a zero (or rounding-noise) deviation.
    bad = ~(std > 1e-12 * np.maximum(np.abs(mean), 1.0))
    if bad.any():
        i = int(rows[np.flatnonzero(bad)[0]])
        name = vectors.ids[i] if vectors.ids is not None else f"row {i}"
        raise ValueError(
            f"utterance {name}: its top-{k} cohort scores are all equal "
            "(standard deviation 0); AS-norm is undefined"
        )
    return mean, std


def as_norm(
    scores,
    enrol_idx,
    test_idx,
    vectors,
    cohort,
    top_k=300,
    mode="s-norm",
    ddof=1,
    chunk_size=None,
    progress=False,
    method=None,
):
    """AS-normalise trial scores with a cohort.

    Arguments
    ---------
    scores : array-like
        [T] raw trial scores (from ``vectors.score_pairs``).
    enrol_idx : array-like of int
        [T] rows of the enrolment utterances in ``vectors``.
    test_idx : array-like of int
        [T] rows of the test utterances.
    vectors : ScoringVectors, CropStats, array or tensor
        The utterances (``enrol_idx`` and ``test_idx`` index its rows):
        ``dampit.metrics.multicrop.ScoringVectors`` or anything
        ``multicrop.as_scoring_vectors`` takes ([U, D] embeddings,
        [U, n_crops, D] crop embeddings or their statistics).
    cohort : ScoringVectors, CropStats, array or tensor
        The cohort ([M, D] embeddings, say), scored the same way.
    top_k : int or None
        Cohort scores kept per utterance (None: all, i.e. S-norm).
    mode : str
        ``"s-norm"`` (symmetric, default), ``"z-norm"`` (enrolment side)
        or ``"t-norm"`` (test side).
    ddof : int
        Standard-deviation degrees of freedom (1 as SpeechBrain).
    chunk_size : int, optional
        Utterances per cohort block.
    progress : bool
        Show a tqdm bar.
    method : str, optional
        Scoring method for raw embeddings: that of ``vectors`` when they
        are ScoringVectors, else ``"cosine"``.

    Returns
    -------
    numpy.ndarray
        float64 [T] normalised scores.

    Example
    -------
    >>> import numpy as np
    >>> from dampit.metrics.multicrop import ScoringVectors
    >>> rng = np.random.default_rng(0)
    >>> emb, cohort = rng.normal(size=(4, 8)), rng.normal(size=(20, 8))
    >>> sv = ScoringVectors.from_embeddings(emb, "cosine")
    >>> raw = sv.score_pairs([0, 1], [2, 3])
    >>> as_norm(raw, [0, 1], [2, 3], sv, cohort, top_k=5).shape
    (2,)
    >>> as_norm(raw, [0, 1], [2, 3], emb, cohort, top_k=5).shape  # cosine
    (2,)
    """
    from dampit.metrics.multicrop import ScoringVectors, as_scoring_vectors

    if method is None:
        if isinstance(vectors, ScoringVectors) and vectors.method:
            method = vectors.method
        else:
            method = "cosine"
    vectors = as_scoring_vectors(vectors, method)
    cohort = as_scoring_vectors(cohort, method)
    if mode not in ("s-norm", "z-norm", "t-norm"):
        raise ValueError(
            f"mode must be 's-norm', 'z-norm' or 't-norm', got {mode!r}"
        )
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    ie = np.asarray(enrol_idx, dtype=np.int64).reshape(-1)
    it = np.asarray(test_idx, dtype=np.int64).reshape(-1)
    if not (s.size == ie.size == it.size):
        raise ValueError(
            f"{s.size} scores, {ie.size} enrol and {it.size} test indices"
        )
    need = []
    if mode != "t-norm":
        need.append(ie)
    if mode != "z-norm":
        need.append(it)
    uniq, inv = np.unique(np.concatenate(need), return_inverse=True)
    mu, sd = cohort_statistics(
        vectors, uniq, cohort, top_k, ddof, chunk_size, progress
    )
    if mode != "s-norm":  # one side only: inv indexes it
        return (s - mu[inv]) / sd[inv]
    ke, kt = inv[: ie.size], inv[ie.size :]
    return 0.5 * ((s - mu[ke]) / sd[ke] + (s - mu[kt]) / sd[kt])
