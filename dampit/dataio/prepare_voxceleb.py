"""Prepare VoxCeleb1 and VoxCeleb2 for training and verification tests.

Expected layouts (the official downloads, unpacked)::

    <vox1_folder>/wav/<spk>/<video>/<utt>.wav        VoxCeleb1 dev + test
    <vox1_folder>/meta/veri_test.txt                 (optional place)
    <vox2_folder>/dev/aac/<spk>/<video>/<utt>.m4a    VoxCeleb2 dev
    <vox2_folder>/dev/wav/<spk>/<video>/<utt>.wav    its 16 kHz conversion

VoxCeleb2 ships AAC (``.m4a``), which libsndfile cannot read: convert it
once with ``python tools/convert_voxceleb2.py <vox2>/dev/aac`` (ffmpeg,
parallel, resumable), which writes the ``dev/wav`` mirror;
``.wav`` files beside the ``.m4a`` files are found too.

:func:`prepare_voxceleb` writes SpeechBrain CSV manifests
(``ID, duration, wav, start, stop, spk_id``; see
:mod:`dampit.dataio.prepare_folder`):

- ``train.csv`` and ``dev.csv``: the training corpora minus every speaker
  named in the trial lists; ``dev.csv`` holds out a fraction of each
  speaker's utterances (``split_by="sentence"``, to validate the
  classifier) or whole speakers (``split_by="speaker"``);
- ``test.csv``: the utterances named in the trial lists;
- ``trials_<name>.txt`` for each trial list: ``label enrol_id test_id``,
  where the IDs are the official relative paths without extension
  (``1 id10270/x6uYqmx31kE/00001 id10270/8jEAjG6SegY/00008``), i.e. the
  ``ID`` column of ``test.csv``.

Official trial lists (names accepted, or the aliases in brackets):
``veri_test.txt`` (VoxCeleb1-O, 37,720 trials, ``vox1-o``),
``veri_test2.txt`` (cleaned, 37,611, ``vox1-o-clean``),
``list_test_all.txt`` / ``list_test_all2.txt`` (VoxCeleb1-E, ``vox1-e``,
``vox1-e-clean``), ``list_test_hard.txt`` / ``list_test_hard2.txt``
(VoxCeleb1-H, ``vox1-h``, ``vox1-h-clean``). -E and -H use all VoxCeleb1
speakers, so with them VoxCeleb1 gives nothing to train on.
"""

import logging
import os
import warnings

import numpy as np

from dampit.dataio.prepare_folder import (
    DataPreparationError,
    already_prepared,
    check_unique_ids,
    make_rows,
    path_to_id,
    probe_audio,
    report_bad_files,
    save_opts,
    scan_audio_tree,
    split_dev,
    write_csv,
)
from dampit.dataio.trials import read_trials, trial_summary, write_trials

logger = logging.getLogger(__name__)

#: Official trial-list file names -> (protocol, number of trials).
OFFICIAL_TRIAL_LISTS = {
    "veri_test.txt": ("VoxCeleb1-O", 37720),
    "veri_test2.txt": ("VoxCeleb1-O cleaned", 37611),
    "list_test_all.txt": ("VoxCeleb1-E", 581480),
    "list_test_all2.txt": ("VoxCeleb1-E cleaned", 579818),
    "list_test_hard.txt": ("VoxCeleb1-H", 552536),
    "list_test_hard2.txt": ("VoxCeleb1-H cleaned", 550894),
}

#: Short names of the official lists.
TRIAL_ALIASES = {
    "vox1-o": "veri_test.txt",
    "vox1-o-clean": "veri_test2.txt",
    "vox1-e": "list_test_all.txt",
    "vox1-e-clean": "list_test_all2.txt",
    "vox1-h": "list_test_hard.txt",
    "vox1-h-clean": "list_test_hard2.txt",
}

CONVERT_HINT = (
    "convert it first: python tools/convert_voxceleb2.py {src} "
    "(ffmpeg; writes 16 kHz wavs to {dst})"
)


def find_trial_list(name, vox1_folder=None):
    """Locate a trial list given as a path, an official name or an alias.

    Looked for as given, then in ``<vox1_folder>/meta`` and
    ``<vox1_folder>``.

    Arguments
    ---------
    name : str or os.PathLike
        ``veri_test2.txt``, ``vox1-o-clean`` or a path.
    vox1_folder : str or None
        The VoxCeleb1 root.

    Returns
    -------
    str
        The path of the file.

    Raises
    ------
    DataPreparationError
        Listing the places tried.

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(d, "meta"))
    >>> open(os.path.join(d, "meta", "veri_test.txt"), "w").close()
    >>> find_trial_list("vox1-o", d) == os.path.join(d, "meta", "veri_test.txt")
    True
    """
    name = os.fspath(name)
    base = TRIAL_ALIASES.get(name.lower(), name)
    tried = [base]
    if vox1_folder is not None and os.path.basename(base) == base:
        tried += [
            os.path.join(vox1_folder, "meta", base),
            os.path.join(vox1_folder, base),
        ]
    for path in tried:
        if os.path.isfile(path):
            return path
    raise DataPreparationError(
        f"trial list {name!r} not found; tried: {', '.join(tried)} (the "
        "official lists are at the VoxCeleb web page: download them to "
        "<vox1>/meta/ or pass a path)"
    )


def find_vox2_audio(vox2_folder, wav_folder=None):
    """Find VoxCeleb2's converted wav folder and its m4a source.

    Arguments
    ---------
    vox2_folder : str
        The VoxCeleb2 root.
    wav_folder : str or None
        The converted-wav folder, when not in a standard place.

    Returns
    -------
    wav_root : str
        Folder of ``<spk>/<video>/<utt>.wav`` files.
    m4a_root : str or None
        Folder of the original ``.m4a`` files, when present.

    Raises
    ------
    DataPreparationError
        When no folder exists, naming the places looked in.

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(d, "dev", "wav"))
    >>> w, m = find_vox2_audio(d)
    >>> w == os.path.join(d, "dev", "wav"), m
    (True, None)
    """
    m4a_root = None
    for cand in ("dev/aac", "aac"):
        path = os.path.join(vox2_folder, *cand.split("/"))
        if os.path.isdir(path):
            m4a_root = path
            break
    if wav_folder is not None:
        if not os.path.isdir(wav_folder):
            raise DataPreparationError(
                f"VoxCeleb2 wav folder not found: {wav_folder}"
            )
        return os.fspath(wav_folder), m4a_root
    tried = []
    for cand in ("dev/wav", "wav"):
        path = os.path.join(vox2_folder, *cand.split("/"))
        tried.append(path)
        if os.path.isdir(path):
            return path, m4a_root
    if m4a_root is not None:  # wavs converted beside the m4a files
        return m4a_root, m4a_root
    raise DataPreparationError(
        f"no VoxCeleb2 audio under {vox2_folder}: looked for {tried} and "
        f"{os.path.join(vox2_folder, 'dev', 'aac')}"
    )


def _check_trial_count(path, n):
    base = os.path.basename(path)
    if base in OFFICIAL_TRIAL_LISTS:
        proto, want = OFFICIAL_TRIAL_LISTS[base]
        if n != want:
            warnings.warn(
                f"{path}: {n} trials, the official {proto} list has {want} "
                "(truncated or modified file?)",
                stacklevel=3,
            )


def prepare_voxceleb(
    save_folder,
    vox1_folder=None,
    vox2_folder=None,
    trial_lists=("veri_test.txt",),
    train_sets=None,
    split_ratio=(90, 10),
    split_by="sentence",
    seed=1234,
    seg_dur=None,
    skip_bad=False,
    full_check=False,
    num_workers=1,
    vox2_wav_folder=None,
    skip_if_done=True,
):
    """Write train/dev/test CSVs and ID trial lists for VoxCeleb1/2.

    Arguments
    ---------
    save_folder : str or os.PathLike
        Output folder.
    vox1_folder : str or None
        VoxCeleb1 root (holding ``wav/``). Needed when trial lists are
        given: the test utterances are read from it.
    vox2_folder : str or None
        VoxCeleb2 root (holding ``dev/aac`` and its ``dev/wav``
        conversion).
    trial_lists : sequence of str
        Official names, aliases (``vox1-o``...) or paths; may be empty.
        Their speakers are excluded from train and dev.
    train_sets : sequence of str or None
        ``"vox1"`` and/or ``"vox2"``: corpora to train on (None: every
        corpus given). The paper trains on ``("vox2",)`` only.
    split_ratio : tuple of two numbers
        Train : dev proportions (90, 10 holds out 10 %).
    split_by : str
        ``"sentence"``: hold out utterances of every training speaker
        (validates the classifier); ``"speaker"``: hold out whole
        speakers (dev speakers are then absent from train).
    seed : int
        Seed of the dev split.
    seg_dur : float or None
        Cut train/dev files into chunks of this many seconds (IDs
        ``<utt>_<start>_<stop>``); test files are never cut.
    skip_bad : bool
        Skip missing, unconverted or corrupt files (and trials naming
        them) with a warning instead of raising one error listing them.
    full_check : bool
        Decode every file instead of reading headers only (slow).
    num_workers : int
        Threads for reading headers (helps on network file systems).
    vox2_wav_folder : str or None
        Where the VoxCeleb2 conversion is, when not ``<vox2>/dev/wav``.
    skip_if_done : bool
        Return at once when ``save_folder`` holds a preparation made with
        the same options (nothing is re-scanned).

    Returns
    -------
    dict
        Summary: output paths, counts, trial statistics per list.

    Raises
    ------
    DataPreparationError
        On missing folders or trial lists, bad files (all listed),
        unconverted VoxCeleb2 audio, duplicate IDs.

    Example
    -------
    >>> import os, tempfile, soundfile as sf
    >>> vox1, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> for spk in ["id10001", "id10270", "id10271"]:
    ...     for k in range(2):
    ...         p = os.path.join(vox1, "wav", spk, "vid", f"0000{k}.wav")
    ...         os.makedirs(os.path.dirname(p), exist_ok=True)
    ...         sf.write(p, np.full(1600, 0.1), 16000)
    >>> trials = os.path.join(vox1, "my_trials.txt")
    >>> _ = open(trials, "w").write(
    ...     "1 id10270/vid/00000.wav id10270/vid/00001.wav\\n"
    ...     "0 id10270/vid/00000.wav id10271/vid/00001.wav\\n")
    >>> res = prepare_voxceleb(out, vox1_folder=vox1, trial_lists=[trials])
    >>> res["n_train"] + res["n_dev"], res["n_test_utts"]
    (2, 3)
    >>> print(open(res["trials"]["my_trials"]).read(), end="")
    1 id10270/vid/00000 id10270/vid/00001
    0 id10270/vid/00000 id10271/vid/00001
    """
    save_folder = os.fspath(save_folder)
    if vox1_folder is None and vox2_folder is None:
        raise ValueError(
            "prepare_voxceleb: give vox1_folder and/or vox2_folder"
        )
    trial_lists = [os.fspath(t) for t in (trial_lists or ())]
    if trial_lists and vox1_folder is None:
        raise ValueError(
            "prepare_voxceleb: trial lists name VoxCeleb1 utterances; give "
            "vox1_folder (or trial_lists=())"
        )
    if split_by not in ("sentence", "speaker"):
        raise ValueError(
            f"split_by must be 'sentence' or 'speaker', got {split_by!r}"
        )
    if len(split_ratio) != 2 or min(split_ratio) < 0 or split_ratio[0] <= 0:
        raise ValueError(
            f"split_ratio must be (train, dev) proportions, got {split_ratio}"
        )
    dev_fraction = split_ratio[1] / float(sum(split_ratio))
    given = {"vox1": vox1_folder, "vox2": vox2_folder}
    if train_sets is None:
        train_sets = [k for k, v in given.items() if v is not None]
    train_sets = list(train_sets)
    for name in train_sets:
        if name not in given:
            raise ValueError(f"train_sets: unknown corpus {name!r}")
        if given[name] is None:
            raise ValueError(
                f"train_sets names {name!r} but {name}_folder is None"
            )
    vox1_folder = None if vox1_folder is None else os.path.abspath(vox1_folder)
    vox2_folder = None if vox2_folder is None else os.path.abspath(vox2_folder)

    trial_paths = [find_trial_list(t, vox1_folder) for t in trial_lists]
    opts = {
        "vox1_folder": vox1_folder,
        "vox2_folder": vox2_folder,
        "trial_lists": [os.path.abspath(p) for p in trial_paths],
        "train_sets": train_sets,
        "split_ratio": list(split_ratio),
        "split_by": split_by,
        "seed": seed,
        "seg_dur": seg_dur,
        "skip_bad": skip_bad,
        "full_check": full_check,
        "vox2_wav_folder": vox2_wav_folder,
    }
    stems = [os.path.splitext(os.path.basename(p))[0] for p in trial_paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f"trial lists with the same file name: {trial_paths}")
    outputs = ["train.csv", "dev.csv", "test.csv"]
    outputs += [f"trials_{s}.txt" for s in stems]
    if skip_if_done:
        summary = already_prepared(save_folder, opts, outputs)
        if summary is not None:
            logger.info("%s already prepared, skipping", save_folder)
            return summary
    os.makedirs(save_folder, exist_ok=True)

    # 1. Trial lists -> test utterances and speakers.
    trials_by_list = {}
    for stem, path in zip(stems, trial_paths):
        trials = read_trials(path)
        _check_trial_count(path, len(trials))
        trials_by_list[stem] = trials
    test_ids = sorted(
        {u for ts in trials_by_list.values() for _, e, t in ts for u in (e, t)}
    )
    test_spk = {u.split("/", 1)[0] for u in test_ids}

    # 2. Scan the corpora: ID -> (absolute path, corpus).
    files = {}
    missing = []
    if vox1_folder is not None:
        root = os.path.join(vox1_folder, "wav")
        if not os.path.isdir(root):
            raise DataPreparationError(
                f"VoxCeleb1 folder {vox1_folder} has no wav/ folder "
                "(expected <vox1>/wav/<spk>/<video>/<utt>.wav)"
            )
        rel = scan_audio_tree(root, (".wav",))
        ids = [path_to_id(r) for r in rel]
        check_unique_ids(ids)
        for i, r in zip(ids, rel):
            files[i] = (os.path.join(root, *r.split("/")), "vox1")
    if vox2_folder is not None:
        wav_root, m4a_root = find_vox2_audio(vox2_folder, vox2_wav_folder)
        rel = scan_audio_tree(wav_root, (".wav",))
        src = [] if m4a_root is None else scan_audio_tree(m4a_root, (".m4a",))
        hint = CONVERT_HINT.format(
            src=m4a_root,
            dst=os.path.join(os.path.dirname(m4a_root or ""), "wav"),
        )
        if not rel:
            raise DataPreparationError(
                f"no VoxCeleb2 wav files in {wav_root}"
                + (
                    f" ({len(src)} m4a files in {m4a_root}: {hint})"
                    if src
                    else ""
                )
            )
        ids = [path_to_id(r) for r in rel]
        check_unique_ids(ids)
        dup = sorted(set(ids) & set(files))
        if dup:
            raise DataPreparationError(
                f"{len(dup)} utterance ID(s) in both VoxCeleb1 and "
                f"VoxCeleb2 (the same folder given twice?): {dup[:10]}"
            )
        for i, r in zip(ids, rel):
            files[i] = (os.path.join(wav_root, *r.split("/")), "vox2")
        have = set(ids)
        for r in src:
            if path_to_id(r) not in have:
                p = os.path.join(m4a_root, *r.split("/"))
                missing.append((p, f"not converted to wav: {p} ({hint})"))

    # 3. Test utterances must exist; train on the other speakers.
    for u in test_ids:
        if u not in files:
            p = os.path.join(vox1_folder, "wav", *u.split("/")) + ".wav"
            missing.append((p, f"audio file not found (in a trial list): {p}"))
    train_ids = [
        i
        for i, (_, corpus) in files.items()
        if corpus in train_sets and i.split("/", 1)[0] not in test_spk
    ]
    probe_ids = sorted(set(train_ids) | (set(test_ids) & set(files)))
    info, bad = probe_audio(
        [files[i][0] for i in probe_ids], full_check, num_workers
    )
    report_bad_files(missing + bad, skip_bad, save_folder)
    ok = {i for i in probe_ids if files[i][0] in info}

    # 4. Splits and rows.
    by_spk = {}
    for i in sorted(train_ids):
        if i in ok:
            by_spk.setdefault(i.split("/", 1)[0], []).append(i)
    rng = np.random.default_rng(seed)
    if split_by == "sentence":
        train_utts, dev_utts = split_dev(by_spk, dev_fraction, rng)
    else:
        spks = sorted(by_spk)
        n_dev = int(round(dev_fraction * len(spks)))
        n_dev = min(n_dev, len(spks) - 1) if dev_fraction > 0 else 0
        dev_spk = {spks[k] for k in rng.permutation(len(spks))[:n_dev]}
        train_utts = [i for s in spks if s not in dev_spk for i in by_spk[s]]
        dev_utts = [i for s in spks if s in dev_spk for i in by_spk[s]]

    def rows_of(utts, chunk):
        rows = []
        for i in utts:
            path = files[i][0]
            frames, sr = info[path]
            spk = i.split("/", 1)[0]
            rows += make_rows(i, path, frames, sr, spk, chunk)
        return rows

    train_rows = rows_of(train_utts, seg_dur)
    dev_rows = rows_of(dev_utts, seg_dur)
    test_rows = rows_of([u for u in test_ids if u in ok], None)

    # 5. Trial lists in ID form (dropping trials with skipped files).
    trial_files, trial_stats = {}, {}
    for stem, trials in trials_by_list.items():
        kept = [t for t in trials if t[1] in ok and t[2] in ok]
        if len(kept) < len(trials):
            warnings.warn(
                f"trial list {stem}: dropped {len(trials) - len(kept)} of "
                f"{len(trials)} trials naming skipped files",
                stacklevel=2,
            )
        path = os.path.join(save_folder, f"trials_{stem}.txt")
        write_trials(path, kept)
        trial_files[stem] = path
        trial_stats[stem] = trial_summary(kept)

    paths = {
        k: os.path.join(save_folder, f"{k}.csv")
        for k in ("train", "dev", "test")
    }
    for key, rows in (
        ("train", train_rows),
        ("dev", dev_rows),
        ("test", test_rows),
    ):
        write_csv(paths[key], rows)
    summary = {
        "train_csv": paths["train"],
        "dev_csv": paths["dev"],
        "test_csv": paths["test"],
        "trials": trial_files,
        "trial_stats": trial_stats,
        "n_train": len(train_rows),
        "n_dev": len(dev_rows),
        "n_test_utts": len(test_rows),
        "n_train_speakers": len({r["spk_id"] for r in train_rows}),
        "n_dev_speakers": len({r["spk_id"] for r in dev_rows}),
        "n_test_speakers": len(test_spk),
        "n_bad_skipped": len(missing) + len(bad),
    }
    save_opts(save_folder, opts, summary)
    logger.info(
        "prepared VoxCeleb in %s: %d train / %d dev rows, %d test utterances",
        save_folder,
        len(train_rows),
        len(dev_rows),
        len(test_rows),
    )
    return summary
