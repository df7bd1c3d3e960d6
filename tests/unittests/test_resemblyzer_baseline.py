"""The off-the-shelf baseline's scoring, with a dampit model as the encoder.

``score_fold`` embeds a prepared fold's test utterances with any
``embed_file(path)`` and writes the recipe's verification layout. Here the
encoder is a (random-weight) dampit model folder on real dspspeech audio;
the scores are recomputed with torch's cosine similarity and the EER with
a loop over thresholds, and ``run_ablation``'s reader pools the run.
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
import torch

from dampit.dataio.prepare_folder import prepare_folder
from dampit.dataio.trials import read_scores, read_trials
from dampit.inference.api import load_model
from dampit.metrics.error_rates import compute_eer

REPO = pathlib.Path(__file__).resolve().parents[2]
ABLATION = REPO / "recipes" / "VoxCeleb" / "ablation"


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


model_folder = _load(REPO / "tests" / "model_folder.py")


def test_score_fold_writes_what_the_ablation_reads(tmp_path, shared_data):
    data = tmp_path / "data"
    for s in sorted((shared_data / "dspspeech").iterdir())[:6]:
        (data / s.name).mkdir(parents=True)
        for f in sorted(s.glob("*.wav"))[:6]:
            (data / s.name / f.name).symlink_to(f)
    prepared = tmp_path / "run" / "prepared"
    prepare_folder(data, prepared, n_folds=3, fold=1)
    model = load_model(model_folder.write_demo_model(tmp_path, emb_dim=8))

    def embed_file(path):
        return model.encode_batch(model.load_audio(path)[None]).reshape(-1)

    baseline = _load(ABLATION / "resemblyzer_baseline.py")
    report = baseline.score_fold(
        prepared, embed_file, tmp_path / "run", progress=False
    )
    trials = read_trials(prepared / "trials.txt")
    wavs = dict(
        line.split(",")[0:3:2]
        for line in (prepared / "test.csv").read_text().splitlines()[1:]
    )
    names = {u for _, e, t in trials for u in (e, t)}
    emb = {u: embed_file(wavs[u]) for u in names}
    want = [
        float(torch.nn.functional.cosine_similarity(emb[e], emb[t], dim=0))
        for _, e, t in trials
    ]
    enrol, test, got, labels = read_scores(report["scores_txt"])
    assert [(e, t) for _, e, t in trials] == list(zip(enrol, test))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert report["eer"] == pytest.approx(compute_eer(got, labels)[0], abs=1e-9)
    summary = json.loads(
        (tmp_path / "run/verification/summary.json").read_text()
    )
    assert set(summary) == {"trials/full_cosine"}
    report_tool = _load(ABLATION / "ablation_report.py")
    run = report_tool.read_run(tmp_path / "run", "resemblyzer")
    assert run["full_cosine"] == report["scores_txt"]
