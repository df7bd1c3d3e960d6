"""TorchScript export of the whole embedding pipeline (waveform -> embedding).

:class:`EmbeddingPipeline` chains a loaded model's ``compute_features``,
``mean_var_norm`` and ``embedding_model`` exactly as
``EncoderClassifier.encode_batch`` does, and returns ``[B, D]``.
:func:`export_torchscript` traces it (``torch.jit.trace``) on a padded batch
of two lengths; the trace keeps the time and batch sizes symbolic (the
spectrogram, the length masks and the pooling are written with tensor
operations, and ``SEResNet`` switches to its branch-free path while
tracing), so the saved file takes any number of samples::

    ts = torch.jit.load("model/embedding_model.ts")
    emb = ts(wavs, lengths)           # [B, N] float32, [B] relative lengths

The saved program needs only PyTorch (no dampit, no SpeechBrain). PyTorch
2.11 marks TorchScript as deprecated in favour of ``torch.export`` (it
still works); the ONNX export (:mod:`dampit.inference.onnx_export`) is built
on ``torch.export``.
``torch.jit.script`` does not apply: the modules validate their inputs with
Python-only code. Use :func:`dampit.inference.api.frame_relative_lengths`
for the lengths of a padded batch (ones for a single file).
"""

import os
import warnings

import torch

from dampit.lobes.features import Features, Spectrogram
from dampit.utils.atomic import atomic_path

__all__ = [
    "EmbeddingPipeline",
    "WholeBatchSpectrogram",
    "example_inputs",
    "export_torchscript",
]


class EmbeddingPipeline(torch.nn.Module):
    """Features -> normalisation -> network, as ``encode_batch``.

    Arguments
    ---------
    compute_features : torch.nn.Module
        ``wavs [B, N] -> feats [B, T, F]``.
    mean_var_norm : torch.nn.Module
        ``(feats, lengths) -> feats``.
    embedding_model : torch.nn.Module
        ``(feats, lengths) -> [B, 1, D]``.

    Example
    -------
    >>> from dampit.lobes.features import Spectrogram, CropNormalization
    >>> from dampit.lobes.resnet import SEResNet
    >>> pipe = EmbeddingPipeline(Spectrogram(), CropNormalization(),
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
        """Build from a loaded ``EncoderClassifier`` (its ``mods``).

        Arguments
        ---------
        model : speechbrain.inference.classifiers.EncoderClassifier
            A loaded model.

        Returns
        -------
        EmbeddingPipeline
            In eval mode, on the CPU (a copy: the model is untouched).
        """
        import copy

        mods = model.mods
        pipe = cls(
            copy.deepcopy(mods.compute_features).cpu(),
            copy.deepcopy(mods.mean_var_norm).cpu(),
            copy.deepcopy(mods.embedding_model).cpu(),
        )
        return pipe.eval()

    def for_export(self):
        """Make the features loop-free for tracing and ``torch.export``.

        ``dampit.lobes.features.Spectrogram`` transforms a CPU batch in
        chunks of ``cpu_chunk`` rows: a Python loop over the batch size,
        which a trace freezes and which the ONNX exporter cannot convert
        (it asks for the size of the complex STFT). For export it is
        replaced by :class:`WholeBatchSpectrogram`, the same computation on
        the whole batch (same numbers up to float rounding).

        Returns
        -------
        EmbeddingPipeline
            ``self``.
        """
        feats = self.compute_features
        if isinstance(feats, Features) and feats.kind == "spectrogram":
            feats = feats.extractor  # the recipe's wrapper (features: ...)
        if isinstance(feats, Spectrogram) and hasattr(feats, "_magnitude"):
            self.compute_features = WholeBatchSpectrogram(feats)
        return self

    def forward(self, wavs, lengths):
        """Embed a padded batch.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, N]`` waveforms.
        lengths : torch.Tensor
            ``[B]`` relative lengths.

        Returns
        -------
        torch.Tensor
            ``[B, D]`` embeddings.
        """
        feats = self.compute_features(wavs)
        feats = self.mean_var_norm(feats, lengths)
        emb = self.embedding_model(feats, lengths)
        return emb.reshape(emb.shape[0], -1)


class WholeBatchSpectrogram(torch.nn.Module):
    """A ``Spectrogram`` computed on the whole batch at once (for export).

    Arguments
    ---------
    spectrogram : dampit.lobes.features.Spectrogram
        The module whose settings and window are used.

    Example
    -------
    >>> spec = Spectrogram()
    >>> x = torch.randn(3, 8000)
    >>> bool(torch.allclose(WholeBatchSpectrogram(spec)(x), spec(x),
    ...                     atol=1e-5))
    True
    """

    def __init__(self, spectrogram):
        super().__init__()
        self.spec = spectrogram
        self.sample_rate = spectrogram.sample_rate
        self.hop_length = spectrogram.hop_length
        self.n_fft = spectrogram.n_fft
        self.center = spectrogram.center

    def forward(self, wavs):
        """Features ``[B, T, F]`` of waveforms ``[B, N]``.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, N]`` waveforms.

        Returns
        -------
        torch.Tensor
            ``[B, T, n_fft // 2 + 1]``.
        """
        spec = self.spec
        x = wavs.float()
        if spec.center:
            pad = spec.n_fft // 2
            x = torch.nn.functional.pad(
                x.unsqueeze(1), (pad, pad), mode=spec.pad_mode
            ).squeeze(1)
        window = spec.window.to(device=x.device, dtype=x.dtype)
        return spec._magnitude(x, window).transpose(1, 2)


def example_inputs(sample_rate=16000, hop_length=160, seconds=(1.0, 0.6)):
    """A padded batch of two lengths and its frame-exact relative lengths.

    Arguments
    ---------
    sample_rate : int
        Sample rate.
    hop_length : int
        STFT hop (for the frame-exact lengths).
    seconds : tuple of float
        Durations of the items.

    Returns
    -------
    wavs : torch.Tensor
        ``[B, N]``.
    lengths : torch.Tensor
        ``[B]``.

    Example
    -------
    >>> w, l = example_inputs()
    >>> w.shape, [round(x, 4) for x in l.tolist()]
    (torch.Size([2, 16000]), [1.0, 0.604])
    """
    from dampit.inference.api import frame_relative_lengths
    from dampit.inference.extract import pad_batch

    gen = torch.Generator().manual_seed(0)
    n = [int(s * sample_rate) for s in seconds]
    wavs = [0.1 * torch.randn(k, generator=gen) for k in n]
    batch, _ = pad_batch(wavs)
    return batch, frame_relative_lengths(n, hop_length)


@torch.no_grad()
def export_torchscript(model, path):
    """Trace the embedding pipeline of ``model`` and save it atomically.

    Arguments
    ---------
    model : speechbrain.inference.classifiers.EncoderClassifier or
        EmbeddingPipeline
        A loaded model (or a pipeline).
    path : str or os.PathLike
        Output file (``torch.jit.save`` format).

    Returns
    -------
    torch.jit.ScriptModule
        The traced pipeline.

    Example
    -------
    >>> import tempfile
    >>> from dampit.lobes.features import Spectrogram, CropNormalization
    >>> from dampit.lobes.resnet import SEResNet
    >>> pipe = EmbeddingPipeline(Spectrogram(), CropNormalization(),
    ...                          SEResNet(depth=18, base_width=4, emb_dim=8))
    >>> p = os.path.join(tempfile.mkdtemp(), "m.ts")
    >>> ts = export_torchscript(pipe.eval(), p)
    >>> w = torch.randn(1, 12345)
    >>> bool(torch.allclose(ts(w, torch.ones(1)), pipe(w, torch.ones(1)),
    ...                     atol=1e-5))
    True
    """
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(pipe, (wavs, lens), check_trace=False)
        with atomic_path(os.fspath(path)) as tmp:
            torch.jit.save(traced, tmp)
    return traced
