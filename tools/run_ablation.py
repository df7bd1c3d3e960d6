"""Run the paper's Table 2 ablation on a small folder corpus (issue #10).

Trains and verifies every configuration of the ablation (same split and
budget) over several seeds, plus the template's stock ECAPA-TDNN + AAM,
then writes a table (EER, minDCF: mean and spread) and a DET figure::

    python tools/run_ablation.py --seeds 1 2 3 --jobs 2 \\
        --epochs 5 --batches-per-epoch 23 --average-checkpoints 1

(RESULTS.md's budget; by default ``mini.yaml``'s 12 epochs of 20 batches).

``all_four`` is ``recipes/VoxCeleb/hparams/mini.yaml`` itself; every
``hparams/ablations/<name>.yaml`` contributes its keys (read as the recipe
reads them, ``dampit.utils.hparams.resolve_variant``) as command-line
overrides on top of ``mini.yaml``. Each run is a subprocess of the
recipe's or the template's ``train.py`` writing ``<out>/<config>/<seed>/``
(log in ``run.log``); finished runs are skipped, so an interrupted call
resumes. ``--jobs`` runs go in parallel with ``OMP_NUM_THREADS = cores //
jobs``. The table, per-seed values and figure go to ``--results-md``
between ``<!-- ablation:begin -->`` and ``<!-- ablation:end -->``.
"""

import argparse
import concurrent.futures
import json
import math
import os
import statistics
import subprocess
import sys
import time

import matplotlib
import numpy as np
from scipy.stats import norm

from dampit.dataio.trials import read_scores
from dampit.metrics.error_rates import compute_eer, det_curve
from dampit.utils.atomic import atomic_path, atomic_write_text
from dampit.utils.hparams import resolve_variant

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "VoxCeleb")
MINI = os.path.join(RECIPE, "hparams", "mini.yaml")
ABLATIONS = os.path.join(RECIPE, "hparams", "ablations")
TEMPLATE = os.path.join(REPO, "templates", "speaker_verification")
ECAPA_YAML = os.path.join(TEMPLATE, "hparams", "ecapa_aam.yaml")
LABELS = {  # in table order: Table 2, gates, the stock baseline
    "softmax_only": "softmax only",
    "softmax_triplet": "softmax + triplet",
    "softmax_npair": "softmax + n-pair",
    "softmax_angular": "softmax + angular",
    "all_four": "all four (mini.yaml)",
    "no_gates": "all four, no gates",
    "ecapa_aam": "ECAPA-TDNN + AAM (template)",
}
BASELINE = "ecapa_aam"
# Keys the tool sets itself, the same for every run.
TOOL_KEYS = {"experiment", "seed", "data_folder", "output_folder"}
TOOL_KEYS |= {"number_of_epochs", "batches_per_epoch"}
SCORINGS = ("full_cosine", "multicrop_cosine", "multicrop_dot")
MARK_BEGIN, MARK_END = "<!-- ablation:begin -->", "<!-- ablation:end -->"


def ablation_configs(ablation_dir=ABLATIONS):
    """Config name -> overrides of ``mini.yaml`` (``all_four``: none).

    Example
    -------
    >>> cfg = ablation_configs()
    >>> cfg["all_four"], cfg["no_gates"]
    ({}, {'gate': 'none'})
    """
    configs = {"all_four": {}}
    for fname in sorted(os.listdir(ablation_dir)):
        if fname.endswith(".yaml"):
            _, keys = resolve_variant(os.path.join(ablation_dir, fname))
            configs[fname[:-5]] = {
                k: v for k, v in sorted(keys.items()) if k not in TOOL_KEYS
            }
    rank = {n: i for i, n in enumerate(LABELS)}
    return dict(sorted(configs.items(), key=lambda kv: rank.get(kv[0], 99)))


def format_override(key, value):
    """One ``--key=value`` argument (JSON, a YAML subset, for non-strings).

    Example
    -------
    >>> format_override("gate", "none"), format_override("s", [2, 3.0])
    ('--gate=none', '--s=[2, 3.0]')
    """
    return f"--{key}={value if isinstance(value, str) else json.dumps(value)}"


def run_command(config, overrides, seed, data, out, epochs, batches):
    """The command line of one training run.

    Example
    -------
    >>> cmd = run_command("no_gates", {"gate": "none"}, 2, "d", "o", 6, 20)
    >>> cmd[5:]  # doctest: +NORMALIZE_WHITESPACE
    ['--seed=2', '--noprogressbar', '--number_of_epochs=6',
     '--batches_per_epoch=20', '--experiment=no_gates', '--gate=none']
    """
    baseline = config == BASELINE
    script = os.path.join(TEMPLATE if baseline else RECIPE, "train.py")
    cmd = [sys.executable, script, ECAPA_YAML if baseline else MINI]
    cmd += [f"--data_folder={data}", f"--output_folder={out}"]
    cmd += [f"--seed={seed}", "--noprogressbar", f"--number_of_epochs={epochs}"]
    if not baseline:
        cmd += [f"--batches_per_epoch={batches}", f"--experiment={config}"]
    return cmd + [format_override(k, v) for k, v in overrides.items()]


def read_run(run_dir, config):
    """``{scoring: {"eer": %, "min_dcf_0.01", "min_dcf_0.05"}, "scores":
    full-cosine score file or None}`` of a finished run, else None."""
    ver = os.path.join(run_dir, "verification")
    if config == BASELINE:
        if not os.path.isfile(os.path.join(run_dir, "results.json")):
            return None
        with open(os.path.join(ver, "full_cosine_metrics.json")) as f:
            reports = {"full_cosine": json.load(f)}
    else:
        path = os.path.join(ver, "summary.json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
        reports = {}
        for scoring in SCORINGS:
            if f"trials/{scoring}" not in summary:
                raise KeyError(f"{path}: no 'trials/{scoring}'")
            reports[scoring] = summary[f"trials/{scoring}"]
    keys = ("eer", "min_dcf_0.01", "min_dcf_0.05")
    out = {
        scoring: {k: float(rep[k]) * (100.0 if k == "eer" else 1) for k in keys}
        for scoring, rep in reports.items()
    }
    scores = reports["full_cosine"].get("scores_txt")
    if scores and not os.path.isabs(scores):
        scores = os.path.join(REPO, scores)
    out["scores"] = scores if scores and os.path.isfile(scores) else None
    return out


def mean_std(values):
    """Mean and sample standard deviation (nan for one value).

    Example
    -------
    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    v = [float(x) for x in values] or [math.nan]
    return statistics.mean(v), statistics.stdev(v) if len(v) > 1 else math.nan


def aggregate(results):
    """``{config: {"n", "seeds", "missing", scoring: {metric: (mean, std,
    values)}}}`` from ``{config: {seed: read_run(...) or None}}``.

    Example
    -------
    >>> r = {"a": {1: {"full_cosine": {"eer": 2.0}},
    ...            2: {"full_cosine": {"eer": 4.0}}, 3: None}}
    >>> agg = aggregate(r)["a"]
    >>> agg["n"], agg["missing"], agg["full_cosine"]["eer"][:2]
    (2, [3], (3.0, 1.4142135623730951))
    """
    out = {}
    for config, per_seed in results.items():
        done = {s: r for s, r in sorted(per_seed.items()) if r is not None}
        entry = {"n": len(done), "seeds": list(done)}
        entry["missing"] = sorted(s for s, r in per_seed.items() if r is None)
        for scoring in sorted(
            {k for r in done.values() for k in r} - {"scores"}
        ):
            entry[scoring] = {}
            for metric in sorted(
                {m for r in done.values() for m in r[scoring]}
            ):
                vals = [r[scoring][metric] for r in done.values()]
                entry[scoring][metric] = (*mean_std(vals), vals)
        out[config] = entry
    return out


def fmt_ms(stat, digits):
    """``mean ± std`` (or ``mean``, or ``–``) of an ``aggregate`` triple.

    Example
    -------
    >>> fmt_ms((3.0, 1.4142, [2.0, 4.0]), 2), fmt_ms(None, 2)
    ('3.00 ± 1.41', '–')
    """
    if stat is None or not stat[2]:
        return "–"
    if math.isnan(stat[1]):
        return f"{stat[0]:.{digits}f}"
    return f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def markdown_table(agg):
    """One row per config, mean ± std over seeds.

    Example
    -------
    >>> agg = {"all_four": {"n": 2, "seeds": [1, 2], "missing": [],
    ...     "full_cosine": {"eer": (3.0, 1.0, [2.0, 4.0])}}}
    >>> print(markdown_table(agg).splitlines()[2])
    | all four (mini.yaml) | 2 | 3.00 ± 1.00 | – | – | – | – |
    """
    lines = [
        "| configuration | seeds | EER (%) | minDCF(0.01) | minDCF(0.05) "
        "| multi-crop cosine EER (%) | multi-crop dot EER (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for config, entry in agg.items():
        full = entry.get("full_cosine", {})
        seeds = str(entry["n"])
        if entry["missing"]:
            seeds += " (missing " + ", ".join(map(str, entry["missing"])) + ")"
        cells = [LABELS.get(config, config), seeds, fmt_ms(full.get("eer"), 2)]
        cells += [fmt_ms(full.get(f"min_dcf_0.0{p}"), 3) for p in (1, 5)]
        for scoring in ("multicrop_cosine", "multicrop_dot"):
            cells.append(fmt_ms(entry.get(scoring, {}).get("eer"), 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(results):
    """Per-seed full-cosine EER (%) and minDCF, one row a run.

    Example
    -------
    >>> r = {"no_gates": {1: {"full_cosine": {"eer": 2.5,
    ...     "min_dcf_0.01": 0.9, "min_dcf_0.05": 0.5}}, 2: None}}
    >>> print(per_seed_table(r).splitlines()[3])
    | all four, no gates | 2 | not run | | |
    """
    lines = [
        "| configuration | seed | EER (%) | minDCF(0.01) | minDCF(0.05) |",
        "|---|---|---|---|---|",
    ]
    for config, per_seed in results.items():
        for seed, r in sorted(per_seed.items()):
            row = f"| {LABELS.get(config, config)} | {seed} | "
            f = r["full_cosine"] if r else None
            lines.append(
                row + "not run | | |"
                if f is None
                else row + f"{f['eer']:.2f} | {f['min_dcf_0.01']:.3f} | "
                f"{f['min_dcf_0.05']:.3f} |"
            )
    return "\n".join(lines)


def plot_det_overlay(curves, path, title):
    """One DET figure (normal-deviate axes) of several ``label -> (scores,
    labels)`` systems, written atomically to ``path``."""
    lo, hi = 0.002, 0.85
    fig, ax = plt.subplots(figsize=(6.0, 5.2), dpi=80)
    for i, (label, (scores, labels)) in enumerate(curves.items()):
        fpr, fnr, _ = det_curve(scores, labels)
        eer, _ = compute_eer(scores, labels)
        x, y = norm.ppf(np.clip(fpr, lo, hi)), norm.ppf(np.clip(fnr, lo, hi))
        keep = np.unique(np.linspace(0, x.size - 1, 400).astype(int))
        ls = "--" if "ECAPA" in label else "-"
        label = f"{label} (EER {100 * eer:.1f}%)"
        ax.plot(
            x[keep], y[keep], lw=1.4, color=f"C{i % 10}", ls=ls, label=label
        )
    ticks = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set(xlim=(norm.ppf(lo), norm.ppf(hi)), ylim=(norm.ppf(lo), norm.ppf(hi)))
    ax.plot(ax.get_xlim(), ax.get_ylim(), ls=":", color="0.6", lw=0.8)
    ax.set(xlabel="False alarm rate (%)", ylabel="Miss rate (%)")
    ax.grid(True, ls="--", lw=0.5, color="0.85")
    ax.legend(loc="lower left", fontsize=7.5)
    ax.set_title(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


def figure_seed(results):
    """The smallest seed with the most runs done (None: none done).

    Example
    -------
    >>> figure_seed({"a": {1: None, 2: {}, 3: {}}, "b": {2: None, 3: {}}})
    3
    """
    done = {}
    for per_seed in results.values():
        for s, r in per_seed.items():
            done[s] = done.get(s, 0) + (r is not None)
    if not done or max(done.values()) == 0:
        return None
    return max(sorted(done), key=lambda s: (done[s], -s))


def write_figure(results, path):
    """DET overlay of every config's full-cosine scores for one seed;
    returns the seed and the configs without a score file."""
    seed = figure_seed(results)
    if seed is None:
        return None, list(results)
    curves, absent = {}, []
    for config, per_seed in results.items():
        r = per_seed.get(seed)
        if not r or not r.get("scores"):
            absent.append(config)
            continue
        _, _, scores, labels = read_scores(r["scores"])
        curves[LABELS.get(config, config)] = (scores, labels)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    title = f"dspspeech held-out trials, seed {seed}, full cosine"
    plot_det_overlay(curves, path, title)
    return seed, absent


def replace_section(page, section):
    """Put ``section`` between the markers of ``page`` (or append it).

    Example
    -------
    >>> p = "intro\\n" + MARK_BEGIN + "\\nold\\n" + MARK_END + "\\nend"
    >>> replace_section(p, "new").splitlines()
    ['intro', '<!-- ablation:begin -->', 'new', '<!-- ablation:end -->', 'end']
    """
    block = f"{MARK_BEGIN}\n{section.strip()}\n{MARK_END}"
    if MARK_BEGIN in page and MARK_END in page:
        head, rest = page.split(MARK_BEGIN, 1)
        return head + block + rest.split(MARK_END, 1)[1]
    return (page.rstrip() + "\n\n" if page.strip() else "") + block + "\n"


def _run_one(job):
    """Run one training subprocess; return (job, returncode, seconds)."""
    os.makedirs(job["out"], exist_ok=True)
    env = dict(os.environ, PYTHONPATH=REPO)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(job["threads"])
    start = time.time()
    with open(os.path.join(job["out"], "run.log"), "w") as log:
        log.write(" ".join(job["cmd"]) + "\n")
        log.flush()
        rc = subprocess.call(
            job["cmd"], cwd=REPO, env=env, stdout=log, stderr=log
        )
    return job, rc, time.time() - start


def parse_args(argv):
    """The command line (see the module docstring)."""
    root = os.environ.get("DAMPIT_DATA") or os.path.join(
        os.path.dirname(REPO), "shared", "data"
    )
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.path.join(root, "dspspeech"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--out", default=os.path.join(REPO, "results", "ablation"))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batches-per-epoch", type=int, default=20)
    p.add_argument("--configs", nargs="+", help="a subset (default: all)")
    p.add_argument(
        "--results-md",
        default=os.path.join(RECIPE, "RESULTS.md"),
        help="page to update between its ablation markers ('' for none)",
    )
    p.add_argument(
        "--figure", default=os.path.join(RECIPE, "results", "ablation_det.png")
    )
    p.add_argument(
        "--average-checkpoints",
        type=int,
        help="average_checkpoints of every dampit run (default: mini.yaml's)",
    )
    p.add_argument("--report-only", action="store_true", help="no training")
    args = p.parse_args(argv)
    if not os.path.isdir(args.data):
        p.error(f"--data {args.data}: no such folder")
    counts = (args.jobs, args.epochs, args.batches_per_epoch)
    n_avg = args.average_checkpoints
    if min(*counts, 1 if n_avg is None else n_avg) < 1:
        p.error("counts (--jobs, --epochs...) must be at least 1")
    return args


def run_all(jobs, n_parallel):
    """Run the jobs, ``n_parallel`` at a time; return the failed ones."""
    failed, start = [], time.time()
    with concurrent.futures.ThreadPoolExecutor(n_parallel) as pool:
        for fut in concurrent.futures.as_completed(
            [pool.submit(_run_one, j) for j in jobs]
        ):
            job, rc, secs = fut.result()
            ok = rc == 0 and read_run(job["out"], job["config"])
            failed += [] if ok else [job]
            print(
                f"[run_ablation] {job['config']} seed {job['seed']}: "
                f"{'done' if ok else f'FAILED (rc {rc})'} in "
                f"{secs / 60:.1f} min (total {(time.time() - start) / 60:.1f}"
                f" min); log {os.path.join(job['out'], 'run.log')}",
                flush=True,
            )
    return failed


def write_page(path, figure, table, results):
    """Put the table, the per-seed values and the figure in the page."""
    seed, absent = write_figure(results, figure)
    page = open(path, encoding="utf-8").read() if os.path.isfile(path) else ""
    rel_fig = os.path.relpath(figure, os.path.dirname(os.path.abspath(path)))
    note = ""
    if absent:
        names = ", ".join(LABELS.get(c, c) for c in absent)
        note = f" Not drawn (no score file for this seed): {names}."
    section = (
        f"{table}\n\n"
        "EER and minDCF (p_target 0.01 and 0.05, c_miss = c_fa = 1) of "
        "the cosine of whole-utterance embeddings on the held-out "
        "trials; mean ± sample standard deviation over seeds. The last "
        "two columns are the paper's multi-crop scoring of the same "
        "models (the template has no multi-crop scoring).\n\n"
        "<details><summary>Per-seed values</summary>\n\n"
        f"{per_seed_table(results)}\n\n</details>\n\n"
        f"![DET curves, seed {seed}]({rel_fig})\n\n"
        f"DET curves of seed {seed} (one model per configuration, "
        f"full-cosine scores).{note}\n"
    )
    atomic_write_text(path, replace_section(page, section))
    print(f"[run_ablation] wrote {path}", flush=True)


def main(argv=None):
    """Run the missing runs, then write the table and the figure."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configs = ablation_configs()
    if args.average_checkpoints is not None:
        for overrides in configs.values():
            overrides["average_checkpoints"] = args.average_checkpoints
    configs[BASELINE] = {}  # the template: its own checkpoint selection
    chosen = args.configs or list(configs)
    if set(chosen) - set(configs):
        raise SystemExit(f"--configs: choose from {list(configs)}")
    configs = {k: v for k, v in configs.items() if k in chosen}
    threads = max(1, args.cores // args.jobs)
    run_dir = {
        (c, s): os.path.join(args.out, c, str(s))
        for s in args.seeds  # seed-major: an interruption leaves whole seeds
        for c in configs
    }
    jobs = [
        {"config": c, "seed": s, "out": out, "threads": threads}
        for (c, s), out in run_dir.items()
        if read_run(out, c) is None
    ]
    budget = (args.epochs, args.batches_per_epoch)
    for j in jobs:
        c, s = j["config"], j["seed"]
        j["cmd"] = run_command(c, configs[c], s, args.data, j["out"], *budget)
    print(
        f"[run_ablation] {len(run_dir)} runs ({len(configs)} configs x "
        f"{len(args.seeds)} seeds), {len(run_dir) - len(jobs)} already done;"
        f" {args.jobs} in parallel, OMP_NUM_THREADS={threads}; budget "
        f"{args.epochs} epochs x {args.batches_per_epoch} batches",
        flush=True,
    )
    for name, ov in configs.items():
        ov = os.path.relpath(ECAPA_YAML, REPO) if name == BASELINE else ov
        print(f"  {name}: {ov or '(mini.yaml as is)'}", flush=True)
    failed = []
    if jobs and not args.report_only:
        failed = run_all(jobs, args.jobs)
    results = {
        c: {s: read_run(run_dir[c, s], c) for s in args.seeds} for c in configs
    }
    table = markdown_table(aggregate(results))
    print(table)
    if args.results_md:
        write_page(args.results_md, args.figure, table, results)
    if failed:
        names = ", ".join(f"{j['config']}/{j['seed']}" for j in failed)
        print(f"[run_ablation] failed runs: {names}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
