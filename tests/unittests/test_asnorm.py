"""Tests for AS-norm: against a plain per-trial loop written here, and
against SpeechBrain's recipe computation (torch.topk + torch.std)."""

import math

import numpy as np
import pytest
import torch

from dampit.inference.embedding_store import save_embeddings
from dampit.metrics.asnorm import as_norm, cohort_statistics
from dampit.metrics.scoring import ScoringVectors


def crop_pair_mean(a, b, method):
    """Mean crop-pair score by a plain loop over the pairs."""
    total = 0.0
    for x in a:
        for y in b:
            if method == "cosine":
                total += float(x @ y) / math.sqrt(float(x @ x) * float(y @ y))
            else:  # dot
                total += float(x @ y)
    return total / (len(a) * len(b))


# AS-norm scores are O(1) z-scores (often near 0): the loop and the closed
# form differ by rounding of D-term sums amplified by 1 / sigma (~10 here),
# so an absolute tolerance of 1e-12 * D * |x|^2 * 10 (float64) or 1e-6
# (float32 stores) goes with every relative one.
ATOL64 = 1e-12 * 8 * 4.0**2 * 10
ATOL32 = 1e-5


def loop_asnorm(crops, cohort, trials, method, top_k):
    """AS-norm1 of Matejka et al. 2017, trial by trial."""
    out = []
    for e, t in trials:
        s = crop_pair_mean(crops[e], crops[t], method)

        def stats(u):
            c = sorted(
                (crop_pair_mean(crops[u], m, method) for m in cohort),
                reverse=True,
            )[:top_k]
            mu = sum(c) / len(c)
            var = sum((v - mu) ** 2 for v in c) / (len(c) - 1)
            return mu, math.sqrt(var)

        me, se = stats(e)
        mt, st = stats(t)
        out.append(0.5 * ((s - me) / se + (s - mt) / st))
    return out


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    crops = rng.normal(0.2, 1.0, size=(7, 4, 8))
    cohort = rng.normal(0.2, 1.0, size=(15, 4, 8))
    trials = [tuple(int(v) for v in rng.integers(0, 7, 2)) for _ in range(12)]
    return crops, cohort, trials


@pytest.mark.parametrize("method", ["cosine", "dot"])
@pytest.mark.parametrize("top_k", [5, 15, None])
def test_as_norm_equals_plain_loop(data, method, top_k):
    crops, cohort, trials = data
    ref = loop_asnorm(crops, cohort, trials, method, top_k or 15)
    sv = ScoringVectors.from_embeddings(crops, method)
    co = ScoringVectors.from_embeddings(cohort, method)
    ie, it = np.array(trials).T
    raw = sv.score_pairs(ie, it)
    got = as_norm(raw, ie, it, sv, co, top_k=top_k, chunk_size=2)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=ATOL64)


def test_as_norm_equals_speechbrain_recipe_computation():
    # speechbrain recipes/VoxCeleb/SpeakerRec/speaker_verification_cosine.py:
    # cosine scores against the cohort, torch.topk, mean, torch.std, s-norm.
    g = torch.Generator().manual_seed(0)
    enrol = torch.randn(6, 1, 32, generator=g)
    test = torch.randn(6, 1, 32, generator=g)
    train_cohort = torch.randn(50, 1, 32, generator=g)
    sim = torch.nn.CosineSimilarity(dim=-1, eps=1e-6)
    k = 20
    ref = []
    for i in range(6):
        e, t = enrol[i : i + 1], test[i : i + 1]
        score = sim(e, t)[0]
        s_e = torch.topk(sim(e.repeat(50, 1, 1), train_cohort), k, dim=0)[0]
        s_t = torch.topk(sim(t.repeat(50, 1, 1), train_cohort), k, dim=0)[0]
        z = (score - s_e.mean(0)) / s_e.std(0)
        tn = (score - s_t.mean(0)) / s_t.std(0)
        ref.append(float(0.5 * (z + tn)))
    emb = torch.cat([enrol, test])  # [12, 1, 32]
    sv = ScoringVectors.from_embeddings(emb, "cosine")
    co = ScoringVectors.from_embeddings(train_cohort, "cosine")
    ie, it = np.arange(6), np.arange(6, 12)
    got = as_norm(sv.score_pairs(ie, it), ie, it, sv, co, top_k=k)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=ATOL32)


def test_cohort_statistics_hand_case():
    sv = ScoringVectors.from_embeddings([[1.0, 0.0]], "dot")
    co = ScoringVectors.from_embeddings([[1.0, 0], [3.0, 0], [-9.0, 0]], "dot")
    mu, sd = cohort_statistics(sv, [0], co, top_k=2)  # top 2 of {1, 3, -9}
    assert mu.tolist() == [2.0] and sd[0] == pytest.approx(math.sqrt(2))
    mu, sd = cohort_statistics(sv, [0], co, top_k=None)  # all 3: S-norm
    assert mu[0] == pytest.approx(-5 / 3)
    assert sd[0] == pytest.approx(
        math.sqrt(((8 / 3) ** 2 + (14 / 3) ** 2 + (22 / 3) ** 2) / 2)
    )


def test_as_norm_from_a_float32_store(tmp_path, data):
    crops, cohort, trials = data
    store = save_embeddings(tmp_path, [f"u{i}" for i in range(7)], crops)
    ie, it = np.array(trials).T
    sv = ScoringVectors.from_embeddings(store, "cosine")
    got = as_norm(sv.score_pairs(ie, it), ie, it, sv, cohort, top_k=5)
    ref = loop_asnorm(crops, cohort, trials, "cosine", 5)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=ATOL32)


def test_as_norm_errors(data):
    crops, cohort, trials = data
    sv = ScoringVectors.from_embeddings(crops, "cosine")
    co = ScoringVectors.from_embeddings(cohort, "cosine")
    with pytest.raises(ValueError, match="top_k=1"):
        as_norm([0.1], [0], [1], sv, co, top_k=1)
    with pytest.raises(ValueError, match="2 scores, 1 enrol"):
        as_norm([0.1, 0.2], [0], [1], sv, co)
    flat = ScoringVectors.from_embeddings(np.ones((3, 8)), "cosine")
    two = ScoringVectors.from_embeddings(np.ones((2, 8)), "cosine")
    with pytest.raises(
        ValueError, match=r"row 0: its top-3 .*\(standard deviation 0\)"
    ):
        as_norm([0.1], [0], [1], two, flat)
    dot = ScoringVectors.from_embeddings(cohort, "dot")
    with pytest.raises(
        ValueError, match=r"cannot score cosine \[8\] vectors against dot"
    ):
        as_norm([0.1], [0], [1], sv, dot)


def test_as_norm_accepts_raw_embeddings(data):
    crops, cohort, trials = data
    ie, it = np.array(trials).T
    ref = loop_asnorm(crops, cohort, trials, "cosine", 5)
    raw = ScoringVectors.from_embeddings(crops, "cosine").score_pairs(ie, it)
    # Crop embeddings and the cohort's crop embeddings, cosine by default.
    got = as_norm(raw, ie, it, crops, cohort, top_k=5)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=ATOL64)
    # Raw cohort embeddings are scored by the vectors' method.
    ref_dot = loop_asnorm(crops, cohort, trials, "dot", 5)
    sv = ScoringVectors.from_embeddings(crops, "dot")
    got = as_norm(sv.score_pairs(ie, it), ie, it, sv, cohort, top_k=5)
    np.testing.assert_allclose(got, ref_dot, rtol=1e-10, atol=ATOL64)
