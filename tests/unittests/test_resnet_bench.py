"""Smoke test of tools/benchmarks/bench_model.py on a tiny network (no
timing asserts).

The FLOP count the benchmark reports is checked against an analytic count
of the convolutions and linear layers written in this file.
"""

import pathlib
import sys

import torch

from dampit.lobes.resnet import LinearClassifier, SEResNet

BENCH_DIR = pathlib.Path(__file__).resolve().parents[2] / "tools" / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))
import bench_model as bench  # noqa: E402


def analytic_forward_flops(config, batch, n_freq, n_frames, n_classes):
    """2 x multiply-adds of every Conv2d and Linear, from output shapes."""
    model = SEResNet(**config).eval()
    clf = LinearClassifier(model.emb_dim, n_classes)
    total = 0

    def hook(module, args, out):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            per_out = module.in_channels // module.groups * k
            total += 2 * out.numel() * per_out
        else:
            total += 2 * out.numel() * module.in_features

    for m in list(model.modules()) + [clf.out]:
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(batch, 3, n_freq, n_frames))
    return total


def test_compare_and_rows_on_a_tiny_network():
    tiny = dict(depth=18, base_width=4, emb_dim=8, gate="spatial")
    configs = {
        "gated": tiny,
        "plain": dict(tiny, gate="none"),
        "thin": dict(tiny, base_width=2),
    }
    res = bench.compare(
        configs, batch=2, reps=1, clock_kind="wall", n_freq=40, n_frames=64
    )
    want = analytic_forward_flops(tiny, 2, 40, 64, bench.N_CLASSES)
    assert res["gated"]["infer_flops"] == want
    assert res["gated"]["infer_flops"] > res["plain"]["infer_flops"]
    # backward costs about twice the forward (no input gradient for conv1)
    ratio = res["gated"]["train_flops"] / res["gated"]["infer_flops"]
    assert 2.5 < ratio < 3.05
    rows = bench._rows(res, 2, 1, "cpu", 1, "wall")
    assert len(rows) == 4
    for row in rows:
        assert set(row) == {
            "name",
            "figure",
            "unit",
            "reference",
            "ratio",
            "note",
        }
        assert row["figure"] > 0 and row["reference"] > 0
        assert (
            abs(row["ratio"] - row["figure"] / row["reference"])
            < 0.02 * (row["ratio"])
        )
