"""dampit-export on a run of SpeechBrain's speaker recipe (issue 18, 4).

The run is made as SpeechBrain's recipe makes it: the recipe YAML of
tests/recipes/sb_speaker_recipe.yaml (keys of SpeechBrain's
train_ecapa_tdnn.yaml; stock, or with the template README's entries),
``create_experiment_directory`` and SpeechBrain's ``Checkpointer`` with
``ErrorRate`` metas, ``save/label_encoder.txt``; no verification folder.
"""

import importlib.util
import os
import pathlib

import pytest
import soundfile
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.core import create_experiment_directory
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.classifiers import EncoderClassifier

from dampit.cli.export import main
from dampit.inference.api import load_model
from dampit.inference.export import ExportError, export_model

REPO = pathlib.Path(__file__).resolve().parents[2]
GUIDE = REPO / "templates" / "speaker_verification" / "README.md"
_spec = importlib.util.spec_from_file_location(
    "readme_snippets", REPO / "tests" / "readme_snippets.py"
)
snippets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(snippets)
# Hand-worked: accept score > 0.2 rejects 1 of 2 targets (FRR 1/2) and
# accepts 2 of 3 non-targets (FAR 2/3); SpeechBrain's "closest" EER is
# their mean 7/12 at threshold 0.2.
SCORES = "a b 0 0.1\na c 1 0.2\nb c 0 0.3\nb d 0 0.4\nc d 1 0.5\n"


def make_run(root, head):
    """A trained-looking run: checkpoint A (ErrorRate 0.3), then B (0.5)."""
    text = (REPO / "tests/recipes/sb_speaker_recipe.yaml").read_text()
    if head:
        blocks = snippets.code_blocks(GUIDE.read_text(encoding="utf-8"))
        (entries,) = [c for _, c, _ in blocks if "MetricHeadLoss" in c]
        text = snippets.replace_entries(text, entries)
    yaml_path = root / "train_ecapa_tdnn.yaml"
    yaml_path.write_text(text)
    run = root / "run"
    overrides = {"data_folder": str(root), "output_folder": str(run)}
    hp = load_hyperpyyaml(text, overrides)
    create_experiment_directory(
        str(run), str(yaml_path), overrides, save_env_desc=False
    )
    enc = CategoricalEncoder()
    enc.update_from_iterable([f"spk{i}" for i in range(6)])
    enc.save(str(run / "save" / "label_encoder.txt"))
    states = []
    for error in (0.3, 0.5):
        for module in (hp["embedding_model"], hp["classifier"]):
            for p in module.parameters():
                torch.nn.init.normal_(p, std=0.1)
        states.append(
            {
                k: {n: t.clone() for n, t in m.state_dict().items()}
                for k, m in hp["modules"].items()
            }
        )
        hp["checkpointer"].save_and_keep_only(
            meta={"ErrorRate": error}, min_keys=["ErrorRate"]
        )
    return run, hp, states[0]


@pytest.fixture(params=[True, False], ids=["metric_head", "stock"])
def sb_run(request, tmp_path):
    run, hp, best = make_run(tmp_path, request.param)
    (tmp_path / "scores.txt").write_text(SCORES)
    return run, hp, best, tmp_path / "scores.txt"


def real_wav(shared_data):
    folder = shared_data / "dspspeech" / "15307110252"
    wav, _ = soundfile.read(sorted(folder.glob("*.wav"))[0], dtype="float32")
    return torch.from_numpy(wav)[None]


@torch.no_grad()
def test_export_loads_with_both_loaders(sb_run, shared_data, tmp_path):
    run, hp, best, scores = sb_run
    spec = export_model(run, tmp_path / "model", scores=scores)
    assert spec["threshold"] == pytest.approx(0.2, abs=1e-12)
    assert spec["modules"]["classifier"]["class"] == (
        "speechbrain.lobes.models.ECAPA_TDNN.Classifier"
    )
    assert "EER 58.33%" in (tmp_path / "model" / "README.md").read_text()
    # The run's own modules with the weights of the best checkpoint.
    for name in ("embedding_model", "classifier"):
        hp[name].load_state_dict(best[name])
        hp[name].eval()
    wav = real_wav(shared_data)
    lens = torch.ones(1)
    feats = hp["mean_var_norm"](hp["compute_features"](wav), lens)
    want = hp["embedding_model"](feats, lens)
    logits = hp["classifier"](want)
    model = load_model(tmp_path / "model")
    assert model.threshold == spec["threshold"]
    torch.testing.assert_close(model.encode_batch(wav), want)
    out, _, index, labels = model.classify_batch(wav)
    torch.testing.assert_close(out, logits.squeeze(1))
    assert labels == [f"spk{int(index)}"]
    sb = EncoderClassifier.from_hparams(
        source=str(tmp_path / "model"), savedir=str(tmp_path / "sb")
    )
    torch.testing.assert_close(sb.encode_batch(wav), want)


def _no_error_rate(run):
    for meta in run.glob("save/CKPT+*/CKPT.yaml"):
        meta.write_text(meta.read_text().replace("ErrorRate", "EER"))


def _global_norm(run):
    path = run / "hyperparams.yaml"
    path.write_text(path.read_text().replace("sentence", "global"))


@pytest.mark.parametrize(
    "damage, scores, match",
    [
        (None, None, "summary.json not found: .* or give --scores"),
        (None, "a b 0.5\n", "scores.txt: needs target and non-target labels"),
        (None, "a b 1 0.5\n", "scores.txt: needs target and non-target"),
        (_no_error_rate, SCORES, "save: no end-of-epoch checkpoint records"),
        (_global_norm, SCORES, "mean_var_norm norm_type 'global'"),
    ],
)
def test_refusals_are_one_line(sb_run, tmp_path, damage, scores, match):
    run, _, _, score_file = sb_run
    if damage:
        damage(run)
    if scores is not None:
        score_file.write_text(scores)
    with pytest.raises(ExportError, match=match) as err:
        export_model(run, tmp_path / "model", scores=scores and score_file)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "model").exists()


def test_cli(sb_run, tmp_path, capsys):
    run, _, _, scores = sb_run
    target = tmp_path / "model"
    assert main([str(run), str(target)]) == 2
    assert "or give --scores" in capsys.readouterr().err
    assert main([str(run), str(target), "--scores", str(scores)]) == 0
    assert f"threshold 0.2000, {scores}" in capsys.readouterr().out
    assert sorted(os.listdir(target))[:2] == ["README.md", "classifier.ckpt"]
