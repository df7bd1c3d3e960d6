"""Check an exported model through SpeechBrain's own loading path.

``python -m dampit.inference.check_pretrained MODEL RUN`` is the last step
of ``tools/quickstart.sh``: it loads MODEL with
``SpeakerRecognition.from_hparams`` (which executes its ``hyperparams.yaml``:
run it on folders you trust, such as your own export), takes the first
same-speaker and first different-speaker trial of ``--pairs`` enrolment
utterances of the run's trial list (file order), scores them with
``verify_files`` and decides with the stored ``threshold``.

Exit status: 0 when the mean same-speaker score is above the mean
different-speaker score, 1 when not, 2 on bad input.
"""

import argparse
import os
import sys
import tempfile

from speechbrain.dataio.dataio import load_data_csv
from speechbrain.inference.speaker import SpeakerRecognition

from dampit.dataio.trials import read_trials
from dampit.inference.export import ExportError, read_run_hparams

__all__ = ["main", "pick_pairs"]


def pick_pairs(trials, n_pairs=1):
    """Same- and different-speaker trials sharing an enrolment utterance.

    Arguments
    ---------
    trials : list of tuple
        ``(label, enrol, test)`` in file order.
    n_pairs : int
        Enrolment utterances to use.

    Returns
    -------
    list of tuple
        ``(enrol, same_test, different_test)``, in order of first
        appearance of the enrolment utterance.

    Example
    -------
    >>> trials = [(1, "a", "b"), (1, "a", "c"), (0, "a", "x"),
    ...           (0, "d", "y"), (1, "d", "e")]
    >>> pick_pairs(trials, 5)
    [('a', 'b', 'x'), ('d', 'e', 'y')]
    """
    first = {}
    for label, enrol, test in trials:
        first.setdefault(enrol, {}).setdefault(int(label), test)
    picked = [(e, t[1], t[0]) for e, t in first.items() if len(t) == 2]
    return picked[: int(n_pairs)]


def main(argv=None):
    """``check_pretrained MODEL RUN [--pairs N] [--trials FILE]``.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when same-speaker scores are higher, 1 when not, 2 on errors.
    """
    parser = argparse.ArgumentParser(
        prog="python -m dampit.inference.check_pretrained",
        description="Load an exported model with SpeechBrain's "
        "SpeakerRecognition.from_hparams and verify pairs of the run's "
        "test data.",
    )
    parser.add_argument("model", help="exported model folder (trusted)")
    parser.add_argument("run", help="the recipe run it was exported from")
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--trials", help="trial list (default: the run's)")
    args = parser.parse_args(argv)
    prepared = os.path.join(args.run, "prepared")
    trials = args.trials or os.path.join(prepared, "trials.txt")
    try:
        hp = read_run_hparams(args.run)
        rows = load_data_csv(
            os.path.join(prepared, "test.csv"),
            replacements={"data_root": str(hp.get("data_folder"))},
        )
        picked = pick_pairs(
            read_trials(trials, known_ids=set(rows)), args.pairs
        )
        if not picked:
            raise ValueError(f"{trials}: no enrolment with both kinds of trial")
    except (ExportError, ValueError, OSError) as err:
        print(f"check_pretrained: error: {err}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dampit-check-") as savedir:
        model = SpeakerRecognition.from_hparams(
            source=os.path.abspath(args.model), savedir=savedir
        )
    threshold = float(model.hparams.threshold)
    print(f"[dampit] {args.model} loaded with SpeakerRecognition.from_hparams")
    scores = {1: [], 0: []}
    for enrol, *tests in picked:
        for label, test in zip((1, 0), tests):
            score, _ = model.verify_files(rows[enrol]["wav"], rows[test]["wav"])
            scores[label].append(float(score.reshape(-1)[0]))
            word = "same" if scores[label][-1] > threshold else "different"
            print(
                f"  {'same' if label else 'different'}-speaker pair {enrol} "
                f"{test}: score {scores[label][-1]:.4f} -> {word} speaker"
            )
    same, diff = (sum(scores[k]) / len(scores[k]) for k in (1, 0))
    ok = same > diff
    print(
        f"[dampit] mean same-speaker score {same:.4f} "
        f"{'>' if ok else '<='} different-speaker {diff:.4f} (threshold "
        f"{threshold:.4f}): {'OK' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
