"""Tests of dampit.lobes.gates: the paper's spatial gate against a plain
loop, its gradients against the formula, and its CPU speed paths (chunks,
in place) against the plain expression."""

import pytest
import torch

import dampit.lobes.gates as gates
from dampit.lobes.gates import SpatialGate


def _random_gate(channels, hidden, std=0.5):
    gate = SpatialGate(channels, hidden=hidden).double()
    with torch.no_grad():
        for conv in (gate.conv1, gate.conv2):
            conv.weight.normal_(0, std)
            conv.bias.uniform_(-1, 1)
    return gate


def test_spatial_gate_matches_a_plain_loop():
    gate = _random_gate(5, 3)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    w1 = gate.conv1.weight[:, :, 0, 0]
    w2 = gate.conv2.weight[:, :, 0, 0]
    want = torch.empty_like(x)
    for b in range(2):
        for f in range(3):
            for t in range(4):
                v = x[b, :, f, t]
                h = torch.relu(w1 @ v + gate.conv1.bias)
                m = 1 / (1 + torch.exp(-(w2 @ h + gate.conv2.bias)))
                want[b, :, f, t] = v * m + v  # the paper's Eq. 7
    with torch.no_grad():
        torch.testing.assert_close(gate(x), want)


def test_spatial_gate_gradients_match_the_formula(monkeypatch):
    # chunked on CPU (2 chunks) and whole: the same gradients, and those
    # of x * s + x with s = sigmoid(z): d/dx = 1 + s (+ the path through z)
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    gate = _random_gate(4, 3)
    monkeypatch.setattr(gates, "CPU_CHUNK_ELEMENTS", 32)  # 2 items a chunk
    assert torch.autograd.gradcheck(gate, (x,))
    g = torch.randn_like(x)
    params = [x] + list(gate.parameters())
    chunked = torch.autograd.grad(gate(x), params, g)
    monkeypatch.setattr(gates, "CPU_CHUNK_ELEMENTS", 10**9)
    whole = torch.autograd.grad(gate(x), params, g)
    z = gate.conv2(torch.relu(gate.conv1(x)))
    plain = torch.autograd.grad(x * torch.sigmoid(z) + x, params, g)
    for a, b, c in zip(chunked, whole, plain):
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b, c)


def test_spatial_gate_is_local():
    x = torch.randn(1, 8, 4, 6, dtype=torch.float64)
    y = x.clone()
    y[0, :, 1, 2] += 3.0  # change one position
    gate = _random_gate(8, 4, std=0.3)
    with torch.no_grad():
        changed = (gate(y) - gate(x)).abs().sum(dim=1)[0] > 1e-9
    assert changed[1, 2] and changed.sum() == 1  # only that position


@pytest.mark.parametrize("chunk", [100, 10**9])  # several chunks, one
def test_inplace_inference_path_gives_the_same_result(chunk, monkeypatch):
    monkeypatch.setattr(gates, "CPU_CHUNK_ELEMENTS", chunk)
    gate = _random_gate(8, 4, std=0.3).float()
    x = torch.randn(5, 8, 3, 4)
    want = gate(x)  # gradients enabled: never in place
    assert want is not x
    keep = x.clone()
    with torch.no_grad():
        assert gate(x) is not x  # not asked: x untouched
        torch.testing.assert_close(x, keep, rtol=0, atol=0)
        out = gate(x, inplace=True)
    assert out is x
    torch.testing.assert_close(out, want.detach())
    y = keep.clone().requires_grad_()
    assert gate(y, inplace=True) is not y  # grad enabled: not in place
    torch.testing.assert_close(y.detach(), keep, rtol=0, atol=0)


def test_gate_initialisation_is_the_codes():
    gate = SpatialGate(512, hidden=16)
    w = torch.cat([gate.conv1.weight.flatten(), gate.conv2.weight.flatten()])
    assert abs(w.std().item() - 1e-3) < 1e-4
    assert gate.conv1.bias.abs().max() == 0 and gate.conv2.bias.abs().max() == 0
    with torch.no_grad():
        m = gate.attention(torch.randn(1, 512, 2, 3))
    # sigmoid of nearly zero logits: the gate starts as x * 1.5
    assert (m - 0.5).abs().max() < 1e-3
