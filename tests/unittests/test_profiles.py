"""dampit.inference.profiles: the profile store (numbers against loops
written here; replaced as one unit; refused with another model) and the
model fingerprint (real model folders from tests/model_folder.py)."""

import os
import pathlib
import runpy
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dampit.inference.api import load_model
from dampit.inference.profiles import (
    ProfileError,
    Profiles,
    _update,
    model_fingerprint,
    scores_against,
)
from dampit.inference.stored_threshold import write_threshold
from dampit.utils.file_lock import LockError

MODELS = pathlib.Path(__file__).resolve().parents[1] / "model_folder.py"
write_demo_model = runpy.run_path(str(MODELS))["write_demo_model"]
FP = "sha256:" + "0" * 64


def unit_mean(rows):
    """Mean of the rows scaled to length 1, one row at a time."""
    total = [0.0] * len(rows[0])
    for r in rows:
        n = sum(v * v for v in r) ** 0.5
        total = [a + v / n for a, v in zip(total, r)]
    return [a / len(rows) for a in total]


def test_profiles_add_remove_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    a1, a2, b = rng.normal(size=(3, 4, 8))
    store = tmp_path / "profiles"
    _update(store, FP, lambda p: p.add("alice", a1))
    _update(store, FP, lambda p: p.add("bob smith", b[:2]))
    _update(store, FP, lambda p: p.add("alice", a2))  # adds to alice
    got = Profiles(store)
    assert got.names == ["alice", "bob smith"]
    assert got.counts.tolist() == [8, 2] and got.fingerprint == FP
    want = [unit_mean(np.r_[a1, a2].tolist()), unit_mean(b[:2].tolist())]
    np.testing.assert_allclose(got.means(), want, rtol=1e-6)
    _update(store, FP, lambda p: p.add("bob smith", b, replace=True))
    got = Profiles(store)
    assert got.counts.tolist() == [8, 4]
    np.testing.assert_allclose(got.means()[1], unit_mean(b.tolist()), 1e-6)
    _update(store, FP, lambda p: p.remove("alice"))
    _update(store, FP, lambda p: p.remove("bob smith"))
    empty = Profiles(store)  # a store with no profiles left
    assert empty.names == [] and empty.fingerprint == FP
    _update(store, FP, lambda p: p.add("carol", b[:1]))
    assert Profiles(store).names == ["carol"]


def test_scores_against_are_cosines():
    rng = np.random.default_rng(1)
    prof, emb = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))
    got = scores_against(prof, emb)
    for i, e in enumerate(emb):
        for j, p in enumerate(prof):
            cos = float(e @ p / np.sqrt((e @ e) * (p @ p)))
            assert got[i, j] == pytest.approx(cos)


@pytest.mark.parametrize(
    "name", ["", " alice", "bob\t1", "a\nb", "unknown", None]
)
def test_bad_speaker_names_are_refused(tmp_path, name):
    with pytest.raises(ProfileError, match="speaker name"):
        _update(tmp_path / "p", FP, lambda p: p.add(name, np.ones((1, 3))))
    assert not os.path.exists(tmp_path / "p")


def test_bad_changes_leave_the_store_as_it_was(tmp_path):
    store = tmp_path / "p"
    _update(store, FP, lambda p: p.add("alice", np.eye(3)))
    before = {f: (store / f).read_bytes() for f in os.listdir(store)}
    bad = [
        (lambda p: p.remove("bob"), "no profile 'bob'"),
        (lambda p: p.add("bob", np.ones((2, 4))), "size 4"),
        (lambda p: p.add("bob", np.zeros((1, 3))), "zero"),
    ]
    for change, msg in bad:
        with pytest.raises(ProfileError, match=msg):
            _update(store, FP, change)
    with pytest.raises(ProfileError, match="non-finite"):
        _update(store, FP, lambda p: p.add("nan", [[np.nan, 1.0, 0.0]]))
    with pytest.raises(ProfileError, match="another model"):
        _update(store, "sha256:" + "1" * 64, lambda p: p.add("x", np.eye(3)))
    assert {f: (store / f).read_bytes() for f in os.listdir(store)} == before
    assert sorted(os.listdir(tmp_path)) == ["p"]  # no temporary left


def test_a_folder_that_is_not_a_store(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ProfileError, match="not a profile store"):
        Profiles(tmp_path / "mine")
    _update(tmp_path / "p", FP, lambda p: p.add("a", np.eye(2)))
    (tmp_path / "p" / "counts.txt").write_text("2\n5\n")
    with pytest.raises(ProfileError, match="inconsistent"):
        Profiles(tmp_path / "p")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_fingerprint_follows_the_weights(tmp_path):
    a = load_model(write_demo_model(tmp_path / "a", seed=0))
    same = load_model(write_demo_model(tmp_path / "b", seed=0, threshold=0.1))
    other = load_model(write_demo_model(tmp_path / "c", seed=1))
    fp = model_fingerprint(a)
    assert fp == model_fingerprint(same)  # the threshold is not a weight
    assert fp != model_fingerprint(other)
    with torch.no_grad():  # one running statistic changed
        next(iter(a.mods.embedding_model.buffers())).add_(1e-6)
    assert model_fingerprint(a) != fp


def _hold_lock_elsewhere(target, tmp_path):
    """A second process holding ``target``'s output lock until killed."""
    ready = tmp_path / "ready"
    code = (
        "import sys, time, pathlib\n"
        "from dampit.utils.file_lock import output_lock\n"
        "with output_lock(sys.argv[1]):\n"
        "    pathlib.Path(sys.argv[2]).touch()\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, target, ready])
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return proc


def test_a_second_writer_is_refused_and_loses_nothing(tmp_path):
    store = tmp_path / "profiles"
    rng = np.random.default_rng(1)
    _update(store, FP, lambda p: p.add("alice", rng.normal(size=(2, 8))))
    before = sorted((p.name, p.read_bytes()) for p in store.iterdir())
    proc = _hold_lock_elsewhere(str(store), tmp_path)
    try:
        with pytest.raises(LockError, match="profiles"):
            _update(store, FP, lambda p: p.add("bob", rng.normal(size=(2, 8))))
    finally:
        proc.kill()
        proc.wait()
    assert sorted((p.name, p.read_bytes()) for p in store.iterdir()) == before
    _update(store, FP, lambda p: p.add("bob", rng.normal(size=(2, 8))))
    assert Profiles(store).names == ["alice", "bob"]


def test_a_second_threshold_writer_is_refused(tmp_path):
    model = pathlib.Path(write_demo_model(tmp_path, threshold=0.4))
    spec = (model / "dampit_export.json").read_bytes()
    proc = _hold_lock_elsewhere(str(model), tmp_path)
    try:
        with pytest.raises(LockError, match="model"):
            write_threshold(model, 0.6, "by hand")
    finally:
        proc.kill()
        proc.wait()
    assert (model / "dampit_export.json").read_bytes() == spec
    assert write_threshold(model, 0.6, "by hand")["threshold"] == 0.6
