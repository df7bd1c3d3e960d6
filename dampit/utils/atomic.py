"""Atomic file writing: a half-written file never replaces a good one.

Every file dampit writes that somebody relies on later (checkpoints,
embedding caches, score files, exported models) goes through these helpers:
the data is written to a temporary file in the same folder, flushed and
fsync'ed, then renamed over the target with ``os.replace``, which is atomic
on POSIX file systems.
"""

import contextlib
import os
import tempfile


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
        A temporary file path in the same folder. Write to it; when the
        ``with`` block ends without an exception it replaces ``path``.
        On an exception it is deleted and ``path`` is left untouched.

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> target = os.path.join(d, "scores.txt")
    >>> with atomic_path(target) as tmp:
    ...     with open(tmp, "w") as f:
    ...         _ = f.write("1.0\\n")
    >>> open(target).read()
    '1.0\\n'
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
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` atomically.

    Arguments
    ---------
    path : str or os.PathLike
        Destination file.
    text : str
        The whole content.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> atomic_write_text(p, "hello")
    >>> open(p).read()
    'hello'
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

    Example
    -------
    >>> import os, tempfile, torch
    >>> p = os.path.join(tempfile.mkdtemp(), "w.ckpt")
    >>> atomic_torch_save({"w": torch.ones(2)}, p)
    >>> torch.load(p, weights_only=True)["w"].tolist()
    [1.0, 1.0]
    """
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
