"""Every value read from a model folder is checked before any work.

``load_model`` refuses, with one line naming the file and the key, what
the table of bounds (``dampit.inference.folder_checks.BOUNDS``) does not
allow, a hostile JSON file (nested 100,000 deep, a key twice, 2 MB), a
classifier without its weights or a matching label encoder, weights that
give NaN / inf embeddings and, with ``trust=True``, a YAML that does not
load; ``dampit-verify`` refuses the same folders with the same line.
"""

import importlib.util
import json
import pathlib
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.dataio.encoder import CategoricalEncoder

from dampit.cli import verify as verify_cli
from dampit.inference.api import ModelFolderError, load_model
from dampit.lobes.resnet import LinearClassifier

HERE = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location(
    "model_folder", HERE.parent / "model_folder.py"
)
model_folder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(model_folder)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return pathlib.Path(model_folder.write_demo_model(root, threshold=0.3))


def copy_model(demo, where):
    where.mkdir(parents=True, exist_ok=True)
    return pathlib.Path(shutil.copytree(demo, where / "model"))


# ------------------------------------------- every value within bounds --


def _kwargs(name, **values):
    """An edit setting module ``name``'s keyword arguments ``values``."""
    return lambda s: s["modules"][name]["kwargs"].update(values)


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda s: s.update(format=99), "format 99"),
        (lambda s: s.pop("format"), "format None"),
        (lambda s: s.update(sample_rate=10**12), "sample_rate 1000000000000"),
        (lambda s: s.update(sample_rate=0), "sample_rate 0"),
        (lambda s: s.update(threshold=1.5), "threshold 1.5"),
        (lambda s: s.update(threshold=-3), "threshold -3"),
        (_kwargs("embedding_model", emb_dim=10**6), "emb_dim 1000000"),
        (_kwargs("embedding_model", stem_pool="no"), "stem_pool 'no'"),
        (_kwargs("embedding_model", base_width=4.0), "base_width 4.0"),
        (_kwargs("compute_features", sample_rate=8000), "sample_rate 8000"),
        (_kwargs("compute_features", hop_length=True), "hop_length True"),
        (_kwargs("mean_var_norm", extra=1), "unknown key 'extra'"),
    ],
)
def test_value_out_of_bounds_is_one_line_naming_the_key(
    edit, key, demo, tmp_path
):
    """Each of these loads (or allocates) without a word on the old
    loader; now one line names the file and the key, before any module
    is built."""
    model = copy_model(demo, tmp_path)
    spec_path = model / "dampit_export.json"
    spec = json.loads(spec_path.read_text())
    edit(spec)
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(ModelFolderError, match=f"^{spec_path}: ") as err:
        load_model(model)
    assert "\n" not in str(err.value) and key in str(err.value)


@pytest.mark.parametrize(
    "text, match",
    [
        ("[" * 100000 + "]" * 100000, "nested too deeply"),
        ('{"format": 1, "format": 1}', "duplicate key 'format'"),
        (" " * (2 << 20) + "{}", "bytes, more than"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
    ids=["deep", "duplicate", "huge", "not_utf8"],
)
def test_hostile_json_file_is_one_line(text, match, demo, tmp_path):
    model = copy_model(demo, tmp_path)
    spec_path = model / "dampit_export.json"
    if isinstance(text, bytes):
        spec_path.write_bytes(text)
    else:
        spec_path.write_text(text)
    with pytest.raises(ModelFolderError, match=f"^{spec_path}: ") as err:
        load_model(model)
    assert "\n" not in str(err.value) and match in str(err.value)


def test_duplicate_key_in_a_real_spec_is_refused(demo, tmp_path):
    """A second "threshold" would silently win over the first."""
    model = copy_model(demo, tmp_path)
    spec_path = model / "dampit_export.json"
    text = spec_path.read_text()
    spec_path.write_text(
        text.replace('"threshold"', '"threshold": 0.9,\n "threshold"')
    )
    assert json.loads(spec_path.read_text())["threshold"] == 0.3
    with pytest.raises(ModelFolderError, match="duplicate key 'threshold'"):
        load_model(model)


def with_classifier(demo, where, n_classes=3, labels=("a", "b", "c")):
    """A copy of ``demo`` with a ``LinearClassifier`` of ``n_classes``
    and a label encoder of ``labels`` (None: no label file)."""
    model = copy_model(demo, where)
    spec_path = model / "dampit_export.json"
    spec = json.loads(spec_path.read_text())
    dim = spec["modules"]["embedding_model"]["kwargs"]["emb_dim"]
    spec["modules"]["classifier"] = {
        "class": "dampit.lobes.resnet.LinearClassifier",
        "kwargs": {"input_size": dim, "n_classes": n_classes},
    }
    spec_path.write_text(json.dumps(spec))
    torch.manual_seed(0)
    head = LinearClassifier(dim, n_classes)
    torch.save(head.state_dict(), model / "classifier.ckpt")
    if labels is not None:
        enc = CategoricalEncoder()
        enc.update_from_iterable(labels)
        enc.save(model / "label_encoder.ckpt")
    return model


def test_classifier_folder_classifies_with_its_labels(demo, tmp_path):
    """Control: the complete folder classifies into its own labels."""
    model = load_model(with_classifier(demo, tmp_path))
    wav = 0.1 * torch.randn(
        2, 16000, generator=torch.Generator().manual_seed(1)
    )
    _, _, index, labels = model.classify_batch(wav)
    emb = model.encode_batch(wav)
    want = model.mods.classifier(emb).argmax(-1).reshape(-1)
    assert index.tolist() == want.tolist()
    assert labels == [["a", "b", "c"][k] for k in want.tolist()]


def test_classifier_without_weights_is_refused(demo, tmp_path):
    """No classifier.ckpt: the old loader kept a random classifier."""
    model = with_classifier(demo, tmp_path)
    (model / "classifier.ckpt").unlink()
    with pytest.raises(ModelFolderError, match="classifier.ckpt: missing$"):
        load_model(model)
    (model / "classifier.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFolderError, match="classifier.ckpt: cannot load"):
        load_model(model)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "not a label encoder: 'starting_index'"),
        ("================\n'starting_index' => 0\n", "no labels"),
        (
            "'a' => 0\n'b' => 0\n'c' => 1\n================\n"
            "'starting_index' => 0\n",
            "not numbered 0..2",
        ),
        (
            "'a' => 0\n'b' => 1\n================\n'starting_index' => 0\n",
            "2 labels for a classifier of 3 classes",
        ),
    ],
    ids=["empty", "no_labels", "duplicate_index", "too_few"],
)
def test_bad_label_encoder_is_one_line(text, match, demo, tmp_path):
    model = with_classifier(demo, tmp_path)
    labels = model / "label_encoder.ckpt"
    labels.write_text(text)
    with pytest.raises(ModelFolderError, match=f"^{labels}: ") as err:
        load_model(model)
    assert match in str(err.value)


def test_classifier_without_label_encoder_is_refused(demo, tmp_path):
    model = with_classifier(demo, tmp_path, labels=None)
    with pytest.raises(ModelFolderError, match="label_encoder.ckpt: missing"):
        load_model(model)


def overflowing(demo, where):
    """Finite weights whose embeddings overflow to NaN / inf."""
    model = copy_model(demo, where)
    ckpt = model / "embedding_model.ckpt"
    state = torch.load(ckpt, weights_only=True)
    for key, value in state.items():
        if value.is_floating_point() and not key.endswith("running_var"):
            value.mul_(1e10)
    torch.save(state, ckpt)
    assert all(torch.isfinite(v).all() for v in state.values())
    return model


def test_modules_that_do_not_fit_together_are_refused_at_load(demo, tmp_path):
    """A fractional hop (a number within bounds) breaks the STFT: the old
    loader loaded it and failed with a traceback at the first file."""
    model = copy_model(demo, tmp_path)
    spec_path = model / "dampit_export.json"
    spec = json.loads(spec_path.read_text())
    spec["modules"]["compute_features"]["kwargs"]["hop_length"] = 160.5
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(ModelFolderError) as err:
        load_model(model)
    msg = str(err.value)
    assert msg.startswith(f"{model}: the model does not run on 1 s of audio")
    assert "\n" not in msg


def test_weights_giving_non_finite_embeddings_are_refused(demo, tmp_path):
    """The old loader returned NaN scores and False decisions."""
    model = overflowing(demo, tmp_path)
    with pytest.raises(ModelFolderError) as err:
        load_model(model)
    assert str(err.value) == f"{model}: the model gives NaN/inf embeddings"


@pytest.mark.parametrize(
    "text, match",
    [
        ("extra: [1, 2\n", "while parsing a flow sequence"),
        ("\tbad: 1\n", "cannot start any token"),
        ("extra: !new:nope.Nope\n", "no such class as nope.Nope"),
        ("threshold: 4.0\n", "threshold 4.0 is not a number"),
    ],
    ids=["unclosed", "tab", "unknown_class", "threshold"],
)
def test_trust_on_a_bad_yaml_is_one_line(text, match, demo, tmp_path):
    model = copy_model(demo, tmp_path)
    hp = model / "hyperparams.yaml"
    body = hp.read_text()
    if text.startswith("threshold"):
        body = "\n".join(
            ln for ln in body.splitlines() if not ln.startswith("threshold")
        )
    hp.write_text(text + body)
    with pytest.raises(ModelFolderError, match=f"^{hp}: ") as err:
        load_model(model, trust=True)
    assert "\n" not in str(err.value) and match in str(err.value)


def _cli_error(model, wav, capsys):
    """dampit-verify's exit status and stderr on ``model``."""
    code = verify_cli.main(["--model", str(model), str(wav), str(wav)])
    return code, capsys.readouterr().err.strip()


def test_api_and_cli_refuse_the_same_folders(demo, tmp_path, capsys):
    """One check for both: the CLI's one line is the API's message."""
    wav = tmp_path / "a.wav"
    sf.write(wav, 0.1 * np.random.default_rng(0).standard_normal(16000), 16000)
    folders = {"overflow": overflowing(demo, tmp_path / "o")}
    folders["no_clf"] = with_classifier(demo, tmp_path / "c")
    (folders["no_clf"] / "classifier.ckpt").unlink()
    folders["format"] = copy_model(demo, tmp_path / "f")
    spec_path = folders["format"] / "dampit_export.json"
    spec_path.write_text(
        spec_path.read_text().replace('"format": 1', '"format": 99')
    )
    for name, model in folders.items():
        with pytest.raises(ModelFolderError) as err:
            load_model(model)
        code, stderr = _cli_error(model, wav, capsys)
        assert code == 2, name
        assert stderr == f"dampit-verify: error: {err.value}", name
