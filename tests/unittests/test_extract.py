"""embed_utterances: batching, order, crops, streaming to a store."""

import numpy as np
import pytest
import soundfile as sf
import torch

from dampit.inference.extract import embed_utterances, pad_batch


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
    ids, one, _ = embed_utterances(
        _stats_embed, wav_files, batch_size=1, progress=False
    )
    _, many, _ = embed_utterances(
        _stats_embed, wav_files, batch_size=3, progress=False
    )
    assert ids == wav_files
    np.testing.assert_allclose(many, one, rtol=1e-5)
    lengths = [sf.info(p).frames for p in wav_files]
    assert many[:, 3].tolist() == lengths


def test_crops_are_evenly_spaced_and_fixed_length(wav_files):
    """Each crop has the requested length; short files are repeated."""
    _, _, crops = embed_utterances(
        _stats_embed,
        wav_files,
        n_crops=3,
        crop_samples=3000,
        full=False,
        progress=False,
    )
    assert crops.shape == (5, 3, 4)
    assert (crops[..., 3] == 3000).all()


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

    _, one, _ = embed_utterances(
        embed, wav_files, batch_size=1, progress=False, hop_length=160
    )
    _, many, _ = embed_utterances(
        embed, wav_files, batch_size=5, progress=False, hop_length=160
    )
    np.testing.assert_allclose(many, one, atol=1e-5, rtol=1e-4)
