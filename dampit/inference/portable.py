"""TorchScript and ONNX programs of the whole pipeline: waveform -> embedding.

:class:`EmbeddingPipeline` chains a loaded model's ``compute_features``,
``mean_var_norm`` and ``embedding_model`` as ``encode_batch`` does and
returns ``[B, D]``. :func:`export_torchscript` traces it and
:func:`export_onnx` exports it with ``torch.onnx.export(dynamo=True)`` (the
STFT becomes ONNX's ``STFT``, opset 18); both keep the batch and time axes
variable and need neither dampit nor SpeechBrain to run::

    emb = torch.jit.load("model/embedding_model.ts")(wavs, lengths)
    sess = onnxruntime.InferenceSession("model/embedding_model.onnx")
    emb = sess.run(None, {"wavs": wavs, "lengths": lengths})[0]

with ``wavs`` ``[B, N]`` float32 (N >= 400 for ONNX) and ``lengths``
``[B]`` relative lengths (:func:`dampit.inference.extract.pad_batch` with
the features' ``hop_length``; ones for a single file).
The ONNX part needs the optional ``onnx`` extra (onnx, onnxscript,
onnxruntime).
"""

import contextlib
import copy
import io
import logging
import os
import warnings

import torch

from dampit.inference.extract import pad_batch
from dampit.utils.atomic import atomic_write_bytes

__all__ = ["EmbeddingPipeline", "export_onnx", "export_torchscript"]

#: Shortest and longest inputs of the ONNX graph, in samples.
MIN_SAMPLES, MAX_SAMPLES = 400, 16000 * 3600


class EmbeddingPipeline(torch.nn.Module):
    """Features -> normalisation -> network, as ``encode_batch``.

    Arguments
    ---------
    compute_features, mean_var_norm, embedding_model : torch.nn.Module
        A loaded model's modules.

    Example
    -------
    >>> from dampit.lobes.features import CropNormalization, Features
    >>> from dampit.lobes.resnet import SEResNet
    >>> pipe = EmbeddingPipeline(Features(), CropNormalization(),
    ...                          SEResNet(depth=18, base_width=4, emb_dim=8))
    >>> pipe.eval()(torch.randn(2, 4000), torch.ones(2)).shape
    torch.Size([2, 8])
    """

    def __init__(self, compute_features, mean_var_norm, embedding_model):
        super().__init__()
        self.compute_features = compute_features
        self.mean_var_norm = mean_var_norm
        self.embedding_model = embedding_model

    @classmethod
    def from_model(cls, model):
        """A CPU copy of a loaded ``EncoderClassifier``'s pipeline.

        Arguments
        ---------
        model : speechbrain.inference.classifiers.EncoderClassifier
            A loaded model (left untouched).

        Returns
        -------
        EmbeddingPipeline
            In eval mode.
        """
        mods = copy.deepcopy(model.mods).cpu()
        pipe = cls(
            mods.compute_features, mods.mean_var_norm, mods.embedding_model
        )
        return pipe.eval()

    def forward(self, wavs, lengths):
        """``[B, N]`` waveforms, ``[B]`` relative lengths -> ``[B, D]``."""
        feats = self.compute_features(wavs)
        feats = self.mean_var_norm(feats, lengths)
        emb = self.embedding_model(feats, lengths)
        return emb.reshape(emb.shape[0], -1)


def _pipeline_and_inputs(model):
    """The export pipeline of a loaded model and a padded batch of two
    lengths."""
    pipe = EmbeddingPipeline.from_model(model)
    feats = pipe.compute_features
    rate = int(getattr(feats, "sample_rate", 16000))
    gen = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(int(s * rate), generator=gen) for s in (1, 0.6)]
    hop = getattr(feats, "hop_length", None)
    return (pipe, *pad_batch(wavs, hop if isinstance(hop, int) else None))


@torch.no_grad()
def export_torchscript(model, path):
    """Trace the embedding pipeline of ``model``; save it atomically (a
    failed write, such as a full disk, raises OSError naming ``path``).

    Arguments
    ---------
    model : EncoderClassifier
        A loaded model (left untouched).
    path : str or os.PathLike
        Output file (``torch.jit.save`` format).

    Returns
    -------
    torch.jit.ScriptModule
        The traced pipeline.
    """
    pipe, wavs, lens = _pipeline_and_inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(pipe, (wavs, lens), check_trace=False)
    data = io.BytesIO()  # torch's file writer aborts on a full disk
    torch.jit.save(traced, data)
    atomic_write_bytes(path, data.getbuffer())
    return traced


@torch.no_grad()
def export_onnx(model, path, opset=18):
    """Export the embedding pipeline of ``model`` to ONNX, atomically (a
    failed write, such as a full disk, raises OSError naming ``path``).

    Arguments
    ---------
    model : EncoderClassifier
        A loaded model (left untouched).
    path : str or os.PathLike
        Output ``.onnx`` file (weights inside).
    opset : int
        ONNX opset (``STFT`` needs 17 or later).

    Returns
    -------
    str
        ``path``.
    """
    pipe, wavs, lens = _pipeline_and_inputs(model)
    batch = torch.export.Dim("batch", max=4096)
    time = torch.export.Dim("time", min=MIN_SAMPLES, max=MAX_SAMPLES)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:  # the exporter and onnxscript print progress to stdout
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
            )
    finally:
        quiet.setLevel(level)
    # What program.save writes (the weights inside), written by dampit.
    atomic_write_bytes(path, program.model_proto.SerializeToString())
    return os.fspath(path)
