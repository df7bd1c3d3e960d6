"""Check every value read from a model folder before anything is built.

A model folder is untrusted input. :func:`read_json` reads
``dampit_export.json`` strictly (size, nesting, duplicate keys),
:func:`check_spec` checks each of its values against :data:`BOUNDS` (one
table of key -> kind and inclusive bounds) before a module is built,
:func:`check_labels` checks the label encoder against the classifier and
:func:`check_embeddings` refuses NaN / inf embeddings. Each refusal is a
:class:`ModelFolderError` of one line naming the file and the key; the
Python API (:func:`dampit.inference.api.load_model`) and the console
scripts (which load with it) refuse the same folders.
"""

import json
import os
import pickle
import re
import warnings

import ruamel.yaml
import torch
import yaml

from dampit.utils.bounds import BOOL, INT, OR_NULL, REAL, TEXT, describe, within

__all__ = [
    "BOUNDS",
    "ModelFolderError",
    "check_embeddings",
    "check_labels",
    "check_same_threshold",
    "check_spec",
    "check_threshold",
    "check_value",
    "read_json",
    "read_yaml_threshold",
]

#: The folder's JSON file, which the loader reads.
SPEC_FILE = "dampit_export.json"
HPARAMS_FILE = "hyperparams.yaml"
DEFAULT_THRESHOLD = 0.25  # SpeechBrain's verify_batch default
#: What loading a module's weights raises on a bad ``<module>.ckpt``.
LOAD_ERRORS = (
    RuntimeError,
    ValueError,
    TypeError,
    AttributeError,
    OSError,
    KeyError,
    EOFError,
    pickle.UnpicklingError,
)
#: What SpeechBrain's ``from_hparams`` raises on a YAML file that does
#: not parse or names what does not exist.
YAML_ERRORS = (
    ruamel.yaml.YAMLError,
    ValueError,
    TypeError,
    ImportError,
    AttributeError,
    KeyError,
    OSError,
)
#: Versions of ``dampit_export.json`` this loader reads.
FORMATS = (1,)
#: Largest ``dampit_export.json`` and ``label_encoder.ckpt``, in bytes.
MAX_JSON_BYTES = 1 << 20
MAX_LABELS_BYTES = 64 << 20
#: Largest score-normalisation cohort file (``cohort.npy``), in bytes.
MAX_COHORT_BYTES = 64 << 20
#: Longest list value (ECAPA's per-layer channels, kernels...).
MAX_LIST = 64
#: The modules of a folder; the first three are needed.
MODULES = ("compute_features", "mean_var_norm", "embedding_model", "classifier")

#: A list of 1 to :data:`MAX_LIST` integers, each within the bounds.
INTS = "a list of integers"
#: key -> (kind, lower, upper), as :mod:`dampit.utils.bounds` reads them,
#: or (:data:`INTS`, lower, upper). The keys of ``dampit_export.json``
#: first, then every keyword argument of the classes the loader builds.
BOUNDS = {
    "format": (INT, min(FORMATS), max(FORMATS)),
    "sample_rate": (INT, 1000, 384000),
    "threshold": (REAL, -1.0, 1.0),  # a cosine
    # the "cohort" record (dampit.inference.cohort); emb_dim as below
    "speakers": (INT, 2, 100000),
    # dampit.lobes.features.Features, CropNormalization
    "kind": (TEXT, 1, 32),
    "n_bins": (INT, 1, 4097),
    "n_fft": (INT, 2, 8192),
    "win_length": (REAL + OR_NULL, 1, 8192),  # samples; Fbank: ms
    "hop_length": (REAL, 1, 8192),  # samples; Fbank: ms
    "window": (TEXT, 1, 32),
    "mode": (TEXT, 1, 32),
    # dampit.lobes.resnet.SEResNet, LinearClassifier
    "depth": (INT, 18, 101),
    "base_width": (INT, 1, 256),
    "in_channels": (INT, 1, 16),
    "gate": (TEXT, 1, 32),
    "gate_hidden": (INT, 1, 1024),
    "pooling": (TEXT, 1, 32),
    "stem_kernel": (INT, 1, 15),
    "stem_stride": (INT, 1, 8),
    "stem_pool": (BOOL, 0, 1),
    "n_freq": (INT + OR_NULL, 1, 4097),
    "emb_dim": (INT, 1, 8192),
    "dropout": (REAL, 0.0, 1.0),
    "input_size": (INT, 1, 8192),
    "n_classes": (INT, 1, 200000),
    # speechbrain.lobes.features.Fbank
    "deltas": (BOOL, 0, 1),
    "context": (BOOL, 0, 1),
    "requires_grad": (BOOL, 0, 1),
    "f_min": (REAL, 0.0, 192000.0),
    "f_max": (REAL + OR_NULL, 1.0, 192000.0),
    "n_mels": (INT, 1, 1024),
    "filter_shape": (TEXT, 1, 32),
    "param_change_factor": (REAL, 0.0, 10.0),
    "param_rand_factor": (REAL, 0.0, 1.0),
    "left_frames": (INT, 0, 64),
    "right_frames": (INT, 0, 64),
    # speechbrain.processing.features.InputNormalization
    "mean_norm": (BOOL, 0, 1),
    "std_norm": (BOOL, 0, 1),
    "norm_type": (TEXT, 1, 32),
    "avg_factor": (REAL + OR_NULL, 0.0, 1.0),
    "length_dim": (INT, 1, 3),
    "update_until_epoch": (INT, 0, 1000000),
    "avoid_padding_norm": (BOOL, 0, 1),
    "epsilon": (REAL, 1e-30, 1.0),
    # speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN, Classifier
    "lin_neurons": (INT, 1, 8192),
    "channels": (INTS, 1, 4096),
    "kernel_sizes": (INTS, 1, 31),
    "dilations": (INTS, 1, 64),
    "groups": (INTS, 1, 4096),
    "attention_channels": (INT, 1, 4096),
    "res2net_scale": (INT, 1, 64),
    "se_channels": (INT, 1, 4096),
    "global_context": (BOOL, 0, 1),
    "lin_blocks": (INT, 0, 16),
    "out_neurons": (INT, 1, 200000),
}
#: The one top-level ``threshold:`` line of an exported ``hyperparams.yaml``.
YAML_THRESHOLD = re.compile(r"^threshold:.*$", re.MULTILINE)
#: Keyword argument giving a classifier's number of classes.
N_CLASSES_KEYS = ("n_classes", "out_neurons")


class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete, malformed or refused."""


def one_line(err, limit=300):
    """``err`` as one line of at most ``limit`` characters.

    Example
    -------
    >>> one_line(ValueError("two   words"))
    'two words'
    """
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_duplicates(pairs):
    """A JSON object's ``dict``; a key given twice is refused."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _read_text(path, what=""):
    """The UTF-8 text of a file of at most :data:`MAX_JSON_BYTES`; else
    one line naming ``path`` (``what`` before the reason)."""
    try:
        size = os.path.getsize(path)
        if size > MAX_JSON_BYTES:
            raise ModelFolderError(
                f"{path}: {size} bytes, more than {MAX_JSON_BYTES}"
            )
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, ValueError) as err:
        if isinstance(err, ModelFolderError):
            raise
        raise ModelFolderError(f"{path}: {what}{one_line(err)}") from None


def read_json(path):
    """A model folder's JSON file: at most :data:`MAX_JSON_BYTES`, UTF-8,
    valid, no key twice in an object, not nested past Python's stack.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "dampit_export.json")
    >>> _ = open(path, "w").write('{"format": 1, "format": 2}')
    >>> try:
    ...     read_json(path)
    ... except ModelFolderError as err:
    ...     print(str(err).replace(path, "PATH"))
    PATH: not valid JSON: duplicate key 'format'
    """
    text = _read_text(path, "not valid JSON: ")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ModelFolderError(f"{path}: JSON nested too deeply") from None
    except ValueError as err:
        raise ModelFolderError(
            f"{path}: not valid JSON: {one_line(err)}"
        ) from None


def read_yaml_threshold(path):
    """``(text, threshold)`` of an exported ``hyperparams.yaml``: at most
    :data:`MAX_JSON_BYTES`, UTF-8, exactly one top-level ``threshold:``
    line (read alone, as plain YAML: a number or null); else one line
    naming ``path``. Nothing else of the file is read as YAML.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "hyperparams.yaml")
    >>> _ = open(path, "w").write("a: !new:x.Y\\nthreshold: 0.25\\n")
    >>> read_yaml_threshold(path)[1]
    0.25
    """
    text = _read_text(path)
    lines = YAML_THRESHOLD.findall(text)
    if len(lines) != 1:
        raise ModelFolderError(
            f"{path}: needs exactly one top-level 'threshold:' line (as "
            "dampit-export writes it)"
        )
    try:
        value = yaml.safe_load(lines[0])["threshold"]
    except yaml.YAMLError as err:
        raise ModelFolderError(f"{path}: {one_line(err)}") from None
    if value is not None and type(value) not in (int, float):
        raise ModelFolderError(f"{path}: threshold {value!r} is not a number")
    return text, value


def check_value(where, key, value):
    """``value`` of ``key`` within :data:`BOUNDS`, else one line naming
    ``where`` and ``key``.

    Example
    -------
    >>> check_value("m/dampit_export.json", "threshold", 0.4)
    0.4
    >>> try:
    ...     check_value("m/dampit_export.json", "threshold", 3)
    ... except ModelFolderError as err:
    ...     print(err)
    m/dampit_export.json: threshold 3 is not a number in [-1.0, 1.0]
    """
    if key not in BOUNDS:
        raise ModelFolderError(f"{where}: unknown key {key!r}")
    kind, lower, upper = BOUNDS[key]
    if kind == INTS:
        what = f"a list of 1 to {MAX_LIST} integers in [{lower}, {upper}]"
        ok = type(value) is list and 1 <= len(value) <= MAX_LIST
        ok = ok and all(within(INT, item, lower, upper) for item in value)
    else:
        # The message names the kind without "or null".
        what = describe(kind.removesuffix(OR_NULL), lower, upper)
        ok = within(kind, value, lower, upper)
    if not ok:
        text = one_line(repr(value), 60)
        raise ModelFolderError(f"{where}: {key} {text} is not {what}")
    return value


def check_spec(path, spec, classes):
    """Check the content of ``dampit_export.json`` (read from ``path``)
    before anything is built: ``format``, ``sample_rate``, ``threshold``
    (absent: None), the modules (names, ``classes`` only, every keyword
    argument within :data:`BOUNDS`, the features at ``sample_rate``).

    Example
    -------
    >>> mods = {k: {"class": "C", "kwargs": {}} for k in MODULES[:3]}
    >>> spec = {"format": 1, "sample_rate": 16000, "modules": mods}
    >>> check_spec("dampit_export.json", spec, ["C"]) is spec
    True
    >>> mods["embedding_model"]["kwargs"]["emb_dim"] = 10**9
    >>> try:
    ...     check_spec("m.json", spec, ["C"])
    ... except ModelFolderError as err:
    ...     print(err)
    m.json: embedding_model: emb_dim 1000000000 is not an integer in [1, 8192]
    """
    if not isinstance(spec, dict):
        raise ModelFolderError(f"{path}: not a JSON object")
    check_value(path, "format", spec.get("format"))
    rate = check_value(path, "sample_rate", spec.get("sample_rate"))
    if spec.get("threshold") is not None:
        check_value(path, "threshold", spec["threshold"])
    mods = spec.get("modules")
    if not isinstance(mods, dict) or any(m not in mods for m in MODULES[:3]):
        raise ModelFolderError(f"{path}: needs modules {', '.join(MODULES)}")
    for name, entry in mods.items():
        if name not in MODULES:
            raise ModelFolderError(f"{path}: unknown module {name!r}")
        if not isinstance(entry, dict) or set(entry) - {"class", "kwargs"}:
            raise ModelFolderError(
                f"{path}: {name}: needs an object of class and kwargs"
            )
        if not isinstance(entry.get("class"), str) or entry["class"] not in (
            classes
        ):
            raise ModelFolderError(
                f"{path}: {name}: class {entry.get('class')!r} is not one "
                f"dampit builds ({', '.join(sorted(classes))})"
            )
        kwargs = entry.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise ModelFolderError(f"{path}: {name}: kwargs must be an object")
        for key, value in kwargs.items():
            check_value(f"{path}: {name}", key, value)
        if kwargs.get("sample_rate", rate) != rate:
            raise ModelFolderError(
                f"{path}: {name}: sample_rate {kwargs['sample_rate']} is "
                f"not the folder's sample_rate {rate}"
            )
    return spec


def n_classes(spec):
    """The classifier's number of classes in ``spec``, or None.

    Example
    -------
    >>> n_classes({"modules": {"classifier": {"kwargs": {"n_classes": 7}}}})
    7
    """
    kwargs = spec["modules"].get("classifier", {}).get("kwargs", {})
    return next((kwargs[k] for k in N_CLASSES_KEYS if k in kwargs), None)


def check_labels(path, encoder, n_expected):
    """A loaded ``CategoricalEncoder`` of ``path``: labels numbered
    0..N-1, N >= 1 and N = ``n_expected`` (the classifier's; None: any).

    Example
    -------
    >>> from speechbrain.dataio.encoder import CategoricalEncoder
    >>> enc = CategoricalEncoder()
    >>> enc.update_from_iterable(["a", "b"])
    >>> try:
    ...     check_labels("label_encoder.ckpt", enc, 3)
    ... except ModelFolderError as err:
    ...     print(err)
    label_encoder.ckpt: 2 labels for a classifier of 3 classes
    """
    n = len(encoder.lab2ind)
    if n == 0:
        raise ModelFolderError(f"{path}: no labels")
    if sorted(encoder.ind2lab) != list(range(n)) or len(encoder) != n:
        raise ModelFolderError(f"{path}: labels are not numbered 0..{n - 1}")
    if n_expected is not None and n != n_expected:
        raise ModelFolderError(
            f"{path}: {n} labels for a classifier of {n_expected} classes"
        )
    return encoder


def check_embeddings(where, emb):
    """``emb`` (tensor or array) when finite; NaN or inf is refused.

    Example
    -------
    >>> try:
    ...     check_embeddings("model", torch.tensor([[1.0, float("inf")]]))
    ... except ModelFolderError as err:
    ...     print(err)
    model: the model gives NaN/inf embeddings
    """
    if not bool(torch.isfinite(torch.as_tensor(emb)).all()):
        raise ModelFolderError(f"{where}: the model gives NaN/inf embeddings")
    return emb


def check_threshold(where, value):
    """The threshold, or None with a warning; outside [-1, 1] raises."""
    if value is None:
        warnings.warn(
            f"{where}: no threshold stored; deciding at SpeechBrain's "
            f"default {DEFAULT_THRESHOLD}",
            stacklevel=3,
        )
        return None
    return float(check_value(where, "threshold", value))


def check_same_threshold(folder, spec):
    """Refuse a folder whose ``hyperparams.yaml`` (what SpeechBrain's
    ``from_hparams`` reads) holds another threshold than its checked
    ``dampit_export.json`` ``spec``, as an update of the threshold stopped
    between its two files leaves it: the two loaders would decide
    differently. A folder without the YAML has nothing to disagree with."""
    path = os.path.join(folder, HPARAMS_FILE)
    if not os.path.lexists(path):
        return
    _, value = read_yaml_threshold(path)
    if value != spec.get("threshold"):
        raise ModelFolderError(
            f"{path}: threshold {value} is not the {spec.get('threshold')} "
            f"of {SPEC_FILE} (an update stopped half-way?): "
            "dampit.inference.stored_threshold.restore_threshold or "
            "dampit-calibrate makes them agree"
        )
