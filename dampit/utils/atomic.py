"""Atomic writes: a half-written file or folder never replaces a good one.

The data goes to a temporary name in the same folder (fsync'ed for files),
then ``os.replace`` renames it over the target, which is atomic on POSIX
file systems. A writer holds the target's output lock
(:func:`dampit.utils.file_lock.output_lock`) while it writes: a second
process writing the same target is refused, and under the lock the
temporary files and folders of that target that a killed writer left (by
their names, which only this module makes) are deleted. The result gets
the usual permissions of the process's umask (``0o666 & ~umask`` for
files, ``0o777 & ~umask`` for folders), not the private ``0o600`` of
``tempfile``.
"""

import contextlib
import os
import re
import shutil
import tempfile

import torch

from dampit.utils.file_lock import output_lock

__all__ = [
    "atomic_folder",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync",
    "recover_folder",
    "remove_stale_files",
]


def _umask_mode(mode):
    """``mode`` with the process's umask applied."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _temp_file_names(path):
    """Pattern of the temporary files of ``path`` that :func:`atomic_path`
    makes: ``.<name>.XXXXXXXX.tmp`` (``tempfile``'s 8 random characters).

    Example
    -------
    >>> names = _temp_file_names("/data/a.txt")
    >>> [bool(names.fullmatch(n)) for n in (".a.txt.a_cd1234.tmp", ".a.tmp")]
    [True, False]
    """
    name = os.path.basename(path)
    return re.compile(re.escape(f".{name}.") + r"[a-z0-9_]{8}\.tmp")


def remove_stale_files(path):
    """Delete the temporary files of ``path`` that a killed
    :func:`atomic_path` left (regular files with its names only; links,
    folders and other names stay). Call it holding ``path``'s
    :func:`dampit.utils.file_lock.output_lock`: no live writer is then
    using them.

    Example
    -------
    >>> d = tempfile.mkdtemp()
    >>> for name in (".a.txt.abcd1234.tmp", ".a.txt.mine.tmp", "a.txt"):
    ...     _ = open(os.path.join(d, name), "w").write("x")
    >>> remove_stale_files(os.path.join(d, "a.txt"))
    >>> sorted(os.listdir(d))
    ['.a.txt.mine.tmp', 'a.txt']
    """
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    pattern = _temp_file_names(os.fspath(path))
    with os.scandir(folder) as entries:
        stale = [
            e.path
            for e in entries
            if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False)
        ]
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path that is renamed to ``path`` on success.

    ``path`` is locked for the process while it is written
    (:func:`dampit.utils.file_lock.output_lock`: another process writing
    it raises ``LockError``); under the lock the temporary files of
    ``path`` that a killed writer left are deleted
    (:func:`remove_stale_files`).

    Arguments
    ---------
    path : str or os.PathLike
        The final destination.

    Yields
    ------
    str
        A temporary file in the same folder; on an exception it is deleted
        and ``path`` is left untouched. An existing ``path`` that is not a
        regular file (a folder, a device such as ``/dev/null``, a pipe)
        raises FileExistsError: renaming over it would replace it.

    Example
    -------
    >>> d = tempfile.mkdtemp()
    >>> with atomic_path(os.path.join(d, "a.txt")) as tmp:
    ...     _ = open(tmp, "w").write("1.0")
    >>> open(os.path.join(d, "a.txt")).read()
    '1.0'
    """
    path = os.fspath(path)
    if os.path.lexists(path) and not os.path.isfile(path):
        raise FileExistsError(
            f"{path} exists and is not a regular file (a folder, a device, "
            "a pipe): nothing replaced"
        )
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with output_lock(path):
        remove_stale_files(path)
        fd, tmp = tempfile.mkstemp(
            prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder
        )
        os.close(fd)
        try:
            yield tmp
            fsync(tmp)
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


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically; a failed write (a full disk)
    raises OSError naming ``path``, with ``path`` untouched.

    Arguments
    ---------
    path : str or os.PathLike
        Destination file.
    data : bytes-like
        The whole content.

    Example
    -------
    >>> path = os.path.join(tempfile.mkdtemp(), "a.bin")
    >>> atomic_write_bytes(path, b"dampit")
    >>> open(path, "rb").read()
    b'dampit'
    """
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
        except OSError as err:
            raise OSError(err.errno, err.strerror, os.fspath(path)) from None


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


def fsync(path):
    """fsync a file or folder: its data (a folder: its entries) on disk.

    Example
    -------
    >>> fsync(tempfile.mkdtemp())
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_names(target):
    """Pattern of the temporary folders of ``target`` that
    :func:`atomic_folder` makes: ``.<name>.tmp-XXXXXXXX[.old]``."""
    name = os.path.basename(target)
    return re.compile(re.escape(f".{name}.tmp-") + r"[a-z0-9_]{8}(\.old)?")


def recover_folder(target):
    """Finish or undo a replacement of ``target`` that a killed process
    left, then delete the temporary folders it left (by their names, which
    only :func:`atomic_folder` makes). Call it holding ``target``'s
    :func:`dampit.utils.file_lock.output_lock`: no live writer is then
    using them.

    Example
    -------
    >>> d = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(d, ".m.tmp-abcd1234"))
    >>> os.makedirs(os.path.join(d, ".m.tmp-abcd1234.old"))
    >>> recover_folder(os.path.join(d, "m"))
    >>> sorted(os.listdir(d))
    ['m']
    """
    target = os.path.abspath(os.fspath(target))
    parent = os.path.dirname(target)
    pattern = _temp_names(target)
    found = sorted(n for n in os.listdir(parent) if pattern.fullmatch(n))
    found = [n for n in found if not os.path.islink(os.path.join(parent, n))]
    if not os.path.lexists(target):
        for name in found:
            # "X.old" exists only once "X" was complete: X is the new one
            if name.endswith(".old"):
                new = name[: -len(".old")]
                keep = new if new in found else name
                os.rename(os.path.join(parent, keep), target)
                break
    for name in found:
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _replaceable(target, holds):
    """Refuse to replace ``target`` unless it is an empty folder or one
    holding every name of ``holds``."""
    if not os.path.isdir(target) or os.path.islink(target):
        raise FileExistsError(f"{target} exists and is not a folder")
    names = set(os.listdir(target))
    if names and not (holds and set(holds) <= names):
        what = " and ".join(holds) if holds else "nothing"
        raise FileExistsError(
            f"{target} exists and does not hold {what}: it is not an output "
            "of this command; nothing replaced (give a new or empty folder)"
        )


@contextlib.contextmanager
def atomic_folder(target, overwrite=False, holds=()):
    """Build a folder under a temporary name, then rename it into place.

    The output is locked for the process
    (:func:`dampit.utils.file_lock.output_lock`: a second writer raises
    ``LockError``); under the lock the temporary folders a killed writer
    left are recovered or deleted (:func:`recover_folder`). The files are
    fsync'ed before the rename.

    Arguments
    ---------
    target : str or os.PathLike
        The final folder.
    overwrite : bool
        Replace an existing ``target`` (deleted once the new one is in
        place); otherwise an existing ``target`` raises FileExistsError.
    holds : tuple of str
        An existing ``target`` is replaced only when it is an empty folder
        or holds all these names (what this kind of output always holds);
        anything else raises FileExistsError, and nothing is touched.

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
    >>> with atomic_folder(target, overwrite=True, holds=("b.txt",)) as tmp:
    ...     pass
    Traceback (most recent call last):
    ...
    FileExistsError: ... does not hold b.txt: ...
    """
    target = os.path.abspath(os.fspath(target))
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    with output_lock(target):
        recover_folder(target)
        if os.path.lexists(target):
            if not overwrite:
                raise FileExistsError(
                    f"{target} exists (--overwrite replaces it)"
                )
            _replaceable(target, holds)
        tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
        old = tmp + ".old"
        try:
            yield tmp
            for base, _, files in os.walk(tmp):
                for file in files:
                    fsync(os.path.join(base, file))
            fsync(tmp)
            os.chmod(tmp, _umask_mode(0o777))
            if os.path.exists(target):
                os.rename(target, old)
            os.rename(tmp, target)  # the commit point
            fsync(parent)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            if os.path.isdir(old) and not os.path.lexists(target):
                os.rename(old, target)  # stopped between the renames
            shutil.rmtree(tmp, ignore_errors=True)
            raise
