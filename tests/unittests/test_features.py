"""Tests for dampit.lobes.features against librosa, scipy and closed forms."""

import csv

import numpy as np
import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from scipy.signal import get_window
from speechbrain.lobes.features import Fbank

from dampit.dataio.audio import load_audio
from dampit.lobes.features import (
    CropNormalization,
    Features,
    Spectrogram,
)


@pytest.fixture(scope="module")
def real_wavs(shared_data):
    """Three real dspspeech utterances of different lengths and speakers."""
    root = shared_data / "dspspeech"
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    picks = [rows[0], rows[len(rows) // 2], rows[-1]]
    return [load_audio(root / r["path"]) for r in picks]


def _librosa_spec(wav):
    librosa = pytest.importorskip("librosa")
    spec = librosa.stft(
        wav.numpy(),
        n_fft=320,
        hop_length=160,
        win_length=320,
        window="hamming",
        center=True,
        pad_mode="constant",
    )
    return np.log1p(np.abs(spec)).T


def test_window_matches_scipy_periodic_hamming():
    ref = get_window("hamming", 320, fftbins=True)
    got = Spectrogram().window.double().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # ... and not the symmetric one (different by ~1e-2 at the edges)
    sym = get_window("hamming", 320, fftbins=False)
    assert np.abs(got - sym).max() > 1e-4


def test_matches_librosa_on_real_speech(real_wavs):
    spec = Spectrogram()
    for wav in real_wavs:
        ref = _librosa_spec(wav)
        got = spec(wav)[0].numpy()
        assert got.shape == ref.shape == (1 + wav.numel() // 160, 161)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_batched_matches_librosa_per_utterance(real_wavs):
    """A zero-padded batch gives each utterance's own frames (away from
    the padding)."""
    n = max(w.numel() for w in real_wavs)
    batch = torch.zeros(len(real_wavs), n)
    for i, w in enumerate(real_wavs):
        batch[i, : w.numel()] = w
    feats = Spectrogram()(batch)
    assert feats.shape == (3, 1 + n // 160, 161)
    for i, w in enumerate(real_wavs):
        ref = _librosa_spec(w)
        # the last frame of an utterance sees zeros in both cases
        t = ref.shape[0]
        np.testing.assert_allclose(feats[i, :t].numpy(), ref, atol=1e-4)


def _numpy_spec(wav, n_fft=320, hop=160):
    """The paper's features by a plain loop: zero-padded centred frames,
    periodic Hamming window, rfft, log(1 + |X|)."""
    x = np.pad(wav.astype(np.float64), n_fft // 2)
    win = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = [
        np.log1p(np.abs(np.fft.rfft(x[t * hop : t * hop + n_fft] * win)))
        for t in range(1 + wav.size // hop)
    ]
    return np.stack(frames)


def test_matches_a_numpy_loop_and_each_row_alone(real_wavs):
    wav = real_wavs[2][:24000]
    batch = torch.stack([wav, 0.5 * wav, torch.zeros_like(wav)])
    got = Spectrogram()(batch).numpy()
    for i, row in enumerate(batch):
        # float32 FFT of 320 samples of |x| <= 1: |X| off by < 2e-5, and
        # log1p has slope <= 1
        np.testing.assert_allclose(
            got[i], _numpy_spec(row.numpy()), rtol=0, atol=2e-5
        )
        alone = Spectrogram()(row).numpy()[0]
        np.testing.assert_allclose(got[i], alone, rtol=0, atol=1e-6)
    assert np.abs(got[2]).max() == 0  # silence gives exact zeros


def test_sinusoid_closed_form():
    """A cosine at the centre of bin k has |X_k| = A * sum(window) / 2."""
    sr, k, amp = 16000, 20, 0.3  # bin 20 = 1000 Hz (50 Hz per bin)
    t = torch.arange(sr, dtype=torch.float64) / sr
    wav = (amp * torch.cos(2 * np.pi * k * 50 * t)).float()
    mag = torch.expm1(Spectrogram()(wav)[0].double())
    win_sum = torch.hamming_window(320, periodic=True).sum().item()
    interior = mag[5:-5]
    # |X_k| = 24: float32 log1p then expm1 (25 x 2.4e-7 x 3.2) and the
    # -k image's leakage stay below 1e-4 of it
    want = amp * win_sum / 2
    np.testing.assert_allclose(
        interior[:, k].numpy(), want, rtol=0, atol=1e-4 * want
    )
    # the Hamming sidelobes are more than 40 dB down four bins away
    assert interior[:, k + 4 :].max() < 1e-2 * interior[:, k].min()


def test_shapes_and_errors():
    spec = Spectrogram()
    assert spec(torch.zeros(3, 48000)).shape == (3, 301, 161)
    assert spec(torch.zeros(47840)).shape == (1, 300, 161)
    assert Spectrogram(n_fft=512, win_length=400).n_bins == 257
    assert Spectrogram(n_fft=512, win_length=400)(
        torch.zeros(1, 1600)
    ).shape == (
        1,
        11,
        257,
    )
    with pytest.raises(ValueError, match="window='kaiser'"):
        Spectrogram(window="kaiser")
    with pytest.raises(ValueError, match="win_length=400"):
        Spectrogram(n_fft=320, win_length=400)
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        spec(torch.zeros(2, 1, 1600))
    assert "window" not in spec.state_dict()


def test_autocast_keeps_float32():
    wav = torch.randn(2, 8000)
    ref = Spectrogram()(wav)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = Spectrogram()(wav)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


def _norm_reference(x, lengths, mode, floor):
    """Plain loops over utterances (and bins)."""
    out = np.empty_like(x)
    B, T, F = x.shape
    for b in range(B):
        n = int(round(lengths[b] * T))
        valid = x[b, :n].astype(np.float64)
        if mode == "scalar":
            mean, std = valid.mean(), valid.std()
            out[b] = (x[b] - mean) / max(std, floor)
        else:
            for f in range(F):
                mean, std = valid[:, f].mean(), valid[:, f].std()
                out[b, :, f] = (x[b, :, f] - mean) / max(std, floor)
    return out


@pytest.mark.parametrize("mode", ["scalar", "freq"])
def test_crop_normalization_matches_loops(mode):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 40, 7, generator=g) * 2.5 + 4.0
    x[2, 20:] = 100.0  # padding must not enter the statistics
    lengths = torch.tensor([1.0, 0.75, 0.5])
    got = CropNormalization(mode)(x, lengths).numpy()
    ref = _norm_reference(x.numpy(), lengths.numpy(), mode, 1e-3)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    got_all = CropNormalization(mode)(x).numpy()
    ref_all = _norm_reference(x.numpy(), np.ones(3), mode, 1e-3)
    np.testing.assert_allclose(got_all, ref_all, atol=1e-4)


def test_crop_normalization_floor_and_errors():
    const = torch.full((1, 10, 4), 3.0)
    assert CropNormalization("scalar")(const).abs().max() == 0
    tiny = torch.zeros(1, 10, 4)
    tiny[0, ::2] = 1e-5  # mean and std 5e-6; the std is floored at 1e-3
    out = CropNormalization("scalar")(tiny)
    # float32 rounding of 1e-5 - 5e-6 (< 1e-12) over 1e-3
    np.testing.assert_allclose(out[0, 0, 0], 5e-3, rtol=0, atol=1e-8)
    np.testing.assert_allclose(out[0, 1, 0], -5e-3, rtol=0, atol=1e-8)
    x = torch.randn(2, 5, 3)
    assert CropNormalization("none")(x) is x
    with pytest.raises(ValueError, match="mode='global'"):
        CropNormalization("global")
    with pytest.raises(ValueError, match="3 lengths for 2 items"):
        CropNormalization()(x, torch.ones(3))
    with pytest.raises(ValueError, match=r"\[B, T, F\]"):
        CropNormalization()(x[0])


def test_fbank_swaps_in_from_yaml(real_wavs):
    """The module docstring's YAML: Features with kind fbank."""
    hp = load_hyperpyyaml(
        """
compute_features: !new:dampit.lobes.features.Features
    kind: fbank
    n_bins: 80
    n_fft: 400
    hop_length: 160
mean_var_norm: !new:dampit.lobes.features.CropNormalization
    mode: freq
"""
    )
    wav = real_wavs[0][None]
    feats = hp["compute_features"](wav)
    # SpeechBrain's own Fbank with its defaults (25 ms, 10 ms, n_fft 400)
    torch.testing.assert_close(feats, Fbank(n_mels=80)(wav))
    assert feats.shape == (1, 1 + wav.shape[1] // 160, 80)
    out = hp["mean_var_norm"](feats)
    assert out[0].mean(0).abs().max() < 1e-4


def test_Features_spectrogram_is_the_paper_spectrogram(real_wavs):
    wav = real_wavs[1][None]
    torch.testing.assert_close(Features()(wav), Spectrogram()(wav))
    spec = Features("spectrogram", n_bins=257, n_fft=512)(wav)
    assert spec.shape[-1] == 257


def test_Features_errors():
    with pytest.raises(ValueError, match="n_bins=80"):
        Features("spectrogram", n_bins=80)
    with pytest.raises(ValueError, match="kind='mfcc'"):
        Features("mfcc")
    with pytest.raises(ValueError, match="mel bands"):
        Features("fbank", n_bins=0)


def test_traced_spectrogram_follows_the_length():
    spec = Spectrogram()
    traced = torch.jit.trace(spec, torch.randn(2, 16000), check_trace=False)
    wav = torch.randn(3, 12000)
    torch.testing.assert_close(traced(wav), spec(wav), rtol=0, atol=1e-6)
