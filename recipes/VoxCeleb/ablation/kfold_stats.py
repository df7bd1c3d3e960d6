"""Statistics of the ablation tool's speaker k-fold mode.

Every configuration is trained once per fold and seed; the full-cosine
score files of all its runs are pooled into one EER and minDCF(0.01)
(``dampit.metrics.error_rates``). Intervals and paired tests come from a
bootstrap over SPEAKERS, stratified by fold: each replicate draws, within
every fold, as many test speakers as the fold has, with replacement
(multiplicity ``m_s``), and weights each pooled trial by the draw: a
target trial of speaker ``a`` counts ``m_a`` times, a non-target trial of
``a`` against ``b`` counts ``m_a * m_b`` times (every copy of a drawn
speaker is a speaker of its own). The same draws serve every
configuration, so a difference between two configurations is a paired
bootstrap over speakers on the same folds and seeds. Its two-sided p-value
is twice the smaller share of replicates on either side of 0; a Wilcoxon
signed-rank test over the per-run (fold x seed) EERs is given beside it.
"""

import math

import numpy as np
from scipy.stats import wilcoxon

from dampit.dataio.trials import read_scores, speaker_of
from dampit.metrics.error_rates import compute_eer, compute_min_dcf

P_TARGET = 0.01


def read_trials_scores(path):
    """Enrol speakers, test speakers (``speaker_of``: an ID's first path
    component), scores and labels of a labelled score file."""
    enrol, test, scores, labels = read_scores(path)
    if labels is None:
        raise ValueError(f"{path}: the score file has no labels")
    spk = [np.array([speaker_of(i) for i in ids]) for ids in (enrol, test)]
    return spk[0], spk[1], scores, labels


def pool(runs):
    """Concatenate ``(enrol, test, scores, labels)`` tuples of several runs.

    Example
    -------
    >>> a = (np.array(["x"]), np.array(["x"]), np.array([0.5]), np.array([1]))
    >>> [x.tolist() for x in pool([a, a])][2:]
    [[0.5, 0.5], [1, 1]]
    """
    return tuple(np.concatenate(cols) for cols in zip(*runs))


def metrics(scores, labels, weights=None):
    """EER (%) and minDCF(0.01) of the trials, each counted ``weights``
    times (nan, nan when the weights leave one class only).

    Example
    -------
    >>> s, lab = np.array([0.5, 0.9, 0.4]), np.array([0, 1, 1])
    >>> metrics(s, lab), metrics(s, lab, weights=[1, 1, 0])
    ((75.0, 0.5), (0.0, 0.0))
    """
    if weights is not None:
        scores, labels = np.repeat(scores, weights), np.repeat(labels, weights)
    if labels.all() or not labels.any():
        return math.nan, math.nan
    eer = 100.0 * compute_eer(scores, labels)[0]
    return eer, compute_min_dcf(scores, labels, p_target=P_TARGET)[0]


def speaker_draws(strata, n_boot, seed):
    """Speakers (sorted) and their multiplicities ``[n_boot, n_speakers]``:
    each stratum's speakers drawn with replacement, as many as it has.

    Example
    -------
    >>> spk, m = speaker_draws({"a": 0, "b": 0, "c": 1}, 4, seed=0)
    >>> spk, m.sum(1).tolist(), m[:, 2].tolist()
    (['a', 'b', 'c'], [3, 3, 3, 3], [1, 1, 1, 1])
    """
    speakers = sorted(strata)
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(speakers)), dtype=np.int64)
    rows = np.arange(n_boot)[:, None]
    for group in sorted(set(strata.values())):
        idx = np.array(
            [k for k, s in enumerate(speakers) if strata[s] == group]
        )
        np.add.at(
            counts,
            (rows, idx[rng.integers(0, idx.size, (n_boot, idx.size))]),
            1,
        )
    return speakers, counts


def bootstrap(trials, speakers, counts):
    """``[n_boot, 2]`` replicate (EER %, minDCF) of pooled ``trials`` under
    the speaker multiplicities ``counts`` (:func:`speaker_draws`)."""
    enrol, test, scores, labels = trials
    sp = np.asarray(speakers)
    a, b = np.searchsorted(sp, enrol), np.searchsorted(sp, test)
    if not (np.array_equal(sp[a], enrol) and np.array_equal(sp[b], test)):
        raise ValueError("a trial's speaker is not among the drawn speakers")
    out = np.empty((len(counts), 2))
    for r, m in enumerate(counts):
        w = np.where(labels == 1, m[a], m[a] * m[b])
        out[r] = metrics(scores, labels, w)
    return out


def interval(values, level=0.95):
    """Percentile interval of the replicates (nan ones left out).

    Example
    -------
    >>> np.round(interval(np.arange(101.0)), 6).tolist()
    [2.5, 97.5]
    """
    half = 50.0 * (1.0 - level)
    lo, hi = np.nanpercentile(values, [half, 100.0 - half])
    return float(lo), float(hi)


def bootstrap_p(diffs):
    """Two-sided p-value of a zero paired difference from its replicates:
    ``2 * (min(#(d <= 0), #(d >= 0)) + 1) / (n + 1)``, at most 1.

    Example
    -------
    >>> bootstrap_p(np.full(99, 0.5)), bootstrap_p(np.zeros(9))
    (0.02, 1.0)
    """
    d = np.asarray(diffs)[~np.isnan(diffs)]
    side = min(int((d <= 0).sum()), int((d >= 0).sum()))
    return min(1.0, 2.0 * (side + 1) / (d.size + 1))


def wilcoxon_p(a, b):
    """Two-sided Wilcoxon signed-rank p-value of paired values ``a - b``
    (nan when every difference is 0).

    Example
    -------
    >>> wilcoxon_p([2.0, 3.0, 4.0, 5.0, 6.0], [1.0] * 5)  # 2 / 2**5
    0.0625
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if not np.any(d != 0):
        return math.nan
    return float(wilcoxon(d).pvalue)


def fold_strata(runs):
    """Speaker -> fold of every run's trials (``{(fold, seed): trials}``);
    a speaker tested in two folds is refused."""
    strata = {}
    for (fold, _), (enrol, test, _, _) in sorted(runs.items()):
        for s in np.unique(np.concatenate([enrol, test])).tolist():
            if strata.setdefault(s, fold) != fold:
                raise ValueError(
                    f"speaker {s} tested in folds {strata[s]} and {fold}"
                )
    return strata


def kfold_report(files, reference, labels=None, n_boot=1000, seed=0, out=None):
    """Markdown tables of the pooled metrics (with speaker-bootstrap 95 %
    intervals) of ``files`` (``{config: {(fold, seed): score file or
    None}}``) and of each configuration's paired difference from
    ``reference`` (on the runs both have). ``out`` (a dict) receives the
    EER rows for a figure: ``pooled`` and ``diffs``, lists of ``(label,
    value, low, high)``."""
    labels = labels or {}
    out = {} if out is None else out
    out["pooled"], out["diffs"] = [], []
    runs = {
        c: {k: read_trials_scores(p) for k, p in per.items() if p}
        for c, per in files.items()
    }
    speakers, counts = speaker_draws(
        fold_strata({k: t for per in runs.values() for k, t in per.items()}),
        n_boot,
        seed,
    )
    memo = {}

    def stats(config, keys):  # point estimate and replicates, cached
        if (config, keys) not in memo:
            trials = pool([runs[config][k] for k in keys])
            point = metrics(trials[2], trials[3])
            memo[config, keys] = point, bootstrap(trials, speakers, counts)
        return memo[config, keys]

    lines = [
        "| configuration | runs | pooled EER (%) | 95 % interval "
        "| minDCF(0.01) | 95 % interval |",
        "|---|---|---|---|---|---|",
    ]
    for config in files:
        keys = tuple(sorted(runs[config]))
        row = [
            labels.get(config, config),
            f"{len(keys)} / {len(files[config])}",
        ]
        if keys:
            (eer, dcf), reps = stats(config, keys)
            out["pooled"].append((row[0], eer, *interval(reps[:, 0])))
            for v, col, d in ((eer, 0, 2), (dcf, 1, 3)):
                lo, hi = interval(reps[:, col])
                row += [f"{v:.{d}f}", f"[{lo:.{d}f}, {hi:.{d}f}]"]
        lines.append("| " + " | ".join(row + ["–"] * (6 - len(row))) + " |")
    lines += [
        "",
        "| difference (minus the reference) | runs | ΔEER (points) "
        "| 95 % interval | p (bootstrap) | ΔminDCF | 95 % interval "
        "| p (bootstrap) | p (Wilcoxon, per-run EER) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config in files:
        keys = tuple(sorted(set(runs[config]) & set(runs.get(reference, {}))))
        if config == reference or not keys:
            continue
        (pa, ra), (pb, rb) = stats(config, keys), stats(reference, keys)
        name = (
            f"{labels.get(config, config)} − {labels.get(reference, reference)}"
        )
        row = [name, str(len(keys))]
        for col, d in ((0, 2), (1, 3)):
            diff = ra[:, col] - rb[:, col]
            lo, hi = interval(diff)
            if col == 0:
                out["diffs"].append((name, pa[0] - pb[0], lo, hi))
            row += [
                f"{pa[col] - pb[col]:+.{d}f}",
                f"[{lo:+.{d}f}, {hi:+.{d}f}]",
            ]
            row.append(f"{bootstrap_p(diff):.3f}")
        per_run = [
            [metrics(*runs[c][k][2:])[0] for k in keys]
            for c in (config, reference)
        ]
        row.append(f"{wilcoxon_p(*per_run):.3f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
