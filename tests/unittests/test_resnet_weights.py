"""Tests of state-dict round trips and torchvision-format weight loading.

The "torchvision" files are written by the tests from an enumeration of
torchvision's ResNet keys and shapes (``torchvision_shapes`` in
test_resnet.py, written from the architecture and checked against
torchvision's published parameter counts), filled with random tensors;
torchvision itself is not needed.
"""

import importlib.util
import logging
import pathlib

import pytest
import torch

from dampit.lobes.resnet import SEResNet, load_torchvision_weights
from dampit.utils.atomic import atomic_torch_save


def _sibling(name):
    """Import a test module next to this one (pytest's importlib mode)."""
    path = pathlib.Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_dampit_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


torchvision_shapes = _sibling("test_resnet").torchvision_shapes


def fake_torchvision_state(depth, width, seed=1):
    """Random tensors under torchvision's ResNet keys and shapes."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in torchvision_shapes(depth, width=width).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(123)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


@pytest.fixture
def resnet18_file(tmp_path):
    state = fake_torchvision_state(18, width=8)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(state, path)
    return path, state


def test_state_dict_round_trip(tmp_path):
    model = SEResNet(depth=50, base_width=4, emb_dim=8, pooling="asp").eval()
    path = tmp_path / "model.ckpt"
    atomic_torch_save(model.state_dict(), path)
    torch.manual_seed(123)
    other = SEResNet(depth=50, base_width=4, emb_dim=8, pooling="asp").eval()
    x = torch.randn(2, 60, 32)
    with torch.no_grad():
        assert (model(x) - other(x)).abs().max() > 1e-4
        other.load_state_dict(torch.load(path, weights_only=True))
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    assert other.state_dict().keys() == model.state_dict().keys()


def test_loads_torchvision_keys_from_a_file(resnet18_file, caplog):
    path, state = resnet18_file
    model = SEResNet(depth=18, base_width=8, emb_dim=8, gate="spatial")
    with caplog.at_level(logging.INFO, logger="dampit.lobes.resnet"):
        report = load_torchvision_weights(model, path)
    assert report.ok
    assert report.missing == [] and report.unexpected == []
    assert report.ignored == ["fc.weight", "fc.bias"]
    assert sorted(report.loaded) == sorted(
        k for k in state if not k.startswith("fc.")
    )
    ours = model.state_dict()
    for key in report.loaded:
        torch.testing.assert_close(ours[key], state[key], rtol=0, atol=0)
    # dampit's own modules are reported and keep their initialisation
    assert "layer4.1.relu.weight" in report.new
    assert any(k.startswith("gates.conv2.") for k in report.new)
    assert any(k.startswith("head.") for k in report.new)
    assert all(k not in state for k in report.new)
    assert f"{path}: {len(report.loaded)} loaded, 0 missing" in caplog.text


def test_full_size_resnet50_keys_line_up_without_writing():
    """Every ImageNet ResNet-50 key and shape fits the paper's model."""
    model = SEResNet(depth=50)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = torchvision_shapes(50, width=64)
    trunk = {k: s for k, s in theirs.items() if not k.startswith("fc.")}
    assert all(ours.get(k) == s for k, s in trunk.items())


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_one_channel_model_adapts_conv1(resnet18_file, reduce, caplog):
    path, state = resnet18_file
    mono = SEResNet(depth=18, base_width=8, emb_dim=8, in_channels=1)
    with caplog.at_level(logging.INFO, logger="dampit.lobes.resnet"):
        report = load_torchvision_weights(mono, path, in_channel_reduce=reduce)
    assert report.ok
    verb = "summed" if reduce == "sum" else "averaged"
    assert report.adapted == [
        f"conv1.weight: 3-channel kernel {verb} to 1 channel"
    ]
    assert verb in caplog.text
    w = state["conv1.weight"]
    want = (
        w.sum(1, keepdim=True) if reduce == "sum" else w.mean(1, keepdim=True)
    )
    torch.testing.assert_close(mono.conv1.weight.data, want)
    if reduce == "sum":
        # same trunk response as the 3-channel model on the copied input
        rgb = SEResNet(depth=18, base_width=8, emb_dim=8, in_channels=3)
        load_torchvision_weights(rgb, path)
        x = torch.randn(2, 1, 32, 40)
        with torch.no_grad():
            a, _ = mono.eval().trunk(x)
            b, _ = rgb.eval().trunk(x.repeat(1, 3, 1, 1))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_missing_unexpected_and_mismatched_keys_are_reported(tmp_path, caplog):
    state = fake_torchvision_state(18, width=8)
    del state["layer2.0.bn1.running_mean"], state["bn1.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(3)
    state["layer1.0.conv2.weight"] = torch.zeros(8, 8, 5, 5)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    model = SEResNet(depth=18, base_width=8, emb_dim=8)
    before = model.layer1[0].conv2.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="dampit.lobes.resnet"):
        report = load_torchvision_weights(model, path)
    assert not report.ok
    assert report.missing == ["bn1.weight", "layer2.0.bn1.running_mean"]
    assert report.unexpected == ["layer5.0.conv1.weight"]
    assert report.shape_mismatch == [
        ("layer1.0.conv2.weight", (8, 8, 5, 5), (8, 8, 3, 3))
    ]
    torch.testing.assert_close(model.layer1[0].conv2.weight.data, before)
    assert "WARNING" in caplog.text
    assert "missing (left as initialised): bn1.weight" in caplog.text
    assert "unexpected: layer5.0.conv1.weight" in caplog.text
    assert "layer1.0.conv2.weight file (8, 8, 5, 5) model (8, 8, 3, 3)" in (
        caplog.text
    )
    with pytest.raises(ValueError, match="(?s)strict=True.*bn1.weight"):
        load_torchvision_weights(model, path, strict=True)


def test_wrong_width_loads_nothing_and_says_so(resnet18_file, caplog):
    path, _ = resnet18_file
    model = SEResNet(depth=18, base_width=4, emb_dim=8)
    report = load_torchvision_weights(model, path)
    # only scalar num_batches_tracked counters have matching shapes
    assert all(k.endswith("num_batches_tracked") for k in report.loaded)
    assert len(report.shape_mismatch) > 40
    with pytest.raises(ValueError, match="shape mismatch"):
        load_torchvision_weights(model, path, strict=True)


def test_wrapped_and_prefixed_state_dicts_load(tmp_path):
    state = fake_torchvision_state(18, width=4)
    path = tmp_path / "wrapped.pth"
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in state.items()}}, path
    )
    model = SEResNet(depth=18, base_width=4, emb_dim=8)
    report = load_torchvision_weights(model, path)
    assert report.ok and len(report.loaded) == len(state) - 2


def test_missing_and_corrupt_files_raise_clear_errors(tmp_path):
    model = SEResNet(depth=18, base_width=4, emb_dim=8)
    nowhere = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_torchvision_weights(model, nowhere)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="corrupt.pth"):
        load_torchvision_weights(model, corrupt)
    good = tmp_path / "good.pth"
    torch.save(fake_torchvision_state(18, width=4), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated.pth"):
        load_torchvision_weights(model, truncated)
    not_tensors = tmp_path / "list.pth"
    torch.save({"conv1.weight": [1, 2, 3]}, not_tensors)
    with pytest.raises(ValueError, match="conv1.weight"):
        load_torchvision_weights(model, not_tensors)
    with pytest.raises(ValueError, match="in_channel_reduce"):
        load_torchvision_weights(model, good, in_channel_reduce="max")
