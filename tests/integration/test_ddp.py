"""The recipe under SpeechBrain's DDP: 2 CPU processes on gloo.

``torchrun --nproc_per_node=2 train.py ...`` trains the thin model for one
debug epoch; each rank holds its slice of every P x K batch (PKSampler
reads the rank and world size from torch.distributed; see
tests/unittests/test_sampler.py for the slices and
test_ddp_metric_terms.py for the loss on all ranks' rows) and the run
ends with a verification summary written once, by rank 0.
"""

import json
import math
import os
import pathlib
import socket
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_recipe_trains_with_two_gloo_processes(shared_data, tmp_path):
    """torchrun with 2 CPU ranks finishes, logs one epoch, verifies."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(REPO / "recipes/VoxCeleb/train.py"),
        str(REPO / "recipes/VoxCeleb/hparams/mini.yaml"),
        f"--data_folder={shared_data / 'dspspeech'}",
        f"--output_folder={out}",
        "--debug",
        "--noprogressbar",
        *(
            f"--{k}={v}"
            for k, v in dict(
                distributed_backend="gloo",
                debug_batches=2,
                debug_epochs=1,
                num_workers=0,
                depth=18,
                base_width=8,
                P=4,
                n_test_crops=1,
                valid_pairs=500,
            ).items()
        ),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = (out / "train_log.txt").read_text()
    assert log.count("epoch: 1") == 1, log  # logged once, by rank 0
    assert "cos_same" in log and "cos_diff" in log, log  # embedding health
    summary = json.loads((out / "verification" / "summary.json").read_text())
    assert all(math.isfinite(v["eer"]) for v in summary.values())
