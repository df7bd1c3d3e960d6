"""Trial scoring: whole-utterance scores and the multi-crop mean in closed form.

The paper scores a trial as the VoxCeleb2 paper does: 10 crops of 3 s per
utterance and the mean score of the 10 x 10 crop pairs. For these scores
the mean needs only per-utterance crop statistics (``e_i``, ``t_j``: the
crops of the two utterances)::

    mean_ij <e_i, t_j>      = <mean_i e_i, mean_j t_j>                 "dot"
    mean_ij cos(e_i, t_j)   = <mean_i e_i/|e_i|, mean_j t_j/|t_j|>   "cosine"

so a trial costs one dot product, not 100. ``[U, D]`` embeddings (one per
utterance) are scored the same way: ``"cosine"`` is the plain cosine.
"""

import tempfile

import numpy as np

from dampit.inference.embedding_store import EmbeddingStore, as_numpy

__all__ = ["METHODS", "ScoringVectors", "cosine_scores"]

METHODS = ("cosine", "dot")
_CHUNK_BYTES = 2**26  # float64 work memory of one chunk


class ScoringVectors:
    """Utterances ready for scoring: ``score(i, j) = scale[i] * scale[j] *
    <vectors[i], vectors[j]>``.

    Build it with :meth:`from_embeddings`; reuse it for several trial lists
    and for AS-norm (``dampit.metrics.asnorm``).

    Example
    -------
    >>> sv = ScoringVectors.from_embeddings([[3.0, 4.0], [1.0, 0.0]], "cosine")
    >>> sv.score_pairs([0], [1]).round(12).tolist()
    [0.6]
    """

    def __init__(self, vectors, method, scale=1, ids=None):
        self.vectors, self.method, self.ids = vectors, method, ids
        self.scale = np.broadcast_to(scale, len(vectors))

    def __len__(self):
        """The number of utterances (scoring vectors)."""
        return len(self.vectors)

    @classmethod
    def from_embeddings(cls, embeddings, method="cosine", chunk_size=None):
        """Scoring vectors of ``[U, D]`` embeddings (whole utterances) or
        ``[U, n_crops, D]`` crop embeddings (mean over the crop pairs).

        Arguments
        ---------
        embeddings : array-like, torch.Tensor or EmbeddingStore
            Memory maps are read in chunks; ``[U, D]`` is not copied.
        method : str
            ``"cosine"`` or ``"dot"``.
        chunk_size : int, optional
            Utterances per chunk (default: about 64 MB of work memory).

        Example
        -------
        >>> crops = [[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [0.0, 0.0]]]
        >>> ScoringVectors.from_embeddings(crops, "dot").vectors.tolist()
        [[0.5, 0.5], [1.0, 1.0]]
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        ids = embeddings.ids if isinstance(embeddings, EmbeddingStore) else None
        emb = as_numpy(getattr(embeddings, "embeddings", embeddings))
        if emb.dtype not in (np.float32, np.float64):
            emb = emb.astype(np.float32)
        emb = emb[:, 0] if emb.ndim == 3 and emb.shape[1] == 1 else emb
        if emb.ndim not in (2, 3) or min(emb.shape) < 1:
            raise ValueError(
                f"embeddings must be [U, D] or [U, n_crops, D], got {emb.shape}"
            )
        crops, n = emb.ndim == 3, len(emb)
        vec = _disk_array((n, emb.shape[-1]), emb.dtype) if crops else emb
        sq = np.empty(n)  # mean squared norm of the crops
        step = chunk_size or max(1, _CHUNK_BYTES // (16 * emb[0].size))
        for s in range(0, n, step):
            c = np.asarray(emb[s : s + step], dtype=np.float64)
            c = c if crops else c[:, None]
            q = np.einsum("bcd,bcd->bc", c, c)
            bad = ~np.isfinite(q) | ((q == 0) & (method == "cosine"))
            if bad.any():
                b, k = (int(v[0]) for v in np.nonzero(bad))
                name = ids[s + b] if ids else s + b
                raise ValueError(
                    f"utterance {name}, crop {k}: embedding is not finite or "
                    f"(for {method}) all zero"
                )
            if crops and method == "cosine":
                vec[s : s + step] = (c / np.sqrt(q)[..., None]).mean(axis=1)
            elif crops:
                vec[s : s + step] = c.mean(axis=1)
            sq[s : s + step] = q.mean(axis=1)
        scale = 1 / np.sqrt(sq) if method == "cosine" and not crops else 1
        return cls(vec, method, scale, ids)

    def score_pairs(self, enrol_idx, test_idx, chunk_size=None):
        """Scores of trials given as row indices (float64 [T], chunked).

        Example
        -------
        >>> sv = ScoringVectors.from_embeddings([[1.0, 2.0], [3.0, 0.0]], "dot")
        >>> sv.score_pairs([0, 1], [1, 1]).tolist()
        [3.0, 9.0]
        """
        ie, it = (np.ravel(x).astype(np.int64) for x in (enrol_idx, test_idx))
        if ie.size != it.size:
            raise ValueError(f"{ie.size} enrol but {it.size} test indices")
        for side, idx in (("enrol", ie), ("test", it)):
            bad = np.flatnonzero((idx < 0) | (idx >= len(self)))
            if bad.size:
                raise IndexError(
                    f"trial {bad[0] + 1}: {side} row {idx[bad[0]]} is not "
                    f"among the {len(self)} utterances"
                )
        # ~1 MB blocks, trials sorted by enrolment row: cache and memmap
        # friendly.
        row_bytes = self.vectors[0].nbytes
        step = chunk_size or max(16, 2**20 // row_bytes)
        order = np.argsort(ie, kind="stable")
        out = np.empty(ie.size)
        for s in range(0, ie.size, step):
            sel = order[s : s + step]
            a, b = self.vectors[ie[sel]], self.vectors[it[sel]]
            dots = np.matmul(a[:, None, :], b[:, :, None])[:, 0, 0]
            dots = np.asarray(dots, dtype=np.float64)
            out[sel] = dots * self.scale[ie[sel]] * self.scale[it[sel]]
        return out

    def score_block(self, rows, other):
        """Scores of ``rows`` of these utterances against all of ``other``
        (a cohort built with the same method): float64 [R, M].

        Example
        -------
        >>> a = ScoringVectors.from_embeddings([[1.0, 0.0]], "dot")
        >>> b = ScoringVectors.from_embeddings([[2.0, 0.0], [0.0, 1.0]], "dot")
        >>> a.score_block([0], b).tolist()
        [[2.0, 0.0]]
        """
        a, b = (f"{v.method} [{v.vectors.shape[1]}]" for v in (self, other))
        if a != b:
            raise ValueError(f"cannot score {a} vectors against {b} ones")
        rows = np.asarray(rows, dtype=np.int64)
        dots = self.vectors[rows] @ np.asarray(other.vectors).T
        dots = np.asarray(dots, dtype=np.float64)
        return dots * self.scale[rows][:, None] * other.scale


def _disk_array(shape, dtype):
    """An array in an unnamed temporary file in ``TMPDIR`` (a disk, not a
    tmpfs; on POSIX nothing is left even after a crash): the ``[U, D]``
    means of Vox1-E (1.1 GB) must not take RAM."""
    with tempfile.TemporaryFile(prefix="dampit_vectors_") as f:
        return np.memmap(f, dtype, "w+", shape=shape)


def cosine_scores(embeddings, enrol_idx, test_idx, chunk_size=None):
    """Whole-utterance cosine scores of trials given as row indices.

    Arguments
    ---------
    embeddings : array-like, torch.Tensor or EmbeddingStore
        ``[U, D]`` (or SpeechBrain's ``[U, 1, D]``).
    enrol_idx, test_idx : array-like of int
        [T] rows.
    chunk_size : int, optional
        Trials per chunk.

    Example
    -------
    >>> cosine_scores([[3.0, 4.0], [0.0, 1.0]], [0], [1]).round(6).tolist()
    [0.8]
    """
    emb = as_numpy(getattr(embeddings, "embeddings", embeddings))
    if emb.ndim == 3 and emb.shape[1] != 1:
        raise ValueError("cosine_scores takes [U, D] embeddings, not crops")
    sv = ScoringVectors.from_embeddings(embeddings, "cosine")
    return sv.score_pairs(enrol_idx, test_idx, chunk_size)
