"""Benchmark of the data pipeline: features and the P x K training loader.

Rows (``run(quick)``; ``ratio > 1`` always means "ours is faster"):

1. ``spectrogram_per_utterance``: dampit's torch ``Spectrogram`` against
   librosa (``log1p(|librosa.stft|)``, the original code's features), one
   real dspspeech utterance at a time; ratio = librosa time / torch time.
2. ``spectrogram_batched``: the same on a batch of 3 s crops in one call,
   against librosa crop by crop; ratio = librosa time / torch time.
3. ``loader_vs_model``: the training loader (``PKSampler`` batches of real
   dspspeech, random 3 s crops repeated to length, noise + reverberation
   from the shared folders, on-the-fly spectrogram + per-crop
   normalisation, in DataLoader workers) in batches/s, against what the
   model consumes in batches/s (a thin ``SEResNet``, ResNet-50 with
   ``base_width=16``, forward + backward + Adam step on a triplet loss);
   ratio = loader batches/s / model batches/s: above 1 the loader keeps
   the model fed. dspspeech has only 25 speakers, so the full run uses
   P=16, K=8 (the paper's batch size 128, not its 64 x 2); --quick uses
   P=8, K=2.

Usage: ``python tools/bench_data.py [--quick] [--data ../shared/data]
[--workers 2] [--threads 1]``. The data folder defaults to ``$DAMPIT_DATA`` or
``../shared/data`` next to the repository.
"""

import argparse
import csv
import os
import pathlib
import sys
import time

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dampit.dataio.audio import load_audio, read_crop  # noqa: E402
from dampit.dataio.augment import FolderAugment  # noqa: E402
from dampit.dataio.crops import repeat_to_length  # noqa: E402
from dampit.dataio.sampler import PKSampler  # noqa: E402
from dampit.lobes.features import CropNormalization, Spectrogram  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import format_rows, resolve_device  # noqa: E402

SR = 16000
CROP = 3 * SR


def data_root(data=None):
    """The shared data folder: ``data``, ``$DAMPIT_DATA`` or the default.

    Arguments
    ---------
    data : str or None
        Explicit folder.

    Returns
    -------
    pathlib.Path
        The folder holding dspspeech/, noise/ and rir/.
    """
    root = data or os.environ.get("DAMPIT_DATA") or REPO.parent / "shared/data"
    root = pathlib.Path(root)
    if not (root / "dspspeech" / "manifest.csv").is_file():
        raise FileNotFoundError(
            f"dspspeech not found under {root} (use --data or DAMPIT_DATA)"
        )
    return root


def _manifest(root):
    """(paths, speakers) of dspspeech."""
    with open(root / "dspspeech" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = [str(root / "dspspeech" / r["path"]) for r in rows]
    return paths, [r["speaker"] for r in rows]


def _best_of(fn, repeats):
    """Smallest wall time of ``repeats`` calls of ``fn``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_features(root, quick):
    """Rows 1-2: torch Spectrogram against librosa.

    Arguments
    ---------
    root : pathlib.Path
        Shared data folder.
    quick : bool
        Fewer utterances.

    Returns
    -------
    list of dict
        Benchmark rows.
    """
    import librosa

    paths, _ = _manifest(root)
    n_utts = 16 if quick else 100
    wavs = [load_audio(p) for p in paths[:: len(paths) // n_utts][:n_utts]]
    spec = Spectrogram()

    def with_librosa(ws):
        for w in ws:
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

    def with_torch(ws):
        with torch.no_grad():
            for w in ws:
                spec(w)

    with_librosa(wavs[:1])  # numba compilation, once
    with_torch(wavs[:1])
    repeats = 2 if quick else 3
    t_lib = _best_of(lambda: with_librosa(wavs), repeats)
    t_torch = _best_of(lambda: with_torch(wavs), repeats)
    threads = torch.get_num_threads()
    rows = [
        {
            "name": "spectrogram_per_utterance",
            "figure": 1000 * t_torch / len(wavs),
            "unit": "ms/utterance",
            "reference": 1000 * t_lib / len(wavs),
            "ratio": t_lib / t_torch,
            "note": (
                f"torch Spectrogram vs librosa log1p|stft|, {len(wavs)} real "
                f"dspspeech utterances one at a time, CPU, {threads} torch "
                "threads; ratio = librosa time / torch time"
            ),
        }
    ]
    n_crops = 32 if quick else 128
    crops = torch.stack(
        [repeat_to_length(wavs[i % len(wavs)], CROP) for i in range(n_crops)]
    )
    t_lib = _best_of(lambda: with_librosa(list(crops)), repeats)
    t_batch = _best_of(lambda: with_torch([crops]), repeats)
    rows.append(
        {
            "name": "spectrogram_batched",
            "figure": 1000 * t_batch / n_crops,
            "unit": "ms/crop",
            "reference": 1000 * t_lib / n_crops,
            "ratio": t_lib / t_batch,
            "note": (
                f"one batch of {n_crops} 3 s crops in one call vs librosa "
                "crop by crop; ratio = librosa time / torch time"
            ),
        }
    )
    return rows


class CropDataset(torch.utils.data.Dataset):
    """Real utterances, read and randomly cropped to 3 s on the fly.

    Arguments
    ---------
    paths : list of str
        Audio files.
    labels : list
        Speaker of each file.
    """

    def __init__(self, paths, labels):
        self.paths = paths
        spk = sorted(set(labels))
        self.labels = [spk.index(s) for s in labels]

    def __len__(self):
        """Number of utterances."""
        return len(self.paths)

    def __getitem__(self, i):
        """(3 s crop, speaker index)."""
        return read_crop(self.paths[i], CROP), self.labels[i]


class AugmentFeaturesCollate:
    """Stack crops, augment them and compute normalised features.

    Arguments
    ---------
    augment : FolderAugment
        The augmentation module.
    """

    def __init__(self, augment):
        self.augment = augment
        self.spec = Spectrogram()
        self.norm = CropNormalization("scalar")

    def __call__(self, items):
        """Collate ``[(wav, label)]`` into ``(feats [B, T, 161], labels)``."""
        wavs = torch.stack([w for w, _ in items])
        labels = torch.tensor([lab for _, lab in items])
        lengths = torch.ones(len(items))
        with torch.no_grad():
            wavs, lengths = self.augment(wavs, lengths)
            feats = self.norm(self.spec(wavs), lengths)
        return feats, labels


def _make_model():
    """The thin SEResNet and a loss, or (None, reason)."""
    try:
        from dampit.lobes.resnet import SEResNet
    except ImportError as err:
        return None, None, f"dampit.lobes.resnet not importable: {err}"
    model = SEResNet(depth=50, base_width=16, emb_dim=512)
    try:
        from dampit.losses import TripletLoss

        loss = TripletLoss(margin=0.5, mining="batch_hard")
        name = "batch-hard triplet loss"
    except ImportError:
        loss = None
        name = "mean squared embedding (dampit.losses not importable)"
    return model, loss, name


def bench_loader(root, quick, workers=2):
    """Row 3: loader batches/s against model batches/s.

    Arguments
    ---------
    root : pathlib.Path
        Shared data folder.
    quick : bool
        Smaller batches (P=8) and fewer of them.
    workers : int
        DataLoader worker processes.

    Returns
    -------
    list of dict
        Benchmark rows.
    """
    # dspspeech has 25 speakers: the paper's batch of 128 as 16 x 8.
    P, K = (8, 2) if quick else (16, 8)
    n_batches = 3 if quick else 6
    paths, speakers = _manifest(root)
    dataset = CropDataset(paths, speakers)
    augment = FolderAugment(
        noise_folder=root / "noise",
        rir_folder=root / "rir",
        snr_low=0,
        snr_high=15,
        noise_prob=1.0,
        reverb_prob=0.5,
    )
    sampler = PKSampler(
        dataset.labels, P, K, seed=0, batches_per_epoch=n_batches + 1
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=AugmentFeaturesCollate(augment),
        prefetch_factor=2 if workers else None,
    )
    it = iter(loader)
    feats, labels = next(it)  # worker start-up, not timed
    t0 = time.perf_counter()
    got = 0
    for feats, labels in it:
        got += 1
    t_loader = (time.perf_counter() - t0) / got
    del it, loader

    model, loss_fn, loss_name = _make_model()
    device, _ = resolve_device()
    loader_bps = 1 / t_loader
    note_loader = (
        f"P={P} K={K}, {workers} workers: read + 3 s crop + noise "
        "(p=1, SNR 0-15 dB) + reverb (p=0.5) + spectrogram + norm"
    )
    if model is None:
        return [
            {
                "name": "loader_vs_model",
                "figure": loader_bps,
                "unit": "batches/s",
                "reference": float("nan"),
                "ratio": float("nan"),
                "note": f"{note_loader}; no model: {loss_name}",
            }
        ]
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    feats, labels = feats.to(device), labels.to(device)

    def step():
        opt.zero_grad()
        emb = model(feats)
        if loss_fn is None:
            loss = emb.pow(2).mean()
        else:
            loss = loss_fn(emb, labels)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    t_model = _best_of(step, 2 if quick else 3)
    model_bps = 1 / t_model
    return [
        {
            "name": "loader_vs_model",
            "figure": loader_bps,
            "unit": "batches/s",
            "reference": model_bps,
            "ratio": loader_bps / model_bps,
            "note": (
                f"{note_loader}; model: SEResNet-50 base_width=16 "
                f"fwd+bwd+Adam, {loss_name}, on {device} "
                f"({torch.get_num_threads()} threads); ratio = loader "
                "batches/s / model batches/s (>1: the loader keeps up)"
            ),
        }
    ]


def run(quick, data=None, workers=2, threads=1):
    """Run all data-pipeline benchmarks.

    Arguments
    ---------
    quick : bool
        Small sizes (a minute or so on 2 CPU cores).
    data : str or None
        Shared data folder (default: ``$DAMPIT_DATA`` or ../shared/data).
    workers : int
        DataLoader workers for the loader benchmark (1 thread each, as
        DataLoader sets it).
    threads : int
        torch threads for the features and the model (default 1: on a
        shared, busy machine more threads make timings erratic, and
        librosa's FFT is single-threaded too).

    Returns
    -------
    list of dict
        Rows with name, figure, unit, reference, ratio, note.
    """
    root = data_root(data)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = bench_features(root, quick)
        rows += bench_loader(root, quick, workers=workers)
    finally:
        torch.set_num_threads(before)
    return rows


def main(argv=None):
    """Command line: print the rows as a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--data", default=None, help="shared data folder")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    rows = run(
        args.quick, data=args.data, workers=args.workers, threads=args.threads
    )
    print(format_rows(rows))
    return rows


if __name__ == "__main__":
    main()
