"""dampit.utils.atomic.atomic_path: one file written through a temporary.

A real writer process is stopped in the middle of its write: killed with
SIGKILL, its temporary file is left, and the next writer of the same file
deletes it (and only the names ``atomic_path`` makes); alive, it holds the
file, and a second writer is refused with its temporary file untouched.
"""

import os
import signal
import subprocess
import sys

import pytest

from dampit.utils.atomic import atomic_write_text
from dampit.utils.file_lock import LockError

# Writes half of its file, says so, then waits for a line on stdin.
WRITER = """
import sys
from dampit.utils.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "w") as f:
        f.write("half")
    print("writing", flush=True)
    sys.stdin.readline()
    with open(tmp, "a") as f:
        f.write(" and the rest")
"""


def start_writer(path):
    """A child inside ``atomic_path(path)``, its temporary file written."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
    return proc


def temporaries(folder, name):
    """Names in ``folder`` that look like ``atomic_path``'s of ``name``."""
    return sorted(
        n
        for n in os.listdir(folder)
        if n.startswith(f".{name}.") and n.endswith(".tmp")
    )


def test_what_a_sigkill_left_goes_with_the_next_write(tmp_path):
    out = tmp_path / "scores.txt"
    out.write_text("old")
    # Not the temporary files of scores.txt: a name atomic_path does not
    # make, a folder and a link with its pattern, another file's temporary.
    foreign = [
        ".scores.txt.mine.tmp",
        ".scores.txt.abcd1234.tmp",
        ".scores.txt.efgh5678.tmp",
        ".other.txt.ijkl9012.tmp",
    ]
    (tmp_path / foreign[0]).write_text("mine")
    (tmp_path / foreign[1]).mkdir()
    (tmp_path / "target.txt").write_text("linked")
    os.symlink(tmp_path / "target.txt", tmp_path / foreign[2])
    (tmp_path / foreign[3]).write_text("other")
    proc = start_writer(out)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    left = sorted(set(temporaries(tmp_path, "scores.txt")) - set(foreign))
    assert len(left) == 1 and (tmp_path / left[0]).read_text() == "half"
    assert out.read_text() == "old"

    atomic_write_text(out, "new")  # the next writer of scores.txt
    assert out.read_text() == "new"
    kept = {"scores.txt", "target.txt", *foreign}
    assert set(os.listdir(tmp_path)) == kept  # no temporary, no lock
    assert (tmp_path / foreign[0]).read_text() == "mine"
    assert (tmp_path / foreign[2]).read_text() == "linked"


def test_a_file_being_written_is_refused_and_kept(tmp_path):
    out = tmp_path / "scores.txt"
    proc = start_writer(out)
    try:
        own = temporaries(tmp_path, "scores.txt")
        with pytest.raises(LockError, match="in use by another dampit"):
            atomic_write_text(out, "second")
        assert temporaries(tmp_path, "scores.txt") == own and len(own) == 1
        assert (tmp_path / own[0]).read_text() == "half"
        assert not out.exists()
    finally:
        proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0
    assert out.read_text() == "half and the rest"
    assert os.listdir(tmp_path) == ["scores.txt"]
