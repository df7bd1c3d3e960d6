"""Hand-computed cases, gradients, numerics and errors of dampit.losses."""

import math

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from dampit.losses import (
    PAPER_WEIGHTS,
    AngularLoss,
    MultiMetricLoss,
    NPairLoss,
    SoftmaxLoss,
    TripletLoss,
    paper_multi_metric_loss,
)
from dampit.losses.base import first_two_pairs, pairwise_distance
from dampit.losses.triplet import semi_hard


def _pk_labels(p, k):
    return torch.arange(p).repeat_interleave(k)


def _all_losses(n_classes=8, dim=None):
    """One instance of every loss (and the paper's sum) for generic tests."""
    losses = {
        "triplet": TripletLoss(),
        "triplet_sq_semi": TripletLoss(
            distance="squared_euclidean", mining="semi_hard"
        ),
        "triplet_cos_semi": TripletLoss(distance="cosine", mining="semi_hard"),
        "npair": NPairLoss(),
        "angular": AngularLoss(),
        "angular_hinge": AngularLoss(form="hinge"),
    }
    if dim is not None:
        losses["softmax"] = SoftmaxLoss(dim, n_classes)
        losses["softmax_aam"] = SoftmaxLoss(dim, n_classes, kind="aam")
        losses["multi"] = paper_multi_metric_loss(dim, n_classes)
    return losses


# ---------------------------------------------------------------- hand cases


def test_triplet_hand_case_batch_hard_and_semi_hard():
    """1-D points 0, 1 (speaker A) and 1.5, 3 (speaker B), margin 1."""
    emb = torch.tensor([[0.0], [1.0], [1.5], [3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # batch-hard: anchors 0: d_ap 1, d_an 1.5 -> 0.5; 1: 1 vs 0.5 -> 1.5;
    # 2: 1.5 vs 0.5 -> 2; 3: 1.5 vs 2 -> 0.5. Mean 1.125.
    bh = TripletLoss(margin=1.0)
    assert bh(emb, labels).item() == pytest.approx(1.125)
    assert bh.last_stats["frac_an_gt_ap"].item() == pytest.approx(0.5)
    # semi-hard: (0,1) -> n=2 (1 < 1.5 < 2): 0.5; (1,0): none in (1, 2)
    # -> hardest 0.5: 1.5; (2,3): none above 1.5 -> hardest 0.5: 2;
    # (3,2): n=1 (1.5 < 2 < 2.5): 0.5. Mean 1.125 here too.
    sh = TripletLoss(margin=1.0, mining="semi_hard")
    assert sh(emb, labels).item() == pytest.approx(1.125)
    # margin 0.4: (0,1): 1 < 1.5 < 1.4 fails -> hardest 1.5: 0;
    # (1,0): hardest 0.5: 0.9; (2,3): hardest 0.5: 1.4; (3,2): n=1 (2 in
    # (1.5, 1.9)? no) -> hardest 2: 0. Mean 2.3 / 4.
    small = TripletLoss(margin=0.4, mining="semi_hard")
    assert small(emb, labels).item() == pytest.approx(2.3 / 4)


def test_triplet_squared_distance_is_eq8():
    """Eq. 8: [||a-p||^2 + m - ||a-n||^2]_+ on a 2-D triplet."""
    emb = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    loss = TripletLoss(margin=1.0, distance="squared_euclidean")
    # anchor 0: 9 + 1 - 4 = 6; anchor 1: 9 + 1 - 13 < 0 -> 0.
    assert loss(emb, labels).item() == pytest.approx(3.0)


def test_semi_hard_miner_prefers_the_nearest_semi_hard_negative():
    """Among several semi-hard negatives the nearest one is chosen."""
    x = torch.tensor([0.0, 1.0, 1.2, 1.4, 5.0]).unsqueeze(1)
    d = (x - x.t()).abs()
    labels = torch.tensor([0, 0, 1, 1, 1])
    same = labels[:, None] == labels[None]
    pos = same & ~torch.eye(5, dtype=torch.bool)
    a, p, n = semi_hard(d, pos, ~same, margin=1.0)
    triplets = {(int(i), int(j)): int(k) for i, j, k in zip(a, p, n)}
    assert triplets[(0, 1)] == 2  # 1.2 is the nearest in (1, 2)
    assert triplets[(4, 2)] == 1  # d_ap 3.8: 4 > 3.8 but 4 < 4.8
    assert triplets[(2, 4)] == 1  # d_ap 3.8, nothing above: hardest (0.2)


def test_npair_hand_case():
    """Two orthogonal pairs: log(1 + exp(0 - 1)) each, + l2 term."""
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    labels = torch.tensor([5, 5, 9, 9])
    # anchor 0: s_00 = 1, s_01 = 0 -> log(1 + e^-1);
    # anchor 1: s_11 = 4, s_10 = 0 -> log(1 + e^-4).
    ce = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-4))) / 2
    l2 = 0.005 * ((1 + 4) / 2 + (1 + 4) / 2)
    loss = NPairLoss()
    assert loss(emb, labels).item() == pytest.approx(ce + l2)
    assert loss.last_stats["accuracy"].item() == 1.0
    assert NPairLoss(l2_reg=0)(emb, labels).item() == pytest.approx(ce)


def test_angular_npair_hand_case():
    """alpha 45: f = 4 (a+p).n - 4 a.p on unit vectors."""
    emb = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # pair 0: a = p = e1, n = e2: f = 0 - 4 = -4; same for pair 1.
    want = math.log(1 + math.exp(-4))
    assert AngularLoss()(emb, labels).item() == pytest.approx(want, rel=1e-5)
    # tan^2(30 deg) = 1/3: f = -2 (4/3) = -8/3.
    want30 = math.log(1 + math.exp(-8 / 3))
    got30 = AngularLoss(alpha=30.0)(emb, labels).item()
    assert got30 == pytest.approx(want30, rel=1e-5)


def test_softmax_linear_hand_case():
    """Identity classifier: CE of the embeddings as logits."""
    loss = SoftmaxLoss(2, 2)
    with torch.no_grad():
        loss.classifier.weight.copy_(torch.eye(2))
        loss.classifier.bias.zero_()
    emb = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    want = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert loss(emb, torch.tensor([0, 1])).item() == pytest.approx(want)
    assert loss.last_stats["accuracy"].item() == 1.0


def test_euclidean_zero_distances():
    """Zero distances: value 0, gradient exactly 0, never NaN."""
    emb = torch.ones(4, 5, requires_grad=True)
    d = pairwise_distance(emb)
    assert torch.equal(d.detach(), torch.zeros(4, 4))
    d.sum().backward()
    assert torch.equal(emb.grad, torch.zeros(4, 5))
    with pytest.raises(ValueError, match="TripletLoss: distance must be"):
        TripletLoss(distance="manhattan")


def test_distance_far_from_origin_keeps_precision():
    """Centring keeps float32 distances right for embeddings near 1e3."""
    torch.manual_seed(0)
    x = torch.randn(16, 64, dtype=torch.float64) + 1000.0
    want = torch.cdist(x, x)
    got = pairwise_distance(x.float()).double()
    assert torch.allclose(got, want, atol=1e-3)


# ----------------------------------------------------------------- pairing


def test_first_two_pairing_matches_original_on_speaker_major_batch():
    """On [s1u1, s1u2, s2u1, ...] the pairs are rows 0::2 and 1::2."""
    labels = torch.tensor([3, 3, 8, 8, 1, 1, 6, 6])
    a, p = first_two_pairs(labels)
    assert a.tolist() == [0, 2, 4, 6] and p.tolist() == [1, 3, 5, 7]


def test_first_two_pairing_on_shuffled_batch_with_k_gt_2():
    """First two occurrences per label, ordered by the anchor."""
    labels = torch.tensor([4, 2, 4, 7, 2, 4, 9, 2])
    a, p = first_two_pairs(labels)
    assert a.tolist() == [0, 1] and p.tolist() == [2, 4]


def test_npair_and_angular_invariant_to_speaker_order():
    """Permuting speaker blocks of a P x K batch leaves the loss alone."""
    torch.manual_seed(1)
    emb = torch.randn(12, 6)
    labels = _pk_labels(6, 2)
    perm = torch.tensor([2, 0, 5, 1, 3, 4])
    rows = torch.stack([2 * perm, 2 * perm + 1], 1).reshape(-1)
    for loss in (NPairLoss(), AngularLoss(), AngularLoss(form="hinge")):
        a = loss(emb, labels)
        b = loss(emb[rows], labels[rows])
        assert a.item() == pytest.approx(b.item(), rel=1e-6)


# ------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(
    "loss",
    [
        TripletLoss(margin=1.0),
        TripletLoss(margin=2.0, distance="squared_euclidean"),
        TripletLoss(margin=0.3, distance="cosine", mining="semi_hard"),
        TripletLoss(margin=1.0, mining="semi_hard"),
        NPairLoss(),
        AngularLoss(),
        AngularLoss(form="hinge", alpha=30.0),
    ],
    ids=lambda m: repr(m) + str(getattr(m, "mining", getattr(m, "form", ""))),
)
def test_gradcheck_float64(loss):
    """Analytic gradients match finite differences in float64."""
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
    emb = torch.randn(10, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (emb,))


def test_gradcheck_softmax_and_multi_metric():
    """The softmax term and the weighted sum, embeddings and weights."""
    torch.manual_seed(0)
    labels = _pk_labels(4, 2)
    emb = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    loss = SoftmaxLoss(3, 4).double()
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (emb,))
    # SpeechBrain's AdditiveAngularMargin computes in float32 (it calls
    # .float()), so finite differences need a float32-sized step.
    aam = SoftmaxLoss(3, 4, kind="aam").double()
    assert torch.autograd.gradcheck(
        lambda e: aam(e, labels), (emb,), eps=1e-3, atol=1e-3, rtol=1e-2
    )
    multi = paper_multi_metric_loss(3, 4).double()
    assert torch.autograd.gradcheck(lambda e: multi(e, labels), (emb,))


# ---------------------------------------------------------- invariances


@pytest.mark.parametrize("form", ["npair", "hinge"])
def test_angular_scale_invariance(form):
    """Any positive rescaling of each embedding leaves the loss unchanged."""
    torch.manual_seed(0)
    emb = torch.randn(32, 16, dtype=torch.float64)
    labels = _pk_labels(16, 2)
    loss = AngularLoss(form=form, alpha=25.0)  # some violations at 25 deg
    ref = loss(emb, labels)
    assert ref.item() > 0.01
    for scale in (1e-3, 0.5, 7.0, 1e4):
        assert loss(emb * scale, labels).item() == pytest.approx(ref.item())
    per_row = torch.rand(32, 1, dtype=torch.float64) * 100 + 0.01
    assert loss(emb * per_row, labels).item() == pytest.approx(ref.item())
    # ... but not to flipping an embedding (a negative scale).
    flipped = emb.clone()
    flipped[0] *= -1
    assert loss(flipped, labels).item() != pytest.approx(ref.item())


# ---------------------------------------------------- numerical stability


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_low_precision_matches_float32(dtype):
    """Under CPU autocast the losses run in float32 on the cast inputs."""
    torch.manual_seed(0)
    net = torch.nn.Linear(20, 16)
    x = torch.randn(32, 20)
    labels = _pk_labels(16, 2)
    for name, loss in _all_losses(16, 16).items():
        with torch.autocast("cpu", dtype=dtype):
            emb = net(x)
            assert emb.dtype == dtype
            value = loss(emb, labels)
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
        want = loss(emb.float(), labels)
        assert value.item() == pytest.approx(want.item(), rel=1e-5), name
        net.zero_grad()
        value.backward()
        assert torch.isfinite(net.weight.grad).all(), name


def _degenerate_batches():
    torch.manual_seed(0)
    signs = torch.randint(0, 2, (16, 64)).float() * 2 - 1
    return {
        "zeros": torch.zeros(16, 64),
        "identical": torch.randn(1, 64).repeat(16, 1),
        "fp16_max": torch.full((16, 64), 6e4),
        "fp16_max_signs": 6e4 * signs,
        "tiny": torch.full((16, 64), 1e-30),
        "one_zero_row": torch.cat([torch.zeros(1, 64), torch.randn(15, 64)]),
    }


@pytest.mark.parametrize("case", list(_degenerate_batches()))
def test_degenerate_batches_never_nan(case):
    """Values and gradients stay finite (float32 and fp16 inputs)."""
    emb0 = _degenerate_batches()[case]
    labels = _pk_labels(8, 2)
    for name, loss in _all_losses(8, 64).items():
        emb = emb0.clone().requires_grad_()
        value = loss(emb, labels)
        assert torch.isfinite(value), (name, value)
        value.backward()
        assert torch.isfinite(emb.grad).all(), name
        half = loss(emb0.half(), labels)
        assert torch.isfinite(half), name


def test_zero_norm_angular_gradient_is_bounded():
    """A zero embedding gets a finite gradient of at most ~1 / eps."""
    emb = torch.randn(8, 4)
    emb[0] = 0
    emb.requires_grad_()
    AngularLoss()(emb, _pk_labels(4, 2)).backward()
    assert torch.isfinite(emb.grad).all()
    assert emb.grad.abs().max() < 1e8


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("make", [TripletLoss, NPairLoss, AngularLoss])
def test_unusable_batches_raise_or_return_zero(make):
    """No positive pair / one speaker / no row: an error naming the loss,
    or (allow_empty) an exact 0 whose gradient is exactly 0."""
    name = make.__name__
    emb = torch.randn(6, 4, requires_grad=True)
    singles = torch.arange(6)
    one_spk = torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"^{name}: no usable pair .*6 sp"):
        make()(emb, singles)
    with pytest.raises(ValueError, match=r"1 speakers, at most 6 .*P x K"):
        make()(emb, one_spk)
    with pytest.raises(ValueError, match="0 speakers.*allow_empty=True"):
        make()(emb[:0], singles[:0])
    loss = make(allow_empty=True)
    for e, labels in ((emb, singles), (emb, one_spk), (emb[:0], one_spk[:0])):
        value = loss(e, labels)
        assert value.item() == 0.0 and loss.last_stats == {}
        value.backward()
        assert torch.equal(emb.grad, torch.zeros(6, 4))


def test_pair_losses_need_two_pairs_triplet_one_anchor():
    """[0, 0, 1]: the triplet loss has anchors, the pair losses one pair."""
    emb, labels = torch.randn(3, 4), torch.tensor([0, 0, 1])
    assert torch.isfinite(TripletLoss()(emb, labels))
    for loss in (NPairLoss(), AngularLoss()):
        with pytest.raises(ValueError, match="2 speakers, at most 2"):
            loss(emb, labels)


def test_bad_inputs_name_the_argument():
    """Shapes, dtypes and sizes are checked with the loss's name."""
    loss = TripletLoss()
    labels = _pk_labels(2, 2)
    with pytest.raises(ValueError, match=r"TripletLoss: predictions must be"):
        loss(torch.randn(4, 2, 3), labels)
    with pytest.raises(ValueError, match=r"TripletLoss: predictions must be"):
        loss(torch.ones(4, 3, dtype=torch.long), labels)
    with pytest.raises(ValueError, match=r"TripletLoss: targets must be 4 i"):
        loss(torch.randn(4, 3), labels.float())
    with pytest.raises(ValueError, match=r"targets must be 4 .* shape \[3\]"):
        loss(torch.randn(4, 3), labels[:3])
    with pytest.raises(TypeError, match=r"NPairLoss: predictions and target"):
        NPairLoss()([[1.0]], labels)


def test_bad_options_raise():
    """Constructor options are validated with the argument's name."""
    with pytest.raises(ValueError, match="TripletLoss: mining must be"):
        TripletLoss(mining="all")
    with pytest.raises(ValueError, match="TripletLoss: margin must be >= 0"):
        TripletLoss(margin=-1)
    with pytest.raises(ValueError, match=r"AngularLoss: alpha must be in"):
        AngularLoss(alpha=90)
    with pytest.raises(ValueError, match="AngularLoss: form must be"):
        AngularLoss(form="softmax")
    with pytest.raises(ValueError, match="NPairLoss: l2_reg must be >= 0"):
        NPairLoss(l2_reg=-0.1)
    with pytest.raises(ValueError, match="SoftmaxLoss: n_classes must be"):
        SoftmaxLoss(16, None)
    with pytest.raises(ValueError, match="SoftmaxLoss: input_size must be"):
        SoftmaxLoss(16.5, 3)
    with pytest.raises(ValueError, match="SoftmaxLoss: kind must be"):
        SoftmaxLoss(16, 4, kind="am")


def test_softmax_label_out_of_range():
    """Labels beyond n_classes give a clear error, not an index crash."""
    loss = SoftmaxLoss(4, 3)
    with pytest.raises(
        ValueError, match=r"SoftmaxLoss: .* \[0, 3\), got .*\[0, 3\]"
    ):
        loss(torch.randn(2, 4), torch.tensor([0, 3]))


# ------------------------------------------------------- multi-metric


def test_multi_metric_validates_keys_and_weights():
    """Missing / extra weights, bad values and unknown names."""
    terms = {"triplet": TripletLoss(), "npair": NPairLoss()}
    with pytest.raises(ValueError, match=r"keys of terms \['npair', 'tri"):
        MultiMetricLoss(terms, {"triplet": 1.0})
    with pytest.raises(ValueError, match=r"keys of terms .*'x': 1.0"):
        MultiMetricLoss(terms, {"triplet": 1.0, "npair": 1.0, "x": 1.0})
    with pytest.raises(ValueError, match=r"weights\['npair'\] must be a fin"):
        MultiMetricLoss(terms, {"triplet": 1.0, "npair": float("nan")})
    with pytest.raises(ValueError, match=r"weights\['npair'\] .* got '1'"):
        MultiMetricLoss(terms, {"triplet": 1.0, "npair": "1"})
    with pytest.raises(ValueError, match=r"paper weights exist for"):
        MultiMetricLoss({"c": TripletLoss()})
    with pytest.raises(TypeError, match=r"dict of name -> torch.nn.Module"):
        MultiMetricLoss({"t": lambda e, y: 0}, {"t": 1.0})
    with pytest.raises(TypeError, match="non-empty dict"):
        MultiMetricLoss({}, {})
    with pytest.raises(ValueError, match="cross_rank must be True or Fa"):
        MultiMetricLoss(terms, cross_rank="no")
    assert MultiMetricLoss(terms).weights == {"triplet": 1.0, "npair": 0.5}


def test_multi_metric_zero_weight_skips_and_logs_zero():
    """A zero-weight term is not computed (it may not even be valid)."""
    emb = torch.randn(4, 3)
    singles = torch.arange(4)
    loss = MultiMetricLoss(
        {"triplet": TripletLoss(), "softmax": SoftmaxLoss(3, 4)},
        {"triplet": 0.0, "softmax": 0.1},
    )
    total = loss(emb, singles)  # the triplet term would raise
    assert loss.last_terms["triplet"].item() == 0.0
    assert total.item() == pytest.approx(loss.last_terms["softmax"].item())
    assert "softmax/accuracy" in loss.last_stats


def test_multi_metric_trains_softmax_parameters():
    """The classifier is a submodule: an optimizer over the loss moves it."""
    loss = MultiMetricLoss(
        {
            "npair": NPairLoss(),
            "triplet": TripletLoss(),
            "angular": AngularLoss(),
            "softmax": SoftmaxLoss(8, 4, kind="aam"),
        }
    )
    names = [n for n, _ in loss.named_parameters()]
    assert names == ["terms.softmax.classifier.weight"]
    before = loss.terms["softmax"].classifier.weight.detach().clone()
    opt = torch.optim.SGD(loss.parameters(), lr=0.1)
    total = loss(torch.randn(8, 8), _pk_labels(4, 2))
    total.backward()
    opt.step()
    assert not torch.equal(before, loss.terms["softmax"].classifier.weight)
    assert set(loss.last_terms) == set(PAPER_WEIGHTS)
    assert all(not v.requires_grad for v in loss.last_terms.values())


def test_multi_metric_from_yaml():
    """Built with !new: tags as a SpeechBrain recipe would."""
    yaml = """
    compute_cost: !new:dampit.losses.MultiMetricLoss
        terms:
            npair: !new:dampit.losses.NPairLoss
            triplet: !new:dampit.losses.TripletLoss
                margin: 0.5
                mining: semi_hard
            angular: !new:dampit.losses.AngularLoss
                alpha: 45
                form: hinge
            softmax: !new:dampit.losses.SoftmaxLoss
                input_size: 16
                n_classes: 10
                kind: aam
                margin: 0.2
                scale: 30
        weights: {npair: 0.5, triplet: 1, angular: 1, softmax: 0.1}
    """
    loss = load_hyperpyyaml(yaml)["compute_cost"]
    assert loss.terms["triplet"].mining == "semi_hard"
    assert loss.terms["softmax"].kind == "aam"
    torch.manual_seed(0)
    total = loss(torch.randn(8, 1, 16), _pk_labels(4, 2).unsqueeze(1))
    assert torch.isfinite(total)
    assert total.item() == pytest.approx(
        sum(v.item() for v in loss.last_terms.values()), rel=1e-6
    )
