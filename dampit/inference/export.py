"""Turn a recipe run into a self-contained, SpeechBrain-loadable model folder.

``dampit-export <run> <model>`` (or ``python -m dampit.inference.export``)
reads a finished run of ``recipes/VoxCeleb/train.py``::

    <run>/hyperparams.yaml         the run's resolved hyperparameters
    <run>/save/CKPT+*/             SpeechBrain checkpoints (meta: valid EER)
    <run>/save/label_encoder.txt   speaker label encoder
    <run>/prepared/dev.csv         held-out utterances of training speakers
    <run>/verification/summary.json   test EER/minDCF per scoring method

and writes, atomically (a temporary folder renamed into place)::

    <model>/hyperparams.yaml       features, normalisation, network,
                                   classifier, label encoder, pretrainer,
                                   ``threshold`` and ``sample_rate``
    <model>/embedding_model.ckpt   the tested network weights (best
                                   checkpoint, or the last N averaged)
    <model>/classifier.ckpt        the softmax term's speaker classifier
    <model>/label_encoder.txt      speaker labels of the classifier
    <model>/README.md              model card: data, configuration, EER
    <model>/dampit_export.json     the same facts, machine-readable
    <model>/embedding_model.ts     TorchScript (``--torchscript``)
    <model>/embedding_model.onnx   ONNX (``--onnx``)

The folder loads offline with SpeechBrain's interfaces, no overrides::

    from speechbrain.inference.speaker import SpeakerRecognition
    model = SpeakerRecognition.from_hparams(source="model", savedir="tmp")
    emb = model.encode_batch(wavs, wav_lens)

Best checkpoint
    The one with the lowest validation EER (``CKPT.yaml`` meta ``EER``),
    as the recipe's verification uses; ``--ckpt`` picks another. A run
    with ``average_checkpoints: N > 1`` was tested with the average of its
    last N epochs' weights, so that average is exported (network and
    classifier), unless ``--ckpt`` is given.

Threshold
    SpeechBrain's ``verify_batch`` decides ``score > 0.25`` whatever the
    model. The export stores a calibrated ``threshold`` instead: by default
    (``--threshold dev``) the EER threshold of cosine scores of whole
    utterances over pairs of ``dev.csv`` (held-out utterances of training
    speakers, at most ``--dev-speakers`` x ``--dev-utts``), so the test
    trials stay unseen. ``--threshold test`` takes the EER threshold of the
    run's whole-utterance cosine scoring on its test trials
    (``summary.json``; optimistic for that test set), and a number sets it.

Checks
    Before anything is renamed into place the staged folder is loaded with
    ``from_hparams`` and its embeddings are compared with the training-side
    modules (the run's classes and arguments, the checkpoint loaded
    strictly), and a padded batch with the files one at a time: they must
    agree within 1e-5 (relative to the largest |value| when above 1),
    else nothing is written.

Scoring note
    The folder's interface scores the cosine of whole-utterance embeddings
    (the recipe's ``full_cosine``). The paper's protocol (the mean of the
    crop-pair dot products, ``multicrop_dot``) needs crops: see
    ``recipes/VoxCeleb/verify.py``.
"""

import argparse
import contextlib
import csv
import datetime
import hashlib
import json
import logging
import os
import pydoc
import shutil
import sys
import tempfile

import numpy as np
import torch
import yaml

from dampit.inference.safe_yaml import check_hparams, is_allowed_target
from dampit.utils.atomic import atomic_torch_save, atomic_write_text
from dampit.utils.checkpoint_averaging import (
    average_weights,
    select_test_checkpoints,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ExportError",
    "Tagged",
    "best_checkpoint",
    "calibrate_threshold",
    "classifier_spec",
    "export_model",
    "main",
    "read_run_hparams",
    "render_hparams",
    "run_model_spec",
    "staged_folder",
    "threshold_from_summary",
    "write_demo_model",
]

HPARAMS_FILE = "hyperparams.yaml"
META_FILE = "dampit_export.json"
CARD_FILE = "README.md"
LABEL_FILE = "label_encoder.txt"
TORCHSCRIPT_FILE = "embedding_model.ts"
ONNX_FILE = "embedding_model.onnx"
CHECK_TOL = 1e-5

_LINEAR_CLASSIFIER = "dampit.lobes.resnet.LinearClassifier"
_COSINE_CLASSIFIER = "speechbrain.lobes.models.ECAPA_TDNN.Classifier"


class ExportError(RuntimeError):
    """A run folder that cannot be exported; the message says why."""


class Tagged:
    """A YAML node with a HyperPyYAML tag, kept unconstructed.

    Arguments
    ---------
    tag : str
        The tag, e.g. ``!new:dampit.lobes.resnet.SEResNet``.
    value : object
        The node's value (dict, list or str), with tagged children kept as
        ``Tagged`` too.

    Example
    -------
    >>> t = Tagged("!new:torch.nn.Linear", {"in_features": 2})
    >>> t.kind, t.target
    ('!new:', 'torch.nn.Linear')
    """

    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    @property
    def kind(self):
        """The tag's kind: ``"!new:"``, ``"!name:"``, ``"!ref"``..."""
        return self.tag.split(":", 1)[0] + ":" if ":" in self.tag else self.tag

    @property
    def target(self):
        """The dotted name after ``!new:`` / ``!name:`` (else None)."""
        return self.tag.split(":", 1)[1] if ":" in self.tag else None

    def __repr__(self):
        return f"Tagged({self.tag!r}, {self.value!r})"


class _RunLoader(yaml.SafeLoader):
    """Safe loader that keeps HyperPyYAML tags as :class:`Tagged` nodes."""


def _construct_tagged(loader, suffix, node):
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged("!" + suffix, value)


_RunLoader.add_multi_constructor("!", _construct_tagged)


def read_run_hparams(path):
    """Read a run's ``hyperparams.yaml`` without constructing anything.

    Arguments
    ---------
    path : str or os.PathLike
        The YAML file (SpeechBrain writes it with references resolved).

    Returns
    -------
    dict
        Plain values, with tagged nodes (``!new:``...) as :class:`Tagged`.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "hyperparams.yaml")
    >>> with open(p, "w") as f:
    ...     _ = f.write("n: 3\\nnet: !new:torch.nn.Linear\\n  in_features: 3")
    >>> hp = read_run_hparams(p)
    >>> hp["n"], hp["net"].target, hp["net"].value
    (3, 'torch.nn.Linear', {'in_features': 3})
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ExportError(f"run hyperparameters not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_RunLoader)
        except yaml.YAMLError as err:
            raise ExportError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a mapping of hyperparameters")
    return data


def best_checkpoint(run_folder, ckpt=None):
    """Find the run's best checkpoint (lowest validation EER).

    Arguments
    ---------
    run_folder : str or os.PathLike
        The recipe's ``output_folder``.
    ckpt : str, optional
        An explicit checkpoint folder (``<run>/save/CKPT+...``).

    Returns
    -------
    speechbrain.utils.checkpoints.Checkpoint
        ``path``, ``meta`` and ``paramfiles`` (name -> file).

    Raises
    ------
    ExportError
        When there is no checkpoint or no ``embedding_model.ckpt``.
    """
    from speechbrain.utils.checkpoints import Checkpointer

    save = os.path.join(os.fspath(run_folder), "save")
    if ckpt is not None:
        ckpt = os.path.abspath(os.fspath(ckpt))
        found = [
            c
            for c in Checkpointer(os.path.dirname(ckpt)).list_checkpoints()
            if os.path.abspath(c.path) == ckpt
        ]
        if not found:
            raise ExportError(f"--ckpt {ckpt}: not a SpeechBrain checkpoint")
        best = found[0]
    else:
        if not os.path.isdir(save):
            raise ExportError(
                f"{run_folder} has no save/ folder: is it a finished run of "
                "recipes/VoxCeleb/train.py (its output_folder)?"
            )
        checkpointer = Checkpointer(save)
        best = checkpointer.find_checkpoint(min_key="EER")
        if best is None:
            best = checkpointer.find_checkpoint()
            if best is not None:
                logger.warning(
                    "%s: no checkpoint records a validation EER; using the "
                    "latest, %s",
                    save,
                    best.path,
                )
    if best is None:
        raise ExportError(f"no checkpoint found in {save}")
    if "embedding_model" not in best.paramfiles:
        raise ExportError(f"{best.path} has no embedding_model.ckpt")
    return best


def _new_node(hp, key, where):
    """``(target, kwargs)`` of a ``!new:`` node of the run's YAML."""
    node = hp.get(key)
    if not isinstance(node, Tagged) or node.kind != "!new:":
        raise ExportError(
            f"{where}: '{key}' must be a !new: object, got {node!r}"
        )
    value = node.value
    if value in (None, ""):
        value = {}
    if not isinstance(value, dict):
        raise ExportError(
            f"{where}: '{key}' must take keyword arguments (a mapping), "
            f"got {value!r}"
        )
    return node.target, dict(value)


def run_model_spec(hp, where="hyperparams.yaml"):
    """The inference modules of a run, from its (unconstructed) YAML.

    Arguments
    ---------
    hp : dict
        Output of :func:`read_run_hparams`.
    where : str
        The file name, for error messages.

    Returns
    -------
    dict
        ``compute_features``, ``mean_var_norm`` and ``embedding_model``:
        ``(target, kwargs)``; ``softmax``: ``(kwargs, weight)`` of the
        softmax term of ``compute_cost`` or None; ``sample_rate``.

    Example
    -------
    >>> hp = {
    ...     "compute_features": Tagged("!new:dampit.lobes.features."
    ...                                "Spectrogram", {"n_fft": 320}),
    ...     "normalize": Tagged("!new:dampit.lobes.features."
    ...                         "CropNormalization", {"mode": "scalar"}),
    ...     "embedding_model": Tagged("!new:dampit.lobes.resnet.SEResNet",
    ...                               {"depth": 18}),
    ... }
    >>> spec = run_model_spec(hp)
    >>> spec["mean_var_norm"]
    ('dampit.lobes.features.CropNormalization', {'mode': 'scalar'})
    >>> spec["sample_rate"], spec["softmax"]
    (16000, None)
    """
    spec = {
        "compute_features": _new_node(hp, "compute_features", where),
        "embedding_model": _new_node(hp, "embedding_model", where),
    }
    norm_key = "normalize" if "normalize" in hp else "mean_var_norm"
    spec["mean_var_norm"] = _new_node(hp, norm_key, where)
    rate = hp.get("sample_rate")
    if rate is None:
        rate = spec["compute_features"][1].get("sample_rate", 16000)
    spec["sample_rate"] = int(rate)
    spec["softmax"] = None
    cost = hp.get("compute_cost")
    if isinstance(cost, Tagged) and isinstance(cost.value, dict):
        terms = cost.value.get("terms") or {}
        weights = cost.value.get("weights") or {}
        soft = terms.get("softmax") if isinstance(terms, dict) else None
        if isinstance(soft, Tagged) and isinstance(soft.value, dict):
            weight = weights.get("softmax", 1.0)
            spec["softmax"] = (dict(soft.value), float(weight))
    return spec


def classifier_spec(softmax, cost_state, emb_dim):
    """The speaker classifier of the softmax term, for inference.

    ``EncoderClassifier.classify_batch`` calls ``classifier(emb)`` on
    ``[B, 1, D]`` embeddings. A ``"linear"`` term becomes
    ``dampit.lobes.resnet.LinearClassifier``; ``"aam"`` / ``"am"`` terms
    (cosine logits) become SpeechBrain's ECAPA ``Classifier`` with no
    hidden block (cosine of the normalised embedding and class vectors). A
    classifier given explicitly in the YAML is kept as it is.

    Arguments
    ---------
    softmax : tuple or None
        ``(kwargs, weight)`` from :func:`run_model_spec`.
    cost_state : dict
        The state dict of ``compute_cost`` (``terms.softmax.classifier.*``).
    emb_dim : int
        Embedding size.

    Returns
    -------
    tuple or None
        ``(target, kwargs, state_dict)``, or None when the run has no
        trained softmax term (weight 0, or no classifier weights).

    Example
    -------
    >>> state = {"terms.softmax.classifier.weight": torch.ones(3, 4),
    ...          "terms.softmax.classifier.bias": torch.zeros(3)}
    >>> target, kwargs, sd = classifier_spec(({"kind": "linear"}, 0.1),
    ...                                      state, 4)
    >>> target
    'dampit.lobes.resnet.LinearClassifier'
    >>> kwargs, sorted(sd)
    ({'input_size': 4, 'n_classes': 3}, ['out.bias', 'out.weight'])
    """
    if softmax is None:
        return None
    kwargs, weight = softmax
    if weight == 0:
        logger.info("softmax weight is 0: the classifier is not exported")
        return None
    prefix = "terms.softmax.classifier."
    sub = {
        k[len(prefix) :]: v
        for k, v in cost_state.items()
        if k.startswith(prefix)
    }
    if not sub:
        return None
    custom = kwargs.get("classifier")
    if isinstance(custom, Tagged) and custom.kind == "!new:":
        value = custom.value if isinstance(custom.value, dict) else {}
        return custom.target, dict(value), sub
    weight_t = sub.get("weight")
    if weight_t is None or weight_t.dim() != 2:
        raise ExportError(
            "compute_cost: the softmax classifier has no 2-D 'weight' "
            f"(keys: {sorted(sub)})"
        )
    n_classes, dim = (int(s) for s in weight_t.shape)
    if dim != int(emb_dim):
        raise ExportError(
            f"compute_cost: classifier input size {dim} != emb_dim {emb_dim}"
        )
    kind = kwargs.get("kind", "linear")
    if kind == "linear":
        state = {"out.weight": weight_t}
        kw = {"input_size": dim, "n_classes": n_classes}
        if "bias" in sub:
            state["out.bias"] = sub["bias"]
        else:
            kw["bias"] = False
        return _LINEAR_CLASSIFIER, kw, state
    kw = {
        "input_size": dim,
        "lin_blocks": 0,
        "lin_neurons": dim,
        "out_neurons": n_classes,
    }
    return _COSINE_CLASSIFIER, kw, {"weight": weight_t}


def _scalar_yaml(value):
    """One YAML scalar or flow collection, on one line."""
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    text = text.strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    if text.endswith("..."):
        text = text[:-3].strip()
    return text


def _emit(key, value, indent, out):
    """Append YAML lines for ``key: value`` (Tagged values kept tagged)."""
    pad = " " * indent
    if isinstance(value, Tagged):
        if isinstance(value.value, dict) and value.value:
            out.append(f"{pad}{key}: {value.tag}")
            for k, v in value.value.items():
                _emit(k, v, indent + 4, out)
        elif isinstance(value.value, list):
            out.append(f"{pad}{key}: {value.tag} {_scalar_yaml(value.value)}")
        elif value.value in (None, "", {}):
            out.append(f"{pad}{key}: {value.tag}")
        else:
            out.append(f"{pad}{key}: {value.tag} {value.value}")
    elif isinstance(value, dict) and value:
        out.append(f"{pad}{key}:")
        for k, v in value.items():
            _emit(k, v, indent + 4, out)
    else:
        out.append(f"{pad}{key}: {_scalar_yaml(value)}")


def render_hparams(
    modules, threshold, sample_rate, label_encoder=False, header=(), info=None
):
    """The ``hyperparams.yaml`` of an exported model folder.

    Arguments
    ---------
    modules : dict
        ``name -> (target, kwargs)`` for ``compute_features``,
        ``mean_var_norm``, ``embedding_model`` and optionally
        ``classifier``.
    threshold : float
        Calibrated decision threshold on the cosine score.
    sample_rate : int
        Sample rate of the model's input.
    label_encoder : bool
        Whether ``label_encoder.txt`` is part of the folder.
    header : sequence of str
        Comment lines put first.
    info : dict, optional
        Extra plain keys (``threshold_source``, ``emb_dim``...).

    Returns
    -------
    str
        The YAML text.

    Example
    -------
    >>> text = render_hparams(
    ...     {"compute_features": ("dampit.lobes.features.Spectrogram", {}),
    ...      "mean_var_norm": ("dampit.lobes.features.CropNormalization",
    ...                        {"mode": "scalar"}),
    ...      "embedding_model": ("dampit.lobes.resnet.SEResNet",
    ...                          {"depth": 18, "gate_stages": [2, 3]})},
    ...     threshold=0.4, sample_rate=16000)
    >>> print(text.split("\\n")[1])
    threshold: 0.4
    """
    out = [f"# {line}" if line else "#" for line in header]
    out.append(f"sample_rate: {int(sample_rate)}")
    out.append(f"threshold: {_scalar_yaml(float(threshold))}")
    for k, v in (info or {}).items():
        _emit(k, v, 0, out)
    out.append("")
    order = ["compute_features", "mean_var_norm", "embedding_model"]
    if "classifier" in modules:
        order.append("classifier")
    for name in order:
        target, kwargs = modules[name]
        _emit(name, Tagged(f"!new:{target}", dict(kwargs)), 0, out)
    if label_encoder:
        out.append("label_encoder: !new:speechbrain.dataio.encoder.")
        out[-1] += "CategoricalEncoder"
    out.append("audio_normalizer: !new:speechbrain.dataio.preprocess.")
    out[-1] += "AudioNormalizer"
    out.append("    sample_rate: !ref <sample_rate>")
    out.append("")
    out.append("modules:")
    for name in order:
        out.append(f"    {name}: !ref <{name}>")
    out.append("")
    out.append("pretrainer: !new:dampit.inference.pretrainer.FolderPretrainer")
    out.append("    loadables:")
    loadables = ["embedding_model"]
    if "classifier" in modules:
        loadables.append("classifier")
    if label_encoder:
        loadables.append("label_encoder")
    for name in loadables:
        out.append(f"        {name}: !ref <{name}>")
    if label_encoder:
        out.append("    paths:")
        out.append(f"        label_encoder: {LABEL_FILE}")
    return "\n".join(out) + "\n"


@contextlib.contextmanager
def staged_folder(target, overwrite=False):
    """Build a folder under a temporary name, then rename it into place.

    Arguments
    ---------
    target : str or os.PathLike
        The final folder.
    overwrite : bool
        Replace an existing ``target`` (moved aside, then deleted, once the
        new folder is in place).

    Yields
    ------
    str
        The temporary folder (same parent as ``target``). When the block
        raises it is deleted and ``target`` is untouched.

    Example
    -------
    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "model")
    >>> with staged_folder(target) as tmp:
    ...     _ = open(os.path.join(tmp, "a.txt"), "w").write("x")
    ...     os.path.exists(target)
    False
    >>> os.listdir(target)
    ['a.txt']
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(
            f"{target} already exists (pass --overwrite to replace it)"
        )
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(
        prefix="." + os.path.basename(target) + ".tmp-", dir=parent
    )
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        for name in os.listdir(tmp):
            path = os.path.join(tmp, name)
            if os.path.isfile(path):
                os.chmod(path, 0o666 & ~mask)
        old = None
        if os.path.exists(target):
            old = tempfile.mkdtemp(
                prefix="." + os.path.basename(target) + ".old-", dir=parent
            )
            os.rmdir(old)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _instantiate(target, kwargs, trust, what):
    """Build a training-side module from the run's YAML, safely."""
    reason = is_allowed_target(target)
    if reason and not trust:
        raise ExportError(f"{what}: {reason}; pass --trust to build it anyway")
    cls = pydoc.locate(target)
    if cls is None:
        raise ExportError(f"{what}: cannot import {target}")
    return cls(**kwargs)


def _read_csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _resolve_rows(rows, data_root):
    out = []
    for r in rows:
        r = dict(r)
        if data_root is not None:
            r["wav"] = r["wav"].replace("$data_root", str(data_root))
        out.append(r)
    return out


def calibrate_threshold(
    model, rows, max_speakers=200, max_utts=5, seed=0, progress=True
):
    """EER threshold of whole-utterance cosine scores over pairs of ``rows``.

    Up to ``max_speakers`` speakers (a seeded choice) with up to
    ``max_utts`` utterances each are embedded; every pair of them is
    scored, except pairs cut from the same file.

    Arguments
    ---------
    model : dampit.inference.api.DampitSpeakerRecognition
        The loaded model.
    rows : list of dict
        CSV rows (``ID``, ``wav``, ``start``, ``stop``, ``spk_id``).
    max_speakers : int
        Most speakers used.
    max_utts : int
        Most utterances per speaker.
    seed : int
        Seed of the choice.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``threshold``, ``eer``, ``n_utts``, ``n_speakers``, ``n_target``,
        ``n_nontarget``.
    """
    from dampit.metrics.error_rates import compute_eer

    by_spk = {}
    for r in rows:
        by_spk.setdefault(r["spk_id"], []).append(r)
    speakers = sorted(s for s, rs in by_spk.items() if rs)
    rng = np.random.default_rng(seed)
    if len(speakers) > max_speakers:
        pick = rng.choice(len(speakers), max_speakers, replace=False)
        speakers = [speakers[k] for k in sorted(pick)]
    chosen = []
    for s in speakers:
        rs = by_spk[s]
        if len(rs) > max_utts:
            rs = [rs[k] for k in sorted(rng.choice(len(rs), max_utts, False))]
        chosen += rs
    if len(speakers) < 2:
        raise ExportError(
            f"threshold calibration needs 2+ speakers, got {len(speakers)}"
        )
    _, emb = model.embed_files(chosen, progress=progress)
    emb = torch.nn.functional.normalize(torch.from_numpy(emb), dim=1)
    sim = (emb @ emb.T).numpy()
    spk = np.array([r["spk_id"] for r in chosen])
    wav = np.array([r["wav"] for r in chosen])
    i, j = np.triu_indices(len(chosen), k=1)
    keep = wav[i] != wav[j]
    i, j = i[keep], j[keep]
    labels = spk[i] == spk[j]
    if labels.all() or not labels.any():
        raise ExportError(
            "threshold calibration needs both same- and different-speaker "
            "pairs (each speaker needs 2+ files)"
        )
    eer, thr = compute_eer(sim[i, j], labels)
    return {
        "threshold": float(thr),
        "eer": float(eer),
        "n_utts": len(chosen),
        "n_speakers": len(speakers),
        "n_target": int(labels.sum()),
        "n_nontarget": int((~labels).sum()),
    }


def _find_metrics(summary, path=()):
    """Yield (key path, metrics dict) for every dict with an 'eer'."""
    if isinstance(summary, dict):
        if "eer" in summary and not isinstance(summary["eer"], dict):
            yield path, summary
        for k, v in summary.items():
            yield from _find_metrics(v, path + (str(k),))


def threshold_from_summary(summary, method="full_cosine"):
    """EER threshold of a scoring method in the run's ``summary.json``.

    Arguments
    ---------
    summary : dict
        The parsed ``summary.json`` (method -> metrics, possibly nested
        under trial-list names).
    method : str
        The scoring method whose scores the exported model reproduces.

    Returns
    -------
    tuple
        ``(threshold, eer, key path)``.

    Example
    -------
    >>> threshold_from_summary({"full_cosine": {"eer": 0.1,
    ...                                         "eer_threshold": 0.42}})
    (0.42, 0.1, 'full_cosine')
    """
    found = [
        (p, m)
        for p, m in _find_metrics(summary)
        if p
        and p[-1].split("/")[-1] == method
        and m.get("eer_threshold") is not None
    ]
    if not found:
        raise ExportError(
            f"summary.json has no '{method}' metrics with an eer_threshold"
        )
    path, m = found[0]
    return float(m["eer_threshold"]), float(m["eer"]), "/".join(path)


def _fmt_pct(x):
    return "n/a" if x is None else f"{100 * float(x):.2f}%"


def _model_card(facts):
    """README.md text of the exported folder."""
    f = facts
    lines = [
        f"# dampit speaker-embedding model: {f['experiment']}",
        "",
        "Deep multi-metric speaker embeddings (Xu et al., Neurocomputing "
        "2020), trained with dampit's SpeechBrain recipe.",
        f"Exported {f['exported']} from `{f['run_folder']}`, checkpoint "
        f"`{os.path.basename(f['checkpoint'])}`"
        + (
            f" (validation EER {f['valid_eer']:.2f}%)"
            if f.get("valid_eer") is not None
            else ""
        )
        + (
            ", weights averaged over epochs "
            + ", ".join(str(e) for e in f["averaged_epochs"])
            + "."
            if f.get("averaged_epochs")
            else "."
        ),
        "",
        "## Use",
        "",
        "```python",
        "from speechbrain.inference.speaker import SpeakerRecognition",
        "model = SpeakerRecognition.from_hparams(",
        '    source="path/to/this/folder", savedir="/tmp/dampit-model")',
        f"emb = model.encode_batch(wavs, wav_lens)  # [B, 1, {f['emb_dim']}]",
        'score, _ = model.verify_files("a.wav", "b.wav")  # decides at 0.25',
        "same = score > model.hparams.threshold  # the calibrated threshold",
        "```",
        "",
        "or `dampit.inference.api.load_model(folder)` (stored threshold, "
        "safety check, batched files), `dampit-embed` and `dampit-verify`.",
        f"Input: mono audio at {f['sample_rate']} Hz.",
        "",
        "## Decision threshold",
        "",
        f"`threshold: {f['threshold']:.6g}` in `hyperparams.yaml`: same "
        "speaker when the cosine similarity of the two whole-utterance "
        "embeddings is above it. " + f["threshold_note"],
        "SpeechBrain's `verify_files` always decides at 0.25 and "
        "`verify_batch` unless given `threshold=`; dampit's `load_model` "
        "returns a model whose `verify_files`/`verify_batch` use the stored "
        "threshold.",
        "",
        "## Training data",
        "",
    ]
    for k, v in f["data"].items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Configuration", ""]
    for k, v in f["config"].items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Results (run's test trials)", ""]
    if f["results"]:
        lines += [
            "| scoring | trials | EER | minDCF(0.01) |",
            "|---|---|---|---|",
        ]
        for name, m in f["results"]:
            dcf = m.get("min_dcf@0.01", m.get("min_dcf_0.01"))
            dcf = "n/a" if dcf is None else f"{float(dcf):.4f}"
            lines.append(
                f"| {name} | {m.get('n_trials', 'n/a')} | "
                f"{_fmt_pct(m.get('eer'))} | {dcf} |"
            )
        lines += [
            "",
            "This folder's interface scores whole utterances "
            "(`full_cosine`); the paper's protocol (`multicrop_dot`, mean "
            "of the crop-pair dot products) needs crops: see "
            "`recipes/VoxCeleb/verify.py`.",
        ]
    else:
        lines.append("No verification summary was found in the run.")
    lines += ["", "## Files", ""]
    for name, digest in sorted(f["files"].items()):
        lines.append(f"- `{name}` (sha256 `{digest[:16]}...`)")
    return "\n".join(lines) + "\n"


def _config_facts(hp, emb_spec):
    target, emb_kwargs = emb_spec
    keys = [
        ("network", None),
        ("n_fft", "n_fft"),
        ("hop_length", "hop_length"),
        ("feature_norm", "feature_norm"),
        ("loss weights", None),
        ("P x K", None),
        ("epochs", "number_of_epochs"),
        ("lr", "lr"),
        ("seed", "seed"),
    ]
    out = {}
    for label, key in keys:
        if label == "network":
            out[label] = (
                target.rsplit(".", 1)[-1]
                + "("
                + ", ".join(f"{k}={v}" for k, v in emb_kwargs.items())
                + ")"
            )
        elif label == "loss weights":
            w = {k[2:]: hp[k] for k in hp if k.startswith("w_")}
            if w:
                out[label] = ", ".join(f"{k} {v}" for k, v in w.items())
        elif label == "P x K":
            if "P" in hp and "K" in hp:
                out[label] = f"{hp['P']} x {hp['K']}"
        elif key in hp and not isinstance(hp[key], Tagged):
            out[label] = hp[key]
    return out


def _data_facts(hp, run_folder):
    out = {}
    for key in ("data_layout", "data_folder"):
        if key in hp and not isinstance(hp[key], Tagged):
            out[key] = hp[key]
    opts = os.path.join(run_folder, "prepared", "prepare_opts.json")
    if os.path.isfile(opts):
        with open(opts, encoding="utf-8") as f:
            summary = (json.load(f) or {}).get("summary", {})
        for key in (
            "n_train_speakers",
            "n_train",
            "n_dev",
            "n_test_speakers",
            "n_test_utts",
            "n_trials",
        ):
            if key in summary:
                out[key] = summary[key]
    return out


def write_demo_model(
    folder, seed=0, threshold=0.5, emb_dim=16, features="spectrogram"
):
    """Write a tiny, randomly initialised model folder (examples, tests).

    Arguments
    ---------
    folder : str or os.PathLike
        Parent folder; the model goes to ``<folder>/model``.
    seed : int
        Seed of the random weights.
    threshold : float
        Stored threshold.
    emb_dim : int
        Embedding size.
    features : str
        "spectrogram" (the paper's features and network) or "fbank" (40
        log mel filter banks and the mini recipe's network: 3 x 3 stem
        without max pooling, mean + std pooling over time).

    Returns
    -------
    str
        The model folder.

    Example
    -------
    >>> import tempfile
    >>> folder = write_demo_model(tempfile.mkdtemp())
    >>> sorted(os.listdir(folder))[:2]
    ['README.md', 'dampit_export.json']
    """
    from dampit.lobes.resnet import SEResNet

    torch.manual_seed(seed)
    kwargs = {"depth": 18, "base_width": 4, "emb_dim": emb_dim}
    feats = ("dampit.lobes.features.Spectrogram", {})
    if features == "fbank":
        kwargs.update(stem_kernel=3, stem_pool=False, pooling="stats")
        kwargs["n_freq"] = 40
        feats = (
            "dampit.lobes.features.Features",
            {"kind": "fbank", "n_bins": 40, "n_fft": 400},
        )
    elif features != "spectrogram":
        raise ValueError(
            f"write_demo_model: features={features!r} must be "
            "'spectrogram' or 'fbank'"
        )
    net = SEResNet(**kwargs).eval()
    modules = {
        "compute_features": feats,
        "mean_var_norm": (
            "dampit.lobes.features.CropNormalization",
            {"mode": "scalar"},
        ),
        "embedding_model": ("dampit.lobes.resnet.SEResNet", kwargs),
    }
    target = os.path.join(os.fspath(folder), "model")
    with staged_folder(target, overwrite=True) as tmp:
        atomic_torch_save(
            net.state_dict(), os.path.join(tmp, "embedding_model.ckpt")
        )
        atomic_write_text(
            os.path.join(tmp, HPARAMS_FILE),
            render_hparams(
                modules,
                threshold,
                16000,
                header=["dampit demo model: random weights"],
            ),
        )
        atomic_write_text(
            os.path.join(tmp, CARD_FILE),
            "# dampit demo model\n\nRandom weights, for examples only.\n",
        )
        meta = {"threshold": threshold, "threshold_source": "demo"}
        atomic_write_text(
            os.path.join(tmp, META_FILE), json.dumps(meta, indent=2) + "\n"
        )
    return target


def export_model(
    run_folder,
    model_folder,
    threshold="dev",
    ckpt=None,
    classifier=True,
    overwrite=False,
    trust=False,
    torchscript=False,
    onnx=False,
    dev_speakers=200,
    dev_utts=5,
    progress=True,
):
    """Export a recipe run to a self-contained model folder.

    Arguments
    ---------
    run_folder : str or os.PathLike
        The recipe's ``output_folder``.
    model_folder : str or os.PathLike
        Where the model folder goes (must not exist unless ``overwrite``).
    threshold : str or float
        ``"dev"`` (EER threshold on pairs of ``dev.csv``, default),
        ``"test"`` (from ``verification/summary.json``) or a number.
    ckpt : str, optional
        A checkpoint folder instead of the best one.
    classifier : bool
        Export the softmax term's classifier and the label encoder.
    overwrite : bool
        Replace an existing ``model_folder``.
    trust : bool
        Build training-side classes outside the allow-list.
    torchscript : bool
        Also write ``embedding_model.ts`` (waveforms -> embeddings).
    onnx : bool
        Also write ``embedding_model.onnx``.
    dev_speakers : int
        Most dev speakers for the threshold.
    dev_utts : int
        Most dev utterances per speaker for the threshold.
    progress : bool
        Show progress bars.

    Returns
    -------
    dict
        What was exported (the content of ``dampit_export.json``).

    Raises
    ------
    ExportError
        When the run is incomplete or the check fails (nothing written).
    """
    from dampit.inference.api import load_model

    run_folder = os.path.abspath(os.fspath(run_folder))
    model_folder = os.path.abspath(os.fspath(model_folder))
    if not os.path.isdir(run_folder):
        raise ExportError(f"run folder not found: {run_folder}")
    if os.path.exists(model_folder) and not overwrite:
        raise FileExistsError(
            f"{model_folder} already exists (pass --overwrite to replace it)"
        )
    hp_path = os.path.join(run_folder, HPARAMS_FILE)
    hp = read_run_hparams(hp_path)
    spec = run_model_spec(hp, hp_path)
    best = best_checkpoint(run_folder, ckpt)
    averaged = _averaged_checkpoints(hp, run_folder, ckpt)
    if averaged:  # the weights verify.py tested: the last N averaged
        best = averaged[0]
    emb_state = _tested_weights(best, averaged, "embedding_model")

    # Training-side modules, the checkpoint loaded strictly.
    ref = {}
    for name in ("compute_features", "mean_var_norm", "embedding_model"):
        target, kwargs = spec[name]
        ref[name] = _instantiate(target, kwargs, trust, f"{hp_path}: {name}")
    try:
        ref["embedding_model"].load_state_dict(emb_state, strict=True)
    except RuntimeError as err:
        raise ExportError(
            f"{best.paramfiles['embedding_model']} does not match the run's "
            f"embedding_model arguments: {err}"
        ) from err
    for m in ref.values():
        m.eval()
    emb_dim = int(
        getattr(ref["embedding_model"], "emb_dim", None)
        or spec["embedding_model"][1].get("emb_dim")
    )

    modules = {k: spec[k] for k in ref}
    clf = None
    label_src = os.path.join(run_folder, "save", LABEL_FILE)
    if classifier and "compute_cost" in best.paramfiles:
        cost_state = _tested_weights(best, averaged, "compute_cost")
        clf = classifier_spec(spec["softmax"], cost_state, emb_dim)
    if clf is not None:
        modules["classifier"] = clf[:2]
    with_labels = clf is not None and os.path.isfile(label_src)
    if clf is not None and not with_labels:
        logger.warning("%s missing: no label encoder exported", label_src)

    summary_path = os.path.join(run_folder, "verification", "summary.json")
    summary = None
    if os.path.isfile(summary_path):
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)

    header = [
        "dampit speaker-embedding model (SpeechBrain EncoderClassifier /",
        "SpeakerRecognition interface), exported by dampit-export.",
        "Scoring: cosine similarity of whole-utterance embeddings; same",
        "speaker when score > threshold (calibrated, see README.md).",
        "Load: EncoderClassifier.from_hparams(source=<this folder>, "
        "savedir=<tmp>)",
    ]

    def write_yaml(tmp, thr, info):
        atomic_write_text(
            os.path.join(tmp, HPARAMS_FILE),
            render_hparams(
                modules, thr, spec["sample_rate"], with_labels, header, info
            ),
        )

    with staged_folder(model_folder, overwrite=overwrite) as tmp:
        atomic_torch_save(emb_state, os.path.join(tmp, "embedding_model.ckpt"))
        if clf is not None:
            atomic_torch_save(clf[2], os.path.join(tmp, "classifier.ckpt"))
        if with_labels:
            shutil.copyfile(label_src, os.path.join(tmp, LABEL_FILE))
        info = {"emb_dim": emb_dim}
        write_yaml(tmp, 0.25, info)
        check_hparams(os.path.join(tmp, HPARAMS_FILE), trust=trust)
        model = load_model(tmp, trust=trust)
        max_diff = _check_against(model, ref, spec["sample_rate"])
        logger.info("exported model matches the checkpoint: %.2e", max_diff)

        # Threshold.
        calib = None
        if isinstance(threshold, str) and threshold == "dev":
            dev_csv = os.path.join(run_folder, "prepared", "dev.csv")
            if not os.path.isfile(dev_csv) and isinstance(
                hp.get("prep_folder"), str
            ):
                dev_csv = os.path.join(hp["prep_folder"], "dev.csv")
            if not os.path.isfile(dev_csv):
                raise ExportError(
                    f"--threshold dev: {dev_csv} not found; use --threshold "
                    "test or a number"
                )
            rows = _resolve_rows(_read_csv_rows(dev_csv), hp.get("data_folder"))
            calib = calibrate_threshold(
                model, rows, dev_speakers, dev_utts, progress=progress
            )
            thr = calib["threshold"]
            note = (
                "Calibrated as the EER threshold of the cosine scores of "
                f"{calib['n_target']} same-speaker and {calib['n_nontarget']}"
                f" different-speaker pairs of {calib['n_utts']} held-out "
                f"utterances of {calib['n_speakers']} training speakers "
                f"(dev.csv; EER there {100 * calib['eer']:.2f}%); the test "
                "trials were not used."
            )
            source = "dev"
        elif isinstance(threshold, str) and threshold == "test":
            if summary is None:
                raise ExportError(f"--threshold test: {summary_path} not found")
            thr, eer, where = threshold_from_summary(summary)
            note = (
                f"Taken from the run's test trials ({where} in "
                f"summary.json, EER {100 * eer:.2f}%): calibrated on the "
                "test set, so optimistic for it."
            )
            source = f"test:{where}"
        else:
            thr = float(threshold)
            note = "Set by hand at export."
            source = "manual"
        info["threshold_source"] = source
        write_yaml(tmp, thr, info)

        if torchscript:
            from dampit.inference.torchscript import export_torchscript

            export_torchscript(model, os.path.join(tmp, TORCHSCRIPT_FILE))
        if onnx:
            from dampit.inference.onnx_export import export_onnx

            export_onnx(model, os.path.join(tmp, ONNX_FILE))

        results = []
        if summary is not None:
            results = [("/".join(p), m) for p, m in _find_metrics(summary) if p]
        files = {
            name: _sha256(os.path.join(tmp, name))
            for name in sorted(os.listdir(tmp))
        }
        meta = {
            "experiment": hp.get("experiment", "dampit"),
            "exported": datetime.datetime.now().isoformat(timespec="seconds"),
            "run_folder": run_folder,
            "checkpoint": best.path
            if isinstance(best.path, str)
            else str(best.path),
            "valid_eer": best.meta.get("EER"),
            "epoch": _epoch_of(best),
            "averaged_epochs": [_epoch_of(c) for c in averaged],
            "threshold": thr,
            "threshold_source": source,
            "threshold_note": note,
            "calibration": calib,
            "check_max_abs_diff": max_diff,
            "sample_rate": spec["sample_rate"],
            "emb_dim": emb_dim,
            "classifier": modules.get("classifier", (None,))[0],
            "data": _data_facts(hp, run_folder),
            "config": _config_facts(hp, spec["embedding_model"]),
            "results": results,
            "files": files,
            "versions": _versions(),
        }
        atomic_write_text(os.path.join(tmp, CARD_FILE), _model_card(meta))
        atomic_write_text(
            os.path.join(tmp, META_FILE),
            json.dumps(meta, indent=2, default=str) + "\n",
        )
    logger.info("exported %s -> %s", run_folder, model_folder)
    return meta


def _averaged_checkpoints(hp, run_folder, ckpt=None):
    """The checkpoints whose average the run was tested with, if any.

    Empty unless the run's ``average_checkpoints`` is above 1 and no
    explicit ``--ckpt`` was given.
    """
    from speechbrain.utils.checkpoints import Checkpointer

    n = int(hp.get("average_checkpoints", 1) or 1)
    if ckpt is not None or n <= 1:
        return []
    save = os.path.join(os.fspath(run_folder), "save")
    return select_test_checkpoints(Checkpointer(save), n)


def _tested_weights(best, averaged, name):
    """One recoverable's weights as the run was tested: the average over
    ``averaged`` when there is one, else ``best``'s (weights_only)."""
    if averaged:
        return average_weights(averaged, name)
    return torch.load(
        best.paramfiles[name], map_location="cpu", weights_only=True
    )


def _epoch_of(ckpt):
    """Epoch of a checkpoint (its counter.ckpt), or None."""
    path = ckpt.paramfiles.get("counter")
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
        if text.isdigit():
            return int(text)
    return None


def _versions():
    import speechbrain

    import dampit

    return {
        "dampit": getattr(dampit, "__version__", "unknown"),
        "speechbrain": speechbrain.__version__,
        "torch": torch.__version__,
    }


@torch.no_grad()
def _check_against(model, ref, sample_rate):
    """Max |difference| between the exported and training-side embeddings,
    divided by the largest |embedding value| when that is above 1.

    Two waveforms of different lengths, embedded one at a time and as a
    padded batch, by the loaded folder (``encode_batch``) and by the
    training-side modules (the recipe's ``compute_embeddings``).
    """
    gen = torch.Generator().manual_seed(0)
    lengths = (int(1.3 * sample_rate), int(0.9 * sample_rate))
    wavs = [0.1 * torch.randn(n, generator=gen) for n in lengths]
    from dampit.inference.extract import pad_batch

    batch, _ = pad_batch(wavs)
    lens = model.frame_lengths(lengths)

    def reference(x, lens):
        feats = ref["compute_features"](x)
        feats = ref["mean_var_norm"](feats, lens)
        return ref["embedding_model"](feats, lens)

    got = model.encode_batch(batch, lens).cpu()
    want = reference(batch, lens)
    scale = max(1.0, float(want.abs().max()))
    diff = float((got - want).abs().max()) / scale
    for k, w in enumerate(wavs):
        single = model.encode_batch(w[None], torch.ones(1)).cpu()
        diff = max(diff, float((single[0] - got[k]).abs().max()) / scale)
    if not diff <= CHECK_TOL:
        raise ExportError(
            "the exported folder does not reproduce the checkpoint's "
            f"embeddings: max |difference| {diff:.3g} (relative to the "
            f"largest |value| when above 1) > {CHECK_TOL}"
        )
    return diff


def main(argv=None):
    """``dampit-export RUN MODEL``: export a run as a model folder.

    Arguments
    ---------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status (0 on success).
    """
    parser = argparse.ArgumentParser(
        prog="dampit-export",
        description="Export a recipe run (its output_folder) as a "
        "self-contained model folder that SpeechBrain's "
        "EncoderClassifier.from_hparams loads offline.",
    )
    parser.add_argument("run", help="the recipe's output_folder")
    parser.add_argument("model", help="the model folder to write")
    parser.add_argument(
        "--threshold",
        default="dev",
        help="'dev' (EER threshold on dev.csv pairs, default), 'test' (the "
        "run's summary.json) or a number",
    )
    parser.add_argument("--ckpt", help="checkpoint folder (default: best)")
    parser.add_argument(
        "--no-classifier",
        action="store_true",
        help="leave out the speaker classifier and label encoder",
    )
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--trust",
        action="store_true",
        help="build classes outside dampit's allow-list",
    )
    parser.add_argument("--torchscript", action="store_true")
    parser.add_argument("--onnx", action="store_true")
    parser.add_argument("--dev-speakers", type=int, default=200)
    parser.add_argument("--dev-utts", type=int, default=5)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("speechbrain").setLevel(logging.WARNING)
    threshold = args.threshold
    if threshold not in ("dev", "test"):
        try:
            threshold = float(threshold)
        except ValueError:
            parser.error(
                f"--threshold must be 'dev', 'test' or a number, got "
                f"{threshold!r}"
            )
    try:
        meta = export_model(
            args.run,
            args.model,
            threshold=threshold,
            ckpt=args.ckpt,
            classifier=not args.no_classifier,
            overwrite=args.overwrite,
            trust=args.trust,
            torchscript=args.torchscript,
            onnx=args.onnx,
            dev_speakers=args.dev_speakers,
            dev_utts=args.dev_utts,
            progress=not args.no_progress,
        )
    except (ExportError, FileExistsError, ValueError) as err:
        print(f"dampit-export: error: {err}", file=sys.stderr)
        return 2
    print(
        f"[dampit] exported {meta['run_folder']} -> {args.model} "
        f"(threshold {meta['threshold']:.4f}, {meta['threshold_source']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
