"""dampit-embed --window / --hop / --trim on real speech.

The README's command runs as written (its model, input and output
replaced) on two minutes of read speech with the shipped model; its rows
are counted by hand and read back through the store's segments. Bad
values of the options give one line, before any work, and write nothing;
bad files stop the run naming them, or ``--skip-bad`` lists them.
"""

import pathlib
import shlex

import numpy as np
import pytest
import soundfile as sf

from dampit.cli import embed as embed_cli
from dampit.inference.embedding_store import EmbeddingStore

REPO = pathlib.Path(__file__).resolve().parents[2]
PRETRAINED = REPO / "pretrained" / "dampit-so762"


def readme_command():
    """The README's ``dampit-embed ... --window`` line, as words."""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("dampit-embed") and "--window" in line:
            return shlex.split(line, comments=True)
    raise AssertionError("README.md has no dampit-embed --window line")


@pytest.fixture(scope="module")
def long_speech(shared_data, tmp_path_factory):
    """Two minutes of one so762 speaker's sentences, end to end."""
    files = sorted((shared_data / "so762" / "7001").glob("*.flac"))
    audio = np.concatenate([sf.read(f, dtype="float32")[0] for f in files])
    path = tmp_path_factory.mktemp("long") / "meeting.flac"
    sf.write(path, audio[: 16000 * 120 + 9000], 16000)
    return path


def run(argv, capsys):
    """``(exit status, stdout, stderr)`` of dampit-embed, argparse's
    exits included."""
    try:
        code = embed_cli.main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_the_readme_command(long_speech, tmp_path, capsys):
    """120.5625 s by 1.5 s windows: 80 whole windows, and the last
    0.5625 s (less than half a window) dropped."""
    words = readme_command()
    assert words[:3] == ["dampit-embed", "--model", "my_model"]
    swap = {"my_model": PRETRAINED, "meeting.wav": long_speech}
    swap["windows/"] = tmp_path / "windows"
    code, out, err = run([swap.get(w, w) for w in words[1:]], capsys)
    assert code == 0, err
    store = EmbeddingStore(tmp_path / "windows")
    assert store.embeddings.shape == (80, 256)
    file_id = store.segments()[0][0]
    assert file_id.endswith("meeting")
    want = [(file_id, 1.5 * k, 1.5 * k + 1.5) for k in range(80)]
    assert store.segments() == want
    assert store.ids[-1] == f"{file_id}@118.500-120.000"
    paths = (tmp_path / "windows" / "paths.txt").read_text().splitlines()
    assert paths == [str(long_speech)] * 80
    assert "80 embeddings of size 256" in out and "segments.tsv" in out


def test_windows_and_trim_of_a_file_with_a_gap(shared_data, tmp_path, capsys):
    """Overlapping windows (hop 0.75 s) of 14.853 s of read speech with
    6 s of digital silence inserted at 6 s: --trim leaves out the 7
    windows inside the gap and keeps the 18 outside it."""
    x = sf.read(shared_data / "so762/9615/096150026.flac")[0]
    gap = np.r_[x[: 16000 * 6], np.zeros(16000 * 6), x[16000 * 6 :]]
    path = tmp_path / "gap.wav"
    sf.write(path, gap, 16000, subtype="FLOAT")  # 20.853 s
    base = ["--model", PRETRAINED, path, "--window", "1.5", "--hop", "0.75"]
    code, out, err = run(base + ["--out", tmp_path / "all"], capsys)
    assert code == 0, err
    every = EmbeddingStore(tmp_path / "all").segments()
    assert [s for _, s, _ in every] == [0.75 * k for k in range(27)]
    code, out, err = run(base + ["--out", tmp_path / "t", "--trim"], capsys)
    assert code == 0, err
    kept = set(EmbeddingStore(tmp_path / "t").segments())
    inside = {seg for seg in every if seg[1] >= 6.0 and seg[2] <= 12.0}
    outside = {seg for seg in every if seg[2] <= 6.0 or seg[1] >= 12.0}
    assert (len(inside), len(outside)) == (7, 18)
    assert not inside & kept and outside <= kept
    assert f"{27 - len(kept)} of 27 left out by --trim" in out


@pytest.mark.parametrize(
    "extra, names",
    [
        (["--window", "0"], ["--window", "'0'", "seconds > 0"]),
        (["--window", "-1.5"], ["--window", "'-1.5'", "seconds > 0"]),
        (["--window", "nan"], ["--window", "'nan'", "seconds > 0"]),
        (["--window", "1.5", "--hop", "0"], ["--hop", "'0'", "seconds > 0"]),
        (["--window", "1.5", "--hop", "3"], ["--hop 3", "longer"]),
        (["--window", "1.5", "--hop", "0.005"], ["--hop 0.005", "0.01 s"]),
        (["--window", "0.04"], ["--window 0.04", "0.05 s", "400 samples"]),
        (["--hop", "1.5"], ["--hop needs --window"]),
        (["--trim"], ["--trim needs --window"]),
    ],
)
def test_bad_window_values_one_line(
    long_speech, tmp_path, capsys, extra, names
):
    out = tmp_path / "e"
    argv = ["--model", PRETRAINED, long_speech, "--out", out, *extra]
    code, stdout, err = run(argv, capsys)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("dampit-embed: error: ")
    for name in names:
        assert name in err, (name, err)
    assert not out.exists()


def test_an_id_with_a_tab_is_refused_first(long_speech, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text(f"a\tb\t{long_speech}\n")
    out = tmp_path / "e"
    argv = ["--model", PRETRAINED, listing, "--out", out, "--window", "1.5"]
    code, stdout, err = run(argv, capsys)
    assert code == 2 and "'a\\tb' has a tab" in err and not out.exists()


def test_bad_files_stop_the_run_or_are_skipped(shared_data, tmp_path, capsys):
    """A file shorter than half a window, and one with a NaN: named in
    one line, before the good file after them is embedded; or listed
    by --skip-bad, and the good file's windows written."""
    good = shared_data / "so762/9615/096150026.flac"  # 14.853 s
    x = sf.read(good)[0]
    short = tmp_path / "short.wav"
    sf.write(short, x[:8000], 16000)  # 0.5 s
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.r_[x[:48000], np.nan], 16000, subtype="FLOAT")
    out = tmp_path / "e"
    for path, what in ((short, "half a window"), (nan, "NaN")):
        argv = ["--model", PRETRAINED, path, good, "--out", out]
        code, _, err = run(argv + ["--window", "1.5", "--no-progress"], capsys)
        assert code == 2 and what in err and str(path) in err, err
        assert len(err.strip().splitlines()) == 1 and not out.exists()
    argv = ["--model", PRETRAINED, short, good, nan, "--out", out]
    code, _, err = run(argv + ["--window", "3", "--skip-bad"], capsys)
    assert code == 0, err
    listed = (out / "bad_files.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == [str(short), str(nan)]
    store = EmbeddingStore(out)
    assert [(s, e) for _, s, e in store.segments()] == [
        (0.0, 3.0),
        (3.0, 6.0),
        (6.0, 9.0),
        (9.0, 12.0),
        (12.0, 14.853),
    ]


def test_trim_that_leaves_nothing(tmp_path, long_speech, capsys):
    """0.1 s of speech in 3 s of silence: no window is 20 % speech."""
    x = np.zeros(48000, np.float32)
    x[20000:21600] = sf.read(long_speech, dtype="float32")[0][80000:81600]
    path = tmp_path / "click.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    out = tmp_path / "e"
    argv = ["--model", PRETRAINED, path, "--out", out, "--window", "1.5"]
    code, _, err = run(argv + ["--trim"], capsys)
    assert code == 2 and "left out all 2 windows" in err and not out.exists()
