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

Several folders (corpora) can be prepared together: their IDs and
speakers then start with the corpus name (``so762:0001``), so that two
corpora's speakers never merge; ``test_corpora`` names the corpora that
are split into test and training speakers, the others only train.

Every file is checked once (``check_audio``: decoded until it is proven
usable): files training cannot use (unreadable, NaN, silent, shorter than
``MIN_DURATION``) are all listed in ``bad_files.txt``
and refused in one error, or skipped with ``skip_bad=True``. Data errors are
``DataPreparationError`` with a one-line message naming the folder, raised
before anything is written (the helpers both preparations share are in
:mod:`dampit.dataio.preparation`).
"""

import os
import re

import numpy as np

from dampit.dataio.audio import AUDIO_EXTENSIONS
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
    make_trials,
    speaker_of,
    trial_summary,
)

CSV_VARIABLE = re.compile(r"\$[\w.]")  # as speechbrain's load_data_csv


def data_folders(data_folder):
    """The absolute folders of ``data_folder`` (one folder or a list),
    refusing an empty list and a folder listed twice (a link to a listed
    folder included: its speakers would train and test under two names).

    Example
    -------
    >>> data_folders("/data/so762") == [os.path.abspath("/data/so762")]
    True
    """
    given = data_folder
    if not isinstance(data_folder, (list, tuple)):
        given = [data_folder]
    folders = [os.path.abspath(os.fspath(f)) for f in given]
    if not folders:
        raise DataPreparationError("data_folder: an empty list of folders")
    real = [os.path.realpath(f) for f in folders]
    twice = sorted(f for f, r in zip(folders, real) if real.count(r) > 1)
    if twice:
        raise DataPreparationError(
            f"data_folder lists {twice[0]} twice (links followed: "
            f"{', '.join(twice)})"
        )
    return folders


def corpus_names(folders):
    """The corpus name of each folder: its base name, with ``-2``, ``-3``
    ... added to a name already taken.

    Example
    -------
    >>> corpus_names(["/a/so762", "/b/dspspeech", "/c/so762/"])
    ['so762', 'dspspeech', 'so762-2']
    """
    names = []
    for folder in folders:
        base = os.path.basename(os.path.normpath(folder)) or "data"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.append(name)
    return names


def held_out(speakers, n_test_speakers, n_folds, fold, rng, where):
    """The test speakers drawn from ``speakers`` (sorted): the first
    ``n_test_speakers`` (None: 20 %, at least 2; 0: none, every speaker
    trains) of ``rng``'s permutation, or its part ``fold`` of ``n_folds``.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> held_out(list("abcdef"), 2, None, 0, rng, "x")
    ['c', 'd']
    >>> held_out(list("abcdef"), 0, None, 0, rng, "x")
    []
    """
    if n_test_speakers == 0 and not n_folds:  # every speaker trains
        return []
    n_test = n_test_speakers
    if n_test is None:
        n_test = max(2, round(0.2 * len(speakers)))
    if n_folds:  # the size of np.array_split's part number `fold`
        n_test = len(speakers) // n_folds + (fold < len(speakers) % n_folds)
    if not 2 <= n_test <= len(speakers):
        at = f" (fold {fold} of n_folds={n_folds})" if n_folds else ""
        raise DataPreparationError(
            f"{where}: {len(speakers)} speaker(s) found; n_test_speakers"
            f"={n_test}{at} must be at least 2 and at most {len(speakers)}"
        )
    perm = rng.permutation(len(speakers))
    held = np.array_split(perm, n_folds)[fold] if n_folds else perm[:n_test]
    return sorted(speakers[k] for k in held)


def scan_corpora(folders, names):
    """``(ids, paths, speakers)`` of every audio file of the corpora; with
    several folders IDs and speakers start with the corpus name and a
    colon (``so762:0001/u1``, speaker ``so762:0001``: an ID's first path
    component is its speaker). A path with ``$name`` in it (a variable to
    SpeechBrain's CSV reader) and an ID with white space or a leading ``#``
    (trial lists and score files split on white space and skip ``#``
    lines) are refused, before any file is read."""
    ids, paths, speakers = [], [], []
    for folder, name in zip(folders, names):
        rel_paths = scan_audio_tree(folder)
        if not rel_paths:
            flat = scan_audio_tree(folder, min_depth=1)
            raise DataPreparationError(
                f"{folder}: {len(flat)} audio file(s) but no <speaker>/ "
                "sub-folders: put each speaker's files in <folder>/<speaker>/"
                if flat
                else f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in "
                f"speaker sub-folders of {folder}"
            )
        named = [r for r in rel_paths if CSV_VARIABLE.search(f"{folder}/{r}")]
        if named:
            raise DataPreparationError(
                f"{os.path.join(folder, named[0])}: SpeechBrain's CSV reader "
                "takes '$' and a name for a variable: rename the file or "
                f"folder ({len(named)} such path(s))"
            )
        prefix = f"{name}:" if len(folders) > 1 else ""
        own = [prefix + i for i in unique_ids(rel_paths, folder)]
        unfit = [
            k for k, i in enumerate(own) if i.split() != [i] or i[0] == "#"
        ]
        if unfit:
            raise DataPreparationError(
                f"{os.path.join(folder, rel_paths[unfit[0]])}: its ID "
                f"{own[unfit[0]]!r} has white space or a leading '#', which "
                "trial lists and score files cannot hold: rename the file or "
                f"folder ({len(unfit)} such path(s))"
            )
        for i, rel in zip(own, rel_paths):
            ids.append(i)
            paths.append(os.path.join(folder, *rel.split("/")))
            speakers.append(speaker_of(i))
    return ids, paths, speakers


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
    test_corpora=None,
    keep=False,
):
    """Write ``train.csv``, ``dev.csv``, ``test.csv`` and ``trials.txt`` for
    one or several ``<speaker>/**/<utt>`` folders (done once per set of
    options and data files: a file added, removed or changed since
    prepares again).

    Arguments
    ---------
    data_folder : str or os.PathLike, or a list of them
        One sub-folder per speaker. With several folders (corpora), IDs
        and speakers start with the corpus name, the folder's base name
        (``-2``, ``-3``... added to a name already taken, see
        :func:`corpus_names`) and a colon: ``so762:0001/000010011``,
        speaker ``so762:0001``. With one folder they do not.
    save_folder : str or os.PathLike
        Output folder: new, empty or a prepared folder of dampit's, not a
        data folder, inside one or holding one
        (:func:`~dampit.dataio.prepared.check_folder`).
    n_test_speakers : int or None
        Test speakers (None: 20 % of the speakers, at least 2; 0: none,
        every speaker trains and there are no trials: a model to ship,
        whose accuracy is measured by k-fold runs).
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
    test_corpora : list of str, str or None
        None: the test speakers (or folds) are drawn from all the
        speakers pooled, and the trials pair any two test utterances.
        A list of corpus names: each of these corpora is split on its own
        (``n_test_speakers`` or fold ``fold`` of its own speakers, with
        the seed's permutation of its speakers alone: the same speakers
        as when it is prepared alone) and its trials pair its own
        utterances only; the other corpora's speakers only train.
    skip_bad : bool
        Skip unusable files (listed in ``bad_files.txt``) with a warning.
    min_speakers : int
        Fewest training speakers with 2+ training utterances (the P of
        P x K batches).
    keep : bool
        A run trains on ``save_folder``'s preparation: refuse to replace
        it with one of other options or data files
        (:func:`~dampit.dataio.prepared.cached`).

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
    folders = data_folders(data_folder)
    names = corpus_names(folders)
    where = ", ".join(folders)
    save_folder = os.fspath(save_folder)
    check_folder(save_folder, folders)
    opts = {"data_folder": folders if len(folders) > 1 else folders[0]}
    opts.update(n_test_speakers=n_test_speakers, seed=seed, skip_bad=skip_bad)
    opts.update(min_speakers=min_speakers, n_folds=n_folds, fold=fold)
    opts.update(n_valid_speakers=n_valid_speakers)
    if isinstance(test_corpora, str):
        test_corpora = [test_corpora]
    if test_corpora is not None:
        opts["test_corpora"] = test_corpora = list(test_corpora)
        unknown = [c for c in test_corpora if c not in names]
        if unknown or not test_corpora:
            raise DataPreparationError(
                f"test_corpora={test_corpora}: name one or more of the "
                f"corpora {names} (the data folders' base names)"
            )
        if len(folders) == 1:  # one corpus: split as when pooled
            test_corpora = None
    if n_folds is not None and not 0 <= fold < n_folds:
        raise DataPreparationError(
            f"{where}: fold={fold} must be in 0..n_folds-1 ({n_folds})"
        )
    if n_valid_speakers < 0 or n_valid_speakers == 1:
        raise DataPreparationError(
            f"{where}: n_valid_speakers={n_valid_speakers} must be 0 "
            "(off) or at least 2"
        )
    ids, paths, spk_ids = scan_corpora(folders, names)
    opts["files"] = files_fingerprint(paths)
    outputs = ["train.csv", "dev.csv", "test.csv", "trials.txt"]
    summary = cached(save_folder, opts, outputs, keep)
    if summary is not None:
        return summary
    info = check_files(paths, skip_bad, save_folder, where)
    by_spk = {}
    for i, p, s in zip(ids, paths, spk_ids):
        if p in info:
            by_spk.setdefault(s, []).append((i, p, *info[p], s))
    speakers = sorted(by_spk)
    rng = np.random.default_rng(seed)
    split = (n_test_speakers, n_folds, fold)
    if test_corpora is None:
        groups = [held_out(speakers, *split, rng, where)]
    else:
        groups = []
        for name, folder in zip(names, folders):
            if name in test_corpora:
                own = [s for s in speakers if s.startswith(f"{name}:")]
                own_rng = np.random.default_rng(seed)
                groups.append(held_out(own, *split, own_rng, folder))
    test_spk = sorted(s for group in groups for s in group)
    train_spk = [s for s in speakers if s not in test_spk]
    if len(train_spk) < 2 + n_valid_speakers:
        raise DataPreparationError(
            f"{where}: {len(train_spk)} training speaker(s) left by the "
            f"test speakers; at least 2 and n_valid_speakers="
            f"{n_valid_speakers} for validation needed"
        )
    valid_spk = sorted(
        str(s) for s in rng.choice(train_spk, n_valid_speakers, replace=False)
    )
    train_spk = [s for s in train_spk if s not in valid_spk]
    if valid_spk:
        train = [r for s in train_spk for r in by_spk[s]]
        dev = [r for s in valid_spk for r in by_spk[s]]
    else:
        train, dev = split_dev({s: by_spk[s] for s in train_spk}, rng)
    check_training_split(train, dev, where, min_speakers)
    test = [r for s in test_spk for r in by_spk[s]]
    trials = []
    for group in groups:  # pairs within each group of test speakers only
        rows = [r for s in group for r in by_spk[s]]
        utts, spks = [r[0] for r in rows], [r[-1] for r in rows]
        trials += make_trials(utts, spks, seed=seed)
    stats = trial_summary(trials)
    return write_outputs(
        save_folder,
        opts,
        {"train": train, "dev": dev, "test": test},
        {"trials.txt": trials},
        trials="trials.txt",
        corpora=dict(zip(names, folders)) if len(folders) > 1 else None,
        n_train_speakers=len(train_spk),
        n_test_speakers=len(test_spk),
        n_trials=stats["trials"],
        n_target=stats["target"],
        n_nontarget=stats["nontarget"],
        n_bad_skipped=len(paths) - len(info),
        test_speakers=test_spk,
        valid_speakers=valid_spk,
        sample_rates=sorted({sr for _, sr in info.values()}),
    )
