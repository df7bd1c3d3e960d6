"""One run per output folder.

A second run into a folder in use is refused, naming the holder, and
writes nothing; a lock left by a run that died (SIGKILL, a finished pid)
is taken over with a warning; a normal exit of train.py removes it.
"""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from dampit.training.run_lock import LOCK_NAME, RunLock, RunLockError
from dampit.training.run_setup import start_run

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_second_lock_in_the_same_folder_is_refused(tmp_path):
    with RunLock(tmp_path) as lock:
        assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunLockError, match=f"pid {os.getpid()} on "):
            RunLock(tmp_path).acquire()
        assert lock.fd is not None
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path).acquire().release()


def test_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    """flock dies with its holder: a SIGKILLed run leaves a file that the
    next run takes over, naming the dead pid."""
    holder = textwrap.dedent(
        f"""
        import sys, time
        from dampit.training.run_lock import RunLock
        RunLock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockError, match=f"pid {proc.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # SIGKILL left the file
    with caplog.at_level("WARNING"):
        lock = RunLock(tmp_path).acquire()
    assert f"pid {proc.pid} " in caplog.text and "not running" in caplog.text
    lock.release()


def test_second_run_into_a_folder_in_use_writes_nothing(
    tmp_path, synthetic_corpus
):
    """The recipe's start (``start_run``) refuses a folder in use, naming
    the holder, before it prepares anything."""
    out = tmp_path / "run"
    mini = REPO / "recipes" / "VoxCeleb" / "hparams" / "mini.yaml"
    argv = [str(mini), f"--data_folder={synthetic_corpus}"]
    with RunLock(out):
        before = sorted(p.name for p in out.rglob("*"))
        with pytest.raises(RunLockError) as err:
            start_run(argv + [f"--output_folder={out}"])
        after = sorted(p.name for p in out.rglob("*"))
    assert "in use by another run" in str(err.value)
    assert f"pid {os.getpid()} on " in str(err.value)
    assert str(out) in str(err.value)
    assert before == after == [LOCK_NAME]


def test_stale_lock_of_a_finished_process_is_taken_over(
    tmp_path, synthetic_corpus, run_recipe
):
    out = tmp_path / "run"
    out.mkdir()
    finished = subprocess.Popen(["true"])  # a pid that no longer runs
    finished.wait()
    (out / LOCK_NAME).write_text(f"{finished.pid} somehost\n")
    proc = run_recipe(synthetic_corpus, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert f"its run (pid {finished.pid} on somehost) is not running" in text
    assert (out / "train_log.txt").is_file()
    assert not (out / LOCK_NAME).exists()  # released at exit
