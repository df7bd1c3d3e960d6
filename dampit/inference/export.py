"""``dampit-export RUN MODEL``: a recipe run -> a self-contained model folder.

It reads what the run's verification (``recipes/VoxCeleb/verify.py``)
wrote, and recomputes nothing::

    <run>/hyperparams.yaml               classes and arguments of the modules
    <run>/verification/checkpoints.txt   the checkpoint(s) tested (several:
                                         their weights were averaged)
    <run>/verification/summary.json      EER threshold of ``full_cosine``
    <run>/save/label_encoder.txt         speaker labels of the classifier

A run without the two verification files is refused (verify it first). It
writes, as one folder renamed into place::

    <model>/dampit_export.json   modules (class, kwargs), threshold, sample
                                 rate, facts: what ``load_model`` reads
    <model>/hyperparams.yaml     the same, for SpeechBrain's from_hparams
    <model>/embedding_model.ckpt, classifier.ckpt, label_encoder.ckpt
    <model>/README.md            a short model card
    <model>/embedding_model.ts / .onnx   with --torchscript / --onnx

The threshold is the EER threshold of the run's whole-utterance cosine
scores (``full_cosine``, what the folder's interface computes) on its test
trials, so it is optimistic for that test set. Before the rename the staged
folder is loaded by ``load_model`` and by ``EncoderClassifier.from_hparams``
and both must give the same embeddings.
"""

import argparse
import datetime
import json
import math
import os
import shutil
import sys
import tempfile

import speechbrain
import torch
import yaml
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.utils.checkpoints import Checkpointer

import dampit
from dampit.inference.api import (
    HPARAMS_FILE,
    LABELS_FILE,
    SPEC_FILE,
    ModelFolderError,
    load_model,
)
from dampit.inference.extract import pad_batch
from dampit.inference.portable import export_onnx, export_torchscript
from dampit.utils.atomic import atomic_folder
from dampit.utils.checkpoint_averaging import average_weights

__all__ = ["ExportError", "export_model", "main", "read_run_hparams"]
__all__ += ["write_model_files"]

CHECK_TOL = 1e-5
SCORING = "full_cosine"
LINEAR = "dampit.lobes.resnet.LinearClassifier"
COSINE = "speechbrain.lobes.models.ECAPA_TDNN.Classifier"
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

Exported {date} by dampit-export from `{run}`, weights of {checkpoints}.
Input: mono audio at {sample_rate} Hz. Same speaker when the cosine of two
whole-utterance embeddings is above `threshold` = {threshold:.6g}, the EER
threshold of `{key}` on the run's test trials (optimistic for them).

```python
from dampit.inference.api import load_model  # executes nothing
model = load_model("this/folder")
scores, decisions = model.verify_pairs([("a.wav", "b.wav")])
# SpeechBrain executes hyperparams.yaml: for folders you trust.
from speechbrain.inference.speaker import SpeakerRecognition
sb = SpeakerRecognition.from_hparams(source="this/folder", savedir="tmp")
```

Test results of the run (`verification/summary.json`):

{results}
"""


class ExportError(RuntimeError):
    """A run that cannot be exported; the message names the file."""


class _RunYAML(yaml.SafeLoader):
    """A run's resolved YAML (the user's own), read without building it."""


def _keep_tag(loader, tag, node):
    """``!new:X`` -> ``{"class": "X", "kwargs": {...}}``; other tags: the
    plain value."""
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
    """A run's ``hyperparams.yaml`` as plain values, nothing built.

    Arguments
    ---------
    run : str or os.PathLike
        The recipe's ``output_folder``.

    Returns
    -------
    dict
        Its keys; a ``!new:X`` object is ``{"class": "X", "kwargs": ...}``.
    """
    path = os.path.join(os.fspath(run), HPARAMS_FILE)
    hp = _read(path, "not a recipe run", lambda f: yaml.load(f, _RunYAML))
    if not isinstance(hp, dict):
        raise ExportError(f"{path}: not a mapping")
    return hp


def _module(hp, keys, where):
    """``{"class", "kwargs"}`` of the first of ``keys`` in the run's YAML."""
    node = next((hp[k] for k in keys if k in hp), None)
    if not isinstance(node, dict) or set(node) != {"class", "kwargs"}:
        raise ExportError(f"{where}: '{keys[0]}' is not a !new: object")
    return {"class": node["class"], "kwargs": dict(node["kwargs"])}


def _classifier(hp, state):
    """Spec and weights of the softmax term's classifier, or None.

    A ``linear`` term -> ``LinearClassifier``; ``aam`` / ``am`` (cosine
    logits) -> SpeechBrain's ECAPA ``Classifier`` without hidden blocks.
    """
    cost = hp.get("compute_cost")
    kw = cost.get("kwargs", {}) if isinstance(cost, dict) else {}
    soft = (kw.get("terms") or {}).get("softmax")
    prefix = "terms.softmax.classifier."
    sub = {
        k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)
    }
    if not soft or (kw.get("weights") or {}).get("softmax") == 0:
        return None  # no softmax term, or one never trained
    if "weight" not in sub:
        return None
    n, dim = (int(s) for s in sub["weight"].shape)
    if soft.get("kwargs", {}).get("kind", "linear") == "linear":
        kwargs = {"input_size": dim, "n_classes": n}
        return {"class": LINEAR, "kwargs": kwargs}, {
            f"out.{k}": v for k, v in sub.items()
        }
    kwargs = {"input_size": dim, "lin_blocks": 0, "lin_neurons": dim}
    kwargs["out_neurons"] = n
    return {"class": COSINE, "kwargs": kwargs}, {"weight": sub["weight"]}


def _tested_checkpoints(run):
    """The checkpoints verification tested (``checkpoints.txt``)."""
    path = os.path.join(run, "verification", "checkpoints.txt")
    lines = _read(path, "verify the run first", lambda f: f.read().split())
    if not lines:
        raise ExportError(f"{path}: no checkpoint (the run was not trained)")
    found = []
    for line in lines:
        ckpt = line  # or, in a moved run, the same name in <run>/save
        if not os.path.isdir(ckpt):
            ckpt = os.path.join(run, "save", os.path.basename(line))
        match = [
            c
            for c in Checkpointer(os.path.dirname(ckpt)).list_checkpoints()
            if os.path.basename(c.path) == os.path.basename(ckpt)
        ]
        if not match:
            raise ExportError(f"{path}: checkpoint {line} not found")
        found += match
    return found


def _threshold(run):
    """(threshold, key, summary) from ``summary.json``'s full_cosine."""
    path = os.path.join(run, "verification", "summary.json")
    summary = _read(path, "verify the run first", json.load)
    for key, res in summary.items():
        thr = res.get("eer_threshold") if isinstance(res, dict) else None
        if key.split("/")[-1] == SCORING and isinstance(thr, (int, float)):
            if math.isfinite(thr):
                return float(thr), key, summary
    raise ExportError(f"{path}: no finite eer_threshold for {SCORING}")


def write_model_files(folder, modules, weights, threshold, sample_rate):
    """Write a model folder's JSON, YAML and weights into ``folder``.

    The one writer of the format :func:`dampit.inference.api.load_model`
    reads.

    Arguments
    ---------
    folder : str
        An existing (staging) folder.
    modules : dict
        ``compute_features``, ``mean_var_norm``, ``embedding_model`` and
        optionally ``classifier``: ``{"class": name, "kwargs": dict}``.
    weights : dict
        Module name -> state dict (``embedding_model`` at least).
    threshold : float or None
        Decision threshold.
    sample_rate : int
        Sample rate of the input.

    Returns
    -------
    dict
        The content of ``dampit_export.json`` (add facts with
        ``json.dump`` over it).
    """
    spec = {"format": 1, "sample_rate": int(sample_rate)}
    spec.update(threshold=threshold, modules=modules)
    with open(os.path.join(folder, SPEC_FILE), "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=2)
    for name, state in weights.items():
        torch.save(state, os.path.join(folder, f"{name}.ckpt"))
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
def _check(folder):
    """``load_model`` and ``from_hparams`` give the same embeddings."""
    try:
        model = load_model(folder)
    except ModelFolderError as err:
        raise ExportError(str(err)) from None
    with tempfile.TemporaryDirectory(prefix="dampit-check-") as tmp:
        sb = EncoderClassifier.from_hparams(source=folder, savedir=tmp)
    gen = torch.Generator().manual_seed(0)
    n = (int(1.3 * model.sample_rate), int(0.9 * model.sample_rate))
    wavs = [0.1 * torch.randn(k, generator=gen) for k in n]
    hop = getattr(model.mods.compute_features, "hop_length", None)
    batch, lens = pad_batch(wavs, hop if isinstance(hop, int) else None)
    got, want = model.encode_batch(batch, lens), sb.encode_batch(batch, lens)
    diff = float((got - want).abs().max()) / max(1.0, float(want.abs().max()))
    if not diff <= CHECK_TOL:
        raise ExportError(
            f"{folder}: load_model and from_hparams differ by {diff:.3g}"
        )
    return model


def export_model(run, model, overwrite=False, torchscript=False, onnx=False):
    """Export a verified recipe run to a model folder.

    Arguments
    ---------
    run : str or os.PathLike
        The recipe's ``output_folder``.
    model : str or os.PathLike
        The model folder (must not exist unless ``overwrite``).
    overwrite : bool
        Replace an existing ``model``.
    torchscript : bool
        Also write ``embedding_model.ts``.
    onnx : bool
        Also write ``embedding_model.onnx`` (needs the onnx extra).

    Returns
    -------
    dict
        The content of ``dampit_export.json``.
    """
    run = os.path.abspath(os.fspath(run))
    model = os.path.abspath(os.fspath(model))
    if not os.path.isdir(run):
        raise ExportError(f"run folder not found: {run}")
    if os.path.exists(model) and not overwrite:
        raise FileExistsError(f"{model} exists (--overwrite replaces it)")
    hp_path = os.path.join(run, HPARAMS_FILE)
    hp = read_run_hparams(run)
    threshold, key, summary = _threshold(run)
    ckpts = _tested_checkpoints(run)
    modules = {
        "compute_features": _module(hp, ["compute_features"], hp_path),
        "mean_var_norm": _module(hp, ["mean_var_norm", "normalize"], hp_path),
        "embedding_model": _module(hp, ["embedding_model"], hp_path),
    }
    weights = {"embedding_model": average_weights(ckpts, "embedding_model")}
    if all("compute_cost" in c.paramfiles for c in ckpts):
        clf = _classifier(hp, average_weights(ckpts, "compute_cost"))
        if clf is not None:
            modules["classifier"], weights["classifier"] = clf
    labels = os.path.join(str(hp.get("save_folder", "")), "label_encoder.txt")
    with atomic_folder(model, overwrite=overwrite) as tmp:
        if "classifier" in modules and os.path.isfile(labels):
            shutil.copyfile(labels, os.path.join(tmp, LABELS_FILE))
        rate = int(hp.get("sample_rate", 16000))
        spec = write_model_files(tmp, modules, weights, threshold, rate)
        loaded = _check(tmp)
        if torchscript:
            export_torchscript(loaded, os.path.join(tmp, "embedding_model.ts"))
        if onnx:
            export_onnx(loaded, os.path.join(tmp, "embedding_model.onnx"))
        results = {
            k: {m: v.get(m) for m in ("eer", "min_dcf_0.01", "n_trials")}
            for k, v in summary.items()
            if isinstance(v, dict)
        }
        spec.update(
            threshold_source=f"{run}/verification/summary.json: {key}",
            run=run,
            checkpoints=[str(c.path) for c in ckpts],
            results=results,
            versions={
                "dampit": dampit.__version__,
                "speechbrain": speechbrain.__version__,
                "torch": torch.__version__,
            },
        )
        with open(os.path.join(tmp, SPEC_FILE), "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=2)
        lines = [
            f"- {k}: EER {100 * r['eer']:.2f}%, minDCF(0.01) "
            f"{r['min_dcf_0.01']:.4f}"
            for k, r in results.items()
            if isinstance(r["eer"], float) and r["min_dcf_0.01"] is not None
        ]
        card = CARD.format(
            date=datetime.date.today().isoformat(),
            run=run,
            checkpoints=", ".join(os.path.basename(str(c.path)) for c in ckpts),
            sample_rate=rate,
            threshold=threshold,
            key=key,
            results="\n".join(lines),
        )
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
    return spec


def main(argv=None):
    """``dampit-export RUN MODEL [--overwrite] [--torchscript] [--onnx]``.

    Arguments
    ---------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 on a refused run or an existing model folder.
    """
    parser = argparse.ArgumentParser(
        prog="dampit-export",
        description="Export a verified recipe run (its output_folder) as a "
        "model folder for dampit's load_model and SpeechBrain's "
        "EncoderClassifier.from_hparams.",
    )
    parser.add_argument("run", help="the recipe's output_folder")
    parser.add_argument("model", help="the model folder to write")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--torchscript", action="store_true")
    parser.add_argument("--onnx", action="store_true")
    args = parser.parse_args(argv)
    try:
        spec = export_model(
            args.run, args.model, args.overwrite, args.torchscript, args.onnx
        )
    except (ExportError, FileExistsError) as err:
        print(f"dampit-export: error: {err}", file=sys.stderr)
        return 2
    print(
        f"[dampit] exported {spec['run']} -> {args.model} "
        f"(threshold {spec['threshold']:.4f}, {spec['threshold_source']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
