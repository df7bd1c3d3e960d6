"""What verification tested, saved for ``dampit-export``.

``<output_folder>/verification/tested_model.json`` maps each module of a
model folder (``compute_features``, ``mean_var_norm``,
``embedding_model`` and, when the loss trains one, ``classifier``) to
``{"class": path, "kwargs": {...}}`` as the run's YAML builds it, with
the ``sample_rate`` and the tested ``checkpoints``; beside it,
``embedding_model.ckpt`` (and ``classifier.ckpt``) hold the weights
verification loaded (averaged when several). ``dampit-export`` copies
them into the model folder as they are.
"""

import json
import os

from dampit.losses.softmax import SoftmaxLoss
from dampit.utils.atomic import atomic_torch_save, atomic_write_text

TESTED_FILE = "tested_model.json"
#: Model folder module -> the recipe's YAML key.
RECIPE_KEYS = {
    "compute_features": "compute_features",
    "mean_var_norm": "normalize",
    "embedding_model": "embedding_model",
}


def module_spec(tree, key, where):
    """``{"class", "kwargs"}`` of the ``!new:`` entry ``key`` of a YAML
    read plainly (ruamel, nothing built), its arguments as JSON values;
    anything else is a one-line ValueError naming ``where``.

    Example
    -------
    >>> import ruamel.yaml
    >>> tree = ruamel.yaml.YAML().load("net: !new:a.Net\\n    size: 3\\n")
    >>> module_spec(tree, "net", "run.yaml")
    {'class': 'a.Net', 'kwargs': {'size': 3}}
    """
    node = tree.get(key) if isinstance(tree, dict) else None
    tag = getattr(getattr(node, "tag", None), "value", None) or ""
    if getattr(node, "value", None) == "":  # "!new:X" alone: no arguments
        node = {}
    if not tag.startswith("!new:") or not isinstance(node, dict):
        raise ValueError(f"{where}: '{key}' is not a !new: object")
    try:  # ruamel's own mapping and scalar types -> plain JSON values
        kwargs = json.loads(json.dumps(node))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: '{key}': {err}") from None
    return {"class": tag[len("!new:") :], "kwargs": kwargs}


def _classifier(cost):
    """``(spec, module)`` of the classifier of the loss's softmax term
    when it trains (a weight other than 0), else None."""
    terms = getattr(cost, "terms", {})
    for name, term in terms.items():
        if isinstance(term, SoftmaxLoss) and cost.weights[name] != 0:
            return term.inference_classifier()
    return None


def save_tested_model(out, hparams, tree, checkpoints):
    """Write ``tested_model.json`` and the weights into ``out``.

    Arguments
    ---------
    out : str
        The run's ``verification`` folder.
    hparams : dict
        The built YAML, the tested weights loaded (``embedding_model``,
        ``compute_cost``, ``sample_rate``).
    tree : dict
        The same YAML read plainly (``!new:`` entries with their tags).
    checkpoints : list
        The tested checkpoints (SpeechBrain ``Checkpoint``).

    Example
    -------
    >>> import tempfile, ruamel.yaml
    >>> from hyperpyyaml import load_hyperpyyaml
    >>> text = '''sample_rate: 16000
    ... compute_features: !new:dampit.lobes.features.Features {}
    ... normalize: !new:dampit.lobes.features.CropNormalization {}
    ... embedding_model: !new:dampit.lobes.resnet.SEResNet
    ...     {depth: 18, base_width: 4, emb_dim: 8}
    ... compute_cost: !new:dampit.losses.SoftmaxLoss
    ...     {input_size: 8, n_classes: 3}
    ... '''
    >>> out = tempfile.mkdtemp()
    >>> save_tested_model(out, load_hyperpyyaml(text),
    ...                   ruamel.yaml.YAML().load(text), [])
    >>> sorted(os.listdir(out))
    ['embedding_model.ckpt', 'tested_model.json']
    """
    modules = {
        name: module_spec(tree, key, "the recipe's YAML")
        for name, key in RECIPE_KEYS.items()
    }
    weights = {"embedding_model": hparams["embedding_model"]}
    head = _classifier(hparams["compute_cost"])
    if head is not None:
        modules["classifier"], weights["classifier"] = head
    for name, module in weights.items():
        state = {k: v.cpu() for k, v in module.state_dict().items()}
        atomic_torch_save(state, os.path.join(out, f"{name}.ckpt"))
    record = {
        "sample_rate": int(hparams["sample_rate"]),
        "modules": modules,
        "checkpoints": [str(c.path) for c in checkpoints],
    }
    text = json.dumps(record, indent=2)
    atomic_write_text(os.path.join(out, TESTED_FILE), text)
