"""Bad audio, bad lists, degenerate batches: clear errors or documented
handling, never NaN embeddings or a silently wrong EER.

Covered here: ``dampit.dataio.audio.load_audio`` on every kind of bad
file (built from a real dspspeech recording), the embedding path (the
recipe's features, normalisation and a thin SEResNet through
``embed_utterances``, as verify.py calls it) on edge-case audio, the
recipe's data pipeline on a bad manifest and on 8 / 44.1 kHz files, and
the losses in half precision and under AMP on degenerate batches.

Covered elsewhere, not repeated: corrupt / empty / duplicate files in
``prepare_folder`` and ``prepare_voxceleb`` (test_prepare_folder.py,
test_prepare_voxceleb.py), malformed and unknown-ID trial lists in
``read_trials`` (test_trials.py) and in embedding stores
(test_scoring.py), NaN / inf scores and one-class labels in the EER and
minDCF (test_error_rates.py), NaN embeddings in stores and scoring
(test_scoring.py), bad files, arguments, output folders (read-only,
full), trial lists, model folders and a 200,000-trial list through
``dampit-embed`` / ``dampit-verify`` (test_cli.py, test_cli_errors.py,
test_cli_memory.py), and single-speaker, K = 1, identical, zero,
tiny and fp16-max batches in float32 and fp16 forward passes
(test_losses.py).
"""

import csv
import importlib.util
import itertools
import os
import pathlib
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import signal

from dampit.dataio.audio import AudioError, load_audio
from dampit.inference.extract import embed_utterances
from dampit.lobes.features import CropNormalization, Spectrogram
from dampit.lobes.resnet import SEResNet
from dampit.losses import (
    AngularLoss,
    NPairLoss,
    SoftmaxLoss,
    TripletLoss,
    paper_multi_metric_loss,
)

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def speech(shared_data):
    """(16 kHz float64 waveform, path) of a real dspspeech recording."""
    root = shared_data / "dspspeech"
    with open(root / "manifest.csv", newline="") as f:
        row = next(csv.DictReader(f))
    path = root / row["path"]
    wav, sr = sf.read(str(path))
    assert sr == 16000 and wav.ndim == 1
    return wav, path


def _write(path, data, sr=16000, subtype="FLOAT"):
    sf.write(str(path), data, sr, subtype=subtype)
    return path


# ------------------------------------------------------------ load_audio


def _bad_files(folder, speech):
    """name -> (path, expected message fragment)."""
    wav, path = speech
    raw = pathlib.Path(path).read_bytes()
    text = folder / "notes.wav"
    text.write_text("these are meeting notes, not audio\n" * 20)
    garbled = folder / "garbled.wav"
    garbled.write_bytes(b"\x00" * 12 + raw[12:])  # RIFF/WAVE tags wiped
    noise = folder / "random.wav"
    noise.write_bytes(np.random.default_rng(0).bytes(4000))
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    header_only = folder / "header_only.wav"
    _write(header_only, np.zeros(0))
    nan = wav.astype(np.float32).copy()
    nan[1000] = np.nan
    pinf, ninf = wav.copy(), wav.copy()
    pinf[5] = np.inf
    ninf[-1] = -np.inf
    return {
        "non_audio_text": (text, "cannot read audio file"),
        "garbled_header": (garbled, "cannot read audio file"),
        "random_bytes": (noise, "cannot read audio file"),
        "zero_bytes": (empty, "empty (0 bytes)"),
        "header_no_samples": (header_only, "no samples"),
        "nan_sample": (_write(folder / "nan.wav", nan), "NaN or inf"),
        "pos_inf_sample": (_write(folder / "pinf.wav", pinf), "NaN or inf"),
        "neg_inf_sample": (_write(folder / "ninf.wav", ninf), "NaN or inf"),
        "all_zero": (_write(folder / "zero.wav", np.zeros(16000)), "silent"),
        "missing": (folder / "no_such_file.wav", "not found"),
    }


BAD_FILES = [
    "non_audio_text",
    "garbled_header",
    "random_bytes",
    "zero_bytes",
    "header_no_samples",
    "nan_sample",
    "pos_inf_sample",
    "neg_inf_sample",
    "all_zero",
    "missing",
]


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_is_an_audio_error_naming_it(case, speech, tmp_path):
    """Each bad file raises AudioError with its path and the reason."""
    path, reason = _bad_files(tmp_path, speech)[case]
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert str(path) in str(err.value)
    assert reason in str(err.value)


def test_clip_shorter_than_a_frame(speech, tmp_path):
    """Below min_samples: an error with the file and both counts."""
    wav, _ = speech
    path = _write(tmp_path / "short.wav", wav[5000:5100])
    with pytest.raises(AudioError) as err:
        load_audio(path, min_samples=320)
    assert str(path) in str(err.value)
    assert "100 samples" in str(err.value) and "320" in str(err.value)
    assert load_audio(path, min_samples=100).shape == (100,)


def test_truncated_file_reads_what_is_there(speech, tmp_path):
    """A file cut short (a killed copy) reads as its intact prefix."""
    wav, path = speech
    raw = pathlib.Path(path).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(raw[: len(raw) // 2])
    got = load_audio(cut).numpy()
    assert 0 < got.size < wav.size
    np.testing.assert_allclose(got, wav[: got.size], atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_other_rates_are_resampled_with_a_warning(rate, speech, tmp_path):
    """8 and 44.1 kHz copies of real speech (made with scipy) come back at
    16 kHz, the right length, matching scipy's own conversion."""
    wav, _ = speech
    g = np.gcd(rate, 16000)
    other = signal.resample_poly(wav, rate // g, 16000 // g)
    path = _write(tmp_path / f"at_{rate}.wav", other, sr=rate)
    with pytest.warns(UserWarning, match=f"sample rate {rate} Hz"):
        got = load_audio(path).numpy().astype(np.float64)
    want = signal.resample_poly(other, 16000 // g, rate // g)
    assert abs(got.size - round(other.size * 16000 / rate)) <= 1
    n = min(got.size, want.size)
    corr = np.corrcoef(got[:n], want[:n])[0, 1]
    assert corr > 0.995, corr
    if rate > 16000:  # nothing lost: the original itself comes back
        m = min(n, wav.size)
        assert np.corrcoef(got[:m], wav[:m])[0, 1] > 0.995


def test_stereo_is_the_channel_mean(speech, tmp_path):
    """Two channels (x, 0.5 x) are down-mixed to 0.75 x."""
    wav, _ = speech
    path = _write(tmp_path / "stereo.wav", np.stack([wav, 0.5 * wav], 1))
    got = load_audio(path).numpy()
    np.testing.assert_allclose(got, 0.75 * wav, atol=1e-6)


# ------------------------------------------------------ embedding path


def _embedder():
    """The recipe's feature chain and a thin SEResNet, in eval mode."""
    torch.manual_seed(0)
    feats, norm = Spectrogram(), CropNormalization()
    net = SEResNet(depth=18, base_width=4, emb_dim=16).eval()

    def embed_fn(wavs, lens):
        return net(norm(feats(wavs), lens), lens)

    return embed_fn


def test_edge_case_audio_gives_finite_embeddings(speech, tmp_path):
    """One-frame clips, clipping-level and very quiet audio, an impulse,
    DC offset, stereo and 44.1 kHz files: finite, non-zero embeddings,
    batched with normal speech."""
    wav = speech[0][8000:24000]  # 1 s keeps the test fast
    g = np.gcd(44100, 16000)
    impulse = np.zeros(16000)
    impulse[8000] = 1.0
    files = {
        "speech": _write(tmp_path / "speech.wav", wav),
        "one_frame": _write(tmp_path / "one_frame.wav", wav[:400]),
        "loud": _write(tmp_path / "loud.wav", 1e4 * wav),
        "quiet": _write(tmp_path / "quiet.wav", 1e-7 * wav),
        "impulse": _write(tmp_path / "impulse.wav", impulse),
        "dc": _write(tmp_path / "dc.wav", 0.5 + 1e-3 * wav),
        "stereo": _write(tmp_path / "st.wav", np.stack([wav, -wav[::-1]], 1)),
        "44k": _write(
            tmp_path / "44k.wav",
            signal.resample_poly(wav, 44100 // g, 16000 // g),
            sr=44100,
        ),
    }
    items = [(k, str(p)) for k, p in files.items()]
    with pytest.warns(UserWarning, match="44100 Hz"):
        ids, emb = embed_utterances(
            _embedder(), items, batch_size=4, progress=False
        )
    assert ids == list(files)
    assert np.isfinite(emb).all()
    assert (np.linalg.norm(emb, axis=1) > 0).all()


@pytest.mark.parametrize(
    "bad,reason",
    [
        ("silent", "silent"),
        ("short", "too short"),
        ("nan", "NaN or inf"),
        ("missing", "not found"),
    ],
)
def test_embed_utterances_names_the_bad_file(bad, reason, speech, tmp_path):
    """A bad file among good ones stops extraction with its path; no
    embedding is made up for it."""
    wav, path = speech
    nan = wav.copy()
    nan[100] = np.nan
    files = {
        "silent": _write(tmp_path / "silent.wav", np.zeros(4000)),
        "short": _write(tmp_path / "short.wav", wav[:399]),
        "nan": _write(tmp_path / "nan.wav", nan),
        "missing": tmp_path / "gone.wav",
    }
    items = [("good", str(path)), (bad, str(files[bad]))]
    with pytest.raises(AudioError) as err:
        embed_utterances(_embedder(), items, progress=False)
    assert str(files[bad]) in str(err.value) and reason in str(err.value)


# ------------------------------------------------- recipe data pipeline


@pytest.fixture(scope="module")
def recipe_train():
    """recipes/VoxCeleb/train.py as a module."""
    path = REPO / "recipes" / "VoxCeleb" / "train.py"
    spec = importlib.util.spec_from_file_location("_dampit_recipe_train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _manifest(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav", "start", "stop", "spk_id"])
        w.writerows(rows)
    return str(path)


def _datasets(recipe_train, tmp_path, train_rows, dev_rows, crop=16000, **hp):
    hparams = {
        "sample_rate": 16000,
        "crop_samples": crop,
        "data_folder": str(tmp_path),
        "save_folder": str(tmp_path / "save"),
        **hp,
    }
    os.makedirs(hparams["save_folder"], exist_ok=True)
    csvs = {
        "train": _manifest(tmp_path / "train.csv", train_rows),
        "dev": _manifest(tmp_path / "dev.csv", dev_rows),
    }
    return recipe_train.dataio_prep(hparams, csvs)


def test_manifest_row_with_missing_file(recipe_train, speech, tmp_path):
    """Loading the row fails with the missing path named."""
    wav, path = speech
    n = wav.size
    gone = tmp_path / "spk2" / "gone.wav"
    rows = [
        ["spk1/a", n / 16000, str(path), 0, n, "spk1"],
        ["spk2/gone", 2.0, str(gone), 0, 32000, "spk2"],
    ]
    train, dev, _ = _datasets(recipe_train, tmp_path, rows, rows[:1])
    assert train[0]["sig"].shape == (16000,)
    with pytest.raises(AudioError, match=str(gone)):
        train[1]
    dev[0]  # the good row still loads


def test_manifest_with_duplicate_ids(recipe_train, speech, tmp_path):
    """SpeechBrain refuses the CSV, naming the duplicate ID."""
    wav, path = speech
    n = wav.size
    rows = [
        ["spk1/a", n / 16000, str(path), 0, n, "spk1"],
        ["spk1/a", n / 16000, str(path), 0, n, "spk1"],
    ]
    with pytest.raises(ValueError, match="Duplicate id: spk1/a"):
        _datasets(recipe_train, tmp_path, rows, rows[:1])


@pytest.mark.parametrize("rate", [8000, 44100])
def test_training_crops_of_other_rates_are_full_length(
    rate, recipe_train, speech, tmp_path
):
    """A manifest row of an 8 or 44.1 kHz file (start/stop at its own
    rate) gives a training crop of crop_samples of *consecutive* speech
    at 16 kHz -- one stretch of the original recording, not a shorter
    piece repeated to length."""
    wav, _ = speech
    g = np.gcd(rate, 16000)
    other = signal.resample_poly(wav, rate // g, 16000 // g)
    path = _write(tmp_path / f"at_{rate}.wav", other, sr=rate)
    crop = 12000  # 0.75 s of the 2 s recording
    rows = [["spk1/a", other.size / rate, str(path), 0, other.size, "spk1"]]
    train, _, _ = _datasets(recipe_train, tmp_path, rows, rows, crop=crop)
    with pytest.warns(UserWarning, match=f"sample rate {rate} Hz"):
        sig = train[0]["sig"].numpy().astype(np.float64)
    assert sig.shape == (crop,)
    # Best-matching stretch of the 16 kHz original (normalised xcorr).
    ref = wav if rate > 16000 else signal.resample_poly(other, 2, 1)
    dots = signal.correlate(ref, sig, mode="valid")
    energy = np.convolve(ref**2, np.ones(crop), mode="valid")
    ncc = dots / np.sqrt(energy * (sig @ sig) + 1e-12)
    assert ncc.max() > 0.99, ncc.max()


def test_speed_speakers_are_new_speakers_at_the_new_pitch(
    recipe_train, tmp_path
):
    """speed_speakers [90, 110]: every utterance three times, under three
    speakers; a 1 kHz tone comes out at 1000 * speed / 100 Hz (closed
    form of resampling by 100 / speed), each crop crop_samples long."""
    t = np.arange(48000) / 16000
    path = _write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t))
    rows = [[f"s{k}/a", 3.0, str(path), 0, 48000, f"s{k}"] for k in (1, 2)]
    train, _, enc = _datasets(
        recipe_train, tmp_path, rows, rows, speed_speakers=[90, 110]
    )
    assert len(train) == 6 and len(enc) == 6
    for k, speed in itertools.product((1, 2), (100, 90, 110)):
        tag = "" if speed == 100 else f"@sp{speed}"
        item = train.data_ids.index(f"s{k}/a{tag}")
        sig = train[item]["sig"].numpy()
        assert sig.shape == (16000,)
        peak = np.argmax(np.abs(np.fft.rfft(sig * np.hanning(16000))))
        assert abs(peak - 10 * speed) <= 1, (speed, peak)  # 1 Hz bins
        assert enc.decode_ndim(train[item]["spk_id_encoded"][0]) == f"s{k}{tag}"


# ---------------------------------------------------- degenerate losses


def _pk(p, k):
    return torch.arange(p).repeat_interleave(k)


def _all_losses(dim, n_classes):
    return {
        "triplet": TripletLoss(),
        "triplet_cos": TripletLoss(distance="cosine", mining="semi_hard"),
        "npair": NPairLoss(),
        "angular": AngularLoss(),
        "angular_hinge": AngularLoss(form="hinge"),
        "softmax_aam": SoftmaxLoss(dim, n_classes, kind="aam"),
        "paper": paper_multi_metric_loss(dim, n_classes),
    }


@pytest.mark.parametrize("case", ["identical", "fp16_max", "fp16_max_signs"])
def test_losses_backward_in_half_precision_stay_finite(case):
    """Half-precision embeddings with gradients (the fp16 backward pass,
    which test_losses.py does not run): finite value and gradient."""
    torch.manual_seed(0)
    signs = torch.randint(0, 2, (8, 32)).float() * 2 - 1
    base = {
        "identical": torch.randn(1, 32).repeat(8, 1),
        "fp16_max": torch.full((8, 32), 6.5e4),
        "fp16_max_signs": 6.5e4 * signs,
    }[case]
    for name, loss in _all_losses(32, 4).items():
        emb = base.half().requires_grad_()
        value = loss(emb, _pk(4, 2))
        assert torch.isfinite(value), (name, value)
        value.backward()
        assert torch.isfinite(emb.grad).all(), name


@pytest.mark.parametrize("bias", [0.0, 6e-8], ids=["zeros", "fp16_subnormal"])
def test_amp_step_on_zero_embeddings_keeps_weights_finite(bias):
    """Zero (or subnormal) fp16 embeddings under autocast, as a collapsed
    network would give: every loss is finite, and an AMP step with a
    GradScaler leaves finite weights. (The gradient of a normalisation at
    a zero vector is 1 / eps, which fp16 cannot always hold: the scaler
    then skips the step, as AMP does for any overflow.)"""
    torch.manual_seed(0)
    x, labels = torch.randn(8, 16), _pk(4, 2)
    for name, loss in _all_losses(32, 4).items():
        net = torch.nn.Linear(16, 32)
        with torch.no_grad():
            net.weight.zero_()
            net.bias.fill_(bias)
        params = list(net.parameters()) + list(loss.parameters())
        opt = torch.optim.SGD(params, lr=0.1)
        scaler = torch.amp.GradScaler("cpu")
        with torch.autocast("cpu", dtype=torch.float16):
            emb = net(x)
            assert emb.dtype == torch.float16
            value = loss(emb, labels)
        assert torch.isfinite(value), (name, value)
        scaler.scale(value).backward()
        scaler.step(opt)
        scaler.update()
        assert all(torch.isfinite(p).all() for p in params), name


@pytest.mark.parametrize("labels", [_pk(1, 8), _pk(8, 1)], ids=["P1", "K1"])
def test_paper_loss_on_unusable_batches_is_a_clear_error(labels):
    """One speaker, or K = 1: the recipe's loss refuses the batch by name
    (it would otherwise train on nothing) rather than return NaN."""
    loss = paper_multi_metric_loss(16, 8)
    with pytest.raises(ValueError, match="Loss: "):
        loss(torch.randn(8, 16), labels)
