"""Verification trial lists: reading, writing and generating them.

A trial list has one trial a line in the official VoxCeleb format::

    label enrol test

where ``label`` is 1 (same speaker, a *target* trial) or 0 (different
speakers, a *non-target* trial). The official lists name utterances by
their path under ``wav/`` (``id10270/x6uYqmx31kE/00001.wav``); dampit's
preparers write them with the CSV IDs instead, which are the same relative
paths without the extension (``id10270/x6uYqmx31kE/00001``), so every trial
maps to a row of ``test.csv``. :func:`utt_to_id` turns one into the other.
"""

import logging
import os

import numpy as np

from dampit.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".m4a", ".ogg", ".mp3", ".aac")


class TrialListError(ValueError):
    """A malformed or inconsistent trial list; the message names the file
    and line."""


def utt_to_id(name):
    """Map an utterance path from an official trial list to a CSV ID.

    Back-slashes become ``/``, a leading ``./`` and a trailing audio
    extension are removed.

    Arguments
    ---------
    name : str
        ``id10270/x6uYqmx31kE/00001.wav`` or an ID already.

    Returns
    -------
    str
        ``id10270/x6uYqmx31kE/00001``.

    Example
    -------
    >>> utt_to_id("id10270/x6uYqmx31kE/00001.wav")
    'id10270/x6uYqmx31kE/00001'
    >>> utt_to_id("./spk1\\\\a.flac")
    'spk1/a'
    >>> utt_to_id("spk1/a")
    'spk1/a'
    """
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    root, ext = os.path.splitext(name)
    if ext.lower() in AUDIO_EXTENSIONS:
        name = root
    return name


def speaker_of(utt_id):
    """Speaker of an utterance ID or path: its first path component.

    Arguments
    ---------
    utt_id : str
        ``id10270/x6uYqmx31kE/00001`` (or with an extension).

    Returns
    -------
    str
        ``id10270``.

    Example
    -------
    >>> speaker_of("id10270/x6uYqmx31kE/00001.wav")
    'id10270'
    """
    return utt_to_id(utt_id).split("/", 1)[0]


def read_trials(path, known_ids=None, as_ids=True):
    """Read a trial list (``label enrol test`` per line).

    Blank lines and lines starting with ``#`` are ignored. Fields may be
    separated by any white space.

    Arguments
    ---------
    path : str or os.PathLike
        The trial list.
    known_ids : collection of str or None
        When given, every enrol and test utterance must be in it (after
        the ``as_ids`` mapping); otherwise :class:`TrialListError` names
        the unknown ones with their line numbers.
    as_ids : bool
        Map utterance paths to IDs with :func:`utt_to_id` (strip the audio
        extension), so official lists and dampit's lists read alike.

    Returns
    -------
    list of tuple
        ``(label: int, enrol: str, test: str)`` in file order.

    Raises
    ------
    TrialListError
        On a missing file, a row without exactly three fields, a label
        other than 0 or 1, or unknown utterances: ``path:line: ...``.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "trials.txt")
    >>> with open(p, "w") as f:
    ...     _ = f.write("1 a/x/1.wav a/y/2.wav\\n0 a/x/1.wav b/z/3.wav\\n")
    >>> read_trials(p)
    [(1, 'a/x/1', 'a/y/2'), (0, 'a/x/1', 'b/z/3')]
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TrialListError(f"trial list not found: {path}")
    if known_ids is not None and not isinstance(known_ids, (set, frozenset)):
        known_ids = set(known_ids)
    trials = []
    unknown = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = text.split()
            if len(fields) != 3:
                raise TrialListError(
                    f"{path}:{lineno}: expected 3 fields 'label enrol test',"
                    f" got {len(fields)}: {text!r}"
                )
            label, enrol, test = fields
            if label not in ("0", "1"):
                raise TrialListError(
                    f"{path}:{lineno}: label must be 0 or 1, got {label!r}"
                )
            if as_ids:
                enrol, test = utt_to_id(enrol), utt_to_id(test)
            if known_ids is not None:
                for utt in (enrol, test):
                    if utt not in known_ids:
                        unknown.append((lineno, utt))
            trials.append((int(label), enrol, test))
    if unknown:
        shown = ", ".join(f"line {n}: {u}" for n, u in unknown[:10])
        more = f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
        raise TrialListError(
            f"{path}: {len(unknown)} trial utterance(s) not among the known "
            f"IDs: {shown}{more}"
        )
    return trials


def write_trials(path, trials):
    """Write trials atomically, one ``label enrol test`` a line.

    Arguments
    ---------
    path : str or os.PathLike
        Destination file.
    trials : iterable of tuple
        ``(label, enrol, test)`` with label 0/1 (int, bool or "0"/"1").

    Raises
    ------
    TrialListError
        On a bad label or an utterance name that is empty or holds white
        space (the format could not be read back); names the trial index.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> write_trials(p, [(1, "a/1", "a/2"), (0, "a/1", "b/1")])
    >>> print(open(p).read(), end="")
    1 a/1 a/2
    0 a/1 b/1
    >>> read_trials(p)
    [(1, 'a/1', 'a/2'), (0, 'a/1', 'b/1')]
    """
    lines = []
    for i, trial in enumerate(trials):
        try:
            label, enrol, test = trial
        except (TypeError, ValueError) as err:
            raise TrialListError(
                f"trial {i} must be (label, enrol, test), got {trial!r}"
            ) from err
        if label not in (0, 1, "0", "1"):  # True/False, 1.0 compare equal
            raise TrialListError(
                f"trial {i}: label must be 0 or 1, got {label!r}"
            )
        for utt in (enrol, test):
            if not isinstance(utt, str) or not utt or len(utt.split()) != 1:
                raise TrialListError(
                    f"trial {i}: utterance name {utt!r} is empty or holds "
                    "white space"
                )
        lines.append(f"{int(label)} {enrol} {test}\n")
    atomic_write_text(path, "".join(lines))


def trial_summary(trials):
    """Counts of a trial list: trials, targets, non-targets, utterances and
    speakers (speaker = first path component of an ID).

    Arguments
    ---------
    trials : list of tuple
        ``(label, enrol, test)``.

    Returns
    -------
    dict
        ``{"trials", "target", "nontarget", "utterances", "speakers"}``.

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


def make_trials(
    utt_ids,
    spk_ids,
    max_target=None,
    nontarget_ratio=1.0,
    seed=0,
):
    """Generate a deterministic, balanced trial list among utterances.

    Target trials are all same-speaker pairs ``(i, j)``, ``i < j`` in the
    sorted order of the IDs (or ``max_target`` of them drawn without
    replacement). Non-target trials are ``round(nontarget_ratio *
    n_target)`` different-speaker pairs drawn without replacement (all of
    them when fewer exist). The result is sorted targets first, then
    non-targets, each in pair order, and depends only on the inputs and
    ``seed``.

    Arguments
    ---------
    utt_ids : list of str
        Utterance IDs (unique).
    spk_ids : list of str
        Speaker of each utterance.
    max_target : int or None
        Most target trials (None: all same-speaker pairs).
    nontarget_ratio : float
        Non-target trials per target trial.
    seed : int
        Seed of the sampling.

    Returns
    -------
    list of tuple
        ``(label, enrol, test)``.

    Raises
    ------
    ValueError
        On duplicate IDs, mismatched lengths, or fewer than two speakers
        when non-target trials are asked for.

    Example
    -------
    >>> ids = ["a/1", "a/2", "b/1", "b/2"]
    >>> trials = make_trials(ids, ["a", "a", "b", "b"])
    >>> [t for t in trials if t[0] == 1]
    [(1, 'a/1', 'a/2'), (1, 'b/1', 'b/2')]
    >>> len(trials)
    4
    """
    utt_ids = list(utt_ids)
    spk_ids = list(spk_ids)
    if len(utt_ids) != len(spk_ids):
        raise ValueError(
            f"make_trials: {len(utt_ids)} utterances but {len(spk_ids)} "
            "speaker labels"
        )
    if len(set(utt_ids)) != len(utt_ids):
        seen, dup = set(), []
        for u in utt_ids:
            if u in seen:
                dup.append(u)
            seen.add(u)
        raise ValueError(f"make_trials: duplicate utterance IDs: {dup[:10]}")
    order = sorted(range(len(utt_ids)), key=lambda i: utt_ids[i])
    ids = [utt_ids[i] for i in order]
    spk = [spk_ids[i] for i in order]
    rng = np.random.default_rng(seed)

    by_spk = {}
    for i, s in enumerate(spk):
        by_spk.setdefault(s, []).append(i)
    target = [
        (a, b)
        for s in sorted(by_spk)
        for k, a in enumerate(by_spk[s])
        for b in by_spk[s][k + 1 :]
    ]
    if max_target is not None and max_target < len(target):
        pick = rng.choice(len(target), size=int(max_target), replace=False)
        target = [target[k] for k in sorted(pick)]

    n = len(ids)
    n_pairs = n * (n - 1) // 2
    n_nontarget_total = n_pairs - sum(
        len(v) * (len(v) - 1) // 2 for v in by_spk.values()
    )
    want = int(round(nontarget_ratio * len(target)))
    if want > 0 and n_nontarget_total == 0:
        raise ValueError(
            "make_trials: non-target trials need at least two speakers, got "
            f"{len(by_spk)}"
        )
    if want >= n_nontarget_total:
        nontarget = [
            (a, b)
            for a in range(n)
            for b in range(a + 1, n)
            if spk[a] != spk[b]
        ]
    else:
        chosen = set()
        # Rejection sampling of unordered different-speaker pairs; cheap
        # because non-target pairs are the large majority when asked for
        # fewer than all of them.
        while len(chosen) < want:
            m = 2 * (want - len(chosen)) + 16
            a = rng.integers(0, n, size=m)
            b = rng.integers(0, n, size=m)
            for x, y in zip(a.tolist(), b.tolist()):
                if x == y or spk[x] == spk[y]:
                    continue
                pair = (x, y) if x < y else (y, x)
                if pair not in chosen:
                    chosen.add(pair)
                    if len(chosen) == want:
                        break
        nontarget = sorted(chosen)
    return [(1, ids[a], ids[b]) for a, b in target] + [
        (0, ids[a], ids[b]) for a, b in nontarget
    ]
