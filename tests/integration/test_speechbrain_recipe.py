"""SpeechBrain's speaker recipe with dampit's losses, as documented.

A copy of the structure of SpeechBrain's speaker recipe
(tests/recipes/sb_speaker_recipe.py / .yaml) gets exactly the YAML entries
and the Python diff of templates/speaker_verification/README.md (step 2
and 3), then trains on real speech. The documented diff changes at most 5
Python lines, and the valid ErrorRate that the recipe reports and keeps
checkpoints by must fall (the classifier's error rate, not a constant).
``dampit-export`` then exports that checkpoint, its threshold from a
labelled score file (``--scores``) and from real trial audio (``--trials``).
"""

import importlib.util
import itertools
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from dampit.cli.export import main as export_main
from dampit.inference.api import load_model
from dampit.metrics.error_rates import compute_eer

REPO = pathlib.Path(__file__).resolve().parents[2]
RECIPE = REPO / "tests" / "recipes" / "sb_speaker_recipe"
GUIDE = REPO / "templates" / "speaker_verification" / "README.md"
_spec = importlib.util.spec_from_file_location(
    "readme_snippets", REPO / "tests" / "readme_snippets.py"
)
snippets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(snippets)
EPOCHS = 6  # in 6 runs, the lowest valid error by epoch 6: 0.23 to 0.42


def documented_changes():
    """The guide's YAML entries (step 2) and Python diff (step 3)."""
    blocks = snippets.code_blocks(GUIDE.read_text(encoding="utf-8"))
    (entries,) = [c for lang, c, _ in blocks if "MetricHeadLoss" in c]
    (diff,) = [c for lang, c, _ in blocks if lang == "diff"]
    return entries, diff


def test_documented_python_change_is_at_most_5_lines():
    _, diff = documented_changes()
    changed = snippets.changed_lines(diff)
    assert 0 < len(changed) <= 5, changed


def test_documented_changes_train_and_valid_error_falls(shared_data, tmp_path):
    entries, diff = documented_changes()
    script = tmp_path / "train_speaker_embeddings.py"
    stock = RECIPE.with_suffix(".py").read_text(encoding="utf-8")
    script.write_text(snippets.apply_diff(stock, diff), encoding="utf-8")
    hparams = tmp_path / "train_ecapa_tdnn.yaml"
    stock_yaml = RECIPE.with_suffix(".yaml").read_text(encoding="utf-8")
    hparams.write_text(snippets.replace_entries(stock_yaml, entries))
    run = tmp_path / "run"
    cmd = [sys.executable, str(script), str(hparams)]
    cmd += [f"--data_folder={shared_data / 'dspspeech'}"]
    cmd += [f"--output_folder={run}", f"--number_of_epochs={EPOCHS}"]
    cmd += ["--P=6", "--K=2", "--noprogressbar"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    saved = (run / "hyperparams.yaml").read_text(encoding="utf-8")
    assert "dampit.losses.metric_head.MetricHeadLoss" in saved
    assert "dampit.dataio.sampler.PKSampler.from_dataset" in saved
    log = (run / "train_log.txt").read_text(encoding="utf-8")
    errors = [float(x) for x in re.findall(r"valid ErrorRate: (\S+)", log)]
    print("valid ErrorRate per epoch:", errors)
    assert len(errors) == EPOCHS, log
    # 6 speakers: chance is 5/6. The error must move and fall well below.
    assert max(errors) - min(errors) > 0.05, errors
    assert min(errors) < 0.6 and min(errors) < errors[0], errors
    # The checkpointer kept the checkpoint of the lowest ErrorRate.
    metas = [
        yaml.safe_load(p.read_text())
        for p in (run / "save").glob("CKPT+*/CKPT.yaml")
    ]
    assert min(m["ErrorRate"] for m in metas) == pytest.approx(
        min(errors), rel=0.01
    )
    # dampit-export takes that checkpoint; without --scores it refuses.
    model = tmp_path / "model"
    assert export_main([str(run), str(model)]) == 2
    scores = tmp_path / "scores.txt"
    scores.write_text("a b 1 0.9\na c 0 0.1\nb c 0 0.2\nc d 1 0.8\n")
    assert export_main([str(run), str(model), "--scores", str(scores)]) == 0
    spec = json.loads((model / "dampit_export.json").read_text())
    (ckpt,) = spec["checkpoints"]
    meta = yaml.safe_load(pathlib.Path(ckpt, "CKPT.yaml").read_text())
    assert meta["ErrorRate"] == min(m["ErrorRate"] for m in metas)
    assert load_model(model).classify_batch(torch.zeros(1, 16000))[3][0]
    # --trials: the threshold at the EER of the exported model's cosine
    # scores of real pairs (no SpeechBrain scoring script), recomputed
    # here with the files embedded one at a time.
    root = shared_data / "dspspeech"
    pairs, trials = real_pairs(root, tmp_path / "pairs.txt")
    out = tmp_path / "model_trials"
    argv = [str(run), str(out), "--trials", str(pairs), "--audio-root"]
    assert export_main([*argv, str(root)]) == 0
    model = load_model(out)
    with torch.no_grad():
        emb = {
            name: model.encode_batch(
                torch.from_numpy(sf.read(root / name, dtype="float32")[0])[None]
            )
            for name in {n for _, a, b in trials for n in (a, b)}
        }
    scores = [
        float(torch.nn.functional.cosine_similarity(emb[a], emb[b], dim=-1))
        for _, a, b in trials
    ]
    labels = np.array([y for y, _, _ in trials])
    _, want = compute_eer(np.array(scores), labels)
    assert model.threshold == pytest.approx(want, abs=1e-5)


def real_pairs(root, path, n_speakers=3, n_files=3, samples=32768):
    """A labelled trial list of every pair of a few dspspeech files of one
    length (a padded batch embeds them as one at a time)."""
    names = []
    for spk in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [
            f"{spk.name}/{f.name}"
            for f in sorted(spk.glob("*.wav"))
            if sf.info(f).frames == samples
        ]
        if len(files) >= n_files and len(names) < n_speakers * n_files:
            names += files[:n_files]
    trials = [
        (int(a.split("/")[0] == b.split("/")[0]), a, b)
        for a, b in itertools.combinations(names, 2)
    ]
    path.write_text("".join(f"{y} {a} {b}\n" for y, a, b in trials))
    return path, trials
