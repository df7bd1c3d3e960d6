"""A recipe run -> a model folder (the library of ``dampit-export``,
:mod:`dampit.cli.export`).

A run with a ``verification/`` folder (dampit's recipe, the template's
``train.py``) is exported as its verification saved it
(:mod:`dampit.training.tested_model`): the modules, sample rate and
checkpoints of ``verification/tested_model.json`` and the weights beside
it, copied as they are; its threshold is the EER threshold of
``full_cosine`` in ``verification/summary.json`` (whole-utterance cosine
scores, as the folder's interface computes them; optimistic for the run's
test trials). A run of SpeechBrain's speaker recipe has no
``verification/``: its modules are the ``!new:`` entries
``compute_features``, ``mean_var_norm``, ``embedding_model`` and an ECAPA
``classifier`` of its ``hyperparams.yaml``
(:func:`~dampit.training.tested_model.speechbrain_modules`), its weights
those of the end-of-epoch checkpoint with the lowest ``ErrorRate``. A
``mean_var_norm`` that is not per sentence is refused (its statistics
are not exported). ``--trials PAIRS`` sets the threshold at the EER of
the exported model's cosine scores of a labelled trial list (names
under ``--audio-root``), ``--scores F`` at the EER of a labelled score
file.
``save/label_encoder.txt`` goes with a classifier.

The folder (renamed into place) holds ``dampit_export.json`` (what
``load_model`` reads), ``hyperparams.yaml`` (for SpeechBrain's
``from_hparams``), the weights, ``label_encoder.ckpt``, a ``README.md``
and on request ``embedding_model.ts`` / ``.onnx``; ``load_model`` and
``from_hparams`` must first give the same embeddings from it. The inputs
are read, and refused in one line naming them, before the temporary
folder is made; a folder that fails its check is removed.
``--overwrite`` replaces only a model folder (holding
``dampit_export.json``) or an empty folder; the model folder can be
neither the run folder, nor inside it, nor hold it; a second export into
a model folder being written is refused
(:func:`dampit.utils.atomic.atomic_folder`).
"""

import json
import math
import os
import shutil
import tempfile
import warnings

import ruamel.yaml
import torch
import yaml
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.utils.checkpoints import Checkpointer

from dampit.dataio.trials import (
    TrialListError,
    read_scores,
    read_trial_indices,
    resolve_audio,
)
from dampit.inference.api import (
    HPARAMS_FILE,
    LABELS_FILE,
    SPEC_FILE,
    WEIGHTED,
    ModelFolderError,
    load_model,
)
from dampit.inference.extract import pad_batch
from dampit.inference.model_files import write_model_files
from dampit.inference.portable import export_onnx, export_torchscript
from dampit.metrics.error_rates import compute_eer
from dampit.training.tested_model import TESTED_FILE, speechbrain_modules
from dampit.utils.atomic import atomic_folder

__all__ = [
    "ExportError",
    "export_model",
    "read_run_hparams",
    "read_summary",
]

CHECK_TOL = 1e-5
SCORING = "full_cosine"
REVERIFY = (
    "re-run the verification (the recipe with the same arguments, "
    "number_of_epochs unchanged: it resumes and only verifies)"
)
CARD = """\
# dampit speaker-embedding model

Exported by dampit-export from `{run}` (weights of {checkpoints}). Input:
mono audio at {sample_rate} Hz. Same speaker when the cosine of two
whole-utterance embeddings is above `threshold` {threshold:.6g}, the EER
threshold of `{source}` (optimistic for those trials).
Load it with `dampit.inference.api.load_model(folder)` (reads
`dampit_export.json`, executes nothing) or SpeechBrain's
`SpeakerRecognition.from_hparams(source=folder, savedir=tmp)` (executes
`hyperparams.yaml`: for folders you trust).

Equal error rates ({source}):
{results}
"""


class ExportError(ValueError):
    """A run that cannot be exported; the message names the file."""


def _read(path, what, reader):
    """Parse ``path``; a missing or bad file is one line naming it."""
    if not os.path.isfile(path):
        raise ExportError(f"{path} not found: {what}")
    try:
        with open(path, encoding="utf-8") as f:
            return reader(f)
    except (OSError, ValueError, yaml.YAMLError, ruamel.yaml.YAMLError) as err:
        raise ExportError(f"{path}: {str(err).splitlines()[0]}") from None


def read_run_hparams(run):
    """The ``hyperparams.yaml`` of a run folder, read plainly (ruamel:
    nothing built, ``!new:`` entries keep their tags)."""
    path = os.path.join(os.fspath(run), HPARAMS_FILE)
    tree = _read(path, "not a recipe run", ruamel.yaml.YAML().load)
    if not isinstance(tree, dict):
        raise ExportError(f"{path}: not a mapping")
    return tree


def _dampit_run(run):
    """What verification saved: ``modules``, ``sample_rate``,
    ``checkpoints`` and ``weights`` (module -> its ``.ckpt`` file)."""
    folder = os.path.join(run, "verification")
    path = os.path.join(folder, TESTED_FILE)
    tested = _read(path, REVERIFY, json.load)
    kinds = {"modules": dict, "sample_rate": int, "checkpoints": list}
    if not isinstance(tested, dict) or not all(
        isinstance(tested.get(k), t) for k, t in kinds.items()
    ):
        raise ExportError(f"{path}: not a record of dampit's verification")
    if not tested["checkpoints"]:
        raise ExportError(f"{path}: no checkpoint (the run was not trained)")
    _check_normalization(tested["modules"], path)
    names = [name for name in tested["modules"] if name in WEIGHTED]
    tested["weights"] = {n: os.path.join(folder, f"{n}.ckpt") for n in names}
    for file in tested["weights"].values():
        if not os.path.isfile(file):
            raise ExportError(f"{file} not found: {REVERIFY}")
    return tested


def _check_normalization(modules, path):
    """Refuse an ``InputNormalization`` other than per sentence: its
    statistics are not exported."""
    norm = modules.get("mean_var_norm")
    kwargs = norm.get("kwargs") if isinstance(norm, dict) else None
    if isinstance(kwargs, dict):
        kind = kwargs.get("norm_type", "sentence")
        if kind != "sentence":
            raise ExportError(f"{path}: mean_var_norm norm_type {kind!r}")


def _best_checkpoint(save):
    """The end-of-epoch checkpoint of ``save`` with the lowest
    ``ErrorRate`` (SpeechBrain's ``find_checkpoint``)."""
    if not os.path.isdir(save):  # (the Checkpointer would make it)
        raise ExportError(f"{save} not found: not a recipe run")
    try:
        best = Checkpointer(save).find_checkpoint(
            min_key="ErrorRate",
            ckpt_predicate=lambda c: c.meta.get("end-of-epoch"),
        )
    except (OSError, TypeError, yaml.YAMLError) as err:
        raise ExportError(f"{save}: {str(err).splitlines()[0]}") from None
    if best is None:
        raise ExportError(
            f"{save}: no end-of-epoch checkpoint records an ErrorRate"
        )
    if "embedding_model" not in best.paramfiles:
        raise ExportError(f"{best.path}: no embedding_model.ckpt")
    return best


def _speechbrain_run(run):
    """A run of SpeechBrain's speaker recipe as :func:`_dampit_run` gives
    a dampit one: the YAML's modules, the best checkpoint's weights."""
    path = os.path.join(run, HPARAMS_FILE)
    tree = read_run_hparams(run)
    try:
        modules = speechbrain_modules(tree, path)
    except ValueError as err:
        raise ExportError(
            f"{err}: not SpeechBrain's speaker recipe (a dampit run is "
            "exported once verified)"
        ) from None
    best = _best_checkpoint(os.path.join(run, "save"))
    _check_normalization(modules, path)
    weights = {"embedding_model": best.paramfiles["embedding_model"]}
    if "classifier" in best.paramfiles:
        weights["classifier"] = best.paramfiles["classifier"]
    else:
        modules.pop("classifier", None)
    rate = tree.get("sample_rate", 16000)
    if not isinstance(rate, int):
        raise ExportError(f"{path}: sample_rate {rate!r} is not an integer")
    return {
        "modules": modules,
        "sample_rate": rate,
        "checkpoints": [str(best.path)],
        "weights": weights,
    }


def _labels_of_both_kinds(path, labels):
    if labels is None or len(set(labels.tolist())) != 2:
        raise ExportError(f"{path}: needs target and non-target labels")


def _read_pairs(trials, audio_root):
    """``(labels, [(enrol audio, test audio)])`` of a labelled trial list,
    every audio file found."""
    try:
        enrol, test, labels, names = read_trial_indices(trials)
        _labels_of_both_kinds(trials, labels)
        paths = resolve_audio(names, trials, audio_root)
    except TrialListError as err:
        raise ExportError(str(err)) from None
    return labels, [(paths[e], paths[t]) for e, t in zip(enrol, test)]


def _read_scored(scores):
    """``(scores, labels)`` of a labelled score file."""
    try:
        _, _, values, labels = read_scores(scores)
    except (OSError, TrialListError) as err:
        raise ExportError(f"--scores: {err}") from None
    _labels_of_both_kinds(scores, labels)
    return values, labels


def _eer_threshold(scores, labels, source):
    """``(threshold, {source: {"eer"}})`` at the EER of labelled scores,
    as verification's summary sets it; the EER is printed."""
    eer, threshold = compute_eer(scores, labels)
    print(
        f"[dampit] {source}: EER {100 * eer:.2f}% over {len(labels)} "
        f"trials, threshold {threshold:.4f}"
    )
    return float(threshold), {source: {"eer": float(eer)}}


def read_summary(run, what):
    """``(path, summary, key)``: a run's ``verification/summary.json`` and
    the key of its first ``full_cosine`` entry (an object); else one line
    naming the file (``what``: what to do when it is missing).

    Example
    -------
    >>> run = tempfile.mkdtemp()
    >>> os.mkdir(os.path.join(run, "verification"))
    >>> path = os.path.join(run, "verification", "summary.json")
    >>> _ = open(path, "w").write('{"t/full_cosine": {"eer": 0.1}}')
    >>> read_summary(run, "verify the run")[1:]
    ({'t/full_cosine': {'eer': 0.1}}, 't/full_cosine')
    """
    path = os.path.join(run, "verification", "summary.json")
    summary = _read(path, what, json.load)
    if not isinstance(summary, dict):
        raise ExportError(f"{path}: not a JSON object")
    for key, entry in summary.items():
        if key.split("/")[-1] == SCORING and isinstance(entry, dict):
            return path, summary, key
    raise ExportError(f"{path}: no {SCORING} entry")


def _summary_threshold(run):
    """``(threshold, source, summary)``: the EER threshold of
    ``full_cosine`` in the run's verification summary."""
    what = "verify the run first, or give --scores or --trials"
    path, summary, key = read_summary(run, what)
    thr = summary[key].get("eer_threshold")
    if not isinstance(thr, (int, float)) or not math.isfinite(thr):
        raise ExportError(f"{path}: no finite eer_threshold for {SCORING}")
    return float(thr), f"{path}: {key}", summary


@torch.no_grad()
def _check(folder, target):
    """``load_model`` and ``from_hparams`` give the same embeddings."""
    try:
        with warnings.catch_warnings():  # --trials: the threshold comes next
            warnings.filterwarnings("ignore", ".*no threshold stored")
            model = load_model(folder)
    except ModelFolderError as err:
        raise ExportError(str(err).replace(folder, target)) from None
    with tempfile.TemporaryDirectory(prefix="dampit-check-") as tmp:
        sb = EncoderClassifier.from_hparams(  # on the CPU, as load_model
            source=folder, savedir=tmp, run_opts={"device": "cpu"}
        )
    gen = torch.Generator().manual_seed(0)
    n = (int(1.3 * model.sample_rate), int(0.9 * model.sample_rate))
    wavs = [0.1 * torch.randn(k, generator=gen) for k in n]
    batch, lens = pad_batch(wavs, model.hop_length())
    got, want = model.encode_batch(batch, lens), sb.encode_batch(batch, lens)
    diff = float((got - want).abs().max()) / max(1.0, float(want.abs().max()))
    if not diff <= CHECK_TOL:
        raise ExportError(
            f"{target}: load_model and from_hparams differ by {diff:.3g}"
        )
    return model


def export_model(
    run,
    model,
    overwrite=False,
    torchscript=False,
    onnx=False,
    scores=None,
    trials=None,
    audio_root=None,
):
    """Export the run folder ``run`` to the model folder ``model`` (module
    docstring); ``overwrite`` replaces it, ``torchscript`` / ``onnx`` add
    ``embedding_model.ts`` / ``.onnx``. The threshold is at the EER of
    ``trials`` (a labelled trial list of audio files under ``audio_root``,
    default its folder, scored with the exported model), else of
    ``scores`` (a labelled score file ``enrol test label score``), else
    the run's verification summary's. Returns ``dampit_export.json``."""
    run = os.path.abspath(os.fspath(run))
    model = os.path.abspath(os.fspath(model))
    if not os.path.isdir(run):
        raise ExportError(f"run folder not found: {run}")
    real_run, real_model = os.path.realpath(run), os.path.realpath(model)
    if os.path.commonpath([real_run, real_model]) in (real_run, real_model):
        raise ExportError(
            f"{model}: the model folder cannot be the run folder {run}, "
            "inside it or hold it"
        )
    if scores is not None and trials is not None:
        raise ExportError("give --scores or --trials, not both")
    if audio_root is not None and trials is None:
        raise ExportError("--audio-root goes with --trials")
    pairs = None
    if trials is not None:
        source = os.path.abspath(os.fspath(trials))
        labels, pairs = _read_pairs(source, audio_root)
        threshold, results = None, {}  # from the exported model's scores
    elif scores is not None:
        source = os.path.abspath(os.fspath(scores))
        threshold, results = _eer_threshold(*_read_scored(source), source)
    else:
        threshold, source, results = _summary_threshold(run)
    if os.path.isdir(os.path.join(run, "verification")):
        tested = _dampit_run(run)
    else:
        tested = _speechbrain_run(run)
    with atomic_folder(model, overwrite, holds=(SPEC_FILE,)) as tmp:
        try:
            for name, file in tested["weights"].items():
                shutil.copyfile(file, os.path.join(tmp, f"{name}.ckpt"))
            labels_file = os.path.join(run, "save", "label_encoder.txt")
            if "classifier" in tested["modules"] and os.path.isfile(
                labels_file
            ):
                shutil.copyfile(labels_file, os.path.join(tmp, LABELS_FILE))
            spec = _write(tmp, run, tested, threshold, source)
            loaded = _check(tmp, model)
            if pairs is not None:
                values, _ = loaded.verify_pairs(pairs)
                threshold, results = _eer_threshold(values, labels, source)
                spec = _write(tmp, run, tested, threshold, source)
            if torchscript:
                export_torchscript(
                    loaded, os.path.join(tmp, "embedding_model.ts")
                )
            if onnx:
                export_onnx(loaded, os.path.join(tmp, "embedding_model.onnx"))
            _write_card(tmp, spec, results)
        except OSError as err:  # a full disk: name the file in ``model``
            raise _named_in(err, tmp, model) from None
    return spec


def _named_in(err, tmp, model):
    """``err`` (a failed write, e.g. a full disk) naming its file inside
    ``model`` rather than inside the temporary folder ``tmp``."""
    name = err.filename
    if isinstance(name, str) and name.startswith(tmp + os.sep):
        name = os.path.join(model, os.path.relpath(name, tmp))
        return OSError(err.errno, err.strerror, name)
    return err


def _write(folder, run, tested, threshold, source):
    """:func:`write_model_files` of a run's tested model."""
    return write_model_files(
        folder,
        tested["modules"],
        {},  # the weight files are copied
        threshold,
        tested["sample_rate"],
        threshold_source=source,
        run=run,
        checkpoints=tested["checkpoints"],
    )


def _write_card(folder, spec, results):
    """The folder's ``README.md``: origin, threshold, the EERs."""
    text = CARD.format(
        run=spec["run"],
        checkpoints=", ".join(os.path.basename(p) for p in spec["checkpoints"]),
        sample_rate=spec["sample_rate"],
        threshold=spec["threshold"],
        source=spec["threshold_source"],
        results="".join(
            f"- {k}: EER {100 * v['eer']:.2f}%\n"
            for k, v in results.items()
            if isinstance(v, dict) and isinstance(v.get("eer"), float)
        ),
    )
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(text)
