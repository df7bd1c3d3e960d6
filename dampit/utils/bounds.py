"""Values checked against a table of kinds and inclusive bounds.

A bounds table maps a key to ``(kind, lower, upper)``: the kind is one of
:data:`INT`, :data:`REAL`, :data:`BOOL`, :data:`TEXT` (its bounds are
on the text's length) and :data:`CHOICE` (``lower`` is the tuple of the
values allowed, ``upper`` None), with :data:`OR_NULL` appended where None
is allowed. :func:`within` says whether a value fits its entry and
:func:`describe` says what fits, as a one-line error message puts it.
The model-folder checks (:mod:`dampit.inference.folder_checks`) and the
recipe's arguments (:mod:`dampit.training.arguments`) use them.
"""

__all__ = [
    "BOOL",
    "CHOICE",
    "INT",
    "OR_NULL",
    "REAL",
    "TEXT",
    "describe",
    "within",
]

INT, REAL, BOOL, TEXT = "an integer", "a number", "true or false", "text"
CHOICE = "one of"
OR_NULL = " or null"
#: kind -> the Python types of its values (bool is not an integer here).
TYPES = {INT: (int,), REAL: (int, float), BOOL: (bool,)}


def within(kind, value, lower, upper):
    """Whether ``value`` is of ``kind`` within ``[lower, upper]`` (text:
    its length); None only where ``kind`` ends with :data:`OR_NULL`.

    Example
    -------
    >>> within(INT, 3, 1, 8), within(INT, True, 0, 1), within(REAL, 2, 0, 1)
    (True, False, False)
    >>> within(TEXT, "fbank", 1, 32), within(INT + OR_NULL, None, 1, 8)
    (True, True)
    >>> within(CHOICE, "avg", ("avg", "stats"), None)
    True
    >>> within(CHOICE, "max", ("avg", "stats"), None)
    False
    >>> import ruamel.yaml
    >>> fold = ruamel.yaml.YAML().load("fold: 0  # a comment")["fold"]
    >>> type(fold).__name__, within(INT, fold, 0, 9)
    ('ScalarInt', True)
    """
    if value is None:
        return kind.endswith(OR_NULL)
    kind = kind.removesuffix(OR_NULL)
    if kind == TEXT:
        return type(value) is str and lower <= len(value) <= upper
    if isinstance(value, bool) and kind != BOOL:  # True is not 1 here
        return False
    if kind == CHOICE:
        return value in lower
    # isinstance: YAML loaders give int and float subclasses (ruamel's
    # ScalarInt and ScalarFloat for values with a comment after them).
    return isinstance(value, TYPES[kind]) and lower <= value <= upper


def describe(kind, lower, upper):
    """What a value of ``kind`` within ``[lower, upper]`` is, in words.

    Example
    -------
    >>> describe(INT + OR_NULL, 2, 1000)
    'an integer or null in [2, 1000]'
    >>> describe(TEXT, 1, 32)
    'text of 1 to 32 characters'
    >>> describe(CHOICE + OR_NULL, ("as-norm",), None)
    "one of 'as-norm' or null"
    """
    if kind.removesuffix(OR_NULL) == CHOICE:
        names = ", ".join(repr(c) for c in lower)
        return f"{CHOICE} {names}{kind.removeprefix(CHOICE)}"
    if kind == TEXT:
        return f"text of {lower} to {upper} characters"
    return f"{kind} in [{lower}, {upper}]"
