"""Prepare any ``<speaker>/**/<utt>.wav|flac`` folder for speaker verification.

:func:`prepare_folder` scans a folder whose first level is one sub-folder
per speaker (LibriSpeech-like trees, ``../shared/data/dspspeech``, the
synthetic corpus of :mod:`dampit.dataio.synthetic`), splits the speakers
into disjoint training and test sets (deterministically, from a seed), and
writes SpeechBrain CSV manifests and a trial list:

- ``train.csv``: training speakers' utterances, minus
- ``dev.csv``: a held-out fraction of each training speaker's utterances
  (validation of the classifier; the same speakers as training);
- ``test.csv``: every utterance of the test speakers;
- ``trials.txt``: ``label enrol_id test_id`` among the test utterances
  (all same-speaker pairs plus as many sampled different-speaker pairs).

CSV columns are ``ID, duration, wav, start, stop, spk_id`` (the columns of
SpeechBrain's VoxCeleb recipe): ``ID`` is the file's path relative to the
data folder without extension (``spk1/book/utt3``), ``duration`` is in
seconds, ``wav`` an absolute path, ``start``/``stop`` sample indices at the
file's own rate and ``spk_id`` the first path component.

The helpers here (scanning, header probing, bad-file reporting, CSV
writing) are shared with :mod:`dampit.dataio.prepare_voxceleb`.
"""

import csv
import json
import logging
import os
import warnings

import numpy as np
from tqdm import tqdm

from dampit.dataio.audio import AudioError, audio_info, load_audio
from dampit.dataio.trials import make_trials, trial_summary, write_trials
from dampit.utils.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

CSV_FIELDS = ("ID", "duration", "wav", "start", "stop", "spk_id")
OPTS_FILE = "prepare_opts.json"
BAD_FILES = "bad_files.txt"


class DataPreparationError(ValueError):
    """Data that cannot be prepared: missing or corrupt files, duplicate IDs,
    too few speakers. The message names the files or the argument."""


def scan_audio_tree(root, exts=(".wav", ".flac"), min_depth=2):
    """List the audio files under ``root``, sorted, as relative POSIX paths.

    Hidden files and folders (names starting with ``.``) are skipped, and
    so are files fewer than ``min_depth`` components deep (files directly
    in ``root``, such as a README or manifest, when ``min_depth=2``).
    Symbolic links to folders are followed.

    Arguments
    ---------
    root : str or os.PathLike
        The folder to scan.
    exts : tuple of str
        Extensions to keep (case-insensitive, with the dot).
    min_depth : int
        Fewest path components of a kept file.

    Returns
    -------
    list of str
        ``["spk/a.wav", "spk/sub/b.flac", ...]`` in sorted order.

    Raises
    ------
    DataPreparationError
        When ``root`` is not a folder.

    Example
    -------
    >>> import os, tempfile
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
    exts = tuple(e.lower() for e in exts)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        parts = [] if rel_dir == "." else rel_dir.split(os.sep)
        if len(parts) + 1 < min_depth:
            continue
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(exts):
                continue
            found.append("/".join(parts + [name]))
    return sorted(found)


def path_to_id(rel_path):
    """CSV ID of a file: its relative path without extension.

    Arguments
    ---------
    rel_path : str
        ``spk/video/00001.wav``.

    Returns
    -------
    str
        ``spk/video/00001``.

    Example
    -------
    >>> path_to_id("id10270/x6uYqmx31kE/00001.wav")
    'id10270/x6uYqmx31kE/00001'
    """
    return os.path.splitext(rel_path.replace("\\", "/"))[0]


def check_unique_ids(ids, what="utterance"):
    """Raise when IDs repeat (two files mapping to one ID, say ``a.wav``
    and ``a.flac``), naming them.

    Arguments
    ---------
    ids : iterable of str
        The IDs.
    what : str
        What they identify, for the message.

    Raises
    ------
    DataPreparationError
        Listing the duplicated IDs.

    Example
    -------
    >>> check_unique_ids(["a/1", "a/2"])
    >>> try:
    ...     check_unique_ids(["a/1", "a/1"])
    ... except DataPreparationError as err:
    ...     print(err)
    1 duplicate utterance ID(s): a/1
    """
    seen, dup = set(), []
    for i in ids:
        if i in seen:
            dup.append(i)
        seen.add(i)
    if dup:
        dup = sorted(set(dup))
        shown = ", ".join(dup[:20])
        more = f" (and {len(dup) - 20} more)" if len(dup) > 20 else ""
        raise DataPreparationError(
            f"{len(dup)} duplicate {what} ID(s): {shown}{more}"
        )


def _probe_one(path, full_check):
    frames, sr, _ = audio_info(path)
    if frames <= 0:
        raise AudioError(f"audio file has no samples: {path}")
    if full_check:
        load_audio(path, sample_rate=sr)
    return frames, sr


def probe_audio(paths, full_check=False, num_workers=1, desc="probing"):
    """Read the length and rate of many files, collecting the bad ones.

    Arguments
    ---------
    paths : list of str
        Audio files.
    full_check : bool
        Decode every file completely (catches truncated data, NaN and
        silent files) instead of reading headers only (fast).
    num_workers : int
        Threads (header reads are I/O bound; useful on network disks).
    desc : str
        Progress-bar label.

    Returns
    -------
    info : dict
        ``path -> (frames, sample_rate)`` for the good files.
    bad : list of tuple
        ``(path, reason)`` for missing or unreadable files.

    Example
    -------
    >>> import os, tempfile, soundfile as sf
    >>> d = tempfile.mkdtemp()
    >>> good = os.path.join(d, "g.wav")
    >>> sf.write(good, np.ones(160) * 0.1, 16000)
    >>> info, bad = probe_audio([good, os.path.join(d, "missing.wav")])
    >>> info[good], len(bad)
    ((160, 16000), 1)
    """
    info, bad = {}, []

    def work(p):
        try:
            return p, _probe_one(p, full_check), None
        except AudioError as err:
            return p, None, str(err)

    if num_workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(num_workers) as pool:
            results = list(
                tqdm(
                    pool.map(work, paths),
                    total=len(paths),
                    desc=desc,
                    disable=len(paths) < 1000,
                )
            )
    else:
        results = (
            work(p) for p in tqdm(paths, desc=desc, disable=len(paths) < 1000)
        )
    for p, res, err in results:
        if err is None:
            info[p] = res
        else:
            bad.append((p, err))
    return info, bad


def report_bad_files(bad, skip_bad, save_folder=None):
    """Raise one error listing every bad file, or warn when skipping them.

    The full list is also written to ``<save_folder>/bad_files.txt``.

    Arguments
    ---------
    bad : list of tuple
        ``(path, reason)``.
    skip_bad : bool
        Warn and go on instead of raising.
    save_folder : str or None
        Where to write ``bad_files.txt``.

    Raises
    ------
    DataPreparationError
        When ``bad`` is not empty and ``skip_bad`` is False.

    Example
    -------
    >>> report_bad_files([], skip_bad=False)
    >>> try:
    ...     report_bad_files([("x.wav", "audio file not found: x.wav")], False)
    ... except DataPreparationError as err:
    ...     print(str(err).splitlines()[1])
      audio file not found: x.wav
    """
    if not bad:
        return
    bad = sorted(bad)
    listing = "\n".join(f"  {reason}" for _, reason in bad[:50])
    more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
    where = ""
    if save_folder is not None:
        full = os.path.join(save_folder, BAD_FILES)
        atomic_write_text(
            full, "".join(f"{p}\t{reason}\n" for p, reason in bad)
        )
        where = f"\n(full list in {full})"
    if skip_bad:
        msg = f"skipping {len(bad)} missing or corrupt audio file(s):\n"
        warnings.warn(msg + listing + more + where, stacklevel=3)
        return
    raise DataPreparationError(
        f"{len(bad)} missing or corrupt audio file(s) (pass skip_bad=True to "
        f"skip them):\n{listing}{more}{where}"
    )


def make_rows(utt_id, wav, frames, sample_rate, spk_id, seg_dur=None):
    """CSV rows of one file: the whole file, or chunks of ``seg_dur``.

    With ``seg_dur`` the file is cut into ``floor(duration / seg_dur)``
    consecutive chunks (the remainder is dropped) with IDs
    ``<utt_id>_<start>_<stop>`` in samples; a file shorter than one chunk
    gives one row covering all of it (crops repeat it later).

    Arguments
    ---------
    utt_id : str
        Utterance ID.
    wav : str
        Path of the file.
    frames : int
        Its length in samples.
    sample_rate : int
        Its sample rate.
    spk_id : str
        Speaker label.
    seg_dur : float or None
        Chunk length in seconds (None: one row for the whole file).

    Returns
    -------
    list of dict
        Rows with the :data:`CSV_FIELDS` keys.

    Example
    -------
    >>> [r["ID"] for r in make_rows("s/u", "s/u.wav", 40000, 16000, "s", 1.0)]
    ['s/u_0_16000', 's/u_16000_32000']
    >>> make_rows("s/u", "s/u.wav", 8000, 16000, "s")[0]["duration"]
    0.5
    """
    if seg_dur is None:
        return [
            {
                "ID": utt_id,
                "duration": round(frames / sample_rate, 4),
                "wav": wav,
                "start": 0,
                "stop": frames,
                "spk_id": spk_id,
            }
        ]
    if seg_dur <= 0:
        raise ValueError(f"seg_dur must be positive, got {seg_dur}")
    seg = int(round(seg_dur * sample_rate))
    n = max(1, frames // seg)
    rows = []
    for k in range(n):
        start, stop = k * seg, min(frames, (k + 1) * seg)
        rows.append(
            {
                "ID": f"{utt_id}_{start}_{stop}",
                "duration": round((stop - start) / sample_rate, 4),
                "wav": wav,
                "start": start,
                "stop": stop,
                "spk_id": spk_id,
            }
        )
    return rows


def write_csv(path, rows):
    """Write manifest rows atomically with the :data:`CSV_FIELDS` header.

    Arguments
    ---------
    path : str or os.PathLike
        Destination CSV.
    rows : list of dict
        Rows with the :data:`CSV_FIELDS` keys.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "a.csv")
    >>> write_csv(p, make_rows("s/u", "/d/s/u.wav", 160, 16000, "s"))
    >>> print(open(p).read(), end="")
    ID,duration,wav,start,stop,spk_id
    s/u,0.01,/d/s/u.wav,0,160,s
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)


def read_csv(path):
    """Read a manifest written by :func:`write_csv` (strings as written).

    Arguments
    ---------
    path : str or os.PathLike
        The CSV.

    Returns
    -------
    list of dict
        One dict per row.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "a.csv")
    >>> write_csv(p, make_rows("s/u", "/d/s/u.wav", 160, 16000, "s"))
    >>> read_csv(p)[0]["stop"]
    '160'
    """
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def already_prepared(save_folder, opts, outputs):
    """Whether ``save_folder`` holds ``outputs`` made with the same ``opts``.

    Arguments
    ---------
    save_folder : str
        The preparation's output folder.
    opts : dict
        JSON-able options of this call.
    outputs : list of str
        File names that must all exist.

    Returns
    -------
    dict or None
        The saved summary when the preparation can be skipped, else None.

    Example
    -------
    >>> import tempfile
    >>> already_prepared(tempfile.mkdtemp(), {"a": 1}, ["train.csv"]) is None
    True
    """
    path = os.path.join(save_folder, OPTS_FILE)
    if not os.path.isfile(path):
        return None
    if not all(os.path.isfile(os.path.join(save_folder, o)) for o in outputs):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    if saved.get("opts") != json.loads(json.dumps(opts)):
        return None
    return saved.get("summary")


def save_opts(save_folder, opts, summary):
    """Record the options and summary of a finished preparation.

    Arguments
    ---------
    save_folder : str
        The preparation's output folder.
    opts : dict
        JSON-able options.
    summary : dict
        JSON-able summary returned to the caller.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> save_opts(d, {"a": 1}, {"n": 2})
    >>> already_prepared(d, {"a": 1}, [])
    {'n': 2}
    """
    atomic_write_text(
        os.path.join(save_folder, OPTS_FILE),
        json.dumps({"opts": opts, "summary": summary}, indent=2) + "\n",
    )


def split_dev(utts_by_spk, dev_fraction, rng):
    """Hold out ``round(dev_fraction * n)`` utterances of each speaker
    (never all of them) for validation.

    Arguments
    ---------
    utts_by_spk : dict
        speaker -> sorted list of items.
    dev_fraction : float
        Fraction of each speaker's items held out, in [0, 1).
    rng : numpy.random.Generator
        Random source (speakers are visited in sorted order).

    Returns
    -------
    train, dev : list
        Items, each in speaker then original order.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> tr, dv = split_dev({"a": [1, 2, 3, 4], "b": [5]}, 0.25, rng)
    >>> len(tr), len(dv), 5 in tr
    (4, 1, True)
    """
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    train, dev = [], []
    for spk in sorted(utts_by_spk):
        items = utts_by_spk[spk]
        n_dev = min(int(round(dev_fraction * len(items))), len(items) - 1)
        held = set(rng.permutation(len(items))[: max(0, n_dev)].tolist())
        for k, item in enumerate(items):
            (dev if k in held else train).append(item)
    return train, dev


def prepare_folder(
    data_folder,
    save_folder,
    n_test_speakers=None,
    test_fraction=0.2,
    dev_fraction=0.1,
    seed=0,
    exts=(".wav", ".flac"),
    max_target_trials=None,
    nontarget_ratio=1.0,
    seg_dur=None,
    skip_bad=False,
    full_check=False,
    num_workers=1,
    skip_if_done=True,
):
    """Prepare CSV manifests and a trial list for a ``<speaker>/**/<utt>``
    folder.

    Speakers (first path component under ``data_folder``) are sorted,
    shuffled with ``seed``, and the first ``n_test_speakers`` (or
    ``round(test_fraction * n_speakers)``, at least 2) become test
    speakers; the others are training speakers. On dspspeech (25 speakers
    x 40 utterances) the defaults give 20 training speakers (720 train and
    80 dev utterances), 5 test speakers (200 test utterances) and 7,800
    trials (3,900 target, 3,900 non-target).

    Arguments
    ---------
    data_folder : str or os.PathLike
        Folder with one sub-folder per speaker (files directly in it are
        ignored).
    save_folder : str or os.PathLike
        Where ``train.csv``, ``dev.csv``, ``test.csv``, ``trials.txt`` and
        ``prepare_opts.json`` go.
    n_test_speakers : int or None
        Number of test speakers (overrides ``test_fraction``).
    test_fraction : float
        Fraction of speakers used for testing when ``n_test_speakers`` is
        None.
    dev_fraction : float
        Fraction of each training speaker's utterances held out in
        ``dev.csv``.
    seed : int
        Seed of the speaker split, the dev split and trial sampling.
    exts : tuple of str
        Audio extensions to include.
    max_target_trials : int or None
        Most target trials (None: every same-speaker pair).
    nontarget_ratio : float
        Non-target trials per target trial.
    seg_dur : float or None
        Cut training/dev files into chunks of this many seconds (test
        files are never cut).
    skip_bad : bool
        Skip missing or corrupt files with a warning instead of raising.
    full_check : bool
        Decode every file (slow) rather than reading headers only.
    num_workers : int
        Threads for reading headers.
    skip_if_done : bool
        Return at once when ``save_folder`` already holds a preparation
        with the same options (the data folder is not re-scanned).

    Returns
    -------
    dict
        Summary: output paths, counts and the test speakers.

    Raises
    ------
    DataPreparationError
        On corrupt files (all listed), duplicate IDs or too few speakers.

    Example
    -------
    >>> import os, tempfile, soundfile as sf
    >>> src, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> for s in range(4):
    ...     os.makedirs(os.path.join(src, f"s{s}"))
    ...     for u in range(3):
    ...         p = os.path.join(src, f"s{s}", f"u{u}.wav")
    ...         sf.write(p, np.full(1600, 0.1), 16000)
    >>> res = prepare_folder(src, out, n_test_speakers=2)
    >>> res["n_test_utts"], res["n_trials"]
    (6, 12)
    """
    data_folder = os.path.abspath(os.fspath(data_folder))
    save_folder = os.fspath(save_folder)
    opts = {
        "data_folder": data_folder,
        "n_test_speakers": n_test_speakers,
        "test_fraction": test_fraction,
        "dev_fraction": dev_fraction,
        "seed": seed,
        "exts": sorted(e.lower() for e in exts),
        "max_target_trials": max_target_trials,
        "nontarget_ratio": nontarget_ratio,
        "seg_dur": seg_dur,
        "skip_bad": skip_bad,
        "full_check": full_check,
    }
    outputs = ["train.csv", "dev.csv", "test.csv", "trials.txt"]
    if skip_if_done:
        summary = already_prepared(save_folder, opts, outputs)
        if summary is not None:
            logger.info("%s already prepared, skipping", save_folder)
            return summary
    os.makedirs(save_folder, exist_ok=True)

    rel_paths = scan_audio_tree(data_folder, exts)
    if not rel_paths:
        raise DataPreparationError(
            f"no audio files with extensions {tuple(exts)} in speaker "
            f"sub-folders of {data_folder}"
        )
    check_unique_ids([path_to_id(p) for p in rel_paths])
    abs_paths = [os.path.join(data_folder, *p.split("/")) for p in rel_paths]
    info, bad = probe_audio(abs_paths, full_check, num_workers)
    report_bad_files(bad, skip_bad, save_folder)

    by_spk = {}
    for rel, path in zip(rel_paths, abs_paths):
        if path in info:
            by_spk.setdefault(rel.split("/", 1)[0], []).append((rel, path))
    speakers = sorted(by_spk)
    n_spk = len(speakers)
    if n_test_speakers is None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(
                f"test_fraction must be in (0, 1), got {test_fraction}"
            )
        n_test = max(2, int(round(test_fraction * n_spk)))
    else:
        n_test = int(n_test_speakers)
    if n_test < 2 or n_test > n_spk - 1:
        raise DataPreparationError(
            f"{data_folder}: {n_spk} speaker(s) found; need 2 <= "
            f"n_test_speakers <= n_speakers - 1 (got {n_test})"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_spk)
    test_spk = sorted(speakers[k] for k in perm[:n_test])
    train_spk = sorted(speakers[k] for k in perm[n_test:])

    def rows_of(items, chunk):
        rows = []
        for rel, path in items:
            frames, sr = info[path]
            spk = rel.split("/", 1)[0]
            rows += make_rows(path_to_id(rel), path, frames, sr, spk, chunk)
        return rows

    train_items, dev_items = split_dev(
        {s: by_spk[s] for s in train_spk}, dev_fraction, rng
    )
    test_items = [it for s in test_spk for it in by_spk[s]]
    train_rows = rows_of(train_items, seg_dur)
    dev_rows = rows_of(dev_items, seg_dur)
    test_rows = rows_of(test_items, None)
    trials = make_trials(
        [r["ID"] for r in test_rows],
        [r["spk_id"] for r in test_rows],
        max_target=max_target_trials,
        nontarget_ratio=nontarget_ratio,
        seed=seed,
    )
    paths = {o.rsplit(".", 1)[0]: os.path.join(save_folder, o) for o in outputs}
    write_csv(paths["train"], train_rows)
    write_csv(paths["dev"], dev_rows)
    write_csv(paths["test"], test_rows)
    write_trials(paths["trials"], trials)
    stats = trial_summary(trials)
    rates = sorted({sr for _, sr in info.values()})
    if rates != [16000]:
        logger.warning("%s: sample rates found %s Hz", data_folder, rates)
    summary = {
        "train_csv": paths["train"],
        "dev_csv": paths["dev"],
        "test_csv": paths["test"],
        "trials": paths["trials"],
        "n_train_speakers": len(train_spk),
        "n_test_speakers": len(test_spk),
        "n_train": len(train_rows),
        "n_dev": len(dev_rows),
        "n_test_utts": len(test_rows),
        "n_trials": stats["trials"],
        "n_target": stats["target"],
        "n_nontarget": stats["nontarget"],
        "n_bad_skipped": len(bad),
        "test_speakers": test_spk,
        "sample_rates": rates,
    }
    save_opts(save_folder, opts, summary)
    logger.info(
        "prepared %s: %d train / %d dev rows (%d speakers), %d test "
        "utterances (%d speakers), %d trials",
        data_folder,
        len(train_rows),
        len(dev_rows),
        len(train_spk),
        len(test_rows),
        len(test_spk),
        len(trials),
    )
    return summary
