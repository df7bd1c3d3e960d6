"""Tests of dampit.lobes.resnet, gates and pooling: architecture and masking.

Reference values are computed independently in this file: torchvision's
published parameter counts, an enumeration of torchvision's ResNet keys
written from the architecture, plain loops for the gates and the files
run one by one for the padded batches.
"""

import math
import re
import warnings

import pytest
import torch

from dampit.lobes.gates import SpatialGate
from dampit.lobes.pooling import GlobalAvgPool, TemporalStatsPool
from dampit.lobes.resnet import LinearClassifier, SEResNet

BLOCKS = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
}

# torchvision's published totals (weights documentation), fc included.
TORCHVISION_PARAMS = {
    18: 11_689_512,
    34: 21_797_672,
    50: 25_557_032,
    101: 44_549_160,
}


def torchvision_shapes(depth, width=64, in_ch=3, n_classes=1000):
    """Key -> shape of torchvision's ResNet, written from the paper."""
    kind, blocks = BLOCKS[depth]
    exp = 1 if kind == "basic" else 4
    shapes = {}

    def bn(prefix, c):
        for s in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{s}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (width, in_ch, 7, 7)
    bn("bn1", width)
    inpl = width
    for i, n in enumerate(blocks):
        planes = width * 2**i
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            if kind == "basic":
                shapes[f"{p}.conv1.weight"] = (planes, inpl, 3, 3)
                bn(f"{p}.bn1", planes)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
            else:
                shapes[f"{p}.conv1.weight"] = (planes, inpl, 1, 1)
                bn(f"{p}.bn1", planes)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
                shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                bn(f"{p}.bn3", planes * 4)
            if j == 0 and (i > 0 or inpl != planes * exp):
                shapes[f"{p}.downsample.0.weight"] = (planes * exp, inpl, 1, 1)
                bn(f"{p}.downsample.1", planes * exp)
            inpl = planes * exp
    shapes["fc.weight"] = (n_classes, inpl)
    shapes["fc.bias"] = (n_classes,)
    return shapes


def n_params(shapes):
    """Number of learnable parameters in a key -> shape map."""
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(math.prod(s) for k, s in shapes.items() if not k.endswith(skip))


def trunk_params(model):
    """Parameters of conv1..layer4 excluding dampit's PReLU slope."""
    return sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.startswith(("conv1.", "bn1.", "layer"))
        and not n.endswith("relu.weight")
    )


def halve(n, times):
    """Time/frequency size after ``times`` stride-2 layers (ceil)."""
    for _ in range(times):
        n = (n + 1) // 2
    return n


# ----------------------------------------------------------------- sizes


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_key_enumeration_matches_published_torchvision_counts(depth):
    assert n_params(torchvision_shapes(depth)) == TORCHVISION_PARAMS[depth]


def test_resnet50_trunk_has_the_standard_parameter_count():
    model = SEResNet(depth=50, base_width=64, in_channels=3, gate="none")
    assert trunk_params(model) == 23_508_032
    assert trunk_params(model) == TORCHVISION_PARAMS[50] - (2048 * 1000 + 1000)
    assert model.out_channels == 2048


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_trunk_keys_and_shapes_are_torchvisions(depth):
    model = SEResNet(depth=depth, base_width=16, gate="none")
    want = torchvision_shapes(depth, width=16)
    del want["fc.weight"], want["fc.bias"]
    got = {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if k.startswith(("conv1.", "bn1.", "layer"))
        and not k.endswith("relu.weight")
    }
    assert got == want
    assert trunk_params(model) == n_params(want)


def strong_gates(model, std=0.3):
    """Gate weights large enough that the gates change the result."""
    with torch.no_grad():
        for gate in model.gates.values():
            gate.conv1.weight.normal_(0, std)
            gate.conv2.weight.normal_(0, std)
    return model


def test_gate_and_prelu_parameter_counts():
    plain = SEResNet(depth=50, gate="none")
    gated = SEResNet(depth=50, gate="spatial", gate_hidden=16)
    # each gate: C*16 + 16 + 16*C + C
    want = sum(33 * c + 16 for c in (256, 512, 1024))
    extra = sum(p.numel() for p in gated.parameters()) - sum(
        p.numel() for p in plain.parameters()
    )
    assert extra == want
    # the trunk's only non-torchvision parameter: layer4.2's PReLU slope
    non_tv = [
        n
        for n, p in plain.named_parameters()
        if n.startswith(("conv1.", "bn1.", "layer"))
        and n.endswith("relu.weight")
    ]
    assert non_tv == ["layer4.2.relu.weight"]


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
@pytest.mark.parametrize("base_width, in_channels", [(4, 1), (8, 3)])
def test_output_shapes(depth, base_width, in_channels):
    model = SEResNet(
        depth=depth, base_width=base_width, in_channels=in_channels, emb_dim=6
    ).eval()
    exp = 1 if BLOCKS[depth][0] == "basic" else 4
    assert model.stage_channels == [base_width * 2**i * exp for i in range(4)]
    x = torch.randn(2, in_channels, 24, 37)
    with torch.no_grad():
        feats, n = model.trunk(x)
        assert feats.shape == (
            2,
            8 * base_width * exp,
            halve(24, 5),
            halve(37, 5),
        )
        assert n is None
        # SpeechBrain features [B, T, F] are transposed and repeated.
        sb = torch.randn(2, 37, 24)
        out = model(sb, torch.tensor([1.0, 0.6]))
        assert out.shape == (2, 1, 6)
        img = sb.transpose(1, 2).unsqueeze(1).repeat(1, in_channels, 1, 1)
        torch.testing.assert_close(model(sb), model(img))


@pytest.mark.parametrize("t", [9, 50, 123, 301])
def test_variable_time_length_in_eval(t):
    model = SEResNet(depth=50, base_width=4, emb_dim=8).eval()
    with torch.no_grad():
        out = model(torch.randn(1, t, 40))
    assert out.shape == (1, 1, 8)
    assert torch.isfinite(out).all()


def test_pooling_output_sizes_and_head():
    for pooling, size in (("avg", 32), ("stats", 2 * 32 * 2)):
        model = SEResNet(
            depth=18, base_width=4, pooling=pooling, emb_dim=5, n_freq=40
        )
        assert model.out_freq(40) == 2
        assert model.head.fc1.in_features == size
        assert model.head.fc1.out_features == 32  # trunk channels
        assert model.head.fc1.bias is None
        assert isinstance(model.head.act, torch.nn.PReLU)
        assert model.head.drop.p == 0.1
        assert model.head.fc2.out_features == 5
    assert SEResNet(depth=18, base_width=4, dropout=0.3).head.drop.p == 0.3


def test_paper_defaults():
    model = SEResNet()
    assert model.depth == 50 and model.in_channels == 3
    assert model.head.fc2.out_features == 2048
    assert sorted(model.gates) == ["conv2", "conv3", "conv4"]
    gate = model.gates["conv2"]
    assert isinstance(gate, SpatialGate) and gate.hidden == 16
    assert isinstance(gate.act, torch.nn.ReLU)  # paper text
    assert isinstance(model.pool, GlobalAvgPool)
    prelu = [
        name
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.PReLU) and name.startswith("layer")
    ]
    assert prelu == ["layer4.2.relu"]  # the last block only


# ----------------------------------------------------------------- gates


def test_gates_sit_on_the_outputs_of_conv2_to_conv4():
    model = SEResNet(depth=50, base_width=4, emb_dim=4).eval()
    assert sorted(model.gates) == ["conv2", "conv3", "conv4"]
    for s in (2, 3, 4):
        assert model.gates[f"conv{s}"].channels == model.stage_channels[s - 2]
    calls = []

    def hook(name):
        def fn(module, args, output):
            calls.append((name, args[0], output))

        return fn

    for i in range(1, 5):
        layer = getattr(model, f"layer{i}")
        layer[0].register_forward_hook(hook(f"first{i + 1}"))
        layer[-1].register_forward_hook(hook(f"conv{i + 1}"))
    for name, g in model.gates.items():
        g.register_forward_hook(hook(f"gate_{name}"))
    model(torch.randn(1, 3, 32, 40))  # with autograd: no in-place gates
    names = [c[0] for c in calls if not c[0].startswith("first")]
    assert names == [
        "conv2",
        "gate_conv2",
        "conv3",
        "gate_conv3",
        "conv4",
        "gate_conv4",
        "conv5",
    ]
    by_name = {c[0]: c for c in calls}
    for s in (2, 3, 4):
        # the gate takes the stage's output, the next stage the gate's
        assert by_name[f"gate_conv{s}"][1] is by_name[f"conv{s}"][2]
        assert by_name[f"first{s + 1}"][1] is by_name[f"gate_conv{s}"][2]


def test_no_gates_for_none():
    model = SEResNet(depth=18, base_width=4, gate="none")
    assert len(model.gates) == 0


def test_model_in_eval_with_and_without_grad_agrees():
    model = strong_gates(SEResNet(depth=50, base_width=4, emb_dim=8)).eval()
    x = torch.randn(3, 3, 32, 40)
    with_grad = model(x)
    with torch.inference_mode():
        no_grad = model(x)
    torch.testing.assert_close(no_grad, with_grad.detach())


# ---------------------------------------------------- lengths and padding


def _pad_batch(items, fill):
    """Stack ``[1, C, F, t]`` items, padding time with ``fill``."""
    t = max(x.shape[-1] for x in items)
    shape = (len(items), *items[0].shape[1:-1], t)
    batch = torch.full(shape, fill, dtype=items[0].dtype)
    for i, x in enumerate(items):
        batch[i, ..., : x.shape[-1]] = x[0]
    lens = torch.tensor([x.shape[-1] / t for x in items], dtype=x.dtype)
    return batch, lens


IMAGENET_STEM = {}  # 7 x 7 / 2 convolution, max pooling
THIN_STEM = {"stem_kernel": 3, "stem_stride": 2, "stem_pool": False}
FULL_RES_STEM = {"stem_kernel": 3, "stem_stride": 1, "stem_pool": False}


@pytest.mark.parametrize(
    "depth, pooling, gate, stem",
    [
        (50, "avg", "spatial", IMAGENET_STEM),  # the paper
        (18, "stats", "spatial", THIN_STEM),  # mini.yaml
        (50, "stats", "none", FULL_RES_STEM),
        (34, "avg", "none", IMAGENET_STEM),
        (18, "avg", "spatial", FULL_RES_STEM),
        (50, "avg", "spatial", THIN_STEM),
    ],
    ids=["paper", "mini", "50-full-res", "34", "18-full-res", "50-thin"],
)
def test_padded_batch_equals_files_one_by_one(depth, pooling, gate, stem):
    model = SEResNet(
        depth=depth,
        base_width=4,
        emb_dim=16,
        pooling=pooling,
        gate=gate,
        n_freq=40,
        **stem,
    )
    model = strong_gates(model).double().eval()
    items = [torch.randn(1, 3, 40, t, dtype=torch.float64) for t in (97, 60)]
    items += [torch.randn(1, 3, 40, t, dtype=torch.float64) for t in (33, 5)]
    batch, lens = _pad_batch(items, fill=7.0)  # padding need not be zero
    with torch.no_grad():
        one_by_one = torch.cat([model(x) for x in items])
        padded = model(batch, lens)
        unmasked = model(batch)
    assert padded.shape == (4, 1, 16)
    # float64 rounding of sums over at most ~1e5 terms of size O(10)
    torch.testing.assert_close(padded, one_by_one, rtol=1e-9, atol=1e-9)
    # the masks matter: without lengths the short items change a lot
    assert (unmasked[1:] - one_by_one[1:]).abs().max() > 1e-2


def test_full_lengths_equal_no_lengths():
    model = SEResNet(depth=18, base_width=4, emb_dim=4).eval()
    x = torch.randn(3, 3, 20, 30)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.ones(3)), model(x))


# ------------------------------------------------------- training and misc


def test_training_step_reaches_every_parameter():
    model = SEResNet(
        depth=18, base_width=4, emb_dim=8, pooling="stats", n_freq=24
    )
    clf = LinearClassifier(8, 3)
    model.train()
    x = torch.randn(4, 50, 24)
    logits = clf(model(x, torch.tensor([1.0, 0.8, 1.0, 0.5])))
    assert logits.shape == (4, 1, 3)
    loss = torch.nn.functional.cross_entropy(
        logits.squeeze(1), torch.tensor([0, 1, 2, 0])
    )
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_linear_classifier_is_a_plain_linear_layer():
    clf = LinearClassifier(4, 3)
    x = torch.randn(5, 1, 4)
    want = x[:, 0] @ clf.out.weight.T + clf.out.bias
    torch.testing.assert_close(clf(x)[:, 0], want)
    torch.testing.assert_close(clf(x[:, 0]), want)


def test_bad_arguments_are_named():
    for kwargs, name in (
        ({"depth": 42}, "depth=42"),
        ({"depth": 152}, "depth=152"),
        ({"gate": "se"}, "gate='se'"),
        ({"pooling": "asp"}, "pooling='asp'"),
        ({"pooling": "stats"}, "n_freq=None"),
        ({"stem_kernel": 4}, "stem_kernel=4"),
        ({"stem_stride": 0}, "stem_stride=0"),
    ):
        with pytest.raises(ValueError, match=f"bad {re.escape(name)}"):
            SEResNet(**{"depth": 18, **kwargs})
    model = SEResNet(depth=18, base_width=4, emb_dim=4)
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 2, 20, 30))
    with pytest.raises(ValueError, match=r"\[B, T, F\]"):
        model(torch.randn(20, 30))
    with pytest.raises(ValueError, match="lengths"):
        model(torch.randn(2, 30, 20), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="lengths"):
        model(torch.randn(2, 30, 20), torch.tensor([1.0]))


@pytest.mark.parametrize("n_freq", [40, 64, 80, 161])
@pytest.mark.parametrize(
    "stem", [(7, 2, True), (3, 2, False), (3, 1, False), (5, 1, True)]
)
def test_out_freq_matches_trunk_and_stats_head(n_freq, stem):
    kernel, stride, pool = stem
    model = SEResNet(
        depth=18,
        base_width=4,
        emb_dim=6,
        stem_kernel=kernel,
        stem_stride=stride,
        stem_pool=pool,
        pooling="stats",
        n_freq=n_freq,
    ).eval()
    with torch.no_grad():
        feats, _ = model.trunk(torch.randn(1, 37, n_freq))
        out = model(torch.randn(2, 37, n_freq))
    assert feats.shape[2] == model.out_freq(n_freq)
    # 2 statistics x 32 channels x F' rows feed the head
    assert model.head.fc1.in_features == 2 * 32 * feats.shape[2]
    assert out.shape == (2, 1, 6)


def test_stats_pool_errors():
    model = SEResNet(depth=18, base_width=4, pooling="stats", n_freq=80)
    with pytest.raises(ValueError, match="n_freq must match"):
        model(torch.randn(1, 50, 40))
    with pytest.raises(ValueError, match="n_freq"):
        TemporalStatsPool(0)


def test_default_stem_is_torchvision():
    model = SEResNet(depth=18, base_width=4)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, torch.nn.MaxPool2d)
    thin = SEResNet(depth=18, base_width=4, stem_kernel=3, stem_pool=False)
    assert thin.conv1.kernel_size == (3, 3) and thin.conv1.padding == (1, 1)
    assert isinstance(thin.maxpool, torch.nn.Identity)


def test_traced_and_exported_models_equal_eager_on_other_shapes():
    """Export keeps the length masks and both dynamic sizes (batch, time)."""
    model = SEResNet(
        depth=18,
        base_width=4,
        emb_dim=8,
        pooling="stats",
        n_freq=40,
        stem_kernel=3,
        stem_pool=False,
    )
    model = strong_gates(model).eval()
    x, lens = torch.randn(2, 100, 40), torch.tensor([1.0, 0.6])
    other, other_lens = torch.randn(3, 77, 40), torch.tensor([1.0, 0.5, 0.2])
    auto = torch.export.Dim.AUTO
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings
        traced = torch.jit.trace(model, (x, lens), check_trace=False)
        exported = torch.export.export(
            model,
            (x, lens),
            dynamic_shapes={"x": {0: auto, 1: auto}, "lengths": {0: auto}},
            strict=False,
        ).module()
        want = model(other, other_lens)
        for run in (traced, exported):
            # the same float32 kernels on the same values
            got = run(other, other_lens)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
