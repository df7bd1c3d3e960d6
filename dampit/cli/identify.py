"""``dampit-identify``: name the speaker of audio files among profiles.

::

    dampit-identify --model model/ --profiles profiles/ calls/
    # calls/1.wav  alice  alice 0.7312  bob 0.2100  carol 0.1544

Each input (audio files, folders, list files, as for ``dampit-embed``)
gets one tab-separated line: its ID, the decision (the best speaker, or
``unknown`` when the best score is not above the threshold: open set),
then the ``--top-k`` speakers with their scores, best first. The scores
are cosines with the profiles (:mod:`dampit.inference.profiles`); the
threshold is the model's (``dampit-calibrate``) unless ``--threshold``.
``--out`` writes the lines to a file instead of the standard output; an
existing file is replaced only when it is an output of ``dampit-identify``
(its first line), never when it is an input or inside ``--profiles`` or
``--model``.
"""

import sys
import warnings

from dampit.cli import common
from dampit.inference import profiles
from dampit.utils.atomic import atomic_write_text

PROG = "dampit-identify"
EXAMPLES = """examples:
  dampit-identify --model model/ --profiles profiles/ a.wav b.wav
  dampit-identify --model model/ --profiles profiles/ calls/ --top-k 5 \\
      --out ids.tsv
output: ID<TAB>decision<TAB>speaker<TAB>score... (decision 'unknown' when
the best score is not above the threshold)"""


def _is_output(path):
    """Whether the first line of ``path`` reads as this command's output:
    ``ID decision speaker score...`` tab-separated, the scores numbers."""
    fields = common.first_line(path).rstrip("\r\n").split("\t")
    if len(fields) < 4 or len(fields) % 2 == 1:
        return False
    for score in fields[3::2]:
        try:
            float(score)
        except ValueError:
            return False
    return True


def _identify(args):
    common.check_args(args, out_folder=False)
    store = profiles.Profiles(args.profiles)
    if not store.names:  # before the model loads
        raise common.CliError(f"--profiles {args.profiles}: no profiles")
    items = common.list_audio_inputs(args.inputs)
    if args.out:
        inputs = [("input", path) for path in args.inputs]
        inputs += [("input", path) for _, path in items]
        common.check_out_file(
            args.out,
            inputs,
            [("--profiles", args.profiles), ("--model", args.model)],
            _is_output,
            f"an output of {PROG}",
        )
    if args.threshold is not None:  # no "no threshold stored" warning
        warnings.filterwarnings("ignore", ".*threshold")
    model = common.open_model(args)
    results = profiles.identify_files(
        model,
        args.profiles,
        items,
        args.top_k,
        args.threshold,
        args.batch_size,
        not args.no_progress,
    )
    lines = "".join(
        "\t".join(
            [r["id"], r["speaker"], *(f"{n}\t{s:.4f}" for n, s in r["top"])]
        )
        + "\n"
        for r in results
    )
    if args.out:
        with common.writing(args.out):
            atomic_write_text(args.out, lines)
    else:
        sys.stdout.write(lines)
    known = sum(r["speaker"] != profiles.UNKNOWN for r in results)
    threshold = model.threshold if args.threshold is None else args.threshold
    print(
        f"[dampit] {len(results)} file(s) against {len(store.names)} "
        f"profiles: {known} identified, {len(results) - known} unknown "
        f"(threshold {threshold:.4f})"
    )
    return 0


def main(argv=None):
    """Run ``dampit-identify``; returns 0, or 2 on bad input."""
    parser = common.Parser(
        PROG, "Identify speakers among enrolled ones.", EXAMPLES
    )
    add = parser.add_argument
    add("inputs", nargs="+", help="folders, list files, audio files")
    add("--profiles", required=True, help="profile store (dampit-enroll)")
    add("--top-k", type=common.POSITIVE, default=3, help="speakers listed")
    add("--threshold", type=common.FINITE, help="instead of the model's")
    add("--out", help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    return common.run(PROG, args, lambda: _identify(args))


if __name__ == "__main__":
    sys.exit(main())
