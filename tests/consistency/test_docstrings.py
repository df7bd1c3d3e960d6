"""Every public module, class, function and method has a docstring.

The check reads the source with ``ast`` (no imports), over the package,
the recipes, the templates and the tools. Names starting with ``_`` are
private; nested functions are skipped.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
ROOTS = ["dampit", "recipes", "templates", "tools"]


def _python_files():
    for root in ROOTS:
        yield from sorted((REPO / root).rglob("*.py"))


def _missing(path, base=REPO):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(base)
    out = []
    if ast.get_docstring(tree) is None:
        out.append(f"{rel}: module")

    def visit(body, prefix):
        for node in body:
            if not isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            ):
                continue
            if node.name.startswith("_"):
                continue
            if ast.get_docstring(node) is None:
                out.append(f"{rel}:{node.lineno}: {prefix}{node.name}")
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{node.name}.")

    visit(tree.body, "")
    return out


FILES = list(_python_files())


@pytest.mark.parametrize(
    "path", FILES, ids=[str(p.relative_to(REPO)) for p in FILES]
)
def test_public_names_have_docstrings(path):
    """Fails with the list of undocumented public names in the file."""
    missing = _missing(path)
    assert not missing, "missing docstrings:\n" + "\n".join(missing)


def test_checker_finds_a_missing_docstring(tmp_path):
    """The checker itself flags an undocumented function and class."""
    src = tmp_path / "m.py"
    src.write_text('"""Doc."""\n\ndef f():\n    pass\n\nclass C:\n    x = 1\n')
    found = _missing(src, base=tmp_path)
    assert [m.split(": ")[-1] for m in found] == ["f", "C"]
