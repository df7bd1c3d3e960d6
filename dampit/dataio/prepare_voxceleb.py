"""Prepare VoxCeleb1 and VoxCeleb2 for training and verification tests.

Layouts (the official downloads, unpacked)::

    <vox1>/wav/<spk>/<video>/<utt>.wav      VoxCeleb1; trial lists in <vox1>
    <vox1>/meta/veri_test.txt               or <vox1>/meta
    <vox2>/dev/aac/<spk>/<video>/<utt>.m4a  VoxCeleb2 dev, converted once by
    <vox2>/dev/wav/<spk>/<video>/<utt>.wav  tools/convert_voxceleb2.py

:func:`prepare_voxceleb` writes ``train.csv``/``dev.csv`` (the training
corpora minus every speaker of the trial lists, 10 % of each speaker held
out), ``test.csv`` (the utterances the trial lists name) and
``trials_<name>.txt`` per list, with IDs as in the CSVs
(``id10270/x6uYqmx31kE/00001``). Lists are given as paths or official
names (``veri_test2.txt``: VoxCeleb1-O cleaned).
"""

import os
import warnings

import numpy as np

from dampit.dataio.preparation import (
    DataPreparationError,
    check_files,
    check_training_split,
    files_fingerprint,
    scan_audio_tree,
    split_dev,
    unique_ids,
)
from dampit.dataio.prepared import cached, check_folder, write_outputs
from dampit.dataio.trials import (
    read_trials,
    speaker_of,
    trial_summary,
    utt_to_id,
)

#: Official trial lists -> (protocol, number of trials).
OFFICIAL_TRIAL_LISTS = {
    "veri_test.txt": ("VoxCeleb1-O", 37720),
    "veri_test2.txt": ("VoxCeleb1-O cleaned", 37611),
    "list_test_all.txt": ("VoxCeleb1-E", 581480),
    "list_test_all2.txt": ("VoxCeleb1-E cleaned", 579818),
    "list_test_hard.txt": ("VoxCeleb1-H", 552536),
    "list_test_hard2.txt": ("VoxCeleb1-H cleaned", 550894),
}
CONVERT_HINT = "convert it first: python tools/convert_voxceleb2.py {}"


def find_trial_list(name, vox1_folder=None):
    """Path of a trial list given as a path or a file name, looked for as
    given, then in ``<vox1>/meta`` and ``<vox1>``.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(d, "meta"))
    >>> open(os.path.join(d, "meta", "veri_test.txt"), "w").close()
    >>> find_trial_list("veri_test.txt", d)[len(d):]
    '/meta/veri_test.txt'
    """
    base = os.fspath(name)
    tried = [base]
    if vox1_folder is not None and os.path.basename(base) == base:
        tried += [os.path.join(vox1_folder, "meta", base)]
        tried += [os.path.join(vox1_folder, base)]
    for path in tried:
        if os.path.isfile(path):
            return path
    raise DataPreparationError(
        f"trial list {name!r} not found; tried: {', '.join(tried)}"
    )


def _vox2_files(vox2_folder):
    """``(wav files by ID, unconverted m4a files as (path, reason))``."""
    aac = os.path.join(vox2_folder, "dev", "aac")
    m4a = scan_audio_tree(aac, (".m4a",)) if os.path.isdir(aac) else []
    hint = CONVERT_HINT.format(aac)
    for root in (os.path.join(vox2_folder, "dev", "wav"), aac):
        if os.path.isdir(root):
            break
    else:
        raise DataPreparationError(f"no VoxCeleb2 audio in {vox2_folder}")
    rel = scan_audio_tree(root, (".wav",))
    if not rel:
        more = f" ({len(m4a)} m4a files in {aac}: {hint})" if m4a else ""
        raise DataPreparationError(f"no VoxCeleb2 wav files in {root}{more}")
    ids = unique_ids(rel, root)
    files = {i: os.path.join(root, *r.split("/")) for i, r in zip(ids, rel)}
    missing = [os.path.join(aac, *r.split("/")) for r in m4a]
    missing = [p for r, p in zip(m4a, missing) if utt_to_id(r) not in files]
    return files, [(p, f"not converted to wav: {p} ({hint})") for p in missing]


def prepare_voxceleb(
    save_folder,
    vox1_folder=None,
    vox2_folder=None,
    trial_lists=("veri_test.txt",),
    train_sets=None,
    skip_bad=False,
    min_speakers=2,
    keep=False,
):
    """Write train/dev/test CSVs and ID trial lists for VoxCeleb1/2.

    Arguments
    ---------
    save_folder : str or os.PathLike
        Output folder: new, empty or a prepared folder of dampit's, not a
        corpus folder, inside one or holding one
        (:func:`~dampit.dataio.prepared.check_folder`).
    vox1_folder, vox2_folder : str or None
        Corpus roots (VoxCeleb1 is needed for trial lists).
    trial_lists : sequence of str
        Official names or paths; their speakers never train.
    train_sets : sequence of str or None
        ``"vox1"`` and/or ``"vox2"`` (None: every corpus given; the paper
        trains on ``("vox2",)``).
    skip_bad : bool
        Skip unusable or unconverted files, and trials naming them.
    min_speakers : int
        Fewest training speakers with 2+ training utterances (P).
    keep : bool
        A run trains on ``save_folder``'s preparation: refuse to replace
        it with one of other options or data files
        (:func:`~dampit.dataio.prepared.cached`).

    Returns
    -------
    dict
        Output paths (``trials``: name -> path), counts, trial statistics.

    Example
    -------
    >>> import tempfile, soundfile as sf
    >>> vox1, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> for spk in ["id10001", "id10002", "id10270", "id10271"]:
    ...     for k in range(6):
    ...         p = os.path.join(vox1, "wav", spk, "vid", f"0000{k}.wav")
    ...         os.makedirs(os.path.dirname(p), exist_ok=True)
    ...         sf.write(p, np.sin(np.arange(1600) * (k + 1)), 16000)
    >>> trials = os.path.join(vox1, "my_trials.txt")
    >>> _ = open(trials, "w").write(
    ...     "1 id10270/vid/00000.wav id10270/vid/00001.wav\\n"
    ...     "0 id10270/vid/00000.wav id10271/vid/00001.wav\\n")
    >>> res = prepare_voxceleb(out, vox1_folder=vox1, trial_lists=[trials])
    >>> res["n_train"], res["n_dev"], res["n_test_utts"]
    (10, 2, 3)
    """
    if vox1_folder is None and vox2_folder is None:
        raise ValueError(
            "prepare_voxceleb: give vox1_folder and/or vox2_folder"
        )
    if trial_lists and vox1_folder is None:
        raise ValueError(
            "prepare_voxceleb: trial lists need VoxCeleb1: give vox1_folder"
        )
    given = {"vox1": vox1_folder, "vox2": vox2_folder}
    train_sets = list(train_sets or [k for k, v in given.items() if v])
    for name in train_sets:
        if given.get(name) is None:
            raise ValueError(
                f"train_sets names {name!r} but {name}_folder is None"
            )
    given = {k: os.path.abspath(v) for k, v in given.items() if v is not None}
    save_folder = os.fspath(save_folder)
    check_folder(save_folder, list(given.values()))
    paths = [find_trial_list(t, given.get("vox1")) for t in trial_lists or ()]
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f"trial lists with the same file name: {paths}")
    opts = dict(given, trial_lists=[os.path.abspath(p) for p in paths])
    opts.update(
        train_sets=train_sets, skip_bad=skip_bad, min_speakers=min_speakers
    )
    files, corpus, bad = {}, {}, []
    if "vox1" in given:
        root = os.path.join(given["vox1"], "wav")
        if not os.path.isdir(root):
            raise DataPreparationError(
                f"VoxCeleb1 folder {given['vox1']} has no wav/ folder"
            )
        rel = scan_audio_tree(root, (".wav",))
        for i, r in zip(unique_ids(rel, root), rel):
            files[i], corpus[i] = os.path.join(root, *r.split("/")), "vox1"
    if "vox2" in given:
        vox2, bad = _vox2_files(given["vox2"])
        dup = sorted(set(vox2) & set(files))
        if dup:
            raise DataPreparationError(
                f"{len(dup)} utterance ID(s) in both VoxCeleb1 and VoxCeleb2: "
                + ", ".join(dup[:10])
            )
        files.update(vox2)
        corpus.update(dict.fromkeys(vox2, "vox2"))
    opts["files"] = files_fingerprint([*files.values(), *paths])
    names = [f"trials_{s}.txt" for s in stems]
    outputs = ["train.csv", "dev.csv", "test.csv"] + names
    summary = cached(save_folder, opts, outputs, keep)
    if summary is not None:
        return summary
    trials = {}
    for name, path in zip(names, paths):
        trials[name] = read_trials(path)
        proto, want = OFFICIAL_TRIAL_LISTS.get(os.path.basename(path), ("", 0))
        if want and len(trials[name]) != want:
            warnings.warn(
                f"{path}: {len(trials[name])} trials, the official {proto} "
                f"list has {want} (truncated or modified file?)",
                stacklevel=2,
            )
    test_ids = sorted({u for ts in trials.values() for t in ts for u in t[1:]})
    for u in test_ids:
        if u not in files:
            p = os.path.join(given["vox1"], "wav", *u.split("/")) + ".wav"
            bad.append((p, f"audio file not found (in a trial list): {p}"))
    test_spk = {speaker_of(u) for u in test_ids}
    train_ids = [
        i
        for i in sorted(files)
        if corpus[i] in train_sets and speaker_of(i) not in test_spk
    ]
    wanted = train_ids + [u for u in test_ids if u in files]
    where = " and ".join(given.values())
    info = check_files(
        [files[i] for i in wanted], skip_bad, save_folder, where, bad
    )
    rows = {
        i: (i, files[i], *info[files[i]], speaker_of(i))
        for i in wanted
        if files[i] in info
    }
    by_spk = {}
    for i in train_ids:
        if i in rows:
            by_spk.setdefault(rows[i][-1], []).append(rows[i])
    train, dev = split_dev(by_spk, np.random.default_rng(1234))
    check_training_split(train, dev, where, min_speakers)
    stats = {}
    for name in names:
        kept = [t for t in trials[name] if t[1] in rows and t[2] in rows]
        if len(kept) < len(trials[name]):
            warnings.warn(
                f"trial list {name}: dropped {len(trials[name]) - len(kept)} "
                f"of {len(trials[name])} trials naming skipped files",
                stacklevel=2,
            )
        trials[name] = kept
        stats[name[7:-4]] = trial_summary(kept)
    return write_outputs(
        save_folder,
        opts,
        {
            "train": train,
            "dev": dev,
            "test": [rows[u] for u in test_ids if u in rows],
        },
        trials,
        trials={n[7:-4]: n for n in names},
        trial_stats=stats,
        n_train_speakers=len(by_spk),
        n_test_speakers=len(test_spk),
        n_bad_skipped=len(bad) + len(wanted) - len(rows),
    )
