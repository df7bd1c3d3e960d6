"""Run the paper's Table 2 ablation on a small folder corpus, k-fold.

Every configuration of the ablation, plus the template's stock
ECAPA-TDNN + AAM, is trained once per speaker fold and seed on the
speakers of the other folds (``--n_folds=K --fold=k`` of the data
preparation, ``--folds K``, 5 by default) and verified on its fold::

    python recipes/VoxCeleb/ablation/run_ablation.py --folds 5 --seeds 1 2 3

(by default ``mini.yaml``'s 12 epochs of 20 batches).

``all_four`` is ``recipes/VoxCeleb/hparams/mini.yaml`` itself; every
``hparams/ablations/<name>.yaml`` contributes its keys (read as the recipe
reads them, ``dampit.utils.hparams.resolve_variant``) as command-line
overrides on top of ``mini.yaml``. Each run is a subprocess of the
recipe's or the template's ``train.py`` writing
``<out>/<config>/fold<k>/<seed>/`` (log in ``run.log``); finished runs are
skipped, so an interrupted call resumes. ``--jobs`` runs go in parallel
with ``OMP_NUM_THREADS = cores // jobs``. ``kfold_stats.py`` (here) pools
the scores of all the runs of a configuration (EER, minDCF,
speaker-bootstrap intervals, paired differences from ``all_four``); the
tables and their figures go to ``--results-md`` between
``<!-- kfold:begin -->`` and ``<!-- kfold:end -->``.
``--set KEY=VALUE ...`` gives every dampit run (not the template) more
overrides, e.g. ``n_valid_speakers=4``: validation (checkpoint selection)
on 4 training speakers of their own, seen in no training. Each such
variant goes to an ``--out`` of its own, and ``--compare LABEL=DIR
...`` pools one configuration's k-fold runs in each of those folders
(paired differences from the first)::

    python recipes/VoxCeleb/ablation/run_ablation.py --folds 5 --seeds 1 \
        --configs all_four \
        --compare mini=results/ablation_kfold speed=results/speed
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

import yaml
from ablation_report import (  # the script's folder: sys.path[0]
    BASELINE,
    LABELS,
    REPO,
    SCORINGS,
    fold_scores,
    plot_intervals,
    read_run,
    replace_section,
)
from kfold_stats import kfold_report

from dampit.utils.atomic import atomic_write_text
from dampit.utils.hparams import resolve_variant

RECIPE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(RECIPE, "hparams", "mini.yaml")
ABLATIONS = os.path.join(RECIPE, "hparams", "ablations")
TEMPLATE = os.path.join(REPO, "templates", "speaker_verification")
ECAPA_YAML = os.path.join(TEMPLATE, "hparams", "ecapa_aam.yaml")
OFF_THE_SHELF = "resemblyzer"  # only when --configs names it
RESEMBLYZER = os.path.join(os.path.dirname(__file__), "resemblyzer_baseline.py")
# Keys the tool sets itself, the same for every run.
TOOL_KEYS = {"experiment", "seed", "data_folder", "output_folder"}
TOOL_KEYS |= {"number_of_epochs", "batches_per_epoch"}


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
    if config == OFF_THE_SHELF:  # scored without training
        cmd = [sys.executable, RESEMBLYZER, f"--data_folder={data}"]
        cmd += [f"--output_folder={out}"]
        return cmd + [format_override(k, v) for k, v in overrides.items()]
    baseline = config == BASELINE
    script = os.path.join(TEMPLATE if baseline else RECIPE, "train.py")
    cmd = [sys.executable, script, ECAPA_YAML if baseline else MINI]
    cmd += [f"--data_folder={data}", f"--output_folder={out}"]
    cmd += [f"--seed={seed}", "--noprogressbar", f"--number_of_epochs={epochs}"]
    if not baseline:
        cmd += [f"--batches_per_epoch={batches}", f"--experiment={config}"]
    return cmd + [format_override(k, v) for k, v in overrides.items()]


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
    p.add_argument(
        "--out", default=os.path.join(REPO, "results", "ablation_kfold")
    )
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batches-per-epoch", type=int, default=20)
    p.add_argument("--configs", nargs="+", help="a subset (default: all)")
    p.add_argument(
        "--results-md",
        default=os.path.join(RECIPE, "RESULTS.md"),
        help="page to update between its k-fold markers ('' for none)",
    )
    p.add_argument("--report-only", action="store_true", help="no training")
    p.add_argument("--folds", type=int, default=5, help="K speaker folds")
    p.add_argument("--bootstrap", type=int, default=1000, help="k-fold draws")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of every dampit run (YAML values; a new --out)",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="LABEL=DIR",
        help="k-fold: print the pooled table of the one --configs entry "
        "over the --out folders DIR (the first is the reference)",
    )
    args = p.parse_args(argv)
    if args.folds < 2:
        p.error(f"--folds {args.folds}: at least 2")
    if not os.path.isdir(args.data):
        p.error(f"--data {args.data}: no such folder")
    for opt, items in (("--set", args.set), ("--compare", args.compare)):
        for item in items or []:
            if "=" not in item or not item.split("=", 1)[0]:
                p.error(f"{opt} {item}: KEY=VALUE expected")
    if args.compare and len(args.configs or []) != 1:
        p.error("--compare: needs one --configs entry")
    args.set = {
        k: yaml.safe_load(v) for k, v in (i.split("=", 1) for i in args.set)
    }
    counts = (args.jobs, args.epochs, args.batches_per_epoch, args.bootstrap)
    if min(counts) < 1:
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
            if not ok:
                failed.append(job)
            print(
                f"[run_ablation] {job['name']}: "
                f"{'done' if ok else f'FAILED (rc {rc})'} in "
                f"{secs / 60:.1f} min (total {(time.time() - start) / 60:.1f}"
                f" min); log {os.path.join(job['out'], 'run.log')}",
                flush=True,
            )
    return failed


def score_files(args, out, config, scoring="full_cosine"):
    """``{(fold, seed): score file or None}`` of a configuration's runs
    in ``out`` (:func:`ablation_report.fold_scores`)."""
    return {
        (f, s): fold_scores(
            run_path(out, config, f, s), config, args.folds, f, scoring
        )
        for f in range(args.folds)
        for s in args.seeds
    }


def write_kfold(args, configs):
    """Pool each configuration's runs; print the tables, put them in the
    page between its k-fold markers."""
    files = {c: score_files(args, args.out, c) for c in configs}
    rows = [{}, {}]  # the two tables' EER rows, for the figures
    tables = kfold_report(files, "all_four", LABELS, args.bootstrap, 0, rows[0])
    if "all_four" in configs:  # the scorings compared
        scorings = {
            f"all_four/{m}": score_files(args, args.out, "all_four", m)
            for m in SCORINGS
        }
        names = {f"all_four/{m}": f"all four, {m}" for m in SCORINGS}
        tables += "\n\n" + kfold_report(
            scorings, "all_four/full_cosine", names, args.bootstrap, 0, rows[1]
        )
    print(tables)
    if not args.results_md:
        return
    page = args.results_md
    pngs = ("kfold_eer.png", "kfold_scorings.png")
    for png, r, what in zip(pngs, rows, ("configurations", "scorings")):
        if r:
            path = os.path.join(os.path.dirname(page), "results", png)
            plot_intervals(r, path, f"Speaker k-fold: {what}")
            tables += f"\n\n![k-fold {what}](results/{png})"
    text = open(page, encoding="utf-8").read() if os.path.isfile(page) else ""
    section = (
        f"{tables}\n\nSpeaker {args.folds}-fold cross-validation, seeds "
        f"{', '.join(map(str, args.seeds))}, {args.epochs} epochs x "
        f"{args.batches_per_epoch} batches; full-cosine scores of every "
        "fold and seed pooled per configuration; 95 % intervals and "
        f"p-values from {args.bootstrap} bootstrap draws of test speakers "
        "within each fold, the same draws for every configuration "
        "(paired); a difference > 0 means the reference is better "
        "(`recipes/VoxCeleb/ablation/kfold_stats.py` gives the scheme).\n"
    )
    atomic_write_text(page, replace_section(text, section))
    print(f"[run_ablation] wrote {page}", flush=True)


def run_path(out, config, fold, seed):
    """``<out>/<config>/fold<fold>/<seed>``: one run's output folder."""
    return os.path.join(out, config, f"fold{fold}", str(seed))


def compare_outs(args):
    """Print the pooled k-fold table of one configuration's runs in
    several ``--out`` folders (``--compare LABEL=DIR ...``)."""
    config = args.configs[0]
    outs = dict(item.rsplit("=", 1) for item in args.compare)
    files = {
        label: score_files(args, out, config) for label, out in outs.items()
    }
    print(kfold_report(files, next(iter(outs)), None, args.bootstrap))
    return 0


def main(argv=None):
    """Run the missing runs, then write the tables and their figures."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.compare:
        return compare_outs(args)
    configs = ablation_configs()
    for overrides in configs.values():
        overrides.update(args.set)
    configs[BASELINE] = {}  # the template: its own checkpoint selection
    chosen = args.configs or list(configs)
    if OFF_THE_SHELF in chosen:
        configs[OFF_THE_SHELF] = {
            k: v for k, v in args.set.items() if k == "test_corpora"
        }
    if set(chosen) - set(configs):
        raise SystemExit(f"--configs: choose from {list(configs)}")
    configs = {k: v for k, v in configs.items() if k in chosen}
    with open(ECAPA_YAML, encoding="utf-8") as f:
        if BASELINE in configs and "\nn_folds:" not in "\n" + f.read():
            raise SystemExit(f"--folds: {ECAPA_YAML} has no n_folds key")
    threads = max(1, args.cores // args.jobs)
    folds = range(args.folds)
    run_dir = {  # seed-major: an interruption leaves whole seeds
        (c, f, s): run_path(args.out, c, f, s)
        for s in args.seeds
        for f in folds
        for c in configs
    }
    jobs, budget = [], (args.epochs, args.batches_per_epoch)
    for (c, f, s), out in run_dir.items():
        if read_run(out, c) is None:
            ov = {**configs[c], "fold": f, "n_folds": args.folds}
            cmd = run_command(c, ov, s, args.data, out, *budget)
            name = os.path.relpath(out, args.out)
            jobs.append({"name": name, "out": out, "cmd": cmd})
            jobs[-1].update(config=c, threads=threads)
    print(
        f"[run_ablation] {len(run_dir)} runs ({len(configs)} configs x "
        f"{len(folds)} folds x {len(args.seeds)} seeds), "
        f"{len(run_dir) - len(jobs)} already done; {args.jobs} in parallel, "
        f"OMP_NUM_THREADS={threads}; budget {args.epochs} epochs x "
        f"{args.batches_per_epoch} batches",
        flush=True,
    )
    for name, ov in configs.items():
        ov = os.path.relpath(ECAPA_YAML, REPO) if name == BASELINE else ov
        print(f"  {name}: {ov or '(mini.yaml as is)'}", flush=True)
    failed = []
    if jobs and not args.report_only:
        failed = run_all(jobs, args.jobs)
    write_kfold(args, configs)
    if failed:
        names = ", ".join(j["name"] for j in failed)
        print(f"[run_ablation] failed runs: {names}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
