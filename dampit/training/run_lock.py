"""One run at a time per output folder: ``<folder>/run.lock`` (and per
save folder outside it).

The lock is :class:`dampit.utils.file_lock.FileLock`'s: it is freed however
its holder ends (even SIGKILL), names the holder (``pid host``), and a lock
file left by a run that is no longer running is taken over with a warning.
"""

import os

from dampit.utils.file_lock import FileLock, LockError

LOCK_NAME = "run.lock"


class RunLockError(LockError):
    """The output folder is in use by another run."""


class RunLock(FileLock):
    """Exclusive use of an output folder by this process.

    Arguments
    ---------
    folder : str or os.PathLike
        The run's output folder (created if missing).
    key : str
        The YAML key naming ``folder``, for the error message.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with RunLock(d):
    ...     RunLock(d).acquire()
    Traceback (most recent call last):
    ...
    dampit.training.run_lock.RunLockError: ... is in use by another ...
    >>> RunLock(d).acquire().release()
    """

    error = RunLockError
    holder = "run"

    def __init__(self, folder, key="output_folder"):
        self.folder = os.fspath(folder)
        super().__init__(
            os.path.join(self.folder, LOCK_NAME),
            self.folder,
            f"wait for it or choose another {key}",
        )
