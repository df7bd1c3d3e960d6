"""The user-facing documents: size, wording and links.

- README.md has at most 200 lines and links every page of docs/;
- no user-facing file speaks of work history (stops, issue numbers,
  agents): README.md, docs/, recipes/, templates/, dampit/, tools/ and
  BENCHMARKS.md describe the code and its measurements as they are;
- every relative link (figures included) of README.md, docs/*.md, the
  recipe's RESULTS.md, BENCHMARKS.md, the template's README and the
  shipped model's card resolves to a file (and its `#anchor` to a
  heading).
"""

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
#: Every Markdown page a user reads, for the link check.
PAGES = [README, *DOCS, REPO / "BENCHMARKS.md"]
PAGES += [REPO / "recipes/VoxCeleb/RESULTS.md"]
PAGES += [REPO / "templates/speaker_verification/README.md"]
PAGES += sorted((REPO / "pretrained").glob("*/README.md"))
#: What a user-facing file must not say (the history of the work).
HISTORY = re.compile(r"stop[ -][0-9]|issue ?#?[0-9]|agent", re.I)
#: Where HISTORY is looked for: files and folders of user-facing text.
USER_FACING = ["README.md", "BENCHMARKS.md", "docs", "dampit", "recipes"]
USER_FACING += ["templates", "tools"]
TEXT = {".md", ".py", ".yaml", ".yml", ".txt", ".sh", ".cfg"}
#: A Markdown link ``[text](target)``; the target up to a space or ``)``.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def text_files(names):
    """The text files named, or found under the folders named."""
    for name in names:
        path = REPO / name
        if path.is_file():
            yield path
        for found in sorted(path.rglob("*")) if path.is_dir() else []:
            if found.suffix in TEXT and found.is_file():
                yield found


def history_lines(paths):
    """``["file:line: text"]`` of every line that matches HISTORY."""
    hits = []
    for path in paths:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if HISTORY.search(line):
                hits.append(f"{path}:{number}: {line.strip()}")
    return hits


def anchors(path):
    """GitHub's anchors of a Markdown file's headings: lower case, without
    punctuation, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)
    slugs = [re.sub(r"[^\w\- ]", "", h.strip().lower()) for h in headings]
    return {slug.replace(" ", "-") for slug in slugs}


def broken_links(path):
    """The relative link targets of a Markdown file that name no file, or
    an ``#anchor`` that no heading of a Markdown target has (web and mail
    links, and code, are not checked)."""
    text = re.sub(
        r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S
    )
    text = re.sub(r"`[^`\n]*`", "", text)  # code is not a link
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = path.parent / file_part if file_part else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md":
            if anchor not in anchors(linked):
                broken.append(target)
    return broken


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (max 200)"


def test_no_history_in_user_facing_text():
    assert history_lines(text_files(USER_FACING)) == []


def test_readme_links_every_doc_page():
    targets = {
        (REPO / t.split("#")[0]).resolve()
        for t in LINK.findall(README.read_text(encoding="utf-8"))
        if t.startswith("docs/")
    }
    assert DOCS, "docs/ has no page"
    assert [d.name for d in DOCS if d.resolve() not in targets] == []


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_the_checks_catch_drift(tmp_path):
    """Each check fails on a file that breaks its rule."""
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n\nSee [it](other.md#a-b), [web](https://x.org) and "
        "[here](#top), [not here](#bottom).\n"
        "Fixed after stop 21 (issue #20), by an agent.\n"
        '`f(x)` and\n```\nhp["s"](data)\n```\n![plot](fig.png)\n'
    )
    assert broken_links(page) == ["other.md#a-b", "#bottom", "fig.png"]
    assert len(history_lines([page])) == 1
    (tmp_path / "other.md").write_text("# x\n\n## A, b\n")
    (tmp_path / "fig.png").write_bytes(b"")
    assert broken_links(page) == ["#bottom"]
