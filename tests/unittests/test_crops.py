"""Tests for dampit.dataio.crops, checked with plain index loops."""

import csv

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dampit.dataio.audio import load_audio
from dampit.dataio.crops import eval_crops, repeat_to_length


@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 50), n=st.integers(1, 200))
def test_repeat_to_length_is_tiling(N, n):
    wav = torch.arange(1, N + 1, dtype=torch.float32)  # no zeros inside
    out = repeat_to_length(wav, n)
    assert out.shape == (n,)
    assert out.tolist() == [float(i % N + 1) for i in range(n)]
    assert bool((out != 0).all())  # never a zero gap


def test_repeat_to_length_short_real_utterance_has_no_gap(shared_data):
    root = shared_data / "fsdd6"
    with open(root / "manifest.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: float(r["duration_s"]))
    wav = load_audio(root / rows[0]["path"])  # the shortest: ~0.14 s
    n = 48000
    assert wav.numel() < n // 2  # the original code's zero-gap case
    out = repeat_to_length(wav, n)
    for start in range(0, n, wav.numel()):
        seg = out[start : start + wav.numel()]
        assert torch.equal(seg, wav[: seg.numel()])


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="empty"):
        repeat_to_length(torch.zeros(0), 10)
    with pytest.raises(ValueError, match="1-D"):
        eval_crops(torch.zeros(2, 10), 2, 5)
    with pytest.raises(ValueError, match="n="):
        eval_crops(torch.zeros(10), 2, 0)
    with pytest.raises(ValueError, match="n_crops"):
        eval_crops(torch.zeros(10), 0, 5)


@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 300), n=st.integers(1, 100), n_crops=st.integers(1, 12))
def test_eval_crops_evenly_spaced(N, n, n_crops):
    wav = torch.arange(N, dtype=torch.float64)
    crops = eval_crops(wav, n_crops, n)
    assert crops.shape == (n_crops, n)
    src = wav if N >= n else repeat_to_length(wav, n)
    span = src.numel() - n
    for i in range(n_crops):
        if n_crops == 1:
            s = span // 2
        else:
            s = int(round(i * span / (n_crops - 1)))
        assert torch.equal(crops[i], src[s : s + n])
    if n_crops > 1 and N >= n:
        assert crops[0, 0] == 0 and crops[-1, -1] == N - 1
    assert torch.equal(crops, eval_crops(wav, n_crops, n))


def test_eval_crops_real_utterance(shared_data):
    root = shared_data / "dspspeech"
    with open(root / "manifest.csv", newline="") as f:
        row = next(csv.DictReader(f))
    wav = load_audio(root / row["path"])
    crops = eval_crops(wav, n_crops=10, n=16000)
    assert crops.shape == (10, 16000)
    starts = []
    for c in crops:
        hits = [
            s
            for s in range(wav.numel() - 16000 + 1)
            if torch.equal(wav[s : s + 16000], c)
        ][:1]
        starts.append(hits[0])
    gaps = torch.diff(torch.tensor(starts))
    assert gaps.max() - gaps.min() <= 1
