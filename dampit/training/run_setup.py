"""Start a recipe run: check, lock, prepare the data, load the YAML once.

The data keys are read plainly first (references resolved, no object
built), so that the number of training speakers is known before the one
``load_hyperpyyaml`` that builds the modules (``n_speakers`` override).
"""

import atexit
import json
import logging
import os
import sys
import types

import ruamel.yaml
import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml, resolve_references
from speechbrain.dataio.dataio import load_data_csv
from speechbrain.utils.distributed import if_main_process, run_on_main

from dampit.dataio.audio import AudioError
from dampit.dataio.manifest import ManifestError, check_manifest
from dampit.dataio.preparation import DataPreparationError
from dampit.dataio.prepare_folder import prepare_folder
from dampit.dataio.prepare_voxceleb import prepare_voxceleb
from dampit.dataio.prepared import (
    PREP_LOCK,
    PreparedFolderError,
    check_folder,
    saved_opts,
)
from dampit.dataio.trials import TrialListError, read_trials
from dampit.training.arguments import LISTS, ArgumentError, check_values
from dampit.training.command_line import CommandLineError, parse_command_line
from dampit.training.run_lock import RunLock
from dampit.utils.atomic import atomic_write_text
from dampit.utils.checkpoints import CheckpointLoadError, CheckpointSaveError
from dampit.utils.file_lock import FileLock, LockError
from dampit.utils.hparams import VariantError, resolve_variant

logger = logging.getLogger(__name__)
VOX_KEYS = ("vox1_subdir", "vox2_subdir")
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


class RecipeError(ValueError):
    """A bad argument or data folder, reported in one line."""


USER_ERRORS = (
    RecipeError,
    CommandLineError,
    ArgumentError,
    VariantError,
    ManifestError,
    DataPreparationError,
    PreparedFolderError,
    TrialListError,
    CheckpointLoadError,
    CheckpointSaveError,
    LockError,
    AudioError,
)


def check_arguments(hp, hparams_file):
    """Refuse a missing data folder, a value out of
    :data:`dampit.training.arguments.BOUNDS` (``ArgumentError``; a scalar
    list key becomes a list in ``hp``), an output folder that cannot be
    written (one-line ``RecipeError``) or a ``prep_folder`` the
    preparation must not write into (``PreparedFolderError``:
    :func:`~dampit.dataio.prepared.check_folder`)."""
    check_values(hp, hparams_file)
    folders = hp.get("data_folder")
    if not isinstance(folders, list):
        folders = [folders]
    for folder in folders:
        if not isinstance(folder, str) or not os.path.isdir(folder):
            raise RecipeError(f"data_folder={folder}: no such folder")
    if isinstance(hp.get("prep_folder"), str):
        check_folder(hp["prep_folder"], folders)
    out = parent = os.path.abspath(hp["output_folder"])
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not (os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)):
        raise RecipeError(
            f"output_folder={out}: {parent} is not a writable folder"
        )


def read_values(base_file, overrides, where):
    """The values of the HyperPyYAML file ``base_file`` with
    ``overrides`` (a dict or a YAML text): references resolved, no object
    built, so nothing is created yet. A missing ``!PLACEHOLDER``, a bad
    ``!ref``, an override of a key the file lacks or a syntax error is a
    one-line ``RecipeError`` naming ``where`` (the file given on the
    command line).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "h.yaml")
    >>> _ = open(path, "w").write("a: 1\\nb: !ref <a>\\nc: !PLACEHOLDER\\n")
    >>> dict(read_values(path, {"c": 3}, "h.yaml"))
    {'a': 1, 'b': 1, 'c': 3}
    >>> try:
    ...     read_values(path, {}, "h.yaml")
    ... except RecipeError as err:
    ...     print(err)
    h.yaml: 'c' is a !PLACEHOLDER and must be replaced.
    >>> try:
    ...     read_values(path, {"c": 3, "P": 2}, "h.yaml")
    ... except RecipeError as err:
    ...     print(err)
    h.yaml: --P is not a key of this YAML file
    """
    with open(base_file, encoding="utf-8") as f:
        try:  # a missing !PLACEHOLDER, a bad !ref, a syntax error
            text = resolve_references(f, overrides, overrides_must_match=True)
            plain = ruamel.yaml.YAML().load(text)
        except (ValueError, ruamel.yaml.YAMLError) as err:
            text = " ".join(str(err).split())
            raise RecipeError(f"{where}: {text}") from None
        except KeyError as err:  # hyperpyyaml: "Override 'P' not found in"
            key = str(err.args[0]).split("'")[1]
            raise RecipeError(
                f"{where}: --{key} is not a key of this YAML file"
            ) from None
    if not isinstance(plain, dict):
        raise RecipeError(f"{base_file}: not a mapping of keys")
    return plain


def prepare_data(hp):
    """Write (once) the manifests and trial lists of ``data_layout``
    "voxceleb" or "folder" (one folder or a list of corpora, split as
    ``test_corpora`` says; at least ``P`` training classes); return
    ``train``, ``dev``, ``test`` (manifests), ``trials`` (name -> file) and
    ``n_classes``: the training speakers, a copy per ``speed_speakers``,
    and ``n_trials`` (0: no test speakers, nothing to verify)."""
    copies = 1 + len(hp.get("speed_speakers") or [])
    p = -(-int(hp["P"]) // copies)  # speakers that make P classes
    common = dict(skip_bad=hp["skip_bad_files"], min_speakers=p)
    if hp["data_layout"] == "voxceleb":
        if not isinstance(hp["data_folder"], str):
            raise RecipeError(
                f"data_folder={hp['data_folder']}: data_layout voxceleb "
                "reads one folder (a list needs data_layout folder)"
            )
        vox = [os.path.join(hp["data_folder"], hp[k]) for k in VOX_KEYS]
        s = prepare_voxceleb(
            hp["prep_folder"],
            *[v if os.path.isdir(v) else None for v in vox],
            trial_lists=list(hp["trial_lists"]),
            train_sets=list(hp["train_sets"]),
            **common,
        )
    elif hp["data_layout"] == "folder":
        s = prepare_folder(
            hp["data_folder"],
            hp["prep_folder"],
            n_test_speakers=hp["n_test_speakers"],
            n_folds=hp["n_folds"],
            fold=hp["fold"],
            n_valid_speakers=hp["n_valid_speakers"],
            test_corpora=hp.get("test_corpora"),
            **common,
        )
    else:
        raise RecipeError(f"data_layout={hp['data_layout']}: voxceleb|folder")
    trials = s["trials"]
    if "trial_stats" in s:  # voxceleb: one count per trial list
        n_trials = sum(st["trials"] for st in s["trial_stats"].values())
    else:
        n_trials = s["n_trials"]
    return {
        "opts": saved_opts(hp["prep_folder"]),
        "train": s["train_csv"],
        "dev": s["dev_csv"],
        "test": s["test_csv"],
        "trials": trials if isinstance(trials, dict) else {"trials": trials},
        "n_classes": s["n_train_speakers"] * copies,
        "n_trials": n_trials,
    }


def data_options(hp):
    """The values of :data:`DATA_KEYS` in ``hp`` (those it has), as JSON
    values, the data folders as absolute paths.

    Example
    -------
    >>> data_options({"data_folder": "/d/x/../y", "fold": 1, "lr": 0.1})
    {'data_folder': '/d/y', 'fold': 1}
    """
    opts = {k: hp[k] for k in DATA_KEYS if k in hp}
    folders = opts.get("data_folder")
    if isinstance(folders, str):
        opts["data_folder"] = os.path.abspath(folders)
    elif isinstance(folders, list):
        opts["data_folder"] = [os.path.abspath(f) for f in folders]
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
    """The one-line RecipeError of a run folder holding another run."""
    return RecipeError(
        f"output_folder={os.path.abspath(hp['output_folder'])} holds a run "
        f"(save_folder={hp['save_folder']}) on other data: {what}; choose "
        "another output_folder, or remove that run to start anew"
    )


def check_run_data(hp):
    """Refuse (one-line ``RecipeError`` naming the output folder and the
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


def prepare_run(hp):
    """The main process's preparation of a run (:func:`start_run`):
    :func:`check_run_data`, then :func:`prepare_data` holding
    ``<prep_folder>/prep.lock`` (a second preparation into the same
    folder meanwhile is refused in one line naming its holder)."""
    check_run_data(hp)
    prep = hp["prep_folder"]
    lock = FileLock(
        os.path.join(prep, PREP_LOCK),
        f"prep_folder {os.path.abspath(prep)}",
        "wait for its preparation to end or choose another prep_folder",
    )
    with lock:
        prepare_data(hp)


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
        raise RecipeError(
            f"prep_folder={hp['prep_folder']}: prepared again by another "
            f"run with other options ({', '.join(differ) or 'none left'}) "
            "since this run read it; give each run its own prep_folder"
        )


def check_label_encoder(encoder, train_data, path):
    """Refuse (one-line ``RecipeError``) a loaded label encoder whose
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
    ... except RecipeError as err:
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
    raise RecipeError(
        f"{path}: its {len(labels)} speakers are not the {len(speakers)} "
        f"training speakers ({', '.join(said)}); it is another run's: "
        "choose another output_folder"
    )


def check_trials(data):
    """Refuse a prepared trial list naming an utterance that is not in the
    prepared test manifest (one-line ``TrialListError`` naming the list
    and its lines), before training; no test speakers (no trials) is
    nothing to check."""
    if data["n_trials"] == 0:
        return
    test_ids = list(load_data_csv(data["test"]))
    for path in data["trials"].values():
        read_trials(path, known_ids=test_ids)


def load_with_n_speakers(base_file, overrides, plain, n_classes, where):
    """``(hparams, plain)``: the HyperPyYAML file ``base_file`` loaded
    once with ``overrides`` and ``n_speakers`` = ``n_classes`` (the
    training classes of the prepared data, set in ``overrides``), and its
    values read plainly again with them (:func:`read_values`). When the
    YAML's own value (``plain``: its values) says otherwise, one warning
    line names ``where`` (the file given on the command line) and both
    numbers; the data's number is the one used. A value a constructor
    refuses is a one-line ``RecipeError`` naming ``where`` and the first
    line of the constructor's message. dampit's recipe and the template
    recipe both call it.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "h.yaml")
    >>> _ = open(path, "w").write("n_speakers: 25\\nout: !ref <n_speakers>\\n")
    >>> plain = {"n_speakers": 25}
    >>> hparams, plain = load_with_n_speakers(path, {}, plain, 18, "h.yaml")
    >>> hparams["out"], plain["n_speakers"]
    (18, 18)
    >>> _ = open(path, "w").write("n_speakers: 25\\nm: !new:torch.nn.Dropout\\n"
    ...                           "    p: 2\\n")
    >>> try:
    ...     load_with_n_speakers(path, {}, plain, 18, "h.yaml")
    ... except RecipeError as err:
    ...     print(err)
    h.yaml: dropout probability has to be between 0 and 1, but got 2
    """
    overrides["n_speakers"] = n_classes
    said = plain.get("n_speakers")
    if said is not None and said != n_classes:
        logger.warning(
            "n_speakers=%d: the training classes of the data (%s says %s)",
            n_classes,
            where,
            said,
        )
    with open(base_file, encoding="utf-8") as f:
        try:  # a value a constructor refuses that the bounds let through
            hparams = load_hyperpyyaml(f, overrides)
        except (ValueError, TypeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise RecipeError(f"{where}: {first}") from None
    return hparams, read_values(base_file, overrides, where)


def run_folders(hp):
    """``(folder, key)`` of the folders a run holds: its output folder,
    and its save folder when that lies outside it (two runs given one
    ``save_folder`` would delete each other's checkpoints).

    Example
    -------
    >>> run_folders({"output_folder": "/r/a", "save_folder": "/r/a/save"})
    [('/r/a', 'output_folder')]
    >>> run_folders({"output_folder": "/r/a", "save_folder": "/r/s"})[1]
    ('/r/s', 'save_folder')
    """
    out = os.path.abspath(hp["output_folder"])
    save = os.path.abspath(hp["save_folder"])
    folders = [(out, "output_folder")]
    if os.path.commonpath([out, save]) != out:
        folders.append((save, "save_folder"))
    return folders


def start_run(argv):
    """Parse ``argv`` (SpeechBrain's options; the overrides as typed, see
    :func:`~dampit.training.command_line.parse_command_line`), check, lock
    the output folder and a save folder outside it (:func:`run_folders`;
    the main process, until exit), prepare the data (:func:`prepare_run`:
    a run folder holding a run on other data is refused), check the
    manifests and trial lists (:func:`check_trials`), record the run's data
    (:func:`record_run_data`), and load
    the YAML once with ``n_speakers`` = the training speakers. Returns a
    namespace: ``hparams``, ``plain`` (the same YAML's values, nothing
    built: :func:`read_values`), ``run_opts``, ``data``
    (:func:`prepare_data`), ``hparams_file``, ``base_file``, ``overrides``
    (to save)."""
    hparams_file, run_opts, overrides = parse_command_line(argv)
    base_file, merged = resolve_variant(hparams_file, overrides)
    plain = read_values(base_file, merged, hparams_file)
    check_arguments(plain, hparams_file)
    for key in LISTS:  # a scalar given for a list, now a list
        if key in plain:
            merged[key] = plain[key]
    sb.utils.distributed.ddp_init_group(run_opts)
    if if_main_process():
        for folder, key in run_folders(plain):
            lock = RunLock(folder, key).acquire()
            atexit.register(lock.release)
    run_on_main(prepare_run, kwargs={"hp": plain})
    data = prepare_data(plain)  # every rank reads the cached result
    for key in ("train", "dev", "test"):
        check_manifest(data[key])
    check_trials(data)
    if if_main_process():
        record_run_data(plain, data)
    hparams, plain = load_with_n_speakers(
        base_file, merged, plain, data["n_classes"], hparams_file
    )
    return types.SimpleNamespace(
        hparams=hparams,
        plain=plain,
        run_opts=run_opts,
        data=data,
        hparams_file=hparams_file,
        base_file=base_file,
        overrides=merged,
    )


def run_script(main):
    """Run ``main(sys.argv[1:])``; a user error exits with one line."""
    try:
        main(sys.argv[1:])
    except USER_ERRORS as err:
        sys.exit(f"error: {err}")
