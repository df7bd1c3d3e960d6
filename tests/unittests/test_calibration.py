"""dampit.inference.calibration: thresholds at operating points against a
brute-force search over every threshold, the speaker cross-validation
against a loop written here, the bootstrap against resampling by hand, the
LLR fit against the Gaussian closed form and a direct numerical optimum."""

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from dampit.inference import calibration as cal


def rates(scores, labels, t):
    tar = [s for s, y in zip(scores, labels) if y]
    non = [s for s, y in zip(scores, labels) if not y]
    return (
        sum(s <= t for s in tar) / len(tar),
        sum(s > t for s in non) / len(non),
    )


def brute_threshold(scores, labels, point, rate):
    """Every distinct score as a threshold, the best that fits."""
    cands = [np.nextafter(min(scores), -np.inf)] + sorted(set(scores))
    if point == "far":
        return min(t for t in cands if rates(scores, labels, t)[1] <= rate)
    return max(t for t in cands if rates(scores, labels, t)[0] <= rate)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("point", ["far", "frr"])
@pytest.mark.parametrize("rate", [0.01, 0.1, 0.37])
def test_threshold_at_matches_brute_force(seed, point, rate):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    scores = np.round(rng.normal(size=n), 1).tolist()  # ties
    labels = rng.integers(0, 2, n).tolist()
    labels[:2] = [0, 1]
    got = cal.threshold_at(scores, labels, point, rate)
    assert got == brute_threshold(scores, labels, point, rate)
    frr, far = cal.error_rates_at(scores, labels, got)
    assert (frr, far) == rates(scores, labels, got)
    assert (far if point == "far" else frr) <= rate


def test_threshold_at_hand_worked_and_errors():
    s, y = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7], [0, 0, 1, 0, 1, 1]
    # FAR <= 0: reject every non-target, i.e. accept above 0.4.
    assert cal.threshold_at(s, y, "far", 1e-9) == 0.4
    # FRR <= 0: accept every target: above 0.2 (0.1 would admit 0.2).
    assert cal.threshold_at(s, y, "frr", 1e-9) == 0.2
    assert cal.threshold_at(s, y, "eer") == 0.3  # FRR 1/3, FAR 1/3
    for point, rate in [("far", 0.0), ("frr", 1.0), ("dcf", 0.1)]:
        with pytest.raises(ValueError, match=point):
            cal.threshold_at(s, y, point, rate)


def test_minimum_trials():
    assert cal.minimum_trials("eer") == (50, 50)
    assert cal.minimum_trials("far", 0.01) == (50, 1000)
    assert cal.minimum_trials("frr", 0.05) == (200, 50)
    assert cal.minimum_trials("far", 0.5) == (50, 50)


def speaker_trials(n_spk, n_utt, seed, shift=0.0):
    """Every pair of ``n_utt`` utterances of ``n_spk`` speakers; each
    speaker's non-target scores move by its own offset (``shift``)."""
    rng = np.random.default_rng(seed)
    spk = np.repeat([f"s{k:02d}" for k in range(n_spk)], n_utt)
    offset = dict(zip(np.unique(spk), rng.normal(0, shift, n_spk)))
    i, j = np.triu_indices(spk.size, 1)
    y = (spk[i] == spk[j]).astype(int)
    s = 2.0 * y + rng.normal(size=y.size)
    s += np.array([offset[a] + offset[b] for a, b in zip(spk[i], spk[j])])
    return s, y, spk[i], spk[j]


def loop_cv(s, y, e, t, point, rate, folds, seed):
    speakers = sorted(set(e) | set(t))
    fold = dict(zip(speakers, cal.speaker_folds(speakers, folds, seed)))
    miss = fa = n_tar = n_non = 0
    for k in range(folds):
        train = [m for m in range(len(s)) if fold[e[m]] != k != fold[t[m]]]
        test = [m for m in range(len(s)) if fold[e[m]] == k == fold[t[m]]]
        thr = brute_threshold(
            [s[m] for m in train], [y[m] for m in train], point, rate
        )
        for m in test:
            n_tar += y[m]
            n_non += 1 - y[m]
            miss += y[m] and s[m] <= thr
            fa += (not y[m]) and s[m] > thr
    return miss / n_tar, fa / n_non, n_tar, n_non


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_cross_validate_matches_a_loop(folds):
    s, y, e, t = speaker_trials(11, 4, seed=folds, shift=0.5)
    got = cal.cross_validate(s, y, e, t, "far", 0.05, folds, seed=3)
    frr, far, n_tar, n_non = loop_cv(s, y, e, t, "far", 0.05, folds, 3)
    assert (got["frr"], got["far"]) == pytest.approx((frr, far), abs=1e-12)
    assert (got["target"], got["nontarget"]) == (n_tar, n_non)
    assert got["speakers"] == 11 and got["folds"] == folds
    for key in ("frr", "far"):
        lo, hi = got[f"{key}_ci"]
        assert 0 <= lo <= got[key] <= hi <= 1


def test_cross_validation_tracks_the_rate_on_new_speakers():
    """Speaker-dependent scores, 12 speakers: the FAR read off the pairs
    that set the threshold is low on average against the FAR on new
    speakers of the same process; the held-out estimate is nearer, and
    its interval covers the new speakers' FAR most of the time."""
    bias_cv, bias_in, covered = [], [], 0
    for rep in range(20):
        s, y, e, t = speaker_trials(12, 5, seed=rep, shift=0.5)
        thr = cal.threshold_at(s, y, "far", 0.05)
        cv = cal.cross_validate(s, y, e, t, "far", 0.05, 4, n_boot=500)
        new = [speaker_trials(12, 5, 1000 + k, 0.5)[:2] for k in range(10)]
        true = np.mean([cal.error_rates_at(*n, thr)[1] for n in new])
        bias_cv.append(cv["far"] - true)
        bias_in.append(cal.error_rates_at(s, y, thr)[1] - true)
        covered += cv["far_ci"][0] <= true <= cv["far_ci"][1]
    assert np.mean(bias_in) < -0.01
    assert abs(np.mean(bias_cv)) < abs(np.mean(bias_in))
    assert covered >= 14


def test_bootstrap_is_a_speaker_resampling():
    """Same seed, same draws: the percentile interval by hand, a target
    trial weighted by its speaker's draws, a non-target trial by the
    product of its two speakers' draws."""
    rng = np.random.default_rng(0)
    enrol = rng.integers(0, 6, 200)
    is_tar = rng.random(200) < 0.3
    test = np.where(is_tar, enrol, (enrol + rng.integers(1, 6, 200)) % 6)
    miss = is_tar & (rng.random(200) < 0.2)
    fa = ~is_tar & (rng.random(200) < 0.1)
    got = cal._bootstrap(enrol, test, miss, fa, is_tar, 300, seed=7)
    draws = np.random.default_rng(7).multinomial(6, np.full(6, 1 / 6), 300)
    frr, far = [], []
    for w in draws:
        tar_w = w[enrol] * is_tar  # each target trial as often as drawn
        non_w = w[enrol] * w[test] * ~is_tar  # both sides of a non-target
        frr.append((tar_w * miss).sum() / tar_w.sum())
        far.append((non_w * fa).sum() / non_w.sum())
    for mine, ref in zip(got, (frr, far)):
        assert mine == pytest.approx(np.nanpercentile(ref, [2.5, 97.5]))


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # no FRR
def test_far_interval_covers_new_test_speakers():
    """Speaker effects on both sides of a non-target trial (each speaker
    has an offset): the FAR interval over 16 speakers covers the FAR of
    the whole population of 200 speakers, at a fixed threshold, in most
    draws; resampling the enrol speakers alone covers it far less often
    (its intervals ignore the test side's spread): 50 and 37 of 60."""
    rng = np.random.default_rng(5)
    offset = rng.normal(0, 0.6, 200)
    i, j = np.triu_indices(200, 1)
    thr = 1.0
    true = np.mean(offset[i] + offset[j] + rng.normal(0, 0.5, i.size) > thr)
    both, one = 0, 0
    for rep in range(60):
        spk = rng.choice(200, 16, replace=False)
        e, t = np.triu_indices(16, 1)
        s = offset[spk[e]] + offset[spk[t]] + rng.normal(0, 0.5, e.size)
        fa, none = s > thr, np.zeros(e.size, dtype=bool)
        _, (lo, hi) = cal._bootstrap(e, t, none, fa, none, 400, rep)
        both += lo <= true <= hi
        w = np.random.default_rng(rep).multinomial(16, np.full(16, 1 / 16), 400)
        far_one = (w[:, e] * fa).sum(1) / w[:, e].sum(1)
        lo1, hi1 = np.percentile(far_one, [2.5, 97.5])
        one += lo1 <= true <= hi1
    assert both >= 46 and both >= one + 8, (both, one)


def test_fit_llr_refuses_separated_scores():
    """No finite maximum-likelihood fit exists when the classes do not
    overlap (the scale only grows): one line, not an arbitrary number."""
    s, y = np.array([0.1, 0.2, 0.6, 0.9]), np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="no finite score -> LLR map"):
        cal.fit_llr(s, y)
    scale, _ = cal.fit_llr(np.r_[s, 0.7], np.r_[y, 0])  # one overlap
    assert 0 < scale < np.inf


def test_cross_validate_refusals():
    s, y, e, t = speaker_trials(4, 3, seed=0)
    with pytest.raises(ValueError, match="5 folds of 4 speakers"):
        cal.cross_validate(s, y, e, t, "eer", folds=5)
    one = np.array(["a"] * y.size)  # one speaker: no non-target to train on
    with pytest.raises(ValueError, match="folds"):
        cal.cross_validate(s, y, one, one, "eer", folds=1)


@pytest.mark.parametrize("m1,m0,sd", [(2.0, 0.5, 0.7), (0.3, -0.1, 0.2)])
def test_fit_llr_gaussian_closed_form(m1, m0, sd):
    rng = np.random.default_rng(1)
    tar, non = rng.normal(m1, sd, 30000), rng.normal(m0, sd, 90000)
    s = np.r_[tar, non]
    y = np.r_[np.ones(tar.size), np.zeros(non.size)]
    scale, offset = cal.fit_llr(s, y)
    want = ((m1 - m0) / sd**2, -(m1**2 - m0**2) / (2 * sd**2))
    assert scale == pytest.approx(want[0], rel=0.03)
    assert offset == pytest.approx(want[1], rel=0.03, abs=0.03)


def test_fit_llr_is_the_weighted_logistic_optimum():
    """Small, skewed data: no coordinate can lower the loss."""
    rng = np.random.default_rng(2)
    s = np.r_[rng.gamma(2, 1, 15), rng.normal(0, 1, 60)]
    y = np.r_[np.ones(15), np.zeros(60)]

    def loss(a, b):
        z = np.where(y == 1, 1, -1) * (a * s + b)
        w = np.where(y == 1, 0.5 / 15, 0.5 / 60)
        return float(w @ np.log1p(np.exp(-z)))

    a, b = cal.fit_llr(s, y)
    best_a = minimize_scalar(lambda v: loss(v, b), bracket=(a - 1, a + 1)).x
    best_b = minimize_scalar(lambda v: loss(a, v), bracket=(b - 1, b + 1)).x
    assert (a, b) == pytest.approx((best_a, best_b), abs=1e-4)
