"""dampit-export --trials: the threshold at the EER of the exported model.

A run of SpeechBrain's speaker recipe (built as
test_export_speechbrain.py builds it) and a dampit run (as test_export.py
builds it) are exported with a labelled trial list of real dspspeech
files (12 files of 2.048 s, 4 speakers, all 66 pairs). The expected
threshold is computed independently: each file read with soundfile and
embedded alone with ``load_model``'s ``encode_batch``, the cosine of each
pair by torch, the threshold of ``compute_eer``.
"""

import itertools
import json
import os
import pathlib
import runpy

import numpy as np
import pytest
import soundfile
import torch

from dampit.cli.export import main
from dampit.inference.api import load_model
from dampit.inference.export import ExportError, export_model
from dampit.metrics.error_rates import compute_eer

HERE = pathlib.Path(__file__).resolve().parent
build_run = runpy.run_path(str(HERE / "test_export.py"))["build_run"]
make_run = runpy.run_path(str(HERE / "test_export_speechbrain.py"))["make_run"]
N_SPEAKERS, N_FILES, SAMPLES = 4, 3, 32768


@pytest.fixture(scope="module")
def pairs(shared_data, tmp_path_factory):
    """(audio root, trial list, [(label, enrol, test)]) of real speech."""
    root = shared_data / "dspspeech"
    names = []
    for spk in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [
            f"{spk.name}/{f.name}"
            for f in sorted(spk.glob("*.wav"))
            if soundfile.info(f).frames == SAMPLES  # no padding in a batch
        ]
        if len(files) >= N_FILES and len(names) < N_SPEAKERS * N_FILES:
            names += files[:N_FILES]
    trials = [
        (int(a.split("/")[0] == b.split("/")[0]), a, b)
        for a, b in itertools.combinations(names, 2)
    ]
    path = tmp_path_factory.mktemp("trials") / "pairs.txt"
    path.write_text("".join(f"{y} {a} {b}\n" for y, a, b in trials))
    return root, path, trials


@pytest.fixture(params=["speechbrain", "dampit"])
def run(request, tmp_path):
    if request.param == "speechbrain":
        return make_run(tmp_path, head=False)[0]
    return build_run(tmp_path)[0]


@torch.no_grad()
def independent_threshold(model_folder, root, trials):
    """(EER, threshold) of the cosines of files embedded one at a time."""
    model = load_model(model_folder)
    emb = {}
    for _, a, b in trials:
        for name in (a, b):
            if name not in emb:
                wav, _ = soundfile.read(root / name, dtype="float32")
                emb[name] = model.encode_batch(torch.from_numpy(wav)[None])
    scores = [
        float(torch.nn.functional.cosine_similarity(emb[a], emb[b], dim=-1))
        for _, a, b in trials
    ]
    labels = np.array([y for y, _, _ in trials])
    return compute_eer(np.array(scores), labels)


def test_threshold_is_the_eer_of_the_models_scores(run, pairs, capsys):
    root, trial_file, trials = pairs
    assert len(trials) == 66 and sum(y for y, _, _ in trials) == 12
    model = run.parent / "model"
    argv = [str(run), str(model), "--trials", str(trial_file)]
    assert main([*argv, "--audio-root", str(root)]) == 0
    eer, want = independent_threshold(model, root, trials)
    spec = json.loads((model / "dampit_export.json").read_text())
    assert spec["threshold"] == pytest.approx(want, abs=1e-5)
    assert spec["threshold"] != 0.4321  # not the dampit run's summary
    assert spec["threshold_source"] == str(trial_file)
    assert load_model(model).threshold == spec["threshold"]
    out = capsys.readouterr().out
    assert f"EER {100 * eer:.2f}% over {len(trials)} trials" in out
    card = (model / "README.md").read_text()
    assert f"- {trial_file}: EER {100 * eer:.2f}%" in card


def _write(text):
    def damage(path):
        path.write_text(text)

    return damage


@pytest.mark.parametrize(
    "damage, extra, match",
    [
        (lambda p: p.unlink(), {}, "pairs.txt: not found"),
        (_write("1 a b c\n"), {}, r"pairs.txt:1: expected 'label enrol"),
        (_write("a b\n"), {}, "pairs.txt: needs target and non-target"),
        (None, {"audio_root": "/nowhere"}, r"pairs.txt:1: .*not found"),
        (None, {"scores": "s.txt"}, "give --scores or --trials, not both"),
    ],
)
def test_bad_trials_are_refused_before_any_work(
    pairs, tmp_path, damage, extra, match
):
    """One line; the run (an empty folder here) is never read."""
    root, trial_file, _ = pairs
    copy = tmp_path / "pairs.txt"
    copy.write_text(trial_file.read_text())
    if damage:
        damage(copy)
    (tmp_path / "run").mkdir()
    kwargs = {"trials": copy, "audio_root": root, **extra}
    with pytest.raises(ExportError, match=match) as err:
        export_model(tmp_path / "run", tmp_path / "model", **kwargs)
    assert "\n" not in str(err.value)
    assert not os.path.exists(tmp_path / "model")


def test_audio_root_needs_trials(pairs, tmp_path, capsys):
    root, _, _ = pairs
    (tmp_path / "run").mkdir()
    argv = [str(tmp_path / "run"), str(tmp_path / "model")]
    assert main([*argv, "--audio-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--audio-root goes with --trials" in err
