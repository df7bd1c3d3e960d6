"""The verification report of a scored trial list: metrics (EER, minDCF
and their thresholds) as JSON, the DET curve and score histogram as PNG
and, given the trial IDs, the score file; every file written atomically."""

import json
import math
import os

import numpy as np

from dampit.dataio.trials import write_scores
from dampit.metrics.error_rates import (
    compute_eer,
    compute_min_dcf,
    validate_scores_labels,
)
from dampit.metrics.plots import plot_det, plot_score_histogram
from dampit.utils.atomic import atomic_write_text

__all__ = ["write_report"]


def write_report(
    scores,
    labels,
    out_dir,
    name,
    trial_ids,
    p_targets=(0.01, 0.05),
):
    """Write ``<name>_metrics.json``, ``_det.png``, ``_hist.png`` and
    ``_scores.txt`` (``trial_ids``: ``(enrol, test)`` per trial) into
    ``out_dir``; return the metrics (rates as fractions; minDCF normalised,
    thresholds: accept ``score > threshold``, null for -inf) and paths.

    Example
    -------
    >>> import tempfile
    >>> ids = [("e1", "t1"), ("e1", "t2"), ("e2", "t1"), ("e2", "t3")]
    >>> s, lab = [0.9, 0.4, 0.5, 0.1], [1, 1, 0, 0]
    >>> r = write_report(s, lab, tempfile.mkdtemp(), "full_cosine", ids)
    >>> r["eer"], r["n_target"], r["min_dcf_0.01"]
    (0.5, 2, 0.5)
    """
    s, lab = validate_scores_labels(scores, labels)
    if len(trial_ids) != s.size:
        raise ValueError(f"{len(trial_ids)} trial IDs for {s.size} scores")
    os.makedirs(out_dir, exist_ok=True)
    eer, eer_thr = compute_eer(s, lab)
    r = {"name": name, "n_trials": int(s.size), "n_target": int(lab.sum())}
    r.update(n_nontarget=int((~lab).sum()), eer=eer, eer_threshold=eer_thr)
    r["eer_interp"] = compute_eer(s, lab, method="interp")[0]
    for pt in p_targets:
        r[f"min_dcf_{pt:g}"], r[f"min_dcf_{pt:g}_threshold"] = compute_min_dcf(
            s, lab, p_target=pt
        )
    for key in r:  # JSON has no -inf
        if isinstance(r[key], float) and not math.isfinite(r[key]):
            r[key] = None
    path = os.path.join(os.fspath(out_dir), name + "_{}").format
    r["det_png"] = plot_det(s, lab, path("det.png"), f"{name}: DET", p_targets)
    r["hist_png"] = plot_score_histogram(
        s, lab, path("hist.png"), f"{name}: score histogram"
    )
    e, t = zip(*trial_ids)
    r["scores_txt"] = path("scores.txt")
    write_scores(r["scores_txt"], e, t, s, lab.astype(np.int64))
    r["metrics_json"] = path("metrics.json")
    atomic_write_text(r["metrics_json"], json.dumps(r, indent=2))
    return r
