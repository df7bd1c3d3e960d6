"""What verification tested, saved for ``dampit-export``.

``<output_folder>/verification/tested_model.json`` maps each module of a
model folder (``compute_features``, ``mean_var_norm``,
``embedding_model`` and, when the run trains one, ``classifier``) to
``{"class": path, "kwargs": {...}}`` as the run's YAML builds it, with
the ``sample_rate`` and the tested ``checkpoints``; beside it,
``embedding_model.ckpt`` (and ``classifier.ckpt``) hold the weights
verification loaded (averaged when several). ``dampit-export`` copies
them into the model folder as they are.

The YAML is dampit's recipe's (its ``normalize`` entry; the classifier of
the loss's softmax term) or, when it has a ``mean_var_norm`` entry, a
SpeechBrain speaker recipe's, such as the template's
(``templates/speaker_verification``): its entries have the model
folder's names, and its ``classifier``, SpeechBrain's ECAPA
``Classifier`` or dampit's ``MetricHead`` (the same weights), is saved as
the former.
"""

import json
import os

from dampit.losses.softmax import COSINE, SoftmaxLoss
from dampit.utils.atomic import atomic_torch_save, atomic_write_text

TESTED_FILE = "tested_model.json"
#: Model folder module -> the recipe's YAML key.
RECIPE_KEYS = {
    "compute_features": "compute_features",
    "mean_var_norm": "normalize",
    "embedding_model": "embedding_model",
}
#: The entries of a SpeechBrain speaker recipe's YAML (the template's).
SPEECHBRAIN_MODULES = ("compute_features", "mean_var_norm", "embedding_model")
#: Classifiers that a model folder holds as SpeechBrain's ECAPA one.
HEADS = (COSINE, "dampit.lobes.metric_head.MetricHead")


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


def speechbrain_modules(tree, where):
    """The model folder's modules of a SpeechBrain speaker recipe's YAML
    read plainly: its ``compute_features``, ``mean_var_norm`` and
    ``embedding_model`` entries and, when it is one of :data:`HEADS`, its
    ``classifier`` as SpeechBrain's ECAPA ``Classifier``; an entry that is
    not a ``!new:`` object is a one-line ValueError naming ``where``.

    Example
    -------
    >>> import ruamel.yaml
    >>> tree = ruamel.yaml.YAML().load('''
    ... compute_features: !new:speechbrain.lobes.features.Fbank {}
    ... mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    ...     {norm_type: sentence}
    ... embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    ...     {input_size: 80}
    ... classifier: !new:dampit.lobes.metric_head.MetricHead
    ...     {input_size: 192, out_neurons: 20}
    ... ''')
    >>> head = speechbrain_modules(tree, "run.yaml")["classifier"]
    >>> head["class"]
    'speechbrain.lobes.models.ECAPA_TDNN.Classifier'
    >>> head["kwargs"]
    {'input_size': 192, 'out_neurons': 20}
    """
    modules = {
        key: module_spec(tree, key, where) for key in SPEECHBRAIN_MODULES
    }
    if "classifier" in tree:
        head = module_spec(tree, "classifier", where)
        if head["class"] in HEADS:
            modules["classifier"] = {"class": COSINE, "kwargs": head["kwargs"]}
    return modules


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
        ``sample_rate`` and ``compute_cost``, or ``classifier`` in a
        SpeechBrain speaker recipe's).
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
    where = "the recipe's YAML"
    weights = {"embedding_model": hparams["embedding_model"]}
    if "mean_var_norm" in tree:  # a SpeechBrain speaker recipe's YAML
        modules = speechbrain_modules(tree, where)
        if "classifier" in modules:
            weights["classifier"] = hparams["classifier"]
    else:
        modules = {
            name: module_spec(tree, key, where)
            for name, key in RECIPE_KEYS.items()
        }
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
