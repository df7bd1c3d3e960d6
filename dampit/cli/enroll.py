"""``dampit-enroll``: add, update or remove speaker profiles.

::

    dampit-enroll --model model/ --profiles profiles/ --speaker alice a/
    dampit-enroll --model model/ --profiles profiles/ --by-folder enrol/
    dampit-enroll --model model/ --profiles profiles/ --remove alice

The inputs are audio files, folders or list files, as for
``dampit-embed``; with ``--by-folder``, each subfolder of the given
folders is one speaker, named by the subfolder. A profile is the mean of
its utterances' unit-length embeddings with their count: enrolling more
files of a speaker adds them (``--replace`` starts the profile afresh).
The store (:mod:`dampit.inference.profiles`) is created when missing,
replaced as one unit, and refused with another model than the one that
made it.
"""

import os
import sys

from dampit.cli import common
from dampit.inference import profiles

PROG = "dampit-enroll"
EXAMPLES = """examples:
  dampit-enroll --model model/ --profiles profiles/ --speaker alice alice/
  dampit-enroll --model model/ --profiles profiles/ --speaker bob b1.wav b2.wav
  dampit-enroll --model model/ --profiles profiles/ --by-folder enrol/
  dampit-enroll --model model/ --profiles profiles/ --remove bob
(--by-folder: enrol/alice/*.wav, enrol/bob/*.flac ... one speaker each)"""


def _speakers(args):
    """Speaker name -> ``(id, path)`` items of the inputs; a file given
    twice is enrolled once, and files may share names (IDs name nothing
    in a profile: ``list_audio_inputs`` with ``ids`` False)."""
    if not args.by_folder:
        return {args.speaker: common.list_audio_inputs(args.inputs, False)}
    found = {}
    for arg in args.inputs:
        if not os.path.isdir(arg):
            raise common.CliError(f"--by-folder: {arg} is not a folder")
        subs = [e for e in os.scandir(arg) if e.is_dir()]
        subs.sort(key=lambda e: e.name)
        if not subs:
            raise common.CliError(f"--by-folder: no subfolder in {arg}")
        for sub in subs:
            if sub.name in found:
                raise common.CliError(
                    f"--by-folder: speaker {sub.name!r} twice ({sub.path})"
                )
            found[sub.name] = common.list_audio_inputs([sub.path], False)
    return found


def _enroll(args):
    common.check_args(args, out_folder=False)
    store = profiles.Profiles(args.profiles)  # a bad store: before the work
    if args.remove is not None:
        model = common.open_model(args)
        store = profiles.remove_profile(model, args.profiles, args.remove)
        print(
            f"[dampit] removed {args.remove!r} from {args.profiles} "
            f"({len(store.names)} profiles left)"
        )
        return 0
    speakers = _speakers(args)
    model = common.open_model(args)
    with common.writing(args.profiles):
        store = profiles.enroll_files(
            model,
            args.profiles,
            speakers,
            args.replace,
            args.batch_size,
            not args.no_progress,
        )
    for name, items in speakers.items():
        count = store.counts[store.names.index(name)]
        print(
            f"[dampit] {name!r}: {len(items)} file(s) enrolled, {count} "
            "in the profile"
        )
    print(f"[dampit] {len(store.names)} profiles in {args.profiles}")
    return 0


def main(argv=None):
    """Run ``dampit-enroll``; returns 0, or 2 on bad input."""
    parser = common.Parser(PROG, "Enrol or remove speaker profiles.", EXAMPLES)
    add = parser.add_argument
    add("inputs", nargs="*", help="folders, list files, audio files")
    add("--profiles", required=True, help="profile store folder")
    mode = parser.add_mutually_exclusive_group(required=True).add_argument
    mode("--speaker", help="the speaker the inputs are enrolled as")
    mode("--by-folder", action="store_true", help="a speaker per subfolder")
    mode("--remove", metavar="NAME", help="remove this speaker's profile")
    add("--replace", action="store_true", help="start profiles afresh")
    parser.set_defaults(out=None)
    args = parser.parse_args(argv)
    if args.remove is None and not args.inputs:
        parser.error("no files or folders to enrol")
    if args.remove is not None and (args.inputs or args.replace):
        parser.error("--remove takes no files and no --replace")
    return common.run(PROG, args, lambda: _enroll(args))


if __name__ == "__main__":
    sys.exit(main())
