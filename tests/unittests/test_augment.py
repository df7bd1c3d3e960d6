"""Tests for dampit.dataio.augment with the real noise and RIR folders."""

import csv

import numpy as np
import pytest
import torch
from scipy.signal import correlate, fftconvolve

from dampit.dataio.audio import load_audio
from dampit.dataio.augment import FolderAugment, list_audio_files
from dampit.dataio.crops import repeat_to_length


@pytest.fixture(scope="module")
def speech(shared_data):
    """10 real 3 s crops of dspspeech (short ones repeated) [10, 48000]."""
    root = shared_data / "dspspeech"
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[::100]
    return torch.stack(
        [repeat_to_length(load_audio(root / r["path"]), 48000) for r in rows]
    )


def test_noise_is_a_crop_of_one_noise_file(shared_data, speech):
    """At SNR s the output is (1 - a) x + n, n a crop of one noise file
    scaled to RMS a * rms(x), a = 1 / (1 + 10^(s / 20))."""
    torch.manual_seed(0)
    aug = FolderAugment(
        noise_folder=shared_data / "noise", snr_low=5, snr_high=5
    )
    x = speech[:2, :16000]
    y, _ = aug(x)
    a = 1 / (1 + 10 ** (5 / 20))
    noises = [
        load_audio(p).double() for p in list_audio_files(shared_data / "noise")
    ]
    for c, out in zip(x.double(), y.double()):
        n = out - (1 - a) * c
        rms = c.pow(2).mean().sqrt()
        assert abs(n.pow(2).mean().sqrt() / (a * rms) - 1) < 1e-3
        # n is a contiguous crop of one file, up to scale: the best
        # normalised correlation over the files and offsets is 1.
        n = n.numpy()
        best = 0.0
        for w in noises:
            w = w.numpy()
            if len(w) < len(n):
                continue
            dots = correlate(w, n, mode="valid", method="fft")
            energy = np.r_[0, np.cumsum(w**2)]
            norms = np.sqrt(energy[len(n) :] - energy[: -len(n)])
            corr = np.abs(dots) / (norms * np.linalg.norm(n) + 1e-12)
            best = max(best, float(corr.max()))
        assert best > 0.999


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        FolderAugment(noise_folder=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no audio files"):
        FolderAugment(rir_folder=tmp_path / "empty")
    with pytest.raises(ValueError, match="noise_prob"):
        FolderAugment(noise_prob=1.5)


def _measured_snr(clean, noisy):
    """SNR of ``noisy`` against ``clean``: project out the speech (the
    output holds a scaled copy of it), the rest is the noise."""
    x, y = clean.double().numpy(), noisy.double().numpy()
    a = (y @ x) / (x @ x)
    n = y - a * x
    return 10 * np.log10((a * a * (x @ x)) / (n @ n))


def test_noise_snr_in_range(shared_data, speech):
    torch.manual_seed(0)
    aug = FolderAugment(
        noise_folder=shared_data / "noise", snr_low=0, snr_high=15
    )
    noisy, lens = aug(speech, torch.ones(len(speech)))
    assert noisy.shape == speech.shape and torch.isfinite(noisy).all()
    assert torch.equal(lens, torch.ones(len(speech)))
    snrs = [_measured_snr(c, y) for c, y in zip(speech, noisy)]
    assert min(snrs) > -0.25 and max(snrs) < 15.25, snrs
    assert max(snrs) - min(snrs) > 2  # drawn at random, not fixed
    fixed = FolderAugment(
        noise_folder=shared_data / "noise", snr_low=5, snr_high=5
    )
    noisy, _ = fixed(speech)
    for c, y in zip(speech, noisy):
        assert abs(_measured_snr(c, y) - 5.0) < 0.25


def _circular_reverb(x, h):
    """SpeechBrain's convention: circular convolution, direct path at 0."""
    N = len(x)
    full = fftconvolve(x, h[:N])
    out = np.zeros(N)
    for k in range(0, len(full), N):
        seg = full[k : k + N]
        out[: len(seg)] += seg
    return np.roll(out, -int(np.argmax(np.abs(h[:N]))))


def test_reverb_is_convolution_with_one_rir(shared_data, speech):
    torch.manual_seed(0)
    aug = FolderAugment(rir_folder=shared_data / "rir", reverb_prob=1.0)
    rev, _ = aug(speech)
    assert rev.shape == speech.shape and torch.isfinite(rev).all()
    rirs = [
        load_audio(p).double().numpy()
        for p in list_audio_files(shared_data / "rir")
    ]
    used = set()
    for x, y in zip(speech.double().numpy(), rev.double().numpy()):
        assert not np.allclose(x, y)
        circ = [np.corrcoef(_circular_reverb(x, h), y)[0, 1] for h in rirs]
        best = int(np.argmax(circ))
        assert circ[best] > 0.999
        assert sorted(circ)[-2] < 0.6  # it is that RIR, not any
        # the plain (linear) convolution, direct path aligned, agrees too
        h = rirs[best]
        d = int(np.argmax(np.abs(h)))
        lin = fftconvolve(x, h)[d : d + len(x)]
        assert np.corrcoef(lin, y)[0, 1] > 0.9
        # the level is kept: mean |y| == mean |x|
        assert abs(np.abs(y).mean() / np.abs(x).mean() - 1) < 1e-3
        used.add(best)
    assert len(used) >= 2  # one RIR per utterance, not per batch


def test_probabilities_padding_and_both(shared_data, speech):
    x = speech[:6]
    none = FolderAugment(
        noise_folder=shared_data / "noise",
        rir_folder=shared_data / "rir",
        noise_prob=0.0,
        reverb_prob=0.0,
    )
    y, _ = none(x)
    assert torch.equal(y, x) and y is not x
    torch.manual_seed(1)
    half = FolderAugment(noise_folder=shared_data / "noise", noise_prob=0.5)
    changed = []
    for _ in range(4):
        y, _ = half(x)
        changed += [not torch.equal(a, b) for a, b in zip(x, y)]
    assert 0 < sum(changed) < len(changed)
    both = FolderAugment(
        noise_folder=shared_data / "noise",
        rir_folder=shared_data / "rir",
        reverb_prob=1.0,
    )
    padded = x.clone()
    padded[1, 30000:] = 0
    padded[2, 12000:] = 0
    lens = torch.tensor([1.0, 0.625, 0.25, 1.0, 1.0, 1.0])
    y, out_lens = both(padded, lens)
    assert torch.equal(out_lens, lens)
    assert torch.isfinite(y).all()
    assert (y[1, 30000:] == 0).all() and (y[2, 12000:] == 0).all()
    assert not torch.equal(y[1, :30000], padded[1, :30000])


def test_folder_augment_from_yaml(shared_data, tmp_path, speech):
    from hyperpyyaml import load_hyperpyyaml

    yaml = f"""
augment: !new:dampit.dataio.augment.FolderAugment
    noise_folder: {shared_data / "noise"}
    rir_folder: {shared_data / "rir"}
    snr_low: 0
    snr_high: 15
    reverb_prob: 0.5
"""
    aug = load_hyperpyyaml(yaml)["augment"]
    y, _ = aug(speech[:2], torch.ones(2))
    assert y.shape == (2, 48000) and torch.isfinite(y).all()


def test_pickles_after_use(shared_data, speech):
    """Spawned DataLoader workers pickle the module after it was used."""
    import pickle

    aug = FolderAugment(
        noise_folder=shared_data / "noise",
        rir_folder=shared_data / "rir",
        reverb_prob=1.0,
    )
    aug(speech[:2])
    copy = pickle.loads(pickle.dumps(aug))
    y, _ = copy(speech[:2])
    assert y.shape == (2, 48000) and torch.isfinite(y).all()
    assert not torch.equal(y, speech[:2])


def test_reproducible_from_torch_seed(shared_data, speech):
    """In one process the output follows torch's seed, noise order too
    (each DataLoader worker has its own torch seed, hence its own order)."""
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        aug = FolderAugment(
            noise_folder=shared_data / "noise",
            rir_folder=shared_data / "rir",
            reverb_prob=0.5,
        )
        outs.append(aug(speech[:4])[0])
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])
