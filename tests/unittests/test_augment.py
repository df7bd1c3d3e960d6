"""Tests for dampit.dataio.augment with the real noise and RIR folders."""

import csv

import numpy as np
import pytest
import scipy.stats
import soundfile as sf
import torch
from scipy.signal import correlate, fftconvolve
from speechbrain.processing.signal_processing import reverberate

from dampit.dataio.audio import load_audio
from dampit.dataio.augment import FolderAugment, list_audio_files
from dampit.dataio.crops import repeat_to_length
from dampit.utils.checkpoints import AtomicCheckpointer


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
    state = torch.get_rng_state()
    y, _ = none(x)
    assert torch.equal(y, x) and y is not x
    assert torch.equal(torch.get_rng_state(), state)  # off: nothing drawn
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


def _draws(ids, out, candidates):
    """(RIR index or -1, noise sign or 0, SNR in dB or None) of each output
    row: of the crop's candidates (the clean crop, its reverberation by
    each RIR), the one ``r`` for which ``out = c1 r + c2`` holds (least
    squares, exact for the right one only). The noise files are constants
    +-0.5, so the noise is ``+-a rms(r)`` and ``c1 = 1 - a``."""
    found = []
    for uid, y in zip(ids, out.double()):
        fits = []
        for r in candidates[uid]:
            basis = torch.stack([r, torch.ones_like(r)], 1)
            coef = torch.linalg.lstsq(basis, y[:, None]).solution[:, 0]
            fits.append(((basis @ coef - y).norm() / y.norm(), coef, r))
        k = min(range(len(fits)), key=lambda i: float(fits[i][0]))
        err, coef, r = fits[k]
        c1, c2 = coef.tolist()
        assert err < 1e-4, float(err)
        if abs(c2) < 1e-6 and abs(c1 - 1) < 1e-5:
            found.append((k - 1, 0, None))
            continue
        a = 1 - c1
        assert abs(abs(c2) / (a * float(r.pow(2).mean().sqrt())) - 1) < 1e-3
        found.append((k - 1, int(np.sign(c2)), 20 * np.log10(c1 / a)))
    return found


def test_recipe_augments_each_crop_in_the_loader_workers(
    shared_data, tmp_path, recipe
):
    """The recipe's training loader (one worker) gives its crops the
    augmentation FolderAugment gives a batch in the training process:
    reverberation and noise each with probability 0.5, the 5 RIRs and 2
    noise files equally often, SNR uniform in [0, 15] dB. Each crop's
    draws are read back from the audio itself (``_draws``)."""
    train, _ = recipe
    crop, speakers = 800, 8
    for sign in (1, -1):
        noise = tmp_path / "noise" / f"n{sign}.wav"
        noise.parent.mkdir(exist_ok=True)
        sf.write(noise, np.full(4000, 0.5 * sign), 16000, subtype="PCM_16")
    with open(shared_data / "dspspeech" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))  # 40 words of each speaker in turn
    words = [w for i, w in enumerate(rows) if i % 40 in (0, 20)]
    rows, clean = [], {}
    for k, word in enumerate(words[: 2 * speakers]):
        wav = load_audio(shared_data / "dspspeech" / word["path"])
        path = tmp_path / f"{k}.wav"
        sf.write(path, wav[len(wav) // 2 :][:crop].numpy(), 16000)
        clean[str(k)] = load_audio(path)
        rows.append(f"{k},0.05,{path},0,{crop},{word['speaker']}")
    manifest = tmp_path / "train.csv"
    manifest.write_text("ID,duration,wav,start,stop,spk_id\n" + "\n".join(rows))
    rir_files = list_audio_files(shared_data / "rir")
    rirs = [load_audio(p) for p in rir_files]

    def augment():
        return FolderAugment(
            noise_folder=tmp_path / "noise",
            rir_folder=shared_data / "rir",
            noise_prob=0.5,
            reverb_prob=0.5,
        )

    hp = dict(sample_rate=16000, crop_samples=crop, data_folder=tmp_path)
    hp.update(save_folder=str(tmp_path / "save"), P=4, K=2, seed=0)
    hp.update(batches_per_epoch=40, num_workers=1, augment=augment())
    hp["checkpointer"] = AtomicCheckpointer(tmp_path / "save")
    data = train.dataio_prep(hp, {"train": manifest, "dev": manifest})[0]
    loader, _ = train.make_train_loader(hp, data)
    ids, workers = [], []
    for batch in loader:
        ids += batch.id
        workers.append(batch.sig.data)
    candidates = {
        uid: [x.double()] + [reverberate(x[None], h)[0].double() for h in rirs]
        for uid, x in clean.items()
    }
    in_workers = _draws(ids, torch.cat(workers), candidates)
    torch.manual_seed(0)
    batch_aug = augment()  # the training process's call on each batch
    x = torch.stack([clean[u] for u in ids])
    batched = torch.cat([batch_aug(b)[0] for b in x.split(8)])
    in_batches = _draws(ids, batched, candidates)
    n = len(ids)
    for found in (in_workers, in_batches):
        rir, sign, snr = zip(*found)
        snr = [s for s in snr if s is not None]
        for rate in (np.mean(np.array(rir) >= 0), len(snr) / n):
            assert abs(rate - 0.5) < 4 * np.sqrt(0.25 / n), rate
        reverbed = [r for r in rir if r >= 0]
        counts = np.bincount(reverbed, minlength=len(rirs))
        assert scipy.stats.chisquare(counts).pvalue > 1e-4, counts
        signs = [s for s in sign if s]
        assert scipy.stats.binomtest(signs.count(1), len(signs)).pvalue > 1e-4
        assert min(snr) > -1e-3 and max(snr) < 15 + 1e-3
        assert scipy.stats.kstest(np.array(snr) / 15, "uniform").pvalue > 1e-4
    # the two ways draw from the same distribution
    snr_w = [s for _, _, s in in_workers if s is not None]
    snr_b = [s for _, _, s in in_batches if s is not None]
    assert scipy.stats.ks_2samp(snr_w, snr_b).pvalue > 1e-4
    assert in_workers != in_batches  # different random streams
