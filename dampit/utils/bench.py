"""Shared output of the benchmark tools (``tools/bench_*.py``).

Every benchmark returns rows ``{"name", "figure", "unit", "reference",
"ratio", "note"}``; ``format_rows`` prints them as one markdown table, the
same from every tool.
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
