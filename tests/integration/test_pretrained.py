"""A real recipe run, exported, loaded offline in a fresh Python process.

The recipe (``recipes/VoxCeleb/train.py`` with ``hparams/small.yaml``:
speed-perturbed copies train as new speakers) trains a thin network for
two batches on 7 dspspeech speakers and verifies its test trials;
``dampit-export`` turns the run into a model folder. Then:

- the label encoder and the saved YAML count 3 classes per training
  speaker;
- a fresh Python process, with ``HF_HUB_OFFLINE=1`` and every socket
  connection refused, loads a *copy* of the folder (somewhere else, from
  another working directory) with ``EncoderClassifier.from_hparams`` and
  embeds real files one at a time and as a padded batch, and runs
  ``SpeakerRecognition.verify_files``;
- this process computes the training-side embeddings with the recipe's own
  ``MultiMetricBrain.compute_embeddings`` and the checkpoint verification
  tested (``verification/checkpoints.txt``);
- they agree within 1e-5, and so does the padded batch with the files one
  at a time (with frame-exact relative lengths; see
  dampit.inference.extract.pad_batch);
- the whole-utterance cosine EER of the loaded model over the run's own
  trials, recomputed with SpeechBrain's ``EER``, equals the recipe's
  verification (``full_cosine``).
"""

import contextlib
import csv
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.dataio.dataio import read_audio
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.speaker import EncoderClassifier

from dampit.cli.export import main as export_main
from dampit.dataio.trials import read_trials
from dampit.metrics.error_rates import compute_eer

REPO = pathlib.Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "VoxCeleb"
N_SPK, N_UTT = 7, 12

pytestmark = pytest.mark.slow


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def _run(cmd, cwd=REPO, check=True):
    res = subprocess.run(
        cmd, cwd=cwd, env=_env(), capture_output=True, text=True
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n"
            f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return res


@pytest.fixture(scope="module")
def run_and_model(tmp_path_factory, shared_data):
    """Train small.yaml briefly, export it; (run, model) folders."""
    root = tmp_path_factory.mktemp("pretrained")
    data = root / "data"
    spk = sorted(p for p in (shared_data / "dspspeech").iterdir() if p.is_dir())
    for s in spk[:N_SPK]:
        (data / s.name).mkdir(parents=True)
        for f in sorted(s.glob("*.wav"))[:N_UTT]:
            (data / s.name / f.name).symlink_to(f)
    run = root / "run"
    sys.path.insert(0, str(RECIPE))
    try:
        import train
    finally:
        sys.path.remove(str(RECIPE))
    train.main(  # in this process; the fresh process only loads the model
        [
            str(RECIPE / "hparams" / "small.yaml"),
            f"--data_folder={data}",
            f"--output_folder={run}",
            "--n_test_speakers=3",
            "--base_width=8",
            "--emb_dim=64",
            "--P=4",
            "--number_of_epochs=1",
            "--batches_per_epoch=2",
            "--n_test_crops=1",
            "--valid_pairs=200",
            "--noprogressbar",
        ]
    )
    model = root / "model"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = export_main([str(run), str(model), "--torchscript"])
    assert code == 0 and "exported" in printed.getvalue()
    return run, model


def test_speed_speakers_are_classes(run_and_model):
    """4 training speakers x 3 speeds = 12 classes, in the label encoder
    and in the YAML the modules were built from (saved by SpeechBrain)."""
    run, _ = run_and_model
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


def test_loaded_model_scores_like_the_recipe(run_and_model):
    """SpeechBrain's EER of the loaded model's cosine scores over the
    run's trials equals the recipe's own verification."""
    run, model = run_and_model
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
    scores = [float(emb[a] @ emb[b]) for _, a, b in trials]
    labels = [label for label, _, _ in trials]
    eer, _ = compute_eer(scores, labels)
    summary = json.loads((run / "verification" / "summary.json").read_text())
    ref = summary["trials/full_cosine"]
    assert ref["n_trials"] == len(trials) > 0
    # Scores agree to float32 rounding; an EER moves only if two scores
    # that tie within it swap, at most 1 trial of n_target.
    assert float(eer) == pytest.approx(ref["eer"], abs=1.0 / sum(labels))


FRESH = textwrap.dedent(
    """
    import json, os, socket, sys, tempfile
    def _no_network(*args, **kwargs):
        raise RuntimeError("network access attempted")
    socket.socket.connect = _no_network
    socket.create_connection = _no_network
    import numpy as np, soundfile as sf, torch
    from speechbrain.inference.classifiers import EncoderClassifier
    from speechbrain.inference.speaker import SpeakerRecognition
    source, a, b, out = sys.argv[1:5]
    os.chdir(tempfile.mkdtemp())
    enc = EncoderClassifier.from_hparams(source=source, savedir="sb1")
    wavs = [torch.from_numpy(sf.read(p, dtype="float32")[0]) for p in (a, b)]
    single = [enc.encode_batch(w[None])[0, 0].numpy() for w in wavs]
    n = [len(w) for w in wavs]
    big = max(n)
    batch = torch.zeros(2, big)
    for k, w in enumerate(wavs):
        batch[k, : len(w)] = w
    hop = 160
    frames = torch.tensor([(1 + m // hop) / (1 + big // hop) for m in n])
    samples = torch.tensor([m / big for m in n])
    pad_frames = enc.encode_batch(batch, frames)[:, 0].numpy()
    pad_samples = enc.encode_batch(batch, samples)[:, 0].numpy()
    sr = SpeakerRecognition.from_hparams(source=source, savedir="sb2")
    score, decision = sr.verify_files(a, b)
    np.savez(out, single=np.stack(single), pad_frames=pad_frames,
             pad_samples=pad_samples, frames=frames.numpy(),
             score=float(score.reshape(-1)[0]),
             decision=bool(decision.reshape(-1)[0]),
             threshold=float(sr.hparams.threshold))
    """
)


@pytest.fixture(scope="module")
def two_files(run_and_model):
    """An enrolment file and a test file of different lengths."""
    run, _ = run_and_model
    rows = (run / "prepared" / "test.csv").read_text().splitlines()[1:]
    paths = [r.split(",")[2] for r in rows]
    lengths = {p: sf.info(p).frames for p in paths}
    a = paths[0]
    b = next(p for p in paths[1:] if lengths[p] != lengths[a])
    return a, b


@pytest.fixture(scope="module")
def fresh(run_and_model, two_files, tmp_path_factory):
    """Run FRESH in a new process on a copy of the model folder."""
    _, model = run_and_model
    where = tmp_path_factory.mktemp("elsewhere")
    copy = where / "copied_model"
    shutil.copytree(model, copy)
    out = where / "out.npz"
    script = where / "fresh.py"
    script.write_text(FRESH)
    _run([sys.executable, str(script), str(copy), *two_files, str(out)])
    return dict(np.load(out))


@pytest.fixture(scope="module")
def brain_embed(run_and_model):
    """The recipe's MultiMetricBrain.compute_embeddings, tested weights."""
    from hyperpyyaml import load_hyperpyyaml

    run, _ = run_and_model
    sys.path.insert(0, str(RECIPE))
    try:
        from train import MultiMetricBrain
    finally:
        sys.path.remove(str(RECIPE))
    with open(run / "hyperparams.yaml", encoding="utf-8") as f:
        hp = load_hyperpyyaml(f)
    brain = MultiMetricBrain(
        modules=hp["modules"], hparams=hp, run_opts={"device": "cpu"}
    )
    (tested,) = (run / "verification" / "checkpoints.txt").read_text().split()
    state = torch.load(
        os.path.join(tested, "embedding_model.ckpt"),
        map_location="cpu",
        weights_only=True,
    )
    brain.modules.embedding_model.load_state_dict(state)
    brain.modules.eval()

    @torch.no_grad()
    def embed(wavs, lens):
        return brain.compute_embeddings(wavs, lens)[:, 0].numpy()

    return embed


def _tol(x):
    return 1e-5 * max(1.0, float(np.abs(x).max()))


def test_fresh_process_matches_training_side(fresh, two_files, brain_embed):
    for k, path in enumerate(two_files):
        wav = torch.from_numpy(sf.read(path, dtype="float32")[0])
        want = brain_embed(wav[None], torch.ones(1))[0]
        assert np.abs(fresh["single"][k] - want).max() <= _tol(want)


def test_padded_batch_equals_one_at_a_time(fresh, two_files, brain_embed):
    # Frame-exact relative lengths: the same embeddings as one by one.
    assert np.abs(fresh["pad_frames"] - fresh["single"]).max() <= _tol(
        fresh["single"]
    )
    # The training side gives the same padded-batch embeddings.
    wavs = [torch.from_numpy(sf.read(p, dtype="float32")[0]) for p in two_files]
    batch = torch.zeros(2, max(len(w) for w in wavs))
    for k, w in enumerate(wavs):
        batch[k, : len(w)] = w
    want = brain_embed(batch, torch.from_numpy(fresh["frames"]))
    assert np.abs(fresh["pad_frames"] - want).max() <= _tol(want)
    # Sample-relative lengths (n / N) can miss or add one frame of the
    # shorter file: close, but not guaranteed to 1e-5.
    a, b = fresh["pad_samples"][1], fresh["single"][1]
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos > 0.99


def test_verify_files_and_threshold(fresh, run_and_model):
    single = fresh["single"]
    cos = float(
        single[0]
        @ single[1]
        / np.linalg.norm(single[0])
        / np.linalg.norm(single[1])
    )
    assert float(fresh["score"]) == pytest.approx(cos, abs=1e-5)
    assert bool(fresh["decision"]) == (cos > 0.25)  # SpeechBrain's default
    run, model = run_and_model
    meta = json.loads((model / "dampit_export.json").read_text())
    summary = json.loads((run / "verification" / "summary.json").read_text())
    want = summary["trials/full_cosine"]["eer_threshold"]
    assert float(fresh["threshold"]) == meta["threshold"] == want
    assert meta["threshold_source"].endswith("trials/full_cosine")


def test_model_card_reports_the_run(run_and_model):
    run, model = run_and_model
    summary = json.loads((run / "verification" / "summary.json").read_text())
    card = (model / "README.md").read_text()
    for key, res in summary.items():
        assert f"- {key}: EER {100 * res['eer']:.2f}%" in card


def test_torchscript_matches(run_and_model, two_files, brain_embed):
    _, model = run_and_model
    ts = torch.jit.load(str(model / "embedding_model.ts"))
    for path in two_files:
        wav = torch.from_numpy(sf.read(path, dtype="float32")[0])
        with torch.no_grad():
            got = ts(wav[None], torch.ones(1)).numpy()[0]
        want = brain_embed(wav[None], torch.ones(1))[0]
        assert np.abs(got - want).max() <= _tol(want)


def test_check_pretrained(run_and_model, tmp_path, capsys):
    """The quickstart's last step: the accuracy over all held-out trials at
    the stored threshold is 1 - EER; exit status from crafted summaries."""
    from dampit.cli.check_pretrained import main
    from dampit.inference.check_pretrained import tolerance

    run, model = run_and_model
    assert main([str(model), str(run)]) == 0
    out = capsys.readouterr().out
    assert "loaded with SpeakerRecognition.from_hparams" in out
    assert out.count("-speaker trial ") == 10
    # The accuracy printed is the run's own score file decided at the
    # exported threshold, within the stated tolerance of 1 - EER.
    summary = json.loads((run / "verification" / "summary.json").read_text())
    eer = summary["trials/full_cosine"]["eer"]
    meta = json.loads((model / "dampit_export.json").read_text())
    rows = [line.split() for line in (run / "prepared" / "trials.txt").open()]
    n_tar = sum(r[0] == "1" for r in rows)
    printed = float(out.split("accuracy over all")[1].split()[2]) / 100
    assert abs(printed - (1 - eer)) <= tolerance(n_tar, len(rows) - n_tar)
    assert main([str(model), str(run)]) == 0
    assert capsys.readouterr().out == out  # the sample is seeded
    assert meta["threshold"] < 1
    # Crafted: 20 self-pairs (score 1, above any threshold < 1) labelled
    # same and 20 labelled different: accuracy exactly 0.5, tolerance
    # 2 / 20 + 0.01. A copy of the run's small files with a crafted EER.
    copy = tmp_path / "run"
    for name in ("hyperparams.yaml", "prepared/test.csv"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run / name, copy / name)
    (copy / "verification").mkdir()
    ids = [
        r.split(",")[0]
        for r in (run / "prepared" / "test.csv").read_text().splitlines()[1:]
    ]
    crafted = tmp_path / "self.txt"
    with crafted.open("w") as f:
        for k in range(20):
            u = ids[k % len(ids)]
            f.write(f"1 {u} {u}\n0 {u} {u}\n")
    cmd = [str(model), str(copy), "--trials", str(crafted)]
    for crafted_eer, code in ((0.45, 0), (0.05, 1)):
        (copy / "verification" / "summary.json").write_text(
            json.dumps({"trials/full_cosine": {"eer": crafted_eer}})
        )
        assert main(cmd) == code
        assert "accuracy over all 40 trials 50.00 %" in capsys.readouterr().out
    one_kind = tmp_path / "one_kind.txt"
    one_kind.write_text(f"1 {ids[0]} {ids[1]}\n")
    assert main([*cmd[:2], "--trials", str(one_kind)]) == 2
    (copy / "verification" / "summary.json").write_text("{}")
    assert main(cmd) == 2
