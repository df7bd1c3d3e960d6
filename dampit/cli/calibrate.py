"""``dampit-calibrate``: set a model's threshold on the user's own pairs.

::

    dampit-calibrate --model model/ --trials pairs.txt --target-far 0.01
    dampit-calibrate --model model/ --trials pairs.txt --eer --llr

The labelled trial list (``label enrol test``, :mod:`dampit.dataio.
trials`) names audio files as ``dampit-verify`` reads them (``--audio-root``
or ``--csv``); a name's first path component is its speaker
(``alice/1.wav``), and a target trial must pair one speaker's files. The
threshold is set on every trial at the operating point (``--eer``,
``--target-far X``, ``--target-frr X``); the error rates printed are
estimated by cross-validation over the speakers (:mod:`dampit.inference.
calibration`), with 95% bootstrap intervals. ``--llr`` also fits ``llr =
scale * score + offset``. The threshold is then written into the model
folder (:func:`dampit.inference.stored_threshold.write_threshold`: JSON
and YAML, the previous values kept in ``threshold_history``) unless
``--dry-run``; ``--out`` writes the record as JSON, replacing only a
report of ``dampit-calibrate`` (never the trial list, the CSV or a file in
the model folder). Fewer trials than
:func:`~dampit.inference.calibration.minimum_trials` are refused unless
``--force``.
"""

import json
import os
import sys
import warnings

import numpy as np

from dampit.cli import common
from dampit.dataio import trials
from dampit.inference import calibration as cal
from dampit.inference.stored_threshold import (
    restore_threshold,
    write_threshold,
)
from dampit.metrics.scoring import cosine_scores
from dampit.utils.atomic import atomic_write_text

PROG = "dampit-calibrate"
EXAMPLES = """examples:
  dampit-calibrate --model model/ --trials pairs.txt --target-far 0.01
  dampit-calibrate --model model/ --trials pairs.txt --audio-root wavs/ \\
      --eer --llr --dry-run
pairs.txt lines: '1 alice/a.wav alice/b.wav' (target), '0 alice/a.wav
bob/c.wav' (non-target); the first path component names the speaker."""


def _point(args):
    """``(point, rate, words)`` of the chosen operating point."""
    if args.eer:
        return "eer", None, "the EER"
    if args.target_far is not None:
        return "far", args.target_far, f"FAR <= {100 * args.target_far:g}%"
    return "frr", args.target_frr, f"FRR <= {100 * args.target_frr:g}%"


def _speakers(args):
    """Trial indices, labels, names and each trial's two speakers, with a
    target trial between two speakers (or a non-target within one) named
    by its line."""
    enrol, test, labels, names = trials.read_trial_indices(args.trials)
    if labels is None:
        raise common.CliError(f"{args.trials}: needs labelled trials")
    spk = [trials.speaker_of(n) for n in names]
    for n, lab, e, t in trials.iter_trials(args.trials):
        same = trials.speaker_of(e) == trials.speaker_of(t)
        if same != bool(lab):
            raise common.CliError(
                f"{args.trials}:{n}: label {lab} but the speakers (first "
                f"path components) are {trials.speaker_of(e)!r} and "
                f"{trials.speaker_of(t)!r}"
            )
    spk = np.array(spk, dtype=object)
    return enrol, test, labels, names, spk[enrol], spk[test]


def _check_counts(labels, point, rate, force):
    need = cal.minimum_trials(point, rate)
    have = (int(labels.sum()), int((labels == 0).sum()))
    if have[0] >= need[0] and have[1] >= need[1]:
        return
    msg = (
        f"{have[0]} target / {have[1]} non-target trials, fewer than the "
        f"{need[0]} / {need[1]} this operating point needs"
    )
    if not force:
        raise common.CliError(f"{msg} (--force calibrates anyway)")
    warnings.warn(f"{msg}: the threshold is unreliable", stacklevel=1)


def _check_folds(labels, spk_e, spk_t, args):
    """Whether the speakers make ``--folds`` folds to cross-validate on;
    if not, an error (a warning with ``--force``)."""
    try:
        cal.fold_masks(labels, spk_e, spk_t, args.folds, args.seed)
        return True
    except ValueError as err:
        msg = f"{args.trials}: --folds {args.folds}: {err}"
    if not args.force:
        raise common.CliError(msg)
    warnings.warn(f"{msg}; no held-out estimate", stacklevel=1)
    return False


def _is_report(path):
    """Whether ``path`` holds a report of ``dampit-calibrate --out``: a
    JSON object with its ``threshold``, ``operating_point`` and
    ``cross_validated``."""
    with open(path, "rb") as f:
        text = f.read(1 << 20)
    try:
        report = json.loads(text)
    except ValueError:
        return False
    keys = {"threshold", "operating_point", "cross_validated"}
    return isinstance(report, dict) and keys <= set(report)


def _pct(x, ci):
    return f"{100 * x:.2f}% [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def _calibrate(args):
    common.check_args(args, out_folder=False)
    if args.out:
        common.check_out_file(
            args.out,
            [("--trials", args.trials), ("--csv", args.csv)],
            [("--model", args.model)],
            _is_report,
            f"a report of {PROG}",
        )
    point, rate, words = _point(args)
    if not args.dry_run:  # a folder write_threshold can update, whole
        with common.writing(args.model):
            restored = restore_threshold(args.model)
        if restored:
            warnings.warn(
                f"{args.model}: hyperparams.yaml had another threshold than "
                "dampit_export.json (an update stopped half-way): restored",
                stacklevel=1,
            )
    enrol, test, labels, names, spk_e, spk_t = _speakers(args)
    _check_counts(labels, point, rate, args.force)
    folds_ok = _check_folds(labels, spk_e, spk_t, args)
    paths = trials.resolve_audio(
        names, args.trials, args.audio_root, args.csv, args.data_root
    )
    model = common.open_model(args)
    emb, row = common.embed_paths(model, paths, args)
    scores = cosine_scores(emb, row[enrol], row[test])
    cv = None
    if folds_ok:
        cv = cal.cross_validate(
            scores,
            labels,
            spk_e,
            spk_t,
            point,
            rate,
            args.folds,
            seed=args.seed,
        )
    threshold = cal.threshold_at(scores, labels, point, rate)
    frr, far = cal.error_rates_at(scores, labels, threshold)
    record = {
        "operating_point": point,
        "target_rate": rate,
        "trials": os.path.abspath(args.trials),
        "target": int(labels.sum()),
        "nontarget": int((labels == 0).sum()),
        "on_these_trials": {"frr": frr, "far": far},
        "cross_validated": cv,
    }
    if args.llr:
        try:
            scale, offset = cal.fit_llr(scores, labels)
        except ValueError as err:
            raise common.CliError(f"--llr: {err}") from None
        record["llr"] = {"scale": scale, "offset": offset}
    n_speakers = len(set(spk_e) | set(spk_t))
    print(
        f"[dampit] {record['target']} target / {record['nontarget']} "
        f"non-target trials of {n_speakers} speakers; threshold "
        f"{threshold:.4f} at {words} (on these trials: FRR "
        f"{100 * frr:.2f}%, FAR {100 * far:.2f}%)"
    )
    if cv is not None:
        print(
            f"[dampit] held-out speakers ({cv['folds']} folds, "
            f"{cv['target']} / {cv['nontarget']} trials): FRR "
            f"{_pct(cv['frr'], cv['frr_ci'])}, FAR "
            f"{_pct(cv['far'], cv['far_ci'])} (95% bootstrap)"
        )
    if args.llr:
        print(f"[dampit] llr = {scale:.4f} * score + {offset:.4f}")
    if args.out:
        with common.writing(args.out):
            text = json.dumps({"threshold": threshold, **record}, indent=2)
            atomic_write_text(args.out, text + "\n")
    if args.dry_run:
        print("[dampit] --dry-run: the model folder is unchanged")
        return 0
    source = f"dampit-calibrate at {words} on {record['trials']}"
    old = model.hparams.threshold
    with common.writing(args.model):
        write_threshold(args.model, threshold, source, record)
    print(
        f"[dampit] threshold {threshold:.4f} written into {args.model} "
        f"(previous {old}: dampit_export.json threshold_history)"
    )
    return 0


def main(argv=None):
    """Run ``dampit-calibrate``; returns 0, or 2 on bad input."""
    parser = common.Parser(
        PROG, "Calibrate a model's threshold on pairs.", EXAMPLES
    )
    add = parser.add_argument
    add("--trials", required=True, help="labelled trial list")
    add("--audio-root", help="folder of the trial paths")
    add("--csv", help="SpeechBrain CSV mapping trial IDs")
    add("--data-root", help="$data_root of the CSV")
    point = parser.add_mutually_exclusive_group(required=True)
    point.add_argument("--eer", action="store_true", help="EER threshold")
    rate = common.RATE
    point.add_argument("--target-far", type=rate, help="false-accept rate")
    point.add_argument("--target-frr", type=rate, help="false-reject rate")
    add("--llr", action="store_true", help="fit score -> LLR too")
    add("--folds", type=common.POSITIVE, default=5, help="speaker folds")
    add(
        "--seed", type=common.SEED, default=0, help="of the folds and bootstrap"
    )
    add("--force", action="store_true", help="calibrate on too few trials")
    add("--dry-run", action="store_true", help="report, write nothing")
    add("--out", help="JSON report to write (replaces only a report)")
    args = parser.parse_args(argv)
    return common.run(PROG, args, lambda: _calibrate(args))


if __name__ == "__main__":
    sys.exit(main())
