"""tools/convert_voxceleb2.py: parallel, resumable m4a -> 16 kHz wav.

ffmpeg is usually not installed here, so most tests drive the converter
with a small stand-in executable that behaves like the ffmpeg command line
it is given (``-i IN ... -ac 1 -ar 16000 ... -f wav OUT``) on inputs that
are wav data named ``.m4a``; one test uses the real ffmpeg when present.
"""

import importlib.util
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from speechbrain.dataio.dataio import load_data_csv

from dampit.dataio.prepare_voxceleb import prepare_voxceleb

REPO = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "convert_voxceleb2", REPO / "tools" / "convert_voxceleb2.py"
)
conv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conv)

STUB = """#!{python} -S
# Stand-in for ffmpeg (standard library only, starts fast): read the 16-bit
# wav data of -i IN, down-mix, resample to -ar (nearest sample), write a
# 16-bit mono wav to the last argument; fail like ffmpeg on "bad" inputs.
# With STUB_HOLD set, it then says so (the file STUB_HOLD.started) and
# waits until the file STUB_HOLD exists.
import array, os, sys, time, wave
args = sys.argv[1:]
src, dst = args[args.index("-i") + 1], args[-1]
rate = int(args[args.index("-ar") + 1])
assert args[args.index("-ac") + 1] == "1"
assert args[args.index("-f") + 1] == "wav"
if "bad" in src:
    sys.stderr.write(src + ": Invalid data found when processing input\\n")
    sys.exit(1)
with wave.open(src) as w:
    ch, sr, n = w.getnchannels(), w.getframerate(), w.getnframes()
    x = array.array("h", w.readframes(n))
mono = [sum(x[i * ch : (i + 1) * ch]) // ch for i in range(n)]
m = n * rate // sr
y = array.array("h", (mono[min(n - 1, k * sr // rate)] for k in range(m)))
with wave.open(dst, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(y.tobytes())
hold = os.environ.get("STUB_HOLD")
if hold:
    open(hold + ".started", "w").close()
    while not os.path.exists(hold):
        time.sleep(0.01)
"""


@pytest.fixture
def stub_ffmpeg(tmp_path):
    path = tmp_path / "bin" / "ffmpeg-stub"
    path.parent.mkdir()
    path.write_text(STUB.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def make_aac(root, n_spk=2, bad=(), n_utt=3):
    """``<root>/dev/aac/<spk>/<vid>/<utt>.m4a``: 44.1 kHz stereo wav data
    under an .m4a name (ffmpeg probes the content, not the name)."""
    aac = root / "dev" / "aac"
    lengths = {}
    for s in range(n_spk):
        for u in range(n_utt):
            rel = f"id0{s:04d}/vid{u % 2}/{u:05d}"
            p = aac / (rel + ".m4a")
            p.parent.mkdir(parents=True, exist_ok=True)
            n = 4410 * (u + 1)
            t = np.arange(n) / 44100
            x = np.stack([np.sin(2 * np.pi * 220 * t)] * 2, 1) * 0.2
            sf.write(str(p), x, 44100, format="WAV", subtype="PCM_16")
            lengths[rel] = n
    for rel in bad:
        p = aac / (rel + ".m4a")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"corrupt")
    return aac, lengths


def _check_outputs(out_root, lengths):
    for rel, n in lengths.items():
        info = sf.info(str(out_root / (rel + ".wav")))
        assert (info.samplerate, info.channels) == (16000, 1)
        assert abs(info.frames - n * 16000 / 44100) <= 1
    assert not list(out_root.rglob("*.part"))
    assert not list(out_root.parent.glob(".*.lock"))


def test_converts_in_parallel_into_mirror(tmp_path, stub_ffmpeg):
    aac, lengths = make_aac(tmp_path / "vox2", n_utt=6)
    # The VoxCeleb2 root is accepted for its dev/aac folder.
    res = conv.convert_voxceleb2(
        str(tmp_path / "vox2"), workers=3, ffmpeg=stub_ffmpeg, progress=False
    )
    out = tmp_path / "vox2" / "dev" / "wav"
    assert res == {
        "converted": 12,
        "skipped": 0,
        "failed": [],
        "output": str(out),
    }
    _check_outputs(out, lengths)
    # The preparer finds the mirror.
    prep = prepare_voxceleb(
        tmp_path / "p", vox2_folder=tmp_path / "vox2", trial_lists=()
    )
    ids = [*load_data_csv(prep["train_csv"]), *load_data_csv(prep["dev_csv"])]
    assert sorted(ids) == sorted(lengths)


def test_resume_skips_valid_outputs_and_redoes_bad_ones(tmp_path, stub_ffmpeg):
    aac, lengths = make_aac(tmp_path / "vox2")
    conv.convert_voxceleb2(str(aac), ffmpeg=stub_ffmpeg, progress=False)
    out = tmp_path / "vox2" / "dev" / "wav"
    # Nothing to do: ffmpeg is not even looked for.
    res = conv.convert_voxceleb2(
        str(aac), ffmpeg="no-such-ffmpeg", progress=False
    )
    assert (res["converted"], res["skipped"]) == (0, 6)
    # An interrupted run leaves a .part, a missing and a truncated output.
    (out / "id00000/vid0/00000.wav").unlink()
    (out / "id00001/vid1/00001.wav").write_bytes(b"RIFF")
    (out / "id00001/vid0/.00000.wav.0123abcd.part").write_bytes(b"half")
    # A 44.1 kHz output from some other tool is not accepted either.
    sf.write(str(out / "id00001/vid0/00002.wav"), np.zeros(100), 44100)
    todo, done = conv.list_jobs(str(aac), str(out))
    assert sorted(os.path.relpath(w, out) for _, w in todo) == [
        "id00000/vid0/00000.wav",
        "id00001/vid0/00002.wav",
        "id00001/vid1/00001.wav",
    ]
    mtime = os.path.getmtime(out / "id00000/vid1/00001.wav")
    res = conv.convert_voxceleb2(str(aac), ffmpeg=stub_ffmpeg, progress=False)
    assert (res["converted"], res["skipped"]) == (3, 3)
    assert os.path.getmtime(out / "id00000/vid1/00001.wav") == mtime
    _check_outputs(out, lengths)
    # --overwrite converts everything again.
    res = conv.convert_voxceleb2(
        str(aac), ffmpeg=stub_ffmpeg, overwrite=True, progress=False
    )
    assert res["converted"] == 6


def parts(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.part"))


def test_a_second_converter_is_refused_and_a_killed_ones_part_goes(
    tmp_path, stub_ffmpeg, capsys
):
    """A converter writing into an output holds it: a second one into the
    same output exits 2 with one line and leaves the first one's partial
    file alone; once the first is killed, the next run deletes what it
    left (only the names the converter makes) and converts everything."""
    aac, lengths = make_aac(tmp_path / "vox2", n_spk=1, n_utt=2)
    out = tmp_path / "vox2" / "dev" / "wav"
    hold = tmp_path / "hold"
    first = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "convert_voxceleb2.py")]
        + [str(aac), "--ffmpeg", stub_ffmpeg, "--workers", "1", "--quiet"],
        env=dict(os.environ, STUB_HOLD=str(hold)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its ffmpeg is killed with it
    )
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(f"{hold}.started"):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first converter hangs"
            time.sleep(0.01)
        (partial,) = parts(out)
        before = (out / partial).read_bytes()
        code = conv.main([str(aac), "--ffmpeg", stub_ffmpeg, "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"output {out} is in use by another dampit process" in err
        assert parts(out) == [partial]
        assert (out / partial).read_bytes() == before
        assert not list(out.rglob("*.wav"))
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    assert parts(out) == [partial]  # what the kill left
    mine = ["id00000/vid0/notes.part", "id00000/vid0/.00000.wav.mine.part"]
    for name in mine:
        (out / name).write_text("not the converter's")
    res = conv.convert_voxceleb2(str(aac), ffmpeg=stub_ffmpeg, progress=False)
    assert (res["converted"], res["failed"]) == (2, [])
    assert parts(out) == sorted(mine)
    for name in mine:
        assert (out / name).read_text() == "not the converter's"
    for rel in lengths:
        assert conv.is_valid_wav(str(out / (rel + ".wav")))
    assert not (out.parent / ".wav.lock").exists()


def test_failures_listed_and_others_converted(tmp_path, stub_ffmpeg, capsys):
    aac, lengths = make_aac(tmp_path / "vox2", bad=("id00009/v/bad01",))
    code = conv.main(
        [str(aac), "--ffmpeg", stub_ffmpeg, "--workers", "2", "--quiet"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "bad01.m4a: ffmpeg exit 1" in err and "Invalid data" in err
    out = tmp_path / "vox2" / "dev" / "wav"
    _check_outputs(out, lengths)
    assert not (out / "id00009/v/bad01.wav").exists()
    listed = (out / conv.FAILURES).read_text()
    assert "bad01.m4a" in listed


def test_missing_ffmpeg_is_a_clear_error(tmp_path, capsys):
    aac, _ = make_aac(tmp_path / "vox2", n_spk=1)
    with pytest.raises(conv.FFmpegNotFoundError, match="ffmpeg not found"):
        conv.convert_voxceleb2(str(aac), ffmpeg="no-such-ffmpeg-xyz")
    assert conv.main([str(aac), "--ffmpeg", "no-such-ffmpeg-xyz"]) == 2
    assert "install it" in capsys.readouterr().err
    assert conv.main([str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "vox2" / "dev" / "wav").exists() or not list(
        (tmp_path / "vox2" / "dev" / "wav").rglob("*.wav")
    )


def test_beside_and_default_output(tmp_path, stub_ffmpeg):
    aac, lengths = make_aac(tmp_path / "vox2", n_utt=6)
    assert conv.default_output(str(aac)) == str(
        tmp_path / "vox2" / "dev" / "wav"
    )
    assert conv.default_output(str(tmp_path / "m4a")) == str(
        tmp_path / "m4a_wav"
    )
    res = conv.convert_voxceleb2(
        str(aac), beside=True, ffmpeg=stub_ffmpeg, progress=False
    )
    assert res["output"] == str(aac) and res["converted"] == 12
    _check_outputs(aac, lengths)
    prep = prepare_voxceleb(
        tmp_path / "p", vox2_folder=tmp_path / "vox2", trial_lists=()
    )
    ids = [*load_data_csv(prep["train_csv"]), *load_data_csv(prep["dev_csv"])]
    assert sorted(ids) == sorted(lengths)


@pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg not installed"
)
def test_real_ffmpeg(tmp_path):
    aac, lengths = make_aac(tmp_path / "vox2", n_spk=1)
    res = conv.convert_voxceleb2(str(aac), workers=2, progress=False)
    assert res["converted"] == 3 and not res["failed"]
    _check_outputs(tmp_path / "vox2" / "dev" / "wav", lengths)
