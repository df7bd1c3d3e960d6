"""``dampit-verify``: speaker verification with an exported model.

::

    dampit-verify --model model/ enrol.wav test.wav
    # score 0.8123  threshold 0.4410  -> same speaker
    dampit-verify --model model/ --trials trials.txt --out scores.txt

A trial list (:mod:`dampit.dataio.trials`) names audio files relative to
``--audio-root`` (default: the list's folder; a name without extension is
tried with each audio extension) or IDs of the SpeechBrain CSV given with
``--csv``. Each file is embedded once, the trials are streamed and scored
in chunks; ``--out`` gets a score file (``enrol test [label] score``); an
existing ``--out`` is replaced only when it is a score file, never when
it is the trial list or the CSV.
The threshold (``score > threshold``: same speaker) is the model's
calibrated one unless ``--threshold`` is given (for two files, the
log-likelihood ratio of ``dampit-calibrate --llr`` follows when it was
fitted); with labels, the EER, minDCF (p_target 0.01) and the error
rates at the threshold are printed.

``--asnorm`` AS-normalises the scores with the cohort stored in the model
folder (``dampit-cohort``; :mod:`dampit.inference.cohort`, top 300 cohort
scores per file); a folder without one is refused before any embedding.
The stored threshold is for cosines, not for normalised scores: with
``--asnorm`` the scores (and, with labels, the EER and minDCF) are given,
and decisions only at a ``--threshold`` you give.
"""

import contextlib
import os
import sys
import warnings

import numpy as np

from dampit.cli import common
from dampit.dataio import trials
from dampit.inference.calibration import error_rates_at
from dampit.inference.cohort import normalise_scores, require_cohort
from dampit.inference.stored_threshold import read_calibration
from dampit.metrics.error_rates import compute_eer, compute_min_dcf
from dampit.metrics.scoring import cosine_scores

PROG = "dampit-verify"
NO_DECISION = (
    "not decided: the stored threshold is for cosines, not AS-norm "
    "scores (give --threshold)"
)


def _report(scores, labels, threshold):
    """The summary; ``threshold`` None: AS-norm scores, no decisions."""
    if threshold is None:
        print(f"[dampit] {scores.size} AS-norm scores; {NO_DECISION}")
    else:
        accept = scores > threshold
        print(
            f"[dampit] {scores.size} trials scored, threshold "
            f"{threshold:.4f}, {accept.sum()} accepted"
        )
    y = None if labels is None else labels.astype(bool)
    if y is not None and (y.all() or not y.any()):
        print("[dampit] the labels hold one class only: no EER")
    elif y is not None:
        eer, eer_thr = compute_eer(scores, y)
        dcf = compute_min_dcf(scores, y, p_target=0.01)[0]
        text = (
            f"[dampit] EER {100 * eer:.2f}% (threshold {eer_thr:.4f}), "
            f"minDCF(0.01) {dcf:.4f}"
        )
        if threshold is not None:
            miss, fa = error_rates_at(scores, y, threshold)
            text += (
                f"; at {threshold:.4f}: miss {100 * miss:.2f}%, false "
                f"alarm {100 * fa:.2f}%"
            )
        print(f"{text} ({y.sum()} target / {(~y).sum()} non-target)")


def _print_pair(args, score, threshold):
    """The score of two files, and the decision when there is a threshold
    (and the LLR of cosines when ``dampit-calibrate --llr`` fitted it)."""
    if threshold is None:
        print(f"score {score:.4f} (AS-norm)  {NO_DECISION}")
        return
    word = "same speaker" if score > threshold else "different speakers"
    llr, extra = (read_calibration(args.model) or {}).get("llr"), ""
    if llr is not None and not args.asnorm:
        extra = f"  llr {llr['scale'] * score + llr['offset']:.3f}"
    print(f"score {score:.4f}  threshold {threshold:.4f}  -> {word}{extra}")


def check_out(args):
    """``--out`` is none of the command's inputs, and a file it would
    replace is a score file (its first line), so that nothing else is
    overwritten."""
    out = os.path.realpath(args.out)
    for flag, path in (("--trials", args.trials), ("--csv", args.csv)):
        if path and os.path.realpath(path) == out:
            raise common.CliError(f"--out {args.out} is the {flag} file")
    if os.path.isfile(out) and os.path.getsize(out) > 0:
        with open(out, "rb") as f:
            first = f.readline(4096).decode("utf-8", "replace").split()
        if not trials.is_score_line(first):
            raise common.CliError(
                f"--out {args.out} exists and is not a score file (enrol "
                "test [label] score): nothing replaced"
            )


def _verify(args):
    common.check_args(args, out_folder=False)
    if args.out:
        check_out(args)
    with contextlib.ExitStack() as stack:
        if args.out:  # a second writer of --out: refused before the work
            common.hold_output(stack, args.out)
        return _verify_locked(args)


def _verify_locked(args):
    if args.trials:
        enrol, test, labels, names = trials.read_trial_indices(args.trials)
        paths = trials.resolve_audio(
            names, args.trials, args.audio_root, args.csv, args.data_root
        )
    elif missing := [f for f in args.files if not os.path.isfile(f)]:
        raise common.CliError(f"audio file not found: {missing[0]}")
    else:
        names = paths = args.files
        enrol, test, labels = np.array([0]), np.array([1]), None
    if args.threshold is not None or args.asnorm:  # the stored threshold
        warnings.filterwarnings("ignore", ".*threshold")  # is not used
    model = common.open_model(args)
    if args.asnorm:  # before any embedding
        require_cohort(model)
    threshold = model.threshold if args.threshold is None else args.threshold
    if args.asnorm and args.threshold is None:
        threshold = None
    emb = common.embed_paths(model, paths, args)
    scores = cosine_scores(emb, enrol, test)
    if args.asnorm:
        scores = normalise_scores(model, scores, emb, enrol, test)
    if not args.trials:
        _print_pair(args, scores[0], threshold)
        return 0
    names = np.array(names, dtype=object)
    with common.writing(args.out or "-"):
        trials.write_scores(
            args.out or "-", names[enrol], names[test], scores, labels
        )
    _report(scores, labels, threshold)
    return 0


def main(argv=None):
    """Run ``dampit-verify``; returns 0, or 2 on bad input."""
    parser = common.Parser(PROG, "Verify two audio files or a trial list.")
    add = parser.add_argument
    add("files", nargs="*", help="enrol and test audio")
    add("--trials", help="trial list instead of two files")
    add("--audio-root", help="folder of the trial paths")
    add("--csv", help="SpeechBrain CSV mapping trial IDs")
    add("--data-root", help="$data_root of the CSV")
    add("--out", help="score file to write (default: standard output)")
    add("--threshold", type=common.FINITE, help="instead of the model's")
    add("--asnorm", action="store_true", help="AS-norm with the cohort")
    args = parser.parse_args(argv)
    if bool(args.trials) == bool(args.files) or len(args.files) not in (0, 2):
        parser.error("give either two audio files or --trials FILE")
    args.no_progress |= not args.trials
    return common.run(PROG, args, lambda: _verify(args))


if __name__ == "__main__":
    sys.exit(main())
