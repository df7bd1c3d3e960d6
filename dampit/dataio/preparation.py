"""What both preparations (:mod:`dampit.dataio.prepare_folder`,
:mod:`dampit.dataio.prepare_voxceleb`) share: the audio tree scan, IDs
refused when two files give one, the audio check of every file (the
unusable ones listed in ``bad_files.txt``), the per-speaker dev split and
its checks. Data errors are :class:`DataPreparationError` with a one-line
message naming the folder or file.
"""

import hashlib
import os
import warnings
from collections import Counter

from tqdm import tqdm

from dampit.dataio.audio import AUDIO_EXTENSIONS, AudioError, check_audio
from dampit.dataio.prepared import BAD_FILES, mark_folder
from dampit.dataio.trials import utt_to_id
from dampit.utils.atomic import atomic_write_text

DEV_FRACTION = 0.1


class DataPreparationError(ValueError):
    """Data that cannot be prepared; the message names the folder or file."""


def scan_audio_tree(root, exts=AUDIO_EXTENSIONS, min_depth=2):
    """Audio files under ``root`` at least ``min_depth`` components deep, as
    sorted relative POSIX paths; hidden names are skipped, links followed.
    A folder reached twice (a link loop, a folder linked twice) raises
    DataPreparationError naming both paths: its files would be listed
    twice.

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
    found, seen = [], {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        first = seen.setdefault(os.path.realpath(dirpath), dirpath)
        if first != dirpath:
            raise DataPreparationError(
                f"{dirpath} and {first} are one folder (a link loop or a "
                "folder linked twice): its files would be listed twice"
            )
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


def files_fingerprint(paths):
    """A short hash of ``paths`` with each file's size: a file added,
    removed, or replaced by one of another size changes it (the key of a
    cached preparation, :func:`dampit.dataio.prepared.cached`); a copy or
    a ``touch`` that keeps the content does not.
    A file that cannot be read is hashed as such (preparation checks it).

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> _ = open(p, "w").write("x")
    >>> one = files_fingerprint([p])
    >>> len(one), one == files_fingerprint([p]), one == files_fingerprint([])
    (16, True, False)
    """
    digest = hashlib.sha256()
    for path in sorted(paths):
        try:
            line = f"{path}\t{os.path.getsize(path)}\n"
        except OSError:
            line = f"{path}\tunreadable\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def unique_ids(rel_paths, where):
    """IDs of ``rel_paths`` (:func:`~dampit.dataio.trials.utt_to_id`),
    refusing duplicates (``a.wav`` and ``a.flac``)."""
    ids = [utt_to_id(p) for p in rel_paths]
    dup = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dup:
        raise DataPreparationError(
            f"{where}: {len(dup)} duplicate utterance ID(s): "
            + ", ".join(dup[:20])
        )
    return ids


def check_files(paths, skip_bad, save_folder, where, bad=()):
    """Check every file (``check_audio``; serially: on cached files threads
    double the CPU time); return ``path -> (frames, rate)`` of the
    usable ones. Unusable files (and ``bad``, ``(path, reason)`` found
    before) go to ``<save_folder>/bad_files.txt`` and are skipped with a
    warning (``skip_bad``) or refused in one error; with none, a
    ``bad_files.txt`` already there is emptied (it lists this check's
    files).

    Example
    -------
    >>> import tempfile
    >>> import numpy as np, soundfile as sf
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
    listing = os.path.join(save_folder, BAD_FILES)
    if not bad and os.path.isfile(listing):  # an earlier preparation's
        atomic_write_text(listing, "")
    if bad:
        mark_folder(save_folder)
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
    >>> import numpy as np
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
            if k in held:
                dev.append(item)
            else:
                train.append(item)
    return train, dev


def check_training_split(train, dev, where, min_speakers):
    """Refuse an empty dev set or fewer than ``min_speakers`` training
    speakers with 2 or more training utterances (rows ``(.., spk)``)."""
    if not dev:
        raise DataPreparationError(
            f"{where}: dev.csv would be empty: no training speaker has the 6 "
            f"or more utterances needed to hold {DEV_FRACTION:.0%} out"
        )
    counts = Counter(row[-1] for row in train)
    usable = sum(c >= 2 for c in counts.values())
    if usable < max(2, min_speakers):
        raise DataPreparationError(
            f"{where}: {usable} training speaker(s) with 2 or more training "
            f"utterances; at least {max(2, min_speakers)} needed (P classes "
            "per batch): add speakers or lower P"
        )
