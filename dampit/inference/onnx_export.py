"""ONNX export of the whole embedding pipeline, with variable time and batch.

:func:`export_onnx` exports :class:`~dampit.inference.torchscript.
EmbeddingPipeline` (features, normalisation, network) with PyTorch's
``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``):
the STFT becomes ONNX's ``STFT`` operator (opset 18), so the file maps
waveforms to embeddings on its own. PyTorch's older TorchScript-based
exporter cannot do this (it does not export complex STFT outputs). The
inputs are ``wavs`` ``[batch, time]`` float32 and ``lengths`` ``[batch]``
relative lengths; the output is ``embeddings`` ``[batch, D]``::

    import onnxruntime as ort
    sess = ort.InferenceSession("model/embedding_model.onnx")
    emb = sess.run(None, {"wavs": wavs, "lengths": lengths})[0]

:class:`OnnxEmbedder` wraps such a session. Needs the ``onnx`` extra
(``onnx``, ``onnxscript``, ``onnxruntime``).
"""

import contextlib
import io
import os
import warnings

import numpy as np
import torch

from dampit.inference.torchscript import EmbeddingPipeline, example_inputs
from dampit.utils.atomic import atomic_path

__all__ = ["OnnxEmbedder", "export_onnx"]

#: Shortest input accepted by the exported graph, in samples.
MIN_SAMPLES = 400
#: Longest input accepted by the exported graph: an hour at 16 kHz.
MAX_SAMPLES = 16000 * 3600


@torch.no_grad()
def export_onnx(model, path, opset=18):
    """Export the embedding pipeline of ``model`` to ONNX, atomically.

    Arguments
    ---------
    model : speechbrain.inference.classifiers.EncoderClassifier or
        EmbeddingPipeline
        A loaded model (or a pipeline).
    path : str or os.PathLike
        Output ``.onnx`` file (weights inside the file).
    opset : int
        ONNX opset (``STFT`` needs 17 or later).

    Returns
    -------
    str
        ``path``.
    """
    import logging

    if isinstance(model, EmbeddingPipeline):
        pipe = model.eval()
    else:
        pipe = EmbeddingPipeline.from_model(model)
    pipe.for_export()
    feats = pipe.compute_features
    wavs, lens = example_inputs(
        int(getattr(feats, "sample_rate", 16000)),
        int(getattr(feats, "hop_length", 160)),
    )
    batch = torch.export.Dim("batch", max=4096)
    time = torch.export.Dim("time", min=MIN_SAMPLES, max=MAX_SAMPLES)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        # The exporter and onnxscript's optimizer print progress to stdout.
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                pipe,
                (wavs, lens),
                input_names=["wavs", "lengths"],
                output_names=["embeddings"],
                dynamic_shapes={
                    "wavs": {0: batch, 1: time},
                    "lengths": {0: batch},
                },
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
        with (
            atomic_path(os.fspath(path)) as tmp,
            contextlib.redirect_stdout(io.StringIO()),
        ):
            program.save(tmp, external_data=False)
    finally:
        quiet.setLevel(level)
    return os.fspath(path)


class OnnxEmbedder:
    """Embed padded batches with an exported ONNX file (onnxruntime).

    Arguments
    ---------
    path : str or os.PathLike
        The ``.onnx`` file written by :func:`export_onnx`.
    providers : list of str, optional
        onnxruntime execution providers (default: CPU).
    """

    def __init__(self, path, providers=None):
        import onnxruntime as ort

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model not found: {path}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            path, opts, providers=providers or ["CPUExecutionProvider"]
        )

    def __call__(self, wavs, lengths=None):
        """Embed a padded batch.

        Arguments
        ---------
        wavs : array-like or torch.Tensor
            ``[B, N]`` float waveforms (``N >= 400``).
        lengths : array-like or torch.Tensor, optional
            ``[B]`` relative lengths (default: all ones).

        Returns
        -------
        numpy.ndarray
            ``[B, D]`` float32 embeddings.
        """
        if hasattr(wavs, "detach"):
            wavs = wavs.detach().cpu().numpy()
        wavs = np.ascontiguousarray(wavs, dtype=np.float32)
        if wavs.ndim == 1:
            wavs = wavs[None]
        if wavs.shape[1] < MIN_SAMPLES:
            raise ValueError(
                f"ONNX embedding model: {wavs.shape[1]} samples, at least "
                f"{MIN_SAMPLES} needed"
            )
        if lengths is None:
            lengths = np.ones(wavs.shape[0], dtype=np.float32)
        elif hasattr(lengths, "detach"):
            lengths = lengths.detach().cpu().numpy()
        lengths = np.ascontiguousarray(lengths, dtype=np.float32)
        out = self.session.run(None, {"wavs": wavs, "lengths": lengths})
        return out[0]
