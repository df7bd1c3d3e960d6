"""Atomic writes: a half-written file or folder never replaces a good one.

The data goes to a temporary name in the same folder (fsync'ed for files),
then ``os.replace`` renames it over the target, which is atomic on POSIX
file systems. The result gets the usual permissions of the process's umask
(``0o666 & ~umask`` for files, ``0o777 & ~umask`` for folders), not the
private ``0o600`` of ``tempfile``.
"""

import contextlib
import os
import shutil
import tempfile

import torch

__all__ = ["atomic_folder", "atomic_path", "atomic_torch_save"]
__all__ += ["atomic_write_text"]


def _umask_mode(mode):
    """``mode`` with the process's umask applied."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path that is renamed to ``path`` on success.

    Arguments
    ---------
    path : str or os.PathLike
        The final destination.

    Yields
    ------
    str
        A temporary file in the same folder; on an exception it is deleted
        and ``path`` is left untouched.

    Example
    -------
    >>> d = tempfile.mkdtemp()
    >>> with atomic_path(os.path.join(d, "a.txt")) as tmp:
    ...     _ = open(tmp, "w").write("1.0")
    >>> open(os.path.join(d, "a.txt")).read()
    '1.0'
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder
    )
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Arguments
    ---------
    path : str or os.PathLike
        Destination file.
    text : str
        The whole content.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def atomic_torch_save(obj, path):
    """``torch.save`` to ``path`` atomically.

    Arguments
    ---------
    obj : object
        Anything ``torch.save`` accepts (a state dict, say).
    path : str or os.PathLike
        Destination file.
    """
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


@contextlib.contextmanager
def atomic_folder(target, overwrite=False):
    """Build a folder under a temporary name, then rename it into place.

    Arguments
    ---------
    target : str or os.PathLike
        The final folder.
    overwrite : bool
        Replace an existing ``target`` (deleted once the new one is in
        place); otherwise an existing ``target`` raises FileExistsError.

    Yields
    ------
    str
        The temporary folder (same parent as ``target``); deleted, with
        ``target`` untouched, when the block raises.

    Example
    -------
    >>> target = os.path.join(tempfile.mkdtemp(), "model")
    >>> with atomic_folder(target) as tmp:
    ...     _ = open(os.path.join(tmp, "a.txt"), "w").write("x")
    ...     os.path.exists(target)
    False
    >>> os.listdir(target)
    ['a.txt']
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(
            f"{target} already exists (pass --overwrite to replace it)"
        )
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o777))
        old = tmp + ".old"
        if os.path.exists(target):
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
