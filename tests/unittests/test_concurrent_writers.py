"""Two writers, one output: the second is refused in one line.

Each test runs a real dampit command in a child process (forked from this
one: tests/forked_main.py), lets it go, waits until it holds its output
(the hidden lock file ``.<name>.lock`` beside it) and then starts a
second writer of the same output: a second ``dampit-embed`` process,
``dampit-verify --out`` or ``dampit-export`` in this process. The second
exits 2 with one line naming the output and the holder before doing any
work; the output is the first writer's, whole (a store never holds rows
of two runs).
"""

import importlib.util
import os
import pathlib
import runpy
import time

import numpy as np
import pytest

from dampit.cli import verify as verify_cli
from dampit.cli.export import main as export_main
from dampit.dataio.trials import read_scores, utt_to_id
from dampit.inference.api import load_model
from dampit.inference.embedding_store import EmbeddingStore

HERE = pathlib.Path(__file__).resolve().parent
write_demo_model = runpy.run_path(str(HERE.parent / "model_folder.py"))[
    "write_demo_model"
]
build_run = runpy.run_path(str(HERE / "test_export.py"))["build_run"]
_spec = importlib.util.spec_from_file_location(
    "forked_main", HERE.parent / "forked_main.py"
)
forked_main = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(forked_main)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return pathlib.Path(write_demo_model(tmp_path_factory.mktemp("demo")))


@pytest.fixture(scope="module")
def wavs(shared_data):
    """Three files of each of four dspspeech speakers."""
    root = shared_data / "dspspeech"
    spk = sorted(p for p in root.iterdir() if p.is_dir())[:4]
    return [f for s in spk for f in sorted(s.glob("*.wav"))[:3]]


def holds(lock):
    """Whether a process holds ``lock``: it writes its pid once locked."""
    try:
        return lock.stat().st_size > 0
    except FileNotFoundError:
        return False


def start_holding(module, argv, out):
    """Run ``module.main(argv)`` in a child; return it once it holds the
    output ``out`` (or has ended: a dampit without output locks)."""
    child = forked_main.ForkedMain(module, argv)
    lock = out.parent / f".{out.name}.lock"
    child.go()
    deadline = time.monotonic() + 120
    while not holds(lock) and child.proc.is_alive():
        assert time.monotonic() < deadline, "the first writer hangs"
        time.sleep(0.001)
    return child


def assert_refused(code, err, out):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "in use by another dampit process" in lines[0], err
    assert str(out) in lines[0], err


def test_two_embeds_into_one_store(model, wavs, tmp_path):
    out = tmp_path / "emb"
    mine, theirs = wavs[:6], wavs[6:]
    base = ["--model", model, "--no-progress", "--out", out]
    second = forked_main.ForkedMain("dampit.cli.embed", [*base, *theirs])
    first = start_holding("dampit.cli.embed", [*base, *mine], out)
    second.go()
    code, err = first.finish()
    assert code == 0, err
    assert_refused(*second.finish(), out)
    store = EmbeddingStore(out, mmap=False)
    paths = (out / "paths.txt").read_text().splitlines()
    assert paths == [str(p) for p in mine]
    items = [(utt_to_id(str(p)), str(p)) for p in mine]
    ids, emb = load_model(model).embed_files(items, progress=False)
    assert store.ids == ids == [uid for uid, _ in items]
    np.testing.assert_allclose(store.embeddings, emb, rtol=1e-5, atol=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["emb"]


def test_a_score_file_being_written_is_refused(model, wavs, tmp_path, capsys):
    out = tmp_path / "scores.txt"
    trials = tmp_path / "trials.txt"
    pairs = [(a, b) for a in wavs for b in wavs if a < b]
    trials.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    argv = ["--model", model, "--trials", trials, "--out", out]
    first = start_holding("dampit.cli.verify", argv, out)
    code = verify_cli.main([*map(str, argv), "--no-progress"])
    assert_refused(code, capsys.readouterr().err, out)
    code, err = first.finish()
    assert code == 0, err
    enrol, test, scores, _ = read_scores(out)
    assert list(zip(enrol, test)) == [(str(a), str(b)) for a, b in pairs]
    assert sorted(os.listdir(tmp_path)) == ["scores.txt", "trials.txt"]


def test_a_model_folder_being_exported_is_refused(tmp_path, capsys):
    run, _, _ = build_run(tmp_path)
    out = tmp_path / "model"
    first = start_holding("dampit.cli.export", [run, out], out)
    code = export_main([str(run), str(out), "--overwrite"])
    assert_refused(code, capsys.readouterr().err, out)
    code, err = first.finish()
    assert code == 0, err
    assert load_model(out).threshold == 0.4321
    assert sorted(os.listdir(tmp_path)) == ["model", "run"]
