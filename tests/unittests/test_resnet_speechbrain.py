"""SEResNet inside SpeechBrain's own inference class, on real speech.

``speechbrain.inference.EncoderClassifier`` is built from modules in
memory (no download): SpeechBrain's Fbank and sentence normalisation,
dampit's SEResNet as ``embedding_model`` and LinearClassifier as
``classifier``. A zero-padded batch of two real recordings must give the
embeddings of the recordings one by one.
"""

import pytest
import torch
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.lobes.features import Fbank
from speechbrain.processing.features import InputNormalization

from dampit.dataio.audio import load_audio
from dampit.lobes.resnet import LinearClassifier, SEResNet


@pytest.fixture
def encoder():
    modules = {
        "compute_features": Fbank(n_mels=40),
        "mean_var_norm": InputNormalization(
            norm_type="sentence", std_norm=False
        ),
        "embedding_model": SEResNet(
            depth=50, base_width=8, emb_dim=32, pooling="stats", n_freq=40
        ),
        "classifier": LinearClassifier(32, 5),
    }
    return EncoderClassifier(
        modules=modules, hparams={}, run_opts={"device": "cpu"}
    )


def test_encode_batch_padded_equals_one_by_one(encoder, shared_data):
    folder = shared_data / "dspspeech"
    lines = (folder / "manifest.csv").read_text().splitlines()[1:]
    paths = [folder / line.split(",")[0] for line in (lines[0], lines[45])]
    hop = 160  # Fbank's hop: whole frames keep the frame counts aligned
    wavs = [load_audio(p)[: 16000 // hop * hop] for p in paths]
    wavs[1] = wavs[1][: 12000 // hop * hop]
    assert not encoder.mods.embedding_model.training  # Pretrained -> eval
    batch = torch.zeros(2, wavs[0].numel())
    batch[0] = wavs[0]
    batch[1, : wavs[1].numel()] = wavs[1]
    lens = torch.tensor([1.0, wavs[1].numel() / wavs[0].numel()])
    with torch.no_grad():
        together = encoder.encode_batch(batch, lens)
        alone = torch.cat([encoder.encode_batch(w[None]) for w in wavs])
        unmasked = encoder.encode_batch(batch)
    assert together.shape == (2, 1, 32)
    scale = alone.abs().max()
    assert (together - alone).abs().max() < 1e-4 * scale
    assert (unmasked[1] - alone[1]).abs().max() > 1e-3 * scale
    logits = encoder.mods.classifier(together)
    assert logits.shape == (2, 1, 5)
