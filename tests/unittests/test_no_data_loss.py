"""No command deletes or overwrites what it did not make.

``dampit-export RUN OUT --overwrite`` replaces only a model folder of
dampit's; OUT inside RUN, RUN inside OUT and OUT = RUN are refused with the
run untouched. A writer killed mid-way (SIGTERM: cleaned up at once;
SIGKILL: by the next writer of the same output) leaves no hidden temporary
folder. A disk that cannot take the model folder is one line, not a
traceback.
"""

import importlib.util
import json
import os
import pathlib
import runpy
import shutil
import signal
import subprocess
import sys
import time

import pytest

from dampit.cli.export import main
from dampit.utils.atomic import atomic_folder

HERE = pathlib.Path(__file__).resolve().parent
build_run = runpy.run_path(str(HERE / "test_export.py"))["build_run"]
_spec = importlib.util.spec_from_file_location(
    "forked_main", HERE.parent / "forked_main.py"
)
forked_main = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(forked_main)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run, _, _ = build_run(tmp_path_factory.mktemp("nodataloss"))
    return run


def tree(folder):
    """Every path under ``folder`` with its size (a file) or None."""
    out = {}
    for base, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(base, name)
            size = os.path.getsize(path) if name in files else None
            out[os.path.relpath(path, folder)] = size
    return out


def refused(argv, capsys, *words):
    """``dampit-export argv``: exit 2, one line naming ``words``."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert str(word) in err, (word, err)
    return err


def test_export_into_the_run_itself_is_refused(run, tmp_path, capsys):
    run = shutil.copytree(run, tmp_path / "run")  # the others keep theirs
    before = tree(run)
    refused([run, run, "--overwrite"], capsys, run, "cannot be the run")
    refused([run, run / "model"], capsys, "inside it")
    refused([run, run / "save" / "m", "--overwrite"], capsys, "inside it")
    refused([run, run.parent, "--overwrite"], capsys, "hold it")
    assert tree(run) == before


def test_overwrite_replaces_only_a_model_folder(run, tmp_path, capsys):
    mine = tmp_path / "photos"
    (mine / "2024").mkdir(parents=True)
    (mine / "2024" / "a.jpg").write_bytes(b"\xff\xd8 not a model")
    before = tree(mine)
    refused([run, mine, "--overwrite"], capsys, mine, "nothing replaced")
    assert tree(mine) == before
    plain = tmp_path / "notes.txt"  # a file where the folder should go
    plain.write_text("keep")
    refused([run, plain, "--overwrite"], capsys, plain, "not a folder")
    assert plain.read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "photos"]


def test_unwritable_destinations_are_one_line(run, tmp_path, capsys):
    """Where no folder can be made (under /proc, below a file): one line
    naming the model folder, nothing written."""
    refused([run, "/proc/dampit-model"], capsys, "/proc/dampit-model")
    below = tmp_path / "file.txt"
    below.write_text("x")
    refused([run, below / "model"], capsys, below / "model")
    assert os.listdir(tmp_path) == ["file.txt"]


def test_full_disk_is_one_line_and_leaves_nothing(run, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("cannot mount a 64 kB tmpfs here")
    try:
        refused([run, disk / "model"], capsys, disk / "model")
        assert os.listdir(disk) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


# dampit-export into a model folder on a small full tmpfs (argv: run, the
# model folder): the plain folder fits, a second copy with the TorchScript
# or ONNX program does not.
FULL_CHILD = """
import contextlib, io, json, os, sys
from dampit.cli.export import main
run, model = sys.argv[1:]

def files():
    return {n: open(os.path.join(model, n), "rb").read().hex()
            for n in sorted(os.listdir(model))}

res = {"plain": main([run, model])}
before = files()
for flag in ("--torchscript", "--onnx"):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([run, model, "--overwrite", flag])
    left = sorted(os.listdir(os.path.dirname(model)))
    res[flag] = [code, err.getvalue(), left, files() == before]
print(json.dumps(res))
"""


def test_full_disk_for_torchscript_or_onnx_is_one_line(run, tmp_path):
    """The programs are written by dampit, not by torch's writer (which
    aborts the process on a full disk): one line naming the file, the old
    model folder intact, no temporary folder or lock left."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not available")
    ref = tmp_path / "ref"
    assert main([str(run), str(ref), "--torchscript"]) == 0
    pages = {n: -(-os.path.getsize(ref / n) // 4096) * 4096 for n in tree(ref)}
    ts = pages.pop("embedding_model.ts")
    plain = 4096 + sum(pages.values())  # the folder and its files
    size_k = (2 * plain + ts // 2) // 1024  # the ONNX program is larger
    disk = tmp_path / "disk"
    disk.mkdir()
    body = (
        f'mount -t tmpfs -o size={size_k}k dampit {disk} || exit 99; exec "$@"'
    )
    model = disk / "model"
    res = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", body, "sh"]
        + [sys.executable, "-c", FULL_CHILD, str(run), str(model)],
        capture_output=True,
        text=True,
    )
    if res.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["plain"] == 0
    for flag, name in (("--torchscript", "ts"), ("--onnx", "onnx")):
        code, err, left, intact = out[flag]
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.strip() == (
            f"dampit-export: error: cannot write {model}: No space left on "
            f"device ({model / f'embedding_model.{name}'})"
        )
        assert left == ["model"] and intact


def start_export(run, model, *flags):
    """A ``dampit-export run model`` process (forked from this one), let
    go, at the moment its temporary folder appears (its work has begun)."""
    child = forked_main.ForkedMain("dampit.cli.export", [run, model, *flags])
    prefix = f".{model.name}.tmp-"
    before = set(os.listdir(model.parent))
    child.go()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.proc.is_alive():
        new = set(os.listdir(model.parent)) - before
        if any(n.startswith(prefix) for n in new):
            return child
        time.sleep(0.002)
    child.proc.kill()
    raise AssertionError(f"no temporary folder seen: {child.finish()}")


def test_sigterm_leaves_no_temporary_folder(run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    child = start_export(run, out / "model")
    child.proc.terminate()  # SIGTERM
    assert child.finish(120)[0] == 128 + signal.SIGTERM
    assert os.listdir(out) == []


def test_what_a_sigkill_left_goes_with_the_next_write(run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".model.tmp-mine").mkdir()  # not a name dampit makes: kept
    child = start_export(run, out / "model")
    child.proc.kill()  # SIGKILL
    assert child.finish()[0] == -signal.SIGKILL
    left = set(os.listdir(out)) - {".model.tmp-mine", ".model.lock"}
    assert [n[:11] for n in left] == [".model.tmp-"], left
    with atomic_folder(out / "model") as tmp:  # the next write
        pathlib.Path(tmp, "dampit_export.json").write_text("{}")
    assert sorted(os.listdir(out)) == [".model.tmp-mine", "model"]
