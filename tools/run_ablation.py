"""Run the paper's Table 2 ablation on a small folder corpus (issue #10).

One command trains and verifies, on the same speaker split and with the
same budget, every configuration of the ablation over several seeds, plus
the template's stock ECAPA-TDNN + AAM baseline, then writes a markdown
table (EER and minDCF, mean and spread over seeds) and a DET figure::

    python tools/run_ablation.py --seeds 1 2 3 --jobs 2 \\
        --epochs 5 --batches-per-epoch 23 --average-checkpoints 1

(the budget of ``recipes/VoxCeleb/RESULTS.md``; without the two budget
options every run gets ``mini.yaml``'s 12 epochs of 20 batches).

Configurations come from the recipe's own files, so they are defined in
one place: ``all_four`` is ``recipes/VoxCeleb/hparams/mini.yaml`` itself
and every ``hparams/ablations/<name>.yaml`` (a variant of
``multi_metric.yaml``) contributes its keys, read with
``dampit.utils.hparams.resolve_variant`` and less those equal to the base,
as command-line overrides on top of ``mini.yaml``. The budget keys
(epochs, batches per epoch) and the seed come from this tool and are the
same for every run.

Each run is a subprocess (``recipes/VoxCeleb/train.py`` or the template's
``train.py``) writing to ``<out>/<config>/<seed>/`` with its log in
``run.log``; runs whose results exist are skipped, so an interrupted call
resumes. ``--jobs`` runs go in parallel, each with
``OMP_NUM_THREADS = max(1, cores // jobs)``.

The page's generated part (the table, the per-seed values and the
figure) is written to ``--results-md`` (default
``recipes/VoxCeleb/RESULTS.md``; ``''`` for none) between the markers
``<!-- ablation:begin -->`` and ``<!-- ablation:end -->``; the rest of the
page (setup, reading) is kept as it is.
"""

import argparse
import concurrent.futures
import json
import math
import os
import subprocess
import sys
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dampit.utils.atomic import atomic_write_text  # noqa: E402
from dampit.utils.hparams import resolve_variant  # noqa: E402

RECIPE = os.path.join(REPO, "recipes", "VoxCeleb")
MINI = os.path.join(RECIPE, "hparams", "mini.yaml")
ABLATIONS = os.path.join(RECIPE, "hparams", "ablations")
TEMPLATE = os.path.join(REPO, "templates", "speaker_verification")
ECAPA_YAML = os.path.join(TEMPLATE, "hparams", "ecapa_aam.yaml")

# Table order: the paper's Table 2 (single metrics, then all four), then
# the gate ablation, then the stock SpeechBrain baseline.
ORDER = [
    "softmax_only",
    "softmax_triplet",
    "softmax_npair",
    "softmax_angular",
    "all_four",
    "no_gates",
    "ecapa_aam",
]
LABELS = {
    "softmax_only": "softmax only",
    "softmax_triplet": "softmax + triplet",
    "softmax_npair": "softmax + n-pair",
    "softmax_angular": "softmax + angular",
    "all_four": "all four (mini.yaml)",
    "no_gates": "all four, no gates",
    "ecapa_aam": "ECAPA-TDNN + AAM (template)",
}
BASELINE = "ecapa_aam"
# Keys a variant may not set here: the tool owns them (same for all runs).
TOOL_KEYS = {
    "experiment",
    "seed",
    "data_folder",
    "output_folder",
    "number_of_epochs",
    "batches_per_epoch",
}
# summary.json keys of the recipe (trial list "trials" of prepare_folder).
SCORINGS = ("full_cosine", "multicrop_cosine", "multicrop_dot")
MARK_BEGIN = "<!-- ablation:begin -->"
MARK_END = "<!-- ablation:end -->"


# --------------------------------------------------------- configurations --
class _TagTolerantLoader(yaml.SafeLoader):
    """A SafeLoader that reads HyperPyYAML tags (``!ref`` ...) as None."""


_TagTolerantLoader.add_multi_constructor("!", lambda loader, tag, node: None)


def plain_values(path):
    """The plain (untagged) top-level values of a HyperPyYAML file.

    Arguments
    ---------
    path : str
        A YAML file; tagged values (``!ref``, ``!new:`` ...) read as None.

    Returns
    -------
    dict
        Top-level key -> value.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "b.yaml")
    >>> _ = open(p, "w").write("a: 1\\nb: !ref <a>\\n")
    >>> plain_values(p)
    {'a': 1, 'b': None}
    """
    with open(path, encoding="utf-8") as f:
        data = yaml.load(f, Loader=_TagTolerantLoader)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return data


def variant_overrides(variant_keys, base_values):
    """The overrides that turn the base configuration into a variant.

    Keys equal to the base's value and the keys the tool sets itself
    (``TOOL_KEYS``: experiment, seed, folders, budget) are dropped.

    Arguments
    ---------
    variant_keys : dict
        The variant's keys (``resolve_variant``'s merged dict).
    base_values : dict
        The base file's plain values.

    Returns
    -------
    dict
        Key -> value, sorted by key.

    Example
    -------
    >>> variant_overrides(
    ...     {"experiment": "x", "w_npair": 0.0, "lr": 0.1},
    ...     {"w_npair": 0.5, "lr": 0.1},
    ... )
    {'w_npair': 0.0}
    """
    out = {}
    for key, value in variant_keys.items():
        if key in TOOL_KEYS:
            continue
        if key in base_values and base_values[key] == value:
            continue
        out[key] = value
    return dict(sorted(out.items()))


def ablation_configs(ablation_dir=ABLATIONS):
    """Overrides of every ablation variant, plus ``all_four`` (none).

    Arguments
    ---------
    ablation_dir : str
        Folder of ``<name>.yaml`` variants of the paper configuration.

    Returns
    -------
    dict
        Config name -> overrides dict, in ``ORDER`` (unknown names last).

    Example
    -------
    >>> cfg = ablation_configs()
    >>> cfg["all_four"], cfg["no_gates"]
    ({}, {'gate': 'none'})
    """
    configs = {"all_four": {}}
    for fname in sorted(os.listdir(ablation_dir)):
        if not fname.endswith(".yaml"):
            continue
        path = os.path.join(ablation_dir, fname)
        base_file, keys = resolve_variant(path)
        if os.path.abspath(base_file) == os.path.abspath(path):
            raise ValueError(f"{path}: not a variant (no 'extends:')")
        name = os.path.splitext(fname)[0]
        configs[name] = variant_overrides(keys, plain_values(base_file))
    rank = {n: i for i, n in enumerate(ORDER)}
    return dict(
        sorted(configs.items(), key=lambda kv: (rank.get(kv[0], 99), kv[0]))
    )


def format_override(key, value):
    """One ``--key=value`` argument for SpeechBrain's command line.

    Arguments
    ---------
    key : str
        Hyperparameter name.
    value : object
        A plain YAML value.

    Returns
    -------
    str
        The argument (YAML flow style for lists and mappings).

    Example
    -------
    >>> format_override("gate", "none"), format_override("w", 0.0)
    ('--gate=none', '--w=0.0')
    >>> format_override("stages", [2, 3])
    '--stages=[2, 3]'
    """
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    text = text.strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    if text.endswith("..."):
        text = text[:-3].strip()
    return f"--{key}={text}"


def run_command(config, overrides, seed, data, out, epochs, batches):
    """The command line of one training run.

    Arguments
    ---------
    config : str
        Config name (``ecapa_aam`` is the template baseline).
    overrides : dict
        The config's overrides on top of ``mini.yaml``.
    seed : int
        Training seed.
    data : str
        The ``<speaker>/<utt>.wav`` folder.
    out : str
        The run's output folder.
    epochs : int
        Number of epochs (all runs).
    batches : int
        Batches per epoch of the recipe's P x K sampler (the template
        passes over its training set once an epoch).

    Returns
    -------
    list of str

    Example
    -------
    >>> cmd = run_command("no_gates", {"gate": "none"}, 2, "d", "o", 6, 20)
    >>> cmd[5:]  # doctest: +NORMALIZE_WHITESPACE
    ['--seed=2', '--noprogressbar', '--number_of_epochs=6',
     '--batches_per_epoch=20', '--experiment=no_gates', '--gate=none']
    """
    if config == BASELINE:
        script, hp = os.path.join(TEMPLATE, "train.py"), ECAPA_YAML
    else:
        script, hp = os.path.join(RECIPE, "train.py"), MINI
    cmd = [
        sys.executable,
        script,
        hp,
        f"--data_folder={data}",
        f"--output_folder={out}",
        f"--seed={seed}",
        "--noprogressbar",
        f"--number_of_epochs={epochs}",
    ]
    if config != BASELINE:
        cmd.append(f"--batches_per_epoch={batches}")
        cmd.append(f"--experiment={config}")
    cmd += [format_override(k, v) for k, v in overrides.items()]
    return cmd


# ---------------------------------------------------------------- results --
def read_run(run_dir, config):
    """The metrics of one finished run, or None when it has none yet.

    Arguments
    ---------
    run_dir : str
        ``<out>/<config>/<seed>``.
    config : str
        Config name (the baseline writes a different layout).

    Returns
    -------
    dict or None
        ``{scoring: {"eer": %, "min_dcf_0.01": ..., "min_dcf_0.05": ...}}``
        (the baseline has ``full_cosine`` only) and ``"scores"``: the
        path of the full-cosine score file when one exists.
    """
    ver = os.path.join(run_dir, "verification")
    if config == BASELINE:
        path = os.path.join(ver, "full_cosine_metrics.json")
        if not os.path.isfile(os.path.join(run_dir, "results.json")):
            return None
        with open(path, encoding="utf-8") as f:
            reports = {"full_cosine": json.load(f)}
    else:
        path = os.path.join(ver, "summary.json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
        reports = {}
        for scoring in SCORINGS:
            key = f"trials/{scoring}"
            if key not in summary:
                raise KeyError(f"{path}: no '{key}' (has {sorted(summary)})")
            reports[scoring] = summary[key]
    out = {}
    for scoring, rep in reports.items():
        out[scoring] = {
            "eer": 100.0 * float(rep["eer"]),
            "min_dcf_0.01": float(rep["min_dcf_0.01"]),
            "min_dcf_0.05": float(rep["min_dcf_0.05"]),
        }
    scores = rep_scores = reports["full_cosine"].get("scores_txt")
    if rep_scores and not os.path.isabs(rep_scores):
        scores = os.path.join(REPO, rep_scores)
    out["scores"] = scores if scores and os.path.isfile(scores) else None
    return out


def mean_std(values):
    """Mean and sample standard deviation (ddof 1; nan for one value).

    Arguments
    ---------
    values : sequence of float

    Returns
    -------
    (float, float)

    Example
    -------
    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, math.nan
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var)


def aggregate(results):
    """Mean and spread over seeds of every config, scoring and metric.

    Arguments
    ---------
    results : dict
        ``{config: {seed: read_run(...) or None}}``.

    Returns
    -------
    dict
        ``{config: {"n": seeds done, "seeds": [...], "missing": [...],
        scoring: {metric: (mean, std, [per-seed values])}}}``.

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
        done = {s: r for s, r in per_seed.items() if r is not None}
        entry = {
            "n": len(done),
            "seeds": sorted(done),
            "missing": sorted(s for s, r in per_seed.items() if r is None),
        }
        scorings = sorted(
            {k for r in done.values() for k in r if k != "scores"}
        )
        for scoring in scorings:
            metrics = sorted(
                {m for r in done.values() for m in r.get(scoring, {})}
            )
            entry[scoring] = {}
            for metric in metrics:
                vals = [
                    done[s][scoring][metric]
                    for s in sorted(done)
                    if metric in done[s].get(scoring, {})
                ]
                m, sd = mean_std(vals)
                entry[scoring][metric] = (m, sd, vals)
        out[config] = entry
    return out


def fmt_ms(stat, digits):
    """``mean ± std`` (or ``mean`` / ``–``) of an ``aggregate`` triple.

    Arguments
    ---------
    stat : tuple or None
        ``(mean, std, values)``.
    digits : int
        Decimals.

    Returns
    -------
    str

    Example
    -------
    >>> fmt_ms((3.0, 1.4142, [2.0, 4.0]), 2), fmt_ms(None, 2)
    ('3.00 ± 1.41', '–')
    """
    if stat is None or not stat[2]:
        return "–"
    m, sd = stat[0], stat[1]
    if math.isnan(sd):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def markdown_table(agg):
    """The results table: one row per config, mean ± std over seeds.

    Arguments
    ---------
    agg : dict
        Output of :func:`aggregate`.

    Returns
    -------
    str
        A markdown table.

    Example
    -------
    >>> agg = {"all_four": {"n": 2, "seeds": [1, 2], "missing": [],
    ...     "full_cosine": {"eer": (3.0, 1.0, [2.0, 4.0])}}}
    >>> print(markdown_table(agg).splitlines()[2])
    | all four (mini.yaml) | 2 | 3.00 ± 1.00 | – | – | – | – |
    """
    head = (
        "| configuration | seeds | EER (%) | minDCF(0.01) | minDCF(0.05) "
        "| multi-crop cosine EER (%) | multi-crop dot EER (%) |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for config, entry in agg.items():
        full = entry.get("full_cosine", {})
        mc = entry.get("multicrop_cosine", {})
        md = entry.get("multicrop_dot", {})
        seeds = str(entry["n"])
        if entry["missing"]:
            seeds += " (missing " + ", ".join(map(str, entry["missing"])) + ")"
        cells = [
            LABELS.get(config, config),
            seeds,
            fmt_ms(full.get("eer"), 2),
            fmt_ms(full.get("min_dcf_0.01"), 3),
            fmt_ms(full.get("min_dcf_0.05"), 3),
            fmt_ms(mc.get("eer"), 2),
            fmt_ms(md.get("eer"), 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(results):
    """Per-seed full-cosine EER (%) and minDCF(0.01), one row a run.

    Arguments
    ---------
    results : dict
        ``{config: {seed: read_run(...) or None}}``.

    Returns
    -------
    str
        A markdown table.

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
        for seed in sorted(per_seed):
            r = per_seed[seed]
            name = LABELS.get(config, config)
            if r is None:
                lines.append(f"| {name} | {seed} | not run | | |")
                continue
            f = r["full_cosine"]
            lines.append(
                f"| {name} | {seed} | {f['eer']:.2f} | "
                f"{f['min_dcf_0.01']:.3f} | {f['min_dcf_0.05']:.3f} |"
            )
    return "\n".join(lines)


def plot_det_overlay(curves, path, title):
    """One DET figure (normal-deviate axes) overlaying several systems.

    Arguments
    ---------
    curves : dict
        Label -> (scores, labels).
    path : str
        PNG to write (atomically).
    title : str
        Figure title.

    Returns
    -------
    str
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.stats import norm

    from dampit.metrics.error_rates import compute_eer, det_curve
    from dampit.utils.atomic import atomic_path

    lo, hi = 0.002, 0.85
    fig, ax = plt.subplots(figsize=(6.0, 5.2), dpi=80)
    for i, (label, (scores, labels)) in enumerate(curves.items()):
        fpr, fnr, _ = det_curve(scores, labels)
        eer, _ = compute_eer(scores, labels)
        x = norm.ppf(np.clip(fpr, lo, hi))
        y = norm.ppf(np.clip(fnr, lo, hi))
        # Thin to about 400 points: a small PNG, no visible difference.
        keep = np.unique(np.linspace(0, x.size - 1, 400).astype(int))
        ax.plot(
            x[keep],
            y[keep],
            lw=1.4,
            color=f"C{i % 10}",
            ls="--" if "ECAPA" in label else "-",
            label=f"{label} (EER {100 * eer:.1f}%)",
        )
    ticks = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8]
    ax.set_xticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_xlim(norm.ppf(lo), norm.ppf(hi))
    ax.set_ylim(norm.ppf(lo), norm.ppf(hi))
    ax.plot(ax.get_xlim(), ax.get_ylim(), ls=":", color="0.6", lw=0.8)
    ax.set_xlabel("False alarm rate (%)")
    ax.set_ylabel("Miss rate (%)")
    ax.grid(True, ls="--", lw=0.5, color="0.85")
    ax.legend(loc="lower left", fontsize=7.5)
    ax.set_title(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def baseline_scores(run_dir):
    """Write the template baseline's full-cosine score file, if missing.

    The template's ``evaluate`` writes metrics but no per-trial scores.
    This reloads the run (its saved ``hyperparams.yaml`` and the
    checkpoint with the lowest validation EER), embeds the held-out
    utterances whole as ``evaluate`` does, and writes
    ``<run_dir>/verification/full_cosine_scores.txt``.

    Arguments
    ---------
    run_dir : str
        A finished ``<out>/ecapa_aam/<seed>`` run.

    Returns
    -------
    str
        The score file.
    """
    import importlib.util

    import numpy as np
    import torch
    from hyperpyyaml import load_hyperpyyaml

    from dampit.dataio.prepare_folder import read_csv
    from dampit.dataio.trials import read_trials
    from dampit.inference.extract import embed_utterances
    from dampit.metrics.multicrop import write_scores

    path = os.path.join(run_dir, "verification", "full_cosine_scores.txt")
    if os.path.isfile(path):
        return path
    spec = importlib.util.spec_from_file_location(
        "template_train", os.path.join(TEMPLATE, "train.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with open(os.path.join(run_dir, "hyperparams.yaml")) as f:
        hp = load_hyperpyyaml(f)
    prep = mod.prepare_data(hp)  # cached: reads the run's split
    brain = mod.SpeakerBrain(
        modules=hp["modules"],
        hparams=hp,
        run_opts={"noprogressbar": True, "device": "cpu"},
        checkpointer=hp["checkpointer"],
    )
    if brain.checkpointer.recover_if_possible(min_key="EER") is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to score")
    brain.modules.eval()
    rows = read_csv(prep["test_csv"])
    trials = read_trials(prep["trials"], known_ids={r["ID"] for r in rows})
    with torch.no_grad():
        ids, emb, _ = embed_utterances(
            brain.compute_embeddings,
            rows,
            sample_rate=int(hp["sample_rate"]),
            batch_size=int(hp["test_batch_size"]),
            progress=False,
        )
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    index = {uid: k for k, uid in enumerate(ids)}
    enrol = np.array([index[t[1]] for t in trials])
    test = np.array([index[t[2]] for t in trials])
    scores = (emb[enrol] * emb[test]).sum(1)
    labels = np.array([t[0] for t in trials])
    write_scores(
        path, [t[1] for t in trials], [t[2] for t in trials], scores, labels
    )
    return path


def figure_seed(results):
    """The seed to draw: the smallest one with the most runs done.

    Arguments
    ---------
    results : dict
        ``{config: {seed: read_run(...) or None}}``.

    Returns
    -------
    int or None
        None when no run is done.

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


def write_figure(results, path, seed=None):
    """DET overlay of every config's full-cosine scores for one seed.

    Arguments
    ---------
    results : dict
        ``{config: {seed: read_run(...) or None}}``.
    path : str
        The PNG.
    seed : int, optional
        The seed to draw (default: :func:`figure_seed`).

    Returns
    -------
    (int or None, list of str)
        The seed drawn and the configs without a score file.
    """
    from dampit.metrics.multicrop import read_scores

    if seed is None:
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
    os.makedirs(os.path.dirname(path), exist_ok=True)
    plot_det_overlay(
        curves, path, f"dspspeech held-out trials, seed {seed}, full cosine"
    )
    return seed, absent


def replace_section(page, section):
    """Put ``section`` between the markers of ``page`` (or append it).

    Arguments
    ---------
    page : str
        The current page ('' when new).
    section : str
        The generated text.

    Returns
    -------
    str

    Example
    -------
    >>> p = "intro\\n" + MARK_BEGIN + "\\nold\\n" + MARK_END + "\\nend"
    >>> replace_section(p, "new").splitlines()
    ['intro', '<!-- ablation:begin -->', 'new', '<!-- ablation:end -->', 'end']
    """
    block = f"{MARK_BEGIN}\n{section.strip()}\n{MARK_END}"
    if MARK_BEGIN in page and MARK_END in page:
        head, rest = page.split(MARK_BEGIN, 1)
        _, tail = rest.split(MARK_END, 1)
        return head + block + tail
    return (page.rstrip() + "\n\n" if page.strip() else "") + block + "\n"


# --------------------------------------------------------------- running --
def _run_one(job):
    """Run one training subprocess; return (job, returncode, seconds)."""
    os.makedirs(job["out"], exist_ok=True)
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(job["threads"])
    env["MKL_NUM_THREADS"] = str(job["threads"])
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    start = time.time()
    with open(os.path.join(job["out"], "run.log"), "w") as log:
        log.write(" ".join(job["cmd"]) + "\n")
        log.flush()
        rc = subprocess.call(
            job["cmd"], cwd=REPO, env=env, stdout=log, stderr=log
        )
    return job, rc, time.time() - start


def default_data():
    """``$DAMPIT_DATA/dspspeech``, else ``../shared/data/dspspeech``."""
    root = os.environ.get("DAMPIT_DATA") or os.path.join(
        os.path.dirname(REPO), "shared", "data"
    )
    return os.path.join(root, "dspspeech")


def parse_args(argv):
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=default_data())
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--out", default=os.path.join(REPO, "results", "ablation"))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batches-per-epoch", type=int, default=20)
    p.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help="subset of the configurations (default: all)",
    )
    p.add_argument(
        "--results-md",
        default=os.path.join(RECIPE, "RESULTS.md"),
        help="page to update between its ablation markers ('' for none)",
    )
    p.add_argument(
        "--figure",
        default=os.path.join(RECIPE, "results", "ablation_det.png"),
    )
    p.add_argument(
        "--average-checkpoints",
        type=int,
        default=None,
        help="average_checkpoints of every dampit run (default: "
        "mini.yaml's; RESULTS.md uses 1, the best-valid checkpoint, as its "
        "5-epoch budget is too short to average 5 epochs)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="do not train: aggregate the runs already done",
    )
    args = p.parse_args(argv)
    if not os.path.isdir(args.data):
        p.error(f"--data {args.data}: no such folder")
    if args.jobs < 1 or args.epochs < 1 or args.batches_per_epoch < 1:
        p.error("--jobs, --epochs and --batches-per-epoch must be >= 1")
    if args.average_checkpoints is not None and args.average_checkpoints < 1:
        p.error("--average-checkpoints must be >= 1")
    return args


def main(argv=None):
    """Run the missing runs, then write the table and the figure."""
    from tqdm import tqdm

    args = parse_args(sys.argv[1:] if argv is None else argv)
    configs = ablation_configs()
    if args.average_checkpoints is not None:
        for overrides in configs.values():
            overrides["average_checkpoints"] = args.average_checkpoints
    configs[BASELINE] = {}  # the template: its own checkpoint selection
    if args.configs:
        unknown = sorted(set(args.configs) - set(configs))
        if unknown:
            raise SystemExit(
                f"--configs: unknown {unknown}; choose from {list(configs)}"
            )
        configs = {k: v for k, v in configs.items() if k in args.configs}
    threads = max(1, args.cores // args.jobs)
    run_dir = {
        (c, s): os.path.join(args.out, c, str(s))
        for c in configs
        for s in args.seeds
    }
    # Seed-major order: an interrupted call leaves whole seeds done.
    jobs = []
    for seed in args.seeds:
        for config, overrides in configs.items():
            out = run_dir[config, seed]
            if read_run(out, config) is not None:
                continue
            cmd = run_command(
                config,
                overrides,
                seed,
                args.data,
                out,
                args.epochs,
                args.batches_per_epoch,
            )
            jobs.append({"config": config, "seed": seed, "out": out})
            jobs[-1].update(cmd=cmd, threads=threads)
    n_all = len(run_dir)
    print(
        f"[run_ablation] {n_all} runs ({len(configs)} configs x "
        f"{len(args.seeds)} seeds), {n_all - len(jobs)} already done; "
        f"{args.jobs} in parallel, OMP_NUM_THREADS={threads}; "
        f"budget {args.epochs} epochs x {args.batches_per_epoch} batches",
        flush=True,
    )
    for name, ov in configs.items():
        what = ov or "(mini.yaml as is)"
        if name == BASELINE:
            what = os.path.relpath(ECAPA_YAML, REPO)
        print(f"  {name}: {what}", flush=True)
    failed = []
    if jobs and not args.report_only:
        start = time.time()
        bar = tqdm(total=len(jobs), unit="run", file=sys.stdout, mininterval=0)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(_run_one, j) for j in jobs]
            for fut in concurrent.futures.as_completed(futures):
                job, rc, secs = fut.result()
                ok = rc == 0 and read_run(job["out"], job["config"])
                if not ok:
                    failed.append(job)
                bar.update(1)
                bar.write(
                    f"[run_ablation] {job['config']} seed {job['seed']}: "
                    f"{'done' if ok else f'FAILED (rc {rc})'} in "
                    f"{secs / 60:.1f} min (total "
                    f"{(time.time() - start) / 60:.1f} min); log "
                    f"{os.path.join(job['out'], 'run.log')}"
                )
        bar.close()
        print(
            f"[run_ablation] wall time {(time.time() - start) / 60:.1f} min",
            flush=True,
        )
    results = {
        c: {s: read_run(run_dir[c, s], c) for s in args.seeds} for c in configs
    }
    agg = aggregate(results)
    table = markdown_table(agg)
    print(table)
    seed = figure_seed(results)
    r = results.get(BASELINE, {}).get(seed)
    if r is not None and r["scores"] is None:
        try:
            r["scores"] = baseline_scores(run_dir[BASELINE, seed])
        except Exception as err:  # the figure goes on without it
            print(f"[run_ablation] no baseline scores: {err}", flush=True)
    seed, absent = write_figure(results, args.figure, seed)
    if args.results_md:
        page = ""
        if os.path.isfile(args.results_md):
            with open(args.results_md, encoding="utf-8") as f:
                page = f.read()
        rel_fig = os.path.relpath(
            args.figure, os.path.dirname(os.path.abspath(args.results_md))
        )
        note = ""
        if absent:
            note = (
                " Not drawn (no score file for this seed): "
                + ", ".join(LABELS.get(c, c) for c in absent)
                + "."
            )
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
        atomic_write_text(args.results_md, replace_section(page, section))
        print(f"[run_ablation] wrote {args.results_md}", flush=True)
    if failed:
        print(
            "[run_ablation] failed runs: "
            + ", ".join(f"{j['config']}/{j['seed']}" for j in failed),
            flush=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
