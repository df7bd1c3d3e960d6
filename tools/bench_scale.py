"""How dampit's costs grow toward VoxCeleb size (issue 19).

Builds its inputs (``tools/scale_inputs.py``: a VoxCeleb-layout tree of
symlinks to 8 s real-format wavs made from ../shared/data, synthetic
manifests, labels, trial lists and random embeddings) and runs every
stage of ``tools/scale_stages.py`` in its own interpreter, so that each
memory figure is that stage's alone (VmHWM and sampled RssAnon, see
there). Each figure has a reference measured in the same run:

- preparation (``prepare_voxceleb``) at two tree sizes against
  ``soundfile.info`` of the same files, projected to 1.1 M files;
- PKSampler construction + one epoch at VoxCeleb2 dev's size;
- the recipe's training loader (0, 1, 2 workers) against bare soundfile
  crop reads, FolderAugment (noise + reverberation), file opens;
- Vox1-E scoring (trial list, multi-crop mean, EER, minDCF) against one
  pass over the store, and ``dampit-verify --trials``;
- the verification loader (workers) against a serial loop.

Usage::

    python tools/bench_scale.py [--quick | --full] [--json out.json]
                                [--workdir DIR]

``--quick`` (the test, tools/benchmark.py --quick) uses small sizes; the
default fits a few minutes on 2 cores; ``--full`` runs 10^5 files and
Vox1-E itself (145,160 x 10 x 2048 embeddings: 11.9 GB of disk).
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import scale_benches as sb  # noqa: E402
from benchlib import format_rows  # noqa: E402
from scale_inputs import make_sources  # noqa: E402

VOX2 = 1092009  # VoxCeleb2 dev utterances
SIZES = {
    "quick": dict(
        prep=[300, 600],
        sampler=(110000, 600),
        P=8,
        batches=3,
        aug=2,
        score=[(1000, 4000), (2000, 8000)],
        dim=256,
        cli_files=12,
        cli=[2000, 20000],
        vload=32,
    ),
    "default": dict(
        prep=[1000, 10000],
        sampler=(VOX2, 5994),
        P=64,
        batches=6,
        aug=3,
        score=[(7258, 28991), (14516, 57982)],
        dim=2048,
        cli_files=100,
        cli=[100000, 1000000],
        vload=400,
    ),
    "full": dict(
        prep=[10000, 100000],
        sampler=(VOX2, 5994),
        P=64,
        batches=10,
        aug=5,
        score=[(14516, 57982), sb.VOX1E],
        dim=2048,
        cli_files=200,
        cli=[100000, 1000000],
        vload=4874,
    ),
}


BENCHES = (
    ("preparation", sb.bench_prep),
    ("sampler", lambda t, z, s: sb.bench_sampler(z)),
    ("training loader", sb.bench_loader),
    ("verification scoring", lambda t, z, s: sb.bench_scoring(t, z)),
    ("dampit-verify", sb.bench_cli),
    ("verification loading", sb.bench_vload),
)


def measure(mode, workdir=None, only=None):
    """The benchmarks (``only``: those named) at ``mode``'s sizes:
    ``(rows, raw results)``; a failing one is recorded with its error."""
    z, rows, raw = SIZES[mode], [], {"mode": mode}
    if workdir:
        os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="scale_") as tmp:
        sources = make_sources(str(sb.DATA), os.path.join(tmp, "src"))
        for name, bench in BENCHES:
            if only and name not in only:
                continue
            try:
                new, raw[name] = bench(tmp, z, sources)
            except RuntimeError as err:
                raw[name] = {"error": str(err)}
                print(f"[bench_scale] {name}: {err}", file=sys.stderr)
                continue
            rows += new
    return rows, raw


def run(quick):
    """tools/benchmark.py's entry: the rows at the quick or default sizes."""
    rows, raw = measure("quick" if quick else "default")
    failed = [k for k, v in raw.items() if isinstance(v, dict) and "error" in v]
    if failed:
        raise RuntimeError(raw[failed[0]]["error"])
    return rows


def main(argv=None):
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes")
    size.add_argument("--full", action="store_true", help="10^5 files, Vox1-E")
    parser.add_argument("--json", help="write the rows and raw results here")
    parser.add_argument(
        "--workdir", help="folder for the inputs (default /tmp)"
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated, of: {', '.join(n for n, _ in BENCHES)}",
    )
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None
    unknown = set(only or ()) - {n for n, _ in BENCHES}
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    mode = "quick" if args.quick else "full" if args.full else "default"
    rows, raw = measure(mode, args.workdir, only)
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": mode, "rows": rows, "raw": raw}, f, indent=1)
    return (
        1
        if any("error" in v for v in raw.values() if isinstance(v, dict))
        else 0
    )


if __name__ == "__main__":
    sys.exit(main())
