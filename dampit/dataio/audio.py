"""Robust audio loading for training, evaluation and inference.

``load_audio`` is the one place where dampit turns a file into a waveform.
It reads with soundfile (as SpeechBrain does; ``torchaudio.load`` needs
FFmpeg), and handles or rejects bad input with an error naming the file:

- missing, empty, corrupt or non-audio files: ``AudioError``;
- other sample rates: resampled to the target, with a warning;
- several channels: down-mixed to mono (their mean);
- NaN or inf samples: ``AudioError``;
- all-zero (silent) audio: ``AudioError`` unless ``allow_silent=True``;
- clips shorter than ``min_samples``: ``AudioError``.
"""

import logging
import os
import warnings

import numpy as np
import soundfile as sf
import torch

logger = logging.getLogger(__name__)


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file."""


def resample(wav, orig_sr, target_sr):
    """Resample a 1-D float tensor with torchaudio's band-limited resampler.

    Arguments
    ---------
    wav : torch.Tensor
        Waveform [N].
    orig_sr : int
        Its sample rate.
    target_sr : int
        The wanted sample rate.

    Returns
    -------
    torch.Tensor
        The resampled waveform.

    Example
    -------
    >>> resample(torch.zeros(8000), 8000, 16000).shape
    torch.Size([16000])
    """
    if orig_sr == target_sr:
        return wav
    import torchaudio.functional as AF

    return AF.resample(wav, orig_sr, target_sr)


def load_audio(
    path,
    sample_rate=16000,
    start=0,
    stop=None,
    min_samples=1,
    allow_silent=False,
):
    """Read a file as a mono float32 tensor at ``sample_rate``.

    Arguments
    ---------
    path : str or os.PathLike
        Audio file (anything libsndfile reads: wav, flac, ogg...).
    sample_rate : int
        The sample rate the caller works at; other rates are resampled
        with a warning.
    start : int
        First sample to read (at the file's own rate).
    stop : int or None
        One past the last sample to read (None: to the end).
    min_samples : int
        Fewest samples (after resampling) accepted.
    allow_silent : bool
        Accept all-zero audio instead of raising.

    Returns
    -------
    torch.Tensor
        Waveform [N], float32.

    Raises
    ------
    AudioError
        When the file is missing, unreadable, empty, too short, silent or
        holds NaN/inf; the message names the file.

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> t = np.arange(16000) / 16000
    >>> sf.write(p, 0.1 * np.sin(2 * np.pi * 440 * t), 16000)
    >>> load_audio(p).shape
    torch.Size([16000])
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(f"audio file not found: {path}")
    if os.path.getsize(path) == 0:
        raise AudioError(f"audio file is empty (0 bytes): {path}")
    try:
        data, sr = sf.read(
            path, start=start, stop=stop, dtype="float32", always_2d=True
        )
    except Exception as err:  # libsndfile raises several types
        raise AudioError(
            f"cannot read audio file {path}: {err} (corrupt or not audio?)"
        ) from err
    if data.shape[1] > 1:
        data = data.mean(axis=1, keepdims=True)
    wav = torch.from_numpy(np.ascontiguousarray(data[:, 0]))
    if wav.numel() == 0:
        raise AudioError(f"audio file has no samples: {path}")
    if not torch.isfinite(wav).all():
        raise AudioError(f"audio file holds NaN or inf samples: {path}")
    if sr != sample_rate:
        warnings.warn(
            f"{path}: sample rate {sr} Hz, resampling to {sample_rate} Hz",
            stacklevel=2,
        )
        wav = resample(wav, sr, sample_rate)
    if wav.numel() < min_samples:
        raise AudioError(
            f"audio file too short: {path} has {wav.numel()} samples at "
            f"{sample_rate} Hz, at least {min_samples} needed"
        )
    if not allow_silent and not bool(wav.abs().max() > 0):
        raise AudioError(f"audio file is silent (all zeros): {path}")
    return wav


def audio_info(path):
    """Return ``(n_frames, sample_rate, channels)`` of an audio file.

    Arguments
    ---------
    path : str or os.PathLike
        Audio file.

    Returns
    -------
    tuple
        (frames, sample rate, channels).

    Raises
    ------
    AudioError
        When the file is missing or unreadable; the message names it.

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(p, np.zeros((800, 2)), 8000)
    >>> audio_info(p)
    (800, 8000, 2)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(f"audio file not found: {path}")
    try:
        info = sf.info(path)
    except Exception as err:
        raise AudioError(
            f"cannot read audio file {path}: {err} (corrupt or not audio?)"
        ) from err
    return info.frames, info.samplerate, info.channels
