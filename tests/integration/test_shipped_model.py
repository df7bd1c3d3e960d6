"""The pretrained model shipped in ``pretrained/dampit-so762``.

It loads offline three ways, and the three give the same scores on real
so762 pairs: SpeechBrain's ``EncoderClassifier.from_hparams`` (cosine of
its embeddings, computed here), dampit's ``load_model`` (``verify_pairs``)
and ``dampit-verify --trials`` (its ``main``: a score file). The pairs are
of its own training speakers, so this is a loading check, not an accuracy
figure (the model card's figures come from speaker k-fold runs). The folder is
small enough for git, and it records how it was made.
"""

import json
import pathlib

import numpy as np
import pytest
import torch
from speechbrain.inference.speaker import EncoderClassifier

from dampit.cli import verify as verify_cli
from dampit.dataio.audio import load_audio
from dampit.dataio.trials import read_scores
from dampit.inference.api import load_model

REPO = pathlib.Path(__file__).resolve().parents[2]
MODEL = REPO / "pretrained" / "dampit-so762"
PAIRS = [  # (label, enrol, test): so762 files, relative to the corpus
    (1, "0001/000010011.flac", "0001/000010035.flac"),
    (1, "0005/000050003.flac", "0005/000050010.flac"),
    (0, "0001/000010011.flac", "0005/000050003.flac"),
    (0, "0006/000060015.flac", "0026/000260001.flac"),
]


@pytest.fixture(scope="module")
def pairs(shared_data):
    root = shared_data / "so762"
    found = {p: (root / p).is_file() for _, e, t in PAIRS for p in (e, t)}
    if not all(found.values()):
        pytest.fail(f"so762 files missing: {found}")
    return root


def test_the_folder_is_small_and_records_how_it_was_made():
    size = sum(f.stat().st_size for f in MODEL.iterdir())
    assert size < 10 * 2**20
    spec = json.loads((MODEL / "dampit_export.json").read_text())
    assert -1 < spec["threshold"] < 1
    made = json.loads((MODEL / "training.json").read_text())
    assert (REPO / made["hparams_file"]).is_file()
    assert made["overrides"]["n_test_speakers"] == 0
    card = (MODEL / "README.md").read_text()
    assert f"{spec['threshold']:.4f}" in card
    assert made["command"] in card


def test_three_loaders_give_the_same_scores(pairs, tmp_path):
    model = load_model(MODEL)
    files = [(pairs / e, pairs / t) for _, e, t in PAIRS]
    dampit_scores, decisions = model.verify_pairs(
        [(str(e), str(t)) for e, t in files], progress=False
    )
    dampit_scores = np.asarray(dampit_scores, dtype=np.float64).reshape(-1)

    sb = EncoderClassifier.from_hparams(
        source=str(MODEL),
        savedir=str(tmp_path / "sb"),
        run_opts={"device": "cpu"},
    )
    assert sb.hparams.threshold == pytest.approx(model.threshold)
    sb_scores = []
    for e, t in files:
        emb = [
            sb.encode_batch(load_audio(str(f), 16000)[None]).reshape(-1)
            for f in (e, t)
        ]
        sb_scores.append(float(torch.nn.functional.cosine_similarity(*emb, 0)))
    np.testing.assert_allclose(dampit_scores, sb_scores, atol=1e-5)

    trials = tmp_path / "trials.txt"
    trials.write_text("".join(f"{y} {e} {t}\n" for y, e, t in PAIRS))
    out = tmp_path / "scores.txt"
    argv = ["--model", str(MODEL), "--trials", str(trials)]
    argv += ["--audio-root", str(pairs), "--out", str(out), "--no-progress"]
    assert verify_cli.main(argv) == 0
    _, _, cli_scores, labels = read_scores(out)
    np.testing.assert_allclose(cli_scores, dampit_scores, atol=1e-5)
    # Its own training speakers: same-speaker pairs score above the others.
    assert min(cli_scores[labels == 1]) > max(cli_scores[labels == 0])
    assert list(np.asarray(decisions).reshape(-1)) == [
        s > model.threshold for s in dampit_scores
    ]
