"""Features: torch spectrogram against librosa.

dampit's torch ``Spectrogram`` against librosa (``log1p(|librosa.stft|)``,
the original code's features) on real dspspeech speech, one utterance at a
time and on a batch of 3 s crops in one call (librosa crop by crop).
Ratio: librosa time / torch time (> 1: torch faster).
"""

import csv

import librosa
import numpy as np
import torch
from benchlib import DATA, Clock, median_time, row

from dampit.dataio.audio import load_audio
from dampit.dataio.crops import repeat_to_length
from dampit.lobes.features import Spectrogram

CROP = 3 * 16000
KEY_ROWS = ("spectrogram_batched",)


def with_librosa(wavs):
    """The original code's features of each waveform."""
    for w in wavs:
        s = librosa.stft(
            w.numpy(),
            n_fft=320,
            hop_length=160,
            win_length=320,
            window="hamming",
            center=True,
            pad_mode="constant",
        )
        np.log1p(np.abs(s)).T


def run(mode):
    """BENCHMARKS.md rows (``"quick"``: fewer utterances and crops)."""
    quick = mode == "quick"
    with open(DATA / "dspspeech" / "manifest.csv", newline="") as f:
        paths = [DATA / "dspspeech" / r["path"] for r in csv.DictReader(f)]
    n_utts = 16 if quick else 100
    wavs = [load_audio(p) for p in paths[:: len(paths) // n_utts][:n_utts]]
    spec = Spectrogram()

    def with_torch(ws):
        with torch.no_grad():
            for w in ws:
                spec(w)

    clock, reps = Clock("cpu", "wall"), 2 if quick else 3
    t_lib = median_time(clock, lambda: with_librosa(wavs), reps)
    t_torch = median_time(clock, lambda: with_torch(wavs), reps)
    threads = torch.get_num_threads()
    rows = [
        row(
            "spectrogram_per_utterance",
            1000 * t_torch / len(wavs),
            "ms/utterance",
            1000 * t_lib / len(wavs),
            f"torch Spectrogram vs librosa log1p|stft|, {len(wavs)} real "
            f"dspspeech utterances one at a time, CPU, {threads} torch "
            f"threads, median of {reps} (wall); ratio = librosa / torch",
            ratio=t_lib / t_torch,
        )
    ]
    n_crops = 32 if quick else 128
    crops = torch.stack(
        [repeat_to_length(wavs[i % len(wavs)], CROP) for i in range(n_crops)]
    )
    t_lib = median_time(clock, lambda: with_librosa(list(crops)), reps)
    t_batch = median_time(clock, lambda: with_torch([crops]), reps)
    rows.append(
        row(
            "spectrogram_batched",
            1000 * t_batch / n_crops,
            "ms/crop",
            1000 * t_lib / n_crops,
            f"one batch of {n_crops} 3 s crops in one call vs librosa "
            "crop by crop; ratio = librosa time / torch time",
            ratio=t_lib / t_batch,
        )
    )
    return rows
