"""Run folders, tables, DET figure and page sections of ``run_ablation.py``.

Per-seed results (:func:`read_run`) become a table of means and
sample standard deviations over seeds, a per-seed table and a DET overlay
of one seed; each goes between its markers of a Markdown page.
"""

import json
import math
import os
import statistics

import matplotlib
import numpy as np
from scipy.stats import norm

from dampit.dataio.trials import read_scores
from dampit.metrics.error_rates import compute_eer, det_curve
from dampit.utils.atomic import atomic_path, atomic_write_text

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)
BASELINE = "ecapa_aam"
SCORINGS = ("full_cosine", "multicrop_cosine", "multicrop_dot")
LABELS = {  # in table order: Table 2, gates, the stock baseline
    "softmax_only": "softmax only",
    "softmax_triplet": "softmax + triplet",
    "softmax_npair": "softmax + n-pair",
    "softmax_angular": "softmax + angular",
    "all_four": "all four (mini.yaml)",
    "no_gates": "all four, no gates",
    "ecapa_aam": "ECAPA-TDNN + AAM (template)",
    "resemblyzer": "Resemblyzer (off the shelf, no training)",
}
MARKS = {
    m: (f"<!-- {m}:begin -->", f"<!-- {m}:end -->")
    for m in ("ablation", "kfold")
}


def read_run(run_dir, config):
    """``{scoring: {"eer": %, "min_dcf_0.01", "min_dcf_0.05"}, "scores":
    full-cosine score file or None}`` of a finished run, else None.

    A run's ``verification/summary.json`` must have ``trials/full_cosine``;
    the multi-crop scorings are read where it has them (an encoder scored
    without training, such as an off-the-shelf one, has only the first).
    """
    ver = os.path.join(run_dir, "verification")
    keys = ("eer", "min_dcf_0.01", "min_dcf_0.05")
    if config == BASELINE:
        if not os.path.isfile(os.path.join(run_dir, "results.json")):
            return None
        path = os.path.join(ver, "full_cosine_metrics.json")
        with open(path, encoding="utf-8") as f:
            reports = {"full_cosine": json.load(f)}
    else:
        path = os.path.join(ver, "summary.json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
        reports = {
            scoring: summary[f"trials/{scoring}"]
            for scoring in SCORINGS
            if f"trials/{scoring}" in summary
        }
    if "full_cosine" not in reports:
        raise KeyError(f"{path}: no 'trials/full_cosine'")
    for scoring, rep in reports.items():
        missing = [k for k in keys if k not in rep]
        if missing:
            raise KeyError(f"{path}: {scoring} has no {', '.join(missing)}")
    out = {
        scoring: {k: float(rep[k]) * (100.0 if k == "eer" else 1) for k in keys}
        for scoring, rep in reports.items()
    }
    out["score_files"] = {}
    for scoring, rep in reports.items():
        path = rep.get("scores_txt")
        # A moved or copied run records its old folder: read its own file.
        _, inside, tail = (path or "").rpartition("verification" + os.sep)
        if inside:
            path = os.path.join(ver, tail)
        elif path and not os.path.isabs(path):
            path = os.path.join(REPO, path)
        out["score_files"][scoring] = (
            path if path and os.path.isfile(path) else None
        )
    out["scores"] = out["score_files"]["full_cosine"]
    return out


def fold_scores(run_dir, config, n_folds, fold, scoring="full_cosine"):
    """The ``scoring`` score file of a finished k-fold run (None: not
    finished); a run not prepared as fold ``fold`` of ``n_folds`` (a
    script that ignores the keys) is refused."""
    r = read_run(run_dir, config)
    if r is None:
        return None
    path = os.path.join(run_dir, "prepared", "prepare_opts.json")
    with open(path, encoding="utf-8") as f:
        opts = json.load(f)["opts"]
    if (opts.get("n_folds"), opts.get("fold")) != (n_folds, fold):
        raise SystemExit(f"{path}: not prepared as fold {fold} of {n_folds}")
    return r["score_files"].get(scoring)


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
            {k for r in done.values() for k in r} - {"scores", "score_files"}
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


def plot_intervals(rows, path, title):
    """Pooled EERs and their differences from the reference, each with its
    95 % interval (``{"pooled": [...], "diffs": [...]}`` of
    ``kfold_stats.kfold_report``), side by side, written to ``path``."""
    panels = [(k, rows[k]) for k in ("pooled", "diffs") if rows[k]]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(11, 3.6), dpi=80, layout="constrained"
    )
    for ax, (kind, items) in zip(np.atleast_1d(axes), panels):
        y = np.arange(len(items))[::-1]
        v, lo, hi = (np.array([r[i] for r in items]) for i in (1, 2, 3))
        ax.errorbar(v, y, xerr=[v - lo, hi - v], fmt="o", capsize=3)
        names = [r[0].split(" − ")[0] for r in items]  # diffs: "a − ref"
        ax.set_yticks(y, names, fontsize=7.5)
        label = "pooled EER (%)"
        if kind == "diffs":
            ax.axvline(0.0, color="0.5", lw=0.8, ls=":")
            label = f"ΔEER minus {items[0][0].split(' − ')[1]} (points)"
        ax.set_xlabel(label + ", 95 % interval", fontsize=8.5)
        ax.grid(True, axis="x", ls="--", lw=0.5, color="0.85")
    fig.suptitle(title, fontsize=10)
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


def replace_section(page, section, marks=MARKS["ablation"]):
    """Put ``section`` between the ``marks`` of ``page`` (or append it).

    Example
    -------
    >>> b, e = MARKS["ablation"]
    >>> replace_section("intro\\n" + b + "\\nold\\n" + e + "\\nend", "new")
    'intro\\n<!-- ablation:begin -->\\nnew\\n<!-- ablation:end -->\\nend'
    """
    begin, end = marks
    block = f"{begin}\n{section.strip()}\n{end}"
    if begin in page and end in page:
        head, rest = page.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return (page.rstrip() + "\n\n" if page.strip() else "") + block + "\n"


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
