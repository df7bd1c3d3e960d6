"""Tests for closed-form multi-crop scoring and the embedding store.

The reference is the paper's protocol written out: for every trial, a loop
over the 10 x 10 crop pairs, then the mean."""

import math
import os

import numpy as np
import pytest
import torch

from dampit.metrics.embedding_store import (
    EmbeddingStore,
    EmbeddingStoreWriter,
    UnknownUtteranceError,
    read_trial_indices,
    save_embeddings,
)
from dampit.metrics.multicrop import (
    ScoringVectors,
    cosine_scores,
    crop_statistics,
    explicit_pair_scores,
    read_scores,
    score_from_stats,
    score_trial_list,
    score_trials,
    write_scores,
)


def pair_score(a, b, method):
    """One crop pair, written out."""
    dot = sum(x * y for x, y in zip(a, b))
    if method == "dot":
        return dot
    if method == "cosine":
        na = math.sqrt(sum(x * x for x in a))
        nb = math.sqrt(sum(y * y for y in b))
        return dot / (na * nb)
    sq = sum((x - y) ** 2 for x, y in zip(a, b))
    return -sq if method == "sqeuclidean" else -math.sqrt(sq)


def score_atol(x, eps=1e-12):
    """Absolute tolerance of a score summed over D products of |x| <= m.

    Rounding of a D-term sum of products is a few ulps of D * m^2 (about
    1e-12 * D * m^2 in float64, ``eps=1e-5`` for float32), whatever the
    BLAS' summation order; a score near 0 (a self-trial under
    ``sqeuclidean``) only has this absolute error.
    """
    x = np.asarray(x, dtype=np.float64)
    return eps * x.shape[-1] * float(np.abs(x).max()) ** 2


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
    return rng.integers(0, 12, size=40), rng.integers(0, 12, size=40)


@pytest.mark.parametrize("method", ["dot", "cosine", "sqeuclidean"])
def test_closed_form_equals_naive_100_pair_loop(crops, trials, method):
    ie, it = trials
    ref = [
        naive_trial_score(crops[e], crops[t], method) for e, t in zip(ie, it)
    ]
    sv = ScoringVectors.from_embeddings(crops, method)
    np.testing.assert_allclose(
        sv.score_pairs(ie, it), ref, rtol=1e-12, atol=score_atol(crops)
    )
    # Same from the per-utterance statistics, and from float32 crops.
    st = crop_statistics(crops)
    got = score_from_stats(
        type(st)(*(None if f is None else f[ie] for f in st)),
        type(st)(*(None if f is None else f[it] for f in st)),
        method,
    )
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=score_atol(crops))
    sv32 = ScoringVectors.from_embeddings(crops.astype(np.float32), method)
    assert sv32.vectors.dtype == np.float32
    np.testing.assert_allclose(
        sv32.score_pairs(ie, it), ref, rtol=2e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "method", ["dot", "cosine", "sqeuclidean", "euclidean"]
)
def test_explicit_pair_scores_equal_naive_loop(crops, trials, method):
    ie, it = trials
    ref = [
        naive_trial_score(crops[e], crops[t], method) for e, t in zip(ie, it)
    ]
    got = explicit_pair_scores(crops, ie, it, method, chunk_size=7)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=score_atol(crops))


def test_crop_statistics_hand_case():
    # crops (3, 4) and (0, 2): mean (1.5, 3); unit crops (.6, .8), (0, 1)
    # -> mean (.3, .9); squared norms 25 and 4 -> 14.5.
    st = crop_statistics(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    np.testing.assert_allclose(st.mean, [1.5, 3.0])
    np.testing.assert_allclose(st.norm_mean, [0.3, 0.9])
    assert float(st.sq_norm) == pytest.approx(14.5)


def test_crop_statistics_batched_and_chunked_match_single(crops):
    full = crop_statistics(crops, chunk_size=5)
    for u in (0, 7, 11):
        one = crop_statistics(crops[u])
        for a, b in zip(full, one):
            np.testing.assert_allclose(
                a[u], b, rtol=1e-14, atol=score_atol(crops, 1e-14)
            )


@pytest.mark.parametrize("method", ["dot", "cosine", "sqeuclidean"])
def test_single_embeddings_full_utterance_scores(method):
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(9, 16))
    ie, it = rng.integers(0, 9, 30), rng.integers(0, 9, 30)
    ref = [pair_score(emb[e], emb[t], method) for e, t in zip(ie, it)]
    sv = ScoringVectors.from_embeddings(emb, method)
    assert sv.vectors is emb  # no copy for [U, D]
    np.testing.assert_allclose(
        sv.score_pairs(ie, it), ref, rtol=1e-12, atol=score_atol(emb)
    )
    # SpeechBrain's [U, 1, D] and a torch tensor give the same.
    sv2 = ScoringVectors.from_embeddings(torch.from_numpy(emb)[:, None], method)
    np.testing.assert_allclose(
        sv2.score_pairs(ie, it, chunk_size=4),
        ref,
        rtol=1e-12,
        atol=score_atol(emb),
    )


def test_cosine_of_single_embeddings_is_torch_cosine_similarity():
    e = torch.randn(5, 32)
    t = torch.randn(5, 32)
    sv = ScoringVectors.from_embeddings(torch.cat([e, t]), "cosine")
    got = sv.score_pairs(np.arange(5), np.arange(5, 10))
    ref = torch.nn.functional.cosine_similarity(e, t).numpy()
    np.testing.assert_allclose(
        got, ref, rtol=1e-5, atol=score_atol(np.ones(32), 1e-7)
    )


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_chunking_does_not_change_scores(crops, trials, chunk):
    ie, it = trials
    sv = ScoringVectors.from_embeddings(crops, "sqeuclidean", chunk_size=chunk)
    ref = ScoringVectors.from_embeddings(crops, "sqeuclidean")
    np.testing.assert_array_equal(
        sv.score_pairs(ie, it, chunk_size=chunk), ref.score_pairs(ie, it)
    )


def test_score_block_matches_score_pairs(crops):
    sv = ScoringVectors.from_embeddings(crops[:5], "sqeuclidean")
    other = ScoringVectors.from_embeddings(crops[5:], "sqeuclidean")
    block = sv.score_block([0, 3], other)
    assert block.shape == (2, 7)
    for r, row in enumerate([0, 3]):
        ref = [
            naive_trial_score(crops[row], crops[5 + j], "sqeuclidean")
            for j in range(7)
        ]
        np.testing.assert_allclose(
            block[r], ref, rtol=1e-12, atol=score_atol(crops)
        )


def test_zero_crop_and_nan_errors():
    c = np.ones((2, 3, 4))
    c[1, 2] = 0.0
    with pytest.raises(ValueError, match="crop 2 of utterance 1"):
        ScoringVectors.from_embeddings(c, "cosine")
    ScoringVectors.from_embeddings(c, "dot")  # fine without normalising
    c[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="utterance 0 are not finite"):
        ScoringVectors.from_embeddings(c, "dot")
    with pytest.raises(ValueError, match="method"):
        ScoringVectors.from_embeddings(c, "euclidean")
    sv = ScoringVectors.from_embeddings(np.ones((2, 3)), "dot")
    with pytest.raises(IndexError, match="trial 2: test row 5"):
        sv.score_pairs([0, 1], [1, 5])


# ---------------------------------------------------------------- store


def test_store_roundtrip_dict_and_mmap(tmp_path, crops):
    ids = [f"id1/{u:03d}.wav" for u in range(len(crops))]
    emb = {u: torch.from_numpy(c).float() for u, c in zip(ids, crops)}
    store = save_embeddings(tmp_path / "s", emb)
    assert isinstance(store.embeddings, np.memmap)
    assert store.embeddings.dtype == np.float32
    assert (len(store), store.n_crops, store.dim) == (12, 10, 16)
    again = EmbeddingStore(tmp_path / "s", mmap=False)
    assert again.ids == ids
    np.testing.assert_array_equal(again[ids[4]], crops[4].astype(np.float32))
    assert sorted(os.listdir(tmp_path / "s")) == ["embeddings.npy", "ids.txt"]
    # A plain numpy load sees the same array.
    raw = np.load(tmp_path / "s" / "embeddings.npy", mmap_mode="r")
    np.testing.assert_array_equal(raw, store.embeddings)


def test_store_single_vectors_and_speechbrain_shape(tmp_path):
    emb = {"a": torch.ones(1, 8), "b": torch.zeros(1, 8)}
    store = save_embeddings(tmp_path, emb)
    assert store.embeddings.shape == (2, 8) and store.n_crops is None


def test_writer_failure_keeps_old_store(tmp_path):
    save_embeddings(tmp_path, ["a", "b"], np.ones((2, 3)))
    w = EmbeddingStoreWriter(tmp_path, 3, (3,))
    w.add("x", np.zeros(3))
    with pytest.raises(ValueError, match="opened for 3 utterances but 1"):
        w.close()
    store = EmbeddingStore(tmp_path)
    assert store.ids == ["a", "b"]
    assert float(store["a"].sum()) == 3.0
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    with pytest.raises(RuntimeError, match="boom"):
        with EmbeddingStoreWriter(tmp_path, 1, (3,)) as w2:
            w2.add("y", np.zeros(3))
            raise RuntimeError("boom")
    assert EmbeddingStore(tmp_path).ids == ["a", "b"]


def test_writer_errors(tmp_path):
    with EmbeddingStoreWriter(tmp_path, 3, (2, 4)) as w:
        with pytest.raises(ValueError, match="shape"):
            w.add("a", np.zeros(4))
        w.add("a", np.zeros((2, 4)))
        with pytest.raises(ValueError, match="duplicate utterance ID 'a'"):
            w.add("a", np.zeros((2, 4)))
        with pytest.raises(ValueError, match="'b' has NaN"):
            w.add("b", np.full((2, 4), np.nan))
        with pytest.raises(ValueError, match="line break"):
            w.add("c\nd", np.zeros((2, 4)))
        w.add_batch(["b", "c"], np.ones((2, 2, 4)))
    assert EmbeddingStore(tmp_path).ids == ["a", "b", "c"]


def test_store_inconsistent_files_are_reported(tmp_path):
    save_embeddings(tmp_path, ["a", "b"], np.ones((2, 3)))
    (tmp_path / "ids.txt").write_text("a\n")
    with pytest.raises(ValueError, match="1 IDs in ids.txt but 2 rows"):
        EmbeddingStore(tmp_path)
    os.remove(tmp_path / "ids.txt")
    with pytest.raises(FileNotFoundError, match="missing: .*ids.txt"):
        EmbeddingStore(tmp_path)


def test_unknown_utterance_in_trials_is_named(tmp_path):
    store = save_embeddings(tmp_path, ["a", "b"], np.ones((2, 3)))
    trials = [(1, "a", "b"), (0, "b", "zz/9.wav")]
    with pytest.raises(UnknownUtteranceError, match=r"trial 2 of veri.*zz/9"):
        store.trial_indices(trials, source="veri.txt")
    p = tmp_path / "trials.txt"
    p.write_text("1 a b\n\n0 a nope\n")
    with pytest.raises(UnknownUtteranceError, match=r"trials.txt:3.*'nope'"):
        read_trial_indices(p, store)
    p.write_text("1 a b\n2 a b\n")
    with pytest.raises(ValueError, match=r"trials.txt:2: label must be 0"):
        read_trial_indices(p, store)
    with pytest.raises(UnknownUtteranceError, match="'q' is not in"):
        store.row("q")


@pytest.mark.parametrize(
    "method", ["sqeuclidean", "dot", "cosine", "euclidean"]
)
def test_score_trials_from_store_and_file(tmp_path, crops, method):
    ids = [f"u{i}" for i in range(len(crops))]
    store = save_embeddings(tmp_path / "store", ids, crops.astype(np.float32))
    rng = np.random.default_rng(3)
    pairs = [
        (int(rng.integers(0, 2)), ids[e], ids[t])
        for e, t in rng.integers(0, 12, size=(25, 2))
    ]
    p = tmp_path / "trials.txt"
    p.write_text("".join(f"{lab} {e} {t}\n" for lab, e, t in pairs))
    s1, lab1, ie, it = score_trial_list(store, pairs, method=method)
    s2, lab2, _, _ = score_trial_list(
        str(tmp_path / "store"),
        p,
        method=method,
        chunk_size=4,
        out_folder=tmp_path / "vec",
    )
    np.testing.assert_allclose(s1, s2, rtol=1e-12, atol=score_atol(crops, 1e-6))
    assert lab1.tolist() == lab2.tolist() == [x[0] for x in pairs]
    c32 = crops.astype(np.float32).astype(np.float64)
    ref = [naive_trial_score(c32[e], c32[t], method) for e, t in zip(ie, it)]
    np.testing.assert_allclose(s1, ref, rtol=1e-5, atol=score_atol(crops, 1e-6))
    if method != "euclidean":
        vec = np.load(tmp_path / "vec" / f"{method}_vectors.npy")
        assert vec.shape == (12, 16)


def test_score_file_roundtrip(tmp_path):
    p = tmp_path / "scores.txt"
    s = np.array([0.1234567890123, -2.5, 1e-12])
    write_scores(p, ["a", "b", "c"], ["d", "e", "f"], s, [1, 0, 1])
    e, t, got, lab = read_scores(p)
    assert e == ["a", "b", "c"] and t == ["d", "e", "f"]
    np.testing.assert_array_equal(got, s)  # repr: exact round trip
    assert lab.tolist() == [1, 0, 1]
    write_scores(p, ["a"], ["b"], [0.5])
    assert read_scores(p)[3] is None
    with pytest.raises(ValueError, match="must match"):
        write_scores(p, ["a"], ["b", "c"], [0.5])


@pytest.mark.parametrize("method", ["dot", "cosine", "sqeuclidean"])
def test_index_api_from_stats_crops_and_store(tmp_path, crops, trials, method):
    ie, it = trials
    ref = [
        naive_trial_score(crops[e], crops[t], method) for e, t in zip(ie, it)
    ]
    stats = crop_statistics(crops)
    np.testing.assert_allclose(
        score_trials(stats, ie, it, method),
        ref,
        rtol=1e-12,
        atol=score_atol(crops),
    )
    np.testing.assert_allclose(
        score_trials(torch.from_numpy(crops), ie, it, method, chunk_size=3),
        ref,
        rtol=1e-12,
        atol=score_atol(crops),
    )
    store = save_embeddings(tmp_path, [str(i) for i in range(12)], crops)
    np.testing.assert_allclose(
        score_trials(store, ie, it, method),
        ref,
        rtol=1e-5,
        atol=score_atol(crops, 1e-6),
    )
    with pytest.raises(ValueError, match="built for"):
        score_trials(ScoringVectors.from_stats(stats, "dot"), ie, it, "cosine")


def test_cosine_scores_full_utterance():
    emb = np.array([[3.0, 4.0], [0.0, 1.0], [-3.0, -4.0]])
    got = cosine_scores(emb, [0, 0, 1], [1, 2, 1])
    np.testing.assert_allclose(got, [0.8, -1.0, 1.0])


def test_read_trial_indices_blocks_blank_lines_and_bad_columns(tmp_path):
    ids = [f"spk{u // 10:03d}/utt{u:05d}.wav" for u in range(200)]
    store = save_embeddings(tmp_path / "s", ids, np.ones((200, 2)))
    rng = np.random.default_rng(0)
    tri = rng.integers(0, 200, size=(30_000, 2))  # > 1 MB: several blocks
    lab = rng.integers(0, 2, size=30_000)
    lines = [f"{x} {ids[a]} {ids[b]}\n" for x, (a, b) in zip(lab, tri)]
    lines.insert(12_345, "\n")  # a blank line inside a block
    p = tmp_path / "trials.txt"
    p.write_text("".join(lines))
    e, t, got = read_trial_indices(p, store)
    assert e.tolist() == tri[:, 0].tolist() and t.tolist() == tri[:, 1].tolist()
    assert got.tolist() == lab.tolist()
    # Two columns, no labels.
    p.write_text(f"{ids[3]} {ids[4]}\n{ids[5]} {ids[6]}\n")
    e, t, got = read_trial_indices(p, store)
    assert (e.tolist(), t.tolist(), got) == ([3, 5], [4, 6], None)
    # 4 + 2 tokens would average 3 a line: still reported.
    p.write_text(f"1 {ids[0]} {ids[1]}\n1 a b c\nx y\n")
    with pytest.raises(ValueError, match=r"trials.txt:2: expected 3 columns"):
        read_trial_indices(p, store)
    p.write_text("1 a b c\n")
    with pytest.raises(ValueError, match=r"trials.txt:1: expected 'label"):
        read_trial_indices(p, store)
    p.write_text("\n\n")
    with pytest.raises(ValueError, match="no trials"):
        read_trial_indices(p, store)


def test_half_precision_and_integer_inputs():
    emb = torch.randn(4, 3, 8)
    ref = ScoringVectors.from_embeddings(emb.double(), "cosine")
    for x in (emb.bfloat16(), emb.half()):
        sv = ScoringVectors.from_embeddings(x, "cosine")
        assert sv.vectors.dtype == np.float32
        np.testing.assert_allclose(
            sv.score_pairs([0, 1], [2, 3]),
            ref.score_pairs([0, 1], [2, 3]),
            atol=2e-2,
        )
    sv = ScoringVectors.from_embeddings(np.arange(6).reshape(2, 3), "dot")
    assert sv.score_pairs([0], [1]).tolist() == [14.0]
