"""dampit-calibrate, dampit-enroll and dampit-identify on real speech
(dspspeech), run in-process through their ``main``: a folder of labelled
recordings calibrated at a false-accept rate, ten speakers enrolled, files
identified, a stranger "unknown". Expected values come from SpeechBrain's
own ``SpeakerRecognition`` loading the same model folder (one file at a
time), cosines, thresholds and cross-validation written here as loops."""

import functools
import json
import os
import pathlib
import runpy
import shutil

import numpy as np
import pytest
import torch
from speechbrain.inference.speaker import SpeakerRecognition

from dampit.cli import calibrate as calibrate_cli
from dampit.cli import enroll as enroll_cli
from dampit.cli import identify as identify_cli
from dampit.cli import verify as verify_cli
from dampit.inference.api import load_model
from dampit.inference.calibration import speaker_folds
from dampit.inference.profiles import Profiles

MODELS = pathlib.Path(__file__).resolve().parents[1] / "model_folder.py"
write_demo_model = runpy.run_path(str(MODELS))["write_demo_model"]
TOL = 1e-4


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    """``cal/<spk>/`` 4 files of 10 speakers with every pair in
    ``cal/pairs.txt``; ``enrol/<spk>/`` 3 files of 10 other speakers;
    ``probe/`` a 4th file of each and one of a stranger."""
    root = tmp_path_factory.mktemp("corpus")
    data = shared_data / "dspspeech"
    spk = sorted(p.name for p in data.iterdir() if p.is_dir())
    files = {s: sorted((data / s).glob("*.wav")) for s in spk}
    names = []
    for s in spk[10:20]:
        for f in files[s][:4]:
            (root / "cal" / s).mkdir(parents=True, exist_ok=True)
            (root / "cal" / s / f.name).symlink_to(f)
            names.append(f"{s}/{f.name}")
    lines = [
        f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}\n"
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    ]
    (root / "cal" / "pairs.txt").write_text("".join(lines))
    (root / "probe").mkdir()
    for s in spk[:10]:
        (root / "enrol" / s).mkdir(parents=True)
        for f in files[s][:3]:
            (root / "enrol" / s / f.name).symlink_to(f)
        (root / "probe" / f"{s}.wav").symlink_to(files[s][3])
    (root / "probe" / "stranger.wav").symlink_to(files[spk[20]][0])
    return root


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m")
    return write_demo_model(folder, features="fbank", default_init=True)


@pytest.fixture()
def model(base_model, tmp_path):
    """A fresh copy: calibration changes the folder."""
    return shutil.copytree(base_model, tmp_path / "model")


@pytest.fixture(scope="module")
def ref(base_model, tmp_path_factory):
    """Embedding of a file by SpeechBrain, one file at a time."""
    sb = SpeakerRecognition.from_hparams(
        source=base_model, savedir=str(tmp_path_factory.mktemp("sb"))
    )

    @functools.cache
    def embed(path):
        with torch.no_grad():
            wav = sb.load_audio(str(path))[None]
            return sb.encode_batch(wav)[0, 0].double().numpy()

    return embed


def cosine(a, b):
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def ref_trials(corpus, ref):
    rows = [line.split() for line in open(corpus / "cal" / "pairs.txt")]
    emb = {u: ref(corpus / "cal" / u) for _, a, b in rows for u in (a, b)}
    labels = np.array([int(r[0]) for r in rows])
    scores = np.array([cosine(emb[a], emb[b]) for _, a, b in rows])
    spk = [(a.split("/")[0], b.split("/")[0]) for _, a, b in rows]
    return scores, labels, spk


def far_threshold(scores, labels, rate):
    """The lowest score whose false-accept rate is at most ``rate``."""
    non = scores[labels == 0]
    return min(t for t in sorted(set(scores)) if (non > t).mean() <= rate)


def run(cli, args, capsys):
    code = cli.main([*map(str, args), "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_calibrate_at_a_false_accept_rate(model, corpus, ref, capsys):
    report = corpus / "report.json"
    args = ["--model", model, "--trials", corpus / "cal" / "pairs.txt"]
    code, out, err = run(
        calibrate_cli,
        [*args, "--target-far", 0.05, "--llr", "--folds", 4, "--out", report],
        capsys,
    )
    assert code == 0, err
    scores, labels, spk = ref_trials(corpus, ref)
    want = far_threshold(scores, labels, 0.05)
    got = json.loads(report.read_text())
    assert got["threshold"] == pytest.approx(want, abs=TOL)
    assert (got["target"], got["nontarget"]) == (60, 720)
    assert load_model(model).threshold == got["threshold"]
    sb = SpeakerRecognition.from_hparams(
        source=str(model), savedir=str(corpus / "sb_cal")
    )
    assert sb.hparams.threshold == got["threshold"]
    spec = json.loads((model / "dampit_export.json").read_text())
    assert spec["threshold_history"][-1]["threshold"] == 0.5  # the export's
    assert spec["calibration"]["llr"] == got["llr"]
    # Held-out speakers, by hand: thresholds set on the other folds.
    names = sorted({s for pair in spk for s in pair})
    fold = dict(zip(names, speaker_folds(names, 4, seed=0)))
    fa = n_non = miss = n_tar = 0
    for k in range(4):
        train = [i for i, (a, b) in enumerate(spk) if fold[a] != k != fold[b]]
        thr = far_threshold(scores[train], labels[train], 0.05)
        for i, (a, b) in enumerate(spk):
            if fold[a] == k == fold[b]:
                n_tar += labels[i]
                n_non += 1 - labels[i]
                miss += labels[i] == 1 and scores[i] <= thr
                fa += labels[i] == 0 and scores[i] > thr
    cv = got["cross_validated"]
    assert (cv["target"], cv["nontarget"]) == (n_tar, n_non)
    assert (cv["frr"], cv["far"]) == pytest.approx((miss / n_tar, fa / n_non))
    assert f"FAR {100 * cv['far']:.2f}%" in out
    # dampit-verify decides at the new threshold and gives the LLR.
    a, b = corpus / "cal" / spk[0][0], corpus / "cal" / spk[-1][1]
    pair = [sorted(a.iterdir())[0], sorted(b.iterdir())[0]]
    code, out, _ = run(verify_cli, ["--model", model, *pair], capsys)
    s = cosine(ref(pair[0]), ref(pair[1]))
    llr = got["llr"]["scale"] * s + got["llr"]["offset"]
    assert f"threshold {got['threshold']:.4f}" in out
    assert float(out.split("llr ")[1]) == pytest.approx(llr, abs=2e-3)


def test_calibrate_refuses_bad_input_before_the_work(model, corpus, capsys):
    pairs = (corpus / "cal" / "pairs.txt").read_text().splitlines(True)
    folder = corpus / "cal"
    before = {f: (model / f).read_bytes() for f in os.listdir(model)}
    few = folder / "few.txt"
    targets = [line for line in pairs if line.startswith("1")]
    few.write_text(
        "".join(targets[:3] + [p for p in pairs if p[0] == "0"][:40])
    )
    mixed = folder / "mixed.txt"
    first = pairs[0].split()
    mixed.write_text(pairs[0] + f"1 {first[1]} {pairs[-1].split()[2]}\n")
    cases = [
        (
            ["--trials", few, "--eer"],
            "3 target / 40 non-target trials, fewer than the 50 / 50",
        ),
        (["--trials", mixed, "--eer"], "mixed.txt:2: label 1 but the speakers"),
        (
            ["--trials", folder / "pairs.txt", "--target-far", "0.001"],
            "fewer than the 50 / 10000",
        ),
        (
            ["--trials", folder / "pairs.txt", "--eer", "--folds", "11"],
            "--folds 11: 11 folds of 10 speakers",
        ),
    ]
    for extra, msg in cases:
        code, out, err = run(calibrate_cli, ["--model", model, *extra], capsys)
        assert code == 2 and msg in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit) as stop:
        run(
            calibrate_cli,
            ["--model", model, "--trials", few, "--target-far", "1.5"],
            capsys,
        )
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--target-far: need a rate" in err
    code, out, _ = run(
        calibrate_cli,
        [
            "--model",
            model,
            "--trials",
            folder / "pairs.txt",
            "--eer",
            "--dry-run",
        ],
        capsys,
    )
    assert code == 0 and "--dry-run" in out
    assert {f: (model / f).read_bytes() for f in os.listdir(model)} == before
    code, out, err = run(
        calibrate_cli,
        ["--model", model, "--trials", few, "--eer", "--force"],
        capsys,
    )
    assert code == 0 and "warning: 3 target" in err and "no held-out" in err
    assert load_model(model).threshold != 0.5


def test_calibrate_names_with_and_without_extension(model, corpus, ref, capsys):
    """A trial name written with and without ``.wav`` is one file: the
    same threshold as by hand, nothing written (--dry-run)."""
    pairs = (corpus / "cal" / "pairs.txt").read_text().splitlines()
    mixed = corpus / "cal" / "pairs_noext.txt"
    rows = [line.split() for line in pairs]
    mixed.write_text(
        "".join(
            f"{lab} {a.removesuffix('.wav') if k % 2 else a} {b}\n"
            for k, (lab, a, b) in enumerate(rows)
        )
    )
    report = corpus / "report_noext.json"
    args = ["--model", model, "--trials", mixed, "--target-far", 0.05]
    code, out, err = run(
        calibrate_cli,
        [*args, "--folds", 4, "--dry-run", "--out", report],
        capsys,
    )
    assert code == 0, err
    scores, labels, _ = ref_trials(corpus, ref)
    got = json.loads(report.read_text())
    want = far_threshold(scores, labels, 0.05)
    assert got["threshold"] == pytest.approx(want, abs=TOL)
    assert (got["target"], got["nontarget"]) == (60, 720)
    assert load_model(model).threshold == 0.5


def test_enroll_subfolders_with_the_same_file_names(model, corpus, ref, capsys):
    """enrol/{alice,bob}/1.wav, 2.wav: IDs name nothing in a profile, so
    by folder, both folders as one speaker and a folder given twice
    enrol every file once."""
    spk = sorted((corpus / "enrol").iterdir())[:2]
    same = corpus / "same"
    for name, d in zip(["alice", "bob"], spk):
        (same / name).mkdir(parents=True)
        for k, f in enumerate(sorted(d.iterdir())[:2], 1):
            (same / name / f"{k}.wav").symlink_to(f)
    store = corpus / "profiles_same"
    base = ["--model", model, "--profiles", store]
    code, out, err = run(enroll_cli, [*base, "--by-folder", same], capsys)
    assert code == 0 and "2 profiles in" in out, err
    both = [same / "alice", same / "bob"]
    code, _, err = run(enroll_cli, [*base, "--speaker", "carol", *both], capsys)
    assert code == 0, err
    twice = [same / "alice", same / "alice", same / "alice" / "1.wav"]
    base += ["--speaker", "dave"]
    code, out, err = run(enroll_cli, [*base, *twice], capsys)
    assert code == 0 and "'dave': 2 file(s) enrolled" in out, err
    p = Profiles(store)
    assert p.names == ["alice", "bob", "carol", "dave"]
    assert p.counts.tolist() == [2, 2, 4, 2]

    def mean(files):
        return np.mean([ref(f) / np.linalg.norm(ref(f)) for f in files], 0)

    files = {n: sorted((same / n).iterdir()) for n in ("alice", "bob")}
    want = [
        mean(files["alice"]),
        mean(files["bob"]),
        mean(files["alice"] + files["bob"]),
        mean(files["alice"]),
    ]
    np.testing.assert_allclose(p.means(), want, atol=TOL)


def test_enroll_refuses_a_name_ids_cannot_hold(
    model, corpus, capsys, forward_calls
):
    """A vertical tab splits ``ids.txt``'s line: refused in one line
    before any forward pass but the model's load probe."""
    load_model(model)
    probe = list(forward_calls)
    forward_calls.clear()
    store = corpus / "profiles_vt"
    wav = sorted(sorted((corpus / "enrol").iterdir())[0].iterdir())[0]
    args = ["--model", model, "--profiles", store, "--speaker", "a\x0bb", wav]
    code, out, err = run(enroll_cli, args, capsys)
    assert code == 2 and out == "", err
    assert "speaker name 'a\\x0bb'" in err and len(err.splitlines()) == 1
    assert forward_calls == probe and not store.exists()


def test_enroll_ten_speakers_and_identify(model, corpus, ref, capsys):
    store = corpus / "profiles"
    enrol = sorted((corpus / "enrol").iterdir())
    code, out, err = run(
        enroll_cli,
        [
            "--model",
            model,
            "--profiles",
            store,
            "--by-folder",
            corpus / "enrol",
        ],
        capsys,
    )
    assert code == 0 and "10 profiles in" in out, err
    profiles = Profiles(store)
    assert profiles.names == [d.name for d in enrol]
    assert profiles.counts.tolist() == [3] * 10
    for d, mean in zip(enrol, profiles.means()):
        unit = [ref(f) / np.linalg.norm(ref(f)) for f in sorted(d.iterdir())]
        np.testing.assert_allclose(mean, np.mean(unit, axis=0), atol=TOL)
    probes = sorted((corpus / "probe").iterdir())
    scores = {
        p.name: {
            d.name: cosine(ref(p), m) for d, m in zip(enrol, profiles.means())
        }
        for p in probes
    }
    stranger = max(scores["stranger.wav"].values())
    threshold = stranger + 1e-3  # the stranger's best is below it
    code, out, err = run(
        identify_cli,
        [
            "--model",
            model,
            "--profiles",
            store,
            "--top-k",
            3,
            "--threshold",
            threshold,
            corpus / "probe",
        ],
        capsys,
    )
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 12
    assert lines[-1].startswith("[dampit] 11 file(s) against 10 profiles")
    rows = {r[0]: r[1:] for r in (x.split("\t") for x in lines[:-1])}
    assert sorted(rows) == sorted(p.stem for p in probes)
    for p in probes:
        want = sorted(scores[p.name].items(), key=lambda kv: -kv[1])[:3]
        decision, *top = rows[p.stem]
        assert top[0::2] == [n for n, _ in want]
        for got, (_, s) in zip(top[1::2], want):
            assert float(got) == pytest.approx(s, abs=TOL)
        best = want[0][1]
        assert decision == (want[0][0] if best > threshold else "unknown")
    assert rows["stranger"][0] == "unknown"


def test_enroll_more_files_remove_and_refusals(model, corpus, ref, capsys):
    store = corpus / "profiles2"
    files = sorted((corpus / "enrol").iterdir())[0].iterdir()
    files = sorted(files)
    base = ["--model", model, "--profiles", store]
    assert run(enroll_cli, [*base, "--speaker", "a", files[0]], capsys)[0] == 0
    assert (
        run(enroll_cli, [*base, "--speaker", "a", *files[1:]], capsys)[0] == 0
    )
    assert run(enroll_cli, [*base, "--speaker", "b", files[0]], capsys)[0] == 0
    p = Profiles(store)
    unit = [ref(f) / np.linalg.norm(ref(f)) for f in files]
    np.testing.assert_allclose(p.means()[0], np.mean(unit, 0), atol=TOL)
    assert p.counts.tolist() == [3, 1]
    before = {f: (store / f).read_bytes() for f in os.listdir(store)}
    other = write_demo_model(
        corpus / "other", seed=5, features="fbank", default_init=True
    )
    bad = [
        (
            ["--model", other, "--profiles", store, "--speaker", "c", files[0]],
            "made with another model",
        ),
        ([*base, "--speaker", "unknown", files[0]], "speaker name 'unknown'"),
        ([*base, "--remove", "zed"], "no profile 'zed'"),
        (
            [
                "--model",
                model,
                "--profiles",
                corpus / "enrol",
                "--speaker",
                "c",
                files[0],
            ],
            "is not a profile store",
        ),
        ([*base, "--speaker", "c", corpus / "nowhere.wav"], "input not found"),
        ([*base, "--by-folder", files[0]], "is not a folder"),
    ]
    for args, msg in bad:
        code, _, err = run(enroll_cli, args, capsys)
        assert code == 2 and msg in err and len(err.splitlines()) == 1, err
    code, _, err = run(
        identify_cli,
        ["--model", other, "--profiles", store, files[0]],
        capsys,
    )
    assert code == 2 and "made with another model" in err
    assert {f: (store / f).read_bytes() for f in os.listdir(store)} == before
    code, out, _ = run(enroll_cli, [*base, "--remove", "b"], capsys)
    assert code == 0 and Profiles(store).names == ["a"]
    code, out, _ = run(enroll_cli, [*base, "--remove", "a"], capsys)
    code, _, err = run(
        identify_cli, ["--model", model, "--profiles", store, files[0]], capsys
    )
    assert code == 2 and "no profiles" in err
    broken = corpus / "broken_model"  # refused before the model loads
    shutil.copytree(model, broken)
    (broken / "dampit_export.json").write_text("{")
    code, _, err = run(
        identify_cli, ["--model", broken, "--profiles", store, files[0]], capsys
    )
    assert code == 2 and "no profiles" in err, err


def test_calibrate_out_replaces_only_its_report(model, corpus, capsys):
    """``--out`` naming the trial list, the CSV, a file in (or a new path
    inside) the model folder, or a file that is not a report: refused in
    one line before any embedding, nothing changed; a report of an
    earlier run is replaced."""
    pairs = corpus / "cal" / "pairs.txt"
    notes = corpus / "notes.txt"
    notes.write_text('{"mine": 1}\n')
    files = [pairs, notes, *sorted(model.iterdir())]
    before = {f: f.read_bytes() for f in files}
    args = ["--model", model, "--trials", pairs, "--eer", "--dry-run"]
    cases = [
        (pairs, [], "is the --trials file"),
        (notes, ["--csv", notes], "is the --csv file"),
        (notes, [], "is not a report of dampit-calibrate"),
        (model / "dampit_export.json", [], "inside --model"),
        (model / "hyperparams.yaml", [], "inside --model"),
        (model / "report.json", [], "inside --model"),
    ]
    for out, extra, msg in cases:
        code, out_text, err = run(
            calibrate_cli, [*args, *extra, "--out", out], capsys
        )
        assert code == 2 and out_text == "", (out, err)
        assert msg in err and len(err.splitlines()) == 1, err
    assert {f: f.read_bytes() for f in files} == before
    assert sorted(model.iterdir()) == files[2:]
    report = corpus / "cal_report.json"
    assert run(calibrate_cli, [*args, "--out", report], capsys)[0] == 0
    assert json.loads(report.read_text())["operating_point"] == "eer"
    args[args.index("--eer")] = "--target-far"
    args.insert(args.index("--target-far") + 1, "0.05")
    code, _, err = run(calibrate_cli, [*args, "--out", report], capsys)
    assert code == 0, err
    assert json.loads(report.read_text())["operating_point"] == "far"


def test_identify_out_replaces_only_its_output(model, corpus, capsys):
    """``--out`` naming an input audio or list file, a file in the profile
    store or the model folder, or a file that is not an output of
    dampit-identify: refused in one line before the model loads, nothing
    changed; an earlier output is replaced."""
    store = corpus / "profiles_out"
    wav = sorted((corpus / "enrol").iterdir())[0]
    wav = sorted(wav.iterdir())[0]
    base = ["--model", model, "--profiles", store]
    assert run(enroll_cli, [*base, "--speaker", "a", wav], capsys)[0] == 0
    probe = corpus / "probe" / "stranger.wav"
    listed = corpus / "probes.txt"
    listed.write_text(f"{probe}\n")
    notes = corpus / "ids_notes.txt"
    notes.write_text("alice\tbob\n")
    files = [probe, listed, notes, *store.iterdir(), *model.iterdir()]
    before = {f: f.read_bytes() for f in files}
    broken = corpus / "broken_for_out"  # refused before the model loads
    shutil.copytree(model, broken)
    (broken / "dampit_export.json").write_text("{")
    cases = [
        (base, [probe], probe, "is the input file"),
        (base, [listed], probe, "is the input file"),
        (base, [listed], listed, "is the input file"),
        (base, [probe], store / "ids.txt", "inside --profiles"),
        (base, [probe], model / "ids.tsv", "inside --model"),
        (base, [probe], notes, "is not an output of dampit-identify"),
        (["--model", broken, "--profiles", store], [probe], notes, "not an"),
    ]
    for argv, inputs, out, msg in cases:
        code, out_text, err = run(
            identify_cli, [*argv, *inputs, "--out", out], capsys
        )
        assert code == 2 and out_text == "", (out, err)
        assert msg in err and len(err.splitlines()) == 1, err
    assert {f: f.read_bytes() for f in files} == before
    ids = corpus / "ids.tsv"
    for threshold in (-1, 1):  # a new file, then its own output replaced
        code, _, err = run(
            identify_cli,
            [*base, probe, "--threshold", threshold, "--out", ids],
            capsys,
        )
        assert code == 0, err
        decision = "a" if threshold == -1 else "unknown"
        first = ids.read_text().split("\t")[:3]
        assert first == [str(probe.with_suffix("")), decision, "a"]
