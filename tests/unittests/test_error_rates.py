"""Tests for dampit.metrics.error_rates: hand-worked cases, a brute-force
reference written here, and SpeechBrain's EER / minDCF on small N (its
minDCF builds a thresholds x scores matrix: never call it on large N)."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from speechbrain.utils.metric_stats import EER as sb_eer
from speechbrain.utils.metric_stats import minDCF as sb_min_dcf

from dampit.metrics.error_rates import (
    compute_eer,
    compute_min_dcf,
    det_curve,
    operating_points,
)


def brute_points(scores, labels):
    """(threshold, FNR, FPR) as Fractions, one threshold at a time."""
    pos = [s for s, lab in zip(scores, labels) if lab == 1]
    neg = [s for s, lab in zip(scores, labels) if lab == 0]
    out = []
    for t in [-np.inf] + sorted(set(scores)):
        miss = sum(1 for s in pos if s <= t)
        fa = sum(1 for s in neg if s > t)
        out.append((t, Fraction(miss, len(pos)), Fraction(fa, len(neg))))
    return out


def brute_eer_closest(scores, labels):
    pts = brute_points(scores, labels)[1:]  # SpeechBrain's thresholds
    best = min(range(len(pts)), key=lambda i: (abs(pts[i][2] - pts[i][1]), i))
    t, fnr, fpr = pts[best]
    return float((fnr + fpr) / 2), t


def brute_eer_interp(scores, labels):
    pts = brute_points(scores, labels)
    for (t0, fnr0, fpr0), (t1, fnr1, fpr1) in zip(pts, pts[1:]):
        d0, d1 = fpr0 - fnr0, fpr1 - fnr1
        if d0 > 0 >= d1:
            lam = d0 / (d0 - d1)
            return float(fpr0 + lam * (fpr1 - fpr0))
    raise AssertionError("no crossing")


def brute_min_dcf(scores, labels, p, c_miss=1.0, c_fa=1.0):
    pts = brute_points(scores, labels)
    costs = [
        c_miss * p * float(fnr) + c_fa * (1 - p) * float(fpr)
        for _, fnr, fpr in pts
    ]
    return min(costs) / min(c_miss * p, c_fa * (1 - p))


def sb_pair(scores, labels):
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    lab = torch.as_tensor(np.asarray(labels)) == 1
    return s[lab], s[~lab]


# A hand-worked case with a mixed group of ties at 0.5.
# groups: 0.1 {n}, 0.3 {t}, 0.5 {t, n, n}, 0.9 {t}; 3 targets, 3 non-targets
# threshold  -inf  0.1   0.3   0.5   0.9
# FNR        0     0     1/3   2/3   1
# FPR        1     2/3   2/3   0     0
TIE_SCORES = [0.1, 0.5, 0.5, 0.5, 0.9, 0.3]
TIE_LABELS = [0, 1, 0, 0, 1, 1]


def test_operating_points_hand_case_with_ties():
    thr, miss, fa, n_tar, n_non = operating_points(TIE_SCORES, TIE_LABELS)
    assert thr.tolist() == [-np.inf, 0.1, 0.3, 0.5, 0.9]
    assert miss.tolist() == [0, 0, 1, 2, 3]
    assert fa.tolist() == [3, 2, 2, 0, 0]
    assert (n_tar, n_non) == (3, 3)
    fpr, fnr, thr2 = det_curve(TIE_SCORES, TIE_LABELS)
    np.testing.assert_allclose(fpr, [1, 2 / 3, 2 / 3, 0, 0], atol=1e-15)
    np.testing.assert_allclose(fnr, [0, 0, 1 / 3, 2 / 3, 1], atol=1e-15)
    np.testing.assert_array_equal(thr, thr2)


def test_eer_hand_case_with_ties():
    # |FPR - FNR| smallest (1/3) at 0.3: EER = (1/3 + 2/3) / 2.
    assert compute_eer(TIE_SCORES, TIE_LABELS) == (0.5, 0.3)
    # Crossing between 0.3 (diff +1/3) and 0.5 (diff -2/3) at lambda 1/3:
    # FPR = 2/3 - 2/9 = 4/9 = FNR = 1/3 + 1/9.
    eer, thr = compute_eer(TIE_SCORES, TIE_LABELS, method="interp")
    assert eer == pytest.approx(4 / 9, abs=1e-15)
    assert thr == pytest.approx(0.3 + 0.2 / 3)


def test_min_dcf_hand_case_with_ties():
    # p = 0.5: cost = (FNR + FPR) / 2 -> 1/3 first at 0.1; / 0.5 = 2/3.
    dcf, thr = compute_min_dcf(TIE_SCORES, TIE_LABELS, p_target=0.5)
    assert dcf == pytest.approx(2 / 3) and thr == 0.1
    # p = 0.01: 0.01 * 2/3 at 0.5 (0.99 * FPR elsewhere); / 0.01 = 2/3.
    dcf, thr = compute_min_dcf(TIE_SCORES, TIE_LABELS, p_target=0.01)
    assert dcf == pytest.approx(2 / 3) and thr == 0.5
    raw, _ = compute_min_dcf(TIE_SCORES, TIE_LABELS, 0.01, normalize=False)
    assert raw == pytest.approx(0.01 * 2 / 3)
    # Costs: c_miss = 10 -> 0.1 * 2/3 at 0.5 vs 0.99 * 2/3 at 0.1;
    # normalised by min(0.1, 0.99).
    dcf, thr = compute_min_dcf(TIE_SCORES, TIE_LABELS, 0.01, c_miss=10)
    assert dcf == pytest.approx(2 / 3) and thr == 0.5


def test_separable_reversed_and_constant_scores():
    # SpeechBrain's docstring case: perfectly separated.
    s = [0.6, 0.7, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1]
    lab = [1, 1, 1, 1, 0, 0, 0, 0]
    assert compute_eer(s, lab) == (0.0, 0.4)
    assert compute_eer(s, lab, method="interp")[0] == 0.0
    assert compute_min_dcf(s, lab) == (0.0, 0.4)
    # Reversed: every target below every non-target.
    rev = [1 - x for x in lab]
    assert compute_eer(s, rev)[0] == 1.0
    assert compute_eer(s, rev, method="interp")[0] == 1.0
    assert compute_min_dcf(s, rev)[0] == 1.0  # reject all: 1 normalised
    # All scores equal: one threshold, FNR 1 and FPR 0 -> EER 0.5.
    assert compute_eer([0.3] * 4, [1, 0, 1, 0]) == (0.5, 0.3)
    assert compute_eer([0.3] * 4, [1, 0, 1, 0], method="interp")[0] == 0.5


def test_interp_differs_from_closest_by_at_most_a_quarter_step():
    # Without ties: |closest - interp| <= max(1/P, 1/N) / 4.
    rng = np.random.default_rng(1)
    for _ in range(200):
        n_tar, n_non = rng.integers(1, 30, size=2)
        s = np.r_[rng.normal(1, 1, n_tar), rng.normal(0, 1, n_non)]
        lab = np.r_[np.ones(n_tar), np.zeros(n_non)]
        a, _ = compute_eer(s, lab)
        b, _ = compute_eer(s, lab, method="interp")
        assert abs(a - b) <= max(1 / n_tar, 1 / n_non) / 4 + 1e-12


@pytest.mark.parametrize("seed", range(6))
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 120))
    # Quantised scores: many ties, mixed groups.
    s = np.round(rng.normal(size=n), 1)
    lab = rng.integers(0, 2, size=n)
    lab[0], lab[1] = 0, 1
    eer, thr = compute_eer(s, lab)
    assert (eer, thr) == pytest.approx(brute_eer_closest(s.tolist(), lab))
    eer_i, _ = compute_eer(s, lab, method="interp")
    assert eer_i == pytest.approx(brute_eer_interp(s.tolist(), lab))
    for p in (0.01, 0.05, 0.5):
        dcf, _ = compute_min_dcf(s, lab, p_target=p)
        assert dcf == pytest.approx(brute_min_dcf(s.tolist(), lab, p))


@pytest.mark.parametrize(
    "n_tar,n_non,decimals,seed",
    [
        (37, 963, None, 0),
        (200, 1800, None, 1),
        (313, 1687, 2, 2),  # ties
        (500, 1500, 1, 3),  # many ties, mixed groups
        (3, 17, None, 4),
        (997, 1003, None, 5),
    ],
)
def test_against_speechbrain(n_tar, n_non, decimals, seed):
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(1.5, 1, n_tar), rng.normal(0, 1, n_non)]
    if decimals is not None:
        s = np.round(s, decimals)
    lab = np.r_[np.ones(n_tar), np.zeros(n_non)].astype(int)
    perm = rng.permutation(s.size)
    s, lab = s[perm], lab[perm]
    pos, neg = sb_pair(s, lab)
    ref_eer, ref_thr = sb_eer(pos, neg)
    eer, thr = compute_eer(torch.as_tensor(s), torch.as_tensor(lab))
    # SpeechBrain divides counts in float32: relative 1e-7 differences.
    assert eer == pytest.approx(ref_eer, rel=1e-6, abs=1e-7)
    assert thr == ref_thr
    for p in (0.01, 0.05):
        ref, ref_t = sb_min_dcf(pos, neg, p_target=p)
        raw, t = compute_min_dcf(s, lab, p_target=p, normalize=False)
        assert raw == pytest.approx(ref, rel=1e-6, abs=1e-9)
        norm, _ = compute_min_dcf(s, lab, p_target=p)
        assert norm == pytest.approx(ref / p, rel=1e-6)
        # SpeechBrain's threshold reaches our cost, and it is ours.
        dec = s > ref_t
        fnr = np.mean(~dec[lab == 1])
        fpr = np.mean(dec[lab == 0])
        assert p * fnr + (1 - p) * fpr == pytest.approx(raw, rel=1e-9)
        assert t == ref_t


def test_speechbrain_hand_case_with_ties():
    pos, neg = sb_pair(TIE_SCORES, TIE_LABELS)
    assert compute_eer(TIE_SCORES, TIE_LABELS) == pytest.approx(
        sb_eer(pos, neg)
    )
    ref = sb_min_dcf(pos, neg, p_target=0.01)
    got = compute_min_dcf(TIE_SCORES, TIE_LABELS, 0.01, normalize=False)
    assert got == pytest.approx(ref)


def test_accept_all_point_is_used_when_strictly_cheapest():
    # p_target 0.9: accepting both trials costs 0.1 * FPR(=1) = 0.1; every
    # threshold SpeechBrain tries costs more (0.9 * FNR = 0.9 at best).
    s, lab = [0.1, 0.2], [1, 0]
    raw, thr = compute_min_dcf(s, lab, p_target=0.9, normalize=False)
    assert raw == pytest.approx(0.1) and thr == -np.inf
    ref, _ = sb_min_dcf(*sb_pair(s, lab), p_target=0.9)
    assert ref == pytest.approx(0.9)


def test_inputs_torch_column_and_bool():
    s = torch.tensor([[0.2], [0.9], [0.4], [0.1]], dtype=torch.float32)
    lab = torch.tensor([[False], [True], [True], [False]])
    assert compute_eer(s, lab)[0] == 0.0
    fpr, fnr, thr = det_curve(s.numpy()[:, 0], [0, 1, 1, 0])
    assert fpr.dtype == np.float64 and thr.dtype == np.float64


def test_large_n_runs_in_linear_memory():
    # 2 * 10^5 scores: SpeechBrain's minDCF would need ~ 10^11 cells.
    rng = np.random.default_rng(0)
    n = 200_000
    lab = rng.random(n) < 0.1
    s = rng.normal(size=n) + 2 * lab
    eer, _ = compute_eer(s, lab)
    eer_i, _ = compute_eer(s, lab, method="interp")
    # Two unit-variance Gaussians 2 apart: EER = Phi(-1) = 0.1587.
    assert eer == pytest.approx(0.1587, abs=0.005)
    assert abs(eer - eer_i) <= 1 / lab.sum() / 4 + 1e-12
    dcf, _ = compute_min_dcf(s, lab, p_target=0.05)
    assert 0 < dcf <= 1


@pytest.mark.parametrize(
    "scores,labels,match",
    [
        ([0.1, np.nan], [0, 1], "finite.*index 1"),
        ([0.1, np.inf, 0.3], [0, 1, 1], "index 1"),
        ([0.1, 0.2], [1, 1], "no non-target"),
        ([0.1, 0.2], [0, 0], "no target"),
        ([0.1, 0.2], [0, 2], "0 or 1.*index 1"),
        ([0.1, 0.2, 0.3], [0, 1], "3 scores, 2 labels"),
        ([[0.1, 0.2]], [[0, 1]], "1-D"),
        (["a", "b"], [0, 1], "numbers"),
    ],
)
def test_bad_input_errors(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        compute_eer(scores, labels)
    with pytest.raises(ValueError, match=match):
        compute_min_dcf(scores, labels)


def test_bad_parameters():
    with pytest.raises(ValueError, match="p_target"):
        compute_min_dcf([0.1, 0.2], [0, 1], p_target=1.0)
    with pytest.raises(ValueError, match="positive"):
        compute_min_dcf([0.1, 0.2], [0, 1], c_fa=0.0)
    with pytest.raises(ValueError, match="method"):
        compute_eer([0.1, 0.2], [0, 1], method="rocch")


def test_bfloat16_scores():
    s = torch.tensor([0.5, 0.25, 0.75, 0.125], dtype=torch.bfloat16)
    assert compute_eer(s, torch.tensor([1, 0, 1, 0])) == (0.0, 0.25)
