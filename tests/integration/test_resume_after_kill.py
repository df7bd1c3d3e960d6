"""Faults during training: SIGKILL mid-epoch and mid-save, damaged files.

1. The mini recipe (thin ResNet-18, P x K = 4 x 2, 3 epochs of 12 batches,
   real speech, random training crops drawn in 2 DataLoader worker
   processes) runs once uninterrupted (A). The same command runs in
   another folder (B), beside A, and is killed with SIGKILL in the middle
   of epoch 2 -- after epoch 2's first batches, before its checkpoint --
   then restarted with the same command. B must resume from the epoch-1
   checkpoint and end bit-identical to A: every tensor of every saved
   state (model, loss classifier, optimizer), the training log, the
   verification summary, the score files and the test embeddings. (Two
   runs with the same seed are thus identical; the recipe reseeds torch,
   numpy and random from ``seed + epoch`` at the start of every epoch.)
2. A process killed with SIGKILL *inside* a checkpoint save (a real
   ``os.kill`` from a save hook, half-way through writing a file) leaves
   :class:`~dampit.utils.checkpoints.AtomicCheckpointer` with only the
   previous, good one (SpeechBrain's own Checkpointer writes CKPT.yaml
   first, so it would list the half-written one).
3. Damaged checkpoints (truncated files, unreadable ``CKPT.yaml``, a file
   of another size than recorded) are skipped or fallen back from, with a
   warning; a pickle that would run code is refused (``weights_only``).
4. Files written through ``dampit.utils.atomic`` keep their old content
   when the writer fails or is killed half-way.
"""

import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from dampit.utils.atomic import atomic_path
from dampit.utils.checkpoints import (
    FILES_KEY,
    TMP_PREFIX,
    AtomicCheckpointer,
    CheckpointLoadError,
    check_checkpoint_dir,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
N_BATCHES = 12  # long enough an epoch to kill it inside, on a fast machine


def _recipe_cmd(data, out):
    return [
        sys.executable,
        str(REPO / "recipes/VoxCeleb/train.py"),
        str(REPO / "recipes/VoxCeleb/hparams/mini.yaml"),
        f"--data_folder={data}",
        f"--output_folder={out}",
        "--num_workers=2",
        "--depth=18",
        "--base_width=8",
        "--P=4",
        "--n_test_crops=1",
        f"--batches_per_epoch={N_BATCHES}",
        "--number_of_epochs=3",
        "--valid_pairs=500",
    ]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _start(cmd, log):
    """Start ``cmd``, its output (merged) into the file ``log``."""
    with open(log, "w") as f:
        return subprocess.Popen(
            cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT
        )


@pytest.fixture
def background():
    """A list for started processes; those still running at the end are
    killed."""
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finish(proc, log):
    """Wait for ``proc`` to succeed; its output."""
    proc.wait(timeout=900)
    text = pathlib.Path(log).read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def _run_and_kill_in_epoch_2(cmd, timeout=600):
    """Start ``cmd``; SIGKILL it once epoch 2 has trained a batch.

    The trigger is the training progress bar of epoch 2 (tqdm, on the
    merged stdout/stderr) showing one or two of its batches done: the
    process is then in the middle of the epoch, with updated weights in
    memory that no checkpoint holds.
    """
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    buf = b""
    # tqdm may skip intermediate counts on a fast machine, but its postfix
    # shows train_loss from the first finished batch on: kill after epoch
    # 2's first batch and before its end-of-epoch log line.
    deadline = time.monotonic() + timeout
    killed = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break  # the process ended without being killed
            buf += chunk
            pos = buf.find(b"Going into epoch 2")
            if (
                pos >= 0
                and b"train_loss=" in buf[pos:]
                and b"epoch: 2," not in buf[pos:]
            ):
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
    finally:
        if not killed:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    text = buf.decode(errors="replace")
    assert killed, "epoch 2 never started training:\n" + text[-4000:]
    assert proc.returncode == -signal.SIGKILL
    return text


def _state_files(save):
    """{name: loaded state} of the most recent checkpoint in ``save``."""
    ckpt = AtomicCheckpointer(save).find_checkpoint()
    states = {}
    for name, path in ckpt.paramfiles.items():
        if name in ("counter", "brain", "train_sampler", "train_loader"):
            states[name] = path.read_text()
        else:
            states[name] = torch.load(path, weights_only=True)
    return ckpt, states


def _assert_same(a, b, where):
    """Recursive exact equality of (nested) state dicts."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_sigkill_mid_epoch_then_restart_equals_uninterrupted(
    shared_data, tmp_path, background
):
    """Kill -9 in epoch 2, rerun the same command: same result as no kill."""
    data = shared_data / "dspspeech"
    out_a, out_b = tmp_path / "A", tmp_path / "B"
    run_a = _start(_recipe_cmd(data, out_a), tmp_path / "A.txt")  # beside B
    background.append(run_a)

    cmd_b = _recipe_cmd(data, out_b)
    _run_and_kill_in_epoch_2(cmd_b)
    # Killed mid-epoch: epoch 1 logged and checkpointed, epoch 2 not.
    log = (out_b / "train_log.txt").read_text().splitlines()
    assert [line.split(",")[0] for line in log] == ["epoch: 1"], log
    ckpts = AtomicCheckpointer(out_b / "save").list_checkpoints()
    assert len(ckpts) == 1
    assert ckpts[0].paramfiles["counter"].read_text() == "1"
    for path in (out_b / "save").iterdir():  # no checkpoint is corrupt
        if path.name.startswith("CKPT"):
            _, problem = check_checkpoint_dir(path)
            assert problem is None, (path, problem)
            for f in path.glob("*.ckpt"):
                if f.stem not in (
                    "counter",
                    "brain",
                    "train_sampler",
                    "train_loader",
                ):
                    torch.load(f, weights_only=True)

    stdout = _finish(_start(cmd_b, tmp_path / "B.txt"), tmp_path / "B.txt")
    assert "Going into epoch 1\n" not in stdout  # resumed, not restarted
    assert "Going into epoch 2" in stdout  # the same command again
    _finish(run_a, tmp_path / "A.txt")

    assert (out_a / "train_log.txt").read_text() == (
        out_b / "train_log.txt"
    ).read_text()
    ckpt_a, states_a = _state_files(out_a / "save")
    ckpt_b, states_b = _state_files(out_b / "save")
    assert states_a["counter"] == states_b["counter"] == "3"
    assert set(states_a) == set(states_b)
    assert {"embedding_model", "compute_cost", "optimizer"} <= set(states_a)
    for name in states_a:
        _assert_same(states_a[name], states_b[name], name)
    assert ckpt_a.meta["EER"] == ckpt_b.meta["EER"]
    _assert_same_verification(out_a, out_b)


def _assert_same_verification(out_a, out_b):
    """Same metrics (exactly) and byte-identical score files."""
    summary_a = json.loads((out_a / "verification/summary.json").read_text())
    summary_b = json.loads((out_b / "verification/summary.json").read_text())
    assert set(summary_a) == set(summary_b) and summary_a
    for key, res_a in summary_a.items():
        res_b = summary_b[key]
        numbers = {k for k, v in res_a.items() if isinstance(v, (int, float))}
        assert "eer" in numbers and "min_dcf_0.01" in numbers
        for k in numbers:
            assert res_a[k] == res_b[k], (key, k)
        assert 0 < res_a["eer"] < 1
        score_a = pathlib.Path(res_a["scores_txt"]).read_bytes()
        assert score_a == pathlib.Path(res_b["scores_txt"]).read_bytes()
    for store in ("embeddings_full", "embeddings_crops"):
        a, b = [
            np.load(out / "verification" / store / "embeddings.npy")
            for out in (out_a, out_b)
        ]
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------- SIGKILL inside a save

_SAVE_THEN_DIE = textwrap.dedent(
    """
    import io, os, signal, sys
    import torch
    from dampit.utils.checkpoints import AtomicCheckpointer

    folder = sys.argv[1]
    torch.manual_seed(0)
    net, head = torch.nn.Linear(8, 4), torch.nn.Linear(4, 2)
    dying = False

    def save_head(obj, path):
        data = io.BytesIO()
        torch.save(obj.state_dict(), data)
        data = data.getvalue()
        with open(path, "wb") as f:
            if not dying:
                f.write(data)
                return
            f.write(data[: len(data) // 2])  # half the file, then die
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

    ckpter = AtomicCheckpointer(folder, {"net": net})
    ckpter.add_recoverable("head", head, custom_save_hook=save_head)
    ckpter.save_checkpoint(meta={"step": 1})
    torch.save({"net": net.state_dict(), "head": head.state_dict()},
               os.path.join(folder, "..", "step1.pt"))
    with torch.no_grad():
        for p in list(net.parameters()) + list(head.parameters()):
            p.add_(1.0)
    dying = True
    ckpter.save_checkpoint(meta={"step": 2})
    print("not killed")
    """
)


def _save_then_die(tmp_path):
    folder = tmp_path / "save"
    folder.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _SAVE_THEN_DIE, str(folder)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    return folder, torch.load(tmp_path / "step1.pt", weights_only=True)


def _modules():
    return torch.nn.Linear(8, 4), torch.nn.Linear(4, 2)


def test_sigkill_inside_atomic_save_keeps_the_previous_checkpoint(tmp_path):
    """The killed save is invisible; recovery loads step 1 exactly; the
    next save cleans the leftover temporary folder."""
    folder, step1 = _save_then_die(tmp_path)
    leftovers = [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert len(leftovers) == 1  # the interrupted save's temporary folder
    assert (leftovers[0] / "head.ckpt").stat().st_size > 0  # half-written

    net, head = _modules()
    ckpter = AtomicCheckpointer(folder, {"net": net, "head": head})
    ckpts = ckpter.list_checkpoints()
    assert [c.meta["step"] for c in ckpts] == [1]
    assert ckpter.recover_if_possible().meta["step"] == 1
    _assert_same(net.state_dict(), step1["net"], "net")
    _assert_same(head.state_dict(), step1["head"], "head")

    ckpter.save_checkpoint(meta={"step": 2})
    assert not any(p.name.startswith(TMP_PREFIX) for p in folder.iterdir())
    assert sorted(c.meta["step"] for c in ckpter.list_checkpoints()) == [1, 2]


# ------------------------------------------------- damaged checkpoints


def _two_checkpoints(folder, cls):
    """Save step 1 and step 2 of a small model; return their states."""
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 3)
    ckpter = cls(folder, {"net": net})
    states = []
    for step in (1, 2):
        with torch.no_grad():
            net.weight.add_(float(step))
        ckpter.save_checkpoint(meta={"step": step, "EER": 10.0 - step})
        states.append({k: v.clone() for k, v in net.state_dict().items()})
        time.sleep(0.01)  # distinct unixtime
    return ckpter, states


def test_legacy_half_written_checkpoint_falls_back(tmp_path, caplog):
    """A SpeechBrain-written newest checkpoint with a truncated file
    (what a kill during its save leaves): recovery warns and loads the
    one before."""
    _, states = _two_checkpoints(tmp_path, Checkpointer)
    newest = Checkpointer(tmp_path).find_checkpoint()
    f = newest.paramfiles["net"]
    f.write_bytes(f.read_bytes()[:100])

    net = torch.nn.Linear(6, 3)
    ckpter = AtomicCheckpointer(tmp_path, {"net": net})
    with caplog.at_level("WARNING"):
        ckpt = ckpter.recover_if_possible()
    assert ckpt.meta["step"] == 1
    _assert_same(net.state_dict(), states[0], "net")
    assert str(newest.path) in caplog.text


def test_truncated_or_unreadable_atomic_checkpoints_are_ignored(
    tmp_path, caplog
):
    """Sizes recorded at save time catch a truncated file; an unreadable
    CKPT.yaml hides a folder; both are named in a warning."""
    ckpter, states = _two_checkpoints(tmp_path, AtomicCheckpointer)
    ckpts = sorted(ckpter.list_checkpoints(), key=lambda c: c.meta["step"])
    assert all(FILES_KEY in c.meta for c in ckpts)
    f = ckpts[1].paramfiles["net"]
    f.write_bytes(f.read_bytes()[:-1])
    broken_meta = tmp_path / "CKPT+broken"
    broken_meta.mkdir()
    (broken_meta / "CKPT.yaml").write_text("unixtime: [1,\n")

    net = torch.nn.Linear(6, 3)
    ckpter = AtomicCheckpointer(tmp_path, {"net": net})
    with caplog.at_level("WARNING"):
        listed = ckpter.list_checkpoints()
    assert [c.meta["step"] for c in listed] == [1]
    assert "net.ckpt has" in caplog.text and "CKPT+broken" in caplog.text
    assert ckpter.recover_if_possible(min_key="EER").meta["step"] == 1
    _assert_same(net.state_dict(), states[0], "net")


def test_no_loadable_checkpoint_is_an_error_naming_each(tmp_path):
    """Candidates exist but none loads: no silent fresh start."""
    ckpter, _ = _two_checkpoints(tmp_path, Checkpointer)
    for c in ckpter.list_checkpoints():
        c.paramfiles["net"].write_bytes(b"not a torch file")
    ckpter = AtomicCheckpointer(tmp_path, {"net": torch.nn.Linear(6, 3)})
    with pytest.raises(CheckpointLoadError) as err:
        ckpter.recover_if_possible()
    assert str(err.value).count("CKPT+") == 2


class _RunsCode:
    """A pickle payload that creates a file when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_checkpoint_loading_refuses_code_pickles(tmp_path):
    """Parameter files load with weights_only=True: a pickle that would
    run code is refused, and the code does not run."""
    folder = tmp_path / "save"
    marker = tmp_path / "code_ran"
    net = torch.nn.Linear(2, 2)
    ckpter = AtomicCheckpointer(folder, {"net": net})
    ckpt = ckpter.save_checkpoint()
    state = dict(net.state_dict(), extra=_RunsCode(marker))
    torch.save(state, ckpt.paramfiles["net"])
    # Keep the recorded size consistent so that only loading can object.
    meta = (ckpt.path / "CKPT.yaml").read_text()
    size = ckpt.paramfiles["net"].stat().st_size
    meta = meta.replace(
        f"net.ckpt: {ckpt.meta[FILES_KEY]['net.ckpt']}", f"net.ckpt: {size}"
    )
    (ckpt.path / "CKPT.yaml").write_text(meta)
    assert len(ckpter.list_checkpoints()) == 1
    with pytest.raises(CheckpointLoadError, match="weights_only|Unpickl"):
        ckpter.recover_if_possible()
    assert not marker.exists()


# ------------------------------------------------- atomic file writes


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    """An exception half-way through a write leaves the old content and
    no temporary file."""
    target = tmp_path / "scores.txt"
    target.write_text("good\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "good\n"
    assert os.listdir(tmp_path) == ["scores.txt"]


_WRITE_THEN_DIE = textwrap.dedent(
    """
    import os, signal, sys, torch
    from dampit.utils.atomic import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"half a model")
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_sigkill_during_atomic_write_keeps_the_old_file(tmp_path):
    """Killed mid-write: the old model file loads unchanged."""
    target = tmp_path / "model.ckpt"
    torch.save({"w": torch.arange(3.0)}, target)
    proc = subprocess.run(
        [sys.executable, "-c", _WRITE_THEN_DIE, str(target)],
        cwd=REPO,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL
    loaded = torch.load(target, weights_only=True)
    assert torch.equal(loaded["w"], torch.arange(3.0))
