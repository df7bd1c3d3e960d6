"""A built-in synthetic speaker corpus, for demos and tests (not a benchmark).

:func:`generate_corpus` writes ``N`` synthetic speakers as 16 kHz wav files
in the layout of a real corpus (``<out>/<spk>/<spk>-<k>.wav`` plus
``manifest.csv``), so that the offline demo recipe and the tests can train
and evaluate a speaker-verification model without downloading anything.
Nothing here resembles real speech closely; EERs measured on it say that
the pipeline learns, not how good a model is. Use VoxCeleb (or the real
audio in ``../shared/data``) to measure a model.

Each utterance comes from a source-filter model:

- **source**: a Rosenberg glottal pulse train whose F0 follows a
  speaker-specific mean and range (declination, random phrase accents,
  jitter and shimmer), plus aspiration noise (speaker-specific
  breathiness) and frication noise for consonants;
- **filter**: five formant resonators in cascade whose targets come from a
  table of phone-like sounds (12 vowels, nasals, approximants, fricatives,
  stops), scaled by a speaker-specific vocal-tract length factor and
  per-formant offsets, with speaker-specific bandwidths, and smoothed
  between phones (coarticulation);
- **prosody**: a random phone sequence (syllables, words, pauses) per
  utterance at a speaker-specific speaking rate;
- **speaker colouring**: two speaker-specific peaking EQs and a source
  tilt (fixed idiosyncrasies of a voice);
- **channel**: per recording session (a speaker has ``n_sessions``, like
  the videos of a VoxCeleb speaker), a random band-pass (telephone-like
  at times), spectral tilt and peaking EQ, and noise (white, pink or
  brown) at a random SNR that varies a little per utterance; a random
  level per utterance.

Speaker traits depend only on ``(seed, speaker index)`` and an utterance
only on ``(seed, speaker index, utterance index)``, so the same seed gives
byte-identical files whatever the worker count, and a larger corpus extends
a smaller one.

Command line: ``dampit-synth OUT_DIR --speakers 40 --utts 20``.
"""

import argparse
import csv
import json
import logging
import os

import numpy as np
import soundfile as sf
from scipy.signal import butter, lfilter, sosfilt
from tqdm import tqdm

from dampit.utils.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

CONFIG_FILE = "corpus.json"
MANIFEST = "manifest.csv"
_HOP = 80  # samples between filter updates (5 ms at 16 kHz)

# Formant targets (Hz, adult male; Hillenbrand et al. 1995 for vowels).
_VOWELS = {
    "i": (342, 2322, 3000),
    "I": (427, 2034, 2684),
    "e": (476, 2089, 2691),
    "E": (580, 1799, 2605),
    "ae": (588, 1952, 2601),
    "a": (768, 1333, 2522),
    "O": (652, 997, 2538),
    "o": (497, 910, 2459),
    "U": (469, 1122, 2434),
    "u": (378, 997, 2343),
    "V": (623, 1200, 2550),
    "3": (474, 1379, 1710),
}
_SCHWA = (500, 1500, 2500)
# name: (kind, formants F1-F3, voicing, aspiration, frication,
#        frication centre Hz, frication bandwidth Hz, base duration ms)
_CONSONANTS = {
    "m": ("nasal", (280, 1000, 2300), 0.45, 0.0, 0.0, 0, 0, 70),
    "n": ("nasal", (280, 1500, 2500), 0.45, 0.0, 0.0, 0, 0, 65),
    "l": ("approx", (360, 1300, 2700), 0.7, 0.0, 0.0, 0, 0, 60),
    "r": ("approx", (420, 1300, 1600), 0.7, 0.0, 0.0, 0, 0, 60),
    "w": ("approx", (300, 700, 2200), 0.65, 0.0, 0.0, 0, 0, 55),
    "j": ("approx", (280, 2200, 2900), 0.65, 0.0, 0.0, 0, 0, 55),
    "s": ("fric", _SCHWA, 0.0, 0.0, 0.5, 5800, 1800, 110),
    "S": ("fric", _SCHWA, 0.0, 0.0, 0.5, 2900, 1000, 110),
    "f": ("fric", _SCHWA, 0.0, 0.0, 0.12, 4500, 5000, 95),
    "h": ("fric", _SCHWA, 0.0, 0.45, 0.0, 0, 0, 70),
    "z": ("fric", _SCHWA, 0.35, 0.0, 0.3, 5800, 1800, 90),
    "v": ("fric", _SCHWA, 0.35, 0.0, 0.1, 4500, 5000, 75),
    "p": ("stop", _SCHWA, 0.0, 0.0, 0.6, 1000, 2000, 85),
    "t": ("stop", _SCHWA, 0.0, 0.0, 0.6, 4500, 2500, 85),
    "k": ("stop", _SCHWA, 0.0, 0.0, 0.6, 2200, 900, 90),
    "b": ("stop", _SCHWA, 0.15, 0.0, 0.4, 1000, 2000, 70),
    "d": ("stop", _SCHWA, 0.15, 0.0, 0.4, 4000, 2500, 70),
    "g": ("stop", _SCHWA, 0.15, 0.0, 0.4, 2200, 900, 75),
}
_F45 = (3500.0, 4500.0)
_BANDWIDTHS = np.array([80.0, 100.0, 140.0, 220.0, 300.0])
_VOWEL_MS = 115
# Spread of speaker traits and of session channels. Tuned so that crude
# long-term spectral statistics separate held-out speakers clearly but
# imperfectly (EER about 15-20 %), leaving room for a trained model.
_VTL_STD = 0.08  # log-std of the vocal-tract length factor within a sex
_OFFSET_STD = 0.08  # log-std of per-formant idiosyncratic factors
_TIMBRE_DB = 10.0  # speaker's own two peaking EQs: gains in +-dB
_TILT = (-0.2, 0.4)  # session pre-emphasis coefficient
_EQ_DB = 3.0  # session peaking EQ gain range, +-dB
_TELEPHONE = 0.1  # probability of a telephone-band session
_SNR_DB = (15.0, 45.0)  # session SNR; utterances vary +-3 dB around it


def speaker_traits(seed, index):
    """Random but fixed traits of synthetic speaker ``index``.

    Arguments
    ---------
    seed : int
        Corpus seed.
    index : int
        Speaker index.

    Returns
    -------
    dict
        ``sex``, ``f0`` (Hz), ``f0_range`` (semitones), ``vtl`` (formant
        scale), ``formant_offsets`` (5 factors), ``bw_scale``, ``rate``
        (phone-duration factor), ``jitter``, ``shimmer``, ``open_quotient``,
        ``breathiness``, ``frication_scale``, ``declination`` (semitones).

    Example
    -------
    >>> t = speaker_traits(0, 3)
    >>> t == speaker_traits(0, 3), 60 < t["f0"] < 400
    (True, True)
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, index]))
    female = bool(rng.random() < 0.5)
    f0 = (205.0 if female else 115.0) * float(np.exp(rng.normal(0, 0.14)))
    vtl = (1.17 if female else 1.0) * float(np.exp(rng.normal(0, _VTL_STD)))
    return {
        "sex": "f" if female else "m",
        "f0": f0,
        "f0_range": float(rng.uniform(1.0, 4.5)),
        "vtl": vtl,
        "formant_offsets": np.exp(rng.normal(0, _OFFSET_STD, 5)).tolist(),
        "bw_scale": float(np.exp(rng.normal(0, 0.25))),
        "rate": float(np.exp(rng.normal(0, 0.15))),
        "jitter": float(rng.uniform(0.003, 0.02)),
        "shimmer": float(rng.uniform(0.02, 0.12)),
        "open_quotient": float(rng.uniform(0.4, 0.75)),
        "breathiness": float(rng.uniform(0.01, 0.12)),
        "frication_scale": float(np.exp(rng.normal(0, 0.08))),
        "declination": float(rng.uniform(0.5, 3.0)),
        "source_tilt": float(rng.uniform(0.0, 0.7)),
        "timbre": [
            [
                float(rng.uniform(700, 5000)),
                float(rng.uniform(-_TIMBRE_DB, _TIMBRE_DB)),
                float(rng.uniform(1.0, 4.0)),
            ]
            for _ in range(2)
        ],
    }


def _phone_sequence(rng, traits, n_frames):
    """Per-frame targets of a random phone sequence filling ``n_frames``."""
    frame_ms = 1000.0 * _HOP / 16000
    utt_rate = traits["rate"] * float(np.exp(rng.normal(0, 0.08)))
    vowels = list(_VOWELS)
    consonants = list(_CONSONANTS)
    segs = []  # (formants3, voicing, aspiration, frication, fc, fbw, frames)

    def frames(ms):
        ms *= utt_rate * float(np.exp(rng.normal(0, 0.25)))
        return max(2, int(round(ms / frame_ms)))

    def silence(n):
        segs.append((_SCHWA, 0.0, 0.0, 0.0, 3000, 1000, max(1, int(n))))

    silence(rng.uniform(50, 250) / frame_ms)
    total = sum(s[-1] for s in segs)
    while total < n_frames:
        for _ in range(int(rng.integers(1, 4))):  # syllables in a word
            for pos in ("onset", "nucleus", "coda"):
                if pos == "nucleus":
                    v = vowels[rng.integers(len(vowels))]
                    segs.append(
                        (
                            _VOWELS[v],
                            1.0,
                            0.0,
                            0.0,
                            3000,
                            1000,
                            frames(_VOWEL_MS),
                        )
                    )
                    continue
                if rng.random() > (0.75 if pos == "onset" else 0.3):
                    continue
                c = consonants[rng.integers(len(consonants))]
                kind, fmt, av, asp, fr, fc, fbw, ms = _CONSONANTS[c]
                n = frames(ms)
                if kind == "stop":  # closure, then a short burst
                    burst = max(2, n // 4)
                    segs.append((fmt, av, 0.0, 0.0, fc, fbw, n - burst))
                    segs.append((fmt, av, 0.1, fr, fc, fbw, burst))
                else:
                    segs.append((fmt, av, asp, fr, fc, fbw, n))
        if rng.random() < 0.25:
            silence(rng.uniform(80, 300) / frame_ms)
        total = sum(s[-1] for s in segs)
    silence(n_frames)  # trailing silence, cut below
    reps = [s[-1] for s in segs]
    f3 = np.repeat(np.array([s[0] for s in segs], float), reps, axis=0)
    av = np.repeat([s[1] for s in segs], reps)
    asp = np.repeat([s[2] for s in segs], reps)
    fr = np.repeat([s[3] for s in segs], reps)
    fc = np.repeat([float(s[4]) for s in segs], reps)
    fbw = np.repeat([float(s[5]) for s in segs], reps)
    cut = slice(0, n_frames)
    return f3[cut], av[cut], asp[cut], fr[cut], fc[cut], fbw[cut]


def _smooth(x, width):
    """Moving Hann-window average along axis 0 (edges padded)."""
    if width <= 1:
        return x
    win = np.hanning(width + 2)[1:-1]
    win /= win.sum()
    pad = width // 2
    xp = np.pad(x, [(pad, width - 1 - pad)] + [(0, 0)] * (x.ndim - 1), "edge")
    if x.ndim == 1:
        return np.convolve(xp, win, mode="valid")
    return np.stack(
        [np.convolve(xp[:, k], win, mode="valid") for k in range(x.shape[1])],
        axis=1,
    )


def _framewise_filter(b, a, x, hop):
    """Filter ``x`` with coefficients ``b[f], a[f]`` changing every ``hop``
    samples, carrying the filter state across frames."""
    out = np.empty_like(x)
    zi = np.zeros(a.shape[1] - 1)
    # One call per run of frames with identical coefficients.
    change = np.any(np.diff(a, axis=0) != 0, axis=1)
    change |= np.any(np.diff(b, axis=0) != 0, axis=1)
    starts = np.concatenate([[0], np.flatnonzero(change) + 1, [len(a)]])
    for f, g in zip(starts[:-1].tolist(), starts[1:].tolist()):
        seg = slice(f * hop, g * hop)
        if seg.start >= len(x):
            break
        out[seg], zi = lfilter(b[f], a[f], x[seg], zi=zi)
    return out


def _glottal_source(rng, traits, f0_frames, n, sr):
    """Rosenberg glottal-flow derivative with jitter and shimmer."""
    t_frames = (np.arange(len(f0_frames)) + 0.5) * _HOP
    f0 = np.interp(np.arange(n), t_frames, f0_frames)
    phase = np.cumsum(f0 / sr)
    frac = phase - np.floor(phase)
    oq = traits["open_quotient"]
    tp, tn = 0.6 * oq, 0.4 * oq
    g = np.where(
        frac < tp,
        0.5 * (1 - np.cos(np.pi * frac / tp)),
        np.where(frac < tp + tn, np.cos(0.5 * np.pi * (frac - tp) / tn), 0.0),
    )
    exc = np.diff(g, prepend=0.0)
    period = np.floor(phase).astype(np.int64)
    shimmer = 1.0 + traits["shimmer"] * rng.standard_normal(period[-1] + 2)
    exc *= shimmer[period]
    return exc / (np.sqrt(np.mean(exc**2)) + 1e-12)


def _formant_coeffs(freqs, bws, sr):
    """All-pole denominator of cascaded unity-DC-gain resonators, per frame.

    Returns ``(b [F, 1], a [F, 2K+1])``.
    """
    r = np.exp(-np.pi * bws / sr)
    c = 2 * r * np.cos(2 * np.pi * freqs / sr)
    n_frames, k = freqs.shape
    a = np.ones((n_frames, 1))
    gain = np.ones(n_frames)
    for j in range(k):
        sec = np.stack([np.ones(n_frames), -c[:, j], r[:, j] ** 2], axis=1)
        new = np.zeros((n_frames, a.shape[1] + 2))
        for m in range(3):
            new[:, m : m + a.shape[1]] += sec[:, m : m + 1] * a
        a = new
        gain *= 1 - c[:, j] + r[:, j] ** 2
    return gain[:, None], a


def _bandpass_coeffs(fc, bw, sr):
    """RBJ constant-peak-gain band-pass biquads, per frame."""
    fc = np.clip(fc, 100.0, 0.45 * sr)
    w0 = 2 * np.pi * fc / sr
    q = np.maximum(fc / np.maximum(bw, 1.0), 0.3)
    alpha = np.sin(w0) / (2 * q)
    a0 = 1 + alpha
    b = np.stack([alpha, np.zeros_like(alpha), -alpha], axis=1) / a0[:, None]
    a = np.stack([np.ones_like(a0), -2 * np.cos(w0) / a0, (1 - alpha) / a0], 1)
    return b, a


def session_channel(seed, spk_index, session):
    """Random but fixed recording channel of one session of a speaker.

    Arguments
    ---------
    seed : int
        Corpus seed.
    spk_index : int
        Speaker index.
    session : int
        Session index.

    Returns
    -------
    dict
        ``highpass``/``lowpass`` (Hz), ``tilt`` (first-order pre-emphasis
        coefficient), ``eq`` (peaking EQ: Hz, dB, Q), ``noise``
        (0 white, 1 pink-ish, 2 brown-ish) and ``snr_db``.

    Example
    -------
    >>> c = session_channel(0, 1, 2)
    >>> c == session_channel(0, 1, 2), c["highpass"] < c["lowpass"]
    (True, True)
    """
    rng = np.random.default_rng(
        np.random.SeedSequence([seed, 3, spk_index, session])
    )
    telephone = rng.random() < _TELEPHONE
    return {
        "highpass": float(rng.uniform(50, 250)),
        "lowpass": float(
            rng.uniform(3300, 3700) if telephone else rng.uniform(5000, 7800)
        ),
        "tilt": float(rng.uniform(*_TILT)),
        "eq": [
            float(rng.uniform(300, 4000)),
            float(rng.uniform(-_EQ_DB, _EQ_DB)),
            float(rng.uniform(0.7, 2.0)),
        ],
        "noise": int(rng.integers(3)),
        "snr_db": float(rng.uniform(*_SNR_DB)),
    }


def _apply_channel(x, ch, sr):
    """Band-pass, tilt and peaking EQ of a channel from
    :func:`session_channel`."""
    hp, lp = ch["highpass"], min(ch["lowpass"], 0.45 * sr)
    x = sosfilt(butter(2, hp, "highpass", fs=sr, output="sos"), x)
    x = sosfilt(butter(4, lp, "lowpass", fs=sr, output="sos"), x)
    x = lfilter([1.0, -ch["tilt"]], [1.0], x)
    return _peaking(x, *ch["eq"], sr)


def _peaking(x, freq, gain_db, q, sr):
    """RBJ peaking equaliser: ``gain_db`` at ``freq`` with quality ``q``."""
    amp = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * freq / sr
    alpha = np.sin(w0) / (2 * q)
    b = [1 + alpha * amp, -2 * np.cos(w0), 1 - alpha * amp]
    a = [1 + alpha / amp, -2 * np.cos(w0), 1 - alpha / amp]
    return lfilter(b, a, x)


def _noise(rng, n, kind):
    """White (0), pink-ish (1) or brown-ish (2) unit-RMS noise."""
    w = rng.standard_normal(n)
    if kind == 1:
        w = lfilter([1.0], [1.0, -0.9], w)
    elif kind == 2:
        w = lfilter([1.0], [1.0, -0.99], w)
    return w / (np.sqrt(np.mean(w**2)) + 1e-12)


def synthesize_utterance(
    traits,
    seed,
    spk_index,
    utt_index,
    duration,
    sample_rate=16000,
    session=0,
):
    """Synthesize one utterance of a speaker.

    Arguments
    ---------
    traits : dict
        From :func:`speaker_traits`.
    seed : int
        Corpus seed.
    spk_index : int
        Speaker index.
    utt_index : int
        Utterance index (with the seed, fixes everything random).
    duration : float
        Length in seconds.
    sample_rate : int
        Sample rate (16 kHz in dampit).
    session : int
        Recording session: fixes the channel (:func:`session_channel`);
        the SNR varies +-3 dB around the session's.

    Returns
    -------
    numpy.ndarray
        float32 waveform in [-1, 1].

    Example
    -------
    >>> t = speaker_traits(0, 0)
    >>> x = synthesize_utterance(t, 0, 0, 0, 0.5)
    >>> x.shape, x.dtype, bool(np.abs(x).max() <= 1.0)
    ((8000,), dtype('float32'), True)
    """
    sr = sample_rate
    rng = np.random.default_rng(
        np.random.SeedSequence([seed, 1, spk_index, utt_index])
    )
    n = int(round(duration * sr))
    n_frames = -(-n // _HOP)
    f3, av, asp, fr, fc, fbw = _phone_sequence(rng, traits, n_frames)
    # Formants: speaker scaling and offsets, smoothing (coarticulation).
    fmt = np.concatenate(
        [f3, np.broadcast_to(np.array(_F45), (n_frames, 2))], axis=1
    )
    fmt = fmt * traits["vtl"] * np.array(traits["formant_offsets"])
    fmt = _smooth(fmt, 9)
    fmt = np.minimum(fmt, 0.47 * sr)
    bws = _BANDWIDTHS * traits["bw_scale"] * np.exp(rng.normal(0, 0.1, 5))
    bws = np.broadcast_to(bws, fmt.shape)
    av = _smooth(av, 3)
    asp = _smooth(asp, 3)
    fr = _smooth(fr, 2)
    # F0 contour in semitones: declination, phrase accents, jitter.
    t = np.linspace(0, 1, n_frames)
    accents = _smooth(rng.standard_normal(n_frames), 41)
    accents *= traits["f0_range"] / (np.std(accents) + 1e-9)
    semitones = -traits["declination"] * t + accents
    semitones += 12 * np.log2(
        1 + traits["jitter"] * rng.standard_normal(n_frames)
    )
    f0 = (
        traits["f0"]
        * float(np.exp(rng.normal(0, 0.05)))
        * 2 ** (semitones / 12)
    )
    # Sources.
    av_s = np.repeat(av, _HOP)[:n]
    asp_s = np.repeat(asp, _HOP)[:n]
    fr_s = np.repeat(fr, _HOP)[:n]
    voiced = _glottal_source(rng, traits, f0, n, sr)
    voiced = lfilter([1.0], [1.0, -traits["source_tilt"]], voiced)
    voiced /= np.sqrt(np.mean(voiced**2)) + 1e-12
    breath = rng.standard_normal(n)
    src = voiced * av_s + breath * (traits["breathiness"] * av_s + asp_s)
    b, a = _formant_coeffs(fmt, bws, sr)
    speech = _framewise_filter(b, a, src, _HOP)
    fb, fa = _bandpass_coeffs(fc * traits["frication_scale"], fbw, sr)
    fric = _framewise_filter(fb, fa, rng.standard_normal(n) * fr_s, _HOP)
    speech = speech + 4.0 * fric
    for freq, gain_db, q in traits["timbre"]:  # speaker's own colouring
        speech = _peaking(speech, freq, gain_db, q, sr)
    # Channel, noise at a random SNR, level.
    ch = session_channel(seed, spk_index, session)
    speech = _apply_channel(speech, ch, sr)
    active = np.abs(speech) > 1e-3 * np.abs(speech).max()
    p_speech = np.mean(speech[active] ** 2) if active.any() else 1.0
    snr_db = ch["snr_db"] + float(rng.uniform(-3, 3))
    noise = _noise(rng, n, ch["noise"])
    x = speech + noise * np.sqrt(p_speech / 10 ** (snr_db / 10))
    level = 10 ** (float(rng.uniform(-32, -16)) / 20)
    x *= level / (np.sqrt(np.mean(x**2)) + 1e-12)
    peak = np.abs(x).max()
    if peak > 0.98:
        x *= 0.98 / peak
    return x.astype(np.float32)


def _speaker_name(index, n_speakers):
    return f"spk{index:0{max(3, len(str(n_speakers - 1)))}d}"


def _generate_speaker(job):
    out_dir, idx, n_spk, n_utts, dur, sr, seed, n_sessions = job
    traits = speaker_traits(seed, idx)
    spk = _speaker_name(idx, n_spk)
    os.makedirs(os.path.join(out_dir, spk), exist_ok=True)
    width = max(3, len(str(n_utts - 1)))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, idx]))
    lengths = rng.uniform(dur[0], dur[1], size=n_utts)
    rows = []
    for k in range(n_utts):
        name = f"{spk}-{k:0{width}d}.wav"
        sess = k % n_sessions
        x = synthesize_utterance(
            traits, seed, idx, k, float(lengths[k]), sr, session=sess
        )
        with atomic_path(os.path.join(out_dir, spk, name)) as tmp:
            sf.write(tmp, x, sr, subtype="PCM_16", format="WAV")
        rows.append((f"{spk}/{name}", spk, round(len(x) / sr, 4), sess))
    return spk, traits, rows


def generate_corpus(
    out_dir,
    n_speakers=40,
    utts_per_speaker=20,
    duration=(2.0, 4.0),
    sample_rate=16000,
    seed=0,
    n_sessions=4,
    workers=1,
    progress=True,
):
    """Write a synthetic speaker corpus (for demos and tests, not a benchmark).

    Files: ``<out_dir>/<spk>/<spk>-<k>.wav`` (16-bit PCM), ``manifest.csv``
    (``path,speaker,duration_s,session``, paths relative to ``out_dir``) and
    ``corpus.json`` (options and each speaker's traits). When
    ``corpus.json`` already records the same options and every file is
    there, nothing is generated again.

    Arguments
    ---------
    out_dir : str or os.PathLike
        Output folder (created).
    n_speakers : int
        Number of speakers (``spk000``...).
    utts_per_speaker : int
        Utterances per speaker.
    duration : tuple of float
        (min, max) utterance length in seconds, drawn uniformly.
    sample_rate : int
        Sample rate of the files.
    seed : int
        Seed; the same seed gives byte-identical files.
    n_sessions : int
        Recording sessions per speaker, each with its own channel and
        noise (utterance ``k`` is in session ``k % n_sessions``), like the
        videos of a VoxCeleb speaker.
    workers : int
        Processes (speakers are generated in parallel; the output does not
        depend on it).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    str
        Path of ``manifest.csv``.

    Example
    -------
    >>> import tempfile, csv
    >>> d = tempfile.mkdtemp()
    >>> m = generate_corpus(d, 2, 2, duration=(0.3, 0.4), progress=False)
    >>> [r["path"] for r in csv.DictReader(open(m))]
    ['spk000/spk000-000.wav', 'spk000/spk000-001.wav', 'spk001/spk001-000.wav',
     'spk001/spk001-001.wav']
    """
    out_dir = os.fspath(out_dir)
    if n_speakers < 1 or utts_per_speaker < 1 or n_sessions < 1:
        raise ValueError(
            f"n_speakers ({n_speakers}) and utts_per_speaker "
            f"({utts_per_speaker}) and n_sessions ({n_sessions}) must be >= 1"
        )
    lo, hi = float(duration[0]), float(duration[1])
    if not 0 < lo <= hi:
        raise ValueError(
            f"duration must be (min, max) with 0 < min <= max, got {duration}"
        )
    opts = {
        "n_speakers": int(n_speakers),
        "utts_per_speaker": int(utts_per_speaker),
        "duration": [lo, hi],
        "sample_rate": int(sample_rate),
        "seed": int(seed),
        "n_sessions": int(n_sessions),
        "generator": "dampit.dataio.synthetic v1",
    }
    manifest = os.path.join(out_dir, MANIFEST)
    config = os.path.join(out_dir, CONFIG_FILE)
    if _complete(out_dir, opts):
        logger.info("synthetic corpus in %s is up to date", out_dir)
        return manifest
    os.makedirs(out_dir, exist_ok=True)
    jobs = [
        (
            out_dir,
            i,
            n_speakers,
            utts_per_speaker,
            (lo, hi),
            sample_rate,
            seed,
            n_sessions,
        )
        for i in range(n_speakers)
    ]
    bar = tqdm(
        total=n_speakers, desc="synthetic speakers", disable=not progress
    )
    results = []
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for res in pool.imap(_generate_speaker, jobs):
                results.append(res)
                bar.update()
    else:
        for job in jobs:
            results.append(_generate_speaker(job))
            bar.update()
    bar.close()
    with atomic_path(manifest) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "speaker", "duration_s", "session"])
            for _, _, rows in results:
                w.writerows(rows)
    info = {
        "options": opts,
        "note": "synthetic speech for demos and tests; not a benchmark",
        "speakers": {spk: traits for spk, traits, _ in results},
    }
    atomic_write_text(config, json.dumps(info, indent=1) + "\n")
    return manifest


def _complete(out_dir, opts):
    """Whether ``out_dir`` holds a finished corpus made with ``opts``."""
    try:
        with open(os.path.join(out_dir, CONFIG_FILE), encoding="utf-8") as f:
            saved = json.load(f)
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            paths = [r["path"] for r in csv.DictReader(f)]
    except (OSError, ValueError, KeyError):
        return False
    if saved.get("options") != opts:
        return False
    want = opts["n_speakers"] * opts["utts_per_speaker"]
    return len(paths) == want and all(
        os.path.isfile(os.path.join(out_dir, p)) for p in paths
    )


def main(argv=None):
    """Command line: ``dampit-synth OUT_DIR [--speakers N] [--utts K] ...``
    (``--out DIR`` and ``--utts-per-speaker K`` are accepted too).

    Arguments
    ---------
    argv : list of str or None
        Arguments (None: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status (0).

    Example
    -------
    >>> import tempfile
    >>> main([tempfile.mkdtemp(), "--speakers", "1", "--utts", "1",
    ...       "--min-dur", "0.2", "--max-dur", "0.2", "--quiet"])
    0
    """
    parser = argparse.ArgumentParser(
        prog="dampit-synth",
        description="Write dampit's synthetic speaker corpus (16 kHz wavs, "
        "<spk>/<spk>-<k>.wav + manifest.csv). For demos and tests only: "
        "it is not a benchmark.",
    )
    parser.add_argument("out_dir", nargs="?", help="output folder")
    parser.add_argument("--out", help="output folder (instead of OUT_DIR)")
    parser.add_argument("--speakers", type=int, default=40)
    parser.add_argument(
        "--utts",
        "--utts-per-speaker",
        dest="utts",
        type=int,
        default=20,
        help="utterances per speaker",
    )
    parser.add_argument("--min-dur", type=float, default=2.0, help="seconds")
    parser.add_argument("--max-dur", type=float, default=4.0, help="seconds")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sessions", type=int, default=4, help="per speaker")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if (args.out_dir is None) == (args.out is None):
        parser.error("give the output folder once: OUT_DIR or --out")
    path = generate_corpus(
        args.out_dir or args.out,
        n_speakers=args.speakers,
        utts_per_speaker=args.utts,
        duration=(args.min_dur, args.max_dur),
        sample_rate=args.sample_rate,
        seed=args.seed,
        n_sessions=args.sessions,
        workers=args.workers,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
