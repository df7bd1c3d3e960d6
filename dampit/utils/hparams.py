"""Recipe variants: a file that names its base and lists what it changes.

A variant holds HyperPyYAML overrides of its base, tags included::

    extends: ../multi_metric.yaml      # hparams/ablations/no_gates.yaml
    gate: none

``load_hparams`` reads each variant once with ruamel (as HyperPyYAML reads
command-line overrides), puts the command line on top and loads the base
once with ``load_hyperpyyaml``; a file without an ``extends:`` line is a
base and is not read here.
"""

import os

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml
from hyperpyyaml.core import recursive_update

EXTENDS_KEY = "extends"


def resolve_variant(hparams_file, overrides=None):
    """Follow ``extends:`` down to the base; merge the variants' keys.

    Arguments
    ---------
    hparams_file : str or os.PathLike
        A HyperPyYAML file or a variant of one.
    overrides : str, dict or None
        Command-line overrides (they win over the variants' values).

    Returns
    -------
    base_file : str
        The HyperPyYAML file to load.
    merged : dict
        Overrides for it: the variants' keys, outermost last, then
        ``overrides``.

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "base.yaml"), "w").write("a: 1\\nb: 2\\n")
    >>> _ = open(os.path.join(d, "v.yaml"), "w").write(
    ...     "extends: base.yaml\\na: !ref <b>\\n")
    >>> base, merged = resolve_variant(os.path.join(d, "v.yaml"), "b: 3")
    >>> os.path.basename(base), merged["a"].tag.value, merged["b"]
    ('base.yaml', '!ref', 3)
    """
    loader = ruamel.yaml.YAML()
    chain, current = [], os.path.abspath(hparams_file)
    while True:
        with open(current, encoding="utf-8") as f:
            text = f.read()
        lines = text.splitlines()
        if not any(line.startswith(EXTENDS_KEY + ":") for line in lines):
            break
        variant = loader.load(text)
        base = variant.pop(EXTENDS_KEY)
        chain.append(variant)
        nxt = os.path.normpath(os.path.join(os.path.dirname(current), base))
        if not os.path.isfile(nxt):
            raise FileNotFoundError(f"{current}: extends {base}: no such file")
        if len(chain) > 20:
            raise ValueError(f"{hparams_file}: 'extends' loop at {current}")
        current = nxt
    merged = {}
    for variant in reversed(chain):
        recursive_update(merged, variant)
    if isinstance(overrides, str):
        overrides = loader.load(overrides)
    recursive_update(merged, overrides or {})
    return current, merged


def load_hparams(hparams_file, overrides=None):
    """Load a HyperPyYAML file or a variant of one (objects built once).

    Arguments
    ---------
    hparams_file : str or os.PathLike
        A HyperPyYAML file or a variant (``extends: base.yaml``).
    overrides : str, dict or None
        Command-line overrides.

    Returns
    -------
    hparams : dict
        The loaded hyperparameters.
    base_file : str
        The HyperPyYAML file loaded.
    merged : dict
        The overrides applied to it (to save beside the experiment).

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "base.yaml"), "w").write(
    ...     "a: 1\\nb: !ref <a> * 10\\n")
    >>> _ = open(os.path.join(d, "v.yaml"), "w").write(
    ...     "extends: base.yaml\\na: 2\\n")
    >>> load_hparams(os.path.join(d, "v.yaml"))[0]["b"]
    20
    """
    base_file, merged = resolve_variant(hparams_file, overrides)
    with open(base_file, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, merged)
    return hparams, base_file, merged
