"""An on-disk, memory-mappable cache of utterance embeddings.

A store is a folder with two files:

- ``embeddings.npy``: one row per utterance, ``[U, D]`` (one embedding per
  utterance) or ``[U, n_crops, D]`` (the embeddings of its crops); a plain
  ``.npy`` file, so ``numpy.load(..., mmap_mode="r")`` reads it lazily;
- ``ids.txt``: the utterance IDs, one per line, in row order.

Both are written atomically (``dampit.utils.atomic``): a crash never leaves
a half-written file behind. :class:`EmbeddingStoreWriter` fills the array
row by row through a memory map, so a store larger than memory (100,000
utterances, say) is written in bounded memory, and :class:`EmbeddingStore`
memory-maps it back.

Trial lists refer to utterances by ID; :meth:`EmbeddingStore.trial_indices`
and :func:`read_trial_indices` turn them into row-index arrays and name the
trial (and the file line) of any ID the store lacks.
"""

import contextlib
import os
from array import array

import numpy as np

from dampit.utils.atomic import atomic_path, atomic_write_text

__all__ = [
    "EMBEDDINGS_FILE",
    "IDS_FILE",
    "EmbeddingStore",
    "EmbeddingStoreWriter",
    "UnknownUtteranceError",
    "read_trial_indices",
    "save_embeddings",
]

EMBEDDINGS_FILE = "embeddings.npy"
IDS_FILE = "ids.txt"


class UnknownUtteranceError(LookupError):
    """A trial or a lookup names an utterance the store does not hold."""


def _check_id(utt_id):
    """Reject IDs that cannot round-trip through ``ids.txt``."""
    if not isinstance(utt_id, str) or not utt_id:
        raise ValueError(f"utterance IDs must be non-empty str: {utt_id!r}")
    if utt_id != utt_id.strip() or "\n" in utt_id or "\r" in utt_id:
        raise ValueError(
            f"utterance ID {utt_id!r} has leading/trailing white space or a "
            "line break"
        )


def _as_array(x):
    """Tensor or array-like -> numpy array (no copy for numpy input)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


class EmbeddingStoreWriter:
    """Write a store row by row through a memory map, atomically.

    Arguments
    ---------
    folder : str or os.PathLike
        The store folder (created if needed). Existing store files in it
        are replaced only when :meth:`close` succeeds.
    n_utts : int
        Number of utterances (rows).
    item_shape : tuple of int
        Shape of one utterance's entry: ``(D,)`` or ``(n_crops, D)``.
    dtype : str or numpy.dtype
        Stored dtype (default float32).

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with EmbeddingStoreWriter(d, 2, (3,)) as w:
    ...     w.add("a", [1.0, 0.0, 0.0])
    ...     w.add("b", [0.0, 2.0, 0.0])
    >>> EmbeddingStore(d)["b"].tolist()
    [0.0, 2.0, 0.0]
    """

    def __init__(self, folder, n_utts, item_shape, dtype="float32"):
        self.folder = os.fspath(folder)
        self.n_utts = int(n_utts)
        self.item_shape = tuple(int(s) for s in item_shape)
        if self.n_utts < 1:
            raise ValueError(f"n_utts must be >= 1, got {n_utts}")
        if len(self.item_shape) not in (1, 2) or min(self.item_shape) < 1:
            raise ValueError(
                "item_shape must be (D,) or (n_crops, D) with positive "
                f"sizes, got {item_shape}"
            )
        os.makedirs(self.folder, exist_ok=True)
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(
            atomic_path(os.path.join(self.folder, EMBEDDINGS_FILE))
        )
        self._array = np.lib.format.open_memmap(
            tmp,
            mode="w+",
            dtype=np.dtype(dtype),
            shape=(self.n_utts,) + self.item_shape,
        )
        self._ids = []
        self._seen = set()
        self._closed = False

    def __len__(self):
        return len(self._ids)

    def add(self, utt_id, embedding):
        """Append one utterance.

        Arguments
        ---------
        utt_id : str
            Its ID (unique, no line breaks).
        embedding : array-like or torch.Tensor
            Its embedding, of shape ``item_shape`` (a leading singleton
            axis, as in SpeechBrain's ``[1, D]``, is dropped).
        """
        self.add_batch([utt_id], _as_array(embedding)[None])

    def add_batch(self, utt_ids, embeddings):
        """Append several utterances.

        Arguments
        ---------
        utt_ids : sequence of str
            Their IDs.
        embeddings : array-like or torch.Tensor
            ``[B, *item_shape]`` (or SpeechBrain's ``[B, 1, D]`` when
            ``item_shape == (D,)``).
        """
        if self._closed:
            raise RuntimeError("EmbeddingStoreWriter is closed")
        emb = _as_array(embeddings)
        utt_ids = list(utt_ids)
        want = (len(utt_ids),) + self.item_shape
        if emb.shape != want and emb.ndim == len(want) + 1:
            if emb.shape[1] == 1:
                emb = emb[:, 0]
        if emb.shape != want:
            raise ValueError(
                f"embeddings for {utt_ids[:3]}... have shape {emb.shape}, "
                f"expected {want}"
            )
        start = len(self._ids)
        if start + len(utt_ids) > self.n_utts:
            raise ValueError(
                f"store was opened for {self.n_utts} utterances; adding "
                f"{utt_ids[0]!r} would exceed it"
            )
        finite = np.isfinite(emb.reshape(len(utt_ids), -1)).all(axis=1)
        batch = set()
        for i, u in enumerate(utt_ids):
            _check_id(u)
            if u in self._seen or u in batch:
                raise ValueError(f"duplicate utterance ID {u!r}")
            batch.add(u)
            if not finite[i]:
                raise ValueError(f"embedding of {u!r} has NaN or inf values")
        for u in utt_ids:
            self._seen.add(u)
            self._ids.append(u)
        self._array[start : start + len(utt_ids)] = emb

    def close(self):
        """Check that every row was written, then publish the store."""
        if self._closed:
            return
        if len(self._ids) != self.n_utts:
            self.abort()
            raise ValueError(
                f"store {self.folder} was opened for {self.n_utts} "
                f"utterances but {len(self._ids)} were added; nothing written"
            )
        self._array.flush()
        del self._array
        self._closed = True
        self._stack.close()  # renames embeddings.npy into place
        atomic_write_text(
            os.path.join(self.folder, IDS_FILE), "\n".join(self._ids) + "\n"
        )

    def abort(self):
        """Discard everything written so far (the old store stays)."""
        if self._closed:
            return
        self._closed = True
        if hasattr(self, "_array"):
            del self._array
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def save_embeddings(folder, ids, embeddings=None):
    """Write a whole store at once.

    Arguments
    ---------
    folder : str or os.PathLike
        The store folder.
    ids : sequence of str or dict
        Row IDs, or a dict ``{utt_id: [D] or [n_crops, D]}`` (then
        ``embeddings`` is not given).
    embeddings : array-like or torch.Tensor, optional
        ``[U, D]``, SpeechBrain's ``[U, 1, D]`` or ``[U, n_crops, D]``,
        one row per ID.

    Returns
    -------
    EmbeddingStore
        The store, memory-mapped.

    Example
    -------
    >>> import tempfile
    >>> store = save_embeddings(tempfile.mkdtemp(), {"a": [1.0, 2.0]})
    >>> store.ids, store.dim
    (['a'], 2)
    >>> store = save_embeddings(tempfile.mkdtemp(), ["a", "b"], [[1.0], [2.0]])
    >>> store.embeddings.tolist()
    [[1.0], [2.0]]
    """
    if isinstance(ids, dict):
        if embeddings is not None:
            raise ValueError("give embeddings either as a dict or as an array")
        emb_dict = ids
        ids = list(emb_dict)
        if not ids:
            raise ValueError("no embeddings to save")
        first = _as_array(emb_dict[ids[0]])
        if first.ndim == 2 and first.shape[0] == 1:
            first = first[0]
        writer = EmbeddingStoreWriter(folder, len(ids), first.shape)
        with writer:
            for u in ids:
                writer.add(u, emb_dict[u])
        return EmbeddingStore(folder)
    if embeddings is None:
        raise ValueError("embeddings are needed when ids is not a dict")
    if isinstance(ids, str):
        raise ValueError("ids must be a sequence of IDs, not one string")
    arr = _as_array(embeddings)
    ids = list(ids)
    if arr.ndim == 3 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim not in (2, 3) or arr.shape[0] != len(ids):
        raise ValueError(
            f"embeddings must be [U, D] or [U, n_crops, D] with U = "
            f"{len(ids)} ids, got shape {arr.shape}"
        )
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    with EmbeddingStoreWriter(folder, len(ids), arr.shape[1:], dtype) as w:
        step = max(1, 2**24 // max(1, arr[0].size))
        for s in range(0, len(ids), step):
            w.add_batch(ids[s : s + step], arr[s : s + step])
    return EmbeddingStore(folder)


class EmbeddingStore:
    """A store written by :class:`EmbeddingStoreWriter`, memory-mapped.

    Arguments
    ---------
    folder : str or os.PathLike
        The store folder.
    mmap : bool
        Memory-map the array (default) instead of reading it into memory.

    Attributes
    ----------
    ids : list of str
        Utterance IDs in row order.
    embeddings : numpy.ndarray or numpy.memmap
        ``[U, D]`` or ``[U, n_crops, D]``.
    index : dict
        ``utt_id -> row``.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> _ = save_embeddings(d, ["u1", "u2"], np.ones((2, 10, 4)))
    >>> store = EmbeddingStore(d)
    >>> len(store), store.n_crops, store.dim, store["u2"].shape
    (2, 10, 4, (10, 4))
    >>> type(store.embeddings).__name__
    'memmap'
    """

    def __init__(self, folder, mmap=True):
        self.folder = os.fspath(folder)
        npy = os.path.join(self.folder, EMBEDDINGS_FILE)
        idf = os.path.join(self.folder, IDS_FILE)
        for p in (npy, idf):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"embedding store file missing: {p}")
        try:
            self.embeddings = np.load(npy, mmap_mode="r" if mmap else None)
        except Exception as exc:
            raise ValueError(f"cannot read embedding store {npy}: {exc}")
        with open(idf, encoding="utf-8") as f:
            self.ids = f.read().splitlines()
        if self.embeddings.ndim not in (2, 3):
            raise ValueError(
                f"{npy}: expected [U, D] or [U, n_crops, D], got shape "
                f"{self.embeddings.shape}"
            )
        if len(self.ids) != self.embeddings.shape[0]:
            raise ValueError(
                f"embedding store {self.folder} is inconsistent: "
                f"{len(self.ids)} IDs in {IDS_FILE} but "
                f"{self.embeddings.shape[0]} rows in {EMBEDDINGS_FILE}"
            )
        self.index = {u: i for i, u in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise ValueError(f"{idf}: duplicate utterance IDs")

    def __len__(self):
        return len(self.ids)

    def __contains__(self, utt_id):
        return utt_id in self.index

    def __getitem__(self, utt_id):
        return self.embeddings[self.row(utt_id)]

    @property
    def dim(self):
        """Embedding dimension D."""
        return int(self.embeddings.shape[-1])

    @property
    def n_crops(self):
        """Crops per utterance (None for one embedding per utterance)."""
        if self.embeddings.ndim == 3:
            return int(self.embeddings.shape[1])
        return None

    def row(self, utt_id):
        """Row index of one utterance.

        Arguments
        ---------
        utt_id : str
            The utterance ID.

        Returns
        -------
        int
            Its row.
        """
        try:
            return self.index[utt_id]
        except KeyError:
            raise UnknownUtteranceError(
                f"utterance {utt_id!r} is not in the embedding store "
                f"{self.folder} ({len(self)} utterances)"
            ) from None

    def trial_indices(self, trials, source=None):
        """Row indices of the enrolment and test side of every trial.

        Arguments
        ---------
        trials : sequence
            ``(label, enrol_id, test_id)`` or ``(enrol_id, test_id)``
            tuples, as ``dampit.dataio.trials.read_trials`` returns.
        source : str, optional
            Name of the trial list, for error messages.

        Returns
        -------
        enrol_idx : numpy.ndarray
            int64 [T].
        test_idx : numpy.ndarray
            int64 [T].
        labels : numpy.ndarray or None
            int64 [T] when the trials carry labels.

        Raises
        ------
        UnknownUtteranceError
            Naming the trial (1-based), the ID and the list.
        """
        n = len(trials)
        enrol = np.empty(n, dtype=np.int64)
        test = np.empty(n, dtype=np.int64)
        labels = None
        where = f" of {source}" if source else ""
        for i, t in enumerate(trials):
            if len(t) == 3:
                if labels is None:
                    if i:
                        raise ValueError(
                            f"trial {i + 1}{where} has a label, the first "
                            "trials have none"
                        )
                    labels = np.empty(n, dtype=np.int64)
                labels[i] = int(t[0])
                e, s = t[1], t[2]
            elif len(t) == 2:
                if labels is not None:
                    raise ValueError(f"trial {i + 1}{where} has no label")
                e, s = t
            else:
                raise ValueError(
                    f"trial {i + 1}{where}: expected (label, enrol, test) or "
                    f"(enrol, test), got {t!r}"
                )
            for arr, u in ((enrol, e), (test, s)):
                j = self.index.get(u)
                if j is None:
                    raise UnknownUtteranceError(
                        f"trial {i + 1}{where} ({e} {s}): utterance {u!r} "
                        f"is not in the embedding store {self.folder}"
                    )
                arr[i] = j
        return enrol, test, labels


def _parse_lines(lines, lineno, path, index, ncol, enrol, test, labels):
    """Parse trial lines one by one; raise naming the first bad line."""
    for k, line in enumerate(lines, lineno + 1):
        parts = line.split()
        if not parts:
            continue
        if ncol is None:
            ncol = len(parts)
        if ncol not in (2, 3):
            raise ValueError(
                f"{path}:{k}: expected 'label enrol test' or 'enrol test', "
                f"got {line.strip()!r}"
            )
        if len(parts) != ncol:
            raise ValueError(
                f"{path}:{k}: expected {ncol} columns, got {line.strip()!r}"
            )
        if ncol == 3 and parts[0] not in ("0", "1"):
            raise ValueError(
                f"{path}:{k}: label must be 0 or 1, got {parts[0]!r}"
            )
        rows = []
        for u in parts[-2:]:
            j = index.get(u)
            if j is None:
                raise UnknownUtteranceError(
                    f"{path}:{k}: utterance {u!r} is not in the embedding store"
                )
            rows.append(j)
        enrol.append(rows[0])
        test.append(rows[1])
        if ncol == 3:
            labels.append(parts[0] == "1")


def read_trial_indices(path, store):
    """Stream a trial file straight into row-index arrays.

    The file has one trial a line, ``label enrol_id test_id`` (VoxCeleb's
    format) or ``enrol_id test_id``; blank lines are skipped. Only integer
    arrays are kept (8 bytes an index), so 10^6 trials cost about 17 MB.

    Arguments
    ---------
    path : str or os.PathLike
        The trial list.
    store : EmbeddingStore or dict
        The store (or an ``utt_id -> row`` dict).

    Returns
    -------
    enrol_idx : numpy.ndarray
        int64 [T].
    test_idx : numpy.ndarray
        int64 [T].
    labels : numpy.ndarray or None
        int64 [T], or None for a two-column list.

    Raises
    ------
    UnknownUtteranceError
        Naming the file, the line and the ID.
    ValueError
        A malformed line (named).

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = save_embeddings(d, {"a": [1.0], "b": [2.0]})
    >>> p = os.path.join(d, "trials.txt")
    >>> _ = open(p, "w").write("1 a b\\n0 b a\\n")
    >>> e, t, lab = read_trial_indices(p, EmbeddingStore(d))
    >>> e.tolist(), t.tolist(), lab.tolist()
    ([0, 1], [1, 0], [1, 0])
    """
    index = store.index if isinstance(store, EmbeddingStore) else store
    path = os.fspath(path)
    enrol, test, labels = array("q"), array("q"), array("b")
    ncol = None
    lineno = 0
    with open(path, encoding="utf-8") as f:
        while True:
            lines = f.readlines(1 << 20)  # about 1 MB of lines at a time
            if not lines:
                break
            if ncol is None:
                first = next((ln.split() for ln in lines if ln.strip()), None)
                if first is not None:
                    ncol = len(first)
            parts = list(map(str.split, lines))
            if ncol not in (2, 3) or set(map(len, parts)) != {ncol}:
                # Blank or malformed lines: the slow path names the line.
                _parse_lines(
                    lines, lineno, path, index, ncol, enrol, test, labels
                )
                ncol = ncol if ncol in (2, 3) else None
                lineno += len(lines)
                continue
            cols = list(zip(*parts))
            del parts
            e_idx = list(map(index.get, cols[-2]))
            t_idx = list(map(index.get, cols[-1]))
            bad_lab = ncol == 3 and not set(cols[0]) <= {"0", "1"}
            if None in e_idx or None in t_idx or bad_lab:
                _parse_lines(
                    lines, lineno, path, index, ncol, enrol, test, labels
                )
                raise AssertionError("unreachable: the slow path raises")
            enrol.extend(e_idx)
            test.extend(t_idx)
            if ncol == 3:
                labels.extend(v == "1" for v in cols[0])
            lineno += len(lines)
    if not enrol:
        raise ValueError(f"{path}: no trials")
    lab = np.frombuffer(labels, dtype=np.int8).astype(np.int64)
    return (
        np.frombuffer(enrol, dtype=np.int64).copy(),
        np.frombuffer(test, dtype=np.int64).copy(),
        lab if ncol == 3 else None,
    )
