"""On-the-fly spectrogram features and per-crop normalisation.

The paper (and its original code) feeds the network a 161-bin magnitude
spectrogram ``log(1 + |STFT|)`` computed with librosa: 16 kHz audio,
``n_fft = 320`` (a 20 ms Hamming window), hop 160 (10 ms). ``Spectrogram``
computes the same thing in torch, on batches and on any device, so features
are made on the fly during training instead of being stored.

Agreement with librosa 0.11 (checked by the tests within 1e-4):

- ``torch.hamming_window(320, periodic=True)`` is the same window as
  ``scipy.signal.get_window("hamming", 320, fftbins=True)``, which librosa
  uses;
- ``center=True`` pads ``n_fft // 2`` samples on both sides. torch.stft pads
  with ``"reflect"`` by default, librosa 0.11 with zeros
  (``pad_mode="constant"``); only the edge frames differ, and this module
  defaults to ``"constant"`` like librosa.

A 3 s crop (48000 samples) gives ``1 + 48000 // 160 = 301`` frames; the
original code's 300-frame crops are 47840 samples.

``CropNormalization`` normalises each utterance over its valid frames, with
one scalar mean and standard deviation (the original code) or one per
frequency bin. The network (``dampit.lobes.resnet.SEResNet``) takes the
``[B, T, F]`` features and copies them to 3 channels itself; ``to_image``
does that copy for other image networks.

SpeechBrain's filter banks can replace the spectrogram; the network accepts
``[B, T, F]`` with any ``F``. ``Features`` builds either from the same
keys, so that a recipe switches with one plain value (``features: fbank``)::

    compute_features: !new:dampit.lobes.features.Features
        kind: fbank
        n_bins: 80
"""

import torch

__all__ = ["Spectrogram", "CropNormalization", "Features", "to_image"]

_WINDOWS = {
    "hamming": torch.hamming_window,
    "hann": torch.hann_window,
    "blackman": torch.blackman_window,
}


class Spectrogram(torch.nn.Module):
    """Log-magnitude STFT spectrogram, ``log(1 + |STFT|)``, in torch.

    Arguments
    ---------
    sample_rate : int
        Sample rate of the input (kept for the record and for YAML
        symmetry with ``speechbrain.lobes.features.Fbank``).
    n_fft : int
        FFT size; ``n_fft // 2 + 1`` frequency bins (161 for 320).
    win_length : int
        Window length in samples (at most ``n_fft``).
    hop_length : int
        Hop in samples.
    window : str
        "hamming" (the paper), "hann" or "blackman"; periodic windows, as
        librosa's ``fftbins=True``.
    center : bool
        Pad ``n_fft // 2`` samples on both sides so that frame ``t`` is
        centred on sample ``t * hop_length`` (librosa's default).
    pad_mode : str
        Padding for ``center=True``: "constant" (zeros, librosa 0.11's
        default) or "reflect" (torch.stft's default).
    log1p : bool
        Return ``log(1 + |STFT|)`` (True) or the magnitude ``|STFT|``.

    On CPU the batch is transformed ``cpu_chunk`` (attribute, 16) rows at a
    time, which keeps the work in cache; the result is the same.

    Example
    -------
    >>> spec = Spectrogram()
    >>> spec(torch.randn(2, 16000)).shape
    torch.Size([2, 101, 161])
    >>> spec(torch.randn(16000)).shape
    torch.Size([1, 101, 161])
    """

    def __init__(
        self,
        sample_rate=16000,
        n_fft=320,
        win_length=320,
        hop_length=160,
        window="hamming",
        center=True,
        pad_mode="constant",
        log1p=True,
    ):
        super().__init__()
        if window not in _WINDOWS:
            raise ValueError(
                f"Spectrogram: window={window!r} is not one of "
                f"{sorted(_WINDOWS)}"
            )
        if pad_mode not in ("constant", "reflect"):
            raise ValueError(
                f"Spectrogram: pad_mode={pad_mode!r} must be 'constant' or "
                "'reflect'"
            )
        if not 0 < win_length <= n_fft:
            raise ValueError(
                f"Spectrogram: win_length={win_length} must be in "
                f"(0, n_fft={n_fft}]"
            )
        if hop_length <= 0:
            raise ValueError(
                f"Spectrogram: hop_length={hop_length} must be positive"
            )
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.center = center
        self.pad_mode = pad_mode
        self.log1p = log1p
        self.n_bins = n_fft // 2 + 1
        self.cpu_chunk = 16
        win = _WINDOWS[window](win_length, periodic=True)
        # Not in the state dict: it is a pure function of the arguments.
        self.register_buffer("window", win, persistent=False)

    def forward(self, wavs):
        """Compute the spectrogram of a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            Waveforms ``[B, N]`` (or one waveform ``[N]``, treated as a
            batch of one).

        Returns
        -------
        torch.Tensor
            Features ``[B, T, n_fft // 2 + 1]``, float32, with
            ``T = 1 + N // hop_length`` when ``center=True``.
        """
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wavs.dim() != 2:
            raise ValueError(
                "Spectrogram expects waveforms [B, N] or [N], got shape "
                f"{tuple(wavs.shape)}"
            )
        if not self.center and wavs.shape[1] < self.n_fft:
            raise ValueError(
                f"Spectrogram: {wavs.shape[1]} samples are fewer than "
                f"n_fft={self.n_fft} (use center=True or longer audio)"
            )
        # STFT in float32 even under autocast (half-precision FFTs are
        # restricted to powers of two on CUDA).
        with torch.autocast(wavs.device.type, enabled=False):
            x = wavs.float()
            window = self.window.to(device=x.device, dtype=x.dtype)
            if self.center:
                pad = self.n_fft // 2
                if self.pad_mode == "reflect" and x.shape[1] <= pad:
                    raise ValueError(
                        f"Spectrogram: reflect padding needs more than {pad} "
                        f"samples, got {x.shape[1]}"
                    )
                x = torch.nn.functional.pad(
                    x.unsqueeze(1), (pad, pad), mode=self.pad_mode
                ).squeeze(1)
            # On CPU, a few rows at a time stay in cache: about 2x faster
            # than one big STFT for 128 crops of 3 s (tools/bench_data.py).
            step = self.cpu_chunk if x.device.type == "cpu" else len(x)
            feats = torch.cat(
                [
                    self._magnitude(x[i : i + step], window)
                    for i in range(0, len(x), max(1, step))
                ]
            )
        return feats.transpose(1, 2)

    def _magnitude(self, x, window):
        """``log1p|STFT|`` (or ``|STFT|``) of padded rows, ``[B, F, T]``."""
        stft = torch.stft(
            x,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=window,
            center=False,
            return_complex=True,
        )
        feats = stft.abs()
        if self.log1p:
            feats = feats.log1p_()
        return feats


class CropNormalization(torch.nn.Module):
    """Normalise each utterance's features over its valid frames.

    Arguments
    ---------
    mode : str
        "scalar": one mean and one standard deviation per utterance, over
        all valid frames and bins (the original code); "freq": one per
        frequency bin, over the valid frames; "none": identity.
    std_floor : float
        Smallest standard deviation divided by (the original code floors
        it at 0.001), so silent crops do not blow up.

    Example
    -------
    >>> norm = CropNormalization("scalar")
    >>> x = torch.randn(2, 50, 161) * 3 + 1
    >>> y = norm(x)
    >>> abs(y[0].mean().item()) < 1e-5
    True
    >>> round(y[0].std(unbiased=False).item(), 4)
    1.0
    >>> y = CropNormalization("freq")(x, torch.tensor([1.0, 0.5]))
    >>> y[1, :25].mean(0).abs().max().item() < 1e-5
    True
    """

    def __init__(self, mode="scalar", std_floor=1e-3):
        super().__init__()
        if mode not in ("scalar", "freq", "none"):
            raise ValueError(
                f"CropNormalization: mode={mode!r} must be 'scalar', 'freq' "
                "or 'none'"
            )
        if not std_floor > 0:
            raise ValueError(
                f"CropNormalization: std_floor={std_floor} must be positive"
            )
        self.mode = mode
        self.std_floor = float(std_floor)

    def forward(self, feats, lengths=None):
        """Normalise ``feats`` utterance by utterance.

        Arguments
        ---------
        feats : torch.Tensor
            Features ``[B, T, F]``.
        lengths : torch.Tensor or None
            Relative lengths ``[B]`` in (0, 1] (SpeechBrain's convention):
            utterance ``b`` has ``round(lengths[b] * T)`` valid frames. The
            statistics use only those; padded frames are normalised with
            the same statistics. None: all frames are valid.

        Returns
        -------
        torch.Tensor
            Normalised features, same shape as ``feats``.
        """
        if self.mode == "none":
            return feats
        if feats.dim() != 3:
            raise ValueError(
                "CropNormalization expects features [B, T, F], got shape "
                f"{tuple(feats.shape)}"
            )
        B, T, F = feats.shape
        x = feats.float()
        if lengths is None:
            mask = torch.ones(B, T, 1, device=x.device, dtype=x.dtype)
        else:
            lengths = torch.as_tensor(lengths, device=x.device).reshape(-1)
            if lengths.numel() != B:
                raise ValueError(
                    f"CropNormalization: {lengths.numel()} lengths for a "
                    f"batch of {B}"
                )
            n_valid = torch.round(lengths.float() * T).clamp(1, T)
            frames = torch.arange(T, device=x.device)
            mask = (frames[None, :] < n_valid[:, None]).to(x.dtype)
            mask = mask.unsqueeze(-1)
        count = mask.sum(dim=1, keepdim=True)  # [B, 1, 1]
        if self.mode == "scalar":
            count = count * F
            mean = (x * mask).sum(dim=(1, 2), keepdim=True) / count
            var = (((x - mean) * mask) ** 2).sum(dim=(1, 2), keepdim=True)
        else:
            mean = (x * mask).sum(dim=1, keepdim=True) / count
            var = (((x - mean) * mask) ** 2).sum(dim=1, keepdim=True)
        std = (var / count).sqrt().clamp(min=self.std_floor)
        return ((x - mean) / std).to(feats.dtype)


class Features(torch.nn.Module):
    """The recipe's feature extractor, chosen by a plain value.

    Arguments
    ---------
    kind : str
        ``"spectrogram"``: :class:`Spectrogram`, the paper's
        ``log(1 + |STFT|)`` with ``n_fft // 2 + 1`` bins;
        ``"fbank"``: SpeechBrain's ``Fbank`` (log mel filter banks) with
        ``n_bins`` mel bands.
    n_bins : int
        Frequency bins the network will see. For the spectrogram it must
        equal ``n_fft // 2 + 1`` (checked); for fbank, the mel bands.
    sample_rate : int
        Sample rate of the audio.
    n_fft : int
        FFT size in samples.
    win_length : int, optional
        Window length in samples; default ``n_fft``. (SpeechBrain's
        ``Fbank`` takes it and the hop in milliseconds: converted here.)
    hop_length : int
        Hop in samples; both kinds give ``1 + N // hop_length`` frames.
    window : str
        Window of the spectrogram (``Fbank`` uses Hamming).

    The attributes ``sample_rate``, ``hop_length``, ``n_fft`` and
    ``center`` are those the inference code reads from any extractor.

    Example
    -------
    >>> Features("spectrogram")(torch.randn(1, 16000)).shape
    torch.Size([1, 101, 161])
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
        if kind == "spectrogram":
            if int(n_bins) != n_fft // 2 + 1:
                raise ValueError(
                    f"Features: n_bins={n_bins}, but a spectrogram with "
                    f"n_fft={n_fft} has n_fft // 2 + 1 = {n_fft // 2 + 1} "
                    "bins"
                )
            self.extractor = Spectrogram(
                sample_rate=sample_rate,
                n_fft=n_fft,
                win_length=win_length,
                hop_length=hop_length,
                window=window,
            )
        elif kind == "fbank":
            from speechbrain.lobes.features import Fbank

            if not 0 < int(n_bins) <= n_fft // 2 + 1:
                raise ValueError(
                    f"Features: n_bins={n_bins} mel bands must be in "
                    f"(0, n_fft // 2 + 1 = {n_fft // 2 + 1}]"
                )
            self.extractor = Fbank(
                n_mels=int(n_bins),
                sample_rate=sample_rate,
                n_fft=n_fft,
                win_length=1000.0 * win_length / sample_rate,
                hop_length=1000.0 * hop_length / sample_rate,
            )
        else:
            raise ValueError(
                f"Features: kind={kind!r} must be 'spectrogram' or 'fbank'"
            )
        self.kind = kind
        self.n_bins = int(n_bins)
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.center = True

    def forward(self, wavs):
        """Waveforms ``[B, N]`` (or ``[N]``) -> features ``[B, T, n_bins]``."""
        return self.extractor(wavs)


def to_image(feats, n_channels=3):
    """Turn SpeechBrain features ``[B, T, F]`` into images ``[B, C, F, T]``.

    The paper copies the spectrogram to 3 channels to feed an ImageNet
    ResNet. ``SEResNet`` does this itself; this helper is for other image
    networks.

    Arguments
    ---------
    feats : torch.Tensor
        Features ``[B, T, F]``.
    n_channels : int
        Number of identical channels.

    Returns
    -------
    torch.Tensor
        ``[B, n_channels, F, T]`` (a contiguous copy).

    Example
    -------
    >>> img = to_image(torch.randn(2, 301, 161))
    >>> img.shape
    torch.Size([2, 3, 161, 301])
    >>> bool((img[:, 0] == img[:, 2]).all())
    True
    """
    if feats.dim() != 3:
        raise ValueError(
            f"to_image expects features [B, T, F], got {tuple(feats.shape)}"
        )
    if n_channels < 1:
        raise ValueError(f"to_image: n_channels={n_channels} must be >= 1")
    return feats.transpose(1, 2).unsqueeze(1).repeat(1, n_channels, 1, 1)
