"""tools/benchmarks/bench_scale.py at its quick sizes: every stage runs
and its figures hold up.

The quick sizes only show that the benchmark runs; what is checked does
not depend on the machine's speed: every row is there with a finite
figure, the training loader opens each file once per sample (counted in
its process), the projections are the lines through the measured points
(recomputed here), the sampler drew one epoch of U // (P * K) batches and
every verification file came through the loaders.
"""

import math
import pathlib
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

BENCH_DIR = pathlib.Path(__file__).resolve().parents[2] / "tools" / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))
import bench_scale  # noqa: E402
import scale_inputs  # noqa: E402

Z = bench_scale.SIZES["quick"]


@pytest.fixture(scope="module")
def quick(shared_data, tmp_path_factory):
    """``{stage: (rows, raw)}`` of every stage at the quick sizes, two
    stages at a time (each runs in its own processes and folders; no
    figure checked here depends on the time)."""
    tmp = str(tmp_path_factory.mktemp("scale"))
    sources = scale_inputs.make_sources(str(shared_data), tmp + "/src")
    with ThreadPoolExecutor(2) as pool:
        runs = {
            "prep": pool.submit(bench_scale.bench_prep, tmp, Z, sources),
            "loader": pool.submit(bench_scale.bench_loader, tmp, Z, sources),
            "vload": pool.submit(bench_scale.bench_vload, tmp, Z, sources),
            "sampler": pool.submit(bench_scale.bench_sampler, Z),
        }
        return {name: run.result() for name, run in runs.items()}


def _line(points, x):
    (x0, y0), (x1, y1) = points
    return y0 + (y1 - y0) / (x1 - x0) * (x - x0)


@pytest.mark.slow
def test_quick_rows_and_projections(quick):
    rows = {r["name"]: r for rows, _ in quick.values() for r in rows}
    assert set(rows) >= {
        "prepare_voxceleb_cpu_N=300",
        "prepare_voxceleb_peak_rss_N=600",
        "prepare_voxceleb_projected_cpu_1.1M",
        "prepare_voxceleb_projected_peak_rss_1.1M",
        "pksampler_build_and_epoch_U=110000",
        "pksampler_peak_memory_U=110000",
        "train_loader_crops_per_s_workers=0",
        "train_loader_crops_per_s_workers=2",
        "train_loader_crops_per_cpu_s",
        "augment_crops_per_cpu_s",
        "crops_per_s_per_core_x16",
        "train_file_opens_per_sample",
        "train_main_cpu_per_batch_augmented",
        "verify_loader_files_per_s_workers=2",
    }
    for r in rows.values():
        assert math.isfinite(r["figure"]) and r["note"], r
    assert rows["train_file_opens_per_sample"]["figure"] == 1.0
    prep = quick["prep"][1]
    assert [p["n"] for p in prep] == [300, 600]
    for key in ("prep", "headers"):
        want = _line([(p["n"], p[key]["cpu_s"]) for p in prep], 1.1e6)
        r = rows["prepare_voxceleb_projected_cpu_1.1M"]
        got = r["figure" if key == "prep" else "reference"]
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    # Every VoxCeleb2 file of the tree went to train/dev (80 are Vox1).
    assert prep[1]["prep"]["n_train_dev"] == 600 - 80
    sampler = quick["sampler"][1]
    assert sampler["n_batches"] == 110000 // 128 and sampler["speakers_ok"]


@pytest.mark.slow
def test_quick_verification_loading(quick):
    vload = quick["vload"][1]
    assert {w: vload[w]["files"] for w in (0, 2)} == {0: 32, 2: 32}
