"""The benchmarks' clock: :class:`Clock` reads process CPU time or wall
time (CUDA synchronised first), :func:`median_time` repeats a call.

It is apart from ``benchlib.py`` so that an isolated interpreter imports
torch only when its benchmark does.
"""

import statistics
import time

import torch


class Clock:
    """Wall or process-CPU clock that synchronises CUDA first.

    Arguments
    ---------
    device : str or torch.device
        The device whose pending work must finish before a reading.
    kind : str
        ``"cpu"`` (process CPU time: robust on a shared machine) or
        ``"wall"``.

    Example
    -------
    >>> clock = Clock("cpu", "wall")
    >>> t0 = clock.now()
    >>> clock.now() >= t0
    True
    """

    def __init__(self, device, kind):
        self.device = torch.device(device)
        self.kind = kind

    def now(self):
        """Current time in seconds on this clock."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self.kind == "cpu":
            return time.process_time()
        return time.perf_counter()


def median_time(clock, fn, reps):
    """Median seconds of ``reps`` calls of ``fn`` after one warm-up call.

    Arguments
    ---------
    clock : Clock
        The clock.
    fn : callable
        No arguments.
    reps : int
        Timed calls.

    Returns
    -------
    float
        Median seconds.

    Example
    -------
    >>> median_time(Clock("cpu", "wall"), lambda: sum(range(10)), 3) >= 0
    True
    """
    fn()
    times = []
    for _ in range(reps):
        t0 = clock.now()
        fn()
        times.append(clock.now() - t0)
    return statistics.median(times)
