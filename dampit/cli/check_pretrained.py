"""``python -m dampit.cli.check_pretrained MODEL RUN``: the quickstart's
last step, an exported model checked through SpeechBrain's own loading
path.

It loads MODEL with ``SpeakerRecognition.from_hparams`` (which executes its
``hyperparams.yaml``: run it on folders you trust, such as your own
export), scores every trial of the run's held-out trial list as
``verify_files`` does, prints a seeded random sample of trials with their
decisions at the stored ``threshold``, then the accuracy over all trials
at that threshold, which must be ``1 - EER`` up to
:func:`dampit.inference.check_pretrained.tolerance`. Exit status: 0 when it
is, 1 when not, 2 on bad input.
"""

import argparse
import random
import sys

from dampit.inference.check_pretrained import (
    SCORING,
    accuracy,
    load_speechbrain,
    read_run_trials,
    speechbrain_scores,
    tolerance,
)
from dampit.inference.export import ExportError
from dampit.inference.folder_checks import ModelFolderError

PROG = "check_pretrained"
#: Trials printed, drawn with this seed.
SHOW, SEED = 10, 0


def _print_sample(trials, scores, threshold):
    """Print :data:`SHOW` trials drawn with :data:`SEED` and their
    decisions."""
    shown = random.Random(SEED).sample(
        range(len(trials)), min(SHOW, len(trials))
    )
    print(
        f"[dampit] {len(shown)} of {len(trials)} held-out trials (seed "
        f"{SEED}), decided at threshold {threshold:.4f}:"
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


def main(argv=None):
    """``check_pretrained MODEL RUN [--trials FILE]``.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when the accuracy is ``1 - EER`` within the tolerance, 1 when
        not, 2 on bad input.

    Example
    -------
    >>> import tempfile
    >>> main([tempfile.mkdtemp(), tempfile.mkdtemp()])  # no run: refused
    2
    """
    parser = argparse.ArgumentParser(
        prog="python -m dampit.cli.check_pretrained",
        description="Load an exported model with SpeechBrain's "
        "SpeakerRecognition.from_hparams, decide the run's held-out trials "
        "at its stored threshold and compare the accuracy with 1 - EER.",
    )
    parser.add_argument("model", help="exported model folder (trusted)")
    parser.add_argument("run", help="the recipe run it was exported from")
    parser.add_argument("--trials", help="trial list (default: the run's)")
    args = parser.parse_args(argv)
    try:
        eer, rows, trials = read_run_trials(args.run, args.trials)
        model, threshold = load_speechbrain(args.model)
    except (ExportError, ModelFolderError, ValueError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"[dampit] {args.model} loaded with SpeakerRecognition.from_hparams")
    scores = speechbrain_scores(model, trials, rows)
    _print_sample(trials, scores, threshold)
    labels = [int(label) for label, _, _ in trials]
    acc = accuracy(scores, labels, threshold)
    n_target = sum(labels)
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
