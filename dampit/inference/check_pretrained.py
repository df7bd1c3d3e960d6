"""Check an exported model through SpeechBrain's own loading path.

``python -m dampit.cli.check_pretrained MODEL RUN`` is the last step
of ``tools/quickstart.sh``: it loads MODEL with
``SpeakerRecognition.from_hparams`` (which executes its ``hyperparams.yaml``:
run it on folders you trust, such as your own export), scores every trial
of the run's held-out trial list as ``verify_files`` does (cosine of the
whole-utterance embeddings, each utterance embedded once), prints a seeded
random sample of trials with their decisions at the stored ``threshold``,
then the accuracy over all trials at that threshold. This module holds
the check's steps; :mod:`dampit.cli.check_pretrained` runs and prints them.

The stored threshold is the EER threshold of the run's ``full_cosine``
scores of these same trials (``verification/summary.json``), so at it the
share of wrong decisions is the EER: the accuracy must be ``1 - EER`` up to
:func:`tolerance`. Exit status: 0 when it is, 1 when not, 2 on bad input.
"""

import os
import tempfile

from speechbrain.dataio.dataio import load_data_csv
from speechbrain.inference.speaker import SpeakerRecognition

from dampit.dataio.trials import read_trials
from dampit.inference.export import (
    SCORING,
    ExportError,
    read_run_hparams,
    read_summary,
)
from dampit.inference.folder_checks import (
    HPARAMS_FILE,
    YAML_ERRORS,
    ModelFolderError,
    check_value,
    one_line,
)

__all__ = [
    "accuracy",
    "load_speechbrain",
    "read_run_trials",
    "run_eer",
    "speechbrain_scores",
    "tolerance",
]

# Scores within about 1e-5 of the stored threshold may fall on either side
# of it: from_hparams and the training-side embeddings agree to 1e-5, not
# exactly (the export checks that). One trial in a hundred is allowed.
FLIP_MARGIN = 0.01


def tolerance(n_target, n_nontarget):
    """How far the accuracy at the EER threshold may be from ``1 - EER``.

    At the EER threshold the miss and false-alarm rates differ by at most
    one step of each (``1 / n_target``, ``1 / n_nontarget``: SpeechBrain's
    and dampit's EER is the mean of the two rates at the closest
    threshold), and the accuracy weighs them by the trial counts where the
    EER averages them; both stay within the sum of the two steps. On top
    comes :data:`FLIP_MARGIN` for scores that sit on the threshold.

    Arguments
    ---------
    n_target, n_nontarget : int
        Same-speaker and different-speaker trials (each > 0).

    Returns
    -------
    float
        The largest accepted ``|accuracy - (1 - EER)|``.

    Example
    -------
    >>> round(tolerance(100, 400), 4)
    0.0225
    """
    return 1 / n_target + 1 / n_nontarget + FLIP_MARGIN


def accuracy(scores, labels, threshold):
    """Share of trials decided right with ``score > threshold``: same.

    Arguments
    ---------
    scores : list of float
        Trial scores.
    labels : list of int
        1 same speaker, 0 different.
    threshold : float
        Accept (same speaker) above it.

    Returns
    -------
    float
        Accuracy in [0, 1].

    Example
    -------
    >>> accuracy([0.9, 0.2, 0.6, 0.1], [1, 0, 0, 1], 0.5)
    0.5
    """
    right = sum((s > threshold) == bool(y) for s, y in zip(scores, labels))
    return right / len(scores)


def run_eer(run):
    """The ``full_cosine`` EER of a recipe run's verification summary.

    Arguments
    ---------
    run : str
        Recipe run folder (``verification/summary.json`` in it).

    Returns
    -------
    float
        The EER, a fraction.

    Raises
    ------
    ExportError
        When the file is missing, unreadable or has no such EER.

    Example
    -------
    >>> import json, os, tempfile
    >>> run = tempfile.mkdtemp()
    >>> os.mkdir(os.path.join(run, "verification"))
    >>> with open(os.path.join(run, "verification", "summary.json"), "w") as f:
    ...     json.dump({"trials/full_cosine": {"eer": 0.125}}, f)
    >>> run_eer(run)
    0.125
    """
    path, summary, key = read_summary(run, "verify the run first")
    eer = summary[key].get("eer")
    if not isinstance(eer, float) or not 0 <= eer <= 1:
        raise ExportError(f"{path}: no {SCORING} EER in [0, 1]")
    return eer


def read_run_trials(run, trial_file=None):
    """The run's ``full_cosine`` EER and its held-out trials.

    Arguments
    ---------
    run : str
        Recipe run folder (``hyperparams.yaml``, ``prepared/test.csv``,
        ``verification/summary.json``).
    trial_file : str, optional
        Trial list of IDs of ``test.csv`` (default: the run's
        ``prepared/trials.txt``).

    Returns
    -------
    tuple
        ``(eer, rows, trials)``: the EER, ``test.csv``'s rows by ID (paths
        resolved) and the ``(label, enrol, test)`` trials.

    Raises
    ------
    ExportError, ValueError, OSError
        A run or trial list that cannot be read, or trials of one kind;
        the message names the file.
    """
    prepared = os.path.join(run, "prepared")
    trial_file = trial_file or os.path.join(prepared, "trials.txt")
    hp = read_run_hparams(run)
    eer = run_eer(run)
    rows = load_data_csv(
        os.path.join(prepared, "test.csv"),
        replacements={"data_root": str(hp.get("data_folder"))},
    )
    trials = read_trials(trial_file, known_ids=set(rows))
    n_target = sum(int(label) for label, _, _ in trials)
    if n_target in (0, len(trials)):
        raise ValueError(
            f"{trial_file}: needs same- and different-speaker trials"
        )
    return eer, rows, trials


def load_speechbrain(model):
    """A model folder loaded by ``SpeakerRecognition.from_hparams`` (which
    executes its ``hyperparams.yaml``: for folders you trust) and its
    stored threshold.

    Raises
    ------
    ModelFolderError
        A folder SpeechBrain cannot load or without a usable threshold; the
        message names ``hyperparams.yaml``.
    """
    where = os.path.join(model, HPARAMS_FILE)
    try:
        with tempfile.TemporaryDirectory(prefix="dampit-check-") as savedir:
            loaded = SpeakerRecognition.from_hparams(
                source=os.path.abspath(model), savedir=savedir
            )
        threshold = getattr(loaded.hparams, "threshold", None)
        threshold = float(check_value(where, "threshold", threshold))
    except YAML_ERRORS as err:  # ModelFolderError names the file
        text = str(err) if isinstance(err, ModelFolderError) else None
        raise ModelFolderError(text or f"{where}: {one_line(err)}") from None
    return loaded, threshold


def speechbrain_scores(model, trials, rows):
    """Scores of ``(label, enrol, test)`` trials as SpeechBrain's
    ``verify_files`` computes them (cosine of whole-utterance embeddings),
    each file of ``rows`` (ID -> row with ``wav``) embedded once."""
    embeddings = {}
    for _, enrol, test in trials:
        for utt in (enrol, test):
            if utt not in embeddings:
                wav = model.load_audio(rows[utt]["wav"])
                embeddings[utt] = model.encode_batch(wav[None], normalize=False)
    return [
        float(model.similarity(embeddings[e], embeddings[t]).reshape(-1)[0])
        for _, e, t in trials
    ]
