"""Two "nodes" on this machine: the recipe under torchrun's c10d rendezvous.

``torchrun --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d
--rdzv_endpoint=localhost:PORT`` is launched twice (gloo, CPU) on the mini
configuration with a thin ResNet-18 (multinode_recipe.py records what
each global rank trains on). Checked:

- the two ranks' slices of an epoch's batches are disjoint (no utterance
  on both), each has P / 2 distinct speakers x K utterances, and rank 0's
  then rank 1's slice are exactly a single-process PKSampler's P x K
  batch;
- both ranks end with bit-identical weights, and the verification
  summary is written (once, by rank 0) with finite EERs;
- one node killed with SIGKILL: the other ends with an error instead of
  hanging, and the same two commands resume from the last checkpoint.
"""

import csv
import json
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import torch

from dampit.dataio.sampler import PKSampler
from dampit.utils.checkpoints import AtomicCheckpointer

REPO = pathlib.Path(__file__).resolve().parents[2]
P, K, BATCHES, EPOCHS = 4, 2, 2, 3


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(data, out, port, log):
    """Start one node; its output goes to ``log``."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=localhost:{port}",
        "--rdzv_id=dampit-test",
        str(REPO / "tests" / "integration" / "multinode_recipe.py"),
        str(REPO / "recipes" / "VoxCeleb" / "hparams" / "mini.yaml"),
        f"--data_folder={data}",
        f"--output_folder={out}",
        "--distributed_backend=gloo",
        "--num_workers=0",
        "--noprogressbar",
        "--depth=18",
        "--base_width=8",
        f"--P={P}",
        f"--K={K}",
        f"--batches_per_epoch={BATCHES}",
        f"--number_of_epochs={EPOCHS}",
        "--valid_pairs=500",
        "--n_test_crops=1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _kill_tree(pid):
    """SIGKILL a process and its descendants (torchrun starts its workers
    in sessions of their own, so a process group is not enough)."""
    tree, k = [pid], 0
    while k < len(tree):
        for task in pathlib.Path(f"/proc/{tree[k]}/task").glob("*"):
            with open(task / "children") as f:
                tree += [int(c) for c in f.read().split()]
        k += 1
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _checkpointed(out):
    """Whether the run in ``out`` has saved a checkpoint."""
    save = out / "save"
    return save.is_dir() and bool(AtomicCheckpointer(save).list_checkpoints())


def _run_two_nodes(data, out, tag, kill=False, timeout=600):
    """Both nodes to the end, or (``kill``) node 1 SIGKILLed once the first
    checkpoint is saved; returns (exit codes, the nodes' output)."""
    port, logs = (
        _free_port(),
        [out.parent / f"{tag}_node{i}.txt" for i in (0, 1)],
    )
    files = [open(p, "w") for p in logs]
    nodes = [_node(data, out, port, f) for f in files]
    deadline = time.monotonic() + timeout
    try:
        while kill and not _checkpointed(out):
            assert time.monotonic() < deadline, "no checkpoint saved"
            assert nodes[1].poll() is None, "node 1 ended before the kill"
            time.sleep(0.1)
        if kill:
            _kill_tree(nodes[1].pid)
        codes = [n.wait(max(1, deadline - time.monotonic())) for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                _kill_tree(n.pid)
                n.wait()
        for f in files:
            f.close()
    return codes, [p.read_text() for p in logs]


def _seen(out, rank):
    """{epoch: [batch of utterance IDs]} that ``rank`` trained on (the last
    record of each epoch: a resumed epoch replaces a killed one's)."""
    by_epoch = {}
    lines = (out / f"seen_rank{rank}.jsonl").read_text().splitlines()
    for rec in map(json.loads, lines):
        by_epoch.setdefault(rec["epoch"], []).append(rec["ids"])
    return {e: b[-BATCHES:] for e, b in by_epoch.items()}


def _check_batches(out):
    """Disjoint slices that together are the global P x K batches."""
    with open(out / "prepared" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ids = [r["ID"] for r in rows]
    spk = {r["ID"]: r["spk_id"] for r in rows}
    seen = [_seen(out, r) for r in (0, 1)]
    assert sorted(seen[0]) == sorted(seen[1]) == list(range(1, EPOCHS + 1))
    one = PKSampler(
        [spk[i] for i in ids],
        P=P,
        K=K,
        seed=1986,
        batches_per_epoch=BATCHES,
        num_replicas=1,
        rank=0,
    )
    half = P * K // 2
    for epoch in range(1, EPOCHS + 1):
        b0, b1 = seen[0][epoch], seen[1][epoch]
        assert not {u for b in b0 for u in b} & {u for b in b1 for u in b}
        for batch in b0 + b1:
            speakers = [spk[u] for u in batch]
            assert len(batch) == half and len(set(batch)) == half
            assert len(set(speakers)) == P // 2
            assert all(
                len(set(speakers[s : s + K])) == 1 for s in range(0, half, K)
            )
        glob = [[ids[i] for i in b] for b in one.global_batches(epoch)]
        assert [b[:half] for b in glob] == b0, epoch
        assert [b[half:] for b in glob] == b1, epoch


def _check_same_weights(out):
    w0 = torch.load(out / "final_rank0.pt", weights_only=True)
    w1 = torch.load(out / "final_rank1.pt", weights_only=True)
    assert set(w0) == set(w1)
    for name in w0:
        assert torch.equal(w0[name], w1[name]), name


def test_two_nodes_train_kill_and_resume(shared_data, tmp_path):
    data, out = shared_data / "dspspeech", tmp_path / "run"
    codes, text = _run_two_nodes(data, out, "kill", kill=True)
    assert codes[1] == -signal.SIGKILL
    # The surviving node notices the lost peer and stops with an error.
    assert codes[0] != 0, text[0][-3000:]
    assert "Error" in text[0], text[0][-3000:]
    epochs = [
        ln.split(",")[0]
        for ln in (out / "train_log.txt").read_text().splitlines()
    ]
    assert epochs[0] == "epoch: 1" and len(epochs) < EPOCHS

    codes, text = _run_two_nodes(data, out, "resume")
    assert codes == [0, 0], text[0][-3000:] + text[1][-3000:]
    assert "Going into epoch 1\n" not in text[0]  # resumed, not restarted
    log = (out / "train_log.txt").read_text().splitlines()
    assert [ln.split(",")[0] for ln in log] == [
        f"epoch: {e}" for e in range(1, EPOCHS + 1)
    ]
    assert all("cos_same" in ln and "cos_diff" in ln for ln in log)
    _check_batches(out)
    _check_same_weights(out)
    summary = json.loads((out / "verification" / "summary.json").read_text())
    assert summary and all(math.isfinite(v["eer"]) for v in summary.values())
