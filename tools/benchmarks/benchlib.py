"""What dampit's benchmarks share: one timer, one memory sampler, one
subprocess isolation, and the row format.

- :class:`Clock` and :func:`timed` time code (process CPU time or wall
  time; CUDA synchronised first), :func:`median_time` repeats it;
- :class:`AnonPeak` samples the peak anonymous resident memory (RssAnon:
  heap and numpy buffers, not mapped files) in a thread; ``VmHWM`` (the
  peak resident set, mapped pages included) comes from :func:`status_mb`;
- :func:`isolated` runs one function of a benchmark file in a fresh
  interpreter (``python benchlib.py ARGS.json OUT.json``), so that its
  memory peaks, threads and compiled code are its own and a crash is
  recorded like an exception;
- every benchmark returns rows made by :func:`row`.
"""

import contextlib
import importlib.util
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import torch

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = pathlib.Path(
    os.environ.get("DAMPIT_DATA") or REPO.parent / "shared" / "data"
)


class BenchmarkError(RuntimeError):
    """A benchmark function failed in its interpreter; ``.details`` holds
    its traceback."""

    def __init__(self, message, details=""):
        super().__init__(message)
        self.details = details


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


@contextlib.contextmanager
def timed(out, prefix=""):
    """Put ``<prefix>cpu_s`` (this process), ``<prefix>wall_s`` and
    ``<prefix>child_cpu_s`` (reaped children: DataLoader workers) of the
    block in the dict ``out``.

    Example
    -------
    >>> out = {}
    >>> with timed(out, "x_"):
    ...     _ = sum(range(1000))
    >>> sorted(out)
    ['x_child_cpu_s', 'x_cpu_s', 'x_wall_s']
    """
    c, w, k = time.process_time(), time.perf_counter(), os.times()
    yield
    out[prefix + "cpu_s"] = time.process_time() - c
    out[prefix + "wall_s"] = time.perf_counter() - w
    t = os.times()
    out[prefix + "child_cpu_s"] = sum(t[2:4]) - sum(k[2:4])


def status_mb(key):
    """A ``kB`` line of /proc/self/status (``VmHWM``, ``RssAnon``) in MB,
    NaN where there is none.

    Example
    -------
    >>> status_mb("VmHWM") > 0
    True
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:  # not Linux
        pass
    return float("nan")


class AnonPeak:
    """Peak RssAnon (MB) of this process, sampled by a thread every 5 ms.

    Example
    -------
    >>> sampler = AnonPeak()
    >>> sampler.stop() >= status_mb("RssAnon") - 1
    True
    """

    def __init__(self):
        self.peak, self._stop = status_mb("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, status_mb("RssAnon"))

    def stop(self):
        """Stop sampling; return the peak RssAnon in MB."""
        self._stop.set()
        self._thread.join()
        return max(self.peak, status_mb("RssAnon"))


def row(name, figure, unit, reference, note, ratio=None):
    """One benchmark row; ``ratio`` defaults to figure / reference.

    Example
    -------
    >>> row("x", 2.0, "s", 4.0, "n")["ratio"]
    0.5
    >>> math.isnan(row("x", 2.0, "s", float("nan"), "not run")["ratio"])
    True
    """
    if ratio is None:
        ok = reference and not math.isnan(reference)
        ratio = figure / reference if ok else float("nan")
    return dict(
        name=name,
        figure=float(figure),
        unit=unit,
        reference=float(reference),
        ratio=float(ratio),
        note=note,
    )


def load_file(path):
    """Import a Python file by path (a benchmark or the tests' helpers)."""
    path = pathlib.Path(path)
    name = f"_dampit_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def isolated(path, func, memory=True, one_thread=True, **kwargs):
    """``func(**kwargs)`` of the file ``path`` in a fresh interpreter.

    Arguments
    ---------
    path : str or pathlib.Path
        A Python file.
    func : str
        Name of a function in it; its result must be JSON.
    memory : bool
        Sample the memory (:class:`AnonPeak`); a dict result then gains
        ``base_rss_mb`` / ``peak_rss_mb`` (VmHWM after the imports and at
        the end) and ``base_anon_mb`` / ``peak_anon_mb`` where it has
        none of its own.
    one_thread : bool
        ``OMP_NUM_THREADS=1`` and one torch thread.
    **kwargs
        JSON arguments of the function.

    Returns
    -------
    object
        The function's result.

    Raises
    ------
    BenchmarkError
        When it raised (its one-line message; ``.details``: traceback) or
        its interpreter died.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH")) if p
    )
    if one_thread:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory(prefix="dampit_bench_") as tmp:
        args, out = os.path.join(tmp, "args.json"), os.path.join(tmp, "out")
        with open(args, "w", encoding="utf-8") as f:
            spec = dict(path=str(path), func=func, kwargs=kwargs)
            json.dump(dict(spec, memory=memory, one_thread=one_thread), f)
        cmd = [sys.executable, __file__, args, out]
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
        if not os.path.isfile(out):
            code = proc.returncode
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            name = f"{pathlib.Path(path).name}:{func}"
            raise BenchmarkError(f"ChildProcessError: {name} died ({how})")
        with open(out, encoding="utf-8") as f:
            res = json.load(f)
    if "error" in res:
        raise BenchmarkError(res["error"], res["traceback"])
    return res["result"]


def _child(args_file, out_file):
    """The interpreter :func:`isolated` starts."""
    with open(args_file, encoding="utf-8") as f:
        spec = json.load(f)
    if spec["one_thread"]:
        torch.set_num_threads(1)
    base_rss, base_anon = status_mb("VmHWM"), status_mb("RssAnon")
    sampler = AnonPeak() if spec["memory"] else None
    try:
        fn = getattr(load_file(spec["path"]), spec["func"])
        res = {"result": fn(**spec["kwargs"])}
    except Exception as err:  # recorded, and raised again in the parent
        message = f"{type(err).__name__}: {err}".splitlines()[0]
        res = {"error": message, "traceback": traceback.format_exc()}
    if sampler is not None and isinstance(res.get("result"), dict):
        res["result"].setdefault("base_anon_mb", base_anon)
        res["result"].setdefault("peak_anon_mb", sampler.stop())
        res["result"].update(base_rss_mb=base_rss)
        res["result"].update(peak_rss_mb=status_mb("VmHWM"))
    with open(out_file, "w", encoding="utf-8") as f:
        json.dump(res, f)


if __name__ == "__main__":
    _child(*sys.argv[1:3])
