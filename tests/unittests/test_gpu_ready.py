"""The recipe's GPU-ready switches, on CPU.

The recipe's Brain applies ``channels_last`` from its hparams (a thin
SEResNet, ResNet-18 of base width 8, gives the same embeddings in either
layout). mini.yaml's debug run in tests/recipes/recipes.csv trains and
verifies with ``--precision=bf16 --eval_precision=bf16
--channels_last=True``. That bf16 autocast, channels_last and
torch.compile compute what float32 eager does is PyTorch's to test.
"""

import pathlib
import sys

import torch

from dampit.lobes.features import CropNormalization, Spectrogram
from dampit.lobes.resnet import SEResNet

REPO = pathlib.Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "VoxCeleb"


def _thin():
    torch.manual_seed(0)
    return SEResNet(depth=18, base_width=8, emb_dim=64, dropout=0.1)


def _brain(channels_last):
    """The recipe's MultiMetricBrain around the thin model (CPU)."""
    sys.path.insert(0, str(RECIPE))
    try:
        from train import MultiMetricBrain
    finally:
        sys.path.remove(str(RECIPE))
    modules = {
        "compute_features": Spectrogram(),
        "normalize": CropNormalization("scalar"),
        "embedding_model": _thin(),
    }
    brain = MultiMetricBrain(
        modules=modules,
        hparams={"channels_last": channels_last},
        run_opts={"device": "cpu"},
    )
    brain.modules.eval()
    return brain


def test_recipe_brain_channels_last_switch():
    plain, cl = _brain(False), _brain(True)
    w_plain = plain.modules.embedding_model.conv1.weight
    w_cl = cl.modules.embedding_model.conv1.weight
    assert w_cl.is_contiguous(memory_format=torch.channels_last)
    assert not w_cl.is_contiguous()
    assert w_plain.is_contiguous()
    gen = torch.Generator().manual_seed(2)
    wavs = 0.1 * torch.randn(2, 16000, generator=gen)
    lens = torch.tensor([1.0, 0.7])
    with torch.no_grad():
        ref = plain.compute_embeddings(wavs, lens)
        out = cl.compute_embeddings(wavs, lens)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
