"""``dampit-cohort``: store a score-normalisation cohort in a model folder.

::

    dampit-cohort --model model/ cohort_speakers/
    dampit-verify --model model/ --asnorm --trials trials.txt

The inputs are folders, list files or audio files, as for ``dampit-embed``;
each file's speaker is the first path component of its ID (a folder's
``<speaker>/**/<utt>.wav``, as ``dampit-calibrate`` and the recipe's folder
preparation name speakers; a list file's ``ID<TAB>path`` lines give the
IDs). The cohort needs 2 or more speakers, and should hold none of the
speakers it will verify. Each speaker becomes one vector
(:func:`dampit.inference.cohort.speaker_means`), written into the folder
(``cohort.npy``, recorded in ``dampit_export.json``), replacing the cohort
there.
"""

import os
import sys

from dampit.cli import common
from dampit.dataio.trials import speaker_of
from dampit.inference.cohort import check_target, speaker_means, write_cohort

PROG = "dampit-cohort"
EXAMPLES = """examples:
  dampit-cohort --model model/ speakers/      # speakers/<name>/*.wav
  dampit-cohort --model model/ cohort.txt     # 'spk/utt<TAB>path' lines"""


def _cohort(args):
    common.check_args(args, out_folder=False)
    items = common.list_audio_inputs(args.inputs)
    for uid, path in items:
        if "/" not in uid or not speaker_of(uid):
            raise common.CliError(
                f"{path}: ID {uid!r} names no speaker (give folders of "
                "<speaker>/ subfolders, or list files of <speaker>/<utt>"
                "<TAB>path lines)"
            )
    speakers = [speaker_of(uid) for uid, _ in items]
    if len(set(speakers)) < 2:
        raise common.CliError(
            f"{len(set(speakers))} speaker(s) in the inputs (the first path "
            "component of each file's ID): a cohort needs 2 or more"
        )
    with common.writing(args.model):
        check_target(args.model)  # before any embedding
        model = common.open_model(args)
        _, emb = common.embed(model, items, args)
        _, vectors = speaker_means(emb, speakers)
        source = ", ".join(os.path.abspath(p) for p in args.inputs)
        record = write_cohort(model, vectors, f"dampit-cohort on {source}")
    print(
        f"[dampit] cohort of {record['speakers']} speakers ({len(items)} "
        f"files) x {record['emb_dim']} float16 written into {args.model}"
    )
    return 0


def main(argv=None):
    """Run ``dampit-cohort``; returns 0, or 2 on bad input."""
    parser = common.Parser(PROG, "Store an AS-norm cohort.", EXAMPLES)
    parser.add_argument("inputs", nargs="+", help="folders, lists, audio")
    parser.set_defaults(out=None)
    args = parser.parse_args(argv)
    return common.run(PROG, args, lambda: _cohort(args))


if __name__ == "__main__":
    sys.exit(main())
