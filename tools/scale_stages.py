"""The measured stages of ``tools/bench_scale.py``, one per interpreter.

Each stage returns a dict of figures; ``python tools/scale_stages.py NAME
KWARGS.json`` runs one in a fresh process, adds its memory and prints the
result as one JSON line. Memory: ``peak_rss_mb`` (VmHWM of
/proc/self/status: peak resident memory, memory-mapped file pages
included), ``peak_anon_mb`` (peak RssAnon, sampled every 5 ms: what the
process allocated, no page cache), and both after the imports, before
the stage (``base_rss_mb``, ``base_anon_mb``). Times: ``cpu_s`` (CPU time
of all the process's threads) and ``wall_s``.
"""

import builtins
import contextlib
import csv
import importlib.util
import json
import os
import pathlib
import sys
import threading
import time

import numpy as np
import soundfile as sf
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from scale_inputs import vox_labels  # noqa: E402

from dampit.cli.verify import main as verify_main  # noqa: E402
from dampit.dataio.audio import load_audio  # noqa: E402
from dampit.dataio.augment import FolderAugment  # noqa: E402
from dampit.dataio.crops import eval_crops  # noqa: E402
from dampit.dataio.prepare_voxceleb import prepare_voxceleb  # noqa: E402
from dampit.dataio.sampler import PKSampler  # noqa: E402
from dampit.dataio.trials import read_trial_indices  # noqa: E402
from dampit.metrics.embedding_store import (  # noqa: E402
    EmbeddingStore,
    EmbeddingStoreWriter,
)
from dampit.metrics.error_rates import compute_eer, compute_min_dcf  # noqa
from dampit.metrics.multicrop import ScoringVectors  # noqa: E402
from dampit.recipe.verification import embed, utterance_loader  # noqa: E402

CROP = 299 * 160  # the paper's 3 s crop (300 frames), in samples


def status_mb(key):
    """A ``kB`` line of /proc/self/status, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class AnonPeak:
    """Peak RssAnon of this process, sampled by a thread every 5 ms."""

    def __init__(self):
        self.peak, self._stop = status_mb("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, status_mb("RssAnon"))

    def stop(self):
        """Stop sampling; return the peak RssAnon in MB."""
        self._stop.set()
        self._thread.join()
        return max(self.peak, status_mb("RssAnon"))


@contextlib.contextmanager
def timed(out, prefix=""):
    """Put ``<prefix>cpu_s``, ``<prefix>wall_s`` and ``<prefix>child_cpu_s``
    (reaped child processes: DataLoader workers) of the block in out."""
    c, w, k = time.process_time(), time.perf_counter(), os.times()
    yield
    out[prefix + "cpu_s"] = time.process_time() - c
    out[prefix + "wall_s"] = time.perf_counter() - w
    t = os.times()
    out[prefix + "child_cpu_s"] = sum(t[2:4]) - sum(k[2:4])


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


def _recipe():
    """recipes/VoxCeleb/train.py, imported by path."""
    path = REPO / "recipes" / "VoxCeleb" / "train.py"
    spec = importlib.util.spec_from_file_location("_scale_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def loader(manifest, root, save, workers, n_batches, P=64, K=2):
    """Crops/s of the recipe's training loader (dataio_prep +
    make_train_loader: read_crop, PKSampler, PaddedBatch); file opens per
    sample counted in this process (0 workers)."""
    train = _recipe()
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    hp = dict(sample_rate=16000, crop_samples=CROP, data_folder=root)
    n_spk = len({r["spk_id"] for r in rows})
    hp.update(save_folder=save, n_speakers=n_spk, P=P, K=K, seed=0)
    hp.update(batches_per_epoch=n_batches + 1, num_workers=workers)
    os.makedirs(save, exist_ok=True)
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
    out["opens_per_sample"] = (opens["n"] - n0) / n if workers == 0 else None
    return out


def augment(noise, rir, files, n_batches, batch=128, prob=0.6):
    """Crops/s of FolderAugment (noise + reverberation, as the recipe runs
    it on each batch in the training process); opens per crop."""
    torch.manual_seed(0)
    aug = FolderAugment(noise, rir, noise_prob=prob, reverb_prob=prob)
    wavs = torch.stack([load_audio(f)[:CROP] for f in files[:batch]])
    out = {}
    aug(wavs, torch.ones(batch))
    with count_opens(os.path.commonpath([noise, rir])) as opens:
        with timed(out):
            for _ in range(n_batches):
                aug(wavs, torch.ones(batch))
    out["crops_per_s"] = n_batches * batch / out["wall_s"]
    out["crops_per_cpu_s"] = n_batches * batch / out["cpu_s"]
    out["opens_per_crop"] = opens["n"] / (n_batches * batch)
    return out


def score(folder, trials, n_utts, n_crops, dim):
    """Random crop embeddings written with EmbeddingStoreWriter; one pass
    over the store (the reference); then trial list -> multi-crop mean
    ("dot", the paper's) -> EER, minDCF."""
    rng, out, step = np.random.default_rng(0), {}, 256
    with timed(out, "write_"):
        with EmbeddingStoreWriter(folder, n_utts, (n_crops, dim)) as w:
            for s in range(0, n_utts, step):
                m = min(step, n_utts - s)
                emb = rng.standard_normal((m, n_crops, dim), np.float32)
                w.add_batch([f"u{u:07d}" for u in range(s, s + m)], emb)
    out["gb"] = n_utts * n_crops * dim * 4 / 1e9
    emb = EmbeddingStore(folder).embeddings
    with timed(out, "read_"):
        for s in range(0, len(emb), step):
            np.asarray(emb[s : s + step]).sum()
    out["base_anon_mb"], peak = status_mb("RssAnon"), AnonPeak()
    with timed(out):
        store = EmbeddingStore(folder)
        enrol, test, labels, _ = read_trial_indices(trials, store.index)
        vectors = ScoringVectors.from_embeddings(store, "dot")
        scores = vectors.score_pairs(enrol, test)
        out["eer"] = compute_eer(scores, labels)[0]
        out["min_dcf"] = compute_min_dcf(scores, labels)[0]
    out["peak_anon_mb"] = peak.stop()
    out["n_trials"], out["n_utts"] = len(scores), len(store)
    out["vectors_mb"] = vectors.vectors.nbytes / 2**20
    return out


def cli(model, trials, root, scores):
    """``dampit-verify --trials`` (its main, in this interpreter)."""
    out = {}
    args = ["--model", model, "--trials", trials, "--audio-root", root]
    with timed(out):
        out["status"] = verify_main(args + ["--out", scores, "--no-progress"])
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


STAGES = {
    f.__name__: f
    for f in (
        prep,
        headers,
        sampler,
        loader,
        augment,
        score,
        cli,
        verify_loading,
    )
}


def run_stage(name, kwargs):
    """Run one stage here with its memory figures (see module doc)."""
    torch.set_num_threads(1)
    base, base_anon = status_mb("VmHWM"), status_mb("RssAnon")
    anon = AnonPeak()
    res = STAGES[name](**kwargs)
    peak = anon.stop()
    res.setdefault("base_anon_mb", base_anon)
    res.setdefault("peak_anon_mb", peak)
    res.update(peak_rss_mb=status_mb("VmHWM"), base_rss_mb=base)
    return res


if __name__ == "__main__":
    with open(sys.argv[2]) as f:
        print(json.dumps(run_stage(sys.argv[1], json.load(f))))
