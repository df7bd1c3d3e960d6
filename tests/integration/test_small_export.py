"""``hparams/small.yaml`` (speed speakers: 3 classes per speaker, counted
in ``n_speakers``) trained briefly, exported with ``dampit-export`` and
loaded with SpeechBrain's ``EncoderClassifier.from_hparams``: its
whole-utterance cosine EER over the run's own trials equals the recipe's
verification (``full_cosine``).

The EER is recomputed here from the loaded model's embeddings and the
trials file with SpeechBrain's ``EER``, independently of dampit's scoring.
"""

import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch
from speechbrain.dataio.dataio import read_audio
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.speaker import EncoderClassifier
from speechbrain.utils.metric_stats import EER

from dampit.dataio.trials import read_trials

REPO = pathlib.Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "VoxCeleb"

pytestmark = pytest.mark.slow


def _run(cmd):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res


def test_small_yaml_export_scores_like_the_recipe(tmp_path, shared_data):
    data = tmp_path / "data"
    speakers = sorted(p for p in (shared_data / "dspspeech").iterdir())
    for s in [p for p in speakers if p.is_dir()][:7]:
        (data / s.name).mkdir(parents=True)
        for f in sorted(s.glob("*.wav"))[:12]:
            (data / s.name / f.name).symlink_to(f)
    run, model = tmp_path / "run", tmp_path / "model"
    _run(
        [sys.executable, str(RECIPE / "train.py")]
        + [str(RECIPE / "hparams" / "small.yaml"), f"--data_folder={data}"]
        + [f"--output_folder={run}", "--n_test_speakers=3", "--P=4"]
        + ["--number_of_epochs=1", "--batches_per_epoch=2"]
        + ["--n_test_crops=1", "--valid_pairs=200", "--noprogressbar"]
    )
    # 4 training speakers x 3 speeds = 12 classes, in the label encoder
    # and in the YAML the modules were built from (saved by SpeechBrain).
    labels = CategoricalEncoder()
    labels.load(run / "save" / "label_encoder.txt")
    speakers = set(labels.lab2ind)
    plain = {s for s in speakers if "@" not in s}
    assert len(plain) == 4 and speakers == {
        f"{s}{t}" for s in plain for t in ("", "@sp90", "@sp110")
    }
    saved = (run / "hyperparams.yaml").read_text()
    assert re.findall(r"n_classes: (\d+)", saved) == ["12"]
    assert re.search(r"^n_speakers: 12\b", saved, re.M)
    cmd = [sys.executable, "-m", "dampit.inference.export", str(run)]
    _run(cmd + [str(model)])
    enc = EncoderClassifier.from_hparams(
        source=str(model), savedir=str(model), run_opts={"device": "cpu"}
    )
    with open(run / "prepared" / "test.csv", encoding="utf-8") as f:
        wavs = {r["ID"]: r["wav"] for r in csv.DictReader(f)}
    with torch.no_grad():
        emb = {
            u: torch.nn.functional.normalize(
                enc.encode_batch(read_audio(p)[None]).reshape(-1), dim=0
            )
            for u, p in wavs.items()
        }
    trials = read_trials(run / "prepared" / "trials.txt", known_ids=wavs)
    scores = {1: [], 0: []}
    for label, a, b in trials:
        scores[label].append(float(emb[a] @ emb[b]))
    eer, _ = EER(torch.tensor(scores[1]), torch.tensor(scores[0]))
    summary = json.loads((run / "verification" / "summary.json").read_text())
    ref = summary["trials/full_cosine"]
    assert ref["n_trials"] == len(trials) > 0
    # Scores agree to float32 rounding; an EER moves only if two scores
    # that tie within it swap, at most 1 trial of n_target.
    assert float(eer) == pytest.approx(ref["eer"], abs=1.0 / len(scores[1]))
