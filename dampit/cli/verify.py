"""``dampit-verify``: speaker verification with an exported model.

Two files::

    dampit-verify --model model/ enrol.wav test.wav
    # score 0.8123  threshold 0.4410  -> same speaker

A trial list (``label enrol test`` or ``enrol test`` per line; paths
relative to ``--audio-root``, default the list's folder; IDs without an
extension are tried with ``.wav`` and ``.flac``; or IDs of a SpeechBrain
CSV given with ``--csv``)::

    dampit-verify --model model/ --trials trials.txt --out scores.txt

writes ``enrol test score decision`` lines (``decision`` 1 = same speaker,
``score > threshold``) and, when labels are given, prints the EER, the
minDCF (p_target 0.01) and the error rates at the threshold. Each file is
embedded once. The threshold is the model's calibrated one
(``hyperparams.yaml``), unless ``--threshold`` is given.

The model's ``hyperparams.yaml`` is checked first: tags outside dampit's
allow-list (``!apply:``, ``!!python/...``, classes outside dampit,
SpeechBrain's layers and ``torch.nn``) are refused unless ``--trust``.
"""

import argparse
import csv
import logging
import os
import sys

import numpy as np

from dampit.cli.common import CliError, add_model_args, fail, open_model

__all__ = ["main", "read_trial_list", "resolve_audio", "summarize"]

PROG = "dampit-verify"
_EXTS = (".wav", ".flac")


def read_trial_list(path):
    """Read ``label enrol test`` or ``enrol test`` lines.

    Arguments
    ---------
    path : str
        The trial list.

    Returns
    -------
    trials : list of tuple
        ``(enrol, test, line_number)``.
    labels : numpy.ndarray or None
        ``[N]`` int labels when every line has one, else None.

    Raises
    ------
    CliError
        For a missing file, a malformed line or mixed labelled/unlabelled
        lines (``path:line``).

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> _ = open(p, "w").write("1 a.wav b.wav\\n0 a.wav c.wav\\n")
    >>> trials, labels = read_trial_list(p)
    >>> trials[1], labels.tolist()
    (('a.wav', 'c.wav', 2), [1, 0])
    """
    if not os.path.isfile(path):
        raise CliError(f"trial list not found: {path}")
    trials, labels = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) == 3:
                if fields[0] not in ("0", "1"):
                    raise CliError(
                        f"{path}:{lineno}: label must be 0 or 1, got "
                        f"{fields[0]!r}"
                    )
                labels.append(int(fields[0]))
                fields = fields[1:]
            elif len(fields) != 2:
                raise CliError(
                    f"{path}:{lineno}: expected 'label enrol test' or "
                    f"'enrol test', got {len(fields)} fields"
                )
            trials.append((fields[0], fields[1], lineno))
    if not trials:
        raise CliError(f"{path}: no trials")
    if labels and len(labels) != len(trials):
        raise CliError(f"{path}: some lines have a label and some do not")
    return trials, (np.array(labels) if labels else None)


def resolve_audio(names, root=None, csv_path=None, data_root=None):
    """Map trial-list names to audio paths.

    Arguments
    ---------
    names : iterable of (str, str)
        ``(name, where)``: the name and its ``file:line``.
    root : str, optional
        Folder the names are relative to.
    csv_path : str, optional
        A SpeechBrain CSV whose ``ID`` column the names are (``wav``
        column: the path; ``$data_root`` replaced by ``data_root``).
    data_root : str, optional
        Replacement of ``$data_root`` in the CSV.

    Returns
    -------
    dict
        name -> path.

    Raises
    ------
    CliError
        Naming the first unresolved names and their lines.
    """
    mapping = None
    if csv_path is not None:
        from dampit.dataio.trials import utt_to_id

        if not os.path.isfile(csv_path):
            raise CliError(f"--csv {csv_path} not found")
        with open(csv_path, newline="", encoding="utf-8") as f:
            mapping = {}
            for r in csv.DictReader(f):
                wav = r["wav"]
                if data_root is not None:
                    wav = wav.replace("$data_root", data_root)
                mapping[r["ID"]] = wav
    out, missing = {}, []
    for name, where in names:
        if name in out:
            continue
        if mapping is not None:
            path = mapping.get(name) or mapping.get(utt_to_id(name))
            if path is None:
                missing.append((name, where, "not an ID of the CSV"))
                continue
        else:
            path = name if os.path.isabs(name) else os.path.join(root, name)
            if not os.path.isfile(path) and not os.path.splitext(path)[1]:
                for ext in _EXTS:
                    if os.path.isfile(path + ext):
                        path += ext
                        break
            if not os.path.isfile(path):
                missing.append((name, where, f"{path} not found"))
                continue
        out[name] = path
    if missing:
        shown = "; ".join(f"{w}: {n} ({why})" for n, w, why in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CliError(
            f"{len(missing)} trial file(s) unresolved: {shown}{more}"
        )
    return out


def summarize(scores, labels, threshold):
    """EER, minDCF and error rates at ``threshold``.

    Arguments
    ---------
    scores : numpy.ndarray
        ``[N]`` scores.
    labels : numpy.ndarray
        ``[N]`` 1/0 labels.
    threshold : float
        Decision threshold (``score > threshold`` accepts).

    Returns
    -------
    dict
        ``eer``, ``eer_threshold``, ``min_dcf@0.01``, ``fnr``, ``fpr``
        (at ``threshold``), ``n_target``, ``n_nontarget``.

    Example
    -------
    >>> r = summarize(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 0]),
    ...               0.5)
    >>> r["eer"], r["fnr"], r["fpr"]
    (0.0, 0.0, 0.0)
    """
    from dampit.metrics.error_rates import compute_eer, compute_min_dcf

    labels = np.asarray(labels).astype(bool)
    eer, eer_thr = compute_eer(scores, labels)
    dcf, _ = compute_min_dcf(scores, labels, p_target=0.01)
    accept = scores > threshold
    return {
        "eer": eer,
        "eer_threshold": eer_thr,
        "min_dcf@0.01": dcf,
        "fnr": float((~accept[labels]).mean()),
        "fpr": float(accept[~labels].mean()),
        "n_target": int(labels.sum()),
        "n_nontarget": int((~labels).sum()),
    }


def main(argv=None):
    """Run ``dampit-verify``.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 on bad input.
    """
    from dampit.dataio.audio import AudioError
    from dampit.inference.api import ModelFolderError
    from dampit.inference.safe_yaml import UnsafeYAMLError
    from dampit.utils.atomic import atomic_write_text

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Verify two audio files, or a trial list, with an "
        "exported dampit model and its calibrated threshold.",
    )
    parser.add_argument("files", nargs="*", help="enrol and test audio")
    parser.add_argument("--trials", help="trial list instead of two files")
    parser.add_argument("--audio-root", help="folder of the trial paths")
    parser.add_argument("--csv", help="SpeechBrain CSV mapping trial IDs")
    parser.add_argument("--data-root", help="$data_root of the CSV")
    parser.add_argument("--out", help="scores file (default: stdout)")
    parser.add_argument(
        "--threshold", type=float, help="override the stored threshold"
    )
    add_model_args(parser)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if bool(args.trials) == bool(args.files) or (
        args.files and len(args.files) != 2
    ):
        parser.error("give either two audio files or --trials FILE")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.trials:
            trials, labels = read_trial_list(args.trials)
            root = args.audio_root or os.path.dirname(
                os.path.abspath(args.trials)
            )
            names = [
                (n, f"{args.trials}:{ln}")
                for e, t, ln in trials
                for n in (e, t)
            ]
            paths = resolve_audio(names, root, args.csv, args.data_root)
        else:
            for f in args.files:
                if not os.path.isfile(f):
                    raise CliError(f"audio file not found: {f}")
            trials, labels = [(args.files[0], args.files[1], 0)], None
            paths = {f: f for f in args.files}
        model = open_model(args)
        threshold = (
            model.threshold if args.threshold is None else args.threshold
        )
        pairs = [(paths[e], paths[t]) for e, t, _ in trials]
        scores, _ = model.verify_pairs(
            pairs,
            batch_size=args.batch_size,
            progress=not args.no_progress and len(pairs) > 1,
        )
    except (AudioError, CliError, ModelFolderError, UnsafeYAMLError) as err:
        return fail(PROG, err)
    decisions = scores > threshold
    if not args.trials:
        word = "same speaker" if decisions[0] else "different speakers"
        print(f"score {scores[0]:.4f}  threshold {threshold:.4f}  -> {word}")
        return 0
    lines = "".join(
        f"{e} {t} {s:.6f} {int(d)}\n"
        for (e, t, _), s, d in zip(trials, scores, decisions)
    )
    report = sys.stderr
    if args.out:
        atomic_write_text(args.out, lines)
        report = sys.stdout
    else:
        sys.stdout.write(lines)
    print(
        f"[dampit] {len(trials)} trials scored, threshold {threshold:.4f}, "
        f"{int(decisions.sum())} accepted",
        file=report,
    )
    if labels is not None:
        if labels.all() or not labels.any():
            print(
                "[dampit] the labels hold one class only: no EER",
                file=report,
            )
        else:
            r = summarize(scores, labels, threshold)
            print(
                f"[dampit] EER {100 * r['eer']:.2f}% (threshold "
                f"{r['eer_threshold']:.4f}), minDCF(0.01) "
                f"{r['min_dcf@0.01']:.4f}; at {threshold:.4f}: miss "
                f"{100 * r['fnr']:.2f}%, false alarm {100 * r['fpr']:.2f}% "
                f"({r['n_target']} target / {r['n_nontarget']} non-target)",
                file=report,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
