"""``dampit-synth --out DIR``: write the built-in synthetic speaker corpus.

::

    dampit-synth --out corpus/ --speakers 40 --utts-per-speaker 20

A demo and test corpus, not a benchmark: EERs on it say that the pipeline
learns, not how good a model is. The corpus and its files are
:func:`dampit.dataio.synthetic.generate_corpus`'s; ``--out`` is a new or
empty folder, or a corpus that dampit-synth wrote.
"""

import sys

from dampit.cli import common
from dampit.dataio.synthetic import generate_corpus

PROG = "dampit-synth"


def _synth(args):
    if args.min_dur > args.max_dur:
        raise common.CliError(
            f"--min-dur {args.min_dur} is above --max-dur {args.max_dur}"
        )
    with common.writing(args.out):  # a read-only or full disk
        path = generate_corpus(
            args.out,
            args.speakers,
            args.utts_per_speaker,
            (args.min_dur, args.max_dur),
            args.seed,
            args.workers,
            not args.quiet,
        )
    if not args.quiet:
        print(path)
    return 0


def main(argv=None):
    """``dampit-synth --out DIR [--speakers N] [--utts-per-speaker K]
    ...``; returns 0, or 2 on bad input.

    Example
    -------
    >>> import tempfile
    >>> main(["--out", tempfile.mkdtemp(), "--speakers", "1",
    ...       "--utts-per-speaker", "1", "--min-dur", "0.2", "--max-dur",
    ...       "0.2", "--quiet"])
    0
    """
    p = common.Parser(
        PROG,
        "Write the built-in synthetic speaker corpus (demos and tests, not a "
        "benchmark): <out>/<spk>/<spk>-<k>.wav, manifest.csv and corpus.json.",
        model=False,
    )
    p.add_argument("--out", required=True, help="new, empty or synth folder")
    p.add_argument("--speakers", type=common.POSITIVE, default=40)
    p.add_argument("--utts-per-speaker", type=common.POSITIVE, default=20)
    p.add_argument("--min-dur", type=common.SECONDS, default=2.0)
    p.add_argument("--max-dur", type=common.SECONDS, default=4.0)
    p.add_argument("--seed", type=common.SEED, default=0)
    p.add_argument("--workers", type=common.POSITIVE, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    return common.run(PROG, args, lambda: _synth(args))


if __name__ == "__main__":
    sys.exit(main())
