"""DET curves and score histograms as PNG files (matplotlib's object API
on the Agg canvas; files written atomically)."""

import math
import os

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import norm

from dampit.metrics.error_rates import (
    compute_eer,
    compute_min_dcf,
    det_curve,
    validate_scores_labels,
)
from dampit.utils.atomic import atomic_path

__all__ = ["plot_det", "plot_score_histogram"]

# Axis ticks of a DET plot, in percent.
_DET_TICKS = [0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 40, 60, 80]


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return os.fspath(path)


def plot_det(scores, labels, path, title=None, p_targets=(0.01, 0.05)):
    """Save the DET curve (miss vs false-alarm rate on normal-deviate
    axes) with the EER and the minDCF point of every ``p_target`` marked.

    Example
    -------
    >>> import tempfile
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
    marks = [compute_min_dcf(s, lab, p_target=pt) for pt in p_targets]
    ks = [int(np.searchsorted(thr, t)) for _, t in marks]
    # Lower limit: ~10 errors of the smaller class, or lower to show the
    # marked points; from 0.01 to 1 %.
    shown = [v for k in ks for v in (fpr[k], fnr[k], eer) if v > 0]
    lo_pct = min(
        [1000.0 / min(lab.sum(), (~lab).sum())] + [100 * v for v in shown]
    )
    lo_pct = min(1.0, max(0.01, 10 ** math.floor(math.log10(lo_pct))))
    lo, hi = lo_pct / 100.0, 0.8

    def dev(p):
        return norm.ppf(np.clip(p, lo, hi))

    fig = Figure(figsize=(6, 6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(dev(fpr), dev(fnr), lw=1.5, label="DET")
    ax.plot([dev(lo), dev(hi)], [dev(lo), dev(hi)], ls=":", color="0.6")
    ax.plot(dev(eer), dev(eer), "oC3", label=f"EER = {100 * eer:.2f}%")
    for i, (pt, (dcf, _), k) in enumerate(zip(p_targets, marks, ks)):
        style, text = (
            "s^Dv"[i % 4] + f"C{i + 1}",
            f"minDCF(p={pt:g}) = {dcf:.4f}",
        )
        ax.plot(dev(fpr[k]), dev(fnr[k]), style, label=text)
    ticks = [t for t in _DET_TICKS if lo_pct <= t <= hi * 100]
    pos, names = dev(np.asarray(ticks) / 100), [f"{t:g}" for t in ticks]
    ax.set(xticks=pos, xticklabels=names, yticks=pos, yticklabels=names)
    ax.set(xlim=(dev(lo), dev(hi)), ylim=(dev(lo), dev(hi)))
    ax.set(xlabel="False alarm rate (%)", ylabel="Miss rate (%)")
    ax.grid(True, ls="--", lw=0.5, color="0.8")
    ax.legend(loc="upper right", fontsize=9)
    ax.set_title(title or f"DET: {lab.sum()} targets, {(~lab).sum()} others")
    return _save(fig, path)


def plot_score_histogram(scores, labels, path, title=None, bins=100):
    """Save the target and non-target score densities, with the EER
    threshold marked.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "hist.png")
    >>> _ = plot_score_histogram([0.9, 0.8, 0.1, 0.3, 0.2], [1, 1, 0, 0, 0], p)
    >>> os.path.getsize(p) > 0
    True
    """
    s, lab = validate_scores_labels(scores, labels)
    lo, hi = (
        (s.min(), s.max()) if s.min() < s.max() else (s[0] - 0.5, s[0] + 0.5)
    )
    eer, thr = compute_eer(s, lab)
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for mask, name in ((~lab, "non-target"), (lab, "target")):
        ax.hist(
            s[mask],
            bins=np.linspace(lo, hi, int(bins) + 1),
            density=True,
            alpha=0.55,
            label=f"{name} ({mask.sum()})",
        )
    ax.axvline(thr, color="C3", ls="--", lw=1, label=f"EER threshold {thr:.4g}")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.legend(fontsize=9)
    ax.set_title(title or f"Scores (EER {100 * eer:.2f}%)")
    return _save(fig, path)
