"""embed_utterances: batching, order, bad files, padding;
embed_windows: windows of real speech against the model on each slice."""

import pathlib

import numpy as np
import pytest
import soundfile as sf
import torch

from dampit.inference.api import load_model
from dampit.inference.extract import (
    embed_utterances,
    embed_windows,
    pad_batch,
)

PRETRAINED = (
    pathlib.Path(__file__).resolve().parents[2] / "pretrained" / "dampit-so762"
)


def _stats_embed(wavs, lens):
    """A deterministic toy embedding that honours the lengths."""
    n = (lens * wavs.shape[1]).round().long()
    mask = torch.arange(wavs.shape[1])[None] < n[:, None]
    x = wavs * mask
    mean = x.sum(1) / n
    power = (x**2).sum(1) / n
    peak = x.abs().amax(1)
    return torch.stack([mean, power, peak, n.float()], 1)[:, None]


@pytest.fixture
def wav_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for k, n in enumerate([4000, 9000, 1600, 12000, 5000]):
        p = tmp_path / f"u{k}.wav"
        sf.write(p, rng.standard_normal(n) * 0.1 * (k + 1), 16000)
        paths.append(str(p))
    return paths


def test_batched_equals_one_at_a_time(wav_files):
    """Any batch size gives the per-file result, in input order."""
    ids, one = embed_utterances(
        _stats_embed, wav_files, batch_size=1, progress=False
    )
    _, many = embed_utterances(
        _stats_embed, wav_files, batch_size=3, progress=False
    )
    assert ids == wav_files
    np.testing.assert_allclose(many, one, rtol=1e-5)
    lengths = [sf.info(p).frames for p in wav_files]
    assert many[:, 3].tolist() == lengths


def test_bad_file_is_named(wav_files, tmp_path):
    """A bad file mid-way raises an error naming it."""
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="bad.wav"):
        embed_utterances(
            _stats_embed, wav_files[:2] + [bad], batch_size=2, progress=False
        )


def test_duplicate_ids_rejected(wav_files):
    """The same utterance ID twice is an error naming it."""
    items = [("a", wav_files[0]), ("a", wav_files[1])]
    with pytest.raises(ValueError, match="duplicate"):
        embed_utterances(_stats_embed, items, progress=False)


def test_pad_batch_relative_lengths():
    """Relative lengths as SpeechBrain defines them."""
    batch, lens = pad_batch([torch.ones(3), torch.ones(6)])
    assert batch.shape == (2, 6) and lens.tolist() == [0.5, 1.0]
    assert batch[0, 3:].abs().sum() == 0


def test_frame_exact_lengths_make_padding_invisible(wav_files):
    """Features + CropNormalization + SEResNet (eval): padded batch equals
    one file at a time when relative lengths count frames."""
    from dampit.lobes.features import CropNormalization, Spectrogram
    from dampit.lobes.resnet import SEResNet

    feats, norm = Spectrogram(), CropNormalization()
    net = SEResNet(depth=18, base_width=8, emb_dim=32).eval()

    def embed(wavs, lens):
        return net(norm(feats(wavs), lens), lens)

    _, one = embed_utterances(
        embed, wav_files, batch_size=1, progress=False, hop_length=160
    )
    _, many = embed_utterances(
        embed, wav_files, batch_size=5, progress=False, hop_length=160
    )
    np.testing.assert_allclose(many, one, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def so762_model():
    """The shipped model (real weights, real features)."""
    return load_model(PRETRAINED)


def test_window_embeddings_equal_their_slices(shared_data, so762_model):
    """Windows of 1.5 s every 0.5 s of a real 4.343 s file, 16 a batch
    (the two cut short at the end padded among whole ones): each row is
    the model's embedding of that slice of the file alone."""
    path = shared_data / "so762" / "0005" / "000050003.flac"
    x = torch.from_numpy(sf.read(path, dtype="float32")[0])
    ids, segments, emb = so762_model.embed_windows(
        [("u", path)], 1.5, 0.5, progress=False
    )
    assert len(ids) == 8 and emb.shape == (8, 256)
    for uid, (file_id, start, end), row in zip(ids, segments, emb):
        assert file_id == "u" and uid == f"u@{start:.3f}-{end:.3f}"
        piece = x[round(start * 16000) : round(end * 16000)]
        with torch.no_grad():
            want = so762_model.encode_batch(piece[None])[0, 0].numpy()
        np.testing.assert_allclose(row, want, atol=1e-5, rtol=0)


def test_windows_of_several_files_any_batch_size(wav_files):
    """Windows of 0.2 s every 0.1 s of files of 4000, 9000, 1600, 12000
    and 5000 samples, in file and time order; any batch size gives the
    same rows (the toy embedding: mean, power, peak, length)."""
    ids, segments, one = embed_windows(
        _stats_embed, wav_files, 0.2, 0.1, batch_size=1, progress=False
    )
    _, _, many = embed_windows(
        _stats_embed, wav_files, 0.2, 0.1, batch_size=7, progress=False
    )
    np.testing.assert_allclose(many, one, rtol=1e-5)
    # a start every 1600 samples while 1600 (half a window) or more is left
    files = [f for f, _, _ in segments]
    assert files == [
        wav_files[k] for k, n in enumerate([2, 5, 1, 7, 3]) for _ in range(n)
    ]
    assert one[:2, 3].tolist() == [3200, 2400]  # 4000 samples: 0.2, 0.15 s
    assert one[7, 3] == 1600  # the 1600-sample file: one half window
