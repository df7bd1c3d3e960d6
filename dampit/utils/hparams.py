"""Recipe variants: a file that names its base and lists what it changes.

A variant holds HyperPyYAML overrides of its base, tags included::

    extends: ../multi_metric.yaml      # hparams/ablations/no_gates.yaml
    gate: none

Each variant is read once with ruamel (as HyperPyYAML reads command-line
overrides), the command line goes on top, and the base is loaded once
with ``load_hyperpyyaml``; a file without an ``extends:`` line is a base.
"""

import os

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml
from hyperpyyaml.core import recursive_update

#: Longest ``extends:`` chain.
MAX_CHAIN = 20


class VariantError(ValueError):
    """A variant or override that cannot be read; one line naming it."""


def _load_yaml(loader, text, where):
    """``loader.load(text)``; a syntax error is one line naming ``where``."""
    try:
        return loader.load(text)
    except ruamel.yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise VariantError(
            f"{where}{line}: not valid YAML: {problem}"
        ) from None


def resolve_variant(hparams_file, overrides=None):
    """``(base_file, merged)``: the HyperPyYAML file at the end of the
    ``extends:`` chain, and the overrides to load it with (the variants'
    keys, outermost last, then the dict ``overrides``).

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "base.yaml"), "w").write("a: 1\\nb: 2\\n")
    >>> _ = open(os.path.join(d, "v.yaml"), "w").write(
    ...     "extends: base.yaml\\na: !ref <b>\\n")
    >>> base, merged = resolve_variant(os.path.join(d, "v.yaml"), {"b": 3})
    >>> os.path.basename(base), merged["a"].tag.value, merged["b"]
    ('base.yaml', '!ref', 3)
    """
    loader = ruamel.yaml.YAML()
    chain, current = [], os.path.abspath(hparams_file)
    seen = [current]
    if not os.path.isfile(current):
        raise VariantError(f"{hparams_file}: no such file")
    while True:
        with open(current, encoding="utf-8") as f:
            text = f.read()
        if not any(s.startswith("extends:") for s in text.splitlines()):
            break
        chain.append(_load_yaml(loader, text, current))
        if not isinstance(chain[-1], dict):
            raise VariantError(f"{current}: not a mapping of keys")
        base = chain[-1].pop("extends", None)
        if not isinstance(base, str):
            raise VariantError(f"{current}: extends {base!r}: not a file name")
        nxt = os.path.normpath(os.path.join(os.path.dirname(current), base))
        if not os.path.isfile(nxt):
            raise VariantError(f"{current}: extends {base}: no such file")
        if nxt in seen or len(seen) > MAX_CHAIN:
            raise VariantError(
                f"{current}: extends {base}: a loop or a chain of more than "
                f"{MAX_CHAIN} files ({' -> '.join(seen + [nxt])})"
            )
        seen.append(nxt)
        current = nxt
    merged = {}
    for variant in reversed(chain):
        recursive_update(merged, variant)
    recursive_update(merged, overrides or {})
    return current, merged


def load_hparams(hparams_file, overrides=None):
    """``(hparams, base_file, merged)`` of a HyperPyYAML file or variant.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = open(f"{d}/base.yaml", "w").write("a: 1\\nb: !ref <a>\\n")
    >>> _ = open(f"{d}/v.yaml", "w").write("extends: base.yaml\\na: 2")
    >>> load_hparams(f"{d}/v.yaml")[0]["b"]
    2
    """
    base_file, merged = resolve_variant(hparams_file, overrides)
    with open(base_file, encoding="utf-8") as f:
        return load_hyperpyyaml(f, merged), base_file, merged
