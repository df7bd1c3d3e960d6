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
    kwargs = dict(depth=50, base_width=4, emb_dim=8, pooling="stats", n_freq=32)
    model = SEResNet(**kwargs).eval()
    path = tmp_path / "model.ckpt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(123)
    other = SEResNet(**kwargs).eval()
    x = torch.randn(2, 60, 32)
    with torch.no_grad():
        assert (model(x) - other(x)).abs().max() > 1e-4
        other.load_state_dict(torch.load(path, weights_only=True))
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    assert other.state_dict().keys() == model.state_dict().keys()


def test_loads_torchvision_keys_from_a_file(resnet18_file, caplog):
    path, state = resnet18_file
    model = SEResNet(depth=18, base_width=8, emb_dim=8, gate="spatial")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="dampit.lobes.resnet"):
        loaded = load_torchvision_weights(model, path)
    assert loaded == sorted(k for k in state if not k.startswith("fc."))
    ours = model.state_dict()
    for key in loaded:
        torch.testing.assert_close(ours[key], state[key], rtol=0, atol=0)
    # dampit's own modules (gates, PReLU slope, head) keep their values
    own = [k for k in ours if k not in state]
    assert "layer4.1.relu.weight" in own
    assert any(k.startswith("gates.conv2.") for k in own)
    assert any(k.startswith("head.") for k in own)
    for key in own:
        torch.testing.assert_close(ours[key], before[key], rtol=0, atol=0)
    assert f"{path}: {len(loaded)} trunk tensors loaded" in caplog.text


def test_full_size_resnet50_keys_line_up_without_writing():
    """Every ImageNet ResNet-50 key and shape fits the paper's model."""
    model = SEResNet(depth=50)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = torchvision_shapes(50, width=64)
    trunk = {k: s for k, s in theirs.items() if not k.startswith("fc.")}
    assert all(ours.get(k) == s for k, s in trunk.items())


def test_one_channel_model_sums_conv1_over_rgb(resnet18_file):
    path, state = resnet18_file
    mono = SEResNet(depth=18, base_width=8, emb_dim=8, in_channels=1)
    load_torchvision_weights(mono, path)
    want = state["conv1.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(mono.conv1.weight.data, want)
    # the same trunk response as the 3-channel model on the copied input
    rgb = SEResNet(depth=18, base_width=8, emb_dim=8, in_channels=3)
    load_torchvision_weights(rgb, path)
    x = torch.randn(2, 1, 32, 40, dtype=torch.float64)
    with torch.no_grad():
        a, _ = mono.double().eval().trunk(x)
        b, _ = rgb.double().eval().trunk(x.repeat(1, 3, 1, 1))
    # the summed kernel is rounded once to float32 (relative 6e-8 a weight)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max())


def test_mismatched_files_load_nothing_and_name_the_keys(tmp_path):
    state = fake_torchvision_state(18, width=8)
    del state["layer2.0.bn1.running_mean"], state["bn1.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(3)
    state["layer1.0.conv2.weight"] = torch.zeros(8, 8, 5, 5)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    model = SEResNet(depth=18, base_width=8, emb_dim=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_torchvision_weights(model, path)
    msg = str(err.value)
    assert str(path) in msg and "4 problems" in msg
    for part in (
        "missing bn1.weight",
        "missing layer2.0.bn1.running_mean",
        "unexpected layer5.0.conv1.weight",
        "layer1.0.conv2.weight: file (8, 8, 5, 5)",
    ):
        assert part in msg
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_wrong_width_is_refused(resnet18_file):
    path, _ = resnet18_file
    model = SEResNet(depth=18, base_width=4, emb_dim=8)
    with pytest.raises(ValueError, match="conv1.weight: file"):
        load_torchvision_weights(model, path)


def test_missing_corrupt_and_foreign_files_raise_clear_errors(tmp_path):
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
    with pytest.raises(ValueError, match="list.pth.*conv1.weight"):
        load_torchvision_weights(model, not_tensors)
    # a training checkpoint wrapping the state dict is not torchvision's
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": fake_torchvision_state(18, width=4)}, wrapped)
    with pytest.raises(ValueError, match="wrapped.pth.*unexpected state_dict"):
        load_torchvision_weights(model, wrapped)
    a_list = tmp_path / "a_list.pth"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(ValueError, match="a_list.pth: not a state dict"):
        load_torchvision_weights(model, a_list)
