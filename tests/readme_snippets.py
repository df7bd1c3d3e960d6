"""Code blocks of the README files, and applying them (test support).

Used by tests/consistency/test_readme_snippets.py and
tests/integration/test_speechbrain_recipe.py, so that a documented change
is the change the tests make. pytest runs with ``--import-mode=importlib``:
load this file with :func:`importlib.util.spec_from_file_location`.
"""

import re
import textwrap

FENCE = re.compile(r"^( *)```([\w-]*)\n(.*?)^\1```[ \t]*$", re.M | re.S)
TOP_KEY = re.compile(r"^([A-Za-z_][\w]*):", re.M)


def code_blocks(text):
    """``[(language, code, line)]`` of the fenced blocks of a Markdown
    text (an indented block dedented); ``line``: the opening fence's."""
    return [
        (
            m.group(2),
            textwrap.dedent(m.group(3)),
            text.count("\n", 0, m.start()) + 1,
        )
        for m in FENCE.finditer(text)
    ]


def apply_diff(text, diff):
    """``text`` with the hunks of a unified ``diff`` applied; each hunk's
    old lines (context and removals) must occur exactly once."""
    hunks = re.split(r"^@@[^\n]*@@[^\n]*\n", diff, flags=re.M)[1:]
    if not hunks:
        raise ValueError("no hunk in the diff")
    for hunk in hunks:
        old, new = [], []
        for line in hunk.splitlines():
            tag, body = line[:1], line[1:]
            if tag in (" ", "-", ""):
                old.append(body)
            if tag in (" ", "+", ""):
                new.append(body)
        old_text, new_text = "\n".join(old) + "\n", "\n".join(new) + "\n"
        if text.count(old_text) != 1:
            raise ValueError(f"hunk does not apply once:\n{old_text}")
        text = text.replace(old_text, new_text)
    return text


def changed_lines(diff):
    """The ``+`` and ``-`` lines of a unified diff (not the file names)."""
    return [
        line
        for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def _entries(text):
    """``{key: entry text}`` of the top-level entries of a YAML text."""
    starts = [m.start() for m in TOP_KEY.finditer(text)] + [len(text)]
    return {
        TOP_KEY.match(text, a).group(1): text[a:b]
        for a, b in zip(starts, starts[1:])
    }


def replace_entries(yaml_text, block):
    """``yaml_text`` whose top-level entries named in ``block`` are
    replaced by the block's; the block's new keys are appended."""
    old = _entries(yaml_text)
    for key, entry in _entries(block).items():
        entry = entry.rstrip("\n") + "\n\n"
        if key in old:
            yaml_text = yaml_text.replace(old[key], entry, 1)
        else:
            yaml_text = yaml_text.rstrip("\n") + "\n\n" + entry
    return yaml_text
