"""Tests of dampit.inference.export: a run folder -> a model folder.

The run folder is built here the way the recipe builds it, without
training: the recipe's own YAML (``mini.yaml`` over ``multi_metric.yaml``)
is resolved into ``<run>/hyperparams.yaml`` exactly as SpeechBrain's
``create_experiment_directory`` does, the recipe's modules and
``Checkpointer`` (loaded from the same YAML) save three checkpoints with
different validation EERs, and ``prepare_folder`` prepares a small tree of
real dspspeech files. Expected values are computed independently: weights
read back from the checkpoint files, embeddings of one file at a time through
SpeechBrain's ``SpeakerRecognition``, the EER threshold by a plain loop over
every candidate threshold, logits by a matrix product.
"""

import json
import os
import pathlib

import numpy as np
import pytest
import torch
from hyperpyyaml import resolve_references
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.inference.speaker import SpeakerRecognition

from dampit.dataio.prepare_folder import prepare_folder
from dampit.inference.export import (
    ExportError,
    Tagged,
    calibrate_threshold,
    classifier_spec,
    export_model,
    main,
    read_run_hparams,
    run_model_spec,
    staged_folder,
    threshold_from_summary,
)
from dampit.inference.safe_yaml import find_unsafe_tags
from dampit.utils.hparams import load_hparams, resolve_variant

REPO = pathlib.Path(__file__).resolve().parents[2]
MINI = REPO / "recipes" / "VoxCeleb" / "hparams" / "mini.yaml"
N_SPK, N_UTT = 6, 6
SUMMARY = {
    "trials/full_cosine": {
        "name": "full_cosine",
        "n_trials": 30,
        "eer": 0.2,
        "eer_threshold": 0.4321,
        "min_dcf_0.01": 0.75,
    },
    "trials/multicrop_dot": {
        "name": "multicrop_dot",
        "n_trials": 30,
        "eer": 0.3,
        "eer_threshold": 12.5,
        "min_dcf_0.01": 0.8,
    },
}


def small_tree(root, data):
    """Symlinks to N_SPK x N_UTT dspspeech files (nothing copied)."""
    spk = sorted(p for p in (data / "dspspeech").iterdir() if p.is_dir())
    for s in spk[:N_SPK]:
        (root / s.name).mkdir(parents=True)
        for f in sorted(s.glob("*.wav"))[:N_UTT]:
            (root / s.name / f.name).symlink_to(f)
    return root


def randomize(module, gen):
    """Random weights and batch-norm statistics (eval mode matters)."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            else:
                t.mul_(1 + 0.2 * torch.randn(t.shape, generator=gen))
                t.add_(0.01 * torch.randn(t.shape, generator=gen))


def build_run(root, data, extra=None):
    """A run folder as the recipe leaves it; returns (run, expected).

    ``extra``: more overrides of ``mini.yaml``. ``expected["epochs"]``
    holds each epoch's saved network and classifier states.
    """
    tree = small_tree(root / "data", data)
    run = root / "run"
    prep = prepare_folder(
        tree, run / "prepared", n_test_speakers=2, dev_fraction=0.34
    )
    n_train = prep["n_train_speakers"]
    overrides = {
        "data_folder": str(tree),
        "output_folder": str(run),
        "base_width": 8,
        "emb_dim": 32,
        "n_speakers": n_train,
        "n_test_speakers": 2,
        "average_checkpoints": 1,  # the best checkpoint (mini.yaml: 5)
        **(extra or {}),
    }
    base, merged = resolve_variant(str(MINI), overrides)
    with open(base, encoding="utf-8") as f:
        resolved = resolve_references(f, merged).getvalue()
    (run / "hyperparams.yaml").write_text(
        f"# Generated from:\n# {base}\n# yamllint disable\n{resolved}"
    )
    hp, _, _ = load_hparams(str(MINI), overrides)
    gen = torch.Generator().manual_seed(0)
    expected = {"epochs": {}}
    for epoch, eer in ((1, 30.0), (2, 20.0), (3, 25.0)):
        randomize(hp["embedding_model"], gen)
        randomize(hp["compute_cost"], gen)
        hp["epoch_counter"].current = epoch
        hp["checkpointer"].save_checkpoint(meta={"EER": eer})
        expected["epochs"][epoch] = {
            name: {k: v.clone() for k, v in hp[name].state_dict().items()}
            for name in ("embedding_model", "compute_cost")
        }
        if eer == 20.0:
            expected["emb"] = {
                k: v.clone()
                for k, v in hp["embedding_model"].state_dict().items()
            }
            expected["cost"] = {
                k: v.clone() for k, v in hp["compute_cost"].state_dict().items()
            }
    enc = CategoricalEncoder()
    rows = (run / "prepared" / "train.csv").read_text().splitlines()[1:]
    speakers = sorted({r.split(",")[-1] for r in rows})
    enc.update_from_iterable(speakers)
    enc.save(str(run / "save" / "label_encoder.txt"))
    (run / "verification").mkdir()
    (run / "verification" / "summary.json").write_text(json.dumps(SUMMARY))
    expected["speakers"] = speakers
    return run, expected


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_data):
    """(run, model folder, expected) for one export with the defaults."""
    root = tmp_path_factory.mktemp("export")
    run, expected = build_run(root, shared_data)
    model = root / "model"
    meta = export_model(run, model, progress=False)
    return run, model, expected, meta


def load_sb(model, tmp_path, cls=SpeakerRecognition):
    return cls.from_hparams(source=str(model), savedir=str(tmp_path / "sb"))


def eer_threshold_loop(scores, labels):
    """SpeechBrain's EER point by brute force: every candidate threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    n_tar, n_non = labels.sum(), (~labels).sum()
    best = None
    for t in [-np.inf] + sorted(set(scores.tolist())):
        n_miss = sum(1 for s, y in zip(scores, labels) if y and s <= t)
        n_fa = sum(1 for s, y in zip(scores, labels) if not y and s > t)
        gap = abs(n_fa * n_tar - n_miss * n_non)  # |FPR - FNR| scaled
        if best is None or gap < best[0]:
            best = (gap, t, (n_fa / n_non + n_miss / n_tar) / 2)
    return best[1], best[2]


def test_folder_content_and_weights(exported):
    run, model, expected, meta = exported
    names = sorted(os.listdir(model))
    assert names == [
        "README.md",
        "classifier.ckpt",
        "dampit_export.json",
        "embedding_model.ckpt",
        "hyperparams.yaml",
        "label_encoder.txt",
    ]
    # The best checkpoint (lowest valid EER, 20.0) was exported.
    state = torch.load(model / "embedding_model.ckpt", weights_only=True)
    assert state.keys() == expected["emb"].keys()
    for k, v in expected["emb"].items():
        assert torch.equal(state[k], v), k
    assert meta["valid_eer"] == 20.0 and meta["epoch"] == 2
    clf = torch.load(model / "classifier.ckpt", weights_only=True)
    w = expected["cost"]["terms.softmax.classifier.weight"]
    b = expected["cost"]["terms.softmax.classifier.bias"]
    assert torch.equal(clf["out.weight"], w) and torch.equal(clf["out.bias"], b)
    assert (model / "label_encoder.txt").read_text() == (
        run / "save" / "label_encoder.txt"
    ).read_text()
    # Nothing left behind in the parent folder.
    assert sorted(os.listdir(model.parent)) == ["data", "model", "run"]


def test_hyperparams_are_safe_and_complete(exported):
    _, model, _, meta = exported
    text = (model / "hyperparams.yaml").read_text()
    assert find_unsafe_tags(text) == []
    hp = read_run_hparams(model / "hyperparams.yaml")
    assert hp["threshold"] == pytest.approx(meta["threshold"], abs=0)
    assert hp["sample_rate"] == 16000
    assert hp["embedding_model"].target == "dampit.lobes.resnet.SEResNet"
    assert hp["embedding_model"].value["base_width"] == 8
    assert hp["embedding_model"].value["emb_dim"] == 32
    assert hp["mean_var_norm"].target.endswith("CropNormalization")
    assert hp["pretrainer"].value["paths"] == {
        "label_encoder": "label_encoder.txt"
    }
    assert set(hp["modules"]) == {
        "compute_features",
        "mean_var_norm",
        "embedding_model",
        "classifier",
    }


def test_threshold_is_the_dev_eer_threshold(exported, tmp_path):
    """Recomputed file by file with SpeechBrain's class and a plain loop."""
    run, model, _, meta = exported
    sb = load_sb(model, tmp_path)
    rows = (run / "prepared" / "dev.csv").read_text().splitlines()
    header = rows[0].split(",")
    rows = [dict(zip(header, r.split(","))) for r in rows[1:]]
    emb = []
    for r in rows:
        wav = sb.load_audio(r["wav"])
        emb.append(sb.encode_batch(wav[None])[0, 0])
    emb = torch.nn.functional.normalize(torch.stack(emb), dim=1)
    scores, labels = [], []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            scores.append(float(emb[i] @ emb[j]))
            labels.append(rows[i]["spk_id"] == rows[j]["spk_id"])
    thr, eer = eer_threshold_loop(scores, labels)
    assert meta["threshold_source"] == "dev"
    assert meta["threshold"] == pytest.approx(thr, abs=1e-5)
    assert meta["calibration"]["eer"] == pytest.approx(eer, abs=1e-9)
    assert meta["calibration"]["n_target"] == sum(labels)
    assert float(sb.hparams.threshold) == meta["threshold"]


def test_model_card(exported):
    run, model, _, meta = exported
    card = (model / "README.md").read_text()
    assert f"{meta['threshold']:.6g}" in card
    assert "20.00%" in card and "validation EER" in card  # best valid EER
    assert "| trials/full_cosine | 30 | 20.00% | 0.7500 |" in card
    assert "n_train_speakers: 4" in card
    assert "depth=18" in card and "base_width=8" in card
    assert "from_hparams" in card


def test_classifier_and_labels(exported, tmp_path):
    """classify_batch = argmax of emb @ W.T + b, decoded by the run's file."""
    run, model, expected, _ = exported
    sb = load_sb(model, tmp_path, EncoderClassifier)
    wav = sb.load_audio(
        str(next((run.parent / "data").glob("*/*.wav")).resolve())
    )
    out, score, index, text = sb.classify_batch(wav[None])
    emb = sb.encode_batch(wav[None])[0, 0]
    w = expected["cost"]["terms.softmax.classifier.weight"]
    b = expected["cost"]["terms.softmax.classifier.bias"]
    logits = w @ emb + b
    assert torch.allclose(out[0], logits, atol=1e-5)
    assert int(index[0]) == int(logits.argmax())
    lines = (run / "save" / "label_encoder.txt").read_text().splitlines()
    by_index = {}
    for line in lines:
        if line.startswith("="):
            break  # the encoder's metadata follows
        if "=>" in line:
            lab, idx = line.split("=>")
            by_index[int(idx)] = lab.strip().strip("'")
    assert text[0] == by_index[int(logits.argmax())]
    assert sorted(by_index.values()) == expected["speakers"]


def test_threshold_test_and_number(exported, tmp_path):
    run, _, _, _ = exported
    meta = export_model(run, tmp_path / "m1", threshold="test", progress=False)
    assert meta["threshold"] == 0.4321
    assert meta["threshold_source"] == "test:trials/full_cosine"
    hp = read_run_hparams(tmp_path / "m1" / "hyperparams.yaml")
    assert hp["threshold"] == 0.4321
    meta = export_model(
        run, tmp_path / "m2", threshold=0.125, classifier=False, progress=False
    )
    assert meta["threshold"] == 0.125
    assert sorted(os.listdir(tmp_path / "m2")) == [
        "README.md",
        "dampit_export.json",
        "embedding_model.ckpt",
        "hyperparams.yaml",
    ]


def test_explicit_checkpoint(exported, tmp_path):
    run, _, _, _ = exported
    ckpts = sorted((run / "save").glob("CKPT+*"))
    first = ckpts[0]  # epoch 1, EER 30
    export_model(run, tmp_path / "m", threshold=0.5, ckpt=first, progress=False)
    state = torch.load(
        tmp_path / "m" / "embedding_model.ckpt", weights_only=True
    )
    want = torch.load(first / "embedding_model.ckpt", weights_only=True)
    assert all(torch.equal(state[k], want[k]) for k in want)
    with pytest.raises(ExportError, match="not a SpeechBrain checkpoint"):
        export_model(run, tmp_path / "x", ckpt=run / "save", progress=False)


def test_averaged_checkpoints_are_exported(tmp_path, shared_data):
    """average_checkpoints: 2 exports the mean of epochs 3 and 2."""
    run, expected = build_run(tmp_path, shared_data, {"average_checkpoints": 2})
    model = tmp_path / "model"
    meta = export_model(run, model, threshold=0.5, progress=False)
    assert meta["averaged_epochs"] == [3, 2]
    assert meta["epoch"] == 3
    assert (
        "weights averaged over epochs 3, 2" in (model / "README.md").read_text()
    )
    got = torch.load(model / "embedding_model.ckpt", weights_only=True)
    last, prev = (expected["epochs"][e]["embedding_model"] for e in (3, 2))
    assert set(got) == set(last)
    for name in last:  # the mean, one tensor at a time
        want = (last[name].double() + prev[name].double()) / 2
        if not last[name].is_floating_point():
            want = want.round()
        assert got[name].dtype == last[name].dtype, name
        torch.testing.assert_close(
            got[name].double(), want, rtol=1e-6, atol=1e-7
        )
    # The classifier is the mean of the two softmax weights too.
    clf = torch.load(model / "classifier.ckpt", weights_only=True)
    w = [
        expected["epochs"][e]["compute_cost"]["terms.softmax.classifier.weight"]
        for e in (3, 2)
    ]
    (weight,) = [v for k, v in clf.items() if k.endswith("weight")]
    torch.testing.assert_close(weight, (w[0] + w[1]) / 2)
    # An explicit checkpoint wins over the averaging.
    first = sorted((run / "save").glob("CKPT+*"))[0]
    export_model(
        run, tmp_path / "m1", threshold=0.5, ckpt=first, progress=False
    )
    one = torch.load(
        tmp_path / "m1" / "embedding_model.ckpt", weights_only=True
    )
    want = expected["epochs"][1]["embedding_model"]
    assert all(torch.equal(one[k], want[k]) for k in want)


def test_existing_target_and_overwrite(exported, tmp_path):
    run, _, _, _ = exported
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_model(run, target, threshold=0.5, progress=False)
    assert os.listdir(target) == ["keep.txt"]
    export_model(run, target, threshold=0.5, overwrite=True, progress=False)
    assert "keep.txt" not in os.listdir(target)
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_failed_export_leaves_nothing(exported, tmp_path):
    """Arguments that do not match the checkpoint: clear error, no folder."""
    run, _, _, _ = exported
    bad = tmp_path / "run"
    os.symlink(run / "save", tmp_path / "save")
    bad.mkdir()
    (bad / "save").symlink_to(run / "save")
    text = (run / "hyperparams.yaml").read_text()
    (bad / "hyperparams.yaml").write_text(
        text.replace("emb_dim: 32", "emb_dim: 48")
    )
    with pytest.raises(ExportError, match="does not match the run's"):
        export_model(bad, tmp_path / "model", threshold=0.5, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["run", "save"]


def test_bad_runs(tmp_path):
    with pytest.raises(ExportError, match="run folder not found"):
        export_model(tmp_path / "nope", tmp_path / "m")
    (tmp_path / "run").mkdir()
    with pytest.raises(ExportError, match="hyperparameters not found"):
        export_model(tmp_path / "run", tmp_path / "m")
    (tmp_path / "run" / "hyperparams.yaml").write_text("compute_features: 3\n")
    with pytest.raises(ExportError, match="'compute_features' must be a !new"):
        export_model(tmp_path / "run", tmp_path / "m")


def test_main_exit_codes(exported, tmp_path, capsys):
    run, _, _, _ = exported
    assert (
        main(
            [
                str(run),
                str(tmp_path / "m"),
                "--threshold",
                "0.3",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "threshold 0.3000, manual" in capsys.readouterr().out
    assert main([str(run), str(tmp_path / "m"), "--threshold", "0.3"]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(run), str(tmp_path / "m2"), "--threshold", "high"])


def test_threshold_from_summary():
    assert threshold_from_summary(SUMMARY) == (
        0.4321,
        0.2,
        "trials/full_cosine",
    )
    nested = {"O": {"full_cosine": {"eer": 0.1, "eer_threshold": 0.7}}}
    assert threshold_from_summary(nested) == (0.7, 0.1, "O/full_cosine")
    with pytest.raises(ExportError, match="full_cosine"):
        threshold_from_summary({"multicrop_dot": {"eer": 0.1}})


def test_run_model_spec_and_classifier_kinds():
    hp = {
        "sample_rate": 8000,
        "compute_features": Tagged("!new:a.B", {"n_fft": 256}),
        "mean_var_norm": Tagged("!new:a.N", None),
        "embedding_model": Tagged("!new:a.M", {"emb_dim": 4}),
        "compute_cost": Tagged(
            "!new:dampit.losses.MultiMetricLoss",
            {
                "terms": {"softmax": Tagged("!new:x", {"kind": "aam"})},
                "weights": {"softmax": 0.1},
            },
        ),
    }
    spec = run_model_spec(hp)
    assert spec["sample_rate"] == 8000
    assert spec["mean_var_norm"] == ("a.N", {})
    assert spec["softmax"] == ({"kind": "aam"}, 0.1)
    w = torch.randn(3, 4)
    target, kw, sd = classifier_spec(
        spec["softmax"], {"terms.softmax.classifier.weight": w}, 4
    )
    assert target == "speechbrain.lobes.models.ECAPA_TDNN.Classifier"
    assert kw == {
        "input_size": 4,
        "lin_blocks": 0,
        "lin_neurons": 4,
        "out_neurons": 3,
    }
    # The cosine classifier gives the cosines of the normalised vectors.
    from speechbrain.lobes.models.ECAPA_TDNN import Classifier

    clf = Classifier(**kw)
    clf.load_state_dict(sd)
    x = torch.randn(2, 1, 4)
    want = torch.nn.functional.normalize(x[:, 0], dim=1) @ (
        torch.nn.functional.normalize(w, dim=1).T
    )
    assert torch.allclose(clf(x)[:, 0], want, atol=1e-6)
    # Weight 0: the classifier was never trained, nothing is exported.
    assert classifier_spec(({"kind": "linear"}, 0.0), {}, 4) is None
    with pytest.raises(ExportError, match="emb_dim"):
        classifier_spec(
            spec["softmax"], {"terms.softmax.classifier.weight": w}, 5
        )


def test_staged_folder_failure(tmp_path):
    target = tmp_path / "m"
    with pytest.raises(RuntimeError):
        with staged_folder(target) as tmp:
            (pathlib.Path(tmp) / "a").write_text("x")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_calibrate_threshold_needs_two_kinds(exported):
    run, model, _, _ = exported
    from dampit.inference.api import load_model

    m = load_model(model)
    rows = (run / "prepared" / "dev.csv").read_text().splitlines()
    header = rows[0].split(",")
    rows = [dict(zip(header, r.split(","))) for r in rows[1:]]
    one = [r for r in rows if r["spk_id"] == rows[0]["spk_id"]]
    with pytest.raises(ExportError, match="2\\+ speakers"):
        calibrate_threshold(m, one, progress=False)
    singles = {}
    for r in rows:
        singles.setdefault(r["spk_id"], r)
    with pytest.raises(ExportError, match="same- and different-speaker"):
        calibrate_threshold(m, list(singles.values()), progress=False)
