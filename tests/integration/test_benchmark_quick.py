"""tools/benchmarks/run.py runs every benchmark and writes BENCHMARKS.md.

The quick sizes of all benchmarks but the scale one (test_bench_scale.py)
run once (``main`` called here, twice at once on two halves of them; each
benchmark in its own interpreter, as always); the test reads the Markdown
they wrote and checks that every section has its rows, with finite
figures and ratios wherever the reference was run. Nothing here asserts
a timing. A second test runs the script on stand-in benchmark files (one
good, one raising, one returning a bad row, one killing its interpreter)
to check that a failing benchmark is recorded in its section and does
not stop the others.
"""

import json
import math
import pathlib
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

BENCH_DIR = pathlib.Path(__file__).resolve().parents[2] / "tools" / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))
import run as runner  # noqa: E402

# Section -> rows that must be there (by name; prefixes end with "=").
EXPECTED = {
    "model": [
        "ResNet-50 training step, gates vs no gates",
        "ResNet-50 inference, gates vs no gates",
        "MultiMetricLoss forward+backward vs training step",
    ],
    "features": ["spectrogram_per_utterance", "spectrogram_batched"],
    "scoring": [
        "multicrop_closed_form_vs_pair_loop",
        "score_multicrop_eer_mindcf_U=2000,T=8000,D=256",
        "score_peak_anon_memory_U=2000,T=8000,D=256",
    ],
    # SpeechBrain's EER and minDCF run at N = 1000, neither at 100,000
    "metrics": [
        "eer_time_N=1000",
        "min_dcf_time_N=1000",
        "metrics_peak_memory_N=1000",
        "eer_time_N=100000",
        "min_dcf_time_N=100000",
        "metrics_peak_memory_N=100000",
    ],
    "windows": ["embed_by_1.5s_windows_peak_rss"],
}


def _number(cell):
    return float("nan") if cell == "n/a" else float(cell)


def parse_sections(markdown):
    """``{section name: [row dict]}`` from BENCHMARKS.md's tables."""
    sections, current = {}, None
    for line in markdown.splitlines():
        if line.startswith("## ") and line.rstrip().endswith("`)"):
            current = line.rsplit("(`", 1)[1][:-2]
            sections[current] = []
        elif (
            current
            and line.startswith("| ")
            and not line.startswith("| name |")
        ):
            body = line.strip()[2:-2].replace("\\|", "\0")
            cells = [c.strip().replace("\0", "|") for c in body.split(" | ")]
            name, fig, unit, ref, ratio, machine, note = cells
            sections[current].append(
                dict(
                    name=name,
                    figure=_number(fig),
                    unit=unit,
                    reference=_number(ref),
                    ratio=_number(ratio),
                    machine=machine,
                    note=note,
                )
            )
    return sections


# The benchmarks of the quick run, as two runs of the runner at once (the
# machine's 2 cores; nothing checked here depends on the time).
RUNS = (("model", "metrics"), ("features", "scoring", "windows"))


@pytest.fixture(scope="module")
def quick_runs(shared_data, tmp_path_factory):
    """The ``--quick`` runs of ``RUNS``: [(Markdown, JSON, exit status)]."""
    out = tmp_path_factory.mktemp("bench")

    def one(k):
        md, blob = out / f"B{k}.md", out / f"B{k}.json"
        args = ["--quick", "--only", ",".join(RUNS[k])]
        status = runner.main(args + ["--out", str(md), "--json", str(blob)])
        return md.read_text(), json.loads(blob.read_text()), status

    with pytest.MonkeyPatch.context() as env:
        env.setenv("DAMPIT_DATA", str(shared_data))
        env.setenv("OMP_NUM_THREADS", "1")
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(one, range(len(RUNS))))


@pytest.mark.slow
def test_quick_run_writes_every_section(quick_runs):
    sections, labels = {}, set()
    for md, blob, status in quick_runs:
        failed = [r for r in blob["results"] if r["error"]]
        assert status == 0, [(r["name"], r["traceback"]) for r in failed]
        assert "| cpu |" in md and "| torch |" in md
        sections.update(parse_sections(md))
        labels.add(blob["machine"]["label"])
    assert set(sections) == set(EXPECTED), sorted(sections)
    machine = {r["machine"] for rows in sections.values() for r in rows}
    assert len(machine) == 1 and machine == labels
    for name, wanted in EXPECTED.items():
        rows = {r["name"]: r for r in sections[name]}
        assert set(wanted) <= set(rows), (name, sorted(rows))
        for row in rows.values():
            assert math.isfinite(row["figure"]), (name, row)
            if math.isnan(row["reference"]):
                # A reference that was not run: the note must say so.
                assert "not run" in row["note"] or "would" in row["note"]
                continue
            assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
            assert row["note"], row


@pytest.mark.slow
def test_quick_run_markdown_matches_rows(quick_runs):
    for md, blob, _ in quick_runs:
        sections = parse_sections(md)
        for res in blob["results"]:
            assert res["error"] is None, (res["name"], res["traceback"])
            table = sections[res["name"]]
            names = [r["name"] for r in res["rows"]]
            assert [r["name"] for r in table] == names
            for got, row in zip(table, res["rows"]):
                for key in ("figure", "reference", "ratio"):
                    want = row[key]
                    if math.isnan(want):
                        assert math.isnan(got[key])
                    else:
                        assert got[key] == pytest.approx(want, rel=1e-3)
        # The header names the command.
        only = ",".join(res["name"] for res in blob["results"])
        command = f"python tools/benchmarks/run.py --quick --only {only}"
        assert f"Generated by `{command}` on " in md
    # Every key row is in the summary.
    summary = "| scoring | multicrop_closed_form_vs_pair_loop |"
    assert summary in quick_runs[1][0]


GOOD = """
\"""Good stand-in.

What it measures.
\"""
KEY_ROWS = ("ok_row",)
def run(mode):
    return [dict(name="ok_row", figure=2.0, unit="s", reference=6.0,
                 ratio=3.0, note=mode)]
"""
BOOM = """
def run(mode):
    raise RuntimeError("boom | in the benchmark")
"""
CRASH = """
import os
def run(mode):
    os._exit(3)
"""
BAD_ROW = """
def run(mode):
    return [dict(name="x", figure="fast", unit="s", reference=1, ratio=1,
                 note="")]
"""


def test_failing_benchmarks_are_recorded(tmp_path, monkeypatch, capsys):
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    files = {"good": GOOD, "boom": BOOM, "badrow": BAD_ROW, "crash": CRASH}
    for name, code in files.items():
        (bench_dir / f"bench_{name}.py").write_text(code)
    out = tmp_path / "B.md"
    monkeypatch.setattr(runner, "BENCH_DIR", bench_dir)
    assert runner.main(["--quick", "--out", str(out)]) == 1
    assert "FAILED: badrow, boom, crash" in capsys.readouterr().out
    md = out.read_text()
    sections = parse_sections(md)
    assert [r["name"] for r in sections["good"]] == ["ok_row"]
    row = sections["good"][0]
    assert (row["figure"], row["reference"], row["ratio"]) == (2.0, 6.0, 3.0)
    assert row["note"] == "quick"
    assert "## Good stand-in (`good`)\n\nWhat it measures." in md
    assert "| good | ok_row | 2 | 6 | s | 3 |" in md  # the key ratios
    assert sections["boom"] == [] and sections["badrow"] == []
    assert "**Failed**: `RuntimeError: boom | in the benchmark`" in md
    assert "non-numeric figure: 'fast'" in md
    assert sections["crash"] == []
    assert "bench_crash.py:run died (exit status 3)" in md


def test_only_rejects_unknown_names(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        runner.main(["--only", "scoring,nosuch", "--out", str(tmp_path / "B")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "metrics" in err
    assert not (tmp_path / "B").exists()
