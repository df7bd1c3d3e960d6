"""Exact, sort-based verification error rates: EER, minDCF and DET curves.

The scores are sorted once (O(N log N)); every operating point is read off
cumulative counts, with tied scores accepted or rejected together. As in
``speechbrain.utils.metric_stats``, a trial is accepted when ``score >
threshold``; the thresholds are ``-inf`` (accept all) and the distinct
scores ``s_1 < ... < s_G`` (``s_G`` rejects all), and
``FNR(t) = #{targets <= t} / #targets``, ``FPR(t) = #{non-targets > t} /
#non-targets``. SpeechBrain's midpoints between scores add no new point.

``compute_eer(method="closest")`` is SpeechBrain's ``EER`` computed exactly
(integer comparisons; the lowest threshold wins a tie): ``(FPR + FNR) / 2``
where ``|FPR - FNR|`` is smallest. ``method="interp"`` is the exact
crossing on the segment between the two points around it (the usual
``brentq`` on the ROC). ``compute_min_dcf(normalize=False)`` is the
unnormalised minimum cost over every threshold, accept-all included:
SpeechBrain's ``minDCF`` leaves accept-all out, so it is higher when
accepting every trial is cheapest (never at the default costs); the
default divides it by ``min(c_miss * p_target, c_fa * (1 - p_target))``,
as NIST and VoxCeleb report it.
"""

import numpy as np

from dampit.inference.embedding_store import as_numpy

__all__ = ["compute_eer", "compute_min_dcf", "det_curve", "operating_points"]


def validate_scores_labels(scores, labels):
    """Scores as float64 [N] and labels as bool [N], checked.

    Raises ValueError (naming the first bad index) for a shape mismatch,
    NaN/inf scores, labels other than 0/1, or a missing class.

    Example
    -------
    >>> validate_scores_labels([0.5, 0.1], [[1], [0]])[1].tolist()
    [True, False]
    """
    arr = []
    for name, x in (("scores", scores), ("labels", labels)):
        try:
            a = as_numpy(x)
        except ValueError as exc:  # ragged lists
            raise ValueError(f"{name}: cannot convert to an array: {exc}")
        a = a[:, 0] if a.ndim == 2 and a.shape[1] == 1 else a
        if a.ndim != 1 or a.dtype.kind not in "biuf":
            raise ValueError(
                f"{name} must be numbers, 1-D ([N] or [N, 1]), got "
                f"{a.dtype} {a.shape}"
            )
        arr.append(a)
    s, lab = arr[0].astype(np.float64), arr[1]
    if s.shape != lab.shape:
        raise ValueError(f"{s.size} scores, {lab.size} labels: must match")
    checks = [
        ("scores", s, ~np.isfinite(s), "finite"),
        ("labels", lab, (lab != 0) & (lab != 1), "0 or 1"),
    ]
    for name, x, bad, what in checks:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name} must be {what}: {bad.sum()} are not, the first at "
                f"index {i} ({x[i]!r})"
            )
    lab = lab == 1
    if lab.all() or not lab.any():
        raise ValueError(
            f"no {'non-' if lab.all() else ''}target trials among {lab.size}: "
            "EER and minDCF need both targets and non-targets"
        )
    return s, lab


def operating_points(scores, labels):
    """Thresholds (``-inf``, then the distinct scores ascending), misses and
    false alarms at each (``score > threshold`` accepted), and the class
    sizes.

    Example
    -------
    >>> t, miss, fa, n_tar, n_non = operating_points(
    ...     [0.1, 0.4, 0.4, 0.9], [0, 1, 0, 1]
    ... )
    >>> t.tolist(), miss.tolist(), fa.tolist()
    ([-inf, 0.1, 0.4, 0.9], [0, 0, 1, 2], [2, 1, 0, 0])
    """
    s, lab = validate_scores_labels(scores, labels)
    order = np.argsort(s, kind="stable")
    s, lab = s[order], lab[order]
    n_tar = int(lab.sum())
    n_non = lab.size - n_tar
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # end of each tie
    n_miss = np.r_[0, np.cumsum(lab, dtype=np.int64)[last]]
    n_fa = n_non - (np.r_[0, last + 1] - n_miss)
    return np.r_[-np.inf, s[last]], n_miss, n_fa, n_tar, n_non


def det_curve(scores, labels):
    """False-alarm rate (1 down to 0), miss rate (0 up to 1) and thresholds
    of every operating point.

    Example
    -------
    >>> fpr, fnr, thr = det_curve([0.2, 0.8, 0.5], [0, 1, 1])
    >>> fpr.tolist(), fnr.tolist()
    ([1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 1.0])
    """
    thr, n_miss, n_fa, n_tar, n_non = operating_points(scores, labels)
    return n_fa / n_non, n_miss / n_tar, thr


def compute_eer(scores, labels, method="closest"):
    """Equal error rate and its threshold, exact.

    Arguments
    ---------
    scores, labels : array-like or torch.Tensor
        [N] scores (higher: target) and 0/1 labels.
    method : str
        ``"closest"`` (SpeechBrain's) or ``"interp"`` (module docstring).

    Returns
    -------
    eer : float
    threshold : float
        Accept ``score > threshold``.

    Example
    -------
    >>> scores, labels = [0.1, 0.2, 0.3, 0.4, 0.5], [0, 1, 0, 0, 1]
    >>> compute_eer(scores, labels)
    (0.5833333333333333, 0.2)
    >>> compute_eer(scores, labels, method="interp")
    (0.5, 0.25)
    """
    if method not in ("closest", "interp"):
        raise ValueError(
            f"method must be 'closest' or 'interp', got {method!r}"
        )
    thr, n_miss, n_fa, n_tar, n_non = operating_points(scores, labels)
    # (FPR - FNR) * n_tar * n_non in exact integers: ties found exactly.
    diff = n_fa * n_tar - n_miss * n_non
    if method == "closest":  # accept-all (k = 0) never wins, as in SB
        k = 1 + int(np.argmin(np.abs(diff[1:])))
        return float(0.5 * (n_fa[k] / n_non + n_miss[k] / n_tar)), float(thr[k])
    k = int(np.argmax(diff <= 0))  # diff[0] > 0 > diff[-1], non-increasing
    if diff[k] == 0:
        return float(n_fa[k] / n_non), float(thr[k])
    lam = float(diff[k - 1]) / float(diff[k - 1] - diff[k])
    fpr0, fpr1 = n_fa[k - 1] / n_non, n_fa[k] / n_non
    t0, t1 = thr[k - 1], thr[k]
    t = t1 if not np.isfinite(t0) else t0 + lam * (t1 - t0)
    return float(fpr0 + lam * (fpr1 - fpr0)), float(t)


def compute_min_dcf(
    scores, labels, p_target=0.01, c_miss=1.0, c_fa=1.0, normalize=True
):
    """Minimum detection cost over all thresholds, exact.

    ``c_miss * p_target * FNR + c_fa * (1 - p_target) * FPR``, minimised;
    ``normalize`` divides by the best score-blind cost (NIST, VoxCeleb);
    ``normalize=False``: unnormalised (SpeechBrain's ``minDCF`` but for
    the accept-all threshold, which SpeechBrain leaves out).

    Returns
    -------
    min_dcf : float
    threshold : float
        The lowest score reaching the minimum (as SpeechBrain), ``-inf``
        when accepting every trial is strictly cheaper.

    Example
    -------
    >>> scores, labels = [0.1, 0.2, 0.3, 0.4, 0.5], [0, 1, 0, 1, 1]
    >>> compute_min_dcf(scores, labels, p_target=0.5)
    (0.3333333333333333, 0.3)
    >>> compute_min_dcf(scores, labels, p_target=0.5, normalize=False)
    (0.16666666666666666, 0.3)
    """
    if not (0.0 < p_target < 1.0 and 0 < c_miss < np.inf and 0 < c_fa < np.inf):
        raise ValueError(
            f"need 0 < p_target < 1 and positive finite costs, got "
            f"p_target={p_target}, c_miss={c_miss}, c_fa={c_fa}"
        )
    thr, n_miss, n_fa, n_tar, n_non = operating_points(scores, labels)
    w_miss, w_fa = c_miss * p_target, c_fa * (1.0 - p_target)
    cost = w_miss * (n_miss / n_tar) + w_fa * (n_fa / n_non)
    k = 1 + int(np.argmin(cost[1:]))  # SpeechBrain's points first
    k = 0 if cost[0] < cost[k] else k
    c = float(cost[k]) / (min(w_miss, w_fa) if normalize else 1.0)
    return c, float(thr[k])
