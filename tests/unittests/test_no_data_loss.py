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
from dampit.dataio.preparation import DataPreparationError
from dampit.dataio.prepare_folder import prepare_folder
from dampit.dataio.prepare_voxceleb import prepare_voxceleb
from dampit.dataio.prepared import MARKER, PreparedFolderError
from dampit.training.run_setup import check_arguments, start_run
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
from dampit.dataio.preparation import DataPreparationError
from dampit.dataio.prepare_folder import prepare_folder
from dampit.dataio.prepare_voxceleb import prepare_voxceleb
from dampit.dataio.prepared import MARKER, PreparedFolderError
from dampit.training.run_setup import check_arguments, start_run
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


# ------------------------------------------------- the prepared folder

real_tree = runpy.run_path(str(HERE / "test_prepare_folder.py"))["_real_tree"]
MINI = HERE.parents[1] / "recipes" / "VoxCeleb" / "hparams" / "mini.yaml"


def user_folder(shared_data, root):
    """Six real speakers' recordings and the user's own ``trials.txt``,
    ``train.csv`` and ``bad_files.txt`` beside them."""
    real_tree(shared_data, root, [f"s{k}" for k in range(6)])
    (root / "trials.txt").write_text("1 my/a my/b\n")
    (root / "train.csv").write_text("my,own,table\n")
    (root / "bad_files.txt").write_text("my notes\n")
    return root


def never_read(monkeypatch):
    """Fail the test when an audio file is checked."""

    def read(path):
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr("dampit.dataio.preparation.check_audio", read)


def test_recipe_never_prepares_into_the_data_folder(shared_data, tmp_path):
    """``train.py mini.yaml --data_folder=X --prep_folder=X``: one line
    naming X, before the output folder or any prepared file is made; the
    user's trials.txt, train.csv and bad_files.txt are untouched."""
    data = user_folder(shared_data, tmp_path / "X")
    before = tree(data)
    out = tmp_path / "out"
    argv = [str(MINI), f"--data_folder={data}", f"--prep_folder={data}"]
    argv += [f"--output_folder={out}", "--n_test_speakers=2", "--P=4"]
    with pytest.raises(PreparedFolderError) as err:
        start_run(argv)
    assert "\n" not in str(err.value) and str(data) in str(err.value)
    assert tree(data) == before and not out.exists()


@pytest.mark.parametrize("where", ["same", "inside", "holds"])
def test_prep_folder_and_data_folder_apart(
    where, shared_data, tmp_path, monkeypatch
):
    """A prepared folder that is the data folder, lies inside it or holds
    it is refused by both preparations before any file is read."""
    data = user_folder(shared_data, tmp_path / "X")
    save = {"same": data, "inside": data / "prep", "holds": tmp_path}[where]
    before = tree(tmp_path)
    never_read(monkeypatch)
    with pytest.raises(PreparedFolderError, match="cannot be a data folder"):
        prepare_folder(data, save, n_test_speakers=2)
    with pytest.raises(PreparedFolderError, match="cannot be a data folder"):
        prepare_voxceleb(save, vox1_folder=data, trial_lists=[])
    assert tree(tmp_path) == before


def test_a_folder_of_other_files_is_refused(shared_data, tmp_path, monkeypatch):
    """A folder holding files but no mark of dampit's is refused in one
    line naming it, by the recipe's checks and by both preparations,
    before any file is read; nothing in it changes."""
    data = real_tree(shared_data, tmp_path / "data", ["a", "b", "c", "d"])
    mine = user_folder(shared_data, tmp_path / "mine")
    before = tree(mine)
    never_read(monkeypatch)
    hp = {"data_folder": str(data), "output_folder": str(tmp_path / "r")}
    hp["prep_folder"] = str(mine)
    for call in (
        lambda: check_arguments(hp, "mini.yaml"),
        lambda: prepare_folder(data, mine, n_test_speakers=2),
        lambda: prepare_voxceleb(mine, vox1_folder=data, trial_lists=[]),
    ):
        with pytest.raises(PreparedFolderError) as err:
            call()
        assert str(err.value).startswith(f"prep_folder={mine} holds files")
        assert "\n" not in str(err.value)
    assert tree(mine) == before


def test_new_empty_marked_or_old_prepared_folders_are_used(
    shared_data, tmp_path
):
    """A new or empty folder is prepared (the marker first); a folder a
    failed preparation left (the marker and bad_files.txt only) and one
    prepared before the marker existed (prepare_opts.json, no marker) are
    prepared again."""
    data = real_tree(shared_data, tmp_path / "data", ["a", "b", "c", "d"])
    (tmp_path / "empty").mkdir()
    for save in (tmp_path / "new", tmp_path / "empty"):
        res = prepare_folder(data, save, n_test_speakers=2)
        assert res["n_train_speakers"] == 2
        assert (save / MARKER).is_file()
    (data / "a" / "broken.wav").write_bytes(b"RIFF not audio")
    failed = tmp_path / "failed"
    with pytest.raises(DataPreparationError, match="1 unusable"):
        prepare_folder(data, failed, n_test_speakers=2)
    assert sorted(os.listdir(failed)) == ["bad_files.txt", MARKER]
    unmarked = tmp_path / "unmarked"  # a refused preparation's list alone
    unmarked.mkdir()
    shutil.copy(failed / "bad_files.txt", unmarked / "bad_files.txt")
    with pytest.warns(UserWarning, match="skipping 1 unusable"):
        res = prepare_folder(data, unmarked, n_test_speakers=2, skip_bad=True)
    assert res["n_bad_skipped"] == 1
    with pytest.warns(UserWarning, match="skipping 1 unusable"):
        res = prepare_folder(data, failed, n_test_speakers=2, skip_bad=True)
    assert res["n_bad_skipped"] == 1
    old = tmp_path / "new"
    os.remove(old / MARKER)
    with pytest.warns(UserWarning, match="skipping 1 unusable"):
        res = prepare_folder(data, old, n_test_speakers=2, skip_bad=True)
    assert res["n_bad_skipped"] == 1 and (old / MARKER).is_file()
