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
``brentq`` on the ROC). ``compute_min_dcf(normalize=False)`` is
SpeechBrain's ``minDCF``; the default divides it by ``min(c_miss *
p_target, c_fa * (1 - p_target))``, as NIST and VoxCeleb report it.
"""

import numpy as np

__all__ = [
    "compute_eer",
    "compute_min_dcf",
    "det_curve",
    "operating_points",
    "validate_scores_labels",
]


def _to_numpy(x, name):
    """Convert a tensor, array or sequence to a 1-D numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists, strings mixed with numbers
        raise ValueError(f"{name}: cannot convert to an array: {exc}")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D ([N] or [N, 1]), got shape {arr.shape}"
        )
    return arr


def validate_scores_labels(scores, labels):
    """Check and convert verification scores and labels.

    Arguments
    ---------
    scores : array-like or torch.Tensor
        Trial scores, [N] or [N, 1]; higher means "more likely target".
    labels : array-like or torch.Tensor
        1 (or True) for target trials, 0 (or False) for non-targets,
        [N] or [N, 1].

    Returns
    -------
    scores : numpy.ndarray
        float64 [N].
    labels : numpy.ndarray
        bool [N].

    Raises
    ------
    ValueError
        Shape mismatch, NaN or infinite scores (the message names the first
        bad index), labels other than 0/1, no targets or no non-targets.

    Example
    -------
    >>> s, l = validate_scores_labels([0.5, 0.1], [1, 0])
    >>> s.dtype, l.tolist()
    (dtype('float64'), [True, False])
    """
    s = _to_numpy(scores, "scores")
    lab = _to_numpy(labels, "labels")
    if s.shape != lab.shape:
        raise ValueError(
            f"scores and labels differ in length: {s.shape[0]} scores, "
            f"{lab.shape[0]} labels"
        )
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == bool):
        raise ValueError(f"scores must be numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    bad = ~np.isfinite(s)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"scores must be finite: {int(bad.sum())} NaN/inf score(s), "
            f"the first at index {i} (value {s[i]})"
        )
    if lab.dtype != bool:
        if not np.issubdtype(lab.dtype, np.number):
            raise ValueError(f"labels must be 0/1, got dtype {lab.dtype}")
        ok = (lab == 0) | (lab == 1)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise ValueError(
                f"labels must be 0 or 1, got {lab[i]!r} at index {i}"
            )
        lab = lab == 1
    n_tar = int(lab.sum())
    if n_tar == 0:
        raise ValueError(
            f"no target trials (label 1) among {lab.size} trials: EER and "
            "minDCF need both targets and non-targets"
        )
    if n_tar == lab.size:
        raise ValueError(
            f"no non-target trials (label 0) among {lab.size} trials: EER "
            "and minDCF need both targets and non-targets"
        )
    return s, lab


def operating_points(scores, labels):
    """Miss and false-alarm counts at every distinct threshold.

    Arguments
    ---------
    scores : array-like or torch.Tensor
        Trial scores [N].
    labels : array-like or torch.Tensor
        1 for targets, 0 for non-targets [N].

    Returns
    -------
    thresholds : numpy.ndarray
        float64 [G + 1]: ``-inf`` then the G distinct scores, ascending.
        At threshold t, trials with ``score > t`` are accepted.
    n_miss : numpy.ndarray
        int64 [G + 1], targets rejected (non-decreasing, 0 to n_tar).
    n_fa : numpy.ndarray
        int64 [G + 1], non-targets accepted (non-increasing, n_non to 0).
    n_tar : int
        Number of targets.
    n_non : int
        Number of non-targets.

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
    s = s[order]
    lab = lab[order]
    del order
    n_tar = int(lab.sum())
    n_non = int(lab.size - n_tar)
    # Last index of every group of equal scores.
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    cum_tar = np.cumsum(lab, dtype=np.int64)[last]
    n_miss = np.empty(last.size + 1, dtype=np.int64)
    n_miss[0] = 0
    n_miss[1:] = cum_tar
    n_fa = n_non - ((np.r_[0, last + 1]) - n_miss)
    thresholds = np.empty(last.size + 1, dtype=np.float64)
    thresholds[0] = -np.inf
    thresholds[1:] = s[last]
    return thresholds, n_miss, n_fa, n_tar, n_non


def det_curve(scores, labels):
    """False-positive and false-negative rates at every distinct threshold.

    Arguments
    ---------
    scores : array-like or torch.Tensor
        Trial scores [N] (or [N, 1]); higher means target.
    labels : array-like or torch.Tensor
        1 for targets, 0 for non-targets.

    Returns
    -------
    fpr : numpy.ndarray
        float64 [G + 1], false-alarm rate, from 1 down to 0.
    fnr : numpy.ndarray
        float64 [G + 1], miss rate, from 0 up to 1.
    thresholds : numpy.ndarray
        float64 [G + 1], ``-inf`` then the distinct scores ascending;
        trials scoring ``> threshold`` are accepted.

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
    scores : array-like or torch.Tensor
        Trial scores [N] (or [N, 1]); higher means target.
    labels : array-like or torch.Tensor
        1 for targets, 0 for non-targets.
    method : str
        ``"closest"`` (default, SpeechBrain's definition): ``(FPR + FNR) / 2``
        at the operating point where ``|FPR - FNR|`` is smallest.
        ``"interp"``: where FPR and FNR cross on the DET curve, linearly
        interpolated between the two operating points around the crossing.
        See the module docstring for the bound on their difference.

    Returns
    -------
    eer : float
        The equal error rate, in [0, 1].
    threshold : float
        Accept trials with ``score > threshold``. For ``"closest"`` the
        distinct score of the chosen point (as SpeechBrain returns); for
        ``"interp"`` the thresholds of the two points interpolated alike.

    Example
    -------
    >>> compute_eer([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1])
    (0.0, 0.2)
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
    # FPR - FNR, scaled by n_tar * n_non: exact integers (< 2**63 for any
    # N that fits in memory), so ties are found exactly.
    diff = n_fa * n_tar - n_miss * n_non
    if method == "closest":
        # Accept-all (k = 0, |diff| maximal) never gives a smaller EER;
        # leaving it out keeps SpeechBrain's (finite) threshold on ties.
        k = 1 + int(np.argmin(np.abs(diff[1:])))
        eer = 0.5 * (n_fa[k] / n_non + n_miss[k] / n_tar)
        return float(eer), float(thr[k])
    # diff[0] = n_non * n_tar > 0 and diff[-1] < 0; it never increases.
    k = int(np.argmax(diff <= 0))
    if diff[k] == 0:
        return float(n_fa[k] / n_non), float(thr[k])
    d0, d1 = float(diff[k - 1]), float(diff[k])
    lam = d0 / (d0 - d1)
    fpr0, fpr1 = n_fa[k - 1] / n_non, n_fa[k] / n_non
    eer = fpr0 + lam * (fpr1 - fpr0)
    t0, t1 = thr[k - 1], thr[k]
    t = t1 if not np.isfinite(t0) else t0 + lam * (t1 - t0)
    return float(eer), float(t)


def compute_min_dcf(
    scores, labels, p_target=0.01, c_miss=1.0, c_fa=1.0, normalize=True
):
    """Minimum detection cost over all thresholds, exact.

    ``C_det(t) = c_miss * p_target * FNR(t) + c_fa * (1 - p_target) * FPR(t)``
    minimised over every operating point (see the module docstring). This is
    SpeechBrain's ``minDCF``; with ``normalize=True`` (the default) it is
    divided by ``min(c_miss * p_target, c_fa * (1 - p_target))`` as in NIST
    SRE and the VoxCeleb challenges, so 1.0 means "no better than always
    rejecting" (or always accepting).

    Arguments
    ---------
    scores : array-like or torch.Tensor
        Trial scores [N] (or [N, 1]); higher means target.
    labels : array-like or torch.Tensor
        1 for targets, 0 for non-targets.
    p_target : float
        Prior probability of a target trial, in (0, 1).
    c_miss : float
        Cost of a miss (> 0).
    c_fa : float
        Cost of a false alarm (> 0).
    normalize : bool
        Divide by the cost of the best score-blind decision (default True).
        ``False`` returns SpeechBrain's raw value.

    Returns
    -------
    min_dcf : float
        The minimum (normalised) detection cost.
    threshold : float
        Accept trials with ``score > threshold``; the lowest distinct score
        that reaches the minimum (as SpeechBrain), or ``-inf`` when
        accepting every trial is strictly cheaper.

    Example
    -------
    >>> scores = [0.1, 0.2, 0.3, 0.4, 0.5]
    >>> labels = [0, 1, 0, 1, 1]
    >>> compute_min_dcf(scores, labels, p_target=0.5)
    (0.3333333333333333, 0.3)
    >>> compute_min_dcf(scores, labels, p_target=0.5, normalize=False)
    (0.16666666666666666, 0.3)
    """
    for name, v in (("p_target", p_target), ("c_miss", c_miss)):
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if not (c_miss > 0 and c_fa > 0 and np.isfinite(c_fa)):
        raise ValueError(
            f"c_miss and c_fa must be positive, got {c_miss}, {c_fa}"
        )
    thr, n_miss, n_fa, n_tar, n_non = operating_points(scores, labels)
    w_miss = c_miss * p_target
    w_fa = c_fa * (1.0 - p_target)
    cost = w_miss * (n_miss / n_tar) + w_fa * (n_fa / n_non)
    # SpeechBrain's thresholds first (lowest wins a tie), then accept-all
    # only where it is strictly cheaper.
    k = 1 + int(np.argmin(cost[1:]))
    if cost[0] < cost[k]:
        k = 0
    c = float(cost[k])
    if normalize:
        c /= min(w_miss, w_fa)
    return c, float(thr[k])
