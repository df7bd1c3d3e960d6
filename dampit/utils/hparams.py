"""Hyperparameter files that extend a base file.

A recipe variant (an ablation, a small configuration) should not copy the
base YAML. dampit's variants are short files that name their base and list
only what they change::

    # hparams/ablations/softmax_triplet.yaml
    extends: ../multi_metric.yaml
    experiment: softmax_triplet
    w_npair: 0.0
    w_angular: 0.0

``load_hparams`` reads such a file, merges its keys with command-line
overrides (the command line wins) and loads the base with HyperPyYAML, so
``!ref`` values in the base see the variant's values. Bases may extend
other bases. A variant holds plain YAML values (numbers, strings, lists,
mappings); anything with tags belongs in the base.
"""

import os

import yaml
from hyperpyyaml import load_hyperpyyaml

EXTENDS_KEY = "extends"


def resolve_variant(hparams_file, overrides=None):
    """Follow ``extends:`` links down to the base file.

    Arguments
    ---------
    hparams_file : str
        A YAML file, either a full HyperPyYAML file or a variant.
    overrides : dict, str or None
        Overrides from the command line (YAML string or dict); they take
        precedence over the variant's values.

    Returns
    -------
    base_file : str
        The HyperPyYAML file to load.
    merged : dict
        The variant's keys and the overrides merged, outermost last.

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, "base.yaml"), "w") as f:
    ...     _ = f.write("a: 1\\nb: !ref <a>\\n")
    >>> with open(os.path.join(d, "v.yaml"), "w") as f:
    ...     _ = f.write("extends: base.yaml\\na: 2\\n")
    >>> base, merged = resolve_variant(os.path.join(d, "v.yaml"), "a: 3")
    >>> os.path.basename(base), merged
    ('base.yaml', {'a': 3})
    """
    if isinstance(overrides, str):
        overrides = yaml.safe_load(overrides) or {}
    overrides = dict(overrides or {})
    chain = []
    current = os.path.abspath(hparams_file)
    while True:
        if current in (c for c, _ in chain):
            raise ValueError(f"{hparams_file}: 'extends' loop at {current}")
        variant = _read_variant(current)
        if variant is None:
            break
        chain.append((current, variant))
        base = variant.pop(EXTENDS_KEY)
        if not isinstance(base, str):
            raise ValueError(f"{current}: 'extends' must be a file name")
        current = os.path.normpath(os.path.join(os.path.dirname(current), base))
        if not os.path.isfile(current):
            raise FileNotFoundError(
                f"{chain[-1][0]}: extends {base}, but {current} does not exist"
            )
    merged = {}
    for _, variant in reversed(chain):
        merged.update(variant)
    merged.update(overrides)
    return current, merged


def _read_variant(path):
    """Return the variant's keys if ``path`` is a variant, else None."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not any(
        line.startswith(EXTENDS_KEY + ":") for line in text.splitlines()
    ):
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(
            f"{path}: a variant file ('{EXTENDS_KEY}:') may only hold plain "
            f"YAML values, no tags; put tagged objects in the base ({err})"
        ) from err
    if not isinstance(data, dict) or EXTENDS_KEY not in data:
        return None
    return data


def load_hparams(hparams_file, overrides=None):
    """Load a HyperPyYAML file or a variant of one.

    Arguments
    ---------
    hparams_file : str
        A HyperPyYAML file or a variant (``extends: base.yaml``).
    overrides : dict, str or None
        Command-line overrides.

    Returns
    -------
    hparams : dict
        The loaded hyperparameters.
    base_file : str
        The HyperPyYAML file that was loaded.
    merged : dict
        The overrides applied to it (to save beside the experiment).

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, "base.yaml"), "w") as f:
    ...     _ = f.write("a: 1\\nb: !ref <a> * 10\\n")
    >>> with open(os.path.join(d, "v.yaml"), "w") as f:
    ...     _ = f.write("extends: base.yaml\\na: 2\\n")
    >>> hp, _, _ = load_hparams(os.path.join(d, "v.yaml"))
    >>> hp["b"]
    20
    """
    base_file, merged = resolve_variant(hparams_file, overrides)
    with open(base_file, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, merged)
    return hparams, base_file, merged
