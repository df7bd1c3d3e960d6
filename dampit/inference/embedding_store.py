"""An on-disk, memory-mapped embedding store, replaced as one unit.

A store is a folder holding ``embeddings.npy`` (``[U, D]`` or
``[U, n_crops, D]``, a plain ``.npy`` read memory-mapped), ``ids.txt`` (one
ID a line, in row order) and the text files written with it
(``paths.txt``). :class:`EmbeddingStoreWriter` locks the store for its
process (a second writer of the same store raises ``LockError``: a store
never holds rows of two runs) and fills a temporary sibling folder, unique
to the writer, row by row through a memory map (bounded memory; the space
is reserved first, so a full disk is an ``OSError`` naming the store, not a
SIGBUS); :func:`dampit.utils.atomic.atomic_folder` fsyncs it and renames
it into place, then deletes the old store. A crash between its two renames
is finished by the next writer or reader (the new folder was complete):
readers see the old store or the new one, never a mix. A folder that is
not a store is never replaced; the temporary folders a killed writer left
are deleted by the next one.

Windows of long files (``dampit-embed --window``) are rows too: their ID
is ``file_id@start-end`` (:func:`window_id`: seconds, 3 decimals), and
the store holds ``segments.tsv``, a header line ``id, file, start, end``
(tab-separated) then one line a row, in row order: the row's ID, the
file's ID and the window's start and end in seconds (6 decimals).
:meth:`EmbeddingStore.segments` reads it, checked against ``ids.txt``; a
store without it (whole files) gives None, and readers that do not know
it ignore it.
"""

import contextlib
import os
import pathlib

import numpy as np

from dampit.utils.atomic import atomic_folder, recover_folder
from dampit.utils.file_lock import LockError, output_lock

__all__ = [
    "EmbeddingStore",
    "EmbeddingStoreWriter",
    "check_id",
    "save_embeddings",
    "segments_text",
    "window_id",
]

EMBEDDINGS_FILE, IDS_FILE = "embeddings.npy", "ids.txt"
SEGMENTS_FILE = "segments.tsv"
SEGMENTS_HEADER = "id\tfile\tstart\tend"
STORE_FILES = (EMBEDDINGS_FILE, IDS_FILE)  # what makes a folder a store


def as_numpy(x):
    """Tensor or array-like -> numpy array (bfloat16 -> float32)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def check_id(utt_id):
    """Refuse an ID that ``ids.txt`` cannot hold (one line a row): empty,
    padded with spaces, or with a line break.

    Example
    -------
    >>> check_id("spk1/a b")
    >>> check_id("a\\nb")
    Traceback (most recent call last):
    ...
    ValueError: utterance ID 'a\\nb': empty, padded or 2 lines
    """
    if not isinstance(utt_id, str) or [utt_id] != utt_id.strip().splitlines():
        raise ValueError(f"utterance ID {utt_id!r}: empty, padded or 2 lines")


def window_id(file_id, start, end):
    """The ID of the window ``[start, end)`` seconds of a file.

    Example
    -------
    >>> window_id("spk1/a", 12.0, 13.5)
    'spk1/a@12.000-13.500'
    """
    return f"{file_id}@{start:.3f}-{end:.3f}"


def segments_text(ids, segments):
    """The text of ``segments.tsv`` for row IDs and their ``(file_id,
    start, end)``; a file ID with a tab, bounds that are not finite with
    ``0 <= start < end``, or an ID that is not ``file_id@...`` raises
    ``ValueError``.

    Example
    -------
    >>> print(segments_text(["a@0.000-1.500"], [("a", 0.0, 1.5)]), end="")
    id	file	start	end
    a@0.000-1.500	a	0.000000	1.500000
    """
    if len(ids) != len(segments):
        raise ValueError(f"{len(ids)} IDs but {len(segments)} segments")
    lines = [SEGMENTS_HEADER]
    for uid, (file_id, start, end) in zip(ids, segments):
        check_id(file_id)
        if "\t" in file_id:
            raise ValueError(f"file ID {file_id!r} has a tab")
        if not (np.isfinite([start, end]).all() and 0 <= start < end):
            raise ValueError(f"{uid!r}: bad segment {start} - {end} s")
        if not uid.startswith(f"{file_id}@"):
            raise ValueError(f"{uid!r} is not a window ID of {file_id!r}")
        lines.append(f"{uid}\t{file_id}\t{start:.6f}\t{end:.6f}")
    return "".join(line + "\n" for line in lines)


def _read_segments(path, ids):
    """``[(file_id, start, end)]`` of a ``segments.tsv``, checked against
    the store's IDs; a bad line raises ``ValueError`` naming it."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or lines[0] != SEGMENTS_HEADER:
        raise ValueError(f"{path}:1: not the header {SEGMENTS_HEADER!r}")
    if len(lines) - 1 != len(ids):
        raise ValueError(f"{path}: {len(lines) - 1} rows, {len(ids)} IDs")
    segments = []
    for n, (line, uid) in enumerate(zip(lines[1:], ids), start=2):
        cells = line.split("\t")
        if len(cells) != 4 or cells[0] != uid:
            raise ValueError(
                f"{path}:{n}: not 'ID, file, start, end' of {uid!r}"
            )
        try:
            file_id, start, end = cells[1], float(cells[2]), float(cells[3])
            segments_text([uid], [(file_id, start, end)])
        except ValueError as err:
            raise ValueError(f"{path}:{n}: {err}") from None
        segments.append((file_id, start, end))
    return segments


class EmbeddingStoreWriter:
    """Write a store row by row (:meth:`add_batch`); :meth:`close` makes it
    replace ``folder`` (new, empty or a store); an error discards it.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with EmbeddingStoreWriter(d, 2, (3,)) as w:
    ...     w.add_batch(["a", "b"], [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    >>> EmbeddingStore(d)["b"].tolist()
    [0.0, 2.0, 0.0]
    """

    def __init__(self, folder, n_utts, item_shape, dtype="float32"):
        self.folder = os.path.abspath(os.fspath(folder))
        self.n_utts, self.item_shape = int(n_utts), tuple(item_shape)
        self._ids, self._seen, self._tmp = [], set(), None
        self._stack = contextlib.ExitStack()
        with self._fs_errors():
            try:
                self._tmp = self._stack.enter_context(
                    atomic_folder(self.folder, True, STORE_FILES)
                )
            except FileExistsError:
                raise ValueError(
                    f"{self.folder} exists and is not an embedding store; "
                    "nothing written (give a new or empty folder)"
                ) from None
            npy = os.path.join(self._tmp, EMBEDDINGS_FILE)
            self._array = np.lib.format.open_memmap(
                npy, "w+", np.dtype(dtype), (self.n_utts,) + self.item_shape
            )
            with open(npy, "r+b") as f:  # reserve the space: no SIGBUS
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(npy))

    @contextlib.contextmanager
    def _fs_errors(self):
        """A file-system error discards the new store and names it."""
        try:
            yield
        except OSError as err:
            self.abort()
            msg = f"embedding store {self.folder}: {err.strerror or err}"
            raise OSError(err.errno, msg) from None

    def add_batch(self, utt_ids, embeddings):
        """Append utterances: IDs and ``[B, *item_shape]`` embeddings (or
        SpeechBrain's ``[B, 1, D]``)."""
        emb, utt_ids = as_numpy(embeddings), list(utt_ids)
        want, start = (len(utt_ids),) + self.item_shape, len(self._ids)
        if emb.ndim == len(want) + 1 and emb.shape[1] == 1:
            emb = emb[:, 0]
        if emb.shape != want or start + len(utt_ids) > self.n_utts:
            raise ValueError(
                f"embeddings of {utt_ids[:3]} have shape {emb.shape}, "
                f"expected {want}, with {start} of {self.n_utts} rows written"
            )
        finite = np.isfinite(emb.reshape(len(utt_ids), -1)).all(axis=1)
        batch = set()
        for u, ok in zip(utt_ids, finite):
            check_id(u)
            if u in self._seen or u in batch:
                raise ValueError(f"duplicate utterance ID {u!r}")
            if not ok:
                raise ValueError(f"embedding of {u!r} has NaN or inf values")
            batch.add(u)
        self._seen |= batch
        self._ids += utt_ids
        self._array[start : start + len(utt_ids)] = emb

    def add_file(self, name, text, _own=False):
        """Write a text file (``paths.txt``, say) into the new store."""
        taken = not _own and name in (IDS_FILE, EMBEDDINGS_FILE)
        if taken or name.startswith(".") or os.path.basename(name) != name:
            raise ValueError(f"{name!r} cannot be a store file name")
        with self._fs_errors():
            pathlib.Path(self._tmp, name).write_text(text, encoding="utf-8")

    def close(self):
        """Check that every row was written, then publish the store."""
        if self._tmp is None:
            return
        if len(self._ids) != self.n_utts:
            self.abort()
            raise ValueError(
                f"store {self.folder} was opened for {self.n_utts} "
                f"utterances but {len(self._ids)} were added; nothing written"
            )
        self._array.flush()
        del self._array
        self.add_file(IDS_FILE, "".join(u + "\n" for u in self._ids), True)
        with self._fs_errors():
            self._tmp = None
            self._stack.close()  # publishes the store

    def abort(self):
        """Discard everything written (the old store stays)."""
        self.__dict__.pop("_array", None)
        self._tmp = None
        discarded = RuntimeError("store discarded")
        self._stack.__exit__(RuntimeError, discarded, None)

    def __enter__(self):
        """Return the writer itself."""
        return self

    def __exit__(self, exc_type, exc, tb):
        """Publish the store with :meth:`close`, or :meth:`abort` on error."""
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_embeddings(folder, ids, embeddings, files=None):
    """Write a whole store: ``ids``, ``[U, D]``, ``[U, 1, D]`` or
    ``[U, n_crops, D]`` embeddings and ``files`` (``{name: text}``).

    Example
    -------
    >>> import tempfile
    >>> store = save_embeddings(tempfile.mkdtemp(), ["a", "b"], [[1.0], [2.0]])
    >>> store.ids, store.embeddings.tolist()
    (['a', 'b'], [[1.0], [2.0]])
    """
    arr, ids = as_numpy(embeddings), list(ids)
    arr = arr[:, 0] if arr.ndim == 3 and arr.shape[1] == 1 else arr
    if arr.ndim not in (2, 3) or arr.shape[0] != len(ids):
        raise ValueError(
            f"embeddings must be [U, D] or [U, n_crops, D] with U = "
            f"{len(ids)} IDs, got shape {arr.shape}"
        )
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    with EmbeddingStoreWriter(folder, len(ids), arr.shape[1:], dtype) as w:
        step = max(1, 2**24 // arr[0].size)
        for s in range(0, len(ids), step):
            w.add_batch(ids[s : s + step], arr[s : s + step])
        for name, text in (files or {}).items():
            w.add_file(name, text)
    return EmbeddingStore(folder)


class EmbeddingStore:
    """A store, memory-mapped (``mmap=False``: read into memory): ``ids``
    (row order), ``embeddings``, ``index`` (ID -> row), ``folder``.

    Example
    -------
    >>> import tempfile
    >>> store = save_embeddings(tempfile.mkdtemp(), ["u1"], np.ones((1, 10, 4)))
    >>> len(store), store["u1"].shape
    (1, (10, 4))
    """

    def __init__(self, folder, mmap=True):
        self.folder = os.path.abspath(os.fspath(folder))
        try:
            if not os.path.exists(self.folder):  # a writer killed mid-way?
                with contextlib.suppress(LockError), output_lock(folder):
                    recover_folder(self.folder)
            with open(
                os.path.join(self.folder, IDS_FILE), encoding="utf-8"
            ) as f:
                self.ids = f.read().splitlines()
            self.embeddings = np.load(
                os.path.join(self.folder, EMBEDDINGS_FILE),
                mmap_mode="r" if mmap else None,
            )
        except (OSError, ValueError) as err:
            raise ValueError(
                f"cannot read embedding store {self.folder}: {err}"
            )
        shape = self.embeddings.shape
        if len(shape) not in (2, 3) or len(self.ids) != shape[0]:
            raise ValueError(
                f"embedding store {self.folder} is inconsistent: "
                f"{len(self.ids)} IDs in {IDS_FILE}, array of shape {shape}"
            )
        self.index = {u: i for i, u in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise ValueError(f"{self.folder}/{IDS_FILE}: duplicate IDs")

    def segments(self):
        """``[(file_id, start, end)]`` of each row (seconds) when the
        store holds windows (``segments.tsv``), else None; a file that
        does not match ``ids.txt`` raises ``ValueError`` naming the line.
        """
        path = os.path.join(self.folder, SEGMENTS_FILE)
        if not os.path.isfile(path):
            return None
        return _read_segments(path, self.ids)

    def __len__(self):
        """The number of stored utterances."""
        return len(self.ids)

    def __getitem__(self, utt_id):
        """The embedding of ``utt_id`` (a ``KeyError`` names the store)."""
        if utt_id not in self.index:
            raise KeyError(f"{utt_id!r} is not in the store {self.folder}")
        return self.embeddings[self.index[utt_id]]
