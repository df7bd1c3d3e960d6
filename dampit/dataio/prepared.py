"""A prepared folder: the manifests, trial lists and options file.

:func:`write_outputs` writes the SpeechBrain CSV manifests (``ID,
duration, wav, start, stop, spk_id``), the trial lists and, last,
``prepare_opts.json`` (the options and a summary, deleted before the
other files are replaced); :func:`cached` reads the summary back when the
options are the same. The summary names its
output files, which lie directly in the folder: a copied or moved
prepared folder reads its own files.

A preparation writes only into a folder of its own: :func:`check_folder`
refuses, before any file is read, a folder that holds files but neither
:data:`MARKER` (written by :func:`mark_folder` before any output) nor
``prepare_opts.json``, and a folder that is a data folder, lies inside
one or holds one.
"""

import contextlib
import csv
import json
import os

from dampit.dataio.trials import write_trials
from dampit.utils.atomic import atomic_path, atomic_write_text

CSV_FIELDS = ("ID", "duration", "wav", "start", "stop", "spk_id")
OPTS_FILE = "prepare_opts.json"
#: The file that marks a folder as dampit's prepared folder.
MARKER = "dampit_prepared.txt"
#: The lock a recipe run holds on the folder while it prepares it.
PREP_LOCK = "prep.lock"
#: The list of unusable audio files a preparation found.
BAD_FILES = "bad_files.txt"
MARKER_TEXT = (
    "A prepared folder of dampit: its manifests and trial lists are "
    "replaced when the data is prepared again.\n"
)


class PreparedFolderError(ValueError):
    """A folder the preparation must not write into; one line naming it."""


def check_folder(save_folder, data_folders):
    """Refuse (one-line :class:`PreparedFolderError`) a ``save_folder``
    that is one of ``data_folders``, lies inside one or holds one, or
    that holds files but neither :data:`MARKER` nor ``prepare_opts.json``
    (a folder prepared before the marker existed). A folder that does not
    exist, or holds nothing but the preparation's lock :data:`PREP_LOCK`
    and the list of unusable files :data:`BAD_FILES` (a refused
    preparation's), is fine.

    Example
    -------
    >>> import tempfile
    >>> base = tempfile.mkdtemp()
    >>> data = os.path.join(base, "data")
    >>> check_folder(os.path.join(base, "prep"), [data])
    >>> try:
    ...     check_folder(os.path.join(data, "prep"), [data])
    ... except PreparedFolderError as err:
    ...     print("cannot be a data folder, lie inside one" in str(err))
    True
    """
    real = os.path.realpath(save_folder)
    for data in data_folders:
        real_data = os.path.realpath(data)
        if os.path.commonpath([real, real_data]) in (real, real_data):
            raise PreparedFolderError(
                f"prep_folder={save_folder}: a prepared folder cannot be "
                f"a data folder, lie inside one or hold one ({data})"
            )
    if not os.path.isdir(save_folder):
        return
    if not set(os.listdir(save_folder)) - {PREP_LOCK, BAD_FILES}:
        return  # empty, locked, or a refused preparation's list of files
    if not any(
        os.path.isfile(os.path.join(save_folder, name))
        for name in (MARKER, OPTS_FILE)
    ):
        raise PreparedFolderError(
            f"prep_folder={save_folder} holds files but is not a prepared "
            f"folder of dampit (no {MARKER} or {OPTS_FILE}): nothing is "
            "written there; give a new or empty folder"
        )


def mark_folder(save_folder):
    """Make ``save_folder`` and write :data:`MARKER` in it, if missing."""
    os.makedirs(save_folder, exist_ok=True)
    marker = os.path.join(save_folder, MARKER)
    if not os.path.isfile(marker):
        atomic_write_text(marker, MARKER_TEXT)


def in_folder(summary, save_folder):
    """``summary`` with its output files (``*_csv``, ``trials``: a name
    or a dict of names) as paths in ``save_folder``.

    The outputs lie directly in the save folder, so only their names are
    kept: a copied or moved folder reads its own files.

    Example
    -------
    >>> s = in_folder({"train_csv": "/old/train.csv", "n": 1}, "new")
    >>> s["train_csv"] == os.path.join("new", "train.csv"), s["n"]
    (True, 1)
    """
    out = dict(summary)
    for key, value in summary.items():
        if isinstance(value, dict) and key == "trials":
            out[key] = {
                k: os.path.join(save_folder, os.path.basename(v))
                for k, v in value.items()
            }
        elif key in ("train_csv", "dev_csv", "test_csv", "trials"):
            out[key] = os.path.join(save_folder, os.path.basename(value))
    return out


def saved_opts(save_folder):
    """The options ``save_folder``'s preparation was made with (its
    ``prepare_opts.json``), or None when it has none or cannot be read.

    Example
    -------
    >>> import tempfile
    >>> saved_opts(tempfile.mkdtemp()) is None
    True
    """
    return _saved(save_folder).get("opts")


def _saved(save_folder):
    """The options file of ``save_folder`` as a dict ({} when unreadable)."""
    try:
        with open(os.path.join(save_folder, OPTS_FILE), encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def cached(save_folder, opts, outputs, keep=False):
    """The saved summary if ``save_folder`` holds ``outputs`` made with
    ``opts`` (output paths in ``save_folder``, see :func:`in_folder`),
    else None. The preparations' ``opts`` hold a fingerprint of the data
    files (:func:`dampit.dataio.preparation.files_fingerprint`): changed
    data are prepared again. With ``keep`` (a run trains on the folder's
    preparation), a preparation with other options or data files is
    refused in one line (:class:`PreparedFolderError`) instead, before
    anything is replaced (an option the folder did not record is
    prepared again: the same split from the same data)."""
    saved = _saved(save_folder)
    new = json.loads(json.dumps(opts))
    old = saved.get("opts")
    differ = []
    if old != new and keep and isinstance(old, dict):
        # a key the folder's version did not record is no difference
        differ = [k for k in sorted(old) if old[k] != new.get(k)]
    if differ:
        what = "options " + ", ".join(differ)
        if differ == ["files"]:
            what = "data files (changed since it was prepared)"
        raise PreparedFolderError(
            f"prep_folder={save_folder}: a run trains on its preparation, "
            f"made with other {what}; nothing replaced: choose another "
            "output_folder and prep_folder"
        )
    if old != new:
        return None
    if not all(os.path.isfile(os.path.join(save_folder, o)) for o in outputs):
        return None
    if not isinstance(saved.get("summary"), dict):
        return None
    return in_folder(saved["summary"], save_folder)


def write_outputs(save_folder, opts, tables, trial_lists, **summary):
    """Write ``<name>.csv`` for ``tables`` (name -> rows ``(ID, path,
    frames, rate, speaker)``), the trial lists (file -> trials) and, last,
    the options with the summary (file names and counts added); return
    the summary with the files' paths (:func:`in_folder`).

    :data:`MARKER` is written first (:func:`mark_folder`), then the old
    options file is deleted: when a write fails half-way,
    no options file describes the outputs and the next call prepares
    again."""
    mark_folder(save_folder)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(save_folder, OPTS_FILE))
    for name, rows in tables.items():
        summary[f"{name}_csv"] = name + ".csv"
        path = os.path.join(save_folder, name + ".csv")
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
    return in_folder(summary, save_folder)
