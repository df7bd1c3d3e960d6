"""Same seed, same results: two CPU runs of the recipe are bit-identical.

The mini recipe (thin ResNet-18, P x K = 4 x 2, 2 epochs of 2 batches,
real speech, random 1.5 s training crops drawn in 2 DataLoader worker
processes) runs twice with the same seed in two folders. The training
logs (losses and valid EER per epoch), every tensor of the final
checkpoint (model, loss classifier, optimizer), its valid EER, the
verification metrics, the score files and the cached test embeddings must
be identical. (The recipe reseeds torch, numpy and random from
``seed + epoch`` at the start of every epoch; see
test_resume_after_kill.py for the same property across a SIGKILL.)
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import torch

from dampit.utils.checkpoints import AtomicCheckpointer

REPO = pathlib.Path(__file__).resolve().parents[2]


def _train(data, out):
    cmd = [
        sys.executable,
        str(REPO / "recipes/VoxCeleb/train.py"),
        str(REPO / "recipes/VoxCeleb/hparams/mini.yaml"),
        f"--data_folder={data}",
        f"--output_folder={out}",
        "--seed=7",
        "--num_workers=2",
        "--depth=18",
        "--base_width=8",
        "--P=4",
        "--n_test_crops=1",
        "--batches_per_epoch=2",
        "--number_of_epochs=2",
        "--valid_pairs=500",
        "--noprogressbar",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def _latest_states(save):
    ckpt = AtomicCheckpointer(save).find_checkpoint()
    states = {
        name: torch.load(path, weights_only=True)
        for name, path in ckpt.paramfiles.items()
        if name not in ("counter", "brain", "train_sampler", "train_loader")
    }
    return ckpt, states


def _flatten(state, prefix=""):
    """Nested state dict -> {dotted key: leaf}."""
    if isinstance(state, dict):
        out = {}
        for k, v in state.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(state, (list, tuple)):
        out = {}
        for i, v in enumerate(state):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): state}


def test_two_runs_with_the_same_seed_are_identical(shared_data, tmp_path):
    """Losses, valid EER, weights, optimizer state, test EER, scores."""
    data = shared_data / "dspspeech"
    runs = [tmp_path / "run1", tmp_path / "run2"]
    for out in runs:
        _train(data, out)

    logs = [(out / "train_log.txt").read_text() for out in runs]
    assert logs[0] == logs[1]
    lines = logs[0].splitlines()
    assert [line.split(",")[0] for line in lines] == ["epoch: 1", "epoch: 2"]
    losses = [
        float(line.split("train loss: ")[1].split(",")[0]) for line in lines
    ]
    assert all(math.isfinite(v) and v > 0 for v in losses)

    (ckpt1, states1), (ckpt2, states2) = [
        _latest_states(out / "save") for out in runs
    ]
    assert {"embedding_model", "compute_cost", "optimizer"} <= set(states1)
    assert ckpt1.meta["EER"] == ckpt2.meta["EER"]
    assert math.isfinite(ckpt1.meta["EER"])
    flat1, flat2 = _flatten(states1), _flatten(states2)
    assert set(flat1) == set(flat2)
    n_tensors = 0
    for key, a in flat1.items():
        b = flat2[key]
        if isinstance(a, torch.Tensor):
            n_tensors += 1
            assert torch.equal(a, b), key
        else:
            assert a == b, key
    assert n_tensors > 100  # model, classifier and Adam moments compared

    summaries = [
        json.loads((out / "verification/summary.json").read_text())
        for out in runs
    ]
    assert set(summaries[0]) == set(summaries[1])
    for key, res in summaries[0].items():
        other = summaries[1][key]
        for k, v in res.items():
            if isinstance(v, (int, float)):
                assert v == other[k], (key, k)
        assert 0 < res["eer"] < 1
        scores = [
            pathlib.Path(r["scores_txt"]).read_bytes() for r in (res, other)
        ]
        assert scores[0] == scores[1]
    for store in ("embeddings_full", "embeddings_crops"):
        arrays = [
            np.load(out / "verification" / store / "embeddings.npy")
            for out in runs
        ]
        assert np.isfinite(arrays[0]).all()
        np.testing.assert_array_equal(arrays[0], arrays[1])
