"""``dampit-synth --out DIR``: write the built-in synthetic speaker corpus.

::

    dampit-synth --out corpus/ --speakers 40 --utts-per-speaker 20

A demo and test corpus, not a benchmark: EERs on it say that the pipeline
learns, not how good a model is. The corpus and its files are
:func:`dampit.dataio.synthetic.generate_corpus`'s.
"""

import argparse

from dampit.dataio.synthetic import generate_corpus


def main(argv=None):
    """``dampit-synth --out DIR [--speakers N] [--utts-per-speaker K]
    ...``; returns 0.

    Example
    -------
    >>> import tempfile
    >>> main(["--out", tempfile.mkdtemp(), "--speakers", "1",
    ...       "--utts-per-speaker", "1", "--min-dur", "0.2", "--max-dur",
    ...       "0.2", "--quiet"])
    0
    """
    p = argparse.ArgumentParser(
        prog="dampit-synth",
        description="Write the built-in synthetic speaker corpus (demos and "
        "tests, not a benchmark): <out>/<spk>/<spk>-<k>.wav, manifest.csv "
        "and corpus.json.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--speakers", type=int, default=40)
    p.add_argument("--utts-per-speaker", type=int, default=20)
    p.add_argument("--min-dur", type=float, default=2.0, help="seconds")
    p.add_argument("--max-dur", type=float, default=4.0, help="seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    dur = (a.min_dur, a.max_dur)
    path = generate_corpus(
        a.out,
        a.speakers,
        a.utts_per_speaker,
        dur,
        a.seed,
        a.workers,
        not a.quiet,
    )
    if not a.quiet:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
