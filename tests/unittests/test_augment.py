"""Tests for dampit.dataio.augment with the real noise and RIR folders."""

import csv
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import fftconvolve

from dampit.dataio.audio import load_audio
from dampit.dataio.augment import (
    FolderAugment,
    list_audio_files,
    make_noise_csv,
    make_rir_csv,
)
from dampit.dataio.crops import repeat_to_length


@pytest.fixture(scope="module")
def csv_folder(shared_data, tmp_path_factory):
    """CSVs and noise chunks for the shared folders, written once."""
    out = tmp_path_factory.mktemp("augment")
    make_noise_csv(shared_data / "noise", out / "noise.csv", chunk_length=5.0)
    make_rir_csv(shared_data / "rir", out / "rir.csv")
    return out


@pytest.fixture(scope="module")
def speech(shared_data):
    """10 real 3 s crops of dspspeech (short ones repeated) [10, 48000]."""
    root = shared_data / "dspspeech"
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[::100]
    return torch.stack(
        [repeat_to_length(load_audio(root / r["path"]), 48000) for r in rows]
    )


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_noise_csv_chunks_cover_the_folder(shared_data, csv_folder):
    folder = shared_data / "noise"
    before = sorted(os.listdir(folder))
    rows = _read_csv(csv_folder / "noise.csv")
    assert list(rows[0]) == ["ID", "duration", "wav", "wav_format", "wav_opts"]
    assert len({r["ID"] for r in rows}) == len(rows)
    with open(folder / "manifest.csv", newline="") as f:
        manifest = {
            r["path"]: float(r["duration_s"]) for r in csv.DictReader(f)
        }
    for name, dur in manifest.items():
        stem = os.path.splitext(name)[0]
        pieces = [r for r in rows if r["ID"].startswith(stem + "_")]
        assert len(pieces) == int(dur // 5.0)
        assert abs(sum(float(r["duration"]) for r in pieces) - dur) < 2e-3
        for r in pieces:
            assert 5.0 <= float(r["duration"]) < 10.0
            assert os.path.dirname(r["wav"]) == str(csv_folder / "noise_audio")
    # chunk 1 of a file is the original's samples 5 s .. 10 s
    first = sorted(manifest)[0]
    stem = os.path.splitext(first)[0]
    chunk = next(r for r in rows if r["ID"] == f"{stem}_0001")
    got = load_audio(chunk["wav"])
    ref = load_audio(folder / first)[80000:160000]
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-4)
    assert sorted(os.listdir(folder)) == before  # the folder is untouched


def test_rir_csv_points_at_the_originals(shared_data, csv_folder):
    rows = _read_csv(csv_folder / "rir.csv")
    files = list_audio_files(shared_data / "rir")
    assert [r["wav"] for r in rows] == files
    for r, path in zip(rows, files):
        info = sf.info(path)
        assert abs(float(r["duration"]) - info.frames / info.samplerate) < 1e-3
        assert r["wav_format"] == "wav"


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        make_noise_csv(tmp_path / "nope", tmp_path / "n.csv")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no audio files"):
        make_rir_csv(tmp_path / "empty", tmp_path / "r.csv")
    with pytest.raises(ValueError, match="noise_prob"):
        FolderAugment(noise_prob=1.5)


def _measured_snr(clean, noisy):
    """SNR of ``noisy`` against ``clean``: project out the speech (the
    output holds a scaled copy of it), the rest is the noise."""
    x, y = clean.double().numpy(), noisy.double().numpy()
    a = (y @ x) / (x @ x)
    n = y - a * x
    return 10 * np.log10((a * a * (x @ x)) / (n @ n))


def test_noise_snr_in_range(csv_folder, speech):
    torch.manual_seed(0)
    aug = FolderAugment(
        noise_csv=str(csv_folder / "noise.csv"), snr_low=0, snr_high=15
    )
    noisy, lens = aug(speech, torch.ones(len(speech)))
    assert noisy.shape == speech.shape and torch.isfinite(noisy).all()
    assert torch.equal(lens, torch.ones(len(speech)))
    snrs = [_measured_snr(c, y) for c, y in zip(speech, noisy)]
    assert min(snrs) > -0.25 and max(snrs) < 15.25, snrs
    assert max(snrs) - min(snrs) > 2  # drawn at random, not fixed
    fixed = FolderAugment(
        noise_csv=str(csv_folder / "noise.csv"), snr_low=5, snr_high=5
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


def test_reverb_is_convolution_with_one_rir(shared_data, csv_folder, speech):
    torch.manual_seed(0)
    aug = FolderAugment(rir_csv=str(csv_folder / "rir.csv"), reverb_prob=1.0)
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


def test_probabilities_padding_and_both(csv_folder, speech):
    x = speech[:6]
    none = FolderAugment(
        noise_csv=str(csv_folder / "noise.csv"),
        rir_csv=str(csv_folder / "rir.csv"),
        noise_prob=0.0,
        reverb_prob=0.0,
    )
    y, _ = none(x)
    assert torch.equal(y, x) and y is not x
    torch.manual_seed(1)
    half = FolderAugment(
        noise_csv=str(csv_folder / "noise.csv"), noise_prob=0.5
    )
    changed = []
    for _ in range(4):
        y, _ = half(x)
        changed += [not torch.equal(a, b) for a, b in zip(x, y)]
    assert 0 < sum(changed) < len(changed)
    both = FolderAugment(
        noise_csv=str(csv_folder / "noise.csv"),
        rir_csv=str(csv_folder / "rir.csv"),
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
    csv_folder: {tmp_path / "aug"}
    snr_low: 0
    snr_high: 15
    reverb_prob: 0.5
"""
    aug = load_hyperpyyaml(yaml)["augment"]
    assert os.path.isfile(tmp_path / "aug" / "noise.csv")
    assert os.path.isfile(tmp_path / "aug" / "rir.csv")
    y, _ = aug(speech[:2], torch.ones(2))
    assert y.shape == (2, 48000) and torch.isfinite(y).all()


def test_pickles_after_use(csv_folder, speech):
    """Spawned DataLoader workers pickle the module after it was used."""
    import pickle

    aug = FolderAugment(
        noise_csv=str(csv_folder / "noise.csv"),
        rir_csv=str(csv_folder / "rir.csv"),
        reverb_prob=1.0,
    )
    aug(speech[:2])
    assert hasattr(aug.add_noise, "data_loader")
    copy = pickle.loads(pickle.dumps(aug))
    assert not hasattr(copy.add_noise, "data_loader")
    y, _ = copy(speech[:2])
    assert y.shape == (2, 48000) and torch.isfinite(y).all()
    assert not torch.equal(y, speech[:2])


def test_reproducible_from_torch_seed(csv_folder, speech):
    """In one process the output follows torch's seed, noise order too
    (each DataLoader worker has its own torch seed, hence its own order)."""
    outs, seeds = [], []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        aug = FolderAugment(
            noise_csv=str(csv_folder / "noise.csv"),
            rir_csv=str(csv_folder / "rir.csv"),
            reverb_prob=0.5,
        )
        outs.append(aug(speech[:4])[0])
        seeds.append(aug.add_noise.data_loader.sampler.seed)
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])
    assert seeds == [1, 1, 2]


def test_csvs_work_with_stock_speechbrain_augmenter(
    shared_data, tmp_path, speech
):
    """The second YAML of the module docstring: SpeechBrain's own classes
    read our CSVs."""
    from hyperpyyaml import load_hyperpyyaml

    yaml = f"""
noise_csv: !apply:dampit.dataio.augment.make_noise_csv
    folder: {shared_data / "noise"}
    csv_path: {tmp_path / "noise.csv"}
rir_csv: !apply:dampit.dataio.augment.make_rir_csv
    folder: {shared_data / "rir"}
    csv_path: {tmp_path / "rir.csv"}
add_noise: !new:speechbrain.augment.time_domain.AddNoise
    csv_file: !ref <noise_csv>
    snr_low: 10
    snr_high: 10
    pad_noise: True
add_reverb: !new:speechbrain.augment.time_domain.AddReverb
    csv_file: !ref <rir_csv>
augmenter: !new:speechbrain.augment.augmenter.Augmenter
    augmentations: [!ref <add_reverb>, !ref <add_noise>]
"""
    hp = load_hyperpyyaml(yaml)
    x = speech[:3]
    y = hp["add_noise"](x, torch.ones(3))
    for c, n in zip(x, y):
        assert abs(_measured_snr(c, n) - 10.0) < 0.25
    y, lens = hp["augmenter"](x, torch.ones(3))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.equal(lens, torch.ones(3))
