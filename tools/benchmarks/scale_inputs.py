"""Inputs of ``tools/bench_scale.py``, built from ../shared/data.

- ``make_sources``: a few real-format wavs of VoxCeleb's mean length
  (about 8 s: DSPSpeech words of one speaker, back to back; 16 kHz PCM16);
- ``make_voxceleb_tree``: a VoxCeleb1 + VoxCeleb2 layout of ``n_files``
  symlinks to them, with a VoxCeleb1-O style trial list;
- ``write_manifest``: a SpeechBrain CSV over the tree's VoxCeleb2 part;
- ``vox_labels``: speaker labels of VoxCeleb2 dev's size (synthetic);
- ``write_id_trials``: a trial list over store IDs (Vox1-E size).
"""

import csv
import os

import numpy as np
import soundfile as sf

from dampit.dataio.preparation import scan_audio_tree
from dampit.dataio.trials import speaker_of, utt_to_id

SR = 16000
UTTS_PER_VIDEO = 8


def make_sources(data, folder, n=24, seconds=8.0):
    """``n`` wavs of ``seconds`` s, each words of one DSPSpeech speaker."""
    os.makedirs(folder, exist_ok=True)
    root = os.path.join(data, "dspspeech")
    by_speaker = {}
    for rel in scan_audio_tree(root):
        path = os.path.join(root, *rel.split("/"))
        by_speaker.setdefault(speaker_of(rel), []).append(path)
    speakers = sorted(by_speaker)
    out = []
    for k in range(n):
        words = by_speaker[speakers[k % len(speakers)]]
        parts, total, j = [], 0, k // len(speakers)
        while total < seconds * SR:
            wav, sr = sf.read(words[j % len(words)], dtype="int16")
            parts.append(wav)
            total, j = total + len(wav), j + 1
        path = os.path.join(folder, f"src{k:03d}.wav")
        sf.write(path, np.concatenate(parts)[: int(seconds * SR)], SR)
        out.append(path)
    return out


def _link(sources, path, k):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(sources[k % len(sources)], path)


def make_voxceleb_tree(root, n_files, sources, utts_per_spk=180):
    """``<root>/voxceleb{1,2}`` with ``n_files`` wavs in all; returns
    ``(vox1 folder, vox2 folder, trial list, VoxCeleb2 files)``.

    VoxCeleb1 holds 8 test speakers x 10 files and a 200-trial list;
    VoxCeleb2 ``dev/wav`` the rest, ``utts_per_spk`` files per speaker
    (VoxCeleb2 dev: 182 on average) in videos of 8.
    """
    vox1, vox2 = (
        os.path.join(root, "voxceleb1"),
        os.path.join(root, "voxceleb2"),
    )
    test = []
    for s in range(8):
        for u in range(10):
            rel = f"id1{s:04d}/vid{u // 5:07d}/{u:05d}.wav"
            _link(sources, os.path.join(vox1, "wav", rel), len(test))
            test.append(rel)
    rng = np.random.default_rng(0)
    lines = []
    for t in range(200):
        a, b = rng.choice(len(test), 2, replace=False)
        if t % 2 == 0:  # a target trial: same speaker
            b = (a // 10) * 10 + (a + 1 + int(rng.integers(9))) % 10
        same = test[a][:7] == test[b][:7]
        lines.append(f"{int(same)} {test[a]} {test[b]}\n")
    meta = os.path.join(vox1, "meta")
    os.makedirs(meta, exist_ok=True)
    trials = os.path.join(meta, "veri_test.txt")
    with open(trials, "w") as f:
        f.writelines(lines)
    files = []
    for k in range(n_files - len(test)):
        spk, u = divmod(k, utts_per_spk)
        rel = f"id0{spk:04d}/v{u // UTTS_PER_VIDEO:010d}/{u:05d}.wav"
        path = os.path.join(vox2, "dev", "wav", rel)
        _link(sources, path, k)
        files.append(path)
    return vox1, vox2, trials, files


def vox_id(path):
    """Utterance ID of ``.../<spk>/<video>/<utt>.wav``: ``spk/video/utt``."""
    return utt_to_id("/".join(path.split(os.sep)[-3:]))


def write_manifest(path, files, frames):
    """A SpeechBrain CSV (``ID, duration, wav, start, stop, spk_id``) of
    ``files`` (``.../<spk>/<video>/<utt>.wav``), ``frames`` samples each."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav", "start", "stop", "spk_id"])
        for p in files:
            uid = vox_id(p)
            w.writerow([uid, frames / SR, p, 0, frames, speaker_of(uid)])


def vox_labels(n_utts=1092009, n_spk=5994, seed=0):
    """Speaker label strings of ``n_utts`` utterances over ``n_spk``
    speakers, counts log-normal like VoxCeleb2's (at least 2 each)."""
    rng = np.random.default_rng(seed)
    w = rng.lognormal(0.0, 0.6, n_spk)
    counts = 2 + np.floor(w / w.sum() * (n_utts - 2 * n_spk)).astype(int)
    counts[: n_utts - counts.sum()] += 1
    names = np.array([f"id{s:05d}" for s in range(n_spk)], dtype=object)
    return np.repeat(names, counts)[rng.permutation(n_utts)].tolist()


def write_id_trials(path, ids, n_trials, utts_per_spk=116, seed=0):
    """``label enrol test`` lines over ``ids`` (speaker = row //
    ``utts_per_spk``); half target trials, streamed to disk."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    with open(path, "w") as f:
        for s in range(0, n_trials, 100000):
            m = min(100000, n_trials - s)
            a = rng.integers(0, n, m)
            b = rng.integers(0, n, m)
            same = rng.random(m) < 0.5
            spk = a // utts_per_spk * utts_per_spk
            b[same] = np.minimum(spk[same] + b[same] % utts_per_spk, n - 1)
            lab = (a // utts_per_spk == b // utts_per_spk).astype(int)
            f.writelines(
                f"{x} {ids[i]} {ids[j]}\n" for x, i, j in zip(lab, a, b)
            )
