"""Run every dampit benchmark in one command and write BENCHMARKS.md.

Each ``tools/bench_<name>.py`` exposes ``run(quick) -> list of rows``
(``name``, ``figure``, ``unit``, ``reference``, ``ratio``, ``note``); the
reference of a row is measured in the same run, in the same process and
on the same machine as its figure. This script imports them by path and
runs them one after the other, each in a fresh interpreter by default
(``--in-process``: all in this one), so that a benchmark's memory peaks,
threads and compiled code cannot leak into the next; a failing or
crashing one is recorded in its section and the others still run. It
adds the machine they ran on and writes one table per benchmark to
BENCHMARKS.md, atomically.

Usage::

    python tools/benchmark.py [--quick] [--out BENCHMARKS.md]
                              [--only model,losses,...] [--json rows.json]
                              [--in-process] [--no-progress]

``--quick`` uses small sizes (a few minutes on 2 CPU cores): its numbers
only show that every benchmark runs. The exit status is 1 when a
benchmark failed (the file is written all the same).
"""

import argparse
import datetime
import importlib.util
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dampit.utils.atomic import atomic_write_text  # noqa: E402

# The folder of the bench_*.py files (tests point it elsewhere).
TOOLS = pathlib.Path(os.environ.get("DAMPIT_BENCH_DIR") or REPO / "tools")

# name -> (title, what the issue asks, how to read the ratio, key rows).
SECTIONS = {
    "model": (
        "Training step of the paper's model: gates vs no gates",
        "Samples/s of a training step and of inference of the gated "
        "ResNet-50 against the same network without gates, the achieved "
        "GFLOP/s against a large float32 matmul, and the thin model.",
        "samples/s or GFLOP/s of dampit's model / the reference's: the "
        "gates' row is the speed kept (goal >= 0.90).",
        (
            "ResNet-50 training step, gates vs no gates",
            "ResNet-50 inference, gates vs no gates",
        ),
    ),
    "losses": (
        "Loss overhead",
        "Forward + backward of the paper's multi-metric loss (and of each "
        "term) against one training step of the paper's model.",
        "loss time / training-step time: the share of a step the loss "
        "costs (goal <= 0.02; lower is better).",
        ("MultiMetricLoss forward+backward vs training step",),
    ),
    "data": (
        "Features and loader",
        "dampit's torch spectrogram against librosa, and the P x K "
        "training loader against what the model consumes.",
        "librosa time / torch time (> 1: torch faster); loader batches/s "
        "/ model batches/s (> 1: the loader keeps the model fed).",
        ("spectrogram_batched", "loader_vs_model"),
    ),
    "scoring": (
        "Multi-crop scoring",
        "Closed-form 10 x 10 multi-crop trial scoring against the naive "
        "loop over the 100 crop pairs of every trial.",
        "reference time / closed-form time (> 1: closed form faster).",
        ("multicrop_closed_form_vs_pair_loop",),
    ),
    "metrics": (
        "EER and minDCF on growing N",
        "Time and peak memory of EER and minDCF for N = 10^3 .. 10^6 "
        "scores against SpeechBrain's where it can finish (its minDCF "
        "builds a thresholds x scores matrix: about 18 GB at 37,720 "
        "scores), and bounded-memory scoring of 10^6 trials.",
        "SpeechBrain / dampit, time or memory (> 1: dampit better); n/a "
        "where SpeechBrain is not run (the note says why).",
        (
            "eer_time_N=10000",
            "eer_time_N=37720",
            "min_dcf_time_N=2000",
            "min_dcf_time_N=1000000",
            "metrics_peak_memory_N=2000",
            "stream_scoring_peak_memory",
        ),
    ),
    "inference": (
        "Embedding extraction and GPU-ready switches",
        "Embedding extraction (features, normalisation, network; and "
        "embed_utterances over audio files) against the plain network "
        "forward, and the recipe's GPU-ready switches (channels_last, "
        "bf16/fp16 autocast, torch.compile) against the float32 forward.",
        "crops/s of the extraction (or switch) / crops/s of the plain "
        "forward (> 1: faster).",
        (
            "extract_batch_vs_forward",
            "embed_utterances_vs_forward",
            "channels_last_vs_default",
            "bf16_autocast_vs_fp32",
            "torch_compile_vs_eager",
        ),
    ),
    "scale": (
        "Scale: toward VoxCeleb size",
        "How costs grow toward VoxCeleb (tools/bench_scale.py; --full: "
        "10^5 files, Vox1-E); each note states its goal.",
        "figure / reference, as each row's note says.",
        ("crops_per_s_per_core_x16", "train_file_opens_per_sample"),
    ),
}

ROW_KEYS = ("name", "figure", "unit", "reference", "ratio", "note")


def available():
    """Benchmark names: the known sections first, then any other file.

    Returns
    -------
    list of str
        Names ``x`` of the ``tools/bench_x.py`` files.

    Example
    -------
    >>> names = available()
    >>> "scoring" in names and "inference" in names
    True
    """
    on_disk = sorted(p.stem[len("bench_") :] for p in TOOLS.glob("bench_*.py"))
    known = [n for n in SECTIONS if n in on_disk]
    return known + [n for n in on_disk if n not in SECTIONS]


def load_bench(name):
    """Import ``tools/bench_<name>.py`` by path.

    Arguments
    ---------
    name : str
        Benchmark name.

    Returns
    -------
    module
        The imported module (it must have ``run(quick)``).

    Example
    -------
    >>> hasattr(load_bench("scoring"), "run")
    True
    """
    path = TOOLS / f"bench_{name}.py"
    mod_name = f"_dampit_bench_{name}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    if not callable(getattr(module, "run", None)):
        raise AttributeError(f"{path} has no run(quick) function")
    return module


def _first(path, key):
    """Value of the first ``key: value`` line of a /proc file, or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.split(":")[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info():
    """Facts about the machine and the software the benchmarks ran on.

    Returns
    -------
    dict
        Readable name -> value; ``"label"`` is a short one-line summary.

    Example
    -------
    >>> info = machine_info()
    >>> "cpu" in info and "torch" in info and "label" in info
    True
    """
    import numpy
    import speechbrain
    import torch

    cpu = _first("/proc/cpuinfo", "model name") or platform.processor()
    cpu = " ".join((cpu or "unknown CPU").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    mem = _first("/proc/meminfo", "MemTotal")
    if mem and mem.split()[0].isdigit():
        mem = f"{int(mem.split()[0]) / 2**20:.1f} GiB"
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(f"{p.name} ({p.total_memory / 2**30:.0f} GiB)")
    info = {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "memory": mem or "unknown",
        "cuda": (
            f"{', '.join(gpus)}; CUDA {torch.version.cuda}"
            if gpus
            else "none (CPU only)"
        ),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "speechbrain": speechbrain.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
    }
    label = f"{cpu}, {usable} cores"
    if gpus:
        label = f"{gpus[0].split(' (')[0]} + {label}"
    info["label"] = f"{label}, torch {torch.__version__}"
    return info


def _load():
    """1-minute load average, or NaN where unavailable."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def run_one(name, quick):
    """Run one benchmark here; never raise for a failing one.

    Arguments
    ---------
    name : str
        Benchmark name.
    quick : bool
        Passed to its ``run``.

    Returns
    -------
    dict
        ``rows`` (validated), ``error`` (None or a one-line message) and
        ``traceback``.
    """
    res = {"rows": [], "error": None, "traceback": None}
    try:
        rows = load_bench(name).run(quick)
        res["rows"] = [check_row(r, name, k) for k, r in enumerate(rows)]
    except Exception as err:  # recorded in the section, the run goes on
        res["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
        res["traceback"] = traceback.format_exc()
    return res


def run_isolated(name, quick):
    """Run one benchmark in a fresh interpreter (see :func:`main`).

    Memory peaks (``ru_maxrss`` survives ``fork`` and ``exec``, so a
    large parent inflates the peaks its children measure), thread
    settings and torch.compile state then cannot leak from one benchmark
    into the next, and a crash is recorded like an exception.

    Arguments
    ---------
    name : str
        Benchmark name.
    quick : bool
        Passed to its ``run``.

    Returns
    -------
    dict
        As :func:`run_one`.
    """
    with tempfile.TemporaryDirectory(prefix="dampit_bench_") as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [sys.executable, str(pathlib.Path(__file__).resolve())]
        cmd += ["--child", name, "--child-out", out]
        cmd += ["--quick"] if quick else []
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
        if os.path.isfile(out):
            with open(out, encoding="utf-8") as f:
                return json.load(f)
    how = (
        f"killed by signal {-proc.returncode}"
        if proc.returncode < 0
        else f"exit status {proc.returncode}"
    )
    return {
        "rows": [],
        "error": f"ChildProcessError: bench_{name} died ({how})",
        "traceback": f"{' '.join(cmd)}\n-> {how}, no result written",
    }


def run_benchmarks(names, quick, progress=True, isolated=True):
    """Run the named benchmarks; never raise for a failing one.

    Arguments
    ---------
    names : list of str
        Benchmark names (see :func:`available`).
    quick : bool
        Passed to each ``run``.
    progress : bool
        Show a tqdm bar over the benchmarks.
    isolated : bool
        Each benchmark in a fresh interpreter (:func:`run_isolated`);
        False runs them all in this process.

    Returns
    -------
    list of dict
        One result per benchmark: ``name``, ``rows`` (validated),
        ``error`` (None or a one-line message), ``traceback``,
        ``seconds`` (wall), ``load_start`` and ``load_end``.
    """
    from tqdm import tqdm

    results = []
    bar = tqdm(names, desc="benchmarks", unit="bench", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        load_start = _load()
        t0 = time.perf_counter()
        res = run_isolated(name, quick) if isolated else run_one(name, quick)
        res.update(
            name=name,
            seconds=time.perf_counter() - t0,
            load_start=load_start,
            load_end=_load(),
        )
        if res["error"]:
            tqdm.write(f"[benchmark] {name} failed: {res['error']}")
        results.append(res)
    return results


def check_row(row, bench, index):
    """Validate one row; numbers become floats.

    Arguments
    ---------
    row : dict
        A row from a benchmark's ``run``.
    bench : str
        Benchmark name (for the error message).
    index : int
        Row number (for the error message).

    Returns
    -------
    dict
        The row with float ``figure``, ``reference`` and ``ratio``.

    Example
    -------
    >>> r = check_row(dict(name="a", figure=2, unit="s", reference=4,
    ...                    ratio=2, note=""), "x", 0)
    >>> r["ratio"]
    2.0
    """
    if not isinstance(row, dict):
        raise TypeError(f"bench_{bench}: row {index} is not a dict: {row!r}")
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


def fmt(x):
    """A number for a Markdown table (4 significant digits, n/a for NaN).

    Arguments
    ---------
    x : float
        The number.

    Returns
    -------
    str
        The formatted number.

    Example
    -------
    >>> fmt(0.000123456), fmt(61286.3), fmt(float("nan")), fmt(12.5)
    ('0.0001235', '61286', 'n/a', '12.5')
    """
    if not math.isfinite(x):
        return "n/a" if math.isnan(x) else str(x)
    if 1e4 <= abs(x) < 1e9:
        return f"{x:.0f}"
    return f"{x:.4g}"


def _cell(text):
    """Markdown table cell: no pipes or line breaks."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(results, info, quick, total_s, command):
    """BENCHMARKS.md text.

    Arguments
    ---------
    results : list of dict
        From :func:`run_benchmarks`.
    info : dict
        From :func:`machine_info`.
    quick : bool
        Whether the quick mode ran.
    total_s : float
        Wall seconds of the whole run.
    command : str
        The command line that produced the file.

    Returns
    -------
    str
        Markdown.
    """
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    mode = "quick (small sizes: proves the benchmarks run)" if quick else "full"
    out = [
        "# dampit benchmarks",
        "",
        f"Generated by `{command}` on {now}; mode: {mode}; "
        f"{total_s / 60:.1f} min in all.",
        "",
        "Every row gives dampit's **figure**, the **reference** it is "
        "compared with and their **ratio**; the reference is measured in "
        "the same run, in the same process, on the same machine (the "
        "**machine** column, detailed below). What the ratio divides, and "
        "which direction is better, is said in each section and in the "
        "row's note; n/a marks a reference that was not run (the note "
        "says why). On CPU most timings are the process's CPU time with "
        "one thread, so that other jobs on a shared machine change them "
        "little; the notes say which clock each row uses.",
        "",
        "Rerun (from the repository root, in the project's environment):",
        "",
        "```",
        "python tools/benchmark.py [--quick] [--out BENCHMARKS.md] "
        "[--only name,...]",
        "```",
        "",
        f"Benchmarks: {', '.join(r['name'] for r in results)} "
        "(`tools/bench_<name>.py`; each also runs alone, with `--quick`).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    out += [f"| {k} | {_cell(v)} |" for k, v in info.items() if k != "label"]
    out += [
        "",
        "## Key ratios",
        "",
        "| benchmark | row | figure | reference | unit | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for res in results:
        if res["error"]:
            out.append(f"| {res['name']} | **failed** | | | | |")
            continue
        keys = SECTIONS.get(res["name"], (None, None, None, ()))[3]
        by_name = {r["name"]: r for r in res["rows"]}
        picked = [by_name[k] for k in keys if k in by_name] or res["rows"][:1]
        for r in picked:
            out.append(
                f"| {res['name']} | {_cell(r['name'])} | {fmt(r['figure'])} "
                f"| {fmt(r['reference'])} | {_cell(r['unit'])} "
                f"| {fmt(r['ratio'])} |"
            )
    for res in results:
        out += ["", *_section(res, info["label"])]
    return "\n".join(out) + "\n"


def _section(res, machine):
    """Markdown lines of one benchmark's section."""
    name = res["name"]
    title, what, ratio, _ = SECTIONS.get(
        name, (name, "(no description)", "see the notes", ())
    )
    lines = [
        f"## {title} (`{name}`)",
        "",
        f"{what} Ratio: {ratio}",
        "",
        f"`tools/bench_{name}.py`, {res['seconds']:.0f} s wall; 1-min load "
        f"average {res['load_start']:.1f} at the start, "
        f"{res['load_end']:.1f} at the end.",
        "",
    ]
    if res["error"]:
        lines += [
            f"**Failed**: `{res['error']}`",
            "",
            "<details><summary>traceback</summary>",
            "",
            "```",
            res["traceback"].rstrip(),
            "```",
            "",
            "</details>",
        ]
        return lines
    if not res["rows"]:
        return lines + ["(no rows)"]
    lines += [
        "| name | figure | unit | reference | ratio | machine | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            "| "
            + " | ".join(
                [
                    _cell(r["name"]),
                    fmt(r["figure"]),
                    _cell(r["unit"]),
                    fmt(r["reference"]),
                    fmt(r["ratio"]),
                    _cell(machine),
                    _cell(r["note"]),
                ]
            )
            + " |"
        )
    return lines


def main(argv=None):
    """Command line: run the benchmarks, write BENCHMARKS.md.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0, or 1 when a benchmark failed.
    """
    names = available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument(
        "--out", default=str(REPO / "BENCHMARKS.md"), help="Markdown output"
    )
    parser.add_argument(
        "--only", default=None, help=f"comma-separated subset of {names}"
    )
    parser.add_argument("--json", default=None, help="also write rows here")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the benchmarks in this process, not one interpreter each",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one benchmark for run_isolated: rows to --child-out
        res = run_one(args.child, args.quick)
        atomic_write_text(args.child_out, json.dumps(res))
        return 0
    selected = names
    if args.only:
        selected = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in selected if n not in names]
        if unknown or not selected:
            parser.error(
                f"--only: unknown benchmark(s) {unknown}; available: "
                f"{', '.join(names)}"
            )
    info = machine_info()
    t0 = time.perf_counter()
    results = run_benchmarks(
        selected, args.quick, not args.no_progress, not args.in_process
    )
    total = time.perf_counter() - t0
    command = "python tools/benchmark.py" + (" --quick" if args.quick else "")
    if args.only:
        command += f" --only {','.join(selected)}"
    atomic_write_text(
        args.out, render(results, info, args.quick, total, command)
    )
    if args.json:
        blob = {"machine": info, "quick": args.quick, "results": results}
        atomic_write_text(args.json, json.dumps(blob, indent=1, default=str))
    failed = [r["name"] for r in results if r["error"]]
    print(
        f"[benchmark] wrote {args.out} ({len(results)} benchmarks, "
        f"{total:.0f} s"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
        + ")"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
