"""Prepare any ``<speaker>/**/<utt>.wav|flac`` folder for speaker verification.

:func:`prepare_folder` splits the speakers (first path component) into
disjoint training and test sets from a seed and writes SpeechBrain CSV
manifests (``ID, duration, wav, start, stop, spk_id``; ``ID`` is the path
relative to the data folder without extension, ``start``/``stop`` are
samples at the file's own rate) and a trial list:

- ``train.csv`` / ``dev.csv``: the training speakers' utterances, 10 % of
  each speaker's held out in ``dev.csv`` (validation of the classifier),
  or ``n_valid_speakers`` speakers of their own in ``dev.csv``;
- ``test.csv`` and ``trials.txt``: the test speakers' utterances, every
  same-speaker pair and as many different-speaker pairs.

Every file is checked once (``check_audio``: decoded until it is proven
usable): files training cannot use (unreadable, NaN, silent, shorter than
``MIN_DURATION``) are all listed in ``bad_files.txt``
and refused in one error, or skipped with ``skip_bad=True``. Data errors are
``DataPreparationError`` with a one-line message naming the folder, raised
before anything is written. The helpers are shared with
:mod:`dampit.dataio.prepare_voxceleb`.
"""

import csv
import json
import os
import warnings
from collections import Counter

import numpy as np
from speechbrain.dataio.dataio import load_data_csv
from tqdm import tqdm

from dampit.dataio.audio import AUDIO_EXTENSIONS, AudioError, check_audio
from dampit.dataio.trials import make_trials, trial_summary, write_trials
from dampit.utils.atomic import atomic_path, atomic_write_text

CSV_FIELDS = ("ID", "duration", "wav", "start", "stop", "spk_id")
OPTS_FILE = "prepare_opts.json"
BAD_FILES = "bad_files.txt"
DEV_FRACTION = 0.1


class DataPreparationError(ValueError):
    """Data that cannot be prepared; the message names the folder or file."""


def scan_audio_tree(root, exts=AUDIO_EXTENSIONS, min_depth=2):
    """Audio files under ``root`` at least ``min_depth`` components deep, as
    sorted relative POSIX paths; hidden names are skipped, links followed.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(d, "s1", "x"))
    >>> for f in ["s1/x/b.WAV", "s1/a.flac", "readme.wav", "s1/.c.wav"]:
    ...     open(os.path.join(d, f), "w").close()
    >>> scan_audio_tree(d)
    ['s1/a.flac', 's1/x/b.WAV']
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataPreparationError(f"data folder not found: {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        parts = [] if rel == "." else rel.split(os.sep)
        found += [
            "/".join(parts + [name])
            for name in filenames
            if len(parts) + 1 >= min_depth
            and not name.startswith(".")
            and name.lower().endswith(tuple(exts))
        ]
    return sorted(found)


def path_to_id(rel_path):
    """CSV ID of a file: its relative path without extension.

    Example
    -------
    >>> path_to_id("id10270/x6uYqmx31kE/00001.wav")
    'id10270/x6uYqmx31kE/00001'
    """
    return os.path.splitext(rel_path.replace("\\", "/"))[0]


def unique_ids(rel_paths, where):
    """IDs of ``rel_paths``, refusing duplicates (``a.wav`` and ``a.flac``)."""
    ids = [path_to_id(p) for p in rel_paths]
    dup = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dup:
        raise DataPreparationError(
            f"{where}: {len(dup)} duplicate utterance ID(s): "
            + ", ".join(dup[:20])
        )
    return ids


def check_files(paths, skip_bad, save_folder, where, bad=()):
    """Check every file (``check_audio``; serially: on cached files threads
    double the CPU time, issue 19); return ``path -> (frames, rate)`` of the
    usable ones. Unusable files (and ``bad``, ``(path, reason)`` found
    before) go to ``<save_folder>/bad_files.txt`` and are skipped with a
    warning (``skip_bad``) or refused in one error.

    Example
    -------
    >>> import tempfile, soundfile as sf
    >>> d = tempfile.mkdtemp()
    >>> good = os.path.join(d, "g.wav")
    >>> sf.write(good, np.sin(np.arange(1600)), 16000)
    >>> check_files([good], False, d, d)[good]
    (1600, 16000)
    """
    results = []
    for path in tqdm(paths, disable=len(paths) < 5000, mininterval=1):
        try:
            results.append((path, check_audio(path)))
        except AudioError as err:
            results.append((path, str(err)))
    bad = list(bad) + [(p, r) for p, r in results if isinstance(r, str)]
    if bad:
        listing = os.path.join(save_folder, BAD_FILES)
        os.makedirs(save_folder, exist_ok=True)
        atomic_write_text(listing, "".join(f"{p}\t{r}\n" for p, r in bad))
        shown = "; ".join(r for _, r in bad[:5])
        msg = f"{len(bad)} unusable audio file(s) in {where}, all listed "
        msg += f"in {listing}"
        if not skip_bad:
            raise DataPreparationError(
                f"{msg} (skip_bad_files=True skips them): {shown}"
                + (" ..." if len(bad) > 5 else "")
            )
        warnings.warn(f"skipping {msg}", stacklevel=3)
    return {p: r for p, r in results if not isinstance(r, str)}


def split_dev(utts_by_spk, rng, fraction=DEV_FRACTION):
    """Hold out ``round(fraction * n)`` items of each speaker (never all).

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> tr, dv = split_dev({"a": list(range(10)), "b": [10]}, rng)
    >>> len(tr), len(dv), 10 in tr
    (10, 1, True)
    """
    train, dev = [], []
    for spk in sorted(utts_by_spk):
        items = utts_by_spk[spk]
        n_dev = min(round(fraction * len(items)), len(items) - 1)
        held = set(rng.permutation(len(items))[:n_dev].tolist())
        for k, item in enumerate(items):
            (dev if k in held else train).append(item)
    return train, dev


def check_training_split(train, dev, where, min_speakers):
    """Refuse an empty dev set or fewer than ``min_speakers`` training
    speakers with 2 or more training utterances (rows ``(.., spk)``)."""
    if not dev:
        raise DataPreparationError(
            f"{where}: dev.csv would be empty: no training speaker has the 6 "
            f"or more utterances needed to hold {DEV_FRACTION:.0%} out"
        )
    counts = {}
    for row in train:
        counts[row[-1]] = counts.get(row[-1], 0) + 1
    usable = sum(c >= 2 for c in counts.values())
    if usable < max(2, min_speakers):
        raise DataPreparationError(
            f"{where}: {usable} training speaker(s) with 2 or more training "
            f"utterances; at least {max(2, min_speakers)} needed (P classes "
            "per batch): add speakers or lower P"
        )


def cached(save_folder, opts, outputs):
    """The saved summary if ``save_folder`` holds ``outputs`` made with
    ``opts``, else None."""
    try:
        with open(os.path.join(save_folder, OPTS_FILE), encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    if saved.get("opts") != json.loads(json.dumps(opts)):
        return None
    if not all(os.path.isfile(os.path.join(save_folder, o)) for o in outputs):
        return None
    return saved.get("summary")


def write_outputs(save_folder, opts, tables, trial_lists, **summary):
    """Write ``<name>.csv`` for ``tables`` (name -> rows ``(ID, path,
    frames, rate, speaker)``), the trial lists (file -> trials) and, last,
    the options with the summary (paths and counts added), returned."""
    os.makedirs(save_folder, exist_ok=True)
    for name, rows in tables.items():
        path = summary[f"{name}_csv"] = os.path.join(save_folder, name + ".csv")
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(CSV_FIELDS)
                writer.writerows(
                    (i, round(n / sr, 4), p, 0, n, s) for i, p, n, sr, s in rows
                )
    for name, trials in trial_lists.items():
        write_trials(os.path.join(save_folder, name), trials)
    summary.update(n_train=len(tables["train"]), n_dev=len(tables["dev"]))
    summary["n_test_utts"] = len(tables["test"])
    text = json.dumps({"opts": opts, "summary": summary}, indent=1)
    atomic_write_text(os.path.join(save_folder, OPTS_FILE), text + "\n")
    return summary


def read_csv(path, data_root=None):
    """Rows of a manifest as dicts, through SpeechBrain's ``load_data_csv``
    (``$data_root`` replaced by ``data_root``)."""
    rows = load_data_csv(os.fspath(path), {"data_root": data_root or ""})
    return [{"ID": i, **row} for i, row in rows.items()]


def prepare_folder(
    data_folder,
    save_folder,
    n_test_speakers=None,
    seed=0,
    skip_bad=False,
    min_speakers=2,
    n_folds=None,
    fold=0,
    n_valid_speakers=0,
):
    """Write ``train.csv``, ``dev.csv``, ``test.csv`` and ``trials.txt`` for
    a ``<speaker>/**/<utt>`` folder (done once per set of options).

    Arguments
    ---------
    data_folder : str or os.PathLike
        One sub-folder per speaker.
    save_folder : str or os.PathLike
        Output folder.
    n_test_speakers : int or None
        Test speakers (None: 20 % of the speakers, at least 2).
    seed : int
        Seed of the speaker split, the dev split and trial sampling.
    n_folds, fold : int or None, int
        Speaker k-fold cross-validation: the seed's speaker permutation cut
        in ``n_folds`` near-equal folds, fold ``fold`` (0-based) the test
        speakers (``n_test_speakers`` ignored). Fold 0 of 5 on 25 speakers
        is the default split with 5 test speakers.
    n_valid_speakers : int
        0: ``dev.csv`` holds out 10 % of each training speaker's
        utterances. N >= 2: ``dev.csv`` is every utterance of N training
        speakers drawn with the seed, who leave ``train.csv`` (a
        speaker-disjoint validation set).
    skip_bad : bool
        Skip unusable files (listed in ``bad_files.txt``) with a warning.
    min_speakers : int
        Fewest training speakers with 2+ training utterances (the P of
        P x K batches).

    Returns
    -------
    dict
        Output paths and counts.

    Example
    -------
    >>> import tempfile, soundfile as sf
    >>> src, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> for s in range(4):
    ...     os.makedirs(os.path.join(src, f"s{s}"))
    ...     for u in range(6):
    ...         p = os.path.join(src, f"s{s}", f"u{u}.wav")
    ...         sf.write(p, np.sin(np.arange(800) * (u + 1)), 16000)
    >>> res = prepare_folder(src, out, n_test_speakers=2)
    >>> res["n_train"], res["n_dev"], res["n_test_utts"], res["n_trials"]
    (10, 2, 12, 60)
    """
    data_folder = os.path.abspath(os.fspath(data_folder))
    save_folder = os.fspath(save_folder)
    opts = {"data_folder": data_folder, "n_test_speakers": n_test_speakers}
    opts.update(seed=seed, skip_bad=skip_bad, min_speakers=min_speakers)
    opts.update(n_folds=n_folds, fold=fold, n_valid_speakers=n_valid_speakers)
    if n_folds is not None and not 0 <= fold < n_folds:
        raise DataPreparationError(
            f"{data_folder}: fold={fold} must be in 0..n_folds-1 ({n_folds})"
        )
    if n_valid_speakers < 0 or n_valid_speakers == 1:
        raise DataPreparationError(
            f"{data_folder}: n_valid_speakers={n_valid_speakers} must be 0 "
            "(off) or at least 2"
        )
    outputs = ["train.csv", "dev.csv", "test.csv", "trials.txt"]
    summary = cached(save_folder, opts, outputs)
    if summary is not None:
        return summary
    rel_paths = scan_audio_tree(data_folder)
    if not rel_paths:
        flat = scan_audio_tree(data_folder, min_depth=1)
        raise DataPreparationError(
            f"{data_folder}: {len(flat)} audio file(s) but no <speaker>/ "
            "sub-folders: put each speaker's files in <folder>/<speaker>/"
            if flat
            else f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in speaker "
            f"sub-folders of {data_folder}"
        )
    ids = unique_ids(rel_paths, data_folder)
    paths = [os.path.join(data_folder, *p.split("/")) for p in rel_paths]
    info = check_files(paths, skip_bad, save_folder, data_folder)
    by_spk = {}
    for i, p in zip(ids, paths):
        if p in info:
            row = (i, p, *info[p], i.split("/", 1)[0])
            by_spk.setdefault(row[-1], []).append(row)
    speakers = sorted(by_spk)
    n_test = n_test_speakers or max(2, round(0.2 * len(speakers)))
    if n_folds:  # the size of np.array_split's part number `fold`
        n_test = len(speakers) // n_folds + (fold < len(speakers) % n_folds)
    if not 2 <= n_test <= len(speakers) - 2 - n_valid_speakers:
        where = f" (fold {fold} of n_folds={n_folds})" if n_folds else ""
        raise DataPreparationError(
            f"{data_folder}: {len(speakers)} speaker(s) found; n_test_speakers"
            f"={n_test}{where} must be at least 2 and leave 2 for training "
            f"and n_valid_speakers={n_valid_speakers} for validation"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(speakers))
    held = np.array_split(perm, n_folds)[fold] if n_folds else perm[:n_test]
    test_spk = sorted(speakers[k] for k in held)
    train_spk = [s for s in speakers if s not in test_spk]
    valid_spk = sorted(
        str(s) for s in rng.choice(train_spk, n_valid_speakers, replace=False)
    )
    train_spk = [s for s in train_spk if s not in valid_spk]
    if valid_spk:
        train = [r for s in train_spk for r in by_spk[s]]
        dev = [r for s in valid_spk for r in by_spk[s]]
    else:
        train, dev = split_dev({s: by_spk[s] for s in train_spk}, rng)
    check_training_split(train, dev, data_folder, min_speakers)
    test = [r for s in test_spk for r in by_spk[s]]
    trials = make_trials([r[0] for r in test], [r[-1] for r in test], seed=seed)
    stats = trial_summary(trials)
    return write_outputs(
        save_folder,
        opts,
        {"train": train, "dev": dev, "test": test},
        {"trials.txt": trials},
        trials=os.path.join(save_folder, "trials.txt"),
        n_train_speakers=len(train_spk),
        n_test_speakers=n_test,
        n_trials=stats["trials"],
        n_target=stats["target"],
        n_nontarget=stats["nontarget"],
        n_bad_skipped=len(paths) - len(info),
        test_speakers=test_spk,
        valid_speakers=valid_spk,
        sample_rates=sorted({sr for _, sr in info.values()}),
    )
