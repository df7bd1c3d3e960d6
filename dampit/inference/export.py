"""``dampit-export RUN MODEL``: a verified recipe run -> a model folder.

It embeds nothing: it reads the modules' classes and arguments from
``<run>/hyperparams.yaml``, the weights of the checkpoints in
``verification/checkpoints.txt`` (averaged when several), the EER threshold
of ``full_cosine`` (whole-utterance cosine scores, as the folder's
interface computes them; optimistic for the run's test trials) from
``verification/summary.json``, and ``save/label_encoder.txt``. A run of a
SpeechBrain speaker recipe has no ``verification/``: its checkpoint is the
end-of-epoch one with the lowest value of the one metric they record
(``ErrorRate``), its threshold the EER threshold of a labelled score file
of its test trials (``--scores``), its classifier the YAML's
``classifier``. A missing piece is named in one line. The folder (renamed
into place) holds ``dampit_export.json`` (what ``load_model`` reads),
``hyperparams.yaml`` (for SpeechBrain's ``from_hparams``), the weights,
``label_encoder.ckpt``, a ``README.md`` and on request
``embedding_model.ts`` / ``.onnx``; ``load_model`` and ``from_hparams``
must first give the same embeddings from it. ``--overwrite`` replaces only
a model folder (holding ``dampit_export.json``) or an empty folder; the
model folder can be neither the run folder, nor inside it, nor hold it;
a second export into a model folder being written is refused
(:func:`dampit.utils.atomic.atomic_folder`).
"""

import argparse
import glob
import io
import json
import math
import os
import shutil
import sys
import tempfile

import torch
import yaml
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.utils.checkpoints import Checkpoint

from dampit.cli.common import terminated_as_exit
from dampit.dataio.trials import TrialListError, read_scores
from dampit.inference.api import (
    HPARAMS_FILE,
    LABELS_FILE,
    SPEC_FILE,
    ModelFolderError,
    load_model,
)
from dampit.inference.extract import pad_batch
from dampit.inference.portable import export_onnx, export_torchscript
from dampit.metrics.error_rates import compute_eer
from dampit.utils.atomic import atomic_folder
from dampit.utils.checkpoint_averaging import average_weights
from dampit.utils.file_lock import LockError

__all__ = [
    "ExportError",
    "export_model",
    "main",
    "read_run_hparams",
    "write_model_files",
]

CHECK_TOL = 1e-5
SCORING = "full_cosine"
LINEAR = "dampit.lobes.resnet.LinearClassifier"
COSINE = "speechbrain.lobes.models.ECAPA_TDNN.Classifier"
HEADS = (COSINE, "dampit.lobes.metric_head.MetricHead")
SB_META = ("unixtime", "end-of-epoch")  # SpeechBrain's, not metrics
#: Model folder module -> its names in a run's YAML (the recipe's first).
RUN_KEYS = {"compute_features": ["compute_features"]}
RUN_KEYS["mean_var_norm"] = ["normalize", "mean_var_norm"]
RUN_KEYS["embedding_model"] = ["embedding_model"]
TEMPLATE = """\
# dampit speaker-embedding model (written by dampit-export).
# SpeechBrain's from_hparams EXECUTES this file (HyperPyYAML builds what it
# names): load only folders you trust. dampit's load_model reads
# dampit_export.json instead and executes nothing.
{values}
{modules}
label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

modules: {{{refs}}}
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables: {{{loadables}}}
"""
CARD = """\
# dampit speaker-embedding model

Exported by dampit-export from `{run}` (weights of {checkpoints}). Input:
mono audio at {sample_rate} Hz. Same speaker when the cosine of two
whole-utterance embeddings is above `threshold` {threshold:.6g}, the EER
threshold of `{key}` on the run's test trials (optimistic for them).
Load it with `dampit.inference.api.load_model(folder)` (reads
`dampit_export.json`, executes nothing) or SpeechBrain's
`SpeakerRecognition.from_hparams(source=folder, savedir=tmp)` (executes
`hyperparams.yaml`: for folders you trust).

Test results of the run ({source}):
{results}
"""


class ExportError(RuntimeError):
    """A run that cannot be exported; the message names the file."""


class _RunYAML(yaml.SafeLoader):
    """A run's resolved YAML (the user's own), read without building it."""


def _keep_tag(loader, tag, node):
    """``!new:X`` -> ``{"class": "X", "kwargs": {...}}``, else the value."""
    if isinstance(node, yaml.MappingNode):
        kwargs = loader.construct_mapping(node, deep=True)
        return {"class": tag.partition(":")[2], "kwargs": kwargs}
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if tag.startswith("new:"):
        return {"class": tag.partition(":")[2], "kwargs": {}}
    return loader.construct_scalar(node)


_RunYAML.add_multi_constructor("!", _keep_tag)


def _read(path, what, reader):
    """Parse ``path``; a missing or bad file is one line naming it."""
    if not os.path.isfile(path):
        raise ExportError(f"{path} not found: {what}")
    try:
        with open(path, encoding="utf-8") as f:
            return reader(f)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ExportError(f"{path}: {str(err).splitlines()[0]}") from None


def read_run_hparams(run):
    """The ``hyperparams.yaml`` of a run folder as a dict, nothing built:
    a ``!new:X`` object is ``{"class": "X", "kwargs": {...}}``."""
    path = os.path.join(os.fspath(run), HPARAMS_FILE)
    hp = _read(path, "not a recipe run", lambda f: yaml.load(f, _RunYAML))
    if not isinstance(hp, dict):
        raise ExportError(f"{path}: not a mapping")
    return hp


def _module(hp, keys, where):
    """``{"class", "kwargs"}`` of the first of ``keys`` in the run's YAML."""
    node = next((hp[k] for k in keys if k in hp), None)
    if not isinstance(node, dict) or set(node) != {"class", "kwargs"}:
        raise ExportError(f"{where}: '{keys[-1]}' is not a !new: object")
    return {"class": node["class"], "kwargs": dict(node["kwargs"])}


def _classifier(hp, ckpts):
    """Spec and weights of the classifier, or None: the YAML's ECAPA
    ``classifier`` (or ``MetricHead``), else the softmax term's (``linear``
    -> ``LinearClassifier``, ``aam`` -> ``Classifier``)."""
    clf = hp.get("classifier")
    if isinstance(clf, dict) and clf.get("class") in HEADS:
        if all("classifier" in c.paramfiles for c in ckpts):
            weights = average_weights(ckpts, "classifier")
            return {"class": COSINE, "kwargs": clf["kwargs"]}, weights
    cost = hp.get("compute_cost")
    if not all("compute_cost" in c.paramfiles for c in ckpts):
        return None
    state = average_weights(ckpts, "compute_cost")
    kw = cost.get("kwargs", {}) if isinstance(cost, dict) else {}
    soft = (kw.get("terms") or {}).get("softmax")
    prefix = "terms.softmax.classifier."
    sub = {
        k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)
    }
    if not soft or kw.get("weights", {}).get("softmax") == 0 or not sub:
        return None  # no softmax term, or one never trained
    n, dim = (int(s) for s in sub["weight"].shape)
    if soft.get("kwargs", {}).get("kind", "linear") == "linear":
        kwargs = {"input_size": dim, "n_classes": n}
        return {"class": LINEAR, "kwargs": kwargs}, {
            f"out.{k}": v for k, v in sub.items()
        }
    kwargs = {"input_size": dim, "lin_blocks": 0, "lin_neurons": dim}
    kwargs["out_neurons"] = n
    return {"class": COSINE, "kwargs": kwargs}, {"weight": sub["weight"]}


def _checkpoint(path, meta=None):
    """A SpeechBrain ``Checkpoint`` of a folder's ``*.ckpt`` files."""
    files = {f[:-5]: os.path.join(path, f) for f in os.listdir(path)}
    files = {k: v for k, v in files.items() if v.endswith(".ckpt")}
    return Checkpoint(path, meta or {}, files)


def _best_checkpoint(run, path):
    """No ``verification/``: the end-of-epoch checkpoint of ``<run>/save``
    with the lowest value of the one metric they all record."""
    ends = {}
    for ckpt in glob.glob(os.path.join(glob.escape(run), "save", "CKPT+*")):
        meta = _read(os.path.join(ckpt, "CKPT.yaml"), "", yaml.safe_load)
        if isinstance(meta, dict) and meta.get("end-of-epoch"):
            ends[ckpt] = meta
    keys = set.intersection(*map(set, ends.values())) if ends else set()
    keys = sorted(keys - set(SB_META))
    if len(keys) != 1:
        raise ExportError(
            f"{path} not found and the checkpoints in {run}/save record "
            f"{keys or 'no metric'}: list the checkpoint to export there"
        )
    best = min(ends, key=lambda c: ends[c][keys[0]])
    return [_checkpoint(best, ends[best])]


def _tested_checkpoints(run):
    """The checkpoints verification tested (``checkpoints.txt``)."""
    path = os.path.join(run, "verification", "checkpoints.txt")
    if not os.path.isdir(os.path.dirname(path)):  # not dampit's recipe
        return _best_checkpoint(run, path)
    names = _read(path, "verify the run first", lambda f: f.read().split())
    if not names:
        raise ExportError(f"{path}: no checkpoint (the run was not trained)")
    found = []
    for name in names:
        ckpt = name  # or, in a moved run, the same name in <run>/save
        if not os.path.isdir(ckpt):
            ckpt = os.path.join(run, "save", os.path.basename(name))
        if not os.path.isdir(ckpt):
            raise ExportError(f"{path}: checkpoint {name} not found")
        found.append(_checkpoint(ckpt))
    return found


def _threshold(run, scores=None):
    """(threshold, key, summary): the EER threshold of the labelled
    ``scores`` file, else ``summary.json``'s full_cosine."""
    path = os.path.join(run, "verification", "summary.json")
    if scores is not None:
        try:
            _, _, values, labels = read_scores(scores)
        except (OSError, TrialListError) as err:
            raise ExportError(f"--scores: {err}") from None
        if labels is None or len(set(labels.tolist())) != 2:
            raise ExportError(f"{scores}: needs target and non-target labels")
        eer, thr = compute_eer(values, labels)  # as verification's summary
        return float(thr), scores, {scores: {"eer": float(eer)}}
    what = "verify the run first, or give --scores (test trial scores)"
    summary = _read(path, what, json.load)
    for key, res in summary.items():
        thr = res.get("eer_threshold") if isinstance(res, dict) else None
        if key.split("/")[-1] == SCORING and isinstance(thr, (int, float)):
            if math.isfinite(thr):
                return float(thr), key, summary
    raise ExportError(f"{path}: no finite eer_threshold for {SCORING}")


def write_model_files(
    folder, modules, weights, threshold, sample_rate, **facts
):
    """Write a model folder's JSON, YAML and weights into ``folder`` (the
    one writer of what :func:`dampit.inference.api.load_model` reads).

    ``modules``: ``compute_features``, ``mean_var_norm``,
    ``embedding_model`` and optionally ``classifier``, each ``{"class":
    name, "kwargs": dict}``; ``weights``: module name -> state dict;
    ``threshold``: float or None; ``facts``: more JSON keys. Returns the
    content of ``dampit_export.json``.
    """
    spec = {"format": 1, "sample_rate": int(sample_rate)}
    spec.update(threshold=threshold, modules=modules, **facts)
    with open(os.path.join(folder, SPEC_FILE), "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=2)
    for name, state in weights.items():
        data = io.BytesIO()  # torch.save's own writer hides ENOSPC
        torch.save(state, data)
        with open(os.path.join(folder, f"{name}.ckpt"), "wb") as f:
            f.write(data.getbuffer())
    flow = dict(default_flow_style=True, width=math.inf)
    loadables = list(weights)
    if os.path.isfile(os.path.join(folder, LABELS_FILE)):
        loadables.append("label_encoder")
    text = TEMPLATE.format(
        values=yaml.safe_dump(
            {"sample_rate": int(sample_rate), "threshold": threshold},
            sort_keys=False,
        ),
        modules="".join(
            f"{k}: !new:{m['class']} {yaml.safe_dump(m['kwargs'], **flow)}"
            for k, m in modules.items()
        ),
        refs=", ".join(f"{k}: !ref <{k}>" for k in modules),
        loadables=", ".join(f"{k}: !ref <{k}>" for k in loadables),
    )
    with open(os.path.join(folder, HPARAMS_FILE), "w", encoding="utf-8") as f:
        f.write(text)
    return spec


@torch.no_grad()
def _check(folder, target):
    """``load_model`` and ``from_hparams`` give the same embeddings."""
    try:
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
    hop = getattr(model.mods.compute_features, "hop_length", None)
    batch, lens = pad_batch(wavs, hop if isinstance(hop, int) else None)
    got, want = model.encode_batch(batch, lens), sb.encode_batch(batch, lens)
    diff = float((got - want).abs().max()) / max(1.0, float(want.abs().max()))
    if not diff <= CHECK_TOL:
        raise ExportError(
            f"{target}: load_model and from_hparams differ by {diff:.3g}"
        )
    return model


def export_model(
    run, model, overwrite=False, torchscript=False, onnx=False, scores=None
):
    """Export the run folder ``run`` to the model folder ``model`` (module
    docstring); ``overwrite`` replaces it, ``torchscript`` / ``onnx`` add
    ``embedding_model.ts`` / ``.onnx``, ``scores`` is a labelled score file
    (``enrol test label score``) of the exported weights on the run's test
    trials: the threshold is at its EER. Returns ``dampit_export.json``."""
    run = os.path.abspath(os.fspath(run))
    model = os.path.abspath(os.fspath(model))
    scores = scores and os.path.abspath(os.fspath(scores))
    if not os.path.isdir(run):
        raise ExportError(f"run folder not found: {run}")
    real_run, real_model = os.path.realpath(run), os.path.realpath(model)
    if os.path.commonpath([real_run, real_model]) in (real_run, real_model):
        raise ExportError(
            f"{model}: the model folder cannot be the run folder {run}, "
            "inside it or hold it"
        )
    with atomic_folder(model, overwrite, holds=(SPEC_FILE,)) as tmp:
        return _export(run, model, tmp, torchscript, onnx, scores)


def _export(run, model, tmp, torchscript, onnx, scores):
    """Write the model folder of ``run`` into ``tmp`` (``model`` when it is
    renamed into place); returns ``dampit_export.json``."""
    hp = read_run_hparams(run)
    where = os.path.join(run, HPARAMS_FILE)
    modules = {k: _module(hp, keys, where) for k, keys in RUN_KEYS.items()}
    norm = modules["mean_var_norm"]["kwargs"].get("norm_type", "sentence")
    if norm != "sentence":  # InputNormalization's statistics: not carried
        raise ExportError(f"{where}: mean_var_norm norm_type {norm!r}")
    threshold, key, summary = _threshold(run, scores)
    ckpts = _tested_checkpoints(run)
    weights = {"embedding_model": average_weights(ckpts, "embedding_model")}
    clf = _classifier(hp, ckpts)
    if clf is not None:
        modules["classifier"], weights["classifier"] = clf
    save = os.path.dirname(ckpts[0].path)  # the run's save_folder
    labels = os.path.join(save, "label_encoder.txt")
    rate = int(hp.get("sample_rate", 16000))
    if "classifier" in modules and os.path.isfile(labels):
        shutil.copyfile(labels, os.path.join(tmp, LABELS_FILE))
    source = key if scores else f"{run}/verification/summary.json: {key}"
    paths = [c.path for c in ckpts]
    spec = write_model_files(
        tmp,
        modules,
        weights,
        threshold,
        rate,
        threshold_source=source,
        run=run,
        checkpoints=paths,
    )
    loaded = _check(tmp, model)
    if torchscript:
        export_torchscript(loaded, os.path.join(tmp, "embedding_model.ts"))
    if onnx:
        export_onnx(loaded, os.path.join(tmp, "embedding_model.onnx"))
    results = "".join(
        f"- {k}: EER {100 * v['eer']:.2f}%\n"
        for k, v in summary.items()
        if isinstance(v, dict) and isinstance(v.get("eer"), float)
    )
    names = ", ".join(os.path.basename(p) for p in paths)
    card = CARD.format(
        run=run,
        checkpoints=names,
        sample_rate=rate,
        threshold=threshold,
        key=key,
        results=results,
        source=source,
    )
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    return spec


def main(argv=None):
    """``dampit-export RUN MODEL [--scores F] [--overwrite] [--torchscript]
    [--onnx]``; returns 0, or 2 on a refused run or existing folder."""
    parser = argparse.ArgumentParser(
        prog="dampit-export",
        description="A verified recipe run -> a model "
        "folder for load_model and EncoderClassifier.from_hparams.",
    )
    parser.add_argument("run", help="the recipe's output_folder")
    parser.add_argument("model", help="the model folder to write")
    for flag in ("--overwrite", "--torchscript", "--onnx"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument(
        "--scores",
        help="labelled score file of the run's test trials: threshold at "
        "its EER (a run without dampit's verification summary)",
    )
    args = parser.parse_args(argv)
    try:
        with terminated_as_exit():  # SIGTERM: the temporary folder goes
            spec = export_model(
                args.run,
                args.model,
                args.overwrite,
                args.torchscript,
                args.onnx,
                args.scores,
            )
    except (ExportError, LockError, OSError) as err:
        msg = str(err)
        if isinstance(err, OSError) and err.strerror:  # a full disk...
            msg = f"cannot write {args.model}: {err.strerror}"
            msg += f" ({err.filename})" if err.filename else ""
        print(f"dampit-export: error: {msg}", file=sys.stderr)
        return 2
    print(
        f"[dampit] exported {spec['run']} -> {args.model} "
        f"(threshold {spec['threshold']:.4f}, {spec['threshold_source']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
