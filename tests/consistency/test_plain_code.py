"""No tricks to save lines: the cheap signatures of four, grepped.

A string multiplied by a flag (``'not ' * x``), ``locals()[name]``,
``# fmt: skip`` and ``__all__ +=`` have a plain form (an ``if``, the
value itself, the formatter's layout, one list). The grep covers every
Python file of the repository but this one; it is tested on lines it
must find and lines it must not.
"""

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TREES = ("dampit", "recipes", "templates", "tools", "tests")
TRICKS = {
    "string times a flag": re.compile(
        r"""["'][\w ]*["']\s*\*\s*\(?not\b|"""
        r"""["'][\w ]+ ["']\s*\*\s*\w"""
    ),
    "locals()[name]": re.compile(r"\blocals\(\)\s*\["),
    "# fmt: skip": re.compile(r"#\s*fmt:\s*(skip|off)"),
    "__all__ +=": re.compile(r"^\s*__all__\s*\+="),
}


def tricks(lines):
    """``(line number, trick)`` of each line holding one."""
    return [
        (n, name)
        for n, line in enumerate(lines, 1)
        for name, regex in TRICKS.items()
        if regex.search(line)
    ]


def test_no_line_saving_tricks():
    """No Python file of the repository uses one."""
    found = {}
    for tree in TREES:
        for path in sorted((REPO / tree).rglob("*.py")):
            if path.resolve() == pathlib.Path(__file__).resolve():
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            if hits := tricks(lines):
                found[str(path.relative_to(REPO))] = hits
    assert found == {}


@pytest.mark.parametrize(
    "line, name",
    [
        ("msg = f\"{'not ' * (not ok)}found\"", "string times a flag"),
        ("word = 'not ' * missing", "string times a flag"),
        ("value = locals()[name]", "locals()[name]"),
        ("x = [1,2]  # fmt: skip", "# fmt: skip"),
        ("# fmt: off", "# fmt: skip"),
        ('__all__ += ["f"]', "__all__ +="),
    ],
)
def test_grep_finds_each_trick(line, name):
    assert tricks([line]) == [(1, name)]


@pytest.mark.parametrize(
    "line",
    ['sep = "-" * 40', "n = 2 * k", '__all__ = ["f"]', "# format: plain"],
)
def test_grep_leaves_plain_lines(line):
    assert tricks([line]) == []
