"""Check a prepared manifest (CSV) before a recipe reads it.

A manifest written by :func:`dampit.dataio.prepared.write_outputs` (the
folder and VoxCeleb preparations) has the columns
``ID, duration, wav, start, stop, spk_id``; ``start`` and ``stop`` are
samples with ``0 <= start < stop``. :func:`check_manifest` reads one
through and refuses, in one line naming the file and row, what the
recipe would otherwise stumble on mid-training.
"""

import csv
import math

from dampit.dataio.prepared import CSV_FIELDS

__all__ = ["ManifestError", "check_manifest"]


class ManifestError(ValueError):
    """A manifest with a missing column or a bad row; one line."""


def _number(text, kind):
    """``kind(text)``, or None when it is not one (or not finite)."""
    try:
        value = kind(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def check_manifest(path):
    """Number of rows of the manifest ``path``, each checked.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "train.csv")
    >>> _ = open(path, "w").write(
    ...     "ID,duration,wav,start,stop,spk_id\\na,1.0,a.wav,0,16000,s\\n")
    >>> check_manifest(path)
    1
    >>> _ = open(path, "a").write("b,1.0,b.wav,900,100,s\\n")
    >>> try:
    ...     check_manifest(path)
    ... except ManifestError as err:
    ...     print(str(err).replace(path, "train.csv"))
    train.csv:3: stop=100 is not after start=900
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [
                c for c in CSV_FIELDS if c not in (reader.fieldnames or [])
            ]
            if missing:
                raise ManifestError(
                    f"{path}: no column {', '.join(missing)} (needs "
                    f"{', '.join(CSV_FIELDS)})"
                )
            n = 0
            for n, row in enumerate(reader, start=1):
                _check_row(f"{path}:{n + 1}", row)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(f"{path}: cannot read: {err}") from None
    return n


def _check_row(where, row):
    """One row: an ID, a wav, a speaker, duration >= 0, 0 <= start < stop."""
    for key in ("ID", "wav", "spk_id"):
        if not (row.get(key) or "").strip():
            raise ManifestError(f"{where}: empty {key}")
    duration = _number(row["duration"], float)
    if duration is None or duration < 0:
        raise ManifestError(f"{where}: duration {row['duration']!r}")
    start, stop = _number(row["start"], int), _number(row["stop"], int)
    if start is None or start < 0:
        raise ManifestError(f"{where}: start={row['start']!r} is not >= 0")
    if stop is None:
        raise ManifestError(f"{where}: stop={row['stop']!r} is not a number")
    if stop <= start:
        raise ManifestError(f"{where}: stop={stop} is not after start={start}")
