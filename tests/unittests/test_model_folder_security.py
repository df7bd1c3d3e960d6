"""A model folder is untrusted input: dampit's loaders execute nothing.

Every YAML trick of the table below is appended to an exported
``hyperparams.yaml``. (a) Loaded plainly with HyperPyYAML (what
SpeechBrain's ``from_hparams`` does) it runs code: a marker file appears;
the tricks that cannot run code even then say so. (b) ``load_model``,
``dampit-verify`` and ``dampit-embed`` (their ``main``) load the same
folder, work, and no marker appears: they read ``dampit_export.json``
with ``json`` and build only the classes of a fixed registry. Malicious
JSON and weights files are refused with one line naming the file.
"""

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from hyperpyyaml import load_hyperpyyaml

from dampit.cli import embed as embed_cli
from dampit.cli import verify as verify_cli
from dampit.inference.api import ModelFolderError, load_model

HERE = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location(
    "model_folder", HERE.parent / "model_folder.py"
)
model_folder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(model_folder)

TOUCH = "['touch {m}']"
#: name -> (YAML appended to hyperparams.yaml, runs code when loaded plainly)
TRICKS = {
    "issue_16": (
        f'extra: !tuple "(!!python/object/apply:os.system {TOUCH}, 2)"',
        True,
    ),
    "implicit_tuple": (
        f"extra: (!!python/object/apply:os.system {TOUCH}, 2)",
        True,
    ),
    "python_apply": (f"extra: !!python/object/apply:os.system {TOUCH}", True),
    "python_apply_nested": (
        f"extra: {{a: [1, {{b: !!python/object/apply:os.system {TOUCH}}}]}}",
        True,
    ),
    "python_apply_in_kwarg": (
        "extra: !new:dampit.lobes.features.CropNormalization "
        f"{{mode: !!python/object/apply:os.system {TOUCH}}}",
        True,
    ),
    "python_apply_as_key": (
        f"extra: {{? !!python/object/apply:os.system {TOUCH} : 1}}",
        False,
    ),
    "python_name": ("extra: !!python/name:os.system", False),
    "python_module": ("extra: !!python/module:os", False),
    "python_object_new": (
        "extra: !!python/object/new:subprocess.Popen [['touch', '{m}']]",
        False,
    ),
    "anchor_alias": (f"a1: &x !apply:os.system {TOUCH}\nb1: [*x]", True),
    "merge_key": (
        f"base: &b {{k: !apply:os.system {TOUCH}}}\nextra: {{<<: *b, j: 1}}",
        True,
    ),
    "include": ("extra: !include:{inc}", True),
    "apply": (f"extra: !apply:os.system {TOUCH}", True),
    "applyref": (f"extra: !applyref:os.system {TOUCH}", True),
    "apply_in_kwarg": (
        "extra: !new:dampit.lobes.features.CropNormalization "
        f"{{mode: !apply:os.system {TOUCH}}}",
        True,
    ),
    "module": ("extra: !module:os", False),
    "name_os_system": ("extra: !name:os.system", False),
    "new_os_system": (f"extra: !new:os.system {TOUCH}", False),
    "new_subprocess": ("extra: !new:subprocess.Popen [['touch', '{m}']]", True),
    "ref_expression": (
        "extra: !ref \"__import__('os').system('touch {m}')\"",
        False,
    ),
}


def trick_text(name, marks):
    """The trick's YAML with its marker file (and include file) filled."""
    mark = marks / name
    inc = marks / f"{name}.inc.yaml"
    inc.write_text(f"x: !apply:os.system ['touch {mark}']\n")
    text = TRICKS[name][0].replace("{m}", str(mark))
    return text.replace("{inc}", str(inc)) + "\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return pathlib.Path(model_folder.write_demo_model(root, threshold=0.3))


def copy_model(demo, where):
    where.mkdir(parents=True, exist_ok=True)
    return pathlib.Path(shutil.copytree(demo, where / "model"))


def wait_for(path):
    """Popen runs ``touch`` asynchronously: give it a moment."""
    for _ in range(50):
        if path.exists():
            return True
        subprocess.run(["sleep", "0.02"], check=True)
    return False


@pytest.mark.parametrize("name", sorted(TRICKS))
def test_trick_runs_plainly_not_through_load_model(name, demo, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    model = copy_model(demo, tmp_path)
    hp = model / "hyperparams.yaml"
    hp.write_text(hp.read_text() + trick_text(name, marks))
    loaded = load_model(model)  # (b) builds the model, runs nothing
    assert loaded.threshold == 0.3
    assert not (marks / name).exists()
    try:  # (a) the same text, loaded plainly, as from_hparams loads it
        out = load_hyperpyyaml(hp.read_text())
        if hasattr(out.get("extra"), "wait"):
            out["extra"].wait()
    except Exception:  # some tricks raise after (or instead of) running
        pass
    assert wait_for(marks / name) is TRICKS[name][1]


def test_trust_is_from_hparams_and_runs_the_yaml(demo, tmp_path):
    """trust=True is SpeechBrain's trust model: the YAML is executed."""
    marks = tmp_path / "marks"
    marks.mkdir()
    model = copy_model(demo, tmp_path)
    hp = model / "hyperparams.yaml"
    hp.write_text(hp.read_text() + trick_text("issue_16", marks))
    assert load_model(model, trust=True).threshold == 0.3
    assert (marks / "issue_16").exists()


def test_commands_run_no_trick(demo, tmp_path, capsys):
    """Every trick at once: dampit-verify and dampit-embed (their main)
    work, no marker appears; the same texts loaded plainly run."""
    marks = tmp_path / "marks"
    marks.mkdir()
    model = copy_model(demo, tmp_path)
    hp = model / "hyperparams.yaml"
    live = [n for n in sorted(TRICKS) if TRICKS[n][1]]
    hp.write_text(
        hp.read_text()
        + "".join(
            trick_text(n, marks).replace("extra:", f"extra_{n}:") for n in live
        )
    )
    rng = np.random.default_rng(0)
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    for k in range(2):
        sf.write(wavs / f"{k}.wav", 0.1 * rng.standard_normal(16000), 16000)
    pair = [str(wavs / "0.wav"), str(wavs / "1.wav")]
    assert verify_cli.main(["--model", str(model), *pair]) == 0
    out = str(tmp_path / "e")
    argv = ["--model", str(model), str(wavs), "--out", out, "--no-progress"]
    assert embed_cli.main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in marks.iterdir() if "." not in p.name) == []
    for n in live:  # control: the same texts, loaded plainly, run
        try:
            load_hyperpyyaml(trick_text(n, marks))
        except Exception:
            pass
    assert all(wait_for(marks / n) for n in live)


@pytest.mark.parametrize(
    "cls",
    [
        "os.system",
        "subprocess.Popen",
        "builtins.eval",
        "torch.load",
        "speechbrain.utils.seed.seed_everything",
        "dampit.inference.api.load_model",
        "dampit.lobes.resnet.SEResNet ",
        "!!python/object/apply:os.system",
        None,
        ["dampit.lobes.resnet.SEResNet"],
    ],
)
def test_json_class_outside_the_registry_is_refused(cls, demo, tmp_path):
    model = copy_model(demo, tmp_path)
    spec_path = model / "dampit_export.json"
    spec = json.loads(spec_path.read_text())
    spec["modules"]["embedding_model"]["class"] = cls
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(ModelFolderError) as err:
        load_model(model)
    msg = str(err.value)
    assert "\n" not in msg and str(spec_path) in msg
    assert "is not one dampit builds" in msg


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda s: s["modules"].update(evil=s["modules"]["mean_var_norm"]),
            "unknown module 'evil'",
        ),
        (lambda s: s["modules"].pop("embedding_model"), "needs modules"),
        (
            lambda s: s["modules"]["mean_var_norm"].update(kwargs=["x"]),
            "kwargs must be an object",
        ),
        (
            lambda s: s["modules"]["mean_var_norm"]["kwargs"].update(
                mode=f"!!python/object/apply:os.system {TOUCH}"
            ),
            "mean_var_norm: mode ",
        ),
        (
            lambda s: s["modules"]["embedding_model"]["kwargs"].update(
                emb_dim=32
            ),
            "cannot load the weights: Error",
        ),
        (lambda s: s.update(threshold=float("nan")), "threshold nan is not a"),
        (lambda s: s.update(threshold=float("inf")), "threshold inf is not a"),
        (lambda s: s.update(threshold="0.5"), "threshold '0.5' is not a"),
        (lambda s: s.update(threshold=True), "threshold True is not a"),
        (lambda s: s.update(sample_rate=-1), "sample_rate -1 is not an"),
    ],
)
def test_bad_json_is_one_line_naming_the_file(edit, match, demo, tmp_path):
    model = copy_model(demo, tmp_path)
    spec_path = model / "dampit_export.json"
    spec = json.loads(spec_path.read_text())
    edit(spec)
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(ModelFolderError, match=f"^{model}/") as err:
        load_model(model)
    assert "\n" not in str(err.value) and match in str(err.value)


class Payload:
    """A pickle that runs ``touch`` when unpickled."""

    def __init__(self, mark):
        self.mark = str(mark)

    def __reduce__(self):
        return (os.system, (f"touch {self.mark}",))


def test_pickle_payload_in_weights_is_refused(demo, tmp_path):
    model = copy_model(demo, tmp_path)
    mark = tmp_path / "pickle_ran"
    ckpt = model / "embedding_model.ckpt"
    state = torch.load(ckpt, weights_only=True)
    state["payload"] = Payload(mark)
    torch.save(state, ckpt)
    with pytest.raises(ModelFolderError, match="weights_only|Weights only"):
        load_model(model)
    assert not mark.exists()
    torch.load(ckpt, weights_only=False)  # loaded plainly, it runs
    assert mark.exists()


def test_weights_missing_truncated_or_not_finite(demo, tmp_path):
    model = copy_model(demo, tmp_path)
    ckpt = model / "embedding_model.ckpt"
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelFolderError, match=f"^{ckpt}: cannot load"):
        load_model(model)
    ckpt.unlink()
    with pytest.raises(ModelFolderError, match=f"^{ckpt}: missing$"):
        load_model(model)
    ckpt.write_bytes(good)
    state = torch.load(ckpt, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone().fill_(float("nan"))
    torch.save(state, ckpt)
    with pytest.raises(ModelFolderError, match=f"non-finite weights in {key}"):
        load_model(model)


def test_missing_threshold_warns_once_with_the_default(demo, tmp_path):
    model = copy_model(demo, tmp_path)
    spec_path = model / "dampit_export.json"
    spec = json.loads(spec_path.read_text())
    line = f"\nthreshold: {spec.pop('threshold')}\n"
    spec_path.write_text(json.dumps(spec))
    yaml_path = model / "hyperparams.yaml"  # as dampit-export writes None
    text = yaml_path.read_text()
    assert text.count(line) == 1
    yaml_path.write_text(text.replace(line, "\nthreshold: null\n"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_model(model)
        assert loaded.threshold == 0.25 and loaded.threshold == 0.25
        wav = torch.randn(1, 16000)
        _, decision = loaded.verify_batch(wav, wav)  # score 1 > 0.25
    assert bool(decision.all())
    mine = [w for w in caught if "threshold" in str(w.message)]
    assert len(mine) == 1
    assert str(spec_path) in str(mine[0].message) and "0.25" in str(
        mine[0].message
    )


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="model folder not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelFolderError, match="no dampit_export.json"):
        load_model(tmp_path)
    (tmp_path / "dampit_export.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        load_model(tmp_path)
    with pytest.raises(ModelFolderError, match="no hyperparams.yaml"):
        load_model(tmp_path, trust=True)


def test_malicious_label_encoder_is_not_evaluated(demo, tmp_path):
    model = copy_model(demo, tmp_path)
    mark = tmp_path / "labels_ran"
    (model / "label_encoder.ckpt").write_text(
        f"'a' => __import__('os').system('touch {mark}')\n"
    )
    with pytest.raises(ModelFolderError, match="label_encoder.ckpt"):
        load_model(model)
    assert not mark.exists()
