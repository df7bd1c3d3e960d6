"""Fine-tuning from a model folder, and a run that trains on every speaker.

1. ``mini.yaml`` with ``n_test_speakers=0`` trains on all 6 speakers of a
   small dspspeech tree: no trials, no verification summary, but
   ``verification/checkpoints.txt`` names the tested weights, and
   ``dampit-export --scores`` exports it with the EER threshold of a
   labelled score file (``compute_eer``'s threshold).
2. ``--init_from=<that model folder>`` on 6 other speakers with no
   training epoch: the weights the recipe tests are the model folder's, so
   the recipe's stored test embeddings equal ``load_model``'s embeddings of
   the same files.
3. A model folder whose network is not the YAML's is refused in one line.

The recipe runs in this process (train.py's ``main``).
"""

import contextlib
import importlib.util
import io
import os
import pathlib

import numpy as np
import pytest
import torch
from speechbrain.dataio.dataio import load_data_csv

from dampit.cli.export import main as export_main
from dampit.inference.api import load_model
from dampit.inference.embedding_store import EmbeddingStore
from dampit.metrics.error_rates import compute_eer
from dampit.training.run_setup import RecipeError

REPO = pathlib.Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "VoxCeleb"
MINI = RECIPE / "hparams" / "mini.yaml"
_spec = importlib.util.spec_from_file_location(
    "finetune_recipe_train", RECIPE / "train.py"
)
train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train)

pytestmark = pytest.mark.slow


def _tree(root, speakers, n_utts=6):
    for s in speakers:
        (root / s.name).mkdir(parents=True)
        for f in sorted(s.glob("*.wav"))[:n_utts]:
            (root / s.name / f.name).symlink_to(f)
    return root


def _train(data, out, *extra):
    """train.py's ``main`` (in this process) on mini.yaml, small."""
    train.main(
        [
            str(MINI),
            f"--data_folder={data}",
            f"--output_folder={out}",
            "--P=4",
            "--batches_per_epoch=2",
            "--valid_pairs=50",
            "--n_test_crops=1",
            "--average_checkpoints=1",
            "--noprogressbar",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("finetune")
    speakers = sorted(p for p in (shared_data / "dspspeech").iterdir())
    speakers = [p for p in speakers if p.is_dir()]
    data = _tree(tmp / "data", speakers[:6])
    run, model = tmp / "run", tmp / "model"
    _train(data, run, "--n_test_speakers=0", "--number_of_epochs=1")
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], 20)
    scores = np.concatenate([rng.normal(0.6, 0.2, 20), rng.normal(0, 0.2, 20)])
    score_file = tmp / "scores.txt"
    score_file.write_text(
        "".join(
            f"e{k} t{k} {y} {float(s)!r}\n"
            for k, (y, s) in enumerate(zip(labels, scores))
        )
    )
    with contextlib.redirect_stdout(io.StringIO()):
        code = export_main([str(run), str(model), f"--scores={score_file}"])
    assert code == 0
    return dict(
        tmp=tmp,
        run=run,
        model=model,
        speakers=speakers,
        threshold=compute_eer(scores, labels)[1],
    )


def test_every_speaker_trains_and_exports(shipped):
    run = shipped["run"]
    log = (run / "log.txt").read_text()
    assert "nothing to verify" in log
    assert not (run / "verification" / "summary.json").exists()
    tested = (run / "verification" / "checkpoints.txt").read_text().split()
    assert len(tested) == 1 and os.path.isdir(tested[0])
    rows = load_data_csv(str(run / "prepared" / "train.csv"))
    assert len({r["spk_id"] for r in rows.values()}) == 6
    model = load_model(shipped["model"])
    assert model.threshold == pytest.approx(shipped["threshold"], abs=1e-12)


def test_finetuning_starts_from_the_model_folder(shipped):
    tmp = shipped["tmp"]
    data = _tree(tmp / "data2", shipped["speakers"][6:12])
    run = tmp / "run2"
    init = f"--init_from={shipped['model']}"
    _train(data, run, init, "--number_of_epochs=0", "--n_test_speakers=2")
    assert "no checkpoint found" in (run / "log.txt").read_text()
    store = EmbeddingStore(run / "verification" / "embeddings_full")
    rows = load_data_csv(str(run / "prepared" / "test.csv"))
    test = {i: r["wav"] for i, r in rows.items()}
    ids = sorted(test)
    model = load_model(shipped["model"])
    _, emb = model.embed_files([test[i] for i in ids], progress=False)
    got = np.stack([store[i] for i in ids])
    want = torch.as_tensor(emb).reshape(len(ids), -1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_different_network_is_refused_in_one_line(shipped):
    tmp = shipped["tmp"]
    run = tmp / "run3"
    init = f"--init_from={shipped['model']}"
    extra = ["--base_width=8", "--number_of_epochs=1", "--n_test_speakers=0"]
    with pytest.raises(RecipeError) as err:
        _train(tmp / "data", run, init, *extra)
    message = str(err.value)  # train.py prints it alone: run_script
    assert message.startswith(f"init_from={shipped['model']}: ")
    assert "architecture" in message and "\n" not in message
