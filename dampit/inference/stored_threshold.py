"""The decision threshold (and calibration) stored in a model folder.

A dampit model folder holds its threshold twice: in ``dampit_export.json``
(what :func:`dampit.inference.api.load_model` reads) and in
``hyperparams.yaml`` (``hparams.threshold`` of SpeechBrain's
``from_hparams``). :func:`write_threshold` is the one writer of a new
value: it rewrites both, each through a temporary file renamed over the
old one, the YAML first: the JSON is the record, and its rename commits
the update (the note in ``README.md`` follows it). A writer stopped
between the two renames leaves a YAML ahead of the JSON; ``load_model``
refuses such a folder in one line (the two loaders would decide
differently) and :func:`restore_threshold` (which ``dampit-calibrate``
runs first) puts the JSON's value back into the YAML and the note. The
JSON keeps every replaced value, with its source, calibration and time,
in ``threshold_history``; ``calibration`` holds the latest calibration
(its operating point, trial counts, cross-validated error rates and the
optional ``llr`` map).
"""

import datetime
import json
import math
import os
import re

import yaml

from dampit.inference.api import (
    HPARAMS_FILE,
    SPEC_FILE,
    ModelFolderError,
    read_spec,
)
from dampit.inference.folder_checks import YAML_THRESHOLD, read_yaml_threshold
from dampit.utils.atomic import atomic_write_text
from dampit.utils.file_lock import output_lock

__all__ = [
    "check_folder",
    "read_calibration",
    "restore_threshold",
    "write_threshold",
]

README_FILE = "README.md"
NOTE_HEADING = "## Calibrated threshold"
#: dampit's section of README.md: up to the next # or ## heading, or the end
NOTE_SECTION = re.compile(
    rf"^{NOTE_HEADING}$.*?(\n*)(?=^##? |\Z)", re.MULTILINE | re.DOTALL
)


def read_calibration(folder):
    """The ``calibration`` record of a model folder's JSON, or None.

    Its ``llr`` entry, when present, is checked: ``{"scale", "offset"}``
    finite numbers.

    Example
    -------
    >>> import tempfile
    >>> read_calibration(tempfile.mkdtemp()) is None
    True
    """
    path = os.path.join(os.fspath(folder), SPEC_FILE)
    if not os.path.isfile(path):
        return None
    record = read_spec(os.fspath(folder)).get("calibration")
    if record is None:
        return None
    llr = record.get("llr") if isinstance(record, dict) else "not an object"
    values = llr.values() if isinstance(llr, dict) else [None]
    if llr is not None and (
        not isinstance(llr, dict)
        or set(llr) != {"scale", "offset"}
        or not all(type(v) in (int, float) and math.isfinite(v) for v in values)
    ):
        raise ModelFolderError(
            f"{path}: calibration llr {llr!r} is not {{scale, offset}} "
            "finite numbers"
        )
    return record


def _note(text, threshold, source):
    """``README.md`` with its calibration section set to this threshold:
    the section (its heading up to the next ``#`` or ``##`` heading, or
    the end) replaced, or appended when there is none; the rest kept as
    it is.

    Example
    -------
    >>> text = "# M\\n\\n## Calibrated threshold\\n\\nold\\n\\n## Mine\\nkeep"
    >>> print(_note(text, 0.5, "by hand"))
    # M
    <BLANKLINE>
    ## Calibrated threshold
    <BLANKLINE>
    The decision threshold is now 0.5 (by hand); `dampit_export.json`
    keeps the values it replaced in `threshold_history`.
    <BLANKLINE>
    ## Mine
    keep
    """
    section = (
        f"{NOTE_HEADING}\n\nThe decision threshold is now {threshold:.6g} "
        f"({source}); `dampit_export.json` keeps the values it replaced in "
        "`threshold_history`."
    )
    found = NOTE_SECTION.search(text)
    if found is None:
        return f"{text.rstrip(chr(10))}\n\n{section}\n"
    # group 1: the line breaks that end the section, kept as they are
    return f"{text[: found.start()]}{section}{found[1]}{text[found.end() :]}"


def check_folder(folder):
    """``(spec, yaml text, yaml threshold)`` of a model folder
    :func:`write_threshold` can update; else ModelFolderError naming the
    file."""
    folder = os.path.abspath(os.fspath(folder))
    spec = read_spec(folder)
    json_path = os.path.join(folder, SPEC_FILE)
    if not isinstance(spec.get("threshold_history", []), list):
        raise ModelFolderError(f"{json_path}: threshold_history not a list")
    text, value = read_yaml_threshold(os.path.join(folder, HPARAMS_FILE))
    return spec, text, value


def _yaml_text(text, threshold):
    """``hyperparams.yaml`` text with its threshold line set."""
    line = yaml.safe_dump({"threshold": threshold}).strip()
    return YAML_THRESHOLD.sub(line, text)


def _readme_note(folder, threshold, source):
    """``README.md`` with its note set to this threshold (None: none)."""
    readme = os.path.join(folder, README_FILE)
    if not os.path.isfile(readme):
        return None
    with open(readme, encoding="utf-8", errors="replace") as f:
        return _note(f.read(), threshold, source)


def _write_files(folder, spec, text, note):
    """Write ``hyperparams.yaml``, then ``dampit_export.json`` (the commit
    point), then the README note (None: none), each through a temporary
    file renamed over the old one."""
    atomic_write_text(os.path.join(folder, HPARAMS_FILE), text)
    spec_text = json.dumps(spec, indent=2)
    atomic_write_text(os.path.join(folder, SPEC_FILE), spec_text)
    if note is not None:
        atomic_write_text(os.path.join(folder, README_FILE), note)


def restore_threshold(folder):
    """Give ``hyperparams.yaml`` and the README note the threshold of
    ``dampit_export.json`` again, after an update stopped between its
    renames; a folder whose two files agree is left as it is.

    Arguments
    ---------
    folder : str or os.PathLike
        A model folder written by ``dampit-export``.

    Returns
    -------
    bool
        Whether the files disagreed (and were rewritten).

    Example
    -------
    >>> import tempfile, torch
    >>> from dampit.inference.model_files import write_model_files
    >>> from dampit.lobes.resnet import SEResNet
    >>> kw = dict(depth=18, base_width=4, emb_dim=8)
    >>> mods = {k: {"class": f"dampit.lobes.{c}", "kwargs": {}} for k, c in [
    ...     ("compute_features", "features.Features"),
    ...     ("mean_var_norm", "features.CropNormalization"),
    ...     ("embedding_model", "resnet.SEResNet")]}
    >>> mods["embedding_model"]["kwargs"] = kw
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_model_files(folder, mods, {"embedding_model":
    ...                       SEResNet(**kw).state_dict()}, 0.4, 16000)
    >>> path = os.path.join(folder, HPARAMS_FILE)
    >>> text = open(path).read()
    >>> ahead = text.replace("threshold: 0.4", "threshold: 0.7")
    >>> _ = open(path, "w").write(ahead)  # as a stopped update leaves it
    >>> restore_threshold(folder), restore_threshold(folder)
    (True, False)
    >>> open(path).read() == text
    True
    """
    folder = os.path.abspath(os.fspath(folder))
    with output_lock(folder):
        spec, text, value = check_folder(folder)
        threshold = spec.get("threshold")
        if value == threshold:
            return False
        source = spec.get("threshold_source", "dampit_export.json")
        note = None
        if threshold is not None:
            note = _readme_note(folder, threshold, source)
        _write_files(folder, spec, _yaml_text(text, threshold), note)
    return True


def write_threshold(folder, threshold, source, calibration=None):
    """Store a new threshold in a dampit model folder.

    Arguments
    ---------
    folder : str or os.PathLike
        A model folder written by ``dampit-export``.
    threshold : float
        The new threshold (finite): same speaker when ``score >
        threshold``.
    source : str
        Where it comes from (``threshold_source`` in the JSON).
    calibration : dict, optional
        A JSON-serialisable record of the calibration (``calibration`` in
        the JSON; None removes the previous one).

    Returns
    -------
    dict
        The new ``dampit_export.json``.

    Raises
    ------
    ModelFolderError
        Not a dampit model folder, a ``hyperparams.yaml`` without exactly
        one top-level ``threshold:`` line, a non-finite threshold.

    Example
    -------
    >>> import tempfile, torch
    >>> from dampit.inference.model_files import write_model_files
    >>> from dampit.lobes.resnet import SEResNet
    >>> kw = dict(depth=18, base_width=4, emb_dim=8)
    >>> mods = {k: {"class": f"dampit.lobes.{c}", "kwargs": {}} for k, c in [
    ...     ("compute_features", "features.Features"),
    ...     ("mean_var_norm", "features.CropNormalization"),
    ...     ("embedding_model", "resnet.SEResNet")]}
    >>> mods["embedding_model"]["kwargs"] = kw
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_model_files(folder, mods, {"embedding_model":
    ...                       SEResNet(**kw).state_dict()}, 0.4, 16000)
    >>> spec = write_threshold(folder, 0.55, "by hand")
    >>> spec["threshold"], spec["threshold_history"][0]["threshold"]
    (0.55, 0.4)
    """
    if type(threshold) not in (int, float) or not math.isfinite(threshold):
        raise ModelFolderError(f"threshold {threshold!r} is not finite")
    folder = os.path.abspath(os.fspath(folder))
    with output_lock(folder):  # one writer from the read to the write
        spec, text, _ = check_folder(folder)
        history = spec.get("threshold_history", [])
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        keys = ("threshold", "threshold_source")
        old = {k: spec[k] for k in keys if k in spec}
        old.update(calibration=spec.get("calibration"), replaced=now)
        spec.update(threshold=float(threshold), threshold_source=source)
        spec.update(calibration=calibration, threshold_history=[*history, old])
        note = _readme_note(folder, float(threshold), source)
        _write_files(folder, spec, _yaml_text(text, float(threshold)), note)
    return spec
