"""Exclusive use of a path by one process: an ``flock`` on a lock file.

``flock`` makes the lock exclusive and frees it however its holder ends
(even SIGKILL); the file names the holder (``pid host``). A lock file left
by a process that is no longer running is taken over with a warning, and
a released lock removes its file. :class:`dampit.training.run_lock.RunLock`
locks a recipe's output folder with it; :func:`output_lock` locks what a
command writes (a store, a model folder, a score file) through the hidden
sibling ``.<name>.lock``, so that a second writer of the same output is
refused in one line instead of mixing its rows with the first one's.
"""

import contextlib
import fcntl
import logging
import os
import socket
import time

__all__ = ["FileLock", "LockError", "output_lock"]

logger = logging.getLogger(__name__)
#: Seconds to wait for the forked children of an ended holder to let go.
ORPHAN_WAIT = 30.0


class LockError(RuntimeError):
    """The path is in use by another process."""


def _ended_here(pid, host):
    """Whether the holder ``pid host`` ran on this machine and has ended.

    Example
    -------
    >>> _ended_here(str(os.getpid()), socket.gethostname())
    False
    """
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _holder(fd):
    """``(pid, host)`` written in an open lock file ('?' when unknown)."""
    words = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
    return (words + ["?", "?"])[:2] if words else None


class FileLock:
    """An exclusive lock held through the file ``path``.

    Arguments
    ---------
    path : str or os.PathLike
        The lock file (its folder is created if missing).
    what : str
        What the lock protects, for the error message.
    advice : str
        What to do when it is taken, for the error message.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.lock")
    >>> with FileLock(p, "x"):
    ...     FileLock(p, "x").acquire()
    Traceback (most recent call last):
    ...
    dampit.utils.file_lock.LockError: x is in use by another ... process ...
    >>> FileLock(p, "x").acquire().release()
    """

    error = LockError
    holder = "dampit process"  # what holds the lock, for the messages

    def __init__(self, path, what, advice="wait for it or choose another"):
        self.path = os.fspath(path)
        self.what, self.advice = what, advice
        self.fd = None

    def acquire(self):
        """Take the lock or raise :attr:`error` naming its holder.

        A holder that has ended on this machine while processes it forked
        (DataLoader workers, which stop within seconds of their parent)
        still hold the lock is waited for, up to :data:`ORPHAN_WAIT` s.
        """
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        deadline = time.monotonic() + ORPHAN_WAIT
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, host = _holder(fd) or ("?", "?")
                os.close(fd)
                if _ended_here(pid, host) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise self.error(
                    f"{self.what} is in use by another {self.holder} (pid "
                    f"{pid} on {host}, {self.path}): {self.advice}"
                ) from None
            try:  # the file may have been released and removed meanwhile
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        old = _holder(fd)
        if old is not None:
            logger.warning(
                "taking over %s: its %s (pid %s on %s) is not running",
                self.path,
                self.holder,
                *old,
            )
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            holder = f"{os.getpid()} {socket.gethostname()}\n"
            os.pwrite(fd, holder.encode(), 0)
        except OSError:  # a full disk: no lock file left behind
            self.release()
            raise
        return self

    def release(self):
        """Remove the lock file and free the lock (no-op if not held)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        """Take the lock (``with FileLock(...):``)."""
        return self.acquire()

    def __exit__(self, *exc):
        """Release the lock."""
        self.release()


def lock_path(target):
    """The lock file of an output: ``.<name>.lock`` beside it.

    Example
    -------
    >>> lock_path("/data/emb")
    '/data/.emb.lock'
    """
    head, name = os.path.split(os.path.abspath(os.fspath(target)))
    return os.path.join(head, f".{name}.lock")


_HELD = {}  # lock file -> [FileLock, depth] of this process's output locks


@contextlib.contextmanager
def output_lock(target):
    """Hold the output ``target`` for this process (re-entrant in it);
    another process writing it raises :class:`LockError`.

    Example
    -------
    >>> import tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "emb")
    >>> with output_lock(out):
    ...     with output_lock(out):  # the same process: fine
    ...         os.path.exists(lock_path(out))
    True
    >>> os.path.exists(lock_path(out))
    False
    """
    path = lock_path(target)
    if path not in _HELD:
        what = f"output {os.path.abspath(os.fspath(target))}"
        lock = FileLock(path, what, "wait for it or choose another output")
        _HELD[path] = [lock.acquire(), 0]
    _HELD[path][1] += 1
    try:
        yield
    finally:
        _HELD[path][1] -= 1
        if _HELD[path][1] == 0:
            _HELD.pop(path)[0].release()
