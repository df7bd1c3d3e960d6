"""Audio reading: the one place where dampit turns a file into a waveform.

Files are read with soundfile (as SpeechBrain does). Bad input raises
``AudioError`` naming the file: missing, empty, corrupt, too short, NaN or
inf samples, or silent. Other rates are resampled (with a warning);
channels are averaged to mono, unless they cancel out (``L = -R``), when the
loudest channel is kept.

Memory: a file is read in blocks, so a header that claims more frames than
the file holds allocates nothing for them; a rate outside
``sample_rate / MAX_UPSAMPLE .. MAX_RATE`` is refused, and the resampling
filter is bounded. Reading a file of ``N`` decoded samples thus allocates
at most about ``(2 + MAX_UPSAMPLE) N`` samples (its blocks, their
concatenation, the resampled waveform) plus a filter of at most 64 MB;
:func:`mono_blocks` holds one block of a file at a time (long files).

Silence: a channel is silent when it is constant, its peak-to-peak
amplitude at most ``SILENCE`` (1e-6) times its peak: digital zeros, a DC
offset of any size (1e-30 included). A quiet but varying signal (speech at
-140 dBFS in a float file) is kept. A file is silent when all of its
channels are, so an inverted stereo pair (``L = -R``) is not.
"""

import contextlib
import math
import os
import warnings

import numpy as np
import scipy.signal
import soundfile as sf
import torch
import torchaudio.functional as AF

from dampit.dataio.crops import repeat_to_length

#: Audio file endings, the project's one list. libsndfile decodes all but
#: m4a/aac (VoxCeleb2), which are listed so that they are reported, not missed.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac")
SILENCE = 1e-6
#: Shortest file accepted for training, in seconds: one 25 ms feature frame.
MIN_DURATION = 0.025
_INT_DTYPES = {"PCM_S8": "int16", "PCM_U8": "int16", "PCM_16": "int16"}
_INT_DTYPES.update(PCM_24="int32", PCM_32="int32")
_BLOCK = 2**17  # frames per block of check_audio: 8 s at 16 kHz
#: The waveform at the model's rate is at most this many times longer than
#: the file (a file whose rate is lower than ``sample_rate / MAX_UPSAMPLE``
#: is refused: a header claiming 1 Hz does not make a 62 KB file 4 GB).
MAX_UPSAMPLE = 8
#: The highest sample rate accepted, in Hz.
MAX_RATE = 384000
_MAX_FILTER = 2**22  # coefficients of torchaudio's resampling filter
#: Full scale of the integer dtypes; in an uncompressed container (which
#: libsndfile reads to its last whole frame) a channel whose peak-to-peak
#: exceeds SILENCE x full scale proves the file is not silent.
_FULL_SCALE = {"int16": 2.0**15, "int32": 2.0**31}
_PLAIN = ("WAV", "WAVEX", "W64", "RF64", "AIFF")


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file."""


def _check_rate(path, sr, sample_rate):
    """Refuse a rate that would make the waveform at ``sample_rate`` more
    than ``MAX_UPSAMPLE`` times longer than the file, or above
    ``MAX_RATE``."""
    if sr > MAX_RATE or sr * MAX_UPSAMPLE < sample_rate:
        raise AudioError(
            f"audio file sample rate {sr} Hz is outside "
            f"{-(-sample_rate // MAX_UPSAMPLE)}..{MAX_RATE} Hz "
            f"(resampled to {sample_rate} Hz): {path}"
        )


def _read_blocks(f, n):
    """At most ``n`` frames of the open file ``f`` as ``[N, C]`` float32,
    read in blocks of at most 4 MB: the memory follows what the file
    holds, not the length its header claims."""
    step = max(1024, 2**20 // f.channels)
    blocks, left = [], n
    while left > 0:
        block = f.read(min(left, step), "float32", always_2d=True)
        if len(block) == 0:
            break
        blocks.append(block)
        left -= len(block)
    if not blocks:
        return np.zeros((0, f.channels), np.float32)
    return np.concatenate(blocks)


@contextlib.contextmanager
def open_audio(path):
    """``path`` open as a ``soundfile.SoundFile``; a failure to open or
    read it in the block raises AudioError naming the file (the checks
    that need a stat call run only then)."""
    try:
        with sf.SoundFile(path) as f:
            yield f
    except AudioError:
        raise
    except (RuntimeError, sf.LibsndfileError, ValueError, OSError) as err:
        if not os.path.isfile(path):
            raise AudioError(f"audio file not found: {path}") from err
        if os.path.getsize(path) == 0:
            raise AudioError(f"audio file is empty (0 bytes): {path}") from err
        raise AudioError(f"cannot read audio file {path}: {err}") from err


def _read(path, sample_rate, start=0, stop=None, crop=None):
    """Open ``path`` once: ``(data [N, C] float32, rate, frames)``; with
    ``crop`` (samples at ``sample_rate``) a random crop of ``[start, stop)``.
    """
    path = os.fspath(path)
    with open_audio(path) as f:
        sr, frames = f.samplerate, f.frames
        _check_rate(path, sr, sample_rate)
        stop = frames if stop is None else min(int(stop), frames)
        start = int(start)
        if crop is not None:
            n = -(-crop * sr // sample_rate)  # the crop at the file's rate
            if stop - start > n:
                start += int(torch.randint(0, stop - start - n + 1, (1,)))
                stop = start + n
        f.seek(start)
        data = _read_blocks(f, stop - start)
    if data.size == 0:
        raise AudioError(f"audio file has no samples: {path}")
    if not np.isfinite(data).all():
        raise AudioError(f"audio file holds NaN or inf samples: {path}")
    return data, sr, frames


def _constant(lo, hi):
    """Whether every channel of per-channel minima ``lo``, maxima ``hi``
    is constant (peak-to-peak at most ``SILENCE`` times the peak)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    peak = np.maximum(np.abs(lo), np.abs(hi))
    return bool((hi - lo <= SILENCE * peak).all())


def _silent(data):
    """Whether every column of ``data`` [N, C] is constant."""
    return _constant(data.min(axis=0), data.max(axis=0))


def _downmix(data):
    """``data [N, C]`` as one channel: the mean, or the loudest channel
    when the mean cancels out (``L = -R``)."""
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)
    if data.shape[1] > 1 and _silent(mono[:, None]):
        mono = data[:, np.argmax(np.ptp(data, axis=0))]
    return np.ascontiguousarray(mono)


def _mono(path, data, sr, sample_rate):
    """Down-mix (the loudest channel if the mean cancels out), resample."""
    wav = torch.from_numpy(_downmix(data))
    if sr != sample_rate:
        warnings.warn(
            f"{path}: sample rate {sr} Hz, resampled to {sample_rate} Hz",
            stacklevel=3,
        )
        wav = resample(wav, sr, sample_rate)
    return wav


def resample(wav, orig_freq, new_freq):
    """torchaudio's sinc resampling, unless its filter (``new / g`` rows
    of about ``orig / g`` taps, ``g`` their GCD: 4 GB for 44101 to
    16000 Hz) would exceed ``_MAX_FILTER`` coefficients; then scipy's
    polyphase ``resample_poly``, whose filter has ``20 max(up, down)``.

    Example
    -------
    >>> x = torch.sin(torch.arange(44101.0) / 20)
    >>> resample(x, 44101, 16000).shape
    torch.Size([16000])
    """
    g = math.gcd(orig_freq, new_freq)
    up, down = new_freq // g, orig_freq // g
    width = math.ceil(6 * down / (0.99 * min(up, down)))
    if up * (down + 2 * width) <= _MAX_FILTER:
        return AF.resample(wav, orig_freq, new_freq)
    out = scipy.signal.resample_poly(wav.numpy(), up, down)
    return torch.from_numpy(out.astype(np.float32))


def load_audio(path, sample_rate=16000, start=0, stop=None, min_samples=1):
    """Read ``path[start:stop]`` as a mono float32 tensor at ``sample_rate``.

    Arguments
    ---------
    path : str or os.PathLike
        Audio file.
    sample_rate : int
        Wanted rate; other rates are resampled with a warning.
    start, stop : int
        Sample range at the file's own rate (``stop`` None: to the end).
    min_samples : int
        Fewest samples accepted (after resampling).

    Returns
    -------
    torch.Tensor
        Waveform [N].

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(p, 0.1 * np.sin(np.arange(16000) / 5), 16000)
    >>> load_audio(p).shape
    torch.Size([16000])
    """
    data, sr, _ = _read(path, sample_rate, start, stop)
    wav = _mono(os.fspath(path), data, sr, sample_rate)
    if wav.numel() < min_samples:
        raise AudioError(
            f"audio file too short: {path} has {wav.numel()} samples at "
            f"{sample_rate} Hz, at least {min_samples} needed"
        )
    if _silent(data):
        raise AudioError(f"audio file is silent: {path}")
    return wav


def read_crop(path, n, sample_rate=16000, start=0, stop=None):
    """One random training crop of ``n`` samples of ``path[start:stop]``.

    The file is opened once and only the crop is read; shorter ranges are
    repeated to ``n`` samples. A silent crop is accepted (a pause inside a
    valid file); preparation has already refused silent files.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(p, np.r_[0.1 * np.ones(800), np.zeros(80000)], 16000)
    >>> read_crop(p, 48000).shape
    torch.Size([48000])
    """
    data, sr, _ = _read(path, sample_rate, start, stop, crop=n)
    wav = _mono(os.fspath(path), data, sr, sample_rate)
    return repeat_to_length(wav, n)


def mono_blocks(path, sample_rate=16000):
    """Read a file block by block: ``(rate, block)``, ``block`` a mono
    float32 array at the file's own ``rate``, about 4 MB at a time.

    Only one block is held: a long file is never decoded whole. The
    checks of :func:`load_audio` apply: a bad rate, a file that cannot be
    read, NaN or inf samples raise ``AudioError`` naming the file when
    met; no samples, or silence (all channels constant), once the last
    block is read.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(p, 0.1 * np.sin(np.arange(1200000) / 5), 16000)
    >>> [len(block) for _, block in mono_blocks(p)]
    [1048576, 151424]
    """
    path = os.fspath(path)
    lo = hi = None
    with open_audio(path) as f:
        _check_rate(path, f.samplerate, sample_rate)
        step = max(1024, 2**20 // f.channels)
        while len(data := _read_blocks(f, step)):
            if not np.isfinite(data).all():
                raise AudioError(f"audio file holds NaN or inf samples: {path}")
            b_lo, b_hi = data.min(axis=0), data.max(axis=0)
            lo = b_lo if lo is None else np.minimum(lo, b_lo)
            hi = b_hi if hi is None else np.maximum(hi, b_hi)
            yield f.samplerate, _downmix(data)
    if lo is None:
        raise AudioError(f"audio file has no samples: {path}")
    if _constant(lo, hi):
        raise AudioError(f"audio file is silent: {path}")


def check_audio(path, min_duration=MIN_DURATION, sample_rate=16000):
    """Return ``(frames, rate)`` if training can use ``path``: readable,
    finite, not silent, at least ``min_duration`` seconds, at a rate that
    :func:`load_audio` reads at ``sample_rate``.

    Integer PCM is decoded as integers, in blocks that double from 4,096
    frames. A compressed file (FLAC, OGG, ...) or a float one is decoded
    to its end: corruption or NaN may sit anywhere. Integer PCM in a plain
    container (WAV, AIFF, ...) cannot hold NaN, its length is its header's
    (libsndfile reads a truncated one to its last whole frame), so the
    decode stops at the first block that proves a channel is not constant.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(p, np.full((1600, 2), 1e-30), 16000)
    >>> try:
    ...     check_audio(p)
    ... except AudioError as err:
    ...     print(str(err)[:21])
    audio file is silent:
    """
    path = os.fspath(path)
    with open_audio(path) as f:
        sr, frames, channels = f.samplerate, f.frames, f.channels
        _check_rate(path, sr, sample_rate)
        dtype = _INT_DTYPES.get(f.subtype, "float32")
        plain = f.format in _PLAIN and dtype in _FULL_SCALE
        loud = SILENCE * _FULL_SCALE[dtype] if plain else np.inf
        lo = hi = None
        n, sound, finite = 4096, False, True
        while not sound:  # per channel: reducing [N, C] is slow
            block = np.frombuffer(f.buffer_read(n, dtype), dtype)
            if len(block) == 0:
                break
            block = block.reshape(-1, channels).T
            b_lo = [float(c.min()) for c in block]
            b_hi = [float(c.max()) for c in block]
            finite = finite and all(map(math.isfinite, b_lo + b_hi))
            lo = b_lo if lo is None else list(map(min, lo, b_lo))
            hi = b_hi if hi is None else list(map(max, hi, b_hi))
            sound = any(h - low > loud for low, h in zip(lo, hi))
            if block.shape[1] < n:
                break
            n = min(2 * n, _BLOCK)
    if lo is None:
        raise AudioError(f"audio file has no samples: {path}")
    if frames < min_duration * sr:
        raise AudioError(
            f"audio file too short: {path} lasts {frames / sr:.3f} s, "
            f"less than {min_duration} s"
        )
    if sound:
        return frames, sr
    if not finite:
        raise AudioError(f"audio file holds NaN or inf samples: {path}")
    if _constant(lo, hi):
        raise AudioError(f"audio file is silent: {path}")
    return frames, sr
