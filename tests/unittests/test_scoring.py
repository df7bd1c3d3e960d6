"""Closed-form trial scoring against the paper's protocol written out: for
every trial, a plain loop over the 10 x 10 crop pairs, then the mean."""

import math
import os
import tempfile

import numpy as np
import pytest
import torch

from dampit.dataio.trials import read_trial_indices
from dampit.inference.embedding_store import save_embeddings
from dampit.metrics.scoring import ScoringVectors, cosine_scores


def score_atol(x, eps=1e-12):
    """Absolute tolerance of a score summed over D products of |x| <= m.

    Rounding of a D-term sum of products is a few ulps of D * m^2 (about
    1e-12 * D * m^2 in float64, ``eps=1e-6`` for float32 stores), whatever
    the BLAS' summation order; a score near 0 only has this absolute error.
    """
    x = np.asarray(x, dtype=np.float64)
    return eps * x.shape[-1] * float(np.abs(x).max()) ** 2


def pair_score(a, b, method):
    """One crop pair, written out."""
    dot = sum(x * y for x, y in zip(a, b))
    if method == "dot":
        return dot
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb)


def score(embeddings, ie, it, method="cosine", chunk_size=None):
    """Scores of trials by :class:`ScoringVectors`."""
    sv = ScoringVectors.from_embeddings(embeddings, method)
    return sv.score_pairs(ie, it, chunk_size)


def naive_trial_score(crops_e, crops_t, method):
    """Mean over all crop pairs, by a plain loop."""
    total = 0.0
    for a in crops_e:
        for b in crops_t:
            total += pair_score(a.tolist(), b.tolist(), method)
    return total / (len(crops_e) * len(crops_t))


@pytest.fixture
def crops():
    rng = np.random.default_rng(0)
    # 12 utterances x 10 crops x 16 dims, not centred (raw embeddings).
    return rng.normal(0.3, 1.0, size=(12, 10, 16))


@pytest.fixture
def trials():
    rng = np.random.default_rng(1)
    ie, it = rng.integers(0, 12, size=40), rng.integers(0, 12, size=40)
    it[:3] = ie[:3]  # self-trials
    return ie, it


@pytest.mark.parametrize("method", ["dot", "cosine"])
def test_closed_form_equals_naive_100_pair_loop(crops, trials, method):
    ie, it = trials
    ref = [
        naive_trial_score(crops[e], crops[t], method) for e, t in zip(ie, it)
    ]
    tol = {"rtol": 1e-12, "atol": score_atol(crops)}
    np.testing.assert_allclose(score(crops, ie, it, method), ref, **tol)
    got = score(torch.from_numpy(crops), ie, it, method, chunk_size=3)
    np.testing.assert_allclose(got, ref, **tol)
    sv = ScoringVectors.from_embeddings(crops, method, chunk_size=5)
    np.testing.assert_allclose(sv.score_pairs(ie, it), ref, **tol)
    sv32 = ScoringVectors.from_embeddings(crops.astype(np.float32), method)
    assert sv32.vectors.dtype == np.float32
    np.testing.assert_allclose(
        sv32.score_pairs(ie, it), ref, rtol=1e-5, atol=score_atol(crops, 1e-6)
    )


def test_crop_means_live_in_a_temporary_file_left_nowhere(
    tmp_path, monkeypatch, crops, trials
):
    # Vox1-E's [U, D] means (1.1 GB) must not take RAM: they are a memory
    # map of a temporary file that no directory lists (nothing to clean).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    store = save_embeddings(tmp_path / "s", list("abcdefghijkl"), crops)
    before = sorted(os.listdir(tmp_path))
    sv = ScoringVectors.from_embeddings(store, "dot", chunk_size=5)
    assert isinstance(sv.vectors, np.memmap)
    assert sorted(os.listdir(tmp_path)) == before
    ie, it = trials
    ref = [naive_trial_score(crops[e], crops[t], "dot") for e, t in zip(ie, it)]
    np.testing.assert_allclose(
        sv.score_pairs(ie, it), ref, rtol=1e-12, atol=score_atol(crops)
    )


@pytest.mark.parametrize("method", ["dot", "cosine"])
def test_single_embeddings_full_utterance_scores(method):
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(9, 16))
    ie, it = rng.integers(0, 9, 30), rng.integers(0, 9, 30)
    it[:2] = ie[:2]  # self-trials
    ref = [pair_score(emb[e], emb[t], method) for e, t in zip(ie, it)]
    sv = ScoringVectors.from_embeddings(emb, method)
    assert sv.vectors is emb  # no copy for [U, D]
    tol = {"rtol": 1e-12, "atol": score_atol(emb)}
    np.testing.assert_allclose(sv.score_pairs(ie, it), ref, **tol)
    # SpeechBrain's [U, 1, D] and a torch tensor give the same.
    t = torch.from_numpy(emb)[:, None]
    np.testing.assert_allclose(
        score(t, ie, it, method, chunk_size=4), ref, **tol
    )


def test_cosine_scores_are_torch_cosine_similarity():
    e, t = torch.randn(5, 32), torch.randn(5, 32)
    got = cosine_scores(torch.cat([e, t]), np.arange(5), np.arange(5, 10))
    ref = torch.nn.functional.cosine_similarity(e, t).numpy()
    # float32 inputs: D * eps32 of cosines bounded by 1.
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=32 * 1.2e-7)
    hand = cosine_scores([[3.0, 4.0], [0.0, 1.0], [-3, -4]], [0, 0], [1, 2])
    np.testing.assert_allclose(hand, [0.8, -1.0], rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match="not crops"):
        cosine_scores(np.ones((2, 3, 4)), [0], [1])


def test_chunking_does_not_change_scores(crops, trials):
    ie, it = trials
    for method in ("dot", "cosine"):
        ref = score(crops, ie, it, method)
        for chunk in (1, 3, 1000):
            sv = ScoringVectors.from_embeddings(crops, method, chunk)
            np.testing.assert_array_equal(sv.score_pairs(ie, it, chunk), ref)


def test_score_block_matches_loop(crops):
    # Crops and whole utterances ([U, D]: cosine by its scale).
    for emb in (crops, crops[:, :1]):
        sv = ScoringVectors.from_embeddings(emb[:5], "cosine")
        other = ScoringVectors.from_embeddings(emb[5:], "cosine")
        block = sv.score_block([0, 3], other)
        assert block.shape == (2, 7)
        for r, row in enumerate([0, 3]):
            ref = [
                naive_trial_score(emb[row], emb[5 + j], "cosine")
                for j in range(7)
            ]
            np.testing.assert_allclose(
                block[r], ref, rtol=1e-12, atol=score_atol(emb)
            )
    dot = ScoringVectors.from_embeddings(crops, "dot")
    with pytest.raises(
        ValueError,
        match=r"cannot score cosine \[16\] vectors against dot \[16\]",
    ):
        sv.score_block([0], dot)


def test_store_scoring_names_bad_utterances(tmp_path, crops, trials):
    ids = [f"u{i}" for i in range(12)]
    store = save_embeddings(tmp_path / "s", ids, crops.astype(np.float32))
    ie, it = trials
    c32 = crops.astype(np.float32)
    ref = [naive_trial_score(c32[e], c32[t], "cosine") for e, t in zip(ie, it)]
    np.testing.assert_allclose(
        score(store, ie, it, "cosine"), ref, rtol=1e-5, atol=1e-6
    )
    c = crops.copy()
    c[4, 2] = 0.0
    bad = save_embeddings(tmp_path / "z", ids, c)
    with pytest.raises(ValueError, match="utterance u4, crop 2"):
        score(bad, ie, it, "cosine")
    score(bad, ie, it, "dot")  # an all-zero crop is fine for dot
    c[1, 0, 0] = np.inf
    with pytest.raises(ValueError, match="utterance 1, crop 0"):
        score(c, ie, it, "dot")


def test_errors(crops):
    with pytest.raises(ValueError, match="method must be one of"):
        score(crops, [0], [1], "sqeuclidean")
    with pytest.raises(ValueError, match=r"\[U, D\] or \[U, n_crops, D\]"):
        score(np.ones(3), [0], [1])
    with pytest.raises(IndexError, match="trial 2: test row 12 is not"):
        score(crops, [0, 1], [1, 12])
    with pytest.raises(ValueError, match="2 enrol but 1 test"):
        score(crops, [0, 1], [1])


def test_half_precision_and_integer_inputs():
    emb = torch.randn(4, 3, 8)
    ref = score(emb.double(), [0, 1], [2, 3])
    for x in (emb.bfloat16(), emb.half()):
        sv = ScoringVectors.from_embeddings(x, "cosine")
        assert sv.vectors.dtype == np.float32
        # bfloat16 rounding (8 bits) of cosines bounded by 1.
        np.testing.assert_allclose(
            sv.score_pairs([0, 1], [2, 3]), ref, atol=2e-2
        )
    ints = np.arange(6).reshape(2, 3)
    assert score(ints, [0], [1], "dot").tolist() == [14.0]


def test_hand_worked_crop_pair_means():
    # Crops (3, 4), (0, 2) against (1, 1): dots 7 and 2, cosines
    # 7 / (5 sqrt 2) and 2 / (2 sqrt 2).
    crops = [[[3.0, 4.0], [0.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]]
    want = {
        "dot": 4.5,
        "cosine": (7 / (5 * math.sqrt(2)) + 1 / math.sqrt(2)) / 2,
    }
    for method, ref in want.items():
        got = score(crops, [0], [1], method)
        np.testing.assert_allclose(got, [ref], rtol=1e-15, atol=1e-14)


def test_trial_file_to_store_scores(tmp_path, crops):
    ids = [f"spk{i % 3}/u{i}.wav" for i in range(12)]
    store = save_embeddings(tmp_path / "s", ids, crops)
    rng = np.random.default_rng(5)
    rows = rng.integers(0, 12, size=(25, 2))
    lines = [f"{(a + b) % 2} {ids[a]} {ids[b]}\n" for a, b in rows]
    (tmp_path / "t.txt").write_text("".join(lines))
    ie, it, labels, names = read_trial_indices(tmp_path / "t.txt")
    in_store = np.array([store.index[n] for n in names])
    ie, it = in_store[ie], in_store[it]
    assert labels.tolist() == [(a + b) % 2 for a, b in rows]
    ref = [naive_trial_score(crops[a], crops[b], "dot") for a, b in rows]
    np.testing.assert_allclose(
        score(store, ie, it, "dot"),
        ref,
        rtol=1e-12,
        atol=score_atol(crops),
    )
