"""DET curves, score histograms and a one-call verification report
(matplotlib's object API on the Agg canvas; files written atomically)."""

import json
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import norm

from dampit.dataio.trials import write_scores
from dampit.metrics.error_rates import (
    compute_eer,
    compute_min_dcf,
    det_curve,
    validate_scores_labels,
)
from dampit.utils.atomic import atomic_path, atomic_write_text

__all__ = ["plot_det", "plot_score_histogram", "write_report"]

# Axis ticks of a DET plot, in percent.
_DET_TICKS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40, 60, 80]


def _figure(figsize):
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def _thin(x, y, step):
    """Indices of a polyline thinned to about ``step`` between points."""
    if x.size <= 2000:
        return np.arange(x.size)
    seg = np.hypot(np.diff(x), np.diff(y))
    cum = np.r_[0.0, np.cumsum(seg)]
    bucket = np.floor(cum / step)
    keep = np.r_[True, bucket[1:] != bucket[:-1]]
    keep[-1] = True
    return np.flatnonzero(keep)


def plot_det(
    scores,
    labels,
    path,
    title=None,
    p_targets=(0.01, 0.05),
    label=None,
):
    """Save the DET curve (miss vs false-alarm rate on normal-deviate
    axes) with the EER and the minDCF point of every ``p_target`` marked.

    Arguments
    ---------
    scores : array-like or torch.Tensor
        Trial scores [N].
    labels : array-like or torch.Tensor
        1 for targets, 0 for non-targets.
    path : str or os.PathLike
        Output PNG (written atomically).
    title : str, optional
        Figure title.
    p_targets : sequence of float
        Priors whose minDCF points are marked.
    label : str, optional
        Legend label of the curve.

    Returns
    -------
    str
        ``path``.

    Example
    -------
    >>> import os, tempfile, numpy as np
    >>> rng = np.random.default_rng(0)
    >>> s = np.r_[rng.normal(2, 1, 200), rng.normal(0, 1, 800)]
    >>> lab = np.r_[np.ones(200), np.zeros(800)]
    >>> p = plot_det(s, lab, os.path.join(tempfile.mkdtemp(), "det.png"))
    >>> os.path.getsize(p) > 0
    True
    """
    s, lab = validate_scores_labels(scores, labels)
    fpr, fnr, thr = det_curve(s, lab)
    eer, _ = compute_eer(s, lab)
    marks = []  # (fpr, fnr, legend) of the minDCF points
    for pt in p_targets:
        dcf, t = compute_min_dcf(s, lab, p_target=pt)
        k = int(np.searchsorted(thr, t))
        marks.append((fpr[k], fnr[k], f"minDCF(p={pt:g}) = {dcf:.4f}"))
    # Lower axis limit: where the smaller class still has ~10 errors, or
    # lower to show the marked points (never below 0.01 %).
    n = min(lab.sum(), (~lab).sum())
    lo_pct = 10 ** math.floor(math.log10(1000.0 / n))
    shown = [v for m in marks for v in m[:2] if v > 0] + [eer]
    if shown and min(shown) > 0:
        lo_pct = min(lo_pct, 10 ** math.floor(math.log10(100 * min(shown))))
    lo_pct = min(1.0, max(_DET_TICKS[0], lo_pct))
    lo, hi = lo_pct / 100.0, 0.8
    ticks = [t for t in _DET_TICKS if lo_pct <= t <= hi * 100]
    if lo_pct < 0.1:  # keep the crowded low end readable
        ticks = [t for t in ticks if t not in (0.02, 0.05, 0.2)]

    def dev(p):
        return norm.ppf(np.clip(p, lo, hi))

    x, y = dev(fpr), dev(fnr)
    idx = _thin(x, y, (dev(hi) - dev(lo)) / 1000.0)
    fig = _figure((6, 6))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x[idx], y[idx], lw=1.5, color="C0", label=label or "DET")
    ax.plot([dev(lo), dev(hi)], [dev(lo), dev(hi)], ls=":", color="0.6")
    ax.plot(
        dev(eer),
        dev(eer),
        "o",
        color="C3",
        ms=7,
        label=f"EER = {100 * eer:.2f}%",
    )
    for i, (x_fa, y_miss, text) in enumerate(marks):
        ax.plot(
            dev(x_fa),
            dev(y_miss),
            "s^Dv"[i % 4],
            color=f"C{(i + 1) % 10}",
            ms=7,
            label=text,
        )
    tick_pos = dev(np.asarray(ticks) / 100.0)
    tick_lab = [f"{t:g}" for t in ticks]
    ax.set_xticks(tick_pos, tick_lab)
    ax.set_yticks(tick_pos, tick_lab)
    ax.set_xlim(dev(lo), dev(hi))
    ax.set_ylim(dev(lo), dev(hi))
    ax.set_xlabel("False alarm rate (%)")
    ax.set_ylabel("Miss rate (%)")
    ax.grid(True, ls="--", lw=0.5, color="0.8")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=9)
    ax.set_title(
        title
        or f"DET: {int(lab.sum())} targets, {int((~lab).sum())} non-targets"
    )
    _save(fig, path)
    return os.fspath(path)


def plot_score_histogram(scores, labels, path, title=None, bins=100):
    """Save the target and non-target score densities, with the EER
    threshold marked.

    Arguments
    ---------
    scores : array-like or torch.Tensor
        Trial scores [N].
    labels : array-like or torch.Tensor
        1 for targets, 0 for non-targets.
    path : str or os.PathLike
        Output PNG (written atomically).
    title : str, optional
        Figure title.
    bins : int
        Number of bins over the whole score range.

    Returns
    -------
    str
        ``path``.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "hist.png")
    >>> _ = plot_score_histogram([0.9, 0.8, 0.1, 0.3, 0.2], [1, 1, 0, 0, 0], p)
    >>> os.path.getsize(p) > 0
    True
    """
    s, lab = validate_scores_labels(scores, labels)
    edges = np.linspace(s.min(), s.max(), int(bins) + 1)
    if edges[0] == edges[-1]:
        edges = np.linspace(s[0] - 0.5, s[0] + 0.5, int(bins) + 1)
    eer, thr = compute_eer(s, lab)
    fig = _figure((7, 4))
    ax = fig.add_subplot(1, 1, 1)
    for mask, name, color in (
        (~lab, "non-target", "C0"),
        (lab, "target", "C1"),
    ):
        ax.hist(
            s[mask],
            bins=edges,
            density=True,
            alpha=0.55,
            color=color,
            label=f"{name} ({int(mask.sum())})",
        )
    ax.axvline(thr, color="C3", ls="--", lw=1, label=f"EER threshold {thr:.4g}")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.legend(fontsize=9)
    ax.set_title(title or f"Scores (EER {100 * eer:.2f}%)")
    _save(fig, path)
    return os.fspath(path)


def _json_float(v):
    v = float(v)
    return v if math.isfinite(v) else None


def write_report(
    scores,
    labels,
    out_dir,
    name="scores",
    trial_ids=None,
    p_targets=(0.01, 0.05),
):
    """Metrics JSON, DET curve, score histogram (and score file) of a run.

    Writes ``<out_dir>/<name>_metrics.json``, ``<name>_det.png``,
    ``<name>_hist.png`` and, given ``trial_ids``, ``<name>_scores.txt``
    (``enrol test label score`` a line), all atomically.

    Arguments
    ---------
    scores : array-like or torch.Tensor
        Trial scores [N].
    labels : array-like or torch.Tensor
        1 for targets, 0 for non-targets.
    out_dir : str or os.PathLike
        Output folder (created if needed).
    name : str
        File-name prefix.
    trial_ids : sequence of (str, str), optional
        ``(enrol_id, test_id)`` of every trial: write the score file.
    p_targets : sequence of float
        Priors for minDCF (default 0.01 and 0.05; c_miss = c_fa = 1).

    Returns
    -------
    dict
        ``n_trials``, ``n_target``, ``n_nontarget``, ``eer`` and
        ``eer_threshold`` (SpeechBrain's definition), ``eer_interp``,
        ``min_dcf_<p>`` and ``min_dcf_<p>_threshold`` for every prior
        (normalised minDCF, e.g. ``min_dcf_0.01``; thresholds: accept
        ``score > threshold``, null for -inf), and the file paths. Rates
        are fractions, not %.

    Example
    -------
    >>> import tempfile
    >>> r = write_report([0.9, 0.4, 0.5, 0.1], [1, 1, 0, 0], tempfile.mkdtemp())
    >>> r["eer"], r["n_target"], r["min_dcf_0.01"]
    (0.5, 2, 0.5)
    """
    s, lab = validate_scores_labels(scores, labels)
    if trial_ids is not None and len(trial_ids) != s.size:
        raise ValueError(f"{len(trial_ids)} trial IDs for {s.size} scores")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    eer, eer_thr = compute_eer(s, lab)
    eer_interp, _ = compute_eer(s, lab, method="interp")
    report = {
        "name": name,
        "n_trials": int(s.size),
        "n_target": int(lab.sum()),
        "n_nontarget": int((~lab).sum()),
        "eer": eer,
        "eer_threshold": _json_float(eer_thr),
        "eer_interp": eer_interp,
    }
    for pt in p_targets:
        dcf, t = compute_min_dcf(s, lab, p_target=pt)
        report[f"min_dcf_{pt:g}"] = dcf
        report[f"min_dcf_{pt:g}_threshold"] = _json_float(t)
    det = os.path.join(out_dir, f"{name}_det.png")
    hist = os.path.join(out_dir, f"{name}_hist.png")
    plot_det(s, lab, det, title=f"{name}: DET", p_targets=p_targets)
    plot_score_histogram(s, lab, hist, title=f"{name}: score histogram")
    report["det_png"] = det
    report["hist_png"] = hist
    if trial_ids is not None:
        report["scores_txt"] = os.path.join(out_dir, f"{name}_scores.txt")
        write_scores(
            report["scores_txt"],
            [t[0] for t in trial_ids],
            [t[1] for t in trial_ids],
            s,
            lab.astype(np.int64),
        )
    report["metrics_json"] = os.path.join(out_dir, f"{name}_metrics.json")
    atomic_write_text(report["metrics_json"], json.dumps(report, indent=2))
    return report
