"""User errors of dampit-embed and dampit-verify (and dampit-enroll given
an embedding store): one line, exit 2.

Every bad argument, output path, trial list and model folder gives one
line on stderr naming the argument, file or row, and exit status 2,
before any audio is embedded (no progress bar, nothing written); the
traceback shows only with ``--verbose``. Read-only and full output
folders are real tmpfs mounts (``unshare``) when running as root.
"""

import json
import math
import os
import pathlib
import runpy
import shlex
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from dampit.cli import calibrate as calibrate_cli
from dampit.cli import embed as embed_cli
from dampit.cli import enroll as enroll_cli
from dampit.cli import verify as verify_cli
from dampit.cli.common import CliError
from dampit.dataio.trials import read_scores

# The test-only model writer (tests/ is not a package).
MODELS = pathlib.Path(__file__).resolve().parents[1] / "model_folder.py"
write_demo_model = runpy.run_path(str(MODELS))["write_demo_model"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return pathlib.Path(write_demo_model(tmp_path_factory.mktemp("demo")))


@pytest.fixture(scope="module")
def wavs(shared_data):
    """Two files of each of two dspspeech speakers."""
    root = shared_data / "dspspeech"
    spk = sorted(p for p in root.iterdir() if p.is_dir())[:2]
    return [f for s in spk for f in sorted(s.glob("*.wav"))[:2]]


def one_line_error(err, *names, alone=True):
    """The stderr of a refused command: one error line, the last, naming
    ``names``; with ``alone``, nothing else (no progress bar, warning or
    traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 or not alone, err
    assert "Traceback" not in err and ": error: " in lines[-1], err
    assert sum(": error: " in ln for ln in lines) == 1, err
    for name in names:
        assert str(name) in lines[-1], (name, lines[-1])
    return lines[-1]


def refused(main, argv, capsys, *names):
    """Run ``main(argv)`` (argparse exits too): exit 2 and one line."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    cap = capsys.readouterr()
    assert code == 2, cap
    assert cap.out == ""
    return one_line_error(cap.err, *names)


def verify_args(model, wavs, *extra):
    return ["--model", str(model), str(wavs[0]), str(wavs[2]), *extra]


# ---------------------------------------------------------- arguments --


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_batch_size_below_one(model, wavs, tmp_path, capsys, value):
    out = tmp_path / "e"
    argv = ["--model", str(model), str(wavs[0]), "--out", str(out)]
    refused(
        embed_cli.main,
        argv + ["--batch-size", value],
        capsys,
        "--batch-size",
        value,
    )
    refused(
        verify_cli.main,
        verify_args(model, wavs, "--batch-size", value),
        capsys,
        "--batch-size",
    )
    assert not out.exists()


def test_bad_device(model, wavs, capsys):
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    bad = ["gpu7", "cuda:x", f"cuda:{n_gpus}"]
    if n_gpus == 0:
        bad.append("cuda")
    for dev in bad:
        refused(
            verify_cli.main,
            verify_args(model, wavs, "--device", dev),
            capsys,
            "--device",
            dev,
        )


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "abc"])
def test_threshold_must_be_finite(model, wavs, capsys, value):
    refused(
        verify_cli.main,
        verify_args(model, wavs, f"--threshold={value}"),
        capsys,
        "--threshold",
        value,
    )


def test_out_checked_before_any_work(model, wavs, tmp_path, capsys):
    """An existing file as embed's --out folder, a folder as verify's
    --out file: refused at once (no progress bar), nothing changed."""
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me\n")
    argv = ["--model", str(model), *map(str, wavs), "--out", str(taken)]
    refused(embed_cli.main, argv, capsys, "--out", taken, "not a folder")
    assert taken.read_text() == "keep me\n"
    trials = tmp_path / "t.txt"
    trials.write_text(f"1 {wavs[0]} {wavs[1]}\n")
    argv = ["--model", str(model), "--trials", str(trials), "--out"]
    refused(verify_cli.main, argv + [str(tmp_path)], capsys, "--out", "folder")


def test_verify_out_needs_a_trial_list(model, wavs, tmp_path, capsys):
    """Two files print their score: ``--out`` is refused, not ignored."""
    out = tmp_path / "score.txt"
    argv = verify_args(model, wavs, "--out", str(out))
    refused(verify_cli.main, argv, capsys, "--out needs --trials")
    assert not out.exists()


def test_embed_and_enroll_never_replace_the_other_store(
    model, wavs, tmp_path, capsys
):
    """A profile store as dampit-embed's ``--out``, an embedding store as
    dampit-enroll's ``--profiles``: refused in one line, both intact."""
    store, emb = tmp_path / "profiles", tmp_path / "emb"
    base = ["--model", str(model), "--no-progress"]
    argv = [*base, "--profiles", str(store), "--speaker", "a", str(wavs[0])]
    assert enroll_cli.main(argv) == 0
    assert embed_cli.main([*base, str(wavs[1]), "--out", str(emb)]) == 0
    capsys.readouterr()
    before = {f: f.read_bytes() for d in (store, emb) for f in d.iterdir()}
    argv = [*base, str(wavs[2]), "--out", str(store)]
    refused(embed_cli.main, argv, capsys, store, "is a profile store")
    argv = [*base, "--profiles", str(emb), "--speaker", "b", str(wavs[2])]
    refused(enroll_cli.main, argv, capsys, emb, "is not a profile store")
    after = {f: f.read_bytes() for d in (store, emb) for f in d.iterdir()}
    assert after == before


def test_missing_model_folder_before_the_trials(model, wavs, tmp_path, capsys):
    """The model folder is an argument: checked before the trial list."""
    trials = tmp_path / "t.txt"
    trials.write_text("1 a.wav gone.wav\n")
    gone = tmp_path / "no_model"
    argv = ["--model", str(gone), "--trials", str(trials)]
    refused(verify_cli.main, argv, capsys, "--model", gone)
    argv = ["--model", str(gone), str(wavs[0]), "--out", str(tmp_path / "e")]
    refused(embed_cli.main, argv, capsys, gone)


def test_verbose_shows_the_traceback(model, wavs, tmp_path):
    with pytest.raises(CliError, match="--model"):
        verify_cli.main(
            [
                "--model",
                str(tmp_path / "none"),
                "--verbose",
                str(wavs[0]),
                str(wavs[1]),
            ]
        )


# --------------------------------------------------------- trial lists --


def trial_run(model, trials, capsys, *extra):
    code = verify_cli.main(
        [
            "--model",
            str(model),
            "--trials",
            str(trials),
            "--no-progress",
            *extra,
        ]
    )
    cap = capsys.readouterr()
    return code, cap


def test_bom_is_accepted(model, wavs, tmp_path, capsys):
    lines = f"1 {wavs[0]} {wavs[1]}\n0 {wavs[0]} {wavs[2]}\n"
    plain, bom = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text(lines)
    bom.write_bytes(b"\xef\xbb\xbf" + lines.encode())
    code, want = trial_run(model, plain, capsys)
    assert code == 0
    code, got = trial_run(model, bom, capsys)
    assert code == 0, got.err
    assert got.out == want.out  # 2 score lines, then the summary
    assert [r.split()[:2] for r in got.out.splitlines()[:2]] == [
        [str(wavs[0]), str(wavs[1])],
        [str(wavs[0]), str(wavs[2])],
    ]


def test_invalid_utf8_names_the_line(model, wavs, tmp_path, capsys):
    trials = tmp_path / "t.txt"
    trials.write_bytes(
        f"1 {wavs[0]} {wavs[1]}\n".encode() * 2 + b"0 caf\xe9.wav x.wav\n"
    )
    argv = ["--model", str(model), "--trials", str(trials)]
    refused(verify_cli.main, argv, capsys, f"{trials}:3", "UTF-8")


def test_embed_list_file_encoding(model, wavs, tmp_path, capsys):
    lst = tmp_path / "files.txt"
    lst.write_bytes(b"\xef\xbb\xbf" + f"spk\t{wavs[0]}\n".encode())
    out = tmp_path / "e"
    argv = ["--model", str(model), str(lst), "--out", str(out)]
    assert embed_cli.main(argv + ["--no-progress"]) == 0
    capsys.readouterr()
    assert (out / "ids.txt").read_text() == "spk\n"
    lst.write_bytes(f"{wavs[0]}\n".encode() + b"\xff\xfe.wav\n")
    refused(embed_cli.main, argv, capsys, f"{lst}:2", "UTF-8")


def test_label_and_one_path_names_the_row(model, wavs, tmp_path, capsys):
    trials = tmp_path / "t.txt"
    trials.write_text(f"1 {wavs[0]} {wavs[1]}\n1 {wavs[2]}\n")
    argv = ["--model", str(model), "--trials", str(trials)]
    refused(verify_cli.main, argv, capsys, f"{trials}:2", "label")


def test_missing_audio_names_the_row(model, wavs, tmp_path, capsys):
    trials = tmp_path / "t.txt"
    trials.write_text(f"1 {wavs[0]} {wavs[1]}\n# x\n0 {wavs[0]} no/x.wav\n")
    argv = ["--model", str(model), "--trials", str(trials)]
    refused(verify_cli.main, argv, capsys, f"{trials}:3", "no/x.wav")


def test_duplicate_trials_are_counted_once(model, wavs, tmp_path, capsys):
    a, b, c = map(str, wavs[:3])
    rows = [(a, b), (a, c), (a, b), (b, c), (a, b), (a, c)]  # 3 repeats
    trials = tmp_path / "t.txt"
    trials.write_text("".join(f"{e} {t}\n" for e, t in rows))
    out = tmp_path / "s.txt"
    code, cap = trial_run(model, trials, capsys, "--out", str(out))
    assert code == 0
    warned = [ln for ln in cap.err.splitlines() if "duplicate" in ln]
    assert len(warned) == 1 and "3 duplicate trial" in warned[0]
    assert warned[0].startswith("dampit-verify: warning: ")
    assert str(trials) in warned[0]
    scored = [ln.split()[:2] for ln in out.read_text().splitlines()]
    assert scored == [list(r) for r in rows]  # each still scored


# ------------------------------------------------------- model folder --


def edited_model(model, tmp_path, threshold="keep", scale=None):
    """A copy of ``model`` whose ``dampit_export.json`` and
    ``hyperparams.yaml`` have another threshold (None: none) and/or whose
    weights are multiplied by ``scale``."""
    new = tmp_path / "edited"
    shutil.copytree(model, new)
    spec_file = new / "dampit_export.json"
    spec = json.loads(spec_file.read_text())
    if threshold != "keep":
        yaml_file = new / "hyperparams.yaml"
        line = f"\nthreshold: {spec.pop('threshold')}\n"
        text = yaml_file.read_text()
        assert text.count(line) == 1
        if threshold is None:
            text = text.replace(line, "\nthreshold: null\n")
        else:
            spec["threshold"] = threshold
            text = text.replace(line, f"\nthreshold: {threshold}\n")
        yaml_file.write_text(text)
    spec_file.write_text(json.dumps(spec))
    if scale is not None:
        ckpt = new / "embedding_model.ckpt"
        state = torch.load(ckpt, weights_only=True)
        for k, v in state.items():
            if v.is_floating_point() and k.endswith("weight"):
                state[k] = v * scale
        torch.save(state, ckpt)
    return new


def test_missing_threshold_warns_once(model, wavs, tmp_path, capsys):
    """No calibrated threshold: one warning naming 0.25 and the folder;
    the decision is made at 0.25."""
    bare = edited_model(model, tmp_path, threshold=None)
    assert verify_cli.main(verify_args(bare, wavs)) == 0
    cap = capsys.readouterr()
    warned = [ln for ln in cap.err.splitlines() if "threshold" in ln]
    assert len(warned) == 1 and "0.25" in warned[0] and str(bare) in warned[0]
    score = float(cap.out.split()[1])
    assert "threshold 0.2500" in cap.out
    assert cap.out.strip().endswith(
        "same speaker" if score > 0.25 else "different speakers"
    )
    # --threshold given: nothing to warn about.
    assert verify_cli.main(verify_args(bare, wavs, "--threshold", "0.3")) == 0
    assert "warning" not in capsys.readouterr().err
    # dampit-embed decides nothing: no threshold warning either.
    out = tmp_path / "emb"
    argv = [str(wavs[0]), "--model", str(bare), "--out", str(out)]
    assert embed_cli.main(argv + ["--no-progress"]) == 0
    assert "threshold" not in capsys.readouterr().err


def test_stored_nan_threshold_is_an_error(model, wavs, tmp_path, capsys):
    bad = edited_model(model, tmp_path, threshold=math.nan)
    err = refused(verify_cli.main, verify_args(bad, wavs), capsys, bad)
    assert "threshold" in err


@pytest.mark.parametrize("scale", [math.nan, 1e10], ids=["nan", "overflow"])
def test_non_finite_embeddings_name_the_model(
    model, wavs, tmp_path, capsys, scale
):
    """NaN weights, or finite weights that overflow to NaN embeddings: an
    error naming the model folder, never a 'score nan' decision, and no
    embedding store written."""
    bad = edited_model(model, tmp_path, scale=scale)
    args = verify_args(bad, wavs, "--no-progress")
    err = refused(verify_cli.main, args, capsys, bad)  # stdout is empty
    assert "NaN" in err or "weights" in err
    out = tmp_path / "e"
    argv = [
        "--model",
        str(bad),
        str(wavs[0]),
        "--out",
        str(out),
        "--no-progress",
    ]
    refused(embed_cli.main, argv, capsys, bad)
    assert not (out / "embeddings.npy").exists()


# ----------------------------------------- read-only and full folders --

# Runs CLI calls in one process and prints their exit codes and stderr,
# then what the "full" folder holds (names, and the old score file).
CASES_SCRIPT = """
import contextlib, io, json, os, sys
from dampit.cli import embed, verify
cases, full = json.loads(sys.argv[1]), sys.argv[2]
res = {}
for name, prog, argv in cases:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        code = {"embed": embed.main, "verify": verify.main}[prog](argv)
    res[name] = (code, err.getvalue())
res["listing"] = sorted(os.listdir(full))
res["old"] = open(os.path.join(full, "scores.txt")).read()
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def write_faults(model, wavs, tmp_path_factory):
    """dampit-embed and dampit-verify writing into a read-only tmpfs, and
    dampit-verify writing 3,000 score lines into an 8 kB tmpfs that holds
    an old score file (ENOSPC); in a user and mount namespace, so nothing
    outside sees the mounts."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not available")
    tmp = tmp_path_factory.mktemp("faults")
    ro, full = tmp / "ro", tmp / "full"
    ro.mkdir(), full.mkdir()
    trials = tmp / "t.txt"
    pick = np.random.default_rng(0).integers(0, len(wavs), size=(3000, 2))
    trials.write_text("".join(f"{wavs[a]} {wavs[b]}\n" for a, b in pick))
    m = ["--model", str(model), "--no-progress"]
    t = [*m, "--trials", str(trials), "--out"]
    cases = [
        ("ro_embed", "embed", [*m, str(wavs[0]), "--out", str(ro / "emb")]),
        ("ro_verify", "verify", [*t, str(ro / "s.txt")]),
        ("full", "verify", [*t, str(full / "scores.txt")]),
        (
            "full_embed",
            "embed",
            [*m, *map(str, wavs), "--out", str(full / "e")],
        ),
    ]
    q = shlex.quote
    body = (
        f"mount -t tmpfs -o ro,size=1m dampit {q(str(ro))} || exit 99; "
        f"mount -t tmpfs -o size=8k dampit {q(str(full))} || exit 99; "
        f'echo "a b 0.5" > {q(str(full / "scores.txt"))}; exec "$@"'
    )
    cmd = [sys.executable, "-c", CASES_SCRIPT, json.dumps(cases), str(full)]
    res = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", body, "sh", *cmd],
        capture_output=True,
        text=True,
    )
    if res.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout), ro, full


def test_read_only_output_folder(write_faults):
    """Refused before any work: one line naming --out and the cause."""
    res, ro, _ = write_faults
    for case, out in (("ro_embed", ro / "emb"), ("ro_verify", ro / "s.txt")):
        code, err = res[case]
        assert code == 2
        one_line_error(err, "--out", out, "Read-only file system")


def test_disk_full_names_the_output_and_keeps_the_old_file(write_faults):
    """ENOSPC: one error line naming the file and the cause; the old file
    is intact and no temporary file is left."""
    res, _, full = write_faults
    code, err = res["full"]
    assert code == 2
    line = one_line_error(err, full / "scores.txt", alone=False)
    assert line.endswith("No space left on device")
    assert err.count("duplicate trial") == 1  # logged once, one line
    assert res["listing"] == ["scores.txt"] and res["old"] == "a b 0.5\n"
    # The embedding store: ENOSPC named, nothing of it left behind.
    code, err = res["full_embed"]
    assert code == 2
    one_line_error(err, full / "e", "No space left on device")


# ------------------------------------------------- names, CSV, devices --


def test_file_name_with_a_line_break_is_refused_first(
    model, wavs, tmp_path, capsys
):
    """A folder holding ``a\\nb.wav``: refused before any audio is read
    (no progress bar), nothing written; so is an ID holding a line
    separator that ``ids.txt`` would split."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(wavs[0], folder / "fine.wav")
    shutil.copy(wavs[1], folder / "two\nlines.wav")
    out = tmp_path / "e"
    argv = ["--model", str(model), str(folder), "--out", str(out)]
    refused(embed_cli.main, argv, capsys, "line break")
    assert not out.exists()
    listed = tmp_path / "list.txt"
    listed.write_text(f"spk\u2028one\t{wavs[0]}\n")
    argv = ["--model", str(model), str(listed), "--out", str(out)]
    refused(embed_cli.main, argv, capsys, f"{listed}:1", "2 lines")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "list.txt"]


def test_a_link_loop_in_an_input_folder_is_refused_first(
    model, wavs, tmp_path, capsys
):
    """``alice/up -> ..`` would list every file again and again: one line
    naming both paths of the folder, before any audio is read, nothing
    written."""
    data = tmp_path / "loop"
    (data / "alice").mkdir(parents=True)
    shutil.copy(wavs[0], data / "alice" / "1.wav")
    (data / "alice" / "up").symlink_to("..")
    out = tmp_path / "e"
    argv = ["--model", str(model), str(data), "--out", str(out)]
    refused(embed_cli.main, argv, capsys, data / "alice" / "up", "one folder")
    assert not out.exists()


@pytest.mark.parametrize("row", ["a,1.0,{wav},extra", "a,1.0"])
def test_csv_row_of_the_wrong_length_names_the_line(
    model, wavs, tmp_path, capsys, row
):
    csv = tmp_path / "data.csv"
    csv.write_text(
        f"ID,duration,wav\nb,2.0,{wavs[1]}\n{row.format(wav=wavs[0])}\n"
    )
    trials = tmp_path / "t.txt"
    trials.write_text("1 a b\n")
    argv = ["--model", str(model), "--trials", str(trials), "--csv", str(csv)]
    line = refused(verify_cli.main, argv, capsys, f"{csv}:3")
    assert f"{row.count(',') + 1} fields, the header has 3" in line


def test_csv_segments_of_one_file_are_refused(model, wavs, tmp_path, capsys):
    """Two CSV rows naming segments of one file (two speakers' recordings
    joined): the commands embed whole files, so each is refused in one
    line naming the CSV and the row, before any embedding (no progress
    bar); dampit-calibrate the same. Rows covering their file are fine,
    two IDs of one file too."""
    a, rate = sf.read(wavs[0], dtype="int16")
    b, _ = sf.read(wavs[2], dtype="int16")
    joined = tmp_path / "long.wav"
    sf.write(joined, np.concatenate([a, b]), rate, subtype="PCM_16")
    n = len(a) + len(b)
    csv = tmp_path / "data.csv"
    csv.write_text(
        "ID,duration,wav,start,stop,spk_id\n"
        f"s1/seg1,1.0,{joined},0,{len(a)},s1\n"
        f"s2/seg2,1.0,{joined},{len(a)},{n},s2\n"
        f"s1/all,1.0,{joined},0,{n},s1\n"
        f"s2/one,1.0,{wavs[2]},0,{len(b)},s2\n"
        f"s1/again,1.0,{joined},,None,s1\n"
    )
    trials = tmp_path / "t.txt"
    argv = ["--model", str(model), "--trials", str(trials), "--csv", str(csv)]
    for text, row, span in [
        ("s1/seg1 s2/seg2\n", "s1/seg1", f"start 0, stop {len(a)}"),
        ("s1/all s2/seg2\n", "s2/seg2", f"start {len(a)}, stop {n}"),
    ]:
        trials.write_text(text)
        line = refused(verify_cli.main, argv, capsys, csv, f"row {row}", span)
        assert f"({n} frames)" in line
    trials.write_text("1 s1/all s1/seg1\n0 s1/all s2/one\n")
    code = calibrate_cli.main(argv + ["--eer", "--force", "--dry-run"])
    cap = capsys.readouterr()
    assert code == 2 and "Traceback" not in cap.err, cap.err
    one_line_error(cap.err, csv, "row s1/seg1", alone=False)
    # Whole files, one of them under two IDs (embedded once).
    trials.write_text("1 s1/all s1/again\n0 s1/again s2/one\n")
    out = tmp_path / "scores.txt"
    assert verify_cli.main(argv + ["--out", str(out)]) == 0
    enrol, test, scores, _ = read_scores(out)
    assert (enrol, test) == (["s1/all", "s1/again"], ["s1/again", "s2/one"])
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    code = calibrate_cli.main(argv + ["--eer", "--force", "--dry-run"])
    assert code == 0, capsys.readouterr().err


def test_a_pipe_as_score_file_is_not_replaced(model, wavs, tmp_path, capsys):
    pipe = tmp_path / "scores.fifo"
    os.mkfifo(pipe)
    trials = tmp_path / "t.txt"
    trials.write_text(f"1 {wavs[0]} {wavs[1]}\n")
    argv = ["--model", str(model), "--trials", str(trials), "--out", str(pipe)]
    refused(verify_cli.main, argv, capsys, pipe, "not a regular file")
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)


def test_out_replaces_only_a_score_file(model, wavs, tmp_path, capsys):
    """``--out`` naming the trial list, the CSV or a file that is not a
    score file: refused before any work, the file unchanged."""
    trials = tmp_path / "t.txt"
    trials.write_text(f"1 {wavs[0]} {wavs[1]}\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    argv = ["--model", str(model), "--trials", str(trials), "--out"]
    refused(verify_cli.main, argv + [str(trials)], capsys, "--trials")
    refused(verify_cli.main, argv + [str(notes)], capsys, notes, "not a score")
    inside = model / "scores.txt"
    refused(verify_cli.main, argv + [str(inside)], capsys, inside, "--model")
    assert not inside.exists()
    assert trials.read_text() == f"1 {wavs[0]} {wavs[1]}\n"
    assert notes.read_text() == "my notes\n"
    scores = tmp_path / "scores.txt"
    scores.write_text("x y 1 0.25\n")  # an old score file: replaced
    code, _ = trial_run(model, trials, capsys, "--out", str(scores))
    assert code == 0
    enrol, test, _, labels = read_scores(scores)
    assert (enrol, test, labels.tolist()) == (
        [str(wavs[0])],
        [str(wavs[1])],
        [1],
    )
