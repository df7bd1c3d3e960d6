"""The measured stages of ``bench_scale.py``, each run in its own
interpreter by ``benchlib.isolated`` (which adds the memory figures).
Each returns a dict of figures: ``cpu_s`` (CPU time of all the process's
threads), ``wall_s``, ``child_cpu_s`` (reaped DataLoader workers).
"""

import builtins
import contextlib
import csv
import os

import numpy as np
import soundfile as sf
import torch
from benchlib import REPO, load_file, timed
from scale_inputs import vox_labels

from dampit.dataio.audio import load_audio
from dampit.dataio.augment import FolderAugment
from dampit.dataio.crops import eval_crops
from dampit.dataio.prepare_voxceleb import prepare_voxceleb
from dampit.dataio.sampler import PKSampler
from dampit.training.verification import embed, utterance_loader
from dampit.utils.checkpoints import AtomicCheckpointer

CROP = 299 * 160  # the paper's 3 s crop (300 frames), in samples


@contextlib.contextmanager
def count_opens(under):
    """Count opens of files under ``under`` by soundfile (libsndfile) and
    by Python's ``open`` in this process (a measurement, not a mock: the
    real functions run). Yields a dict ``{"n": count}``."""
    seen, real_sf, real_open = {"n": 0}, sf.SoundFile, builtins.open
    under = os.fspath(under)

    def mine(path):
        return isinstance(path, (str, os.PathLike)) and os.fspath(
            path
        ).startswith(under)

    class Counted(real_sf):
        def __init__(self, file, *args, **kwargs):
            seen["n"] += mine(file)
            super().__init__(file, *args, **kwargs)

    def counted_open(file, *args, **kwargs):
        seen["n"] += mine(file)
        return real_open(file, *args, **kwargs)

    sf.SoundFile, builtins.open = Counted, counted_open
    try:
        yield seen
    finally:
        sf.SoundFile, builtins.open = real_sf, real_open


def prep(save, vox1, vox2, trials):
    """prepare_voxceleb over the tree (it checks every file)."""
    out = {}
    with timed(out):
        res = prepare_voxceleb(
            save, vox1, vox2, trial_lists=[trials], train_sets=["vox2"]
        )
    out["n_train_dev"] = res["n_train"] + res["n_dev"]
    out["n_files"] = out["n_train_dev"] + res["n_test_utts"]
    return out


def headers(files):
    """References: soundfile.info of every file (header reads), then
    soundfile.read of every file (the bare decode, float32 and int16)."""
    out = {}
    with timed(out):
        frames = sum(sf.info(p).frames for p in files)
    out["audio_hours"] = frames / 16000 / 3600
    with timed(out, "decode_"):
        for p in files:
            sf.read(p, dtype="float32")
    with timed(out, "decode_int16_"):  # a full decode of PCM16
        for p in files:
            sf.read(p, dtype="int16")
    return out


def sampler(n_utts, n_spk, P=64, K=2):
    """PKSampler construction + one epoch of batches; reference: a plain
    shuffle cut into batches of P * K."""
    labels = vox_labels(n_utts, n_spk)
    out = {}
    with timed(out, "build_"):
        s = PKSampler(labels, P=P, K=K, seed=0)
    with timed(out, "epoch_"):
        batches = s.global_batches(0)
    with timed(out, "ref_"):
        perm = np.random.default_rng(0).permutation(n_utts)
        ref = perm[: len(perm) // (P * K) * P * K].reshape(-1, P * K).tolist()
    out["n_batches"], out["ref_batches"] = len(batches), len(ref)
    out["speakers_ok"] = all(
        len({labels[i] for i in b[::K]}) == P for b in batches[:200]
    )
    return out


def bare_crops(files, n):
    """Reference: ``n`` 3 s crops read with soundfile (seek + read)."""
    out, rng = {}, np.random.default_rng(0)
    with timed(out):
        for k in range(n):
            with sf.SoundFile(files[k % len(files)]) as f:
                f.seek(int(rng.integers(0, f.frames - CROP)))
                f.read(CROP, "float32")
    out["crops_per_s"] = n / out["wall_s"]
    out["crops_per_cpu_s"] = n / out["cpu_s"]
    return out


def loader(manifest, root, save, workers, n_batches, P=64, K=2, aug=None):
    """Crops/s of the recipe's training loader (dataio_prep +
    make_train_loader: read_crop, PKSampler, PaddedBatch; ``aug``: the
    noise and RIR folders of FolderAugment, probability 0.6 each, added
    per crop); file opens per sample counted in this process (0 workers);
    this process's CPU time per batch."""
    train = load_file(REPO / "recipes" / "VoxCeleb" / "train.py")
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    hp = dict(sample_rate=16000, crop_samples=CROP, data_folder=root)
    n_spk = len({r["spk_id"] for r in rows})
    hp.update(save_folder=save, n_speakers=n_spk, P=P, K=K, seed=0)
    hp.update(batches_per_epoch=n_batches + 1, num_workers=workers)
    if aug:
        hp["augment"] = FolderAugment(*aug, noise_prob=0.6, reverb_prob=0.6)
    os.makedirs(save, exist_ok=True)
    hp["checkpointer"] = AtomicCheckpointer(save)  # the loader registers
    data = train.dataio_prep(hp, {"train": manifest, "dev": manifest})[0]
    dl, _ = train.make_train_loader(hp, data)
    out = {}
    if workers == 0:
        files = [r["wav"] for r in rows]
        out["bare"] = bare_crops(files, n_batches * P * K)
    with count_opens(root) as opens:
        it = iter(dl)
        next(it)  # workers started, first batch out
        n0 = opens["n"]
        with timed(out):
            n = sum(len(b.id) for _, b in zip(range(n_batches), it))
    out["crops"] = n
    out["crops_per_s"] = n / out["wall_s"]
    out["crops_per_cpu_s"] = n / out["cpu_s"]  # 0 workers: one core's
    out["main_cpu_ms_per_batch"] = 1000 * out["cpu_s"] / n_batches
    out["opens_per_sample"] = (opens["n"] - n0) / n if workers == 0 else None
    return out


def augment(noise, rir, files, n_batches, batch=128, prob=0.6):
    """Crops/s of FolderAugment (noise + reverberation, as the recipe's
    loader workers run it: on each crop alone); opens per crop."""
    torch.manual_seed(0)
    aug = FolderAugment(noise, rir, noise_prob=prob, reverb_prob=prob)
    wavs = torch.stack([load_audio(f)[:CROP] for f in files[:batch]])
    out = {}
    aug(wavs[:1])
    with count_opens(os.path.commonpath([noise, rir])) as opens:
        with timed(out):
            for _ in range(n_batches):
                for wav in wavs:
                    aug(wav[None])
    out["crops_per_s"] = n_batches * batch / out["wall_s"]
    out["crops_per_cpu_s"] = n_batches * batch / out["cpu_s"]
    out["opens_per_crop"] = opens["n"] / (n_batches * batch)
    return out


def verify_loading(manifest, root, ids, workers):
    """Files/s of the recipe's verification loader and ``embed`` (whole
    signal and 10 crops per file, a trivial network); with 0 workers also
    of a plain serial loop over the files (load_audio + eval_crops)."""
    hp = dict(data_folder=root, sample_rate=16000, hop_length=160)
    hp.update(test_crop_frames=300, test_batch_size=16, num_workers=workers)
    out, n, ids = {}, 0, set(ids)
    if workers == 0:
        with timed(out, "serial_"), open(manifest) as f:
            for row in csv.DictReader(f):
                if row["ID"] in ids:
                    eval_crops(load_audio(row["wav"]), 10, CROP)
                    n += 1
        out["serial_files_per_s"] = n / out["serial_wall_s"]
    # a trivial network; a copy, not a view that would keep the batch alive
    first = lambda w, _: w[:, None, :1].clone()  # noqa: E731
    with timed(out):  # embed cuts the crops
        loader = utterance_loader(hp, manifest, ids, 10)
        n = len(embed(first, loader, 160, "cpu", None, False)[0])
        del loader  # its workers are reaped: their CPU time is counted
    out["files"], out["files_per_s"] = n, n / out["wall_s"]
    return out
