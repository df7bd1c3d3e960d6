"""Tests of dampit.inference.safe_yaml and of loading through the check.

Each refused construct is also shown to be dangerous for real: the same
text loaded with HyperPyYAML runs the code (a marker file is created), so
the check refuses exactly what would execute.
"""

import os
import pathlib

import pytest
from hyperpyyaml import load_hyperpyyaml

from dampit.inference.api import ModelFolderError, load_model
from dampit.inference.export import write_demo_model
from dampit.inference.pretrainer import FolderPretrainer
from dampit.inference.safe_yaml import (
    UnsafeYAMLError,
    check_hparams,
    find_unsafe_tags,
    is_allowed_target,
)


def test_plain_and_allowed_tags_pass():
    text = (
        "a: 1\n"
        "b: [1, 2.5, null, true, 'x']\n"
        "c: (2, 3)\n"
        "net: !new:dampit.lobes.resnet.SEResNet\n"
        "    depth: !ref <a>\n"
        "    gate_stages: !tuple (2, 3)\n"
        "lin: !name:torch.nn.Linear\n"
        "copy: !copy <net>\n"
        "pt: !new:speechbrain.utils.parameter_transfer.Pretrainer\n"
        "enc: !new:speechbrain.dataio.encoder.CategoricalEncoder\n"
        "fb: !new:speechbrain.lobes.features.Fbank\n"
    )
    assert find_unsafe_tags(text) == []


@pytest.mark.parametrize(
    "line, tag, reason",
    [
        ("x: !apply:os.getcwd []", "!apply:os.getcwd", "arbitrary function"),
        (
            "x: !applyref:os.getcwd []",
            "!applyref:os.getcwd",
            "arbitrary function",
        ),
        ("x: !module:os", "!module:os", "imports"),
        ("x: !include:other.yaml", "!include:other.yaml", "reads another"),
        (
            "x: !!python/object/apply:os.getcwd []",
            "!!python/object/apply:os.getcwd",
            "arbitrary Python",
        ),
        ("x: !new:os.system [ls]", "!new:os.system", "not under an allowed"),
        (
            "x: !name:subprocess.run",
            "!name:subprocess.run",
            "not under an allowed",
        ),
        (
            "x: !new:speechbrain.nnet.losses.torch.load [f]",
            "!new:speechbrain.nnet.losses.torch.load",
            "resolves to torch.serialization.load",
        ),
        (
            "x: !new:torch.nn.modules.module._global_forward_hooks",
            "!new:torch.nn.modules.module._global_forward_hooks",
            "private",
        ),
        ("x: !PLACEHOLDER", "!PLACEHOLDER", "not an allowed tag"),
        ("x: !!set {a}", "!!set", "not a plain YAML type"),
    ],
)
def test_refused_tags_with_line_numbers(line, tag, reason):
    text = "ok: 1\n# comment\n" + line + "\n"
    found = find_unsafe_tags(text)
    assert len(found) == 1
    assert found[0][0] == 3 and found[0][1] == tag
    assert reason in found[0][2]


def test_tuple_scalars_are_checked_inside(tmp_path):
    """HyperPyYAML parses "(a, b)" with PyYAML's full loader: code runs."""
    marker = tmp_path / "ran"
    text = f"a: 1\nt: (!!python/object/apply:os.mkdir ['{marker}'], 2)\n"
    load_hyperpyyaml(text)
    assert marker.is_dir()  # the danger is real
    found = find_unsafe_tags(text)
    assert [(ln, t) for ln, t, _ in found] == [
        (2, "!!python/object/apply:os.mkdir")
    ]
    assert "arbitrary Python" in found[0][2]


def test_apply_really_runs_and_is_refused(tmp_path):
    marker = tmp_path / "ran2"
    text = f"x: !apply:pathlib.Path.touch [!new:pathlib.Path ['{marker}']]\n"
    load_hyperpyyaml(text)
    assert marker.exists()
    tags = [t for _, t, _ in find_unsafe_tags(text)]
    assert tags == ["!apply:pathlib.Path.touch", "!new:pathlib.Path"]


def test_aliases_are_followed():
    text = "a: &x !apply:os.getcwd []\nb: *x\nc: [*x]\n"
    assert [t[:2] for t in find_unsafe_tags(text)] == [(1, "!apply:os.getcwd")]


def test_invalid_yaml_is_reported():
    found = find_unsafe_tags("a: [1, 2\nb: 3\n")
    assert len(found) == 1 and "not valid YAML" in found[0][2]


def test_is_allowed_target_custom_list():
    assert is_allowed_target("collections.Counter") is not None
    assert is_allowed_target("collections.Counter", ["collections."]) is None
    assert "cannot be found" in is_allowed_target("torch.nn.NoSuchLayer")


def test_check_hparams_message_and_trust(tmp_path):
    p = tmp_path / "hyperparams.yaml"
    p.write_text("a: 1\nb: !apply:os.getcwd []\nc: !new:os.system [ls]\n")
    with pytest.raises(UnsafeYAMLError) as info:
        check_hparams(p)
    msg = str(info.value)
    assert f"{p}:2: !apply:os.getcwd" in msg
    assert f"{p}:3: !new:os.system" in msg
    assert "--trust" in msg
    assert len(check_hparams(p, trust=True)) == 2
    with pytest.raises(FileNotFoundError, match="not found"):
        check_hparams(tmp_path / "missing.yaml")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return pathlib.Path(write_demo_model(tmp_path_factory.mktemp("demo")))


def test_exported_demo_is_safe(demo):
    assert check_hparams(demo / "hyperparams.yaml") == []


def test_load_model_refuses_unless_trusted(demo, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in os.listdir(demo):
        (bad / name).symlink_to(demo / name)
    (bad / "hyperparams.yaml").unlink()
    marker = tmp_path / "ran"
    text = (demo / "hyperparams.yaml").read_text()
    text += (
        f"hook: !apply:pathlib.Path.touch [!new:pathlib.Path ['{marker}']]\n"
    )
    (bad / "hyperparams.yaml").write_text(text)
    with pytest.raises(UnsafeYAMLError, match="!apply:pathlib.Path.touch"):
        load_model(bad)
    assert not marker.exists()  # refused before anything ran
    model = load_model(bad, trust=True)
    assert marker.exists() and model.threshold == 0.5


def test_load_model_folder_errors(tmp_path):
    with pytest.raises(ModelFolderError, match="model folder not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelFolderError, match="hyperparams.yaml is missing"):
        load_model(tmp_path)


def test_folder_pretrainer_reads_relative_to_source(
    demo, tmp_path, monkeypatch
):
    """A bare file name is read from the source folder, whatever the cwd."""
    import torch

    from dampit.lobes.resnet import SEResNet

    net = SEResNet(depth=18, base_width=4, emb_dim=16)
    pt = FolderPretrainer(
        collect_in=tmp_path / "collect",
        loadables={"net": net},
        paths={"net": "embedding_model.ckpt"},
    )
    monkeypatch.chdir(tmp_path)  # no embedding_model.ckpt here
    pt.collect_files(default_source=str(demo))
    pt.load_collected()
    want = torch.load(demo / "embedding_model.ckpt", weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in want.items())
