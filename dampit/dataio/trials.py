"""Trial lists and score files: the one reader and writer of each.

A trial list has one trial a line, ``label enrol test`` (VoxCeleb's format;
label 1: same speaker) or ``enrol test`` (unlabelled), never both kinds in
one file. Blank lines and ``#`` comments are skipped; UTF-8, with or
without a BOM. A score file has ``enrol test [label] score`` lines, as
SpeechBrain's verification recipe writes them. Official lists name
utterances by path (``id10270/x6uYqmx31kE/00001.wav``); dataset CSV IDs are
the same paths without the extension (:func:`utt_to_id`).
"""

import csv
import itertools
import logging
import os
import sys
from array import array
from collections import Counter

import numpy as np
import soundfile as sf
from speechbrain.dataio.dataio import load_data_csv

from dampit.dataio.audio import AUDIO_EXTENSIONS
from dampit.utils.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)


class TrialListError(ValueError):
    """A malformed trial list or score file (the message names the line)."""


def utt_to_id(name):
    """Map an utterance path to a CSV ID (``/`` separators, no ``./``, no
    audio extension): dampit's one rule, used by the data preparation,
    the trial lists and the command-line tools.

    Example
    -------
    >>> utt_to_id("./spk1\\\\a.flac"), utt_to_id("id1/x/00001.wav")
    ('spk1/a', 'id1/x/00001')
    >>> utt_to_id("s1/take.2/u.v3.WAV"), utt_to_id("s1/take.2/u.v3")
    ('s1/take.2/u.v3', 's1/take.2/u.v3')
    """
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    root, ext = os.path.splitext(name)
    return root if ext.lower() in AUDIO_EXTENSIONS else name


def speaker_of(utt_id):
    """Speaker of an utterance ID or path: its first path component.

    Example
    -------
    >>> speaker_of("id10270/x6uYqmx31kE/00001.wav")
    'id10270'
    """
    return utt_to_id(utt_id).split("/", 1)[0]


def utf8_lines(path):
    """Yield ``(line number, text)`` of a UTF-8 text file, with or without
    a BOM: dampit's one reader of the text files users write (trial
    lists, score files, lists of audio files).

    Raises TrialListError (``path:line``) for a missing file or a line
    that is not UTF-8.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "list.txt")
    >>> _ = open(p, "wb").write(b"\\xef\\xbb\\xbfa b\\nc\\n")  # a BOM first
    >>> list(utf8_lines(p))
    [(1, 'a b\\n'), (2, 'c\\n')]
    """
    try:
        f = open(path, "rb")
    except OSError as err:
        raise TrialListError(f"{path}: not found ({err.strerror})") from None
    with f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise TrialListError(
                    f"{path}:{n}: not valid UTF-8 (byte {err.start + 1})"
                ) from None


def _fields(path):
    """Yield ``(line number, fields)`` of the non-blank, non-comment lines."""
    for n, text in utf8_lines(path):
        fields = text.split()
        if fields and not fields[0].startswith("#"):
            yield n, fields


def iter_trials(path, as_ids=False):
    """Stream a trial list: ``(line, label or None, enrol, test)``.

    Names are mapped with :func:`utt_to_id` when ``as_ids``. Raises
    :class:`TrialListError` (``path:line: ...``) for a missing file,
    invalid UTF-8, a bad label, a row of other than 2 or 3 fields (``1
    a.wav``, a label and one path, included), labelled and unlabelled rows
    mixed, or no trials.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> _ = open(p, "w").write("a.wav b.wav\\n")
    >>> list(iter_trials(p, as_ids=True))
    [(1, None, 'a', 'b')]
    """
    path, first = os.fspath(path), None
    for n, f in _fields(path):
        # 3 fields: a 0/1 label first; 2 fields: no label ("1 a.wav" is
        # a label and one path, not a pair).
        if len(f) not in (2, 3) or (f[0] in ("0", "1")) != (len(f) == 3):
            raise TrialListError(
                f"{path}:{n}: expected 'label enrol test' or 'enrol test' "
                f"(label must be 0 or 1), got {' '.join(f)!r}"
            )
        if first is None:
            first = (n, len(f))
        elif len(f) != first[1]:
            raise TrialListError(
                f"{path}:{n}: mixes labelled and unlabelled trials "
                f"({len(f)} fields here, {first[1]} on line {first[0]})"
            )
        e, t = (utt_to_id(f[-2]), utt_to_id(f[-1])) if as_ids else f[-2:]
        yield n, (int(f[0]) if len(f) == 3 else None), e, t
    if first is None:
        raise TrialListError(f"{path}: no trials")


def _warn_duplicates(path, n_dup):
    if n_dup:
        logger.warning("%s: %d duplicate trial(s), each counted", path, n_dup)


def read_trials(path, known_ids=None, as_ids=True):
    """Read a labelled trial list into ``(label, enrol, test)`` tuples.

    With ``known_ids``, names not in it are listed with their lines.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "trials.txt")
    >>> _ = open(p, "w").write("1 a/x/1.wav a/y/2.wav\\n0 a/x/1 b/z/3\\n")
    >>> read_trials(p)
    [(1, 'a/x/1', 'a/y/2'), (0, 'a/x/1', 'b/z/3')]
    """
    known = None if known_ids is None else frozenset(known_ids)
    trials, unknown = [], []
    for n, lab, e, t in iter_trials(path, as_ids):
        if lab is None:
            raise TrialListError(f"{path}:{n}: expected 'label enrol test'")
        unknown += [
            (n, u) for u in (e, t) if known is not None and u not in known
        ]
        trials.append((lab, e, t))
    if unknown:
        shown = ", ".join(f"line {n}: {u}" for n, u in unknown[:10])
        raise TrialListError(
            f"{path}: {len(unknown)} trial utterance(s) not among the known "
            f"IDs: {shown}" + (" ..." if len(unknown) > 10 else "")
        )
    _warn_duplicates(path, len(trials) - len({t[1:] for t in trials}))
    return trials


def read_trial_indices(path, as_ids=False):
    """Stream a trial list into integer arrays (bounded memory).

    No string is kept per trial (10^6 trials: 17 MB): every name gets a
    row, in order of first appearance (a caller maps the names to its own
    rows, an ``EmbeddingStore.index`` say).

    Returns
    -------
    enrol, test : numpy.ndarray
        int64 [T] rows.
    labels : numpy.ndarray or None
        int64 [T], None for an unlabelled list.
    names : list of str
        The name of every row.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "trials.txt")
    >>> _ = open(p, "w").write("a.wav b.wav\\nb.wav c.wav\\n")
    >>> e, t, lab, names = read_trial_indices(p)
    >>> e.tolist(), t.tolist(), lab, names
    ([0, 1], [1, 2], None, ['a.wav', 'b.wav', 'c.wav'])
    """
    index, rows, labels = {}, array("q"), array("b")
    for _, lab, e, t in iter_trials(path, as_ids):
        for name in (e, t):
            rows.append(index.setdefault(name, len(index)))
        if lab is not None:
            labels.append(lab)
    pairs = np.frombuffer(rows, dtype=np.int64).reshape(-1, 2)
    key = pairs[:, 0] * len(index) + pairs[:, 1]
    _warn_duplicates(path, len(key) - len(np.unique(key)))
    lab = (
        np.frombuffer(labels, dtype=np.int8).astype(np.int64)
        if labels
        else None
    )
    return pairs[:, 0].copy(), pairs[:, 1].copy(), lab, list(index)


def write_trials(path, trials):
    """Write ``(label, enrol, test)`` trials atomically, one a line.

    A trial that is not three items, a label other than 0 or 1, or a name
    that could not be read back (empty, white space, a leading ``#``:
    score files skip such lines) raises TrialListError naming the trial.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> write_trials(p, [(1, "a/1", "a/2"), (0, "a/1", "b/1")])
    >>> open(p).read()
    '1 a/1 a/2\\n0 a/1 b/1\\n'
    """
    lines = []
    for i, trial in enumerate(trials):
        if not isinstance(trial, (tuple, list)) or len(trial) != 3:
            raise TrialListError(
                f"trial {i}: {trial!r} is not (label, enrol, test)"
            )
        label, enrol, test = trial
        names_ok = all(
            isinstance(u, str) and u.split() == [u] and not u.startswith("#")
            for u in (enrol, test)
        )
        if label not in (0, 1) or not names_ok:
            raise TrialListError(
                f"trial {i}: {trial!r}: the label must be 0 or 1, the names "
                "free of white space and a leading #"
            )
        lines.append(f"{int(label)} {enrol} {test}\n")
    atomic_write_text(path, "".join(lines))


def trial_summary(trials):
    """Counts of ``(label, enrol, test)`` trials.

    Example
    -------
    >>> trial_summary([(1, "a/1", "a/2"), (0, "a/1", "b/1")])
    {'trials': 2, 'target': 1, 'nontarget': 1, 'utterances': 3, 'speakers': 2}
    """
    utts = {u for _, e, t in trials for u in (e, t)}
    n_target = sum(1 for lab, _, _ in trials if int(lab) == 1)
    return {
        "trials": len(trials),
        "target": n_target,
        "nontarget": len(trials) - n_target,
        "utterances": len(utts),
        "speakers": len({speaker_of(u) for u in utts}),
    }


def make_trials(utt_ids, spk_ids, seed=0):
    """A deterministic trial list: target pairs, then as many non-target
    pairs.

    Targets are all same-speaker pairs ``(i, j)``, ``i < j`` in sorted ID
    order; non-targets are as many distinct different-speaker pairs drawn
    with ``seed`` (all of them when fewer exist). The IDs must be unique,
    and target pairs need a second speaker; no utterance gives no trial.

    Example
    -------
    >>> make_trials(["a/1", "a/2", "b/1"], ["a", "a", "b"], seed=0)
    [(1, 'a/1', 'a/2'), (0, 'a/2', 'b/1')]
    """
    if len(utt_ids) != len(spk_ids):
        raise ValueError(
            f"make_trials: {len(utt_ids)} utterances but {len(spk_ids)} "
            "speaker labels"
        )
    dup = sorted(u for u, n in Counter(utt_ids).items() if n > 1)
    if dup:
        raise ValueError(f"make_trials: duplicate utterance IDs: {dup[:10]}")
    by_id = sorted(zip(utt_ids, spk_ids))
    ids = [u for u, _ in by_id]
    spk = [s for _, s in by_id]
    by_spk = {}
    for i, s in enumerate(spk):
        by_spk.setdefault(s, []).append(i)
    pairs = itertools.combinations
    target = [p for s in sorted(by_spk) for p in pairs(by_spk[s], 2)]
    n, rng = len(ids), np.random.default_rng(seed)
    want = len(target)
    n_non = n * (n - 1) // 2 - want
    if want and not n_non:
        raise ValueError(
            "make_trials: non-target trials need at least two speakers, got "
            f"{len(by_spk)}"
        )
    if want >= n_non:  # as many as there are, or fewer
        chosen = {(a, b) for a, b in pairs(range(n), 2) if spk[a] != spk[b]}
    else:  # rejection sampling: non-target pairs are the large majority
        chosen = set()
        while len(chosen) < want:
            m = 2 * (want - len(chosen)) + 16
            for x, y in zip(*rng.integers(0, n, size=(2, m)).tolist()):
                if spk[x] != spk[y] and len(chosen) < want:
                    chosen.add((min(x, y), max(x, y)))
    return [(1, ids[a], ids[b]) for a, b in target] + [
        (0, ids[a], ids[b]) for a, b in sorted(chosen)
    ]


def write_scores(path, enrol_ids, test_ids, scores, labels=None):
    """Write a score file atomically: ``enrol test [label] score`` lines
    (scores as ``repr``: they read back exactly); ``"-"``: standard output.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "scores.txt")
    >>> write_scores(p, ["a"], ["b"], [0.5], [1])
    >>> open(p).read()
    'a b 1 0.5\\n'
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1).tolist()
    cols = [enrol_ids, test_ids]
    if labels is not None:
        cols.append([str(int(v)) for v in np.asarray(labels).reshape(-1)])
    if any(len(c) != len(scores) for c in cols):
        raise ValueError(
            f"{[len(c) for c in cols]} IDs/labels and {len(scores)} scores: "
            "they must match"
        )
    lines = (" ".join(r[:-1]) + f" {r[-1]!r}\n" for r in zip(*cols, scores))
    if path == "-":
        sys.stdout.writelines(lines)
        return
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)


def read_scores(path):
    """Read a score file written by :func:`write_scores`.

    Returns
    -------
    enrol_ids, test_ids : list of str
    scores : numpy.ndarray
        float64 [T].
    labels : numpy.ndarray or None
        int64 [T] when the file has labels.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "scores.txt")
    >>> write_scores(p, ["a", "a"], ["b", "c"], [0.5, -1.0], [1, 0])
    >>> read_scores(p)[2:]
    (array([ 0.5, -1. ]), array([1, 0]))
    """
    path, cols, width = os.fspath(path), ([], [], [], []), None
    for n, f in _fields(path):
        if len(f) not in (3, 4) or len(f) != (width or len(f)):
            raise TrialListError(
                f"{path}:{n}: expected 'enrol test label score' or 'enrol "
                "test score' on every line"
            )
        width = len(f)
        if not is_score_line(f):
            raise TrialListError(f"{path}:{n}: bad number in {f!r}")
        cols[0].append(f[0])
        cols[1].append(f[1])
        cols[2].append(float(f[-1]))
        cols[3].extend(f[2:3] if len(f) == 4 else [])
    lab = np.asarray(cols[3], dtype=np.int64) if cols[3] else None
    return cols[0], cols[1], np.asarray(cols[2], dtype=np.float64), lab


def is_score_line(fields):
    """Whether ``fields`` (a split line) read as ``enrol test [label]
    score``: the label 0 or 1, the score a number.

    Example
    -------
    >>> is_score_line(["a", "b", "1", "0.5"]), is_score_line(["a", "b", "x"])
    (True, False)
    """
    if len(fields) not in (3, 4):
        return False
    if len(fields) == 4 and fields[2] not in ("0", "1"):
        return False
    try:
        float(fields[-1])
    except ValueError:
        return False
    return True


def _read_csv(path, data_root):
    """SpeechBrain's ``load_data_csv`` of ``--csv``, its rows checked
    first: each has as many fields as the header."""
    repl = {"data_root": data_root} if data_root else None
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, skipinitialspace=True)
            header = next(reader, [])
            bad = [(reader.line_num, len(row)) for row in reader if row]
            bad = [(n, k) for n, k in bad if k != len(header)]
        rows = {} if bad else load_data_csv(path, repl)
    except (OSError, KeyError, ValueError, csv.Error) as err:
        raise TrialListError(f"--csv {path}: {err}") from None
    if bad:
        line, n_fields = bad[0]
        raise TrialListError(
            f"--csv {path}:{line}: {n_fields} fields, the header has "
            f"{len(header)}"
        )
    return rows


def _check_whole_file(csv, uid, row, path):
    """Refuse a CSV row whose ``start``/``stop`` (samples) are a segment of
    its file: the commands embed whole files. Whole: start ``0`` (or
    empty), stop the file's frame count (read from its header), or empty
    or ``None`` (a missing column: empty)."""
    start, stop = (str(row.get(k, "")).strip() for k in ("start", "stop"))
    if start in ("", "0") and stop in ("", "None"):
        return
    try:
        frames = sf.info(path).frames
    except (RuntimeError, OSError) as err:
        raise TrialListError(
            f"--csv {csv}: row {uid}: cannot read the header of {path}: {err}"
        ) from None
    if start not in ("", "0") or stop != str(frames):
        raise TrialListError(
            f"--csv {csv}: row {uid}: start {start or 0}, stop "
            f"{stop or None} is not the whole of {path} ({frames} frames): "
            f"the commands embed whole files (start 0, stop {frames} or empty)"
        )


def resolve_audio(names, trial_file, audio_root=None, csv=None, data_root=None):
    """Audio file of each name of ``trial_file``: under ``audio_root``
    (default: the list's folder; a name without extension is tried with
    each audio extension) or the ``wav`` of its row in the SpeechBrain CSV
    ``csv`` (``$data_root`` replaced by ``data_root``); a name without a
    file raises TrialListError naming its line, a CSV row whose
    ``start``/``stop`` are a segment of its file one naming the row."""
    root = audio_root or os.path.dirname(trial_file)
    rows = _read_csv(csv, data_root) if csv else {}
    paths = []
    for name in names:
        path = os.path.join(root, name)
        uid = name if name in rows else utt_to_id(name)
        if csv:
            path = rows.get(uid, {}).get("wav", f"{name} (not an ID of {csv})")
        elif not os.path.splitext(path)[1]:
            found = [path + e for e in AUDIO_EXTENSIONS]
            path = next(filter(os.path.isfile, found), path)
        if not os.path.isfile(path):
            where = next(
                n for n, _, *et in iter_trials(trial_file) if name in et
            )
            raise TrialListError(
                f"{trial_file}:{where}: {name}: audio file not found: {path}"
            )
        if csv:
            _check_whole_file(csv, uid, rows[uid], path)
        paths.append(path)
    return paths
