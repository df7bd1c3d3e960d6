"""The recipe's training epoch, timed for ``tools/gpu_check.py``.

:func:`recipe_epoch` trains ``recipes/VoxCeleb/train.py``'s
``MultiMetricBrain`` (SpeechBrain's ``fit``: features, network, the
four-term loss, gradient clipping, the per-term logs and the embedding
health) on the recipe's own training loader (``dataio_prep`` and
``make_train_loader``: P x K batches of the YAML's crops read in ``workers``
DataLoader workers, each crop reverberated and given noise with
probability 0.6, as ``augment_prob`` does with MUSAN and RIRS_NOISES)
for one epoch of ``warmup + steps`` batches, without validation. The
speech is the built-in synthetic corpus (``dampit-synth``: P speakers,
utterances of 3 to 6 s), the noise and the room impulse responses are
synthetic too (white noise; decaying noise after a direct path). The
time of the last ``steps`` batches (from the end of batch ``warmup`` to
the end of the last one, the GPU synchronised) gives the samples/s that
``gpu_check.py`` divides by its bare step's; the time between a batch's
end and the next one's start is the wait for the loader, and the
training process's CPU time per batch says how busy it is.
"""

import csv
import os
import pathlib
import time

import numpy as np
import soundfile as sf
import torch
from benchmarks.benchlib import load_file

from dampit.dataio.synthetic import generate_corpus
from dampit.utils.hparams import load_hparams

REPO = pathlib.Path(__file__).resolve().parents[1]
train = load_file(REPO / "recipes" / "VoxCeleb" / "train.py")
SR = 16000


class TimedBrain(train.MultiMetricBrain):
    """The recipe's Brain, noting when each training batch starts and
    ends (wall time; the end also in this process's CPU time)."""

    def on_fit_batch_start(self, batch, should_step):
        """Note the time the batch came out of the loader."""
        self.batch_starts.append(time.perf_counter())

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Wait for the device, then note the time."""
        if self.device_type == "cuda":
            torch.cuda.synchronize(self.device)
        self.batch_ends.append(time.perf_counter())
        self.batch_cpu.append(time.process_time())


def write_folders(tmp):
    """Noise and RIR folders of synthetic audio: 3 white noises of 20 s,
    3 impulse responses of 0.6 s (a direct path, then noise decaying with
    a time constant of 0.1 to 0.3 s)."""
    rng = np.random.default_rng(0)
    noise, rir = os.path.join(tmp, "noise"), os.path.join(tmp, "rir")
    for folder in (noise, rir):
        os.makedirs(folder, exist_ok=True)
    t = np.arange(int(0.6 * SR)) / SR
    for k in range(3):
        white = 0.1 * rng.standard_normal(20 * SR)
        sf.write(os.path.join(noise, f"noise{k}.wav"), white, SR)
        h = 0.3 * rng.standard_normal(len(t)) * np.exp(-t / (0.1 + 0.1 * k))
        h[0] = 1.0
        sf.write(os.path.join(rir, f"rir{k}.wav"), h / np.abs(h).max(), SR)
    return noise, rir


def write_train_csv(tmp, n_speakers, utts, workers):
    """The synthetic corpus and the recipe's training CSV of it."""
    corpus = os.path.join(tmp, "corpus")
    manifest = generate_corpus(
        corpus,
        n_speakers=n_speakers,
        utts_per_speaker=utts,
        duration=(3.0, 6.0),
        workers=workers,
        progress=False,
    )
    path = os.path.join(tmp, "train.csv")
    with open(manifest, newline="") as f, open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["ID", "duration", "wav", "start", "stop", "spk_id"])
        for row in csv.DictReader(f):
            wav = os.path.join(corpus, row["path"])
            stop = sf.info(wav).frames
            uid = row["path"][: -len(".wav")]
            writer.writerow([uid, stop / SR, wav, 0, stop, row["speaker"]])
    return path


def recipe_epoch(yaml, tmp, device, mode, P, K, steps, warmup, workers, extra):
    """Samples/s of the recipe's training loop (see the module docstring).

    Arguments
    ---------
    yaml : str or pathlib.Path
        The recipe's configuration (multi_metric.yaml: the paper's model).
    tmp : str
        A scratch folder (the corpus, the run).
    device : torch.device
        Where to train.
    mode : str
        ``"fp32"`` or ``"bf16"``, with ``"+channels_last"`` or not (the
        recipe's ``--precision=bf16`` and ``channels_last``).
    P, K : int
        Speakers per batch and utterances per speaker.
    steps, warmup : int
        Timed batches and the batches before them (``warmup >= 1``).
    workers : int
        DataLoader workers (and processes making the corpus).
    extra : dict
        More overrides of the YAML (the CPU mode's shorter crops).

    Returns
    -------
    dict
        ``samples_per_s``, ``step_ms``, ``wait_ms`` (for the loader) and
        ``main_cpu_ms`` (per timed batch), ``loss`` (the epoch's mean),
        ``finite`` and the settings.
    """
    noise, rir = write_folders(tmp)
    train_csv = write_train_csv(tmp, P, K + 2, max(1, workers))
    overrides = dict(
        extra,
        data_folder=tmp,
        output_folder=os.path.join(tmp, "run"),
        noise_folder=noise,
        rir_folder=rir,
        augment_prob=0.6,
        n_speakers=P,
        P=P,
        K=K,
        batches_per_epoch=warmup + steps,
        number_of_epochs=1,
        num_workers=workers,
        channels_last="channels_last" in mode,
    )
    hp = load_hparams(yaml, overrides)[0]
    os.makedirs(hp["save_folder"], exist_ok=True)
    data = train.dataio_prep(hp, {"train": train_csv, "dev": train_csv})[0]
    run_opts = dict(device=str(device), noprogressbar=True)
    run_opts.update(precision="bf16" if mode.startswith("bf16") else "fp32")
    run_opts.update(ckpt_interval_minutes=0)
    brain = TimedBrain(
        modules=hp["modules"],
        opt_class=hp["opt_class"],
        hparams=hp,
        run_opts=run_opts,
        checkpointer=hp["checkpointer"],
    )
    brain.batch_starts, brain.batch_ends, brain.batch_cpu = [], [], []
    loader, brain.pk_sampler = train.make_train_loader(hp, data)
    brain.fit(hp["epoch_counter"], loader, None)
    ends, starts = brain.batch_ends, brain.batch_starts[warmup:]
    seconds = ends[-1] - ends[warmup - 1]
    waits = [s - e for s, e in zip(starts, ends[warmup - 1 :])]
    cpu = brain.batch_cpu[-1] - brain.batch_cpu[warmup - 1]
    loss = float(brain.train_stats["loss"])
    return dict(
        samples_per_s=steps * P * K / seconds,
        step_ms=1000 * seconds / steps,
        wait_ms=1000 * sum(waits) / steps,
        main_cpu_ms=1000 * cpu / steps,
        batches=len(ends),
        loss=loss,
        finite=bool(np.isfinite(loss)),
        workers=workers,
        mode=mode,
    )
