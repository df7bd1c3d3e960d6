"""Start a recipe run: check, lock, prepare the data, load the YAML once.

The data keys are read plainly first (references resolved, no object
built), so that the number of training speakers is known before the one
``load_hyperpyyaml`` that builds the modules (``n_speakers`` override).
"""

import atexit
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
from dampit.training.run_data import (
    VOX_KEYS,
    RunDataError,
    check_run_data,
    holds_run,
    record_run_data,
)
from dampit.training.run_lock import RunLock
from dampit.utils.checkpoints import CheckpointLoadError, CheckpointSaveError
from dampit.utils.file_lock import FileLock, LockError
from dampit.utils.hparams import VariantError, resolve_variant

logger = logging.getLogger(__name__)


class RecipeError(ValueError):
    """A bad argument or data folder, reported in one line."""


USER_ERRORS = (
    RecipeError,
    RunDataError,
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
    common["keep"] = holds_run(hp["save_folder"])  # never re-split its data
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
