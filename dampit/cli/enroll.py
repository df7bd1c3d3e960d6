"""``dampit-enroll``: add, update or remove speaker profiles.

::

    dampit-enroll --model model/ --profiles profiles/ --speaker alice a/
    dampit-enroll --model model/ --profiles profiles/ --remove alice

The inputs are audio files, folders or list files, as for
``dampit-embed``. A profile is the mean of its utterances' unit-length
embeddings with their count: enrolling more files of a speaker adds them
(``--replace`` starts the profile afresh). The store
(:mod:`dampit.inference.profiles`) is created when missing, replaced as
one unit, and refused with another model than the one that made it.
"""

import argparse
import sys

from dampit.cli import common
from dampit.inference import profiles

PROG = "dampit-enroll"
EXAMPLES = """examples:
  dampit-enroll --model model/ --profiles profiles/ --speaker alice alice/
  dampit-enroll --model model/ --profiles profiles/ --speaker bob b1.wav b2.wav
  dampit-enroll --model model/ --profiles profiles/ --remove bob
  for d in enrol/*/; do  # one folder per speaker
    s=$(basename "$d")
    dampit-enroll --model model/ --profiles profiles/ --speaker "$s" "$d"
  done"""


def _enroll(args):
    common.check_args(args, out_folder=False)
    store = profiles.Profiles(args.profiles)  # a bad store: before the work
    model = common.open_model(args)
    if args.remove is not None:
        store = profiles.remove_profile(model, args.profiles, args.remove)
        print(
            f"[dampit] removed {args.remove!r} from {args.profiles} "
            f"({len(store.names)} profiles left)"
        )
        return 0
    items = common.list_audio_inputs(args.inputs)
    with common.writing(args.profiles):
        store = profiles.enroll_files(
            model,
            args.profiles,
            args.speaker,
            items,
            args.replace,
            args.batch_size,
            not args.no_progress,
        )
    k = store.names.index(args.speaker)
    print(
        f"[dampit] {args.speaker!r}: {len(items)} file(s) enrolled, "
        f"{store.counts[k]} in the profile; {len(store.names)} profiles in "
        f"{args.profiles}"
    )
    return 0


def main(argv=None):
    """Run ``dampit-enroll``; returns 0, or 2 on bad input."""
    parser = common.Parser(PROG, "Enrol or remove speaker profiles.")
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("inputs", nargs="*", help="folders, list files, audio files")
    add("--profiles", required=True, help="profile store folder")
    add("--speaker", help="the speaker the inputs are enrolled as")
    add("--replace", action="store_true", help="start the profile afresh")
    add("--remove", metavar="NAME", help="remove this speaker's profile")
    parser.set_defaults(out=None)
    args = parser.parse_args(argv)
    if (args.remove is None) == (args.speaker is None):
        parser.error("give either --speaker NAME FILES... or --remove NAME")
    if args.speaker is not None and not args.inputs:
        parser.error(f"--speaker {args.speaker}: no files to enrol")
    if args.remove is not None and (args.inputs or args.replace):
        parser.error("--remove takes no files and no --replace")
    return common.run(PROG, args, lambda: _enroll(args))


if __name__ == "__main__":
    sys.exit(main())
