"""Windows of long audio files, read block by block, and an energy trim.

:func:`read_windows` cuts a file into windows of ``window`` seconds, one
every ``hop`` seconds, reading it through
:func:`dampit.dataio.audio.mono_blocks`: it holds one block (about 4 MB)
and the start of the next window, never the whole decoded file. Windows
are cut at the file's own rate (``round(window * rate)`` frames every
``round(hop * rate)``) and each is resampled alone to ``sample_rate``, so
that a window is what :func:`dampit.dataio.audio.load_audio` reads of
that slice of the file. The last windows reach past the end of the file
and are shorter: such a window is kept when it lasts at least half a
window, and dropped otherwise; a file shorter than half a window raises
``AudioError``.

Trim (``trim=True``): a first pass measures the level of every
``FRAME_SECONDS`` (30 ms) frame of the file, the power of its samples
around their mean in dB (:func:`frame_levels`). The file's reference is
the ``LEVEL_PERCENTILE`` (95th) percentile of the levels of its frames
that are not constant, a level its speech reaches; a frame is speech
when it is at most ``SPEECH_BELOW_DB`` (25 dB) below the reference, and
a window is kept when at least ``MIN_SPEECH`` (20 %) of the frames that
start in it are speech. The levels are relative to the file's own, so
the trim does not depend on its gain. Digital silence is never speech;
on real recordings, noise 25 dB or more below the speech's RMS is
dropped and louder noise may count as speech; in a file with noise in
more than 95 % of its frames the reference is the noise's level, and
little is dropped.
"""

import math
import os
import warnings

import numpy as np
import soundfile as sf
import torch

from dampit.dataio.audio import AudioError, mono_blocks, resample

__all__ = [
    "check_window_hop",
    "frame_levels",
    "header_windows",
    "read_windows",
]

#: Length of the frames whose levels the trim compares, in seconds.
FRAME_SECONDS = 0.03
#: The reference level of a file: this percentile of its frame levels.
LEVEL_PERCENTILE = 95
#: A frame is speech when its level is at most this far below the
#: reference (dB).
SPEECH_BELOW_DB = 25.0
#: A window is kept by the trim when this fraction of its frames is speech.
MIN_SPEECH = 0.2


def check_window_hop(window, hop):
    """Refuse a window or hop that is not finite and positive, or a hop
    longer than the window (audio between windows would be skipped).

    Example
    -------
    >>> check_window_hop(1.5, 3.0)
    Traceback (most recent call last):
    ...
    ValueError: hop 3.0 s is longer than the window 1.5 s
    """
    for name, value in (("window", window), ("hop", hop)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value}")
    if hop > window:
        raise ValueError(f"hop {hop} s is longer than the window {window} s")


def header_windows(path, window, hop):
    """How many windows :func:`read_windows` cuts from a file (before any
    trim), by its header (0 when unreadable: reading it reports why).

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(p, np.zeros(16000 * 10), 16000)  # 10 s
    >>> header_windows(p, 1.5, 1.5)  # 6 whole + 1 s
    7
    >>> header_windows(p, 3.0, 3.0)  # 3 whole + 1 s (too short: dropped)
    3
    """
    check_window_hop(window, hop)
    try:
        info = sf.info(os.fspath(path))
    except (RuntimeError, sf.LibsndfileError, ValueError, OSError):
        return 0
    rate = info.samplerate
    w, h = max(1, round(window * rate)), max(1, round(hop * rate))
    half = -(-w // 2)
    return 0 if info.frames < half else (info.frames - half) // h + 1


def frame_levels(path, sample_rate=16000):
    """The level of every whole ``FRAME_SECONDS`` frame of a file, the
    power of its samples around their mean in dB (a constant frame:
    digital silence or a DC offset, ``-inf``), read block by block
    (:func:`dampit.dataio.audio.mono_blocks`).

    Returns
    -------
    levels : numpy.ndarray
        ``[F]`` float64 dB.
    frame : int
        Frames of the file (at its own rate) per level.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> tone = np.sqrt(2) * np.sin(np.arange(960) * np.pi / 4)  # power 1
    >>> sf.write(p, np.r_[0.1 * tone, 0.01 * tone, np.zeros(500)], 16000)
    >>> levels, frame = frame_levels(p)
    >>> levels.round(1).tolist(), frame
    ([-20.0, -20.0, -40.0, -40.0, -inf], 480)
    """
    power, rest, frame = [], np.zeros(0, np.float32), 0
    for rate, block in mono_blocks(path, sample_rate):
        frame = max(1, round(FRAME_SECONDS * rate))
        buf = np.concatenate([rest, block])
        n = len(buf) // frame
        frames = buf[: n * frame].reshape(n, frame).astype(np.float64)
        power.append(frames.var(axis=1))
        rest = buf[n * frame :]
    with np.errstate(divide="ignore"):
        return 10 * np.log10(np.concatenate(power)), frame


def _speech(levels, frame, start, end):
    """Whether enough of the frames that start in ``[start, end)`` are
    speech (``levels``: dB relative to the file's reference)."""
    first, last = -(-start // frame), min(len(levels), -(-end // frame))
    if last <= first:
        return False
    return (levels[first:last] >= -SPEECH_BELOW_DB).mean() >= MIN_SPEECH


def read_windows(path, window, hop, sample_rate=16000, trim=False):
    """Yield ``(start, end, wav)`` for each window of a file, block by
    block (see the module's text).

    Arguments
    ---------
    path : str or os.PathLike
        Audio file.
    window, hop : float
        Window length and the step between window starts, in seconds
        (``0 < hop <= window``).
    sample_rate : int
        Rate of the yielded windows; other rates are resampled (with a
        warning).
    trim : bool
        Leave out the windows with too little speech (module's text).

    Yields
    ------
    start, end : float
        The window's bounds in the file, in seconds.
    wav : torch.Tensor
        ``[N]`` float32 at ``sample_rate``.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(p, 0.1 * np.sin(np.arange(40000) / 5), 16000)  # 2.5 s
    >>> [(s, e, len(w)) for s, e, w in read_windows(p, 1.0, 1.0)]
    [(0.0, 1.0, 16000), (1.0, 2.0, 16000), (2.0, 2.5, 8000)]
    """
    check_window_hop(window, hop)
    path, levels, frame = os.fspath(path), None, 1
    if trim:  # levels relative to the reference of the frames heard
        levels, frame = frame_levels(path, sample_rate)
        heard = levels[levels > -np.inf]
        if len(heard):
            levels = levels - np.percentile(heard, LEVEL_PERCENTILE)
    buf, first, k = np.zeros(0, np.float32), 0, 0  # buf: frames from first
    for n, (rate, block) in enumerate(mono_blocks(path, sample_rate)):
        w, h = max(1, round(window * rate)), max(1, round(hop * rate))
        if n == 0 and rate != sample_rate:
            warnings.warn(
                f"{path}: sample rate {rate} Hz, resampled to {sample_rate} Hz",
                stacklevel=2,
            )
        buf = np.concatenate([buf, block])
        while k * h + w <= first + len(buf):
            start, k = k * h, k + 1
            if levels is None or _speech(levels, frame, start, start + w):
                wav = buf[start - first : start + w - first]
                yield _window(wav, start, start + w, rate, sample_rate)
        buf, first = buf[k * h - first :], k * h
    end = first + len(buf)
    while end - k * h >= -(-w // 2):  # the windows cut short: half or more
        start, k = k * h, k + 1
        if levels is None or _speech(levels, frame, start, end):
            yield _window(buf[start - first :], start, end, rate, sample_rate)
    if k == 0:
        raise AudioError(
            f"audio file too short: {path} lasts {end / rate:.3f} s, less "
            f"than half a window ({window / 2:g} s)"
        )


def _window(wav, start, end, rate, sample_rate):
    """``(start s, end s, wav at sample_rate)`` of a window."""
    wav = torch.from_numpy(wav.copy())
    if rate != sample_rate:
        wav = resample(wav, rate, sample_rate)
    return start / rate, end / rate, wav
