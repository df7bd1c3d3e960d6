"""Run folders, figure and page section of ``run_ablation.py``.

:func:`read_run` and :func:`fold_scores` find a finished run's score
files; :func:`plot_intervals` draws the k-fold tables' EER rows and
:func:`replace_section` puts the tables between the page's markers.
"""

import json
import os

import matplotlib
import numpy as np

from dampit.utils.atomic import atomic_path

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
MARKS = ("<!-- kfold:begin -->", "<!-- kfold:end -->")


def read_run(run_dir, config):
    """``{scoring: score file or None}`` of a finished run, else None.

    A run's ``verification/summary.json`` must have ``trials/full_cosine``;
    the multi-crop scorings are read where it has them (an encoder scored
    without training, such as an off-the-shelf one, has only the first).
    The template's run (``BASELINE``) is read from its ``results.json``
    and ``verification/full_cosine_metrics.json``.
    """
    ver = os.path.join(run_dir, "verification")
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
    out = {}
    for scoring, rep in reports.items():
        path = rep.get("scores_txt")
        # A moved or copied run records its old folder: read its own file.
        _, inside, tail = (path or "").rpartition("verification" + os.sep)
        if inside:
            path = os.path.join(ver, tail)
        elif path and not os.path.isabs(path):
            path = os.path.join(REPO, path)
        out[scoring] = path if path and os.path.isfile(path) else None
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
    return r.get(scoring)


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


def replace_section(page, section):
    """Put ``section`` between the k-fold ``MARKS`` of ``page`` (or append
    it).

    Example
    -------
    >>> b, e = MARKS
    >>> replace_section("intro\\n" + b + "\\nold\\n" + e + "\\nend", "new")
    'intro\\n<!-- kfold:begin -->\\nnew\\n<!-- kfold:end -->\\nend'
    """
    begin, end = MARKS
    block = f"{begin}\n{section.strip()}\n{end}"
    if begin in page and end in page:
        head, rest = page.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return (page.rstrip() + "\n\n" if page.strip() else "") + block + "\n"
