"""Tests of dampit.lobes.pooling against plain loops over the real frames."""

import math

import torch

from dampit.lobes.pooling import GlobalAvgPool, TemporalStatsPool, time_mask


def test_avg_pool_matches_plain_computation():
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    frames = torch.tensor([6, 2])
    avg = GlobalAvgPool()(x, frames)
    for b, n in enumerate(frames.tolist()):
        torch.testing.assert_close(avg[b], x[b, :, :, :n].mean(dim=(1, 2)))
    torch.testing.assert_close(GlobalAvgPool()(x), x.mean(dim=(2, 3)))


def test_temporal_stats_pool_matches_loop():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 2, 9, dtype=torch.float64)
    n = torch.tensor([9, 4, 1])
    out = TemporalStatsPool(n_freq=2)(x, n)
    assert out.shape == (3, 2 * 4 * 2)
    for b in range(3):
        means, stds = [], []
        for c in range(4):
            for f in range(2):
                vals = [float(x[b, c, f, t]) for t in range(int(n[b]))]
                m = sum(vals) / len(vals)
                var = sum((v - m) ** 2 for v in vals) / len(vals)
                means.append(m)
                stds.append(math.sqrt(max(var, 1e-6)))
        expect = torch.tensor(means + stds, dtype=torch.float64)
        torch.testing.assert_close(out[b], expect)
    # no lengths = every frame; one real frame gives std sqrt(eps)
    torch.testing.assert_close(
        TemporalStatsPool(2)(x), TemporalStatsPool(2)(x, torch.full((3,), 9))
    )
    assert torch.allclose(out[2, 8:], torch.full((8,), 1e-3, dtype=x.dtype))


def test_temporal_stats_pool_gradient_finite_on_constant_input():
    x = torch.ones(2, 3, 2, 5, requires_grad=True)
    TemporalStatsPool(2)(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_time_mask_is_one_on_the_real_frames():
    n = torch.tensor([0, 1, 4, 6, 9])  # none, some, all and more than all
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        got = time_mask(n, 6, dtype)
        assert got.shape == (5, 1, 1, 6) and got.dtype == dtype
        want = [[1.0 if t < k else 0.0 for t in range(6)] for k in n.tolist()]
        assert got.flatten(1).tolist() == want
