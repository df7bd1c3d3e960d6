"""The files of a model folder: the one writer of what ``load_model`` reads.

:func:`write_model_files` writes ``dampit_export.json`` (the modules'
classes and arguments as plain JSON, ``threshold``, ``sample_rate`` and
facts about the export), ``hyperparams.yaml`` (the same, filled into one
inference template for SpeechBrain's ``from_hparams``) and the weights.
``dampit-export`` writes its folders with it, the tests their demo folders.
"""

import io
import json
import math
import os

import torch
import yaml

from dampit.inference.api import HPARAMS_FILE, LABELS_FILE, SPEC_FILE

__all__ = ["write_model_files"]

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


def write_model_files(
    folder, modules, weights, threshold, sample_rate, **facts
):
    """Write a model folder's JSON, YAML and weights into ``folder``.

    Arguments
    ---------
    folder : str
        An existing folder.
    modules : dict
        ``compute_features``, ``mean_var_norm``, ``embedding_model`` and
        optionally ``classifier``, each ``{"class": name, "kwargs":
        dict}``.
    weights : dict
        Module name -> state dict, written as ``<module>.ckpt``; a
        ``<module>.ckpt`` already in ``folder`` is loaded too.
    threshold : float or None
        The decision threshold.
    sample_rate : int
        Of the input audio.
    **facts
        More keys of ``dampit_export.json``.

    Returns
    -------
    dict
        The content of ``dampit_export.json``.

    Example
    -------
    >>> import tempfile
    >>> mods = {k: {"class": f"dampit.lobes.{c}", "kwargs": {}} for k, c in [
    ...     ("compute_features", "features.Features"),
    ...     ("mean_var_norm", "features.CropNormalization"),
    ...     ("embedding_model", "resnet.SEResNet")]}
    >>> folder = tempfile.mkdtemp()
    >>> spec = write_model_files(folder, mods, {}, 0.5, 16000, run="r")
    >>> spec["threshold"], spec["run"], sorted(os.listdir(folder))
    (0.5, 'r', ['dampit_export.json', 'hyperparams.yaml'])
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
    loadables = [
        k for k in modules if os.path.isfile(os.path.join(folder, f"{k}.ckpt"))
    ]
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
