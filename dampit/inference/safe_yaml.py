"""Refuse model folders whose ``hyperparams.yaml`` could run arbitrary code.

Loading a HyperPyYAML file runs code: ``!new:`` calls a constructor,
``!apply:`` and ``!applyref:`` call any function, ``!module:`` imports a
module, ``!include:`` reads another file and HyperPyYAML parses with
PyYAML's full loader, which also honours ``!!python/...`` tags (and parses
the inside of implicit tuples ``(a, b)`` the same way). A model folder from
somebody else is therefore code from somebody else.

:func:`check_hparams` reads the file *without constructing anything*
(PyYAML's composer only builds the node tree) and accepts only:

- the standard YAML types (strings, numbers, booleans, null, lists,
  mappings) and HyperPyYAML's ``!ref``, ``!copy`` and ``!tuple``;
- ``!new:`` and ``!name:`` targets under an allow-list of module prefixes
  (:data:`DEFAULT_ALLOWED`: dampit's networks, SpeechBrain's features,
  layers, encoders, pretrainer and audio normaliser, ``torch.nn``). The
  target must also *be defined* there: ``torch.nn.modules.module.os.system``
  starts with an allowed prefix but lives in ``os``, and is refused.

Everything else (``!apply:``, ``!applyref:``, ``!module:``, ``!include:``,
``!!python/...``, unknown tags, targets outside the list) is reported with
its line number; callers refuse the folder unless the user trusts it
(``dampit-verify --trust``).
"""

import inspect
import os
import pydoc
import re

import yaml

__all__ = [
    "DEFAULT_ALLOWED",
    "UnsafeYAMLError",
    "check_hparams",
    "find_unsafe_tags",
    "is_allowed_target",
]

#: Allowed ``!new:`` / ``!name:`` targets: a prefix ending with "." allows a
#: package or module and everything in it; other entries allow one name.
DEFAULT_ALLOWED = (
    "dampit.lobes.",
    "dampit.inference.pretrainer.",
    "speechbrain.lobes.features.",
    "speechbrain.lobes.models.",
    "speechbrain.processing.features.",
    "speechbrain.nnet.",
    "speechbrain.dataio.encoder.",
    "speechbrain.dataio.preprocess.AudioNormalizer",
    "speechbrain.utils.parameter_transfer.Pretrainer",
    "torch.nn.",
)

_CORE_TAG = "tag:yaml.org,2002:"
_SAFE_CORE = {
    "str",
    "int",
    "float",
    "bool",
    "null",
    "map",
    "seq",
    "binary",
    "timestamp",
}
_PLAIN_TAGS = ("!ref", "!copy", "!tuple")
_TUPLE = re.compile(r"^\(.*\)$")


class UnsafeYAMLError(ValueError):
    """A hyperparameter file uses tags outside the allow-list."""


def _matches(name, allowed):
    """True if the dotted ``name`` is covered by an allow-list entry."""
    for entry in allowed:
        if entry.endswith("."):
            if name.startswith(entry):
                return True
        elif name == entry:
            return True
    return False


def is_allowed_target(target, allowed=DEFAULT_ALLOWED):
    """Check one ``!new:`` / ``!name:`` target against the allow-list.

    The dotted name must match an entry, contain no private (``_``)
    component, and resolve (importing only modules under the matched
    prefix) to a class or function whose own module and name match too.

    Arguments
    ---------
    target : str
        Dotted name, e.g. ``dampit.lobes.resnet.SEResNet``.
    allowed : sequence of str
        Allow-list entries (see :data:`DEFAULT_ALLOWED`).

    Returns
    -------
    reason : str or None
        None if allowed, else why not.

    Example
    -------
    >>> is_allowed_target("torch.nn.Linear") is None
    True
    >>> is_allowed_target("os.system")
    "'os.system' is not under an allowed prefix"
    >>> print(is_allowed_target("torch.nn.init.torch.load"))
    ... # doctest: +NORMALIZE_WHITESPACE
    'torch.nn.init.torch.load' resolves to torch.serialization.load,
    outside the allow-list
    """
    if not _matches(target, allowed):
        return f"{target!r} is not under an allowed prefix"
    if any(part.startswith("_") for part in target.split(".")):
        return f"{target!r} has a private component"
    try:
        obj = pydoc.locate(target)
    except Exception as err:  # import errors of the located module
        return f"{target!r} cannot be imported: {err}"
    if obj is None:
        return f"{target!r} cannot be found"
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return f"{target!r} is a {type(obj).__name__}, not a class/function"
    real = f"{obj.__module__}.{obj.__qualname__}"
    if not _matches(real, allowed) and not _matches(
        target, tuple(e for e in allowed if not e.endswith("."))
    ):
        return f"{target!r} resolves to {real}, outside the allow-list"
    if "<" in real or any(p.startswith("__") for p in real.split(".")):
        return f"{target!r} resolves to {real}, not a plain class/function"
    return None


def _walk(node, seen):
    """Yield every node of a composed YAML tree once (aliases included)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield n
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack.extend((v, k))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)


def _check_text(text, allowed, line_offset, found, depth=0):
    """Append (line, tag, reason) for every refused tag in ``text``."""
    try:
        docs = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = line_offset + (mark.line + 1 if mark else 1)
        found.append((line, "", f"not valid YAML: {err}"))
        return
    seen = set()
    for doc in docs:
        if doc is None:
            continue
        for node in _walk(doc, seen):
            line = line_offset + node.start_mark.line + 1
            tag = node.tag or ""
            if tag.startswith(_CORE_TAG):
                kind = tag[len(_CORE_TAG) :]
                if kind not in _SAFE_CORE:
                    why = (
                        "constructs arbitrary Python objects"
                        if kind.startswith("python/")
                        else "not a plain YAML type"
                    )
                    found.append((line, "!!" + kind, why))
                    continue
                # HyperPyYAML turns plain "(a, b)" scalars into tuples by
                # parsing "[a, b]" with PyYAML's full loader: check inside.
                if (
                    isinstance(node, yaml.ScalarNode)
                    and node.style is None
                    and _TUPLE.match(node.value)
                    and depth < 5
                ):
                    inner = "[" + node.value[1:-1] + "]"
                    _check_text(inner, allowed, line - 1, found, depth + 1)
                continue
            if tag in _PLAIN_TAGS:
                continue
            for prefix in ("!new:", "!name:"):
                if tag.startswith(prefix):
                    reason = is_allowed_target(tag[len(prefix) :], allowed)
                    if reason:
                        found.append((line, tag, reason))
                    break
            else:
                if tag.startswith(("!apply:", "!applyref:")):
                    why = "calls an arbitrary function while loading"
                elif tag.startswith("!module:"):
                    why = "imports an arbitrary module"
                elif tag.startswith("!include:"):
                    why = "reads another file"
                elif tag.startswith("tag:yaml.org,2002:python/"):
                    tag = "!!" + tag[len(_CORE_TAG) :]
                    why = "constructs arbitrary Python objects"
                else:
                    why = "is not an allowed tag"
                found.append((line, tag, why))


def find_unsafe_tags(source, allowed=DEFAULT_ALLOWED):
    """List the tags of a HyperPyYAML text or file outside the allow-list.

    Arguments
    ---------
    source : str or os.PathLike
        A path to a YAML file, or the YAML text itself (a string with a
        line break).
    allowed : sequence of str
        Allow-list of ``!new:`` / ``!name:`` targets.

    Returns
    -------
    list of tuple
        ``(line, tag, reason)`` sorted by line; empty when safe.

    Example
    -------
    >>> text = "a: !new:torch.nn.Linear [2, 3]\\nb: !apply:os.system [ls]\\n"
    >>> find_unsafe_tags(text)
    [(2, '!apply:os.system', 'calls an arbitrary function while loading')]
    """
    if isinstance(source, str) and "\n" in source:
        text = source
    else:
        with open(os.fspath(source), encoding="utf-8") as f:
            text = f.read()
    found = []
    _check_text(text, tuple(allowed), 0, found)
    return sorted(found, key=lambda t: (t[0], t[1]))


def check_hparams(path, trust=False, allowed=DEFAULT_ALLOWED):
    """Raise unless ``path`` only uses allowed tags (or ``trust`` is set).

    Arguments
    ---------
    path : str or os.PathLike
        The ``hyperparams.yaml`` to check.
    trust : bool
        Skip the check (the user trusts the file's author).
    allowed : sequence of str
        Allow-list of ``!new:`` / ``!name:`` targets.

    Returns
    -------
    list of tuple
        The refused tags found (empty unless ``trust`` hid them).

    Raises
    ------
    UnsafeYAMLError
        Naming the file, each refused tag and its line.
    FileNotFoundError
        When ``path`` does not exist.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "hyperparams.yaml")
    >>> with open(p, "w") as f:
    ...     _ = f.write("x: !apply:os.getcwd []\\n")
    >>> check_hparams(p, trust=True)
    [(1, '!apply:os.getcwd', 'calls an arbitrary function while loading')]
    >>> check_hparams(p)
    Traceback (most recent call last):
    ...
    dampit.inference.safe_yaml.UnsafeYAMLError: ...
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"hyperparameter file not found: {path}")
    found = find_unsafe_tags(path, allowed)
    if found and not trust:
        lines = "\n".join(
            f"  {path}:{line}: {tag} {why}"
            if tag
            else f"  {path}:{line}: {why}"
            for line, tag, why in found
        )
        raise UnsafeYAMLError(
            f"{path} uses {len(found)} tag(s) outside dampit's allow-list; "
            "loading it could run arbitrary code:\n"
            f"{lines}\n"
            "Load it only if you trust its author (dampit-verify/dampit-embed "
            "--trust, or trust=True)."
        )
    return found
