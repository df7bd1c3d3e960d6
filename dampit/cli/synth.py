"""``dampit-synth OUT_DIR``: write the built-in synthetic speaker corpus.

::

    dampit-synth corpus/ --speakers 40 --utts 20 --workers 2

A demo and test corpus, not a benchmark: EERs on it say that the pipeline
learns, not how good a model is. The corpus and its files are
:func:`dampit.dataio.synthetic.generate_corpus`'s.
"""

import argparse

from dampit.dataio.synthetic import generate_corpus


def main(argv=None):
    """``dampit-synth OUT_DIR [--speakers N] [--utts K] ...``; returns 0.

    Example
    -------
    >>> import tempfile
    >>> main([tempfile.mkdtemp(), "--speakers", "1", "--utts", "1",
    ...       "--min-dur", "0.2", "--max-dur", "0.2", "--quiet"])
    0
    """
    p = argparse.ArgumentParser(
        prog="dampit-synth",
        description="Write the built-in synthetic speaker corpus (demos and "
        "tests, not a benchmark): <out>/<spk>/<spk>-<k>.wav, manifest.csv "
        "and corpus.json.",
    )
    p.add_argument("out_dir", nargs="?", help="output folder")
    p.add_argument("--out", help="output folder (instead of OUT_DIR)")
    p.add_argument("--speakers", type=int, default=40)
    p.add_argument("--utts", "--utts-per-speaker", type=int, default=20)
    p.add_argument("--min-dur", type=float, default=2.0, help="seconds")
    p.add_argument("--max-dur", type=float, default=4.0, help="seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if (a.out_dir is None) == (a.out is None):
        p.error("give the output folder once: OUT_DIR or --out")
    dur = (a.min_dur, a.max_dur)
    path = generate_corpus(
        a.out_dir or a.out,
        a.speakers,
        a.utts,
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
