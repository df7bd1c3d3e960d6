"""Every public function and class of dampit is used outside the tests.

A public top-level ``def`` or ``class`` of ``dampit/`` is used when its
name is read somewhere in ``dampit/``, ``recipes/``, ``templates/`` or
``tools/`` other than in its own definition: a name or attribute in
Python code (not a docstring, comment, import or ``__all__`` entry), a
word of a string in Python code (``"dampit.x.f"``), of a YAML file, of
``setup.cfg`` (the console scripts) or of a fenced code block of a
Markdown file there (the YAML a README gives users). A definition only
the tests call is code to delete with its tests. The checker is tested
on small trees it writes, so each assertion can fail.
"""

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
USERS = ("dampit", "recipes", "templates", "tools")
WORD = re.compile(r"\w+")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def public_defs(root):
    """``{name: [(path, first line, last line)]}`` of the public
    top-level functions and classes of ``root/dampit``."""
    defs = {}
    for path in sorted((root / "dampit").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            if isinstance(node, kinds) and not node.name.startswith("_"):
                where = (path, node.lineno, node.end_lineno)
                defs.setdefault(node.name, []).append(where)
    return defs


def skipped_nodes(tree):
    """Ids of the AST nodes that are no use of a name: docstrings and
    ``__all__`` assignments (and everything inside them)."""
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            skip.add(id(body[0].value))
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = getattr(node, "targets", None) or [node.target]
            if any(getattr(t, "id", None) == "__all__" for t in targets):
                skip.update(id(n) for n in ast.walk(node))
    return skip


def python_uses(path):
    """Yield ``(name, line)`` of every name read in a Python file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = skipped_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Name):
            yield node.id, node.lineno
        elif isinstance(node, ast.Attribute):
            yield node.attr, node.lineno
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for word in WORD.findall(node.value):
                yield word, node.lineno


def text_uses(path):
    """Yield ``(word, 0)`` of a YAML file, ``setup.cfg`` or the fenced
    code blocks of a Markdown file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".md":
        text = "\n".join(FENCE.findall(text))
    for word in WORD.findall(text):
        yield word, 0


def uses(root):
    """``{name: [(path, line)]}`` of the names read in the users' trees."""
    found = {}
    files = [p for t in USERS for p in sorted((root / t).rglob("*"))]
    for path in files + [root / "setup.cfg"]:
        if path.suffix == ".py":
            words = python_uses(path)
        elif path.suffix in (".yaml", ".yml", ".cfg", ".md"):
            words = text_uses(path)
        else:
            continue
        for word, line in words:
            found.setdefault(word, []).append((path, line))
    return found


def unused(root):
    """``dampit/...py:name`` of the public definitions used nowhere."""
    read = uses(root)
    out = []
    for name, places in sorted(public_defs(root).items()):
        elsewhere = [
            (path, line)
            for path, line in read.get(name, [])
            if not any(path == p and a <= line <= b for p, a, b in places)
        ]
        if not elsewhere:
            out += [
                f"{p.relative_to(root).as_posix()}:{name}" for p, _, _ in places
            ]
    return out


def test_every_public_definition_is_used():
    """No public function or class of dampit is there for the tests only."""
    assert unused(REPO) == []


@pytest.mark.parametrize(
    "files, found",
    [
        (  # called only by itself, its docstring, __all__ and an import
            {
                "dampit/a.py": '__all__ = ["f"]\n\ndef f(n):\n    """f(1)"""'
                "\n    return f(n - 1)\n",
                "dampit/b.py": "from dampit.a import f  # f\n",
            },
            ["dampit/a.py:f"],
        ),
        (  # a private helper and a method are not checked
            {
                "dampit/a.py": "def _g():\n    pass\n\nclass C:\n"
                "    def h(self):\n        pass\n\nC()\n"
            },
            [],
        ),
        ({"dampit/a.py": "def f():\n    pass\n", "recipes/r.py": "f()\n"}, []),
        (
            {
                "dampit/a.py": "class K:\n    pass\n",
                "recipes/h.yaml": "k: !new:dampit.a.K\n",
            },
            [],
        ),
        (
            {
                "dampit/a.py": "class K:\n    pass\n",
                "templates/README.md": "K is it.\n\n```yaml\nx: 1\n```\n",
            },
            ["dampit/a.py:K"],
        ),
        (
            {
                "dampit/a.py": "def main():\n    pass\n",
                "setup.cfg": "console_scripts =\n    x = dampit.a:main\n",
            },
            [],
        ),
    ],
)
def test_checker_finds_definitions_used_nowhere(tmp_path, files, found):
    """Docstrings, ``__all__``, imports and prose are no use; code, YAML,
    console scripts and README code blocks are."""
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for tree in USERS:
        (tmp_path / tree).mkdir(exist_ok=True)
    if not (tmp_path / "setup.cfg").exists():
        (tmp_path / "setup.cfg").write_text("")
    assert unused(tmp_path) == found
