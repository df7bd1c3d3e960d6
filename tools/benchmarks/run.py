"""Run dampit's benchmarks and write BENCHMARKS.md.

Each ``tools/benchmarks/bench_<name>.py`` has ``run(mode) -> rows``
(``name``, ``figure``, ``unit``, ``reference``, ``ratio``, ``note``; the
reference measured in the same run, process and machine as its figure), a
docstring whose first line is its title and whose second paragraph says
what it measures and how to read the ratio, and ``KEY_ROWS``, the rows of
the summary table. Every benchmark runs in a fresh interpreter
(``benchlib.isolated``); a failing or crashing one is recorded in its
section and the others still run. The file is written atomically.

Usage::

    python tools/benchmarks/run.py [--quick | --full] [--out BENCHMARKS.md]
                                   [--only model,scoring,...] [--json FILE]

``mode`` is ``"quick"`` (small sizes, a few minutes on 2 CPU cores: its
numbers only show that every benchmark runs), ``"default"`` or ``"full"``
(``--full``: 10^5 files and Vox1-E itself for the scale and scoring
benchmarks). The exit status is 1 when a
benchmark failed (the file is written all the same).
"""

import argparse
import ast
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import time

import speechbrain
import torch
from benchlib import REPO, BenchmarkError, isolated

sys.path.insert(0, str(REPO))  # dampit, when not installed

from dampit.utils.atomic import atomic_write_text  # noqa: E402

# The folder of the bench_*.py files (tests point it elsewhere).
BENCH_DIR = pathlib.Path(__file__).parent
ORDER = ("model", "features", "scoring", "metrics", "scale")
ROW_KEYS = ("name", "figure", "unit", "reference", "ratio", "note")


def available():
    """Benchmark names: ``ORDER`` first, then any other ``bench_*.py``.

    Example
    -------
    >>> names = available()
    >>> names[:2]
    ['model', 'features']
    """
    found = sorted(p.stem[6:] for p in BENCH_DIR.glob("bench_*.py"))
    return [n for n in ORDER if n in found] + [
        n for n in found if n not in ORDER
    ]


def describe(name):
    """(title, text, key rows) of a benchmark, read without running it.

    Example
    -------
    >>> title, text, keys = describe("scoring")
    >>> "multicrop_closed_form_vs_pair_loop" in keys
    True
    """
    tree = ast.parse((BENCH_DIR / f"bench_{name}.py").read_text("utf-8"))
    doc = (ast.get_docstring(tree) or name).split("\n\n")
    keys = ()
    for node in tree.body:
        names = [getattr(t, "id", None) for t in getattr(node, "targets", ())]
        if names == ["KEY_ROWS"]:
            keys = ast.literal_eval(node.value)
    text = " ".join(doc[1].split()) if len(doc) > 1 else ""
    return doc[0].strip().rstrip("."), text, keys


def check_row(row, bench, index):
    """Validate one row; numbers become floats.

    Example
    -------
    >>> check_row(dict(name="a", figure=2, unit="s", reference=4, ratio=2,
    ...                note=""), "x", 0)["ratio"]
    2.0
    """
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        raise KeyError(f"bench_{bench}: row {index} lacks {missing}")
    out = dict(row)
    for key in ("figure", "reference", "ratio"):
        try:
            out[key] = float(row[key])
        except (TypeError, ValueError):
            raise ValueError(
                f"bench_{bench}: row {index} ({row['name']}) has a "
                f"non-numeric {key}: {row[key]!r}"
            ) from None
    return out


def run_one(name, mode):
    """One benchmark in its own interpreter; never raises for it."""
    res = {"name": name, "rows": [], "error": None, "traceback": None}
    t0 = time.perf_counter()
    try:
        path = BENCH_DIR / f"bench_{name}.py"
        rows = isolated(path, "run", memory=False, one_thread=False, mode=mode)
        res["rows"] = [check_row(r, name, k) for k, r in enumerate(rows)]
    except (BenchmarkError, KeyError, ValueError, TypeError) as err:
        res["error"] = str(err).splitlines()[0]
        res["traceback"] = getattr(err, "details", "") or repr(err)
    res["seconds"] = time.perf_counter() - t0
    return res


def machine_info():
    """Readable facts about the machine; ``label``: a one-line summary."""
    cpu = platform.processor() or "unknown CPU"
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [
                ln.split(":", 1)[1] for ln in f if ln.startswith("model name")
            ]
        cpu = " ".join(names[0].split()) if names else cpu
    gpus = [
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
    ]
    usable = len(os.sched_getaffinity(0))
    info = {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "cuda": ", ".join(gpus) or "none (CPU only)",
        "torch": torch.__version__,
        "speechbrain": speechbrain.__version__,
        "python": platform.python_version(),
    }
    label = f"{gpus[0]} + " if gpus else ""
    info["label"] = f"{label}{cpu}, {usable} cores, torch {torch.__version__}"
    return info


def fmt(x):
    """A number for a table: 4 significant digits, n/a for NaN.

    Example
    -------
    >>> fmt(0.000123456), fmt(61286.3), fmt(float("nan")), fmt(12.5)
    ('0.0001235', '61286', 'n/a', '12.5')
    """
    if math.isnan(x):
        return "n/a"
    return f"{x:.0f}" if 1e4 <= abs(x) < 1e9 else f"{x:.4g}"


def _cells(values):
    """A Markdown table line; no pipes or line breaks inside a cell."""
    cells = [str(v).replace("|", "\\|").replace("\n", " ") for v in values]
    return "| " + " | ".join(cells) + " |"


def render(results, info, mode, total_s, command):
    """BENCHMARKS.md text of :func:`run_one`'s results."""
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out = [
        "# dampit benchmarks",
        "",
        f"Generated by `{command}` on {now} ({mode} sizes), "
        f"{total_s / 60:.1f} min in all. Every row gives dampit's figure, "
        "the reference measured in the same run and process and their "
        "ratio; each section says what the ratio divides.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    out += [_cells([k, v]) for k, v in info.items() if k != "label"]
    out += ["", "## Key ratios", ""]
    out.append("| benchmark | row | figure | reference | unit | ratio |")
    out.append("|---|---|---|---|---|---|")
    for res in results:
        by_name = {r["name"]: r for r in res["rows"]}
        for key in describe(res["name"])[2]:
            if key in by_name:
                r = by_name[key]
                nums = [fmt(r[k]) for k in ("figure", "reference", "ratio")]
                values = [res["name"], key, nums[0], nums[1], r["unit"]]
                out.append(_cells([*values, nums[2]]))
    for res in results:
        title, text, _ = describe(res["name"])
        out += ["", f"## {title} (`{res['name']}`)", "", text, ""]
        source = f"tools/benchmarks/bench_{res['name']}.py"
        out += [f"`{source}`, {res['seconds']:.0f} s wall.", ""]
        if res["error"]:
            out += [f"**Failed**: `{res['error']}`", "", "```"]
            out += [res["traceback"].rstrip(), "```"]
            continue
        out += ["| name | figure | unit | reference | ratio | machine | note |"]
        out.append("|---|---|---|---|---|---|---|")
        for r in res["rows"]:
            nums = [fmt(r[k]) for k in ("figure", "reference", "ratio")]
            values = [r["name"], nums[0], r["unit"], *nums[1:]]
            out.append(_cells([*values, info["label"], r["note"]]))
    return "\n".join(out) + "\n"


def main(argv=None):
    """Command line: run the benchmarks, write BENCHMARKS.md; 0, or 1
    when a benchmark failed."""
    names = available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes")
    size.add_argument("--full", action="store_true", help="VoxCeleb sizes")
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    parser.add_argument("--only", help=f"comma-separated, of {names}")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    selected = names
    if args.only:
        selected = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in selected if n not in names]
        if unknown or not selected:
            parser.error(f"--only: unknown {unknown}; available: {names}")
    mode = "default"
    if args.quick:
        mode = "quick"
    elif args.full:
        mode = "full"
    info, t0 = machine_info(), time.perf_counter()
    results = []
    for name in selected:
        print(f"[benchmark] {name}", file=sys.stderr, flush=True)
        results.append(run_one(name, mode))
    total = time.perf_counter() - t0
    command = "python tools/benchmarks/run.py"
    if mode != "default":
        command += f" --{mode}"
    if args.only:
        command += f" --only {','.join(selected)}"
    atomic_write_text(args.out, render(results, info, mode, total, command))
    if args.json:
        blob = {"machine": info, "mode": mode, "results": results}
        atomic_write_text(args.json, json.dumps(blob, indent=1))
    failed = [r["name"] for r in results if r["error"]]
    summary = f"{len(results)} benchmarks, {total:.0f} s"
    if failed:
        summary += f"; FAILED: {', '.join(failed)}"
    print(f"[benchmark] wrote {args.out} ({summary})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
