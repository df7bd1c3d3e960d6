"""Calibration on labelled pairs: a threshold at an operating point, its
error rates estimated on held-out speakers, and a score -> LLR map.

Operating points (``score > threshold``: same speaker, as in
:mod:`dampit.metrics.error_rates`):

- ``"eer"``: the EER threshold (:func:`~dampit.metrics.error_rates.
  compute_eer`);
- ``"far"``: the lowest threshold whose false-accept rate is at most the
  target (fewest false rejections under that bound);
- ``"frr"``: the highest threshold whose false-reject rate is at most the
  target (fewest false accepts under that bound).

:func:`cross_validate` splits the *speakers* into folds: for each fold the
threshold is set on the trials of the other folds' speakers only and
applied to the trials between this fold's speakers, so no error rate is
read off the trials (nor the speakers) that set it. The pooled rates get a
95% bootstrap interval that resamples speakers (a target trial counts as
often as its speaker is drawn, a non-target trial as the product of its
two speakers' draws). :func:`fit_llr` is a logistic regression of the
label on the score with both classes weighted equally, so that ``scale *
score + offset`` is a log-likelihood ratio.
"""

import numpy as np
from scipy.optimize import minimize

from dampit.metrics.error_rates import compute_eer, operating_points

__all__ = [
    "cross_validate",
    "error_rates_at",
    "fit_llr",
    "minimum_trials",
    "fold_masks",
    "speaker_folds",
    "threshold_at",
]

POINTS = ("eer", "far", "frr")
#: Fewest target and non-target trials a calibration accepts, and the
#: fewest errors expected at a targeted rate (``MIN_ERRORS / rate``).
MIN_TARGET, MIN_NONTARGET, MIN_ERRORS = 50, 50, 10


def _check_point(point, rate):
    if point not in POINTS:
        raise ValueError(f"operating point must be one of {POINTS}: {point!r}")
    if point != "eer" and not (rate is not None and 0.0 < rate < 1.0):
        raise ValueError(f"{point}: the target rate must be in (0, 1): {rate}")


def threshold_at(scores, labels, point, rate=None):
    """The threshold of an operating point on labelled scores.

    Arguments
    ---------
    scores, labels : array-like
        ``[N]`` scores and 0/1 labels (both classes present).
    point : str
        ``"eer"``, ``"far"`` or ``"frr"`` (module docstring).
    rate : float, optional
        The target false-accept (``"far"``) or false-reject (``"frr"``)
        rate, in (0, 1).

    Returns
    -------
    float
        A score (accept ``score > threshold``), or the number just below
        the lowest score when only accepting every trial fits.

    Example
    -------
    >>> s, y = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7], [0, 0, 1, 0, 1, 1]
    >>> threshold_at(s, y, "far", 0.34), threshold_at(s, y, "frr", 0.34)
    (0.2, 0.4)
    """
    _check_point(point, rate)
    if point == "eer":
        return compute_eer(scores, labels)[1]
    thr, n_miss, n_fa, n_tar, n_non = operating_points(scores, labels)
    if point == "far":  # n_fa falls with the threshold: the first that fits
        k = int(np.argmax(n_fa / n_non <= rate))
    else:  # n_miss rises with the threshold: the last that fits
        k = int(np.flatnonzero(n_miss / n_tar <= rate)[-1])
    if k == 0:  # only accepting all fits: just below the lowest score
        return float(np.nextafter(thr[1], -np.inf))
    return float(thr[k])


def error_rates_at(scores, labels, threshold):
    """``(false-reject rate, false-accept rate)`` at ``threshold``.

    Example
    -------
    >>> error_rates_at([0.1, 0.5, 0.9, 0.3], [1, 1, 1, 0], 0.4)
    (0.3333333333333333, 0.0)
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    accept = s > threshold
    return float((~accept[y]).mean()), float(accept[~y].mean())


def minimum_trials(point, rate=None):
    """``(targets, non-targets)`` a calibration needs at least: 50 of each,
    and ``10 / rate`` of the class whose error rate is targeted (10 errors
    expected at the threshold).

    Example
    -------
    >>> minimum_trials("eer"), minimum_trials("far", 0.001)
    ((50, 50), (50, 10000))
    """
    _check_point(point, rate)
    need = int(np.ceil(MIN_ERRORS / rate - 1e-9)) if rate else 0
    n_tar = max(MIN_TARGET, need if point == "frr" else 0)
    return n_tar, max(MIN_NONTARGET, need if point == "far" else 0)


def _bootstrap(enrol, test, miss, fa, is_tar, n_boot, seed):
    """95% intervals of the pooled FRR and FAR, the trials' speakers
    resampled: a draw counts each speaker ``c`` times; a target trial
    weighs its speaker's ``c``, a non-target trial the product of its two
    speakers' counts (both sides drive false accepts)."""
    speakers, codes = np.unique(np.r_[enrol, test], return_inverse=True)
    n = len(speakers)
    e, t = codes[: len(enrol)], codes[len(enrol) :]
    tar_trials, miss_trials = np.zeros(n), np.zeros(n)
    np.add.at(tar_trials, e[is_tar], 1.0)
    np.add.at(miss_trials, e[is_tar], miss[is_tar])
    non_pairs, fa_pairs = np.zeros((n, n)), np.zeros((n, n))
    np.add.at(non_pairs, (e[~is_tar], t[~is_tar]), 1.0)
    np.add.at(fa_pairs, (e[~is_tar], t[~is_tar]), fa[~is_tar])
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    with np.errstate(invalid="ignore", divide="ignore"):
        frr = (counts @ miss_trials) / (counts @ tar_trials)
        fa_w = ((counts @ fa_pairs) * counts).sum(axis=1)
        far = fa_w / ((counts @ non_pairs) * counts).sum(axis=1)
    return [
        [float(v) for v in np.nanpercentile(r, [2.5, 97.5])] for r in (frr, far)
    ]


def speaker_folds(speakers, folds, seed=0):
    """Fold of each speaker: a seeded shuffle dealt round-robin (fold
    sizes differ by at most one).

    Example
    -------
    >>> speaker_folds(["a", "b", "c", "d", "e"], 2).tolist()
    [1, 0, 0, 0, 1]
    """
    n = len(speakers)
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return fold_of


def fold_masks(labels, enrol_spk, test_spk, folds, seed=0):
    """The speaker folds of labelled trials, checked (before any scoring).

    Returns
    -------
    codes : (numpy.ndarray, numpy.ndarray)
        ``[N]`` index of each trial's enrol and test speakers (sorted
        names).
    masks : list of (numpy.ndarray, numpy.ndarray)
        Per fold, the trials of the other folds' speakers (to set the
        threshold) and the trials within the fold (to test it).
    n_speakers : int

    Raises
    ------
    ValueError
        Not ``2 <= folds <= speakers``, a fold whose other folds' trials
        lack a class, or no target or no non-target trial within a fold.

    Example
    -------
    >>> _, masks, n = fold_masks([1, 0, 0], ["a", "a", "b"], ["a", "b", "c"],
    ...                          folds=2)
    Traceback (most recent call last):
    ...
    ValueError: speaker fold 1 of 2: the other folds' trials hold one ...
    """
    y = np.asarray(labels).astype(bool)
    speakers, codes = np.unique(
        np.concatenate(
            [np.asarray(enrol_spk, dtype=str), np.asarray(test_spk, dtype=str)]
        ),
        return_inverse=True,
    )
    enrol, test = codes[: y.size], codes[y.size :]
    if not 2 <= folds <= len(speakers):
        raise ValueError(
            f"{folds} folds of {len(speakers)} speakers: need 2 <= folds <= "
            "speakers"
        )
    fold_of = speaker_folds(speakers, folds, seed)
    fe, ft = fold_of[enrol], fold_of[test]
    masks, held = [], np.zeros(y.size, dtype=bool)
    for k in range(folds):
        train, tested = (fe != k) & (ft != k), (fe == k) & (ft == k)
        if y[train].all() or not y[train].any():
            raise ValueError(
                f"speaker fold {k + 1} of {folds}: the other folds' trials "
                "hold one class only (give more speakers or fewer folds)"
            )
        masks.append((train, tested))
        held |= tested
    n_tar, n_non = int((held & y).sum()), int((held & ~y).sum())
    if not (n_tar and n_non):
        raise ValueError(
            f"{n_tar} target / {n_non} non-target trials lie within a "
            "speaker fold: none to test on (give fewer folds)"
        )
    return (enrol, test), masks, len(speakers)


def cross_validate(
    scores,
    labels,
    enrol_spk,
    test_spk,
    point,
    rate=None,
    folds=5,
    n_boot=1000,
    seed=0,
):
    """Error rates at the operating point, estimated on held-out speakers.

    Arguments
    ---------
    scores, labels : array-like
        ``[N]`` scores and 0/1 labels.
    enrol_spk, test_spk : list of str
        The speaker of each trial's two sides.
    point, rate
        As :func:`threshold_at`.
    folds : int
        Speaker folds (at least 2, at most the number of speakers).
    n_boot : int
        Bootstrap resamples.
    seed : int
        Seed of the fold split (:func:`speaker_folds` of the sorted
        speakers) and of the bootstrap.

    Returns
    -------
    dict
        ``frr``, ``far`` (pooled over the folds' held-out trials),
        ``frr_ci``, ``far_ci`` (95% bootstrap intervals), ``folds``,
        ``target``, ``nontarget`` (held-out trials counted), ``speakers``.

    Raises
    ------
    ValueError
        Too few speakers, or a fold whose other folds lack a class.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> spk = np.repeat(np.arange(8), 4).astype(str)
    >>> i, j = np.triu_indices(32, 1)
    >>> y = (spk[i] == spk[j]).astype(int)
    >>> s = y + rng.normal(0, 0.5, y.size)
    >>> res = cross_validate(s, y, spk[i], spk[j], "eer", folds=4)
    >>> res["target"], res["nontarget"], 0.1 < res["far"] < 0.25
    (48, 64, True)
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    codes, folds_k, n_spk = fold_masks(y, enrol_spk, test_spk, folds, seed)
    held = np.zeros(s.size, dtype=bool)
    miss, fa = np.zeros(s.size, dtype=bool), np.zeros(s.size, dtype=bool)
    for train, tested in folds_k:
        thr = threshold_at(s[train], y[train], point, rate)
        held |= tested
        miss |= tested & y & (s <= thr)
        fa |= tested & ~y & (s > thr)
    n_tar, n_non = int((held & y).sum()), int((held & ~y).sum())
    idx = np.flatnonzero(held)
    enrol, test = codes
    frr_ci, far_ci = _bootstrap(
        enrol[idx], test[idx], miss[idx], fa[idx], y[idx], n_boot, seed
    )
    return {
        "frr": float(miss.sum() / n_tar),
        "far": float(fa.sum() / n_non),
        "frr_ci": frr_ci,
        "far_ci": far_ci,
        "folds": int(folds),
        "target": n_tar,
        "nontarget": n_non,
        "speakers": n_spk,
    }


def _logistic_loss(params, s, sign, weight):
    """Weighted ``log(1 + exp(-sign * (a s + b)))`` and its gradient."""
    z = sign * (params[0] * s + params[1])
    loss = float(weight @ np.logaddexp(0.0, -z))
    g = -weight * sign * np.exp(-np.logaddexp(0.0, z))  # -w sign sigmoid(-z)
    return loss, np.array([g @ s, g.sum()])


def fit_llr(scores, labels):
    """Fit ``llr = scale * score + offset`` by logistic regression.

    Targets and non-targets weigh half each (a prior of 0.5), so the
    fitted log-odds are log-likelihood ratios.

    Returns
    -------
    scale, offset : float

    Raises
    ------
    ValueError
        Scores that separate the classes perfectly (no finite fit).

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> s = np.r_[rng.normal(1, 1, 20000), rng.normal(0, 1, 20000)]
    >>> y = np.r_[np.ones(20000), np.zeros(20000)]
    >>> a, b = fit_llr(s, y)  # Gaussians: llr = s - 0.5 exactly
    >>> round(a, 1), round(b, 1)
    (1.0, -0.5)
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s[y].min() > s[~y].max():
        raise ValueError(
            "every target score is above every non-target score: no finite "
            "score -> LLR map fits (the scale grows without bound); give "
            "pairs whose scores overlap"
        )
    weight = np.where(y, 0.5 / y.sum(), 0.5 / (~y).sum())
    sign = np.where(y, 1.0, -1.0)
    center, spread = s.mean(), s.std() or 1.0  # a well-conditioned fit
    res = minimize(
        _logistic_loss,
        np.zeros(2),
        ((s - center) / spread, sign, weight),
        jac=True,
        method="BFGS",
    )
    a, b = res.x
    return float(a / spread), float(b - a * center / spread)
