"""The embedding store: round trip, errors, and replacement as one unit
(SIGKILL at every step of a replace, a full disk); the windows' segments
file, read back checked, and stores without one."""

import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from dampit.inference.embedding_store import (
    SEGMENTS_FILE,
    EmbeddingStore,
    EmbeddingStoreWriter,
    save_embeddings,
    segments_text,
    window_id,
)

OLD = (["a", "b"], np.ones((2, 4)), "a.wav\nb.wav\n")
NEW = (["x", "y", "z"], np.full((3, 4), 7.0), "x.wav\ny.wav\nz.wav\n")


def _save(folder, store):
    ids, emb, paths = store
    return save_embeddings(folder, ids, emb, files={"paths.txt": paths})


def _is(folder, store):
    """The store in ``folder`` is ``store``, all three files together."""
    s = EmbeddingStore(folder, mmap=False)
    ids, emb, paths = store
    with open(os.path.join(folder, "paths.txt")) as f:
        return (
            s.ids == ids and (s.embeddings == emb).all() and f.read() == paths
        )


def test_roundtrip_mmap_and_plain_numpy(tmp_path):
    rng = np.random.default_rng(0)
    crops = rng.normal(size=(12, 10, 16))
    ids = [f"id1/{u:03d} x.wav" for u in range(12)]  # spaces are fine
    store = save_embeddings(tmp_path / "s", ids, torch.from_numpy(crops))
    assert isinstance(store.embeddings, np.memmap)
    assert len(store) == 12 and store.embeddings.shape == (12, 10, 16)
    np.testing.assert_array_equal(store[ids[4]], crops[4])
    assert sorted(os.listdir(tmp_path / "s")) == ["embeddings.npy", "ids.txt"]
    raw = np.load(tmp_path / "s" / "embeddings.npy")
    np.testing.assert_array_equal(raw, crops)
    one = save_embeddings(tmp_path / "t", ["a", "b"], torch.ones(2, 1, 8))
    assert one.embeddings.shape == (2, 8)
    assert one.embeddings.dtype == np.float32
    with pytest.raises(KeyError, match="'q' is not in the store"):
        one["q"]


def test_writer_failure_keeps_old_store(tmp_path):
    _save(tmp_path / "s", OLD)
    w = EmbeddingStoreWriter(tmp_path / "s", 3, (4,))
    w.add_batch(["x"], np.zeros((1, 4)))
    with pytest.raises(ValueError, match="opened for 3 utterances but 1"):
        w.close()
    with pytest.raises(RuntimeError, match="boom"):
        with EmbeddingStoreWriter(tmp_path / "s", 1, (4,)) as w2:
            w2.add_batch(["y"], np.zeros((1, 4)))
            raise RuntimeError("boom")
    assert _is(tmp_path / "s", OLD)
    assert os.listdir(tmp_path) == ["s"]  # no temp folder left


def test_writer_errors(tmp_path):
    with EmbeddingStoreWriter(tmp_path / "s", 3, (2, 4)) as w:
        with pytest.raises(ValueError, match=r"shape \(1, 4\), expected"):
            w.add_batch(["a"], np.zeros((1, 4)))
        with pytest.raises(ValueError, match="0 of 3 rows written"):
            w.add_batch(list("abcd"), np.zeros((4, 2, 4)))
        w.add_batch(["a"], np.zeros((1, 2, 4)))
        with pytest.raises(ValueError, match="duplicate utterance ID 'a'"):
            w.add_batch(["a"], np.zeros((1, 2, 4)))
        with pytest.raises(ValueError, match="'b' has NaN"):
            w.add_batch(["b"], np.full((1, 2, 4), np.nan))
        with pytest.raises(ValueError, match="empty, padded or 2 lines"):
            w.add_batch(["c\nd"], np.zeros((1, 2, 4)))
        with pytest.raises(ValueError, match="cannot be a store file"):
            w.add_file("ids.txt", "")
        w.add_batch(["b", "c"], np.ones((2, 2, 4)))
    assert EmbeddingStore(tmp_path / "s").ids == ["a", "b", "c"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="other exists and is not an embed"):
        EmbeddingStoreWriter(tmp_path / "other", 1, (4,))
    assert os.listdir(tmp_path / "other") == ["notes.txt"]


def test_inconsistent_or_missing_files_are_reported(tmp_path):
    _save(tmp_path, OLD)
    (tmp_path / "ids.txt").write_text("a\n")
    with pytest.raises(ValueError, match=r"1 IDs in ids.txt, array of shape"):
        EmbeddingStore(tmp_path)
    os.remove(tmp_path / "ids.txt")
    with pytest.raises(
        ValueError, match=f"cannot read embedding store {tmp_path}"
    ):
        EmbeddingStore(tmp_path)


# A child process (forked: it has everything imported) replaces OLD by NEW
# and SIGKILLs itself just before its k-th file-system step (a rename,
# fsync, rmtree, mkdir or fallocate).
STEPS = [
    (os, "rename"),
    (os, "fsync"),
    (os, "makedirs"),
    (os, "posix_fallocate"),
    (shutil, "rmtree"),
]


def _replace_and_die_at_step(folder, k):
    calls = [0]

    def step(fn):
        def run(*args, **kwargs):
            if calls[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            calls[0] += 1
            return fn(*args, **kwargs)

        return run

    for mod, name in STEPS:
        setattr(mod, name, step(getattr(mod, name)))
    _save(folder, NEW)


def test_sigkill_at_every_step_leaves_old_or_new_store(tmp_path):
    fork = multiprocessing.get_context("fork")
    seen = []
    for k in range(100):
        folder = tmp_path / f"k{k}" / "store"
        _save(folder, OLD)
        child = fork.Process(target=_replace_and_die_at_step, args=(folder, k))
        child.start()
        child.join()
        assert child.exitcode in (0, -signal.SIGKILL), child.exitcode
        state = "old" if _is(folder, OLD) else "new" if _is(folder, NEW) else ""
        assert state, f"killed at step {k}: neither the old nor the new store"
        seen.append(state)
        if child.exitcode == 0:
            break
    # Many steps before the commit point, at least one after it, then done.
    assert seen[0] == "old" and seen[-1] == "new" and len(seen) > 6, seen
    assert seen == sorted(seen, key=("old", "new").index)
    # A later write cleans what a killed one left.
    _save(folder, OLD)
    assert os.listdir(folder.parent) == ["store"] and _is(folder, OLD)


def _fill_store(folder, limit, message):
    """(A forked child.) Write a 5 MB store into ``folder`` under a file
    size limit of ``limit`` bytes (0: none); on OSError write its message
    to ``message`` and exit 3."""
    if limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        save_embeddings(folder, ["x"], np.ones((1, 10, 2**16)))
    except OSError as err:
        message.write_text(str(err))
        sys.exit(3)


def _assert_full_disk_refused(folder, limit, message):
    child = multiprocessing.get_context("fork").Process(
        target=_fill_store, args=(folder, limit, message)
    )
    child.start()
    child.join()
    assert child.exitcode == 3, child.exitcode  # not SIGBUS (-7)
    text = message.read_text()
    assert f"embedding store {folder}" in text
    assert "No space left" in text or "too large" in text
    assert _is(folder, OLD)
    assert os.listdir(folder.parent) == ["store"]


def test_file_size_limit_is_an_error_naming_the_store(tmp_path):
    folder = tmp_path / "data" / "store"
    _save(folder, OLD)
    _assert_full_disk_refused(folder, 2**20, tmp_path / "message.txt")


def test_full_disk_is_an_error_naming_the_store(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        pytest.skip(f"cannot mount a 1 MB tmpfs: {r.stderr.strip()}")
    try:
        folder = disk / "store"
        _save(folder, OLD)
        _assert_full_disk_refused(folder, 0, tmp_path / "message.txt")
    finally:
        subprocess.run(["umount", str(disk)], check=True)
        shutil.rmtree(disk, ignore_errors=True)


WINDOWS = [("call 1", 0.0, 1.5), ("call 1", 1.5, 2.25), ("b", 0.0625, 1.5625)]


def _window_store(folder):
    ids = [window_id(*seg) for seg in WINDOWS]
    files = {SEGMENTS_FILE: segments_text(ids, WINDOWS)}
    return save_embeddings(folder, ids, np.eye(3), files)


def test_segments_round_trip(tmp_path):
    store = _window_store(tmp_path / "w")
    assert store.ids == [
        "call 1@0.000-1.500",
        "call 1@1.500-2.250",
        "b@0.062-1.562",
    ]
    assert store.segments() == WINDOWS
    lines = (tmp_path / "w" / SEGMENTS_FILE).read_text().splitlines()
    assert lines[0] == "id\tfile\tstart\tend"
    assert lines[3] == "b@0.062-1.562\tb\t0.062500\t1.562500"
    _save(tmp_path / "old", OLD)  # whole files: no segments
    assert EmbeddingStore(tmp_path / "old").segments() is None


@pytest.mark.parametrize(
    "old, new, line",
    [
        ("id\tfile", "id\tfile\tlength", 1),
        ("b@0.062-1.562\tb", "b@0.062-1.562\tc", 4),
        ("\t1.500000\t2.250000", "\t2.250000\t1.500000", 3),
        ("\t0.000000\t1.500000", "\t0.000000\tnan", 2),
        ("\t0.000000\t1.500000", "\t0.0", 2),
        ("call 1@1.500-2.250\t", "call 1@9.000-9.000\t", 3),
        ("\t0.062500\t1.562500\n", "\t0.062500\t1.562500\n\n", None),
    ],
)
def test_bad_segments_are_named(tmp_path, old, new, line):
    """A segments file that does not match the store raises, naming it
    (and its line)."""
    store = _window_store(tmp_path)
    path = tmp_path / SEGMENTS_FILE
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    where = f"{path}:{line}" if line else f"{path}: 4 rows, 3 IDs"
    with pytest.raises(ValueError, match=where):
        store.segments()


def test_segments_text_refuses_what_it_cannot_write():
    ids = [window_id("a", 0.0, 1.5)]
    for segs, what in [
        ([("a\tb", 0.0, 1.5)], "tab"),
        ([("a", 1.5, 1.5)], "bad segment"),
        ([("a", -1.0, 1.5)], "bad segment"),
        ([("c", 0.0, 1.5)], "not a window ID of 'c'"),
        ([], "1 IDs but 0 segments"),
    ]:
        with pytest.raises(ValueError, match=what):
            segments_text(ids, segs)
