"""tools/gpu_check.sh in its CPU mode (``--cpu --steps 1``: one warm-up
and one timed step of each mode and of the recipe's epoch).

The check must build the paper's network from multi_metric.yaml (its
parameter count equals an SEResNet built here with the paper's settings),
train a few steps in every CPU mode with a finite loss, and project the
VoxCeleb2 epoch, the schedule and the Vox1-O test from its own measured
speeds; the recipe's own epoch (its Brain, loader workers and
augmentation) must train its batches with a finite loss and be reported
as a ratio of the bare fp32 step. Without ``--cpu`` on a machine without
CUDA it stops with one line.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from dampit.lobes.resnet import SEResNet

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "gpu_check.sh"
sys.path.insert(0, str(REPO / "tools"))
import gpu_check  # noqa: E402

CPU_MODES = ("fp32", "bf16", "bf16+channels_last")


def _run(*args, timeout=1900):
    env = dict(os.environ, OMP_NUM_THREADS="1", GPU_CHECK_TIMEOUT="1800")
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_cpu_mode_reports_every_mode(tmp_path):
    out, blob = tmp_path / "report.md", tmp_path / "report.json"
    proc = _run("--cpu", "--steps", "1", "--out", str(out), "--json", str(blob))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out.read_text()
    assert report in proc.stdout
    assert f"- torch: {torch.__version__}" in report
    assert "- device: cpu" in report
    assert "batch 4 (P x K = 2 x 2) of random 1 s audio" in report
    res = json.loads(blob.read_text())
    assert res["batch"] == 4  # P x K = 2 x 2 on the CPU
    paper = SEResNet(
        depth=50, base_width=64, gate="spatial", n_freq=161, emb_dim=2048
    )
    n_params = sum(p.numel() for p in paper.parameters())
    for mode in CPU_MODES:
        r = res["results"][mode]
        assert r["finite"] and math.isfinite(r["loss"]), mode
        assert r["params"] == n_params, mode
        assert r["samples_per_s"] > 0 and r["crops_per_s"] > 0
        assert r["peak_mb"] > 0
        # Projections from the measured speeds, recomputed here.
        rate = r["samples_per_s"]
        assert r["vox2_epoch_h"] == pytest.approx(1092009 / rate / 3600)
        assert r["schedule_samples"] == 60 * 2000 * 64 * 2
        assert r["schedule_h"] == pytest.approx(60 * 2000 * 128 / rate / 3600)
        crops = r["crops_per_s"]
        assert r["vox1o_test_min"] == pytest.approx(48740 / crops / 60)
        assert f"| {mode} | {rate:.1f} |" in report
    assert "| bf16+channels_last+compile |" in report  # listed, not run
    recipe = res["recipe"]
    assert recipe["finite"] and recipe["mode"] == "fp32"
    assert recipe["batches"] == 1 + 1  # warm-up + timed, one epoch
    assert recipe["workers"] == max(1, len(os.sched_getaffinity(0)) - 2)
    ratio = recipe["samples_per_s"] / res["results"]["fp32"]["samples_per_s"]
    assert f"samples/s): **{ratio:.2f}** (goal >= 0.90: " in report


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_cuda_stops_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--steps", "3", "--out", str(tmp_path / "r.md")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].endswith("error: no CUDA device: use --cpu")
    assert not (tmp_path / "r.md").exists()
