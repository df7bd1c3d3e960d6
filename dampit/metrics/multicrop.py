"""Multi-crop verification scoring in closed form.

The paper scores a trial the way the VoxCeleb2 paper does: 10 crops of 3 s
from each utterance, an embedding per crop, and the mean of the scores of
all 10 x 10 = 100 crop pairs. For the usual pair scores that mean needs no
loop over pairs, only per-utterance crop statistics (``e_i``: the crops of
the enrolment utterance, ``t_j``: those of the test utterance, ``C`` crops
each)::

    mean_ij <e_i, t_j>           = <mean_i e_i, mean_j t_j>
    mean_ij cos(e_i, t_j)        = <mean_i e_i/|e_i|, mean_j t_j/|t_j|>
    mean_ij |e_i - t_j|^2        = mean_i |e_i|^2 + mean_j |t_j|^2
                                   - 2 <mean_i e_i, mean_j t_j>

so a trial costs one D-dimensional dot product instead of 100.

Scoring methods (higher score = more likely the same speaker):

==============  =========================================  ===============
method          score                                      closed form
==============  =========================================  ===============
"sqeuclidean"   minus the mean squared Euclidean distance  yes (default;
                over the crop pairs                        the paper's
                                                           "mean of the
                                                           100 distances")
"dot"           mean dot product of raw embeddings         yes (the
                                                           paper's code)
"cosine"        mean cosine similarity                     yes
"euclidean"     minus the mean (unsquared) Euclidean       no: explicit
                distance                                   pairs, batched
==============  =========================================  ===============

With one embedding per utterance (an ``[U, D]`` store) the same methods
score the full-utterance embeddings: ``"cosine"`` is the plain cosine
similarity.

Every closed-form method is a bilinear form plus per-utterance offsets,
``score(e, t) = w * s_e * s_t * <v_e, v_t> + o_e + o_t``, held by
:class:`ScoringVectors`; scoring a trial list gathers rows of ``v`` by
index in chunks (bounded memory, works on memory-mapped stores) and the
same object scores against an AS-norm cohort (``dampit.metrics.asnorm``).
"""

import os
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from dampit.metrics.embedding_store import (
    EmbeddingStore,
    read_trial_indices,
)
from dampit.utils.atomic import atomic_path

__all__ = [
    "CLOSED_FORM_METHODS",
    "METHODS",
    "CropStats",
    "ScoringVectors",
    "as_scoring_vectors",
    "cosine_scores",
    "crop_statistics",
    "explicit_pair_scores",
    "read_scores",
    "score_from_stats",
    "score_trial_list",
    "score_trials",
    "write_scores",
]

CLOSED_FORM_METHODS = ("sqeuclidean", "dot", "cosine")
METHODS = CLOSED_FORM_METHODS + ("euclidean",)

# Bytes of float64 work memory one chunk may use (about 64 MB).
_CHUNK_BYTES = 2**26


def _as_array(x):
    """Tensor or array-like -> numpy array (memmaps stay memmaps)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    return x if isinstance(x, np.ndarray) else np.asarray(x)


def _check_method(method, allowed=CLOSED_FORM_METHODS):
    if method not in allowed:
        raise ValueError(f"method must be one of {allowed}, got {method!r}")


def _rows_per_chunk(row_floats, chunk_size=None, copies=4):
    """Rows per chunk so that ``copies`` float64 copies fit the budget."""
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    return max(1, _CHUNK_BYTES // (8 * copies * max(1, int(row_floats))))


def _out_dtype(arr):
    return np.float64 if arr.dtype == np.float64 else np.float32


class CropStats(NamedTuple):
    """Per-utterance crop statistics (see :func:`crop_statistics`)."""

    mean: np.ndarray
    """Mean crop embedding, [..., D]."""
    norm_mean: np.ndarray
    """Mean of the L2-normalised crop embeddings, [..., D]."""
    sq_norm: np.ndarray
    """Mean squared L2 norm of the crop embeddings, [...]."""


def _stats_block(crops, first_row=0, ids=None, normalised=True):
    """CropStats of a float block [B, C, D].

    Arithmetic runs in the block's precision (float32 stores: float32,
    whose rounding, ~1e-6 relative, is that of the stored embeddings
    anyway); the squared norms are returned as float64. With
    ``normalised=False`` the ``norm_mean`` field is None (and all-zero
    crops are allowed).
    """
    c = np.asarray(crops)
    if c.dtype not in (np.float32, np.float64):
        c = c.astype(np.float32)
    sq = np.einsum("bcd,bcd->bc", c, c)
    # NaN or inf anywhere in a crop makes its squared norm NaN or inf.
    finite = np.isfinite(sq).all(axis=1)
    if not finite.all():
        b = int(np.flatnonzero(~finite)[0])
        name = ids[first_row + b] if ids is not None else first_row + b
        raise ValueError(
            f"crop embeddings of utterance {name} are not finite (or too "
            "large to square)"
        )
    norm_mean = None
    if normalised:
        if (sq == 0).any():
            b, k = (int(v[0]) for v in np.nonzero(sq == 0))
            name = ids[first_row + b] if ids is not None else first_row + b
            raise ValueError(
                f"crop {k} of utterance {name} is an all-zero embedding: its "
                "cosine is undefined"
            )
        inv = (1.0 / (np.sqrt(sq) * c.shape[1])).astype(c.dtype)
        norm_mean = np.einsum("bcd,bc->bd", c, inv)
    mean = c.sum(axis=1)
    mean /= c.shape[1]
    return CropStats(mean, norm_mean, sq.astype(np.float64).mean(axis=1))


def crop_statistics(crops, chunk_size=None, progress=False):
    """Crop statistics of one utterance or of many.

    Arguments
    ---------
    crops : array-like or torch.Tensor
        ``[n_crops, D]`` for one utterance, ``[U, n_crops, D]`` for many
        (a memory-mapped array is read in chunks).
    chunk_size : int, optional
        Utterances per chunk (default: about 64 MB of work memory).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    CropStats
        ``mean`` [D] or [U, D], ``norm_mean`` [D] or [U, D] and ``sq_norm``
        (float64, scalar or [U]); computed and returned in the input's
        precision (float64 input: float64; anything else: float32).

    Raises
    ------
    ValueError
        Wrong shape, non-finite values or an all-zero crop (named).

    Example
    -------
    >>> st = crop_statistics([[3.0, 4.0], [0.0, 2.0]])
    >>> st.mean.tolist(), st.norm_mean.round(9).tolist(), float(st.sq_norm)
    ([1.5, 3.0], [0.3, 0.9], 14.5)
    """
    c = _as_array(crops)
    single = c.ndim == 2
    if single:
        c = c[None]
    if c.ndim != 3 or min(c.shape) < 1:
        raise ValueError(
            f"crops must be [n_crops, D] or [U, n_crops, D], got {c.shape}"
        )
    if not np.issubdtype(c.dtype, np.floating):
        c = c.astype(np.float64)
    dtype = _out_dtype(c)
    n, _, d = c.shape
    step = _rows_per_chunk(c.shape[1] * d, chunk_size)
    mean = np.empty((n, d), dtype=dtype)
    norm_mean = np.empty((n, d), dtype=dtype)
    sq_norm = np.empty(n, dtype=np.float64)
    for s in tqdm(
        range(0, n, step), desc="crop statistics", disable=not progress
    ):
        st = _stats_block(c[s : s + step], s)
        mean[s : s + step] = st.mean
        norm_mean[s : s + step] = st.norm_mean
        sq_norm[s : s + step] = st.sq_norm
    if single:
        return CropStats(mean[0], norm_mean[0], sq_norm[0])
    return CropStats(mean, norm_mean, sq_norm)


def score_from_stats(stats_e, stats_t, method="sqeuclidean"):
    """Mean crop-pair score of aligned utterances from their statistics.

    Arguments
    ---------
    stats_e : CropStats
        Enrolment side ([D] or [B, D] vectors).
    stats_t : CropStats
        Test side, same shapes.
    method : str
        ``"sqeuclidean"``, ``"dot"`` or ``"cosine"``.

    Returns
    -------
    numpy.ndarray
        float64 scores, scalar or [B].

    Example
    -------
    >>> e = crop_statistics([[1.0, 0.0], [0.0, 1.0]])
    >>> t = crop_statistics([[1.0, 1.0]])
    >>> float(score_from_stats(e, t, "dot"))
    1.0
    >>> float(score_from_stats(e, t, "sqeuclidean"))  # -(1 + 1) / 2
    -1.0
    """
    _check_method(method)
    if method == "cosine":
        a = np.asarray(stats_e.norm_mean, dtype=np.float64)
        b = np.asarray(stats_t.norm_mean, dtype=np.float64)
        return np.einsum("...d,...d->...", a, b)
    a = np.asarray(stats_e.mean, dtype=np.float64)
    b = np.asarray(stats_t.mean, dtype=np.float64)
    dots = np.einsum("...d,...d->...", a, b)
    if method == "dot":
        return dots
    return 2.0 * dots - stats_e.sq_norm - stats_t.sq_norm


class ScoringVectors:
    """Utterances ready for closed-form scoring.

    ``score(i, j) = weight * scale[i] * scale[j] * <vectors[i], vectors[j]>
    + offset[i] + offset[j]``; ``scale`` and ``offset`` are optional
    (1 and 0). Build it with :meth:`from_embeddings`.

    Arguments
    ---------
    vectors : numpy.ndarray
        [U, D], possibly memory-mapped.
    weight : float
        Global factor.
    scale : numpy.ndarray, optional
        [U] per-utterance factor.
    offset : numpy.ndarray, optional
        [U] per-utterance offset.
    method : str, optional
        The method it implements (informative).
    ids : list of str, optional
        Utterance IDs (for messages).

    Example
    -------
    >>> sv = ScoringVectors.from_embeddings([[3.0, 4.0], [1.0, 0.0]], "cosine")
    >>> sv.score_pairs([0], [1]).round(12).tolist()
    [0.6]
    """

    def __init__(
        self,
        vectors,
        weight=1.0,
        scale=None,
        offset=None,
        method=None,
        ids=None,
    ):
        self.vectors = vectors
        self.weight = float(weight)
        self.scale = scale
        self.offset = offset
        self.method = method
        self.ids = ids
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be [U, D], got {vectors.shape}")
        for name, v in (("scale", scale), ("offset", offset)):
            if v is not None and v.shape != (vectors.shape[0],):
                raise ValueError(f"{name} must be [U], got {v.shape}")

    def __len__(self):
        return int(self.vectors.shape[0])

    @property
    def dim(self):
        """Vector dimension D."""
        return int(self.vectors.shape[1])

    @classmethod
    def from_embeddings(
        cls,
        embeddings,
        method="sqeuclidean",
        chunk_size=None,
        out_folder=None,
        progress=False,
    ):
        """Scoring vectors of single or multi-crop embeddings.

        Arguments
        ---------
        embeddings : array-like, torch.Tensor or EmbeddingStore
            ``[U, D]`` (one embedding per utterance: full-utterance
            scoring) or ``[U, n_crops, D]`` (crop embeddings: the mean over
            all crop pairs). Memory-mapped input is read in chunks.
        method : str
            ``"sqeuclidean"``, ``"dot"`` or ``"cosine"``.
        chunk_size : int, optional
            Utterances per chunk.
        out_folder : str or os.PathLike, optional
            For crop input: write the [U, D] vectors to
            ``<out_folder>/<method>_vectors.npy`` (atomically) and
            memory-map them, instead of holding them in memory.
        progress : bool
            Show a tqdm bar.

        Returns
        -------
        ScoringVectors
            For ``[U, D]`` input the vectors are the input itself (no copy).

        Example
        -------
        >>> crops = [[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [0.0, 0.0]]]
        >>> sv = ScoringVectors.from_embeddings(crops, "dot")
        >>> sv.vectors.tolist()
        [[0.5, 0.5], [1.0, 1.0]]
        """
        _check_method(method)
        ids = None
        if isinstance(embeddings, EmbeddingStore):
            ids = embeddings.ids
            embeddings = embeddings.embeddings
        emb = _as_array(embeddings)
        if emb.dtype not in (np.float32, np.float64):
            emb = emb.astype(np.float32)  # integers, float16, bfloat16
        if emb.ndim == 3 and emb.shape[1] == 1:
            emb = emb[:, 0]  # SpeechBrain's [U, 1, D]
        if emb.ndim not in (2, 3) or min(emb.shape) < 1:
            raise ValueError(
                f"embeddings must be [U, D] or [U, n_crops, D], got {emb.shape}"
            )
        n = emb.shape[0]
        step = _rows_per_chunk(int(np.prod(emb.shape[1:])), chunk_size)
        chunks = tqdm(
            range(0, n, step),
            desc=f"{method} scoring vectors",
            disable=not progress,
        )
        if emb.ndim == 2:
            sq = np.empty(n, dtype=np.float64) if method != "dot" else None
            if sq is not None:
                for s in chunks:
                    blk = np.asarray(emb[s : s + step], dtype=np.float64)
                    if not np.isfinite(blk).all():
                        raise ValueError("embeddings have NaN or inf values")
                    sq[s : s + step] = np.einsum("ud,ud->u", blk, blk)
            if method == "dot":
                return cls(emb, method=method, ids=ids)
            if method == "sqeuclidean":
                return cls(emb, 2.0, offset=-sq, method=method, ids=ids)
            if (sq == 0).any():
                i = int(np.flatnonzero(sq == 0)[0])
                raise ValueError(
                    f"embedding of utterance "
                    f"{ids[i] if ids else i} is all zeros: cosine undefined"
                )
            return cls(emb, scale=1.0 / np.sqrt(sq), method=method, ids=ids)
        shape = (n, emb.shape[2])
        dtype = _out_dtype(emb)
        offset = np.empty(n, dtype=np.float64)
        if out_folder is None:
            vec = np.empty(shape, dtype=dtype)
            _fill_vectors(vec, offset, emb, method, chunks, step, ids)
        else:
            path = os.path.join(os.fspath(out_folder), f"{method}_vectors.npy")
            with atomic_path(path) as tmp:
                vec = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=dtype, shape=shape
                )
                _fill_vectors(vec, offset, emb, method, chunks, step, ids)
                vec.flush()
                del vec
            vec = np.load(path, mmap_mode="r")
        if method == "sqeuclidean":
            return cls(vec, 2.0, offset=offset, method=method, ids=ids)
        return cls(vec, method=method, ids=ids)

    @classmethod
    def from_stats(cls, stats, method="sqeuclidean"):
        """Scoring vectors of precomputed crop statistics.

        Arguments
        ---------
        stats : CropStats
            From :func:`crop_statistics` ([U, D] vectors).
        method : str
            ``"sqeuclidean"``, ``"dot"`` or ``"cosine"``.

        Returns
        -------
        ScoringVectors

        Example
        -------
        >>> st = crop_statistics([[[1.0, 0.0], [0.0, 1.0]]])
        >>> ScoringVectors.from_stats(st, "sqeuclidean").offset.tolist()
        [-1.0]
        """
        _check_method(method)
        vec = stats.norm_mean if method == "cosine" else stats.mean
        if vec is None or np.ndim(vec) != 2:
            raise ValueError(
                "from_stats needs the [U, D] statistics of several "
                "utterances, with norm_mean for 'cosine'"
            )
        if method == "sqeuclidean":
            off = -np.asarray(stats.sq_norm, dtype=np.float64)
            return cls(vec, 2.0, offset=off, method=method)
        return cls(vec, method=method)

    def _check_compatible(self, other):
        """Both tables must implement the same score."""
        if (
            other.method != self.method
            or other.weight != self.weight
            or other.dim != self.dim
            or (other.scale is None) != (self.scale is None)
            or (other.offset is None) != (self.offset is None)
        ):
            raise ValueError(
                f"the two tables were built for other methods or sizes: "
                f"{self.method} (D={self.dim}) vs {other.method} "
                f"(D={other.dim})"
            )

    def _rows(self, idx):
        """Gather rows (stored dtype), their scale and offset."""
        v = np.asarray(self.vectors[idx])
        sc = None if self.scale is None else self.scale[idx]
        off = None if self.offset is None else self.offset[idx]
        return v, sc, off

    def score_pairs(
        self, enrol_idx, test_idx, chunk_size=None, progress=False, other=None
    ):
        """Scores of trials given as row-index pairs, in chunks.

        Arguments
        ---------
        enrol_idx : array-like of int
            [T] rows of the enrolment utterances.
        test_idx : array-like of int
            [T] rows of the test utterances (in ``other`` when given).
        chunk_size : int, optional
            Trials per chunk (default: about 1 MB of vectors per side).
        progress : bool
            Show a tqdm bar.
        other : ScoringVectors, optional
            Table of the test side (default: this one).

        Returns
        -------
        numpy.ndarray
            float64 [T].

        Example
        -------
        >>> sv = ScoringVectors.from_embeddings([[1.0, 2.0], [3.0, 4.0]], "dot")
        >>> sv.score_pairs([0, 1], [1, 1]).tolist()
        [11.0, 25.0]
        """
        other = self if other is None else other
        self._check_compatible(other)
        ie = np.asarray(enrol_idx, dtype=np.int64).reshape(-1)
        it = np.asarray(test_idx, dtype=np.int64).reshape(-1)
        if ie.shape != it.shape:
            raise ValueError(f"{ie.size} enrolment but {it.size} test indices")
        for name, idx, n in (
            ("enrol", ie, len(self)),
            ("test", it, len(other)),
        ):
            bad = (idx < 0) | (idx >= n)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise IndexError(
                    f"trial {k + 1}: {name} row {idx[k]} is out of range for "
                    f"{n} utterances"
                )
        out = np.empty(ie.size, dtype=np.float64)
        if chunk_size is None:
            # Small blocks (about 1 MB a side) stay in cache; trials sorted
            # by enrolment row reuse rows and read a memory map in order.
            row_bytes = self.dim * np.dtype(self.vectors.dtype).itemsize
            step = max(16, 2**20 // row_bytes)
        else:
            step = _rows_per_chunk(self.dim, chunk_size)
        order = np.argsort(ie, kind="stable") if ie.size > step else None
        # The gathered blocks are not deleted before the next ones exist:
        # freeing both first lets malloc hand the memory back to the system
        # and fault it in again on every chunk (5-10 times slower).
        for s in tqdm(
            range(0, ie.size, step), desc="scoring", disable=not progress
        ):
            sel = (
                order[s : s + step] if order is not None else slice(s, s + step)
            )
            a, sa, oa = self._rows(ie[sel])
            b, sb, ob = other._rows(it[sel])
            # One dot per trial, as a batched matrix product (BLAS) in the
            # stored precision.
            sc = np.matmul(a[:, None, :], b[:, :, None])[:, 0, 0]
            sc = sc.astype(np.float64)
            if self.weight != 1.0:
                sc *= self.weight
            if sa is not None:
                sc *= sa * sb
            if oa is not None:
                sc += oa + ob
            out[sel] = sc
        return out

    def score_block(self, rows, other):
        """Scores of some of these utterances against all of ``other``.

        Arguments
        ---------
        rows : array-like of int
            [R] rows of this table.
        other : ScoringVectors
            [M] utterances (a cohort, say) built with the same method.

        Returns
        -------
        numpy.ndarray
            float64 [R, M]. Callers chunk ``rows`` to bound memory.

        Example
        -------
        >>> a = ScoringVectors.from_embeddings([[1.0, 0.0]], "dot")
        >>> b = ScoringVectors.from_embeddings([[2.0, 0.0], [0.0, 1.0]], "dot")
        >>> a.score_block([0], b).tolist()
        [[2.0, 0.0]]
        """
        self._check_compatible(other)
        a, sa, oa = self._rows(np.asarray(rows, dtype=np.int64))
        # BLAS in the stored precision (float32 stores: float32 products).
        m = np.asarray(a @ np.asarray(other.vectors).T, dtype=np.float64)
        if self.weight != 1.0:
            m *= self.weight
        if sa is not None:
            m *= sa[:, None] * other.scale[None, :]
        if oa is not None:
            m += oa[:, None] + other.offset[None, :]
        return m


def _fill_vectors(vec, offset, emb, method, chunks, step, ids):
    """Write the scoring vectors of crop embeddings chunk by chunk."""
    for s in chunks:
        st = _stats_block(emb[s : s + step], s, ids, method == "cosine")
        vec[s : s + step] = st.norm_mean if method == "cosine" else st.mean
        offset[s : s + step] = -st.sq_norm


def explicit_pair_scores(
    embeddings, enrol_idx, test_idx, method="euclidean", chunk_size=None
):
    """Mean crop-pair scores computed pair by pair (batched, not a loop).

    The reference for the closed forms, and the only way to get the mean of
    unsquared Euclidean distances (``"euclidean"``). Every trial builds its
    ``C x C`` matrix of crop-pair scores, C times the closed form's work.

    Arguments
    ---------
    embeddings : array-like, torch.Tensor or EmbeddingStore
        ``[U, n_crops, D]`` (or ``[U, D]``: one crop).
    enrol_idx : array-like of int
        [T] enrolment rows.
    test_idx : array-like of int
        [T] test rows.
    method : str
        ``"euclidean"``, ``"sqeuclidean"``, ``"dot"`` or ``"cosine"``.
    chunk_size : int, optional
        Trials per chunk.

    Returns
    -------
    numpy.ndarray
        float64 [T].

    Example
    -------
    >>> crops = [[[0.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [3.0, 0.0]]]
    >>> explicit_pair_scores(crops, [0], [1]).tolist()  # -(3 + 3.6056) / 2
    [-3.302775637731995]
    """
    _check_method(method, METHODS)
    if isinstance(embeddings, EmbeddingStore):
        embeddings = embeddings.embeddings
    emb = _as_array(embeddings)
    if emb.ndim == 2:
        emb = emb[:, None, :]
    if emb.ndim != 3:
        raise ValueError(f"embeddings must be [U, C, D], got {emb.shape}")
    ie = np.asarray(enrol_idx, dtype=np.int64).reshape(-1)
    it = np.asarray(test_idx, dtype=np.int64).reshape(-1)
    out = np.empty(ie.size, dtype=np.float64)
    step = _rows_per_chunk(emb.shape[1] * emb.shape[2], chunk_size)
    for s in range(0, ie.size, step):
        e = np.asarray(emb[ie[s : s + step]], dtype=np.float64)
        t = np.asarray(emb[it[s : s + step]], dtype=np.float64)
        g = np.einsum("bcd,bkd->bck", e, t)
        ne = np.einsum("bcd,bcd->bc", e, e)
        nt = np.einsum("bkd,bkd->bk", t, t)
        if method == "dot":
            pair = g
        elif method == "cosine":
            pair = g / np.sqrt(ne[:, :, None] * nt[:, None, :])
        else:
            pair = -(ne[:, :, None] + nt[:, None, :] - 2.0 * g)
            if method == "euclidean":
                pair = -np.sqrt(np.maximum(-pair, 0.0))
        out[s : s + step] = pair.mean(axis=(1, 2))
    return out


def as_scoring_vectors(source, method="sqeuclidean", **kwargs):
    """Turn embeddings, crop statistics or a store into ScoringVectors.

    Arguments
    ---------
    source : ScoringVectors, CropStats, EmbeddingStore, array or tensor
        ``[U, D]`` embeddings, ``[U, n_crops, D]`` crop embeddings, their
        :func:`crop_statistics`, a store, or ready ScoringVectors (returned
        as they are; their method must be ``method``).
    method : str
        ``"sqeuclidean"``, ``"dot"`` or ``"cosine"``.
    **kwargs
        Passed to :meth:`ScoringVectors.from_embeddings`.

    Returns
    -------
    ScoringVectors

    Example
    -------
    >>> st = crop_statistics([[[1.0, 0.0], [0.0, 1.0]]])
    >>> as_scoring_vectors(st, "dot").vectors.tolist()
    [[0.5, 0.5]]
    """
    _check_method(method)
    if isinstance(source, ScoringVectors):
        if source.method is not None and source.method != method:
            raise ValueError(
                f"scoring vectors were built for {source.method!r}, not "
                f"{method!r}"
            )
        return source
    if isinstance(source, CropStats):
        return ScoringVectors.from_stats(source, method)
    return ScoringVectors.from_embeddings(source, method, **kwargs)


def score_trials(
    source,
    enrol_idx,
    test_idx,
    method="sqeuclidean",
    chunk_size=None,
    progress=False,
):
    """Scores of trials given as row indices, in closed form.

    Arguments
    ---------
    source : CropStats, array, tensor, EmbeddingStore or ScoringVectors
        The utterances: ``[U, n_crops, D]`` crop embeddings or their
        :func:`crop_statistics` (mean over the crop pairs), or ``[U, D]``
        whole-utterance embeddings.
    enrol_idx : array-like of int
        [T] rows of the enrolment utterances.
    test_idx : array-like of int
        [T] rows of the test utterances.
    method : str
        ``"sqeuclidean"`` (default), ``"dot"`` or ``"cosine"``.
    chunk_size : int, optional
        Trials per chunk (bounded memory).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    numpy.ndarray
        float64 [T].

    Example
    -------
    >>> crops = [[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [0.0, 2.0]]]
    >>> stats = crop_statistics(crops)
    >>> score_trials(stats, [0], [1], "dot").tolist()  # (.5,.5).(1,2)
    [1.5]
    """
    sv = as_scoring_vectors(source, method)
    return sv.score_pairs(
        enrol_idx, test_idx, chunk_size=chunk_size, progress=progress
    )


def cosine_scores(embeddings, enrol_idx, test_idx, chunk_size=None):
    """Full-utterance cosine scores of trials given as row indices.

    Arguments
    ---------
    embeddings : array-like, torch.Tensor or EmbeddingStore
        [U, D] (or SpeechBrain's [U, 1, D]) whole-utterance embeddings.
    enrol_idx : array-like of int
        [T] enrolment rows.
    test_idx : array-like of int
        [T] test rows.
    chunk_size : int, optional
        Trials per chunk.

    Returns
    -------
    numpy.ndarray
        float64 [T] cosine similarities.

    Example
    -------
    >>> cosine_scores([[3.0, 4.0], [0.0, 1.0]], [0], [1]).round(6).tolist()
    [0.8]
    """
    sv = ScoringVectors.from_embeddings(embeddings, "cosine")
    if sv.vectors.ndim != 2 or sv.scale is None:
        raise ValueError("cosine_scores needs [U, D] embeddings")
    return sv.score_pairs(enrol_idx, test_idx, chunk_size=chunk_size)


def score_trial_list(
    store,
    trials,
    method="sqeuclidean",
    cohort=None,
    top_k=300,
    chunk_size=None,
    out_folder=None,
    progress=False,
    source=None,
):
    """Score a trial list against an embedding store.

    Arguments
    ---------
    store : EmbeddingStore or str
        The test embeddings (or the store folder).
    trials : sequence or str
        ``(label, enrol, test)`` / ``(enrol, test)`` tuples, or the path of
        a trial file (streamed by ``read_trial_indices``).
    method : str
        One of :data:`METHODS` (see the module docstring).
    cohort : array-like, EmbeddingStore or ScoringVectors, optional
        An AS-norm cohort; when given, the scores are AS-normalised
        (``dampit.metrics.asnorm.as_norm``). Not with ``"euclidean"``.
    top_k : int or None
        AS-norm cohort size per side (None: the whole cohort, S-norm).
    chunk_size : int, optional
        Trials per chunk.
    out_folder : str, optional
        Where to keep the [U, D] scoring vectors of a crop store
        memory-mapped (default: in memory).
    progress : bool
        Show tqdm bars.
    source : str, optional
        Name of the trial list for error messages.

    Returns
    -------
    scores : numpy.ndarray
        float64 [T].
    labels : numpy.ndarray or None
        int64 [T], when the trials carry labels.
    enrol_idx, test_idx : numpy.ndarray
        int64 [T] store rows of each side.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> from dampit.metrics.embedding_store import save_embeddings
    >>> rng = np.random.default_rng(0)
    >>> store = save_embeddings(
    ...     tempfile.mkdtemp(), ["a", "b", "c"], rng.normal(size=(3, 10, 8))
    ... )
    >>> trials = [(1, "a", "b"), (0, "a", "c")]
    >>> scores, labels, _, _ = score_trial_list(store, trials)
    >>> scores.shape, labels.tolist()
    ((2,), [1, 0])
    """
    _check_method(method, METHODS)
    if not isinstance(store, EmbeddingStore):
        store = EmbeddingStore(store)
    if isinstance(trials, (str, os.PathLike)):
        ie, it, labels = read_trial_indices(trials, store)
    else:
        ie, it, labels = store.trial_indices(trials, source=source)
    if method == "euclidean":
        if cohort is not None:
            raise ValueError("AS-norm needs a closed-form method")
        scores = explicit_pair_scores(store, ie, it, method, chunk_size)
        return scores, labels, ie, it
    sv = ScoringVectors.from_embeddings(
        store, method, out_folder=out_folder, progress=progress
    )
    scores = sv.score_pairs(ie, it, chunk_size=chunk_size, progress=progress)
    if cohort is not None:
        from dampit.metrics.asnorm import as_norm

        scores = as_norm(
            scores, ie, it, sv, cohort, top_k=top_k, progress=progress
        )
    return scores, labels, ie, it


def write_scores(path, enrol_ids, test_ids, scores, labels=None):
    """Write a score file, one trial a line, atomically.

    Lines are ``enrol test label score`` as SpeechBrain's verification
    recipe writes them (``enrol test score`` without labels).

    Arguments
    ---------
    path : str or os.PathLike
        Destination.
    enrol_ids : sequence of str
        [T] enrolment IDs.
    test_ids : sequence of str
        [T] test IDs.
    scores : array-like
        [T] scores.
    labels : array-like, optional
        [T] 0/1 labels.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "scores.txt")
    >>> write_scores(p, ["a"], ["b"], [0.5], [1])
    >>> open(p).read()
    'a b 1 0.5\\n'
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = scores.size
    if len(enrol_ids) != n or len(test_ids) != n:
        raise ValueError(
            f"{len(enrol_ids)} enrol IDs, {len(test_ids)} test IDs and "
            f"{n} scores: they must match"
        )
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.size != n:
            raise ValueError(f"{labels.size} labels for {n} scores")
    step = 1 << 16
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for s in range(0, n, step):
                # repr: the shortest string that reads back the same float.
                cols = [
                    enrol_ids[s : s + step],
                    test_ids[s : s + step],
                    map(repr, scores[s : s + step].tolist()),
                ]
                if labels is not None:
                    lab = labels[s : s + step].astype(np.int64).tolist()
                    cols.insert(2, map(str, lab))
                f.write("\n".join(map(" ".join, zip(*cols))) + "\n")


def read_scores(path):
    """Read a score file written by :func:`write_scores`.

    Arguments
    ---------
    path : str or os.PathLike
        The score file.

    Returns
    -------
    enrol_ids : list of str
    test_ids : list of str
    scores : numpy.ndarray
        float64 [T].
    labels : numpy.ndarray or None
        int64 [T] when the file has labels.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "scores.txt")
    >>> write_scores(p, ["a", "a"], ["b", "c"], [0.5, -1.0], [1, 0])
    >>> read_scores(p)[2].tolist()
    [0.5, -1.0]
    """
    enrol, test, scores, labels = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            p = line.split()
            if not p:
                continue
            if len(p) not in (3, 4):
                raise ValueError(
                    f"{path}:{lineno}: expected 'enrol test [label] score'"
                )
            try:
                scores.append(float(p[-1]))
                if len(p) == 4:
                    labels.append(int(p[2]))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: bad number in {line!r}")
            enrol.append(p[0])
            test.append(p[1])
    lab = np.asarray(labels, dtype=np.int64) if labels else None
    if lab is not None and lab.size != len(scores):
        raise ValueError(f"{path}: some lines have labels, some do not")
    return enrol, test, np.asarray(scores, dtype=np.float64), lab
