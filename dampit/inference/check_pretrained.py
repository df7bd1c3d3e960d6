"""Check an exported model through SpeechBrain's own loading path.

``python -m dampit.inference.check_pretrained MODEL RUN`` is the last step
of ``tools/quickstart.sh``: it loads MODEL with
``SpeakerRecognition.from_hparams`` (which executes its ``hyperparams.yaml``:
run it on folders you trust, such as your own export), scores every trial
of the run's held-out trial list as ``verify_files`` does (cosine of the
whole-utterance embeddings, each utterance embedded once), prints a seeded
random sample of trials with their decisions at the stored ``threshold``,
then the accuracy over all trials at that threshold.

The stored threshold is the EER threshold of the run's ``full_cosine``
scores of these same trials (``verification/summary.json``), so at it the
share of wrong decisions is the EER: the accuracy must be ``1 - EER`` up to
:func:`tolerance`. Exit status: 0 when it is, 1 when not, 2 on bad input.
"""

import argparse
import json
import os
import random
import sys
import tempfile

from speechbrain.dataio.dataio import load_data_csv
from speechbrain.inference.speaker import SpeakerRecognition

from dampit.dataio.trials import read_trials
from dampit.inference.export import ExportError, read_run_hparams
from dampit.inference.folder_checks import (
    HPARAMS_FILE,
    YAML_ERRORS,
    ModelFolderError,
    check_value,
    one_line,
)

__all__ = ["accuracy", "main", "run_eer", "tolerance"]

SCORING = "full_cosine"
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
    ValueError
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
    path = os.path.join(run, "verification", "summary.json")
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None
    if isinstance(summary, dict):
        for key, res in summary.items():
            eer = res.get("eer") if isinstance(res, dict) else None
            if key.split("/")[-1] == SCORING and isinstance(eer, float):
                if 0 <= eer <= 1:
                    return eer
    raise ValueError(f"{path}: no {SCORING} EER in [0, 1]")


def _score_all(model, trials, rows):
    """Scores of ``(label, enrol, test)`` trials, each file embedded once."""
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


def main(argv=None):
    """``check_pretrained MODEL RUN [--show N] [--seed S] [--trials FILE]``.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when the accuracy is ``1 - EER`` within :func:`tolerance`, 1 when
        not, 2 on bad input.
    """
    parser = argparse.ArgumentParser(
        prog="python -m dampit.inference.check_pretrained",
        description="Load an exported model with SpeechBrain's "
        "SpeakerRecognition.from_hparams, decide the run's held-out trials "
        "at its stored threshold and compare the accuracy with 1 - EER.",
    )
    parser.add_argument("model", help="exported model folder (trusted)")
    parser.add_argument("run", help="the recipe run it was exported from")
    parser.add_argument("--show", type=int, default=10, help="trials shown")
    parser.add_argument("--seed", type=int, default=0, help="of the sample")
    parser.add_argument("--trials", help="trial list (default: the run's)")
    args = parser.parse_args(argv)
    prepared = os.path.join(args.run, "prepared")
    trial_file = args.trials or os.path.join(prepared, "trials.txt")
    try:
        if args.show < 0:
            raise ValueError(f"--show must be >= 0, got {args.show}")
        hp = read_run_hparams(args.run)
        eer = run_eer(args.run)
        rows = load_data_csv(
            os.path.join(prepared, "test.csv"),
            replacements={"data_root": str(hp.get("data_folder"))},
        )
        trials = read_trials(trial_file, known_ids=set(rows))
        labels = [int(label) for label, _, _ in trials]
        n_target = sum(labels)
        if n_target in (0, len(labels)):
            raise ValueError(
                f"{trial_file}: needs same- and different-speaker trials"
            )
    except (ExportError, ValueError, OSError) as err:
        print(f"check_pretrained: error: {err}", file=sys.stderr)
        return 2
    where = os.path.join(args.model, HPARAMS_FILE)
    try:
        with tempfile.TemporaryDirectory(prefix="dampit-check-") as savedir:
            model = SpeakerRecognition.from_hparams(
                source=os.path.abspath(args.model), savedir=savedir
            )
        threshold = getattr(model.hparams, "threshold", None)
        threshold = float(check_value(where, "threshold", threshold))
    except YAML_ERRORS as err:  # ModelFolderError names the file
        text = str(err) if isinstance(err, ModelFolderError) else None
        text = text or f"{where}: {one_line(err)}"
        print(f"check_pretrained: error: {text}", file=sys.stderr)
        return 2
    print(f"[dampit] {args.model} loaded with SpeakerRecognition.from_hparams")
    scores = _score_all(model, trials, rows)
    shown = random.Random(args.seed).sample(
        range(len(trials)), min(args.show, len(trials))
    )
    print(
        f"[dampit] {len(shown)} of {len(trials)} held-out trials (seed "
        f"{args.seed}), decided at threshold {threshold:.4f}:"
    )
    for k in sorted(shown):
        label, enrol, test = trials[k]
        truth = "same" if label else "different"
        said = "same" if scores[k] > threshold else "different"
        verdict = "right" if truth == said else "WRONG"
        print(
            f"  {truth:>9}-speaker trial {enrol} {test}: score "
            f"{scores[k]:.4f} -> {said} speaker ({verdict})"
        )
    acc = accuracy(scores, labels, threshold)
    tol = tolerance(n_target, len(labels) - n_target)
    ok = abs(acc - (1 - eer)) <= tol
    print(
        f"[dampit] accuracy over all {len(trials)} trials {100 * acc:.2f} %; "
        f"the run's {SCORING} EER {100 * eer:.2f} % gives 1 - EER "
        f"{100 * (1 - eer):.2f} % (tolerance {100 * tol:.2f} points): "
        f"{'OK' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
