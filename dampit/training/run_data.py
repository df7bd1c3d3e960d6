"""Which data a recipe run trained on, and the checks that keep a run on
its own data.

A run records the values of :data:`DATA_KEYS` and the fingerprint of
its prepared data files in ``<save_folder>/run_data.json``
(:func:`record_run_data`). A save folder that holds a run is refused for
other data (:func:`check_run_data`, before the preparation rewrites
anything), a prep folder prepared again by another run is refused before
verification (:func:`check_prepared`), and a loaded label encoder must
name exactly the training speakers (:func:`check_label_encoder`). Each
refusal is one line (:class:`RunDataError`).
"""

import json
import os

from dampit.dataio.prepared import saved_opts
from dampit.utils.atomic import atomic_write_text

__all__ = [
    "DATA_KEYS",
    "RUN_DATA",
    "RunDataError",
    "check_label_encoder",
    "check_prepared",
    "check_run_data",
    "data_options",
    "holds_run",
    "record_run_data",
]

VOX_KEYS = ("vox1_subdir", "vox2_subdir")


class RunDataError(ValueError):
    """A run folder, prep folder or label encoder of other data; one line
    naming it."""


#: The keys that choose a run's data and its training speakers, recorded
#: in its save folder (:data:`RUN_DATA`) by :func:`record_run_data`.
DATA_KEYS = (
    "data_layout",
    "data_folder",
    *VOX_KEYS,
    "trial_lists",
    "train_sets",
    "n_test_speakers",
    "n_folds",
    "fold",
    "n_valid_speakers",
    "test_corpora",
    "split_seed",
    "skip_bad_files",
    "speed_speakers",
)
RUN_DATA = "run_data.json"


def data_options(hp):
    """The values of :data:`DATA_KEYS` in ``hp`` (those it has), as JSON
    values, the data folders as absolute paths with links resolved, one
    ``test_corpora`` name as a list.

    Example
    -------
    >>> data_options({"data_folder": "/d/x/../y", "fold": 1, "lr": 0.1})
    {'data_folder': '/d/y', 'fold': 1}
    >>> data_options({"test_corpora": "so762"})
    {'test_corpora': ['so762']}
    """
    opts = {k: hp[k] for k in DATA_KEYS if k in hp}
    folders = opts.get("data_folder")
    if isinstance(folders, str):
        opts["data_folder"] = os.path.realpath(folders)
    elif isinstance(folders, list):
        opts["data_folder"] = [os.path.realpath(f) for f in folders]
    if isinstance(opts.get("test_corpora"), str):  # one name, or a list
        opts["test_corpora"] = [opts["test_corpora"]]
    return json.loads(json.dumps(opts))


def holds_run(save_folder):
    """Whether ``save_folder`` holds a run: a checkpoint (``CKPT+...``,
    a save in progress included) or a label encoder.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> holds_run(d), holds_run(os.path.join(d, "none"))
    (False, False)
    >>> os.mkdir(os.path.join(d, "CKPT+2024-01-01+00-00-00+00"))
    >>> holds_run(d)
    True
    """
    if not os.path.isdir(save_folder):
        return False
    names = os.listdir(save_folder)
    return "label_encoder.txt" in names or any("CKPT+" in n for n in names)


def _run_record(hp):
    """The record :func:`record_run_data` left in the save folder of a
    run it holds, or None (no run, no record)."""
    if not holds_run(hp["save_folder"]):
        return None
    try:
        path = os.path.join(hp["save_folder"], RUN_DATA)
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _refuse_other_run(hp, what):
    """The one-line RunDataError of a run folder holding another run."""
    return RunDataError(
        f"output_folder={os.path.abspath(hp['output_folder'])} holds a run "
        f"(save_folder={hp['save_folder']}) on other data: {what}; choose "
        "another output_folder, or remove that run to start anew"
    )


def check_run_data(hp):
    """Refuse (one-line ``RunDataError`` naming the output folder and the
    differing keys) a save folder that holds a run (:func:`holds_run`)
    made with other :data:`DATA_KEYS` values than ``hp``'s, as recorded
    by :func:`record_run_data`; called before the data are prepared, so
    that nothing is rewritten. A fold 1 run into fold 0's folder would
    otherwise resume fold 0's model and test it on speakers it trained
    on."""
    record = _run_record(hp)
    if record is None:
        return
    old, new = record.get("options") or {}, data_options(hp)
    differ = [k for k in DATA_KEYS if old.get(k) != new.get(k)]
    if differ:
        said = ", ".join(
            f"{k}={old.get(k)} there, {new.get(k)} asked" for k in differ
        )
        raise _refuse_other_run(hp, said)


def record_run_data(hp, data):
    """Write the run's :func:`data_options` and the fingerprint of its
    prepared data files (``data["opts"]``, from :func:`prepare_data`) to
    ``<save_folder>/run_data.json``; a save folder holding a run
    recorded on other files (data added, removed or changed since) is
    refused in one line instead."""
    record = _run_record(hp)
    files = (data["opts"] or {}).get("files")
    if record is not None and record.get("files") != files:
        raise _refuse_other_run(
            hp, "the files of data_folder changed since it was prepared"
        )
    text = json.dumps({"options": data_options(hp), "files": files})
    os.makedirs(hp["save_folder"], exist_ok=True)
    atomic_write_text(os.path.join(hp["save_folder"], RUN_DATA), text + "\n")


def check_prepared(hp, data):
    """Refuse (one line) a prep folder whose preparation is no longer the
    one this run read (``data["opts"]``, from :func:`prepare_data`): a
    run sharing ``prep_folder`` prepared other options into it meanwhile,
    and its test set and trials are not this run's. Called before
    verification."""
    now = saved_opts(hp["prep_folder"])
    if now != data["opts"]:
        differ = sorted(
            k
            for k in set(now or {}) | set(data["opts"] or {})
            if (now or {}).get(k) != (data["opts"] or {}).get(k)
        )
        raise RunDataError(
            f"prep_folder={hp['prep_folder']}: prepared again by another "
            f"run with other options ({', '.join(differ) or 'none left'}) "
            "since this run read it; give each run its own prep_folder"
        )


def check_label_encoder(encoder, train_data, path):
    """Refuse (one-line ``RunDataError``) a loaded label encoder whose
    labels are not exactly the speakers of ``train_data`` (a
    DynamicItemDataset with ``spk_id``; speed copies included as the
    recipe names them): ``path`` was written by another run's training
    speakers.

    Example
    -------
    >>> from speechbrain.dataio.dataset import DynamicItemDataset
    >>> from speechbrain.dataio.encoder import CategoricalEncoder
    >>> enc = CategoricalEncoder()
    >>> enc.update_from_iterable(["a", "b"])
    >>> rows = {"u1": {"spk_id": "a"}, "u2": {"spk_id": "c"}}
    >>> try:
    ...     check_label_encoder(enc, DynamicItemDataset(rows), "enc.txt")
    ... except RunDataError as err:
    ...     print(err)
    enc.txt: its 2 speakers are not the 2 training speakers (b not among
    them, c missing); it is another run's: choose another output_folder
    """
    speakers = {row["spk_id"] for row in train_data.data.values()}
    labels = set(encoder.lab2ind)
    if labels == speakers:
        return
    extra, missing = sorted(labels - speakers), sorted(speakers - labels)
    said = []
    if extra:
        said.append(f"{extra[0]} not among them")
    if missing:
        said.append(f"{missing[0]} missing")
    raise RunDataError(
        f"{path}: its {len(labels)} speakers are not the {len(speakers)} "
        f"training speakers ({', '.join(said)}); it is another run's: "
        "choose another output_folder"
    )
