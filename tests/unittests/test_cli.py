"""Tests of dampit-embed and dampit-verify (dampit.cli), bad input included.

The console scripts run in-process through their ``main``; the expected
embeddings come from SpeechBrain's own ``SpeakerRecognition`` loading the
same model folder and embedding one file at a time, scores from a cosine
written here, EERs from a plain loop over every threshold. More user
errors: test_cli_errors.py; bounded memory: test_cli_memory.py.
"""

import os
import pathlib
import runpy
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.inference.speaker import SpeakerRecognition

from dampit.cli import embed as embed_cli
from dampit.cli import verify as verify_cli
from dampit.cli.common import CliError, list_audio_inputs
from dampit.dataio.trials import read_scores
from dampit.inference.api import load_model
from dampit.metrics.error_rates import compute_eer

# The test-only model writer (tests/ is not a package).
MODELS = pathlib.Path(__file__).resolve().parents[1] / "model_folder.py"
write_demo_model = runpy.run_path(str(MODELS))["write_demo_model"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return pathlib.Path(write_demo_model(root))


@pytest.fixture(scope="module")
def sb(model, tmp_path_factory):
    return SpeakerRecognition.from_hparams(
        source=str(model), savedir=str(tmp_path_factory.mktemp("sb"))
    )


@pytest.fixture(scope="module")
def wavs(shared_data):
    """Three files of each of two dspspeech speakers."""
    root = shared_data / "dspspeech"
    spk = sorted(p for p in root.iterdir() if p.is_dir())[:2]
    return {s.name: sorted(s.glob("*.wav"))[:3] for s in spk}


def reference(sb, path):
    """One file through SpeechBrain's loader and encode_batch: [D]."""
    with torch.no_grad():
        return sb.encode_batch(sb.load_audio(str(path))[None])[0, 0].numpy()


def close(a, b, tol=1e-5):
    scale = max(1.0, float(np.abs(b).max()))
    return float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= tol * scale


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def tree_of(root, wavs):
    for spk, files in wavs.items():
        (root / spk).mkdir(parents=True)
        for f in files:
            (root / spk / f.name).symlink_to(f)
    return root


def run_embed(args, capsys=None):
    code = embed_cli.main(args)
    out = capsys.readouterr() if capsys is not None else None
    return code, out


# ------------------------------------------------------------ dampit-embed --


def test_embed_folder(model, sb, wavs, tmp_path, capsys):
    tree = tree_of(tmp_path / "data", wavs)
    out = tmp_path / "emb"
    code, cap = run_embed(
        [
            "--model",
            str(model),
            str(tree),
            "--out",
            str(out),
            "--no-progress",
            "--batch-size",
            "4",
        ],
        capsys,
    )
    assert code == 0, cap.err
    ids = (out / "ids.txt").read_text().splitlines()
    want_ids = [f"{s}/{f.stem}" for s, fs in sorted(wavs.items()) for f in fs]
    assert ids == want_ids
    emb = np.load(out / "embeddings.npy")
    assert emb.shape == (6, 16) and emb.dtype == np.float32
    paths = (out / "paths.txt").read_text().splitlines()
    for k, path in enumerate(paths):
        assert close(emb[k], reference(sb, path)), path
    assert "6 embeddings of size 16" in cap.out


def test_embed_inputs_given_twice(model, sb, wavs, tmp_path, capsys):
    """A folder and a file given twice: each file embedded once."""
    tree = tree_of(tmp_path / "data", wavs)
    one = tree / sorted(wavs)[0] / next(iter(wavs.values()))[0].name
    out = tmp_path / "emb"
    args = ["--model", str(model), str(tree), str(tree), str(one), str(one)]
    code, cap = run_embed([*args, "--out", str(out), "--no-progress"], capsys)
    assert code == 0, cap.err
    ids = (out / "ids.txt").read_text().splitlines()
    want_ids = [f"{s}/{f.stem}" for s, fs in sorted(wavs.items()) for f in fs]
    assert ids == [*want_ids, str(one).removesuffix(".wav")]
    emb = np.load(out / "embeddings.npy")
    assert close(emb[-1], reference(sb, one)) and close(emb[0], emb[-1])


def test_embed_progress_bar(model, wavs, tmp_path, capsys):
    files = [str(f) for fs in wavs.values() for f in fs][:2]
    code, cap = run_embed(
        ["--model", str(model), *files, "--out", str(tmp_path / "e")], capsys
    )
    assert code == 0 and "100%|" in cap.err  # a tqdm bar
    code, cap = run_embed(
        ["--model", str(model), *files, "--out", str(tmp_path / "e")]
        + ["--no-progress"],
        capsys,
    )
    assert code == 0 and cap.err == ""


def test_embed_list_file(model, sb, wavs, tmp_path, capsys):
    files = [f for fs in wavs.values() for f in fs]
    local = tmp_path / "audio"
    local.mkdir()
    shutil.copyfile(files[0], local / "a.wav")
    lst = tmp_path / "list.txt"
    lst.write_text(f"# my files\naudio/a.wav\n\nspkX\t{files[1]}\n")
    out = tmp_path / "e"
    code, cap = run_embed(
        ["--model", str(model), str(lst), "--out", str(out), "--no-progress"],
        capsys,
    )
    assert code == 0, cap.err
    assert (out / "ids.txt").read_text().splitlines() == ["audio/a", "spkX"]
    emb = np.load(out / "embeddings.npy")
    assert close(emb[0], reference(sb, files[0]))
    assert close(emb[1], reference(sb, files[1]))


def test_list_file_errors(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("a.wav\n# x\nmissing/b.wav\n")
    (tmp_path / "a.wav").write_bytes(b"")
    with pytest.raises(CliError, match=r"list.txt:3: .*missing/b.wav"):
        list_audio_inputs([str(lst)])
    (tmp_path / "b.wav").write_bytes(b"")
    lst.write_text("a.wav\nx\t a.wav\nx\tb.wav\n")
    with pytest.raises(CliError, match="list.txt:3: duplicate ID 'x'"):
        list_audio_inputs([str(lst)])
    lst.write_text("a.wav\nx\t\nb.wav\n")
    with pytest.raises(CliError, match="list.txt:2: no audio path after"):
        list_audio_inputs([str(lst)])
    with pytest.raises(CliError, match="input not found"):
        list_audio_inputs([str(tmp_path / "nothing")])
    lst.write_text("# nothing\n\n")
    with pytest.raises(CliError, match="list.txt: lists no audio files"):
        list_audio_inputs([str(lst)])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(CliError, match="no .wav/.flac.* under"):
        list_audio_inputs([str(tmp_path / "empty")])


def test_inputs_given_twice(tmp_path):
    """The same file under the same ID again is kept once (a file, a
    folder or a list line given twice, a link to it); one ID of two
    different files is refused naming the input."""
    (tmp_path / "d" / "s").mkdir(parents=True)
    a, b = tmp_path / "d" / "s" / "a.wav", tmp_path / "b" / "s" / "a.wav"
    a.write_bytes(b"")
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "s").symlink_to(a.parent)
    lst = tmp_path / "list.txt"
    lst.write_text("x\td/s/a.wav\nx\td/s/a.wav\n")
    inputs = [a, a, tmp_path / "d", tmp_path / "d", tmp_path / "link", lst]
    got = list_audio_inputs([str(p) for p in inputs])
    assert got == [
        (str(a).removesuffix(".wav"), str(a)),
        ("s/a", str(a)),
        ("x", str(a)),
    ]
    b.parent.mkdir(parents=True)
    b.write_bytes(b"")
    dup = f"{tmp_path / 'b'}.* duplicate ID 's/a'"
    with pytest.raises(CliError, match=dup):
        list_audio_inputs([str(tmp_path / "d"), str(tmp_path / "b")])


def write_bad(kind, path):
    """Write a bad file of ``kind`` at ``path``; return the error text."""
    if kind == "missing":
        return "not found"
    if kind == "not_audio":
        path.write_text("this is not audio\n" * 100)
        return "cannot read audio file"
    if kind == "empty_bytes":
        path.write_bytes(b"")
        return "empty (0 bytes)"
    if kind == "no_samples":
        sf.write(path, np.zeros(0), 16000)
        return "no samples"
    if kind == "silent":
        sf.write(path, np.zeros(16000), 16000)
        return "silent"
    if kind == "too_short":
        sf.write(path, 0.1 * np.ones(100), 16000)
        return "too short"
    raise ValueError(kind)


BAD = [
    "missing",
    "not_audio",
    "empty_bytes",
    "no_samples",
    "silent",
    "too_short",
]


@pytest.mark.parametrize("kind", BAD)
def test_embed_bad_file_is_a_clear_error(model, wavs, tmp_path, capsys, kind):
    bad = tmp_path / f"{kind}.wav"
    expected = write_bad(kind, bad)
    good = str(next(iter(wavs.values()))[0])
    out = tmp_path / "e"
    code, cap = run_embed(
        [
            "--model",
            str(model),
            good,
            str(bad),
            "--out",
            str(out),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 2
    assert cap.err.startswith("dampit-embed: error:")
    assert expected in cap.err and str(bad) in cap.err
    assert len(cap.err.strip().splitlines()) == 1
    assert not out.exists()  # nothing half-written


def test_unreadable_file_is_refused_before_any_forward_pass(
    model, wavs, tmp_path, capsys, forward_calls
):
    """Ten good files and one of random bytes: the header pass refuses
    it, naming it, before any forward pass but the one of loading the
    model (its probe); --skip-bad leaves it out."""
    load_model(model)
    probe = list(forward_calls)
    assert probe
    good = [str(f) for fs in wavs.values() for f in fs]
    good = [*good, *good[:4]]
    folder = tmp_path / "data"
    folder.mkdir()
    for k, f in enumerate(good):
        (folder / f"{k:02d}.wav").symlink_to(f)
    bad = folder / "00_noise.wav"
    bad.write_bytes(np.random.default_rng(0).bytes(50_000))
    out = tmp_path / "e"
    args = ["--model", str(model), str(folder), "--out", str(out)]
    forward_calls.clear()
    code, cap = run_embed([*args, "--no-progress"], capsys)
    assert code == 2 and cap.out == ""
    assert cap.err.startswith("dampit-embed: error: cannot read audio file")
    assert str(bad) in cap.err and len(cap.err.strip().splitlines()) == 1
    assert forward_calls == probe and not out.exists()
    forward_calls.clear()
    code, cap = run_embed([*args, "--no-progress", "--skip-bad"], capsys)
    assert code == 0 and len(forward_calls) > len(probe)
    assert len((out / "ids.txt").read_text().splitlines()) == 10


def test_embed_skip_bad(model, wavs, tmp_path, capsys):
    tree = tree_of(tmp_path / "data", {"s": next(iter(wavs.values()))[:2]})
    write_bad("silent", tree / "s" / "zz_silent.wav")
    write_bad("not_audio", tree / "s" / "zz_text.wav")
    out = tmp_path / "e"
    args = ["--model", str(model), str(tree), "--out", str(out)]
    code, cap = run_embed(args + ["--skip-bad", "--no-progress"], capsys)
    assert code == 0
    warned = cap.err.strip().splitlines()
    assert len(warned) == 2 and all(
        w.startswith("dampit-embed: warning: skipping") for w in warned
    )
    assert len((out / "ids.txt").read_text().splitlines()) == 2
    bad = (out / "bad_files.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in bad] == [
        str(tree / "s" / "zz_silent.wav"),
        str(tree / "s" / "zz_text.wav"),
    ]
    assert "silent" in bad[0] and "cannot read" in bad[1]
    assert "2 bad file(s) skipped" in cap.out


# ----------------------------------------------------------- dampit-verify --


def test_verify_two_files(model, sb, wavs, capsys):
    (spk1, f1), (spk2, f2) = list(wavs.items())
    a, b = f1[0], f2[0]
    score = cosine(reference(sb, a), reference(sb, b))
    for thr, word in (
        (score - 0.01, "same speaker"),
        (score + 0.01, "different speakers"),
    ):
        code = verify_cli.main(
            ["--model", str(model), str(a), str(b), "--threshold", str(thr)]
        )
        out = capsys.readouterr().out
        assert code == 0
        fields = out.split()
        assert float(fields[1]) == pytest.approx(score, abs=1e-4)
        assert out.strip().endswith(word)
    # The stored threshold (0.5 in the demo model) is the default.
    verify_cli.main(["--model", str(model), str(a), str(b)])
    assert "threshold 0.5000" in capsys.readouterr().out


def test_verify_trial_list(model, sb, wavs, tmp_path, capsys):
    tree = tree_of(tmp_path / "data", wavs)
    (s1, f1), (s2, f2) = list(wavs.items())
    rel = {f: f"{s}/{f.name}" for s, fs in wavs.items() for f in fs}
    trials = [
        (1, f1[0], f1[1]),
        (1, f1[0], f1[2]),
        (1, f2[0], f2[1]),
        (0, f1[0], f2[0]),
        (0, f1[1], f2[2]),
        (0, f2[1], f1[2]),
    ]
    # Names relative to the list's folder, one given without extension.
    lines = [f"{y} {rel[e]} {rel[t]}" for y, e, t in trials]
    lines[1] = lines[1].replace(".wav", "")
    tl = tree / "trials.txt"
    tl.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.txt"
    code = verify_cli.main(
        [
            "--model",
            str(model),
            "--trials",
            str(tl),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    cap = capsys.readouterr()
    assert code == 0, cap.err
    want = [cosine(reference(sb, e), reference(sb, t)) for _, e, t in trials]
    rows = [line.split() for line in out.read_text().splitlines()]
    assert [r[:3] for r in rows] == [
        ln.split()[1:] + ln.split()[:1] for ln in lines
    ]
    got = [float(r[3]) for r in rows]
    assert np.allclose(got, want, atol=1e-5)
    # The score file is the one format dampit reads back.
    enrol_ids, _, back, labels = read_scores(out)
    assert back.tolist() == got and enrol_ids[0] == rel[f1[0]]
    assert labels.tolist() == [y for y, _, _ in trials]
    n_accept = sum(s > 0.5 for s in got)
    assert f"6 trials scored, threshold 0.5000, {n_accept} accepted" in cap.out
    eer, _ = compute_eer(got, [y for y, _, _ in trials])
    assert f"EER {100 * eer:.2f}%" in cap.out
    assert "3 target / 3 non-target" in cap.out
    # The Python API scores the same pairs in the same float64 precision
    # (a score next to the threshold decides as in the command).
    api = load_model(model)
    scores, decisions = api.verify_pairs(
        [(e, t) for _, e, t in trials], progress=False
    )
    assert scores.dtype == np.float64
    assert np.allclose(scores, got, rtol=0, atol=1e-6)
    assert decisions.tolist() == (scores > api.threshold).tolist()


def test_verify_csv_ids(model, sb, wavs, tmp_path, capsys):
    files = [f for fs in wavs.values() for f in fs]
    csv_path = tmp_path / "test.csv"
    rows = ["ID,duration,wav,start,stop,spk_id"]
    for k, f in enumerate(files):  # whole files: stop is the frame count
        stop = sf.info(f).frames if k % 2 else ""
        rows.append(f"u{k},2.0,$data_root/{f.parent.name}/{f.name},0,{stop},s")
    csv_path.write_text("\n".join(rows) + "\n")
    tl = tmp_path / "t.txt"
    tl.write_text("u0 u1\nu0 u4\n")
    out = tmp_path / "s.txt"
    argv = ["--model", str(model), "--trials", str(tl), "--csv", str(csv_path)]
    code = verify_cli.main(
        argv + ["--data-root", str(files[0].parent.parent), "--out", str(out)]
    )
    cap = capsys.readouterr()
    assert code == 0, cap.err
    got = [line.split() for line in out.read_text().splitlines()]
    assert [r[:2] for r in got] == [["u0", "u1"], ["u0", "u4"]]
    want = [
        cosine(reference(sb, files[0]), reference(sb, files[k])) for k in (1, 4)
    ]
    assert np.allclose([float(r[2]) for r in got], want, atol=1e-5)
    assert "2 trials scored" in cap.out
    # Without --data-root the CSV's $data_root cannot be filled.
    assert verify_cli.main(argv) == 2
    assert f"--csv {csv_path}" in capsys.readouterr().err
    tl.write_text("u0 u1\nu0 u9\n")
    argv += ["--data-root", str(files[0].parent.parent)]
    assert verify_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "t.txt:2: u9: " in err and f"not an ID of {csv_path}" in err


def test_verify_bad_trials(model, wavs, tmp_path, capsys):
    f = next(iter(wavs.values()))[0]
    tl = tmp_path / "t.txt"

    def error(text):
        tl.write_text(text)
        code = verify_cli.main(["--model", str(model), "--trials", str(tl)])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    assert "t.txt:2: expected 'label enrol test'" in error(
        f"1 {f} {f}\n1 {f} {f} {f}\n"
    )
    assert "t.txt:2: mixes labelled and unlabelled" in error(
        f"1 {f} {f}\n{f} {f}\n"
    )
    assert "t.txt:2: nowhere/x.wav: audio file not found" in error(
        f"1 {f} {f}\n0 {f} nowhere/x.wav\n"
    )
    assert "label must be 0 or 1" in error(f"2 {f} {f}\n")
    assert "t.txt: no trials" in error("# only a comment\n\n")
    assert (
        verify_cli.main(
            ["--model", str(model), str(f), str(tmp_path / "no.wav")]
        )
        == 2
    )
    assert "audio file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        verify_cli.main(["--model", str(model), str(f)])


def test_model_yaml_is_not_executed(model, wavs, tmp_path, capsys):
    """A hyperparams.yaml that would run code when loaded (issue 16 item
    1): dampit-verify and dampit-embed score with the folder's JSON and
    weights; the code does not run."""
    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    pwned = tmp_path / "PWNED"
    hp = bad / "hyperparams.yaml"
    hp.write_text(hp.read_text() + f"extra: !apply:os.makedirs [{pwned}]\n")
    f = next(iter(wavs.values()))[0]
    assert verify_cli.main(["--model", str(bad), str(f), str(f)]) == 0
    assert "score 1.0000" in capsys.readouterr().out
    code, _ = run_embed(
        ["--model", str(bad), str(f), "--out", str(tmp_path / "e")], capsys
    )
    assert code == 0 and not pwned.exists()


def test_console_scripts_installed():
    exe = pathlib.Path(sys.executable).parent
    for name in ("dampit-embed", "dampit-verify", "dampit-export"):
        script = exe / name
        if not script.exists():
            pytest.skip(f"{name} not installed (pip install -e .)")
    res = subprocess.run(
        [str(exe / "dampit-verify"), "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert res.returncode == 0 and "--trials" in res.stdout
