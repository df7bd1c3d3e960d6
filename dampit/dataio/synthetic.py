"""A built-in synthetic speaker corpus, for demos and tests (not a benchmark).

:func:`generate_corpus` writes synthetic speakers as 16-bit wav files,
``<out>/<spk>/<spk>-<k>.wav``, with ``manifest.csv`` and ``corpus.json``,
so that the demo recipe and the tests run without downloads. EERs on it say
that the pipeline learns, not how good a model is.

An utterance is a source-filter model computed in the STFT domain: a pulse
train at the speaker's F0 (declination, accents, jitter) plus breath noise,
shaped by five formant resonances that follow a random sequence of vowels,
fricatives and pauses, scaled by the speaker's vocal-tract length and
offsets; then the speaker's own timbre (two peaking EQs and a tilt), the
session's channel (band-pass, tilt, EQ) and noise at the session's SNR.
Everything random depends only on ``(seed, speaker, utterance)``: the same
seed gives the same bytes whatever the worker count, and a larger corpus
extends a smaller one. Command line: ``dampit-synth --out DIR --speakers 40``
(:mod:`dampit.cli.synth`).
"""

import csv
import json
import multiprocessing
import os
from functools import partial

import numpy as np
import soundfile as sf
from scipy.signal import istft, stft
from tqdm import tqdm

from dampit.dataio.preparation import DataPreparationError
from dampit.utils.atomic import atomic_path, atomic_write_text

MANIFEST, CONFIG_FILE = "manifest.csv", "corpus.json"
NOTE = "synthetic speech for demos and tests; not a benchmark"
HOP, NFFT, SESSIONS = 128, 512, 4
# F1-F3 (Hz, adult male; Hillenbrand et al. 1995) of 12 vowels.
VOWELS = np.array(
    [
        [342, 2322, 3000],
        [427, 2034, 2684],
        [476, 2089, 2691],
        [580, 1799, 2605],
        [588, 1952, 2601],
        [768, 1333, 2522],
        [652, 997, 2538],
        [497, 910, 2459],
        [469, 1122, 2434],
        [378, 997, 2343],
        [623, 1200, 2550],
        [474, 1379, 1710],
    ]
)
# Centre and bandwidth (Hz) of 4 fricatives' noise; a neutral vocal tract.
FRICATIVES = np.array([[5800, 1800], [2900, 1000], [4500, 5000], [2200, 900]])
NEUTRAL = [500, 1500, 2500]


def _rng(*key):
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def _uniform(rng, low, high):
    return np.asarray(rng.uniform(low, high)).tolist()


def speaker_traits(seed, index):
    """Fixed random traits of speaker ``index`` (a JSON-able dict).

    Example
    -------
    >>> t = speaker_traits(0, 3)
    >>> t == speaker_traits(0, 3), 60 < t["f0"] < 400
    (True, True)
    """
    rng = _rng(seed, 0, index)
    female = bool(rng.random() < 0.5)
    u = partial(_uniform, rng)
    return {
        "sex": "f" if female else "m",
        "f0": (205 if female else 115) * float(np.exp(rng.normal(0, 0.14))),
        "vtl": (1.17 if female else 1.0) * float(np.exp(rng.normal(0, 0.08))),
        "formant_offsets": np.exp(rng.normal(0, 0.08, 5)).tolist(),
        "bw_scale": float(np.exp(rng.normal(0, 0.25))),
        "rate": float(np.exp(rng.normal(0, 0.15))),
        "f0_range": u(1.0, 4.5),
        "jitter": u(0.003, 0.02),
        "breathiness": u(0.01, 0.12),
        "tilt_db": u(-3, 3),
        "timbre": [u([700, -10, 1], [5000, 10, 4]) for _ in range(2)],
    }


def session_channel(seed, spk_index, session):
    """Fixed random channel of one recording session of a speaker.

    Example
    -------
    >>> c = session_channel(0, 1, 2)
    >>> c == session_channel(0, 1, 2), c["highpass"] < c["lowpass"]
    (True, True)
    """
    rng = _rng(seed, 3, spk_index, session)
    u = partial(_uniform, rng)
    phone = rng.random() < 0.1  # a telephone band now and then
    return {
        "highpass": u(50, 250),
        "lowpass": u(3300, 3700) if phone else u(5000, 7800),
        "tilt_db": u(-3, 3),
        "eq": u([300, -3, 0.7], [4000, 3, 2]),
        "noise": int(rng.integers(3)),  # white, pink, brown
        "snr_db": u(15, 45),
    }


def _eq_db(f, freq, gain_db, q):
    """Peaking EQ in dB: a bump of ``gain_db`` at ``freq``, ~1/q octave."""
    return gain_db * np.exp(-0.5 * (q * np.log2(np.maximum(f, 1) / freq)) ** 2)


def _phones(rng, traits, n_frames):
    """Per-frame formants [T, 5], voicing [T] and frication [T, 2] of a
    random sequence of vowels (60 %), fricatives and pauses."""
    n_seg = n_frames // 5 + 2
    kind = rng.choice(3, n_seg, p=[0.6, 0.25, 0.15])
    ms = np.array([115, 95, 200])[kind] * np.exp(rng.normal(0, 0.25, n_seg))
    reps = np.maximum(2, (ms * traits["rate"] * 16 / HOP).astype(int))
    f3 = np.where(
        (kind == 0)[:, None], VOWELS[rng.integers(12, size=n_seg)], NEUTRAL
    )
    fmt = np.c_[f3, np.tile([3500, 4500], (n_seg, 1))] * traits["vtl"]
    fric = FRICATIVES[rng.integers(4, size=n_seg)] * (kind == 1)[:, None]
    fmt, voice, fric = (
        np.repeat(a, reps, 0)[:n_frames] for a in (fmt, kind == 0, fric)
    )
    win = np.hanning(9) / np.hanning(9).sum()  # coarticulation
    fmt = np.stack(
        [np.convolve(np.pad(c, 4, "edge"), win, "valid") for c in fmt.T], 1
    )
    return fmt * traits["formant_offsets"], voice.astype(float), fric


def synthesize_utterance(
    traits, seed, spk_index, utt_index, duration, session=0
):
    """One 16 kHz utterance of a speaker: float32 in [-0.98, 0.98].

    Example
    -------
    >>> x = synthesize_utterance(speaker_traits(0, 0), 0, 0, 0, 0.5)
    >>> x.shape, x.dtype, bool(np.abs(x).max() <= 0.98)
    ((8000,), dtype('float32'), True)
    """
    sr, rng, t = 16000, _rng(seed, 1, spk_index, utt_index), traits
    n = int(round(duration * sr))
    n_frames = (n + NFFT) // HOP + 2
    fmt, voice, fric = _phones(rng, t, n_frames)
    acc = np.convolve(rng.standard_normal(n_frames + 40), np.hanning(41))
    semitones = t["f0_range"] * acc[40:-40] / acc.std()
    semitones -= 2 * np.linspace(0, 1, n_frames)  # declination
    f0 = t["f0"] * 2 ** (semitones / 12)
    f0 *= 1 + t["jitter"] * rng.standard_normal(n_frames)
    f0 = np.interp(np.arange(n + NFFT), np.arange(n_frames) * HOP, f0)
    pulses = np.diff(np.floor(np.cumsum(f0) / sr), prepend=0.0)
    spec = partial(stft, fs=sr, nperseg=NFFT, noverlap=NFFT - HOP)
    f, _, P = spec(pulses * np.sqrt(sr / t["f0"]))
    B = spec(rng.standard_normal(n + NFFT))[2].T
    m, v = len(B), voice[: len(B), None]
    bw = np.array([80, 100, 140, 220, 300])[:, None] * t["bw_scale"]
    fc = fmt[:m, :, None]  # resonances (unit gain at DC), glottal roll-off
    env = ((1 - (f / fc) ** 2) ** 2 + (f * bw / fc**2) ** 2).prod(1) ** -0.5
    env /= np.sqrt(1 + (f / 500) ** 2)
    fc, fbw = fric[:m, :1], np.maximum(fric[:m, 1:], 1)
    hiss = (fc > 0) * np.exp(-0.5 * ((f - fc) / fbw) ** 2)
    X = (P.T * v + B * t["breathiness"] * v) * env + 3 * B * hiss
    x = istft(X.T, fs=sr, nperseg=NFFT, noverlap=NFFT - HOP)[1][:n]
    return _channel(rng, x, t, session_channel(seed, spk_index, session))


def _channel(rng, x, traits, ch):
    """Timbre, channel, noise at the session's SNR and a random level."""
    n, fx = len(x), np.fft.rfftfreq(len(x), 1 / 16000)
    gain = sum(_eq_db(fx, *e) for e in traits["timbre"] + [ch["eq"]])
    gain += (traits["tilt_db"] + ch["tilt_db"]) * np.log2(
        np.maximum(fx, 50) / 1e3
    )
    band = 1 + (ch["highpass"] / np.maximum(fx, 1)) ** 4
    band *= 1 + (fx / ch["lowpass"]) ** 8
    x = np.fft.irfft(np.fft.rfft(x) * 10 ** (gain / 20) / np.sqrt(band), n)
    colour = np.maximum(fx, 20) ** (-ch["noise"] / 2)
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * colour, n)
    power = np.mean(x[np.abs(x) > 1e-3 * np.abs(x).max()] ** 2)
    snr = ch["snr_db"] + rng.uniform(-3, 3)
    x = x + noise * np.sqrt(power / 10 ** (snr / 10) / np.mean(noise**2))
    x *= 10 ** (rng.uniform(-32, -16) / 20) / np.sqrt(np.mean(x**2))
    return (x * min(1.0, 0.98 / np.abs(x).max())).astype(np.float32)


def _speaker(job):
    """Write one speaker's files; return (name, traits, manifest rows)."""
    out_dir, idx, opts = job
    traits, seed = speaker_traits(opts["seed"], idx), opts["seed"]
    spk = f"spk{idx:0{max(3, len(str(opts['n_speakers'] - 1)))}d}"
    n_utts = opts["utts_per_speaker"]
    lengths = _rng(seed, 2, idx).uniform(*opts["duration"], size=n_utts)
    os.makedirs(os.path.join(out_dir, spk), exist_ok=True)
    rows = []
    for k in range(n_utts):
        name = f"{spk}/{spk}-{k:0{max(3, len(str(n_utts - 1)))}d}.wav"
        x = synthesize_utterance(traits, seed, idx, k, lengths[k], k % SESSIONS)
        with atomic_path(os.path.join(out_dir, name)) as tmp:
            sf.write(tmp, x, 16000, subtype="PCM_16", format="WAV")
        rows.append((name, spk, round(len(x) / 16000, 4), k % SESSIONS))
    return spk, traits, rows


def _check_out_dir(out_dir):
    """Refuse, before anything is written, an ``out_dir`` that is neither
    new, nor empty, nor a corpus of this module (its ``corpus.json``
    holds :data:`NOTE`): its files would be replaced or mixed with
    synthetic ones."""
    if not os.path.exists(out_dir) or (
        os.path.isdir(out_dir) and not os.listdir(out_dir)
    ):
        return
    if not os.path.isdir(out_dir):
        raise DataPreparationError(f"{out_dir} exists and is not a folder")
    try:
        with open(os.path.join(out_dir, CONFIG_FILE), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or info.get("note") != NOTE:
        raise DataPreparationError(
            f"{out_dir} is not empty and no synthetic corpus (no {CONFIG_FILE}"
            " of dampit-synth): nothing written (give a new or empty folder)"
        )


def _complete(out_dir, opts):
    """Whether ``out_dir`` holds every file of a corpus made with ``opts``."""
    try:
        with open(os.path.join(out_dir, CONFIG_FILE), encoding="utf-8") as f:
            same = json.load(f)["options"] == opts
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            paths = [r["path"] for r in csv.DictReader(f)]
    except (OSError, ValueError, KeyError):
        return False
    n = opts["n_speakers"] * opts["utts_per_speaker"]
    exist = all(os.path.isfile(os.path.join(out_dir, p)) for p in paths)
    return same and len(paths) == n and exist


def generate_corpus(
    out_dir,
    n_speakers=40,
    utts_per_speaker=20,
    duration=(2.0, 4.0),
    seed=0,
    workers=1,
    progress=True,
):
    """Write the corpus (unless ``out_dir`` holds it already) and return the
    path of ``manifest.csv`` (``path,speaker,duration_s,session``; a speaker
    has 4 sessions, utterance ``k`` in session ``k % 4``).

    ``out_dir`` is new, empty or a corpus written here (another size or
    seed is written over it); any other folder raises
    DataPreparationError before anything is written.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> m = generate_corpus(d, 2, 2, duration=(0.3, 0.4), progress=False)
    >>> [r["path"] for r in csv.DictReader(open(m))]
    ['spk000/spk000-000.wav', 'spk000/spk000-001.wav', 'spk001/spk001-000.wav',
     'spk001/spk001-001.wav']
    """
    if min(n_speakers, utts_per_speaker) < 1:
        raise ValueError("n_speakers and utts_per_speaker must be >= 1")
    if not 0 < duration[0] <= duration[1]:
        raise ValueError(
            f"duration must be (min, max), 0 < min <= max: {duration}"
        )
    opts = {"n_speakers": n_speakers, "utts_per_speaker": utts_per_speaker}
    opts.update(duration=list(map(float, duration)), seed=seed, version=2)
    out_dir, manifest = os.fspath(out_dir), os.path.join(out_dir, MANIFEST)
    _check_out_dir(out_dir)
    if _complete(out_dir, opts):
        return manifest
    # Marks the folder as this module's, and incomplete until the end.
    info = {"options": None, "note": NOTE}
    atomic_write_text(os.path.join(out_dir, CONFIG_FILE), json.dumps(info))
    jobs = [(out_dir, i, opts) for i in range(n_speakers)]
    bar = {"total": n_speakers, "disable": not progress}
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = list(tqdm(pool.imap(_speaker, jobs), **bar))
    else:
        results = list(tqdm(map(_speaker, jobs), **bar))
    with atomic_path(manifest) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "speaker", "duration_s", "session"])
            w.writerows(row for _, _, rows in results for row in rows)
    info["options"] = opts
    info["speakers"] = {s: t for s, t, _ in results}
    atomic_write_text(
        os.path.join(out_dir, CONFIG_FILE), json.dumps(info) + "\n"
    )
    return manifest
