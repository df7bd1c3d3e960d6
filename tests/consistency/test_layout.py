"""The code's shape: no import cycle, no file over 500 lines.

The import graph covers dampit's modules and the scripts of ``recipes/``
and ``templates/`` (a script that puts its own folder on ``sys.path`` and
imports a sibling, ``from verify import ...``, is an edge to that sibling).
Every import counts, at module top or inside a function. The checker is
tested on small trees it writes, so each assertion can fail. (Imports at
the top of each file and docstrings are ruff's PLC0415 and D1 rules,
pyproject.toml.)
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TREES = ("dampit", "recipes", "templates")
MAX_LINES = 500


def python_files(root, trees=TREES):
    """Every ``.py`` file under the given top-level folders of ``root``."""
    return sorted(p for t in trees for p in (root / t).rglob("*.py"))


def module_name(root, path):
    """Dotted name of a file: ``dampit/a/b.py`` -> ``dampit.a.b``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_names(tree):
    """Yield ``(name, node)`` for each module an AST imports."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module, node
            for a in node.names:
                yield f"{node.module}.{a.name}", node


def import_graph(root, files):
    """Map each module to the set of modules of ``files`` it imports."""
    names = {module_name(root, p): p for p in files}
    graph = {m: set() for m in names}
    for mod, path in names.items():
        siblings = {
            q.stem: module_name(root, q) for q in path.parent.glob("*.py")
        }
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, _ in imported_names(tree):
            if name in names and name != mod:
                graph[mod].add(name)
            elif not mod.startswith("dampit") and name in siblings:
                if siblings[name] != mod:
                    graph[mod].add(siblings[name])
    return graph


def find_cycles(graph):
    """Strongly connected components with more than one module."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    """dampit's modules and the recipe scripts import each other acyclically."""
    graph = import_graph(REPO, python_files(REPO))
    assert find_cycles(graph) == []


def test_no_file_over_500_lines():
    """Every Python file of dampit/, recipes/ and templates/ is short."""
    long = {
        str(p.relative_to(REPO)): n
        for p in python_files(REPO)
        if (n := p.read_text(encoding="utf-8").count("\n")) > MAX_LINES
    }
    assert long == {}


def _write(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    "files, cycles",
    [
        (
            {
                "dampit/__init__.py": "",
                "dampit/a.py": "import dampit.b\n",
                "dampit/b.py": "def f():\n    from dampit.a import g\n",
            },
            [["dampit.a", "dampit.b"]],
        ),
        (
            {
                "recipes/x/train.py": "from verify import run\n",
                "recipes/x/verify.py": "import train\n",
            },
            [["recipes.x.train", "recipes.x.verify"]],
        ),
        (
            {
                "dampit/__init__.py": "",
                "dampit/a.py": "import dampit.b\n",
                "dampit/b.py": "import os\n",
                "recipes/x/train.py": "import dampit.a\n",
            },
            [],
        ),
    ],
)
def test_checker_finds_cycles(tmp_path, files, cycles):
    """The checker reports a nested-import cycle and a script-to-script one."""
    _write(tmp_path, files)
    graph = import_graph(tmp_path, python_files(tmp_path))
    assert find_cycles(graph) == cycles


# Names that say the job: commands in dampit/cli/, losses in dampit/losses/,
# no dampit package named like a top-level folder (``dampit/recipe`` next
# to ``recipes/``) and none of the old module names back.
OLD_NAMES = (
    "dampit/recipe",  # dampit/training/
    "dampit/metrics/multicrop.py",  # dampit/metrics/scoring.py
    "dampit/metrics/embedding_store.py",  # dampit/inference/
    "dampit/inference/check_pretrained.py:main",  # dampit/cli/
)


def top_level_defs(path):
    """Names of the functions and classes defined at a module's top."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    kinds = (ast.FunctionDef, ast.ClassDef)
    return [n.name for n in tree.body if isinstance(n, kinds)]


def misplaced(root):
    """``path:name`` of each ``main`` outside ``dampit/cli/`` and each
    ``*Loss`` class outside ``dampit/losses/``."""
    out = []
    for path in python_files(root, ("dampit",)):
        rel = path.relative_to(root).as_posix()
        for name in top_level_defs(path):
            if name == "main" and not rel.startswith("dampit/cli/"):
                out.append(f"{rel}:{name}")
            if name.endswith("Loss") and not rel.startswith("dampit/losses/"):
                out.append(f"{rel}:{name}")
    return out


def colliding_packages(root):
    """dampit packages named like a top-level folder or its singular."""
    tops = {p.name for p in root.iterdir() if p.is_dir()} - {"dampit"}
    names = tops | {t[:-1] for t in tops if t.endswith("s")}
    return sorted(
        p.name
        for p in (root / "dampit").iterdir()
        if p.is_dir() and p.name in names
    )


def console_targets(root):
    """``name = module:function`` console scripts of ``setup.cfg`` whose
    module is not in ``dampit.cli``."""
    text = (root / "setup.cfg").read_text(encoding="utf-8")
    scripts = text.split("console_scripts =", 1)[1].split("\n[", 1)[0]
    return [
        line.strip()
        for line in scripts.splitlines()
        if "=" in line
        and not line.split("=")[1].strip().startswith("dampit.cli.")
    ]


def old_names(root):
    """Entries of :data:`OLD_NAMES` present under ``root``."""
    out = []
    for name in OLD_NAMES:
        path, _, func = name.partition(":")
        if (root / path).exists() and (
            not func or func in top_level_defs(root / path)
        ):
            out.append(name)
    return out


def test_names_say_the_job():
    """Every ``main`` is in dampit/cli/ (and so is every console script),
    every loss in dampit/losses/; no package collides with a top-level
    folder; no old module name is back."""
    assert misplaced(REPO) == []
    assert console_targets(REPO) == []
    assert colliding_packages(REPO) == []
    assert old_names(REPO) == []


def test_name_checks_find_misplaced_code(tmp_path):
    """Each check of :func:`test_names_say_the_job` fails on a tree that
    breaks it."""
    _write(
        tmp_path,
        {
            "dampit/__init__.py": "",
            "dampit/cli/x.py": "def main():\n    pass\n",
            "dampit/io/y.py": "def main():\n    pass\n",
            "dampit/lobes/h.py": "class HeadLoss:\n    pass\n",
            "dampit/losses/t.py": "class TLoss:\n    pass\n",
            "dampit/recipe/__init__.py": "",
            "dampit/metrics/multicrop.py": "",
            "dampit/inference/check_pretrained.py": "def main():\n    pass\n",
            "recipes/x/train.py": "def main():\n    pass\n",
            "setup.cfg": "[options.entry_points]\nconsole_scripts =\n"
            "    a = dampit.cli.a:main\n    b = dampit.io.y:main\n",
        },
    )
    assert misplaced(tmp_path) == [
        "dampit/inference/check_pretrained.py:main",
        "dampit/io/y.py:main",
        "dampit/lobes/h.py:HeadLoss",
    ]
    assert console_targets(tmp_path) == ["b = dampit.io.y:main"]
    assert colliding_packages(tmp_path) == ["recipe"]
    assert old_names(tmp_path) == [
        "dampit/recipe",
        "dampit/metrics/multicrop.py",
        "dampit/inference/check_pretrained.py:main",
    ]
