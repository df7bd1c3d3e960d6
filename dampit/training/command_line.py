"""A recipe's command line, read so that what was typed is what runs.

SpeechBrain's ``parse_arguments`` joins the YAML overrides (``--key=value``
or ``--key value``) into one YAML text: an ``=`` inside a value becomes a
space, and a `` #`` in a value starts a YAML comment, so
``--data_folder='/data/my #set'`` would train on ``/data/my``.
:func:`parse_command_line` reads each override from exactly what was
typed: ``=`` stays, a value that YAML would cut at a comment or that
spans lines is refused in one line, and a path-valued key (``PATH_KEYS``)
that YAML reads as a number or a boolean keeps the typed text
(``--output_folder=2024`` is the folder ``2024``); in a list of paths
such an item is refused (quote it: ``["2024",/b]``).
"""

import ruamel.yaml
import speechbrain as sb
from speechbrain.utils.run_opts import RunOptions

#: Keys that name files or folders (a string, a list of them, or null).
PATH_KEYS = (
    "data_folder",
    "output_folder",
    "save_folder",
    "prep_folder",
    "train_log",
    "init_from",
    "noise_folder",
    "rir_folder",
    "torchvision_init",
)


class CommandLineError(ValueError):
    """A command-line value that would not run as typed."""


def override_texts(argv):
    """The YAML overrides of ``argv`` (what SpeechBrain's parser leaves),
    as ``(key, typed text)`` pairs: ``--key=text``, or ``--key`` and the
    words after it joined by spaces (as SpeechBrain joins them).

    Example
    -------
    >>> argv = ["h.yaml", "--device=cpu", "--data_folder=/a=b", "--tag", "y z"]
    >>> override_texts(argv)
    [('data_folder', '/a=b'), ('tag', 'y z')]
    """
    _, rest = RunOptions._create_parser().parse_known_args(argv)
    pairs = []
    for word in rest:
        if word.startswith("--"):
            key, _, text = word[2:].partition("=")
            pairs.append([key, text])
        elif pairs:
            pairs[-1][1] = f"{pairs[-1][1]} {word}".strip()
        else:
            raise CommandLineError(f"{word}: not a --key=value argument")
    return [tuple(p) for p in pairs]


def read_override(key, text):
    """The YAML value of ``--key=text``, read as HyperPyYAML reads
    overrides (ruamel, tags kept); a comment, a second line or a YAML
    error is refused in one line.

    Example
    -------
    >>> read_override("n_folds", "5"), read_override("data_folder", "[a,b]")
    (5, ['a', 'b'])
    >>> read_override("output_folder", "2024")
    '2024'
    >>> read_override("data_folder", '["2024",/b]')
    ['2024', '/b']
    >>> try:
    ...     read_override("data_folder", "/data/my #set")
    ... except CommandLineError as err:
    ...     print(err)  # doctest: +ELLIPSIS
    --data_folder=/data/my #set: '#' after a space starts a YAML comment ...
    """
    given = f"--{key}={text}"
    if "\n" in text or "\r" in text:
        raise CommandLineError(f"{given!r}: a value must fit on one line")
    try:
        loaded = ruamel.yaml.YAML().load(f"{key}: {text}")
    except ruamel.yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise CommandLineError(f"{given}: {problem}") from None
    if loaded.ca.comment or loaded.ca.items:  # one line: the key's
        raise CommandLineError(
            f"{given}: '#' after a space starts a YAML comment (the value "
            f"would be cut there); quote the value: --{key}='\"{text}\"'"
        )
    value = loaded[key]
    if key in PATH_KEYS and isinstance(value, (bool, int, float)):
        return text  # a folder named 2024, not the number
    if key in PATH_KEYS and isinstance(value, list):
        for item in value:
            if not isinstance(item, str):
                raise CommandLineError(
                    f"{given}: {item!r} is not a path in YAML; quote it "
                    f'inside the list: "{item}"'
                )
    return value


def parse_command_line(argv):
    """``(hparams_file, run_opts, overrides)`` as SpeechBrain's
    ``parse_arguments`` gives them, with the overrides a dict read from
    what was typed (:func:`read_override`), checked before any work.

    Example
    -------
    >>> argv = ["h.yaml", "--device=cpu", "--data_folder=/d/a=b", "--seed=3"]
    >>> f, opts, over = parse_command_line(argv)
    >>> f, opts["device"], over["data_folder"], over["seed"]
    ('h.yaml', 'cpu', '/d/a=b', 3)
    """
    hparams_file, run_opts, _ = sb.parse_arguments(argv)
    texts = override_texts(argv)
    overrides = {key: read_override(key, text) for key, text in texts}
    return hparams_file, run_opts, overrides
