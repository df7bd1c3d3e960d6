"""One run at a time per output folder: ``<folder>/run.lock``.

``flock`` makes the lock exclusive and frees it however its holder ends
(even SIGKILL); the file names the holder (``pid host``). A lock file left
by a run that is no longer running is taken over with a warning.
"""

import fcntl
import logging
import os
import socket

LOCK_NAME = "run.lock"
logger = logging.getLogger(__name__)


class RunLockError(RuntimeError):
    """The output folder is in use by another run."""


def _holder(fd):
    """``(pid, host)`` written in an open lock file ('?' when unknown)."""
    words = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
    return (words + ["?", "?"])[:2] if words else None


class RunLock:
    """Exclusive use of an output folder by this process.

    Arguments
    ---------
    folder : str or os.PathLike
        The run's output folder (created if missing).

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with RunLock(d):
    ...     RunLock(d).acquire()
    Traceback (most recent call last):
    ...
    dampit.recipe.run_lock.RunLockError: ... is in use by another run ...
    >>> RunLock(d).acquire().release()
    """

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.fd = None

    def acquire(self):
        """Take the lock or raise ``RunLockError`` naming its holder."""
        os.makedirs(self.folder, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, host = _holder(fd) or ("?", "?")
                os.close(fd)
                raise RunLockError(
                    f"{self.folder} is in use by another run (pid {pid} on "
                    f"{host}, {self.path}): wait for it or choose another "
                    "output_folder"
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
                "taking over %s: its run (pid %s on %s) is not running",
                self.path,
                *old,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
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
        """Acquire the lock (see :meth:`acquire`)."""
        return self.acquire()

    def __exit__(self, *exc):
        """Release the lock."""
        self.release()
