"""The decision threshold (and calibration) stored in a model folder.

A dampit model folder holds its threshold twice: in ``dampit_export.json``
(what :func:`dampit.inference.api.load_model` reads) and in
``hyperparams.yaml`` (``hparams.threshold`` of SpeechBrain's
``from_hparams``). :func:`write_threshold` is the one writer of a new
value: it rewrites both (and the note in ``README.md``), each through a
temporary file renamed over the old one, the JSON last. The JSON keeps
every replaced value, with its source, calibration and time, in
``threshold_history``; ``calibration`` holds the latest calibration (its
operating point, trial counts, cross-validated error rates and the
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
from dampit.utils.atomic import atomic_path
from dampit.utils.file_lock import output_lock

__all__ = ["check_folder", "read_calibration", "write_threshold"]

README_FILE = "README.md"
NOTE_HEADING = "## Calibrated threshold"
_YAML_LINE = re.compile(r"^threshold:.*$", re.MULTILINE)


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
    """``README.md`` with its calibration section set to this threshold."""
    head = text.split(f"\n{NOTE_HEADING}\n")[0].rstrip("\n")
    return (
        f"{head}\n\n{NOTE_HEADING}\n\nThe decision threshold is now "
        f"{threshold:.6g} ({source}); `dampit_export.json` keeps the "
        "values it replaced in `threshold_history`.\n"
    )


def check_folder(folder):
    """``(spec, yaml text)`` of a model folder :func:`write_threshold` can
    update; else ModelFolderError naming the file."""
    folder = os.path.abspath(os.fspath(folder))
    spec = read_spec(folder)
    json_path = os.path.join(folder, SPEC_FILE)
    yaml_path = os.path.join(folder, HPARAMS_FILE)
    if not isinstance(spec.get("threshold_history", []), list):
        raise ModelFolderError(f"{json_path}: threshold_history not a list")
    try:
        with open(yaml_path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"{yaml_path}: {err}") from None
    if len(_YAML_LINE.findall(text)) != 1:
        raise ModelFolderError(
            f"{yaml_path}: needs exactly one top-level 'threshold:' line "
            "(as dampit-export writes it)"
        )
    return spec, text


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
        return _write_threshold(folder, threshold, source, calibration)


def _write_threshold(folder, threshold, source, calibration):
    """:func:`write_threshold` once the folder's lock is held."""
    spec, text = check_folder(folder)
    json_path = os.path.join(folder, SPEC_FILE)
    yaml_path = os.path.join(folder, HPARAMS_FILE)
    history = spec.get("threshold_history", [])
    line = yaml.safe_dump({"threshold": float(threshold)}).strip()
    text = _YAML_LINE.sub(line, text)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    old = {k: spec[k] for k in ("threshold", "threshold_source") if k in spec}
    old.update(calibration=spec.get("calibration"), replaced=now)
    spec.update(threshold=float(threshold), threshold_source=source)
    spec.update(calibration=calibration, threshold_history=[*history, old])
    readme = os.path.join(folder, README_FILE)
    note = None
    if os.path.isfile(readme):
        with open(readme, encoding="utf-8", errors="replace") as f:
            note = _note(f.read(), float(threshold), source)
    with atomic_path(json_path) as tmp_json:
        with open(tmp_json, "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=2)
        with atomic_path(yaml_path) as tmp_yaml:
            with open(tmp_yaml, "w", encoding="utf-8") as f:
                f.write(text)
        if note is not None:
            with atomic_path(readme) as tmp_readme:
                with open(tmp_readme, "w", encoding="utf-8") as f:
                    f.write(note)
    return spec
