"""tools/bench_scale.py --quick: every stage runs and its figures hold up.

The quick sizes only show that the benchmark runs; what is checked does
not depend on the machine's speed: every row is there with a finite
figure, the training loader opens each file once per sample (counted in
its process), the projections are the lines through the measured points
(recomputed here), the sampler drew one epoch of U // (P * K) batches,
random embeddings score an EER near 50 %, and every verification file
came through the loaders.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "bench_scale.py"
ROWS = (
    "prepare_voxceleb_cpu_N=300",
    "prepare_voxceleb_peak_rss_N=600",
    "prepare_voxceleb_projected_cpu_1.1M",
    "prepare_voxceleb_projected_peak_rss_1.1M",
    "pksampler_build_and_epoch_U=110000",
    "pksampler_peak_memory_U=110000",
    "train_loader_crops_per_s_workers=0",
    "train_loader_crops_per_s_workers=1",
    "train_loader_crops_per_s_workers=2",
    "train_loader_crops_per_cpu_s",
    "augment_crops_per_cpu_s",
    "crops_per_s_per_core_x16",
    "train_file_opens_per_sample",
    "score_multicrop_eer_mindcf_U=2000,T=8000,D=256",
    "score_peak_anon_memory_U=2000,T=8000,D=256",
    "dampit_verify_peak_rss_T=20000",
    "verify_loader_files_per_s_workers=2",
)


@pytest.fixture(scope="module")
def quick(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "scale.json"
    env = dict(os.environ, DAMPIT_DATA=str(shared_data), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def _line(points, x):
    (x0, y0), (x1, y1) = points
    return y0 + (y1 - y0) / (x1 - x0) * (x - x0)


@pytest.mark.slow
def test_quick_rows_and_projections(quick):
    blob, stdout = quick
    rows = {r["name"]: r for r in blob["rows"]}
    assert set(ROWS) <= set(rows), sorted(set(ROWS) - set(rows))
    for r in rows.values():
        assert math.isfinite(r["figure"]), r
        assert r["note"], r
        assert f"| {r['name']} |" in stdout
    assert rows["train_file_opens_per_sample"]["figure"] == 1.0
    prep = blob["raw"]["preparation"]
    assert [p["n"] for p in prep] == [300, 600]
    for key, field in (("prep", "cpu_s"), ("headers", "cpu_s")):
        pts = [(p["n"], p[key][field]) for p in prep]
        want = _line(pts, 1.1e6)
        name = "prepare_voxceleb_projected_cpu_1.1M"
        got = rows[name]["figure" if key == "prep" else "reference"]
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    # Every VoxCeleb2 file of the tree went to train/dev (80 are Vox1).
    assert prep[1]["prep"]["n_train_dev"] == 600 - 80
    sampler = blob["raw"]["sampler"]
    assert sampler["n_batches"] == 110000 // 128 and sampler["speakers_ok"]


@pytest.mark.slow
def test_quick_verification_figures(quick):
    blob, _ = quick
    for s in blob["raw"]["verification scoring"]:
        sc = s["score"]
        assert sc["n_trials"] == s["n_trials"] and sc["n_utts"] == s["n_utts"]
        assert 0.4 < sc["eer"] < 0.6  # random embeddings: chance level
        assert sc["vectors_mb"] == pytest.approx(s["n_utts"] * 256 * 4 / 2**20)
    cli = blob["raw"]["dampit-verify"]
    assert [c["status"] for c in cli] == [0, 0]
    vload = blob["raw"]["verification loading"]
    assert {w: vload[w]["files"] for w in ("0", "2")} == {"0": 32, "2": 32}
