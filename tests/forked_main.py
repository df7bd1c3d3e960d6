"""A command's ``main`` in a child process, let go on demand (test support).

The child is forked from the test's process, so it starts with everything
imported (no second start-up of torch and SpeechBrain) and is a process of
its own: it holds its own locks, and SIGTERM or SIGKILL end it alone.
pytest runs with ``--import-mode=importlib``: load this file with
:func:`importlib.util.spec_from_file_location`.
"""

import importlib
import multiprocessing
import sys
import tempfile

import torch

FORK = multiprocessing.get_context("fork")


def _run_main(module, argv, start, err_fd):
    """(The child.) Wait for ``start``; exit with ``module.main(argv)``."""
    torch.set_num_threads(1)  # the parent's OpenMP threads are not here
    sys.stderr = open(err_fd, "w", buffering=1, closefd=False)
    start.wait()
    sys.exit(importlib.import_module(module).main([str(a) for a in argv]))


class ForkedMain:
    """``module.main(argv)`` in a child process that waits for :meth:`go`.

    The child is a daemon (ended with pytest if it is never let go); its
    stderr goes to a temporary file, read by :meth:`finish`.
    """

    def __init__(self, module, argv):
        self.err = tempfile.TemporaryFile("w+")
        self.start = FORK.Event()
        self.proc = FORK.Process(
            target=_run_main,
            args=(module, argv, self.start, self.err.fileno()),
            daemon=True,
        )
        self.proc.start()

    def go(self):
        """Let the child run its ``main``."""
        self.start.set()

    def finish(self, timeout=300):
        """Wait for the child; its (exit status, stderr)."""
        self.proc.join(timeout)
        self.err.seek(0)
        return self.proc.exitcode, self.err.read()
