"""The vectorised losses against plain-loop references written here.

Each reference follows the definition literally, one anchor / pair /
triplet at a time, in float64 Python arithmetic, on random batches of
several shapes (B up to 128) and seeds, and on batches that SpeechBrain's
``Augmenter`` made with augmented copies (rows of one source: an utterance
and its copies, neither positive nor negative for each other, or counted).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from speechbrain.augment.augmenter import Augmenter
from speechbrain.augment.time_domain import AddNoise

from dampit.losses import (
    AngularLoss,
    MultiMetricLoss,
    NPairLoss,
    SoftmaxLoss,
    TripletLoss,
)

# (P speakers, K utterances each, D) -> B = P * K
SHAPES = [
    (2, 2, 3),
    (5, 3, 8),
    (16, 2, 32),
    (8, 4, 16),
    (64, 2, 64),
    (32, 4, 16),
]
SEEDS = [0, 1, 2]


def _batch(p, k, d, seed, shuffle=True, extra_singletons=0):
    """Random embeddings and labels of a P x K batch (optionally shuffled)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.choice(1000, size=p, replace=False), k)
    if extra_singletons:
        labels = np.concatenate([labels, 2000 + np.arange(extra_singletons)])
    if shuffle:
        labels = labels[rng.permutation(len(labels))]
    # Speaker centres plus noise, so some triplets are active, some not.
    centres = {lab: rng.normal(size=d) for lab in set(labels.tolist())}
    emb = np.stack([centres[lab] + 0.8 * rng.normal(size=d) for lab in labels])
    emb *= rng.uniform(0.5, 2.0)
    return emb, labels


def _dist_matrix(emb, kind):
    """All pairwise distances from explicit differences (no Gram trick)."""
    diff = emb[:, None, :] - emb[None, :, :]
    if kind == "cosine":
        norms = np.sqrt((emb * emb).sum(1))
        return 1.0 - (emb @ emb.T) / np.outer(norms, norms)
    sq = (diff * diff).sum(-1)
    return np.sqrt(sq) if kind == "euclidean" else sq


def ref_triplet(emb, labels, margin, distance, mining, sources=None):
    """Triplet loss (mean) and frac_an_gt_ap with explicit loops; a
    positive is a row of the anchor's label from another source (None:
    every row its own)."""
    n = len(labels)
    src = list(range(n)) if sources is None else list(sources)
    d = _dist_matrix(emb, distance).tolist()
    terms, gt = [], []
    for a in range(n):
        pos = [
            j for j in range(n) if src[j] != src[a] and labels[j] == labels[a]
        ]
        neg = [j for j in range(n) if labels[j] != labels[a]]
        if not pos or not neg:
            continue
        hard_p = max(d[a][j] for j in pos)
        hard_n = min(d[a][j] for j in neg)
        gt.append(hard_n > hard_p)
        if mining == "batch_hard":
            terms.append(max(0.0, hard_p - hard_n + margin))
        else:  # semi_hard
            for p in pos:
                dap = d[a][p]
                semi = [d[a][k] for k in neg if dap < d[a][k] < dap + margin]
                dan = min(semi) if semi else hard_n
                terms.append(max(0.0, dap - dan + margin))
    return sum(terms) / len(terms), sum(gt) / len(gt)


def ref_pairs(labels, sources=None):
    """Each label's first row and its next row from another source (None:
    every row its own: the first two occurrences), by first position."""
    src = list(range(len(labels))) if sources is None else list(sources)
    pairs = []
    for i, lab in enumerate(labels):
        idx = [j for j, other in enumerate(labels) if other == lab]
        later = [j for j in idx if j > i and src[j] != src[i]]
        if idx[0] == i and later:
            pairs.append((i, later[0]))
    return pairs


def _logsumexp(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def ref_npair_eq10(emb, labels, l2_reg, sources=None):
    """Eq. 10 (mean over anchors) plus the original code's norm penalty."""
    pairs = ref_pairs(labels, sources)
    anchors = [emb[a] for a, _ in pairs]
    positives = [emb[p] for _, p in pairs]
    total = 0.0
    for i, f in enumerate(anchors):
        s = [float(np.dot(f, fp)) for fp in positives]
        terms = [0.0] + [s[j] - s[i] for j in range(len(s)) if j != i]
        total += _logsumexp(terms)  # log(1 + sum exp(...))
    ce = total / len(pairs)
    l2 = (
        0.25
        * 0.02
        * (
            sum(float(np.dot(a, a)) for a in anchors)
            + sum(float(np.dot(p, p)) for p in positives)
        )
    )
    return ce + l2_reg / 0.005 * l2 / len(pairs)


def ref_npair_original(emb, labels, l2_reg):
    """The original code: rows 0::2 vs 1::2, soft label-equality targets."""
    anchors, positives = emb[0::2], emb[1::2]
    la, lp = labels[0::2], labels[1::2]
    n = len(anchors)
    total = 0.0
    for i in range(n):
        logits = [float(np.dot(anchors[i], positives[j])) for j in range(n)]
        lse = _logsumexp(logits)
        same = [float(la[i] == lp[j]) for j in range(n)]
        for j in range(n):
            total -= same[j] / sum(same) * (logits[j] - lse)
    l2 = sum(float(np.dot(a, a)) for a in anchors) + sum(
        float(np.dot(p, p)) for p in positives
    )
    return total / n + l2_reg * l2 / n


def _unit(v):
    return v / math.sqrt(float(np.dot(v, v)))


def ref_angular(emb, labels, alpha, form, sources=None):
    """Angular loss, one (pair, negative) at a time; the negatives of a
    pair are the other pairs' positives (the original code)."""
    t2 = math.tan(math.radians(alpha)) ** 2
    pairs = ref_pairs(labels, sources)
    terms_all = []
    per_pair = []
    for a_i, p_i in pairs:
        a, p = _unit(emb[a_i]), _unit(emb[p_i])
        c = (a + p) / 2
        values = []
        for j in [q for _, q in pairs if labels[q] != labels[a_i]]:
            n = _unit(emb[j])
            if form == "npair":
                values.append(
                    4 * t2 * float(np.dot(a + p, n))
                    - 2 * (1 + t2) * float(np.dot(a, p))
                )
            else:
                sq_ap = float(np.dot(a - p, a - p))
                sq_nc = float(np.dot(n - c, n - c))
                terms_all.append(max(0.0, sq_ap - 4 * t2 * sq_nc))
        if form == "npair":
            per_pair.append(math.log(1 + sum(math.exp(v) for v in values)))
    if form == "npair":
        return sum(per_pair) / len(per_pair)
    return sum(terms_all) / len(terms_all)


def _t(emb, labels, dtype=torch.float64):
    return torch.tensor(emb, dtype=dtype), torch.tensor(labels)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
@pytest.mark.parametrize(
    "distance", ["euclidean", "squared_euclidean", "cosine"]
)
def test_triplet_matches_loop(shape, seed, mining, distance):
    """Both minings x every distance, several batches with singletons."""
    emb, labels = _batch(*shape, seed=seed, extra_singletons=seed)
    margin = {"euclidean": 1.0, "squared_euclidean": 4.0, "cosine": 0.3}[
        distance
    ]
    loss_fn = TripletLoss(margin=margin, distance=distance, mining=mining)
    got = loss_fn(*_t(emb, labels))
    want, frac = ref_triplet(emb, labels, margin, distance, mining)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert loss_fn.last_stats["frac_an_gt_ap"].item() == pytest.approx(frac)
    # float32 input: same value to float32 precision (distances ~ 10).
    got32 = loss_fn(*_t(emb, labels, torch.float32))
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(want, rel=2e-4, abs=2e-4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("l2_reg", [0.0, 0.005])
def test_npair_matches_eq10_loop(shape, seed, l2_reg):
    """First-two pairing on shuffled batches, with K >= 2 and singletons."""
    emb, labels = _batch(*shape, seed=seed, extra_singletons=2)
    emb = emb / 4.0  # keep exp() of the loop reference in range
    got = NPairLoss(l2_reg=l2_reg)(*_t(emb, labels)).item()
    assert got == pytest.approx(ref_npair_eq10(emb, labels, l2_reg), rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", [2, 4, 16, 64])
def test_npair_default_is_the_original_code_on_pk2_batches(seed, p):
    """Speaker-major P x 2 batch: the original code's rows 0::2 / 1::2
    with its label-equality targets, and Eq. 10 with the penalty."""
    emb, labels = _batch(p, 2, 16, seed, shuffle=False)
    emb = emb / 4.0
    got = NPairLoss()(*_t(emb, labels)).item()
    want = ref_npair_original(emb, labels, 0.005)
    assert got == pytest.approx(want, rel=1e-9)
    assert want == pytest.approx(ref_npair_eq10(emb, labels, 0.005))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("form", ["npair", "hinge"])
def test_angular_matches_loop(shape, seed, form):
    """Both forms, alpha 45 and 36 degrees."""
    emb, labels = _batch(*shape, seed=seed, extra_singletons=1)
    for alpha in (45.0, 36.0):
        loss_fn = AngularLoss(alpha=alpha, form=form)
        got = loss_fn(*_t(emb, labels)).item()
        want = ref_angular(emb, labels, alpha, form)
        # hinge terms can all be 0: atol at the float64 rounding level
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def _ref_margin_softmax(cos, labels, margin, scale):
    """Cross-entropy of scaled cosines with the target's margin."""
    total = 0.0
    for row, y in zip(cos, labels):
        logits = []
        for c_idx, c in enumerate(row):
            c = float(c)
            if c_idx == y:
                theta = math.acos(min(max(c, -1 + 1e-7), 1 - 1e-7))
                if c > math.cos(math.pi - margin):
                    c = math.cos(theta + margin)
                else:
                    c = c - math.sin(math.pi - margin) * margin
            logits.append(scale * c)
        total -= logits[y] - _logsumexp(logits)
    return total / len(labels)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["linear", "aam"])
def test_softmax_matches_loop(seed, kind):
    """Linear CE and SpeechBrain's AAM against the formulas."""
    torch.manual_seed(seed)
    b, d, c = 128, 24, 11
    emb = torch.randn(b, d)
    labels = torch.randint(0, c, (b,))
    loss_fn = SoftmaxLoss(d, c, kind=kind, margin=0.2, scale=30.0)
    got = loss_fn(emb, labels).item()
    if kind == "linear":
        w = loss_fn.classifier.weight.detach().double()
        bias = loss_fn.classifier.bias.detach().double()
        total = 0.0
        for x, y in zip(emb.double(), labels.tolist()):
            logits = [float(w[j] @ x + bias[j]) for j in range(c)]
            total -= logits[y] - _logsumexp(logits)
        want = total / b
    else:
        w = loss_fn.classifier.weight.detach().double()
        cos = [
            [float(x @ w[j] / (x.norm() * w[j].norm())) for j in range(c)]
            for x in emb.double()
        ]
        want = _ref_margin_softmax(cos, labels.tolist(), 0.2, 30.0)
    assert got == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
def test_multi_metric_is_weighted_sum_of_references(seed):
    """Paper weights; each logged term equals weight x loop reference."""
    emb, labels = _batch(64, 2, 32, seed, shuffle=False)
    emb = emb / 4.0
    softmax = SoftmaxLoss(32, 2000, kind="linear")
    lab_idx = torch.tensor(labels) % 2000
    loss_fn = MultiMetricLoss(
        {
            "npair": NPairLoss(),
            "triplet": TripletLoss(),
            "angular": AngularLoss(),
            "softmax": softmax,
        }
    )
    x = torch.tensor(emb, dtype=torch.float64)
    total = loss_fn(x.unsqueeze(1), lab_idx.unsqueeze(1))
    want = {
        "npair": 0.5 * ref_npair_eq10(emb, labels, 0.005),
        "triplet": 1.0
        * ref_triplet(emb, labels, 0.5, "euclidean", "batch_hard")[0],
        "angular": 1.0 * ref_angular(emb, labels, 45.0, "npair"),
    }
    for key, value in want.items():
        assert loss_fn.last_terms[key].item() == pytest.approx(value, rel=1e-9)
    logits = softmax.classifier(x.float()).double()
    ce = F.cross_entropy(logits, lab_idx).item()
    assert loss_fn.last_terms["softmax"].item() == pytest.approx(
        0.1 * ce, rel=1e-5
    )
    assert total.item() == pytest.approx(
        sum(want.values()) + 0.1 * ce, rel=1e-6
    )


def _metric_loss(augmenter, copies):
    """The three metric terms (paper weights) watching ``augmenter``."""
    terms = {"npair": NPairLoss(), "triplet": TripletLoss()}
    terms["angular"] = AngularLoss()
    weights = {"npair": 0.5, "triplet": 1.0, "angular": 1.0}
    return MultiMetricLoss(
        terms, weights, augmenter=augmenter, augmented_copies=copies
    )


def _augment(p, k, n_copies, seed):
    """SpeechBrain's Augmenter (the batch, then ``n_copies`` noisy copies)
    on a speaker-major P x K batch of waveforms (a speaker's share most
    of their samples); a fixed projection of its output as embeddings."""
    gen = torch.Generator().manual_seed(seed)
    wavs = torch.randn(p, 400, generator=gen).repeat_interleave(k, 0)
    wavs += 0.3 * torch.randn(p * k, 400, generator=gen)
    proj = torch.randn(400, 8, generator=gen, dtype=torch.float64) / 20
    labels = 100 + torch.arange(p).repeat_interleave(k)
    augmenter = Augmenter(
        concat_original=True,
        repeat_augment=n_copies,
        augmentations=[AddNoise(snr_low=0, snr_high=5)],
    )
    return augmenter, wavs, labels, proj


def _refs(emb, labels, sources):
    return {
        "npair": 0.5 * ref_npair_eq10(emb, labels, 0.005, sources),
        "triplet": ref_triplet(
            emb, labels, 0.5, "euclidean", "batch_hard", sources
        )[0],
        "angular": ref_angular(emb, labels, 45.0, "npair", sources),
    }


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_copies", [1, 2])
def test_augmented_copies_match_loops(seed, n_copies):
    """Rows made by SpeechBrain's Augmenter, labels by its
    replicate_labels (as the recipe does): with "exclude" every term
    equals the loops where rows of one source are never paired, with
    "count" the loops where every row is its own source."""
    got = {}
    for copies in ("exclude", "count"):
        torch.manual_seed(seed)
        augmenter, wavs, labels, proj = _augment(4, 2, n_copies, seed)
        loss_fn = _metric_loss(augmenter, copies)
        out, _ = augmenter(wavs, torch.ones(len(wavs)))
        assert len(out) == len(wavs) * (1 + n_copies)
        spk = augmenter.replicate_labels(labels)
        emb = out.double() @ proj
        total = loss_fn(emb.unsqueeze(1), spk.unsqueeze(1))
        sources = None  # "count": every row its own source
        if copies == "exclude":  # the batch, then each copy of it
            sources = np.tile(np.arange(len(wavs)), 1 + n_copies)
        want = _refs(emb.numpy(), spk.numpy(), sources)
        for key, value in want.items():
            assert loss_fn.last_terms[key].item() == pytest.approx(
                value, rel=1e-9
            ), (copies, key)
        assert total.item() == pytest.approx(sum(want.values()), rel=1e-9)
        got[copies] = loss_fn.last_terms["triplet"].item()
    assert got["exclude"] != pytest.approx(got["count"])


def test_augmented_copies_of_single_utterances():
    """P x 1 batches and one copy each: "exclude" leaves no pair (the
    terms say so), "count" pairs each utterance with its copy."""
    for copies in ("exclude", "count"):
        augmenter, wavs, labels, proj = _augment(4, 1, 1, 0)
        loss_fn = _metric_loss(augmenter, copies)
        out, _ = augmenter(wavs, torch.ones(len(wavs)))
        spk = augmenter.replicate_labels(labels)
        emb = out.double() @ proj
        if copies == "exclude":
            with pytest.raises(ValueError, match="no usable pair"):
                loss_fn(emb, spk)
            continue
        loss_fn(emb, spk)
        want = _refs(emb.numpy(), spk.numpy(), None)
        assert ref_pairs(spk.tolist()) == [(0, 4), (1, 5), (2, 6), (3, 7)]
        for key, value in want.items():
            assert loss_fn.last_terms[key].item() == pytest.approx(value)


def test_augmenter_sources_are_taken_once_and_checked():
    """The sources of the augmenter's batch serve the next call only (a
    batch it did not make has none); a call on another number of rows
    is refused; the same sources given as an argument give the same
    loss; sources that mix labels or mismatch the rows are refused."""
    augmenter, wavs, labels, proj = _augment(4, 2, 1, 3)
    loss_fn = _metric_loss(augmenter, "exclude")
    plain = _metric_loss(None, "exclude")
    out, _ = augmenter(wavs, torch.ones(len(wavs)))
    emb, spk = out.double() @ proj, augmenter.replicate_labels(labels)
    hooked = loss_fn(emb, spk).item()
    sources = torch.arange(len(wavs)).repeat(2)
    assert plain(emb, spk, sources=sources).item() == pytest.approx(hooked)
    assert loss_fn(emb, spk).item() == pytest.approx(plain(emb, spk).item())
    assert hooked != pytest.approx(plain(emb, spk).item())
    augmenter(wavs, torch.ones(len(wavs)))
    with pytest.raises(ValueError, match="last call made 16 rows, the bat"):
        loss_fn(emb[:8], spk[:8])
    with pytest.raises(ValueError, match="rows of one source have differ"):
        plain(emb, spk, sources=torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="sources must be 16 integers"):
        plain(emb, spk, sources=torch.arange(8))
    with pytest.raises(ValueError, match="augmented_copies must be one of"):
        _metric_loss(None, "drop")
    with pytest.raises(TypeError, match="Augmenter .with replicate_labels"):
        _metric_loss(torch.nn.Linear(1, 1), "exclude")
