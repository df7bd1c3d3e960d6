"""dampit-export: a verified run folder -> a model folder.

The run folder is built the way the recipe leaves it, without training:
``multi_metric.yaml`` (made thin) is resolved into ``<run>/hyperparams.yaml``
as SpeechBrain's ``create_experiment_directory`` does, its modules (built
from the same text) are saved by SpeechBrain's ``Checkpointer`` three times
with different weights, the recipe's ``load_test_weights`` saves the tested
model, and ``verification/summary.json`` is written as ``verify.py`` writes
it. Expected
values are computed independently: weights read back from the checkpoint
files and averaged in a loop, embeddings through the training-side modules,
logits by a matrix product.
"""

import json
import os
import pathlib
import shutil

import pytest
import ruamel.yaml
import torch
from hyperpyyaml import load_hyperpyyaml, resolve_references
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.inference.speaker import SpeakerRecognition
from speechbrain.utils.checkpoints import Checkpointer

from dampit.cli.export import main
from dampit.inference.api import load_model
from dampit.inference.export import ExportError, export_model
from dampit.training.verification import load_test_weights
from dampit.utils.atomic import atomic_folder, atomic_write_text

REPO = pathlib.Path(__file__).resolve().parents[2]
BASE = REPO / "recipes" / "VoxCeleb" / "hparams" / "multi_metric.yaml"
SPEAKERS = ["id01", "id02", "id03", "id04"]
THIN = {
    "features": "fbank",
    "n_freq": 40,
    "n_fft": 400,
    "depth": 18,
    "base_width": 4,
    "stem_kernel": 3,
    "stem_pool": False,
    "pooling": "stats",
    "emb_dim": 16,
    "n_speakers": len(SPEAKERS),
}
SUMMARY = {
    "trials/full_cosine": {
        "n_trials": 30,
        "eer": 0.2,
        "eer_threshold": 0.4321,
        "min_dcf_0.01": 0.75,
    },
    "trials/multicrop_dot": {
        "n_trials": 30,
        "eer": 0.3,
        "eer_threshold": 12.5,
        "min_dcf_0.01": 0.8,
    },
}


def build_run(root, average=1, **overrides):
    """A run folder as the recipe leaves it; returns (run, hp, states).

    ``average``: ``average_checkpoints`` (1: checkpoint 1, the lowest EER;
    2: the mean of checkpoints 2 and 1, the newest). ``states[k]``: the
    k-th checkpoint's network and loss states.
    """
    run = root / "run"
    over = {
        "data_folder": str(root / "data"),
        "output_folder": str(run),
        "average_checkpoints": average,
        **THIN,
        **overrides,
    }
    with open(BASE, encoding="utf-8") as f:
        resolved = resolve_references(f, over).getvalue()
    run.mkdir(parents=True)
    (run / "hyperparams.yaml").write_text(resolved)
    hp = load_hyperpyyaml(resolved)
    ckpt = Checkpointer(
        run / "save",
        {
            "embedding_model": hp["embedding_model"],
            "compute_cost": hp["compute_cost"],
        },
    )
    gen = torch.Generator().manual_seed(0)
    states = []
    for eer in (30.0, 20.0, 25.0):
        for name in ("embedding_model", "compute_cost"):
            for key, t in hp[name].state_dict().items():
                noise = torch.randn(t.shape, generator=gen)
                if key.endswith("running_var"):
                    t.copy_(0.5 + noise.abs())
                elif t.is_floating_point():
                    t.mul_(1 + 0.2 * noise).add_(0.01 * noise)
        ckpt.save_checkpoint(meta={"EER": eer})
        states.append(
            {
                n: {k: v.clone() for k, v in hp[n].state_dict().items()}
                for n in ("embedding_model", "compute_cost")
            }
        )
    enc = CategoricalEncoder()
    enc.update_from_iterable(SPEAKERS)
    enc.save(str(run / "save" / "label_encoder.txt"))
    ver = run / "verification"
    load_test_weights(ckpt, hp, ruamel.yaml.YAML().load(resolved), ver)
    (ver / "summary.json").write_text(json.dumps(SUMMARY))
    return run, hp, states


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run, hp, states = build_run(root)
    return run, root / "model", hp, states, export_model(run, root / "model")


def waves():
    gen = torch.Generator().manual_seed(3)
    return [0.1 * torch.randn(n, generator=gen) for n in (12345, 8000)]


@torch.no_grad()
def training_side(hp, state, wav):
    """The recipe's modules with the checkpoint's weights, one file."""
    hp["embedding_model"].load_state_dict(state)
    hp["embedding_model"].eval()
    feats = hp["normalize"](hp["compute_features"](wav[None]), torch.ones(1))
    return hp["embedding_model"](feats, torch.ones(1))[0, 0]


def test_folder_content_and_tested_weights(exported):
    run, model, _, states, spec = exported
    assert sorted(os.listdir(model)) == [
        "README.md",
        "classifier.ckpt",
        "dampit_export.json",
        "embedding_model.ckpt",
        "hyperparams.yaml",
        "label_encoder.ckpt",
    ]
    got = torch.load(model / "embedding_model.ckpt", weights_only=True)
    want = states[1]["embedding_model"]  # the one checkpoints.txt lists
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    clf = torch.load(model / "classifier.ckpt", weights_only=True)
    cost = states[1]["compute_cost"]
    assert torch.equal(
        clf["out.weight"], cost["terms.softmax.classifier.weight"]
    )
    assert torch.equal(clf["out.bias"], cost["terms.softmax.classifier.bias"])
    assert (model / "label_encoder.ckpt").read_text() == (
        run / "save" / "label_encoder.txt"
    ).read_text()
    assert sorted(os.listdir(model.parent)) == ["model", "run"]  # no temp
    listed = (run / "verification" / "checkpoints.txt").read_text()
    assert spec["checkpoints"] == listed.split()


def test_threshold_and_card_from_summary(exported, tmp_path):
    _, model, _, _, spec = exported
    assert spec["threshold"] == 0.4321
    assert spec["threshold_source"].endswith("summary.json: trials/full_cosine")
    on_disk = json.loads((model / "dampit_export.json").read_text())
    assert on_disk["threshold"] == 0.4321
    assert load_model(model).threshold == 0.4321
    sb = SpeakerRecognition.from_hparams(source=str(model), savedir=tmp_path)
    assert sb.hparams.threshold == 0.4321
    card = (model / "README.md").read_text()
    assert "0.4321" in card and "trials/full_cosine" in card
    assert "- trials/multicrop_dot: EER 30.00%\n" in card


def test_both_loaders_give_the_training_side_embeddings(exported, tmp_path):
    _, model, hp, states, _ = exported
    ours = load_model(model)
    sb = EncoderClassifier.from_hparams(source=str(model), savedir=tmp_path)
    for wav in waves():
        want = training_side(hp, states[1]["embedding_model"], wav)
        tol = 1e-5 * max(1.0, float(want.abs().max()))
        for m in (ours, sb):
            got = m.encode_batch(wav[None])[0, 0]
            assert float((got - want).abs().max()) <= tol


def test_classify_batch_is_the_linear_classifier(exported, tmp_path):
    _, model, _, states, _ = exported
    sb = EncoderClassifier.from_hparams(source=str(model), savedir=tmp_path)
    cost = states[1]["compute_cost"]
    w = cost["terms.softmax.classifier.weight"]
    b = cost["terms.softmax.classifier.bias"]
    for m in (sb, load_model(model)):
        wav = waves()[0][None]
        out, _, index, text = m.classify_batch(wav)
        logits = w @ m.encode_batch(wav)[0, 0] + b
        assert torch.allclose(out[0], logits, atol=1e-5)
        assert text[0] == SPEAKERS[int(logits.argmax())]


def test_averaged_checkpoints_and_cosine_classifier(tmp_path):
    """Two checkpoints listed: their mean is exported; an aam softmax term
    becomes a cosine classifier."""
    run, _, states = build_run(tmp_path, average=2, softmax_kind="aam")
    export_model(run, tmp_path / "model")
    got = torch.load(tmp_path / "model/embedding_model.ckpt", weights_only=True)
    a, b = (states[k]["embedding_model"] for k in (2, 1))
    for name in a:
        want = (a[name].double() + b[name].double()) / 2
        if not a[name].is_floating_point():
            want = want.round()
        assert got[name].dtype == a[name].dtype
        # float32 mean: within an ulp of the exact double mean
        ulp = torch.finfo(torch.float32).eps * float(want.abs().max())
        torch.testing.assert_close(got[name].double(), want, rtol=0, atol=ulp)
    w = (
        sum(
            states[k]["compute_cost"]["terms.softmax.classifier.weight"]
            for k in (2, 1)
        )
        / 2
    )
    model = load_model(tmp_path / "model")
    x = torch.randn(3, 1, w.shape[1])
    want = torch.nn.functional.normalize(x[:, 0], dim=1) @ (
        torch.nn.functional.normalize(w, dim=1).T
    )
    torch.testing.assert_close(
        model.mods.classifier(x)[:, 0], want, rtol=0, atol=1e-6
    )


def _edit_tested(run, emb_dim=None, **values):
    """Change values (or the network's emb_dim) of tested_model.json."""
    path = run / "verification" / "tested_model.json"
    tested = json.loads(path.read_text())
    tested.update(values)
    if emb_dim is not None:
        tested["modules"]["embedding_model"]["kwargs"]["emb_dim"] = emb_dim
    path.write_text(json.dumps(tested))


@pytest.mark.parametrize(
    "damage, match",
    [
        (
            lambda r: (r / "verification/summary.json").unlink(),
            "summary.json not found: verify the run first",
        ),
        (
            lambda r: (r / "verification/tested_model.json").unlink(),
            "tested_model.json not found: re-run the verification",
        ),
        (
            lambda r: _edit_tested(r, checkpoints=[]),
            "tested_model.json: no checkpoint",
        ),
        (
            lambda r: (r / "verification/embedding_model.ckpt").unlink(),
            "embedding_model.ckpt not found: re-run the verification",
        ),
        (
            lambda r: (r / "verification/summary.json").write_text(
                json.dumps({"t/full_cosine": {"eer_threshold": None}})
            ),
            "summary.json: no finite eer_threshold for full_cosine",
        ),
        (
            lambda r: (r / "verification/summary.json").write_text("{"),
            "summary.json: Expecting",
        ),
        (
            lambda r: (r / "verification/summary.json").write_text("[]"),
            "summary.json: not a JSON object",
        ),
        (
            lambda r: (r / "verification/tested_model.json").write_text("["),
            "tested_model.json: Expecting",
        ),
        (
            lambda r: _edit_tested(r, modules=3),
            "tested_model.json: not a record of dampit's verification",
        ),
        (
            lambda r: _edit_tested(r, emb_dim=24),
            "model/embedding_model.ckpt: cannot load the weights: Error",
        ),
    ],
)
def test_refused_runs_write_nothing(damage, match, exported, tmp_path):
    run, *_ = exported
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    damage(copy)
    with pytest.raises(ExportError, match=match) as err:
        export_model(copy, tmp_path / "model")
    assert "\n" not in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_overwrite_and_main(exported, tmp_path, capsys):
    run, *_ = exported
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    assert main([str(run), str(target)]) == 2
    assert "exists (--overwrite" in capsys.readouterr().err
    assert os.listdir(target) == ["keep.txt"]
    assert main([str(run), str(target), "--overwrite"]) == 2  # not ours
    assert "does not hold dampit_export.json" in capsys.readouterr().err
    assert os.listdir(target) == ["keep.txt"]
    (target / "keep.txt").unlink()  # an empty folder holds nothing to lose
    assert main([str(run), str(target), "--overwrite"]) == 0
    assert "threshold 0.4321" in capsys.readouterr().out
    (target / "extra.txt").write_text("x")
    assert main([str(run), str(target), "--overwrite"]) == 0  # a model
    assert "extra.txt" not in os.listdir(target)
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert main([str(tmp_path / "nope"), str(tmp_path / "m")]) == 2
    assert "run folder not found" in capsys.readouterr().err


def test_files_follow_the_umask(exported, tmp_path):
    run, *_ = exported
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        export_model(run, tmp_path / "model")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
        with atomic_folder(tmp_path / "private") as tmp:
            pathlib.Path(tmp, "c.txt").write_text("x")
    finally:
        os.umask(old)
    mode = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert mode["a.txt"] == 0o644 and mode["b.txt"] == 0o600
    assert mode["model"] == 0o755 and mode["private"] == 0o700
    assert all(mode[p] == 0o644 for p in os.listdir(tmp_path / "model"))


def test_moved_run_exports_its_own_checkpoints(tmp_path):
    """checkpoints.txt names absolute paths; a moved run finds the same
    checkpoint names (and the label file) in its own save folder."""
    run, _, states = build_run(tmp_path / "old")
    moved = tmp_path / "moved"
    run.rename(moved)
    export_model(moved, tmp_path / "model")
    got = torch.load(tmp_path / "model/embedding_model.ckpt", weights_only=True)
    want = states[1]["embedding_model"]
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert (tmp_path / "model" / "label_encoder.ckpt").read_text() == (
        moved / "save" / "label_encoder.txt"
    ).read_text()


def test_unverified_dampit_run_says_so(exported, tmp_path):
    """No verification/: read as SpeechBrain's recipe, which it is not."""
    run, *_ = exported
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "verification")
    scores = tmp_path / "scores.txt"
    scores.write_text("a b 1 0.9\na c 0 0.1\n")
    with pytest.raises(ExportError, match="a dampit run is exported once"):
        export_model(copy, tmp_path / "model", scores=scores)
    assert sorted(os.listdir(tmp_path)) == ["run", "scores.txt"]
