"""On-the-fly features and per-crop normalisation.

The paper's code feeds the network the 161-bin spectrogram
``log(1 + |STFT|)`` of librosa: 16 kHz audio, ``n_fft = 320`` (a 20 ms
periodic Hamming window), hop 160, centred frames padded with zeros
(librosa 0.11's ``pad_mode="constant"``). :class:`Spectrogram` is that,
with ``torch.stft`` on batches on any device; a 3 s crop (48000 samples)
gives ``1 + 48000 // 160 = 301`` frames. :class:`Features` chooses it or
SpeechBrain's ``Fbank`` by a plain value (``features: fbank``).
The network (``SEResNet``) copies ``[B, T, F]`` features to 3 channels
itself.

Authors
 * dampit contributors 2025
"""

import torch
from speechbrain.lobes.features import Fbank

from dampit.lobes.pooling import real_frames

__all__ = ["Spectrogram", "Features", "CropNormalization"]

WINDOWS = ("hamming", "hann")
#: The kinds of :class:`Features` and the modes of :class:`CropNormalization`.
FEATURE_KINDS = ("spectrogram", "fbank")
NORM_MODES = ("scalar", "freq", "none")


class Spectrogram(torch.nn.Module):
    """``log(1 + |STFT|)`` features ``[B, 1 + N // hop_length, n_fft//2+1]``.

    Arguments
    ---------
    sample_rate : int
        Sample rate of the input (read by the inference code).
    n_fft : int
        FFT size; ``n_fft // 2 + 1`` bins.
    win_length : int, optional
        Window length (default ``n_fft``).
    hop_length : int
        Hop in samples.
    window : str
        ``"hamming"`` (the paper) or ``"hann"``, periodic as librosa's.

    Example
    -------
    >>> Spectrogram()(torch.randn(2, 16000)).shape
    torch.Size([2, 101, 161])
    """

    def __init__(
        self,
        sample_rate=16000,
        n_fft=320,
        win_length=None,
        hop_length=160,
        window="hamming",
    ):
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        if window not in WINDOWS or not 0 < win_length <= n_fft:
            raise ValueError(
                f"Spectrogram: window={window!r} must be one of {WINDOWS} "
                f"and win_length={win_length} in (0, n_fft={n_fft}]"
            )
        if hop_length <= 0:
            raise ValueError(f"Spectrogram: hop_length={hop_length} <= 0")
        self.sample_rate, self.n_fft = sample_rate, n_fft
        self.win_length, self.hop_length = win_length, hop_length
        self.center, self.n_bins = True, n_fft // 2 + 1
        win = getattr(torch, f"{window}_window")(win_length)
        self.register_buffer("window", win, persistent=False)

    def forward(self, wavs):
        """Features of waveforms ``[B, N]`` (or ``[N]``), float32."""
        if wavs.dim() not in (1, 2):
            raise ValueError(
                f"Spectrogram: wavs must be [B, N] or [N], got {wavs.shape}"
            )
        # float32 even under autocast (half FFTs need powers of two)
        with torch.autocast(wavs.device.type, enabled=False):
            spec = torch.stft(
                wavs.float().reshape(-1, wavs.shape[-1]),
                self.n_fft,
                self.hop_length,
                self.win_length,
                self.window.float(),
                center=True,
                pad_mode="constant",
                return_complex=True,
            )
            return spec.abs().log1p().transpose(1, 2)


class Features(torch.nn.Module):
    """The recipe's feature extractor, chosen by a plain value.

    Arguments
    ---------
    kind : str
        ``"spectrogram"`` (:class:`Spectrogram`, ``n_bins`` must be
        ``n_fft // 2 + 1``) or ``"fbank"`` (SpeechBrain's ``Fbank`` with
        ``n_bins`` mel bands).
    n_bins : int
        Frequency bins the network sees.
    sample_rate, n_fft, win_length, hop_length, window
        As :class:`Spectrogram`, in samples (converted to ``Fbank``'s
        milliseconds; ``Fbank`` uses a Hamming window).

    Example
    -------
    >>> Features("fbank", n_bins=80)(torch.randn(1, 16000)).shape
    torch.Size([1, 101, 80])
    """

    def __init__(
        self,
        kind="spectrogram",
        n_bins=161,
        sample_rate=16000,
        n_fft=320,
        win_length=None,
        hop_length=160,
        window="hamming",
    ):
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        n_bins = int(n_bins)
        if kind == "spectrogram" and n_bins == n_fft // 2 + 1:
            self.extractor = Spectrogram(
                sample_rate, n_fft, win_length, hop_length, window
            )
        elif kind == "fbank" and 0 < n_bins <= n_fft // 2 + 1:
            self.extractor = Fbank(
                n_mels=n_bins,
                sample_rate=sample_rate,
                n_fft=n_fft,
                win_length=1000.0 * win_length / sample_rate,
                hop_length=1000.0 * hop_length / sample_rate,
            )
        else:
            raise ValueError(
                f"Features: kind={kind!r} must be 'spectrogram' (n_bins = "
                f"n_fft // 2 + 1) or 'fbank' (n_bins mel bands in (0, "
                f"n_fft // 2 + 1]); got n_bins={n_bins}, n_fft={n_fft}"
            )
        self.kind, self.n_bins, self.sample_rate = kind, n_bins, sample_rate
        self.n_fft, self.hop_length, self.center = n_fft, hop_length, True

    def forward(self, wavs):
        """Waveforms ``[B, N]`` -> features ``[B, T, n_bins]``."""
        return self.extractor(wavs)


class CropNormalization(torch.nn.Module):
    """Normalise each utterance's features over its real frames.

    Arguments
    ---------
    mode : str
        ``"scalar"``: one mean and standard deviation per utterance over
        its frames and bins (the original code); ``"freq"``: one per bin
        (SpeechBrain's sentence normalisation); ``"none"``: identity (the
        paper's text names no normalisation). The standard deviation is
        floored at 0.001 as in the code, so silent crops stay finite.

    Example
    -------
    >>> y = CropNormalization("scalar")(torch.randn(2, 50, 161) * 3 + 1)
    >>> bool(y[0].mean().abs() < 1e-5), round(y[0].std(False).item(), 4)
    (True, 1.0)
    """

    def __init__(self, mode="scalar"):
        super().__init__()
        if mode not in NORM_MODES:
            raise ValueError(
                f"CropNormalization: mode={mode!r} is not scalar, freq or none"
            )
        self.mode = mode

    def forward(self, feats, lengths=None):
        """Normalise ``feats`` ``[B, T, F]``; item ``b`` has
        ``round(lengths[b] * T)`` real frames (None: all are real); padded
        frames get the same statistics."""
        if self.mode == "none":
            return feats
        if feats.dim() != 3:
            raise ValueError(
                f"CropNormalization: feats must be [B, T, F], got {feats.shape}"
            )
        x = feats.float()
        B, T, _ = x.shape
        if lengths is None:
            lengths = torch.ones(B, device=x.device)
        lengths = torch.as_tensor(lengths, device=x.device).reshape(-1)
        if lengths.numel() != B:
            raise ValueError(
                f"CropNormalization: {lengths.numel()} lengths for {B} items"
            )
        n = real_frames(lengths, T)
        mask = torch.arange(T, device=x.device)[None, :] < n[:, None]
        mask = mask[..., None].expand_as(x).to(x.dtype)
        dims = (1, 2) if self.mode == "scalar" else (1,)
        count = mask.sum(dim=dims, keepdim=True)
        mean = (x * mask).sum(dim=dims, keepdim=True) / count
        var = ((x - mean) * mask).pow(2).sum(dim=dims, keepdim=True) / count
        return ((x - mean) / var.sqrt().clamp(min=1e-3)).to(feats.dtype)
