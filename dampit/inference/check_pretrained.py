"""Check an exported model through SpeechBrain's own loading path.

``python -m dampit.inference.check_pretrained <model> <run>`` is the last
step of ``tools/quickstart.sh``: it loads ``<model>`` with
``SpeakerRecognition.from_hparams`` (an ``EncoderClassifier``; local files
only, no network), takes same-speaker and different-speaker trials from the
run's test data (``<run>/prepared/test.csv`` and its trial list), scores
them with ``verify_files`` and decides with the model's stored
``threshold``. For each of ``--pairs`` enrolment utterances with both kinds
of trial (in trial-list order, not chosen by score) it uses its first
same-speaker and first different-speaker trial.

Exit status: 0 when the mean same-speaker score is above the mean
different-speaker score (with ``--pairs 1``: the same-speaker score is
above the different-speaker one), 1 when it is not, 2 on bad input.
"""

import argparse
import csv
import glob
import os
import sys
import tempfile

from dampit.dataio.trials import read_trials
from dampit.inference.safe_yaml import UnsafeYAMLError, check_hparams

__all__ = ["CheckError", "check_pretrained", "main", "pick_pairs"]


class CheckError(ValueError):
    """Missing or inconsistent model/run files; the message names them."""


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
    same, diff, order = {}, {}, []
    for label, enrol, test in trials:
        if enrol not in same and enrol not in diff:
            order.append(enrol)
        book = same if label == 1 else diff
        book.setdefault(enrol, test)
    picked = [(e, same[e], diff[e]) for e in order if e in same and e in diff]
    return picked[: int(n_pairs)]


def _find_trials(prepared):
    path = os.path.join(prepared, "trials.txt")
    if os.path.isfile(path):
        return path
    found = sorted(glob.glob(os.path.join(prepared, "*trials*.txt")))
    if not found:
        raise CheckError(f"no trial list (trials.txt) in {prepared}")
    return found[0]


def _wav_paths(test_csv, data_root):
    if not os.path.isfile(test_csv):
        raise CheckError(f"test CSV not found: {test_csv}")
    with open(test_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for r in rows:
        wav = r["wav"]
        if data_root is not None:
            wav = wav.replace("$data_root", str(data_root))
        out[r["ID"]] = wav
    return out


def check_pretrained(
    model_folder, run_folder, n_pairs=1, trials=None, trust=False, out=None
):
    """Score same/different-speaker pairs of the run's test data.

    Arguments
    ---------
    model_folder : str or os.PathLike
        The exported model folder.
    run_folder : str or os.PathLike
        The recipe run it came from (``prepared/test.csv``, trials).
    n_pairs : int
        Enrolment utterances used (one trial of each kind each).
    trials : str, optional
        Trial list (default: ``<run>/prepared/trials.txt``).
    trust : bool
        Skip the YAML allow-list check.
    out : file, optional
        Where the report is printed (default stdout).

    Returns
    -------
    dict
        ``ok``, ``threshold``, ``pairs`` (enrol, same, diff, their scores
        and decisions), ``mean_same``, ``mean_diff``.
    """
    from speechbrain.inference.speaker import SpeakerRecognition

    from dampit.inference.export import read_run_hparams

    out = out or sys.stdout
    model_folder = os.path.abspath(os.fspath(model_folder))
    run_folder = os.path.abspath(os.fspath(run_folder))
    hp_file = os.path.join(model_folder, "hyperparams.yaml")
    if not os.path.isfile(hp_file):
        raise CheckError(
            f"not a model folder (no hyperparams.yaml): {model_folder}"
        )
    check_hparams(hp_file, trust=trust)
    prepared = os.path.join(run_folder, "prepared")
    trials = trials or _find_trials(prepared)
    data_root = None
    run_hp = os.path.join(run_folder, "hyperparams.yaml")
    if os.path.isfile(run_hp):
        data_root = read_run_hparams(run_hp).get("data_folder")
    wavs = _wav_paths(os.path.join(prepared, "test.csv"), data_root)
    picked = pick_pairs(read_trials(trials, known_ids=set(wavs)), n_pairs)
    if not picked:
        raise CheckError(
            f"{trials}: no enrolment utterance has both a same-speaker and a "
            "different-speaker trial"
        )
    with tempfile.TemporaryDirectory(prefix="dampit-check-") as savedir:
        model = SpeakerRecognition.from_hparams(
            source=model_folder, savedir=savedir
        )
    threshold = float(model.hparams.threshold)
    print(
        f"[dampit] {model_folder} loaded with SpeakerRecognition."
        f"from_hparams; threshold {threshold:.4f}",
        file=out,
    )
    rows = []
    for enrol, same, diff in picked:
        row = {"enrol": enrol, "same": same, "diff": diff}
        for kind in ("same", "diff"):
            # verify_files decides with SpeechBrain's fixed 0.25: keep
            # its score, decide with the stored threshold.
            score, _ = model.verify_files(wavs[enrol], wavs[row[kind]])
            score = float(score.reshape(-1)[0])
            row[f"{kind}_score"] = score
            row[f"{kind}_decision"] = score > threshold
            word = "same speaker" if score > threshold else "different"
            label = "same-speaker" if kind == "same" else "different-speaker"
            print(
                f"  {label} pair  {enrol}  {row[kind]}: score {score:.4f}"
                f" -> {word}",
                file=out,
            )
        rows.append(row)
    mean_same = sum(r["same_score"] for r in rows) / len(rows)
    mean_diff = sum(r["diff_score"] for r in rows) / len(rows)
    ok = mean_same > mean_diff
    what = "score" if len(rows) == 1 else f"mean score over {len(rows)} pairs"
    print(
        f"[dampit] same-speaker {what} {mean_same:.4f} "
        f"{'>' if ok else '<='} different-speaker {mean_diff:.4f}: "
        f"{'OK' if ok else 'FAILED'}",
        file=out,
    )
    return {
        "ok": ok,
        "threshold": threshold,
        "pairs": rows,
        "mean_same": mean_same,
        "mean_diff": mean_diff,
    }


def main(argv=None):
    """Command line: ``check_pretrained MODEL RUN [--pairs N]``.

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
        "SpeakerRecognition.from_hparams and verify same- and "
        "different-speaker pairs of the run's test data.",
    )
    parser.add_argument("model", help="exported model folder")
    parser.add_argument("run", help="the recipe run it was exported from")
    parser.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="enrolment utterances to use (one trial of each kind each)",
    )
    parser.add_argument("--trials", help="trial list (default: the run's)")
    parser.add_argument("--trust", action="store_true")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    try:
        result = check_pretrained(
            args.model, args.run, args.pairs, args.trials, args.trust
        )
    except (CheckError, UnsafeYAMLError, ValueError, OSError) as err:
        print(f"check_pretrained: error: {err}", file=sys.stderr)
        return 2
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
