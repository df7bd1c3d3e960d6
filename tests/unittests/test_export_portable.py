"""TorchScript and ONNX exports of the waveform -> embedding pipeline.

The exported programs are compared with the PyTorch model they came from
(``encode_batch`` of the loaded model folder) at two different lengths,
one file at a time and as a padded batch, so the time axis is shown to be
variable. The model has random batch-norm statistics, so eval-mode batch
norm is exercised.
"""

import importlib.util
import pathlib

import numpy as np
import pytest
import torch

from dampit.inference.api import load_model
from dampit.inference.extract import pad_batch
from dampit.inference.portable import (
    EmbeddingPipeline,
    export_onnx,
    export_torchscript,
)

_spec = importlib.util.spec_from_file_location(
    "model_folder", pathlib.Path(__file__).parents[1] / "model_folder.py"
)
model_folder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(model_folder)

LENGTHS = (23456, 9001, 16000)


@pytest.fixture(scope="module", params=["spectrogram", "fbank"])
def model(tmp_path_factory, request):
    """The paper's pipeline, and the mini recipe's (fbank, stats pooling)."""
    folder = model_folder.write_demo_model(
        tmp_path_factory.mktemp("demo"), emb_dim=24, features=request.param
    )
    return load_model(folder)  # random batch-norm statistics


@pytest.fixture(scope="module")
def waves():
    gen = torch.Generator().manual_seed(2)
    return [0.1 * torch.randn(n, generator=gen) for n in LENGTHS]


def reference(model, waves):
    """encode_batch one file at a time: [N, D]."""
    with torch.no_grad():
        return torch.cat(
            [model.encode_batch(w[None])[:, 0] for w in waves]
        ).numpy()


def padded(waves):
    return pad_batch(waves, hop_length=160)


def test_pipeline_is_encode_batch(model, waves):
    """The export pipeline (its spectrogram computed on the whole batch)
    gives encode_batch's numbers up to float rounding."""
    pipe = EmbeddingPipeline.from_model(model)
    batch, lens = padded(waves)
    with torch.no_grad():
        want = model.encode_batch(batch, lens)[:, 0].numpy()
        tol = 1e-5 * max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(pipe(batch, lens).numpy(), want, 0, tol)


def test_torchscript_variable_length(model, waves, tmp_path):
    path = tmp_path / "m.ts"
    export_torchscript(model, path)
    ts = torch.jit.load(str(path))
    want = reference(model, waves)
    scale = np.abs(want).max()
    with torch.no_grad():
        for k, w in enumerate(waves[:2]):  # two different lengths
            got = ts(w[None], torch.ones(1)).numpy()
            assert np.abs(got[0] - want[k]).max() <= 1e-5 * max(1, scale)
        batch, lens = padded(waves)
        got = ts(batch, lens).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * max(1, scale)


def test_onnx_variable_length(model, waves, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "m.onnx"
    export_onnx(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(wavs, lens):
        feed = {"wavs": wavs.numpy(), "lengths": lens.numpy()}
        return sess.run(None, feed)[0]

    want = reference(model, waves)
    tol = 5e-5 * max(1.0, float(np.abs(want).max()))
    for k, w in enumerate(waves[:2]):  # two different lengths
        got = run(w[None], torch.ones(1))
        assert np.abs(got[0] - want[k]).max() <= tol
    got = run(*padded(waves))
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= tol
