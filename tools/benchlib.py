"""Shared output of the benchmark tools (``tools/bench_*.py``).

Every benchmark returns rows ``{"name", "figure", "unit", "reference",
"ratio", "note"}``; ``format_rows`` prints them as one markdown table, the
same from every tool. ``resolve_device`` is their common device default.
"""

import math


def _num(value):
    """A number with 4 significant digits, or n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4g}"


def format_rows(rows):
    """Benchmark rows as a markdown table.

    Arguments
    ---------
    rows : list of dict
        Rows with ``name``, ``figure``, ``unit``, ``reference``, ``ratio``
        and ``note``.

    Returns
    -------
    str
        The table.

    Example
    -------
    >>> print(format_rows([{"name": "x", "figure": 2.0, "unit": "s",
    ...     "reference": 4.0, "ratio": 2.0, "note": "ref / ours"}]))
    | name | figure | unit | reference | ratio | note |
    |---|---|---|---|---|---|
    | x | 2 | s | 4 | 2 | ref / ours |
    """
    lines = [
        "| name | figure | unit | reference | ratio | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {_num(r['figure'])} | {r['unit']} | "
            f"{_num(r['reference'])} | {_num(r['ratio'])} | {r['note']} |"
        )
    return "\n".join(lines)


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
        import torch

        self.device = torch.device(device)
        self.kind = kind

    def now(self):
        """Current time in seconds on this clock."""
        import time

        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self.kind == "cpu":
            return time.process_time()
        return time.perf_counter()


def resolve_device(device=None):
    """The device a benchmark runs on, and whether it is a GPU.

    Arguments
    ---------
    device : str or None
        As given on the command line; None: CUDA when available, else CPU.

    Returns
    -------
    device : str
        The device name.
    on_gpu : bool
        Whether it is a CUDA device.

    Example
    -------
    >>> resolve_device("cpu")
    ('cpu', False)
    >>> resolve_device("cuda:1")
    ('cuda:1', True)
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, torch.device(device).type == "cuda"
