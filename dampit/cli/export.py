"""``dampit-export RUN MODEL``: a verified recipe run -> a model folder.

::

    dampit-export results/<experiment>/<seed> my_model
    dampit-export <sb_run> my_model --trials pairs.txt --audio-root wavs/
    dampit-export <run> my_model --scores scores.txt --onnx

The export itself, its threshold and its checks are
:func:`dampit.inference.export.export_model`'s.
"""

import argparse
import sys

from dampit.cli import common
from dampit.inference.export import export_model

PROG = "dampit-export"


def _main(args):
    with common.writing(args.model):  # a full disk...
        spec = export_model(
            args.run,
            args.model,
            args.overwrite,
            args.torchscript,
            args.onnx,
            args.scores,
            args.trials,
            args.audio_root,
        )
    print(
        f"[dampit] exported {spec['run']} -> {args.model} "
        f"(threshold {spec['threshold']:.4f}, {spec['threshold_source']})"
    )
    return 0


def main(argv=None):
    """``dampit-export RUN MODEL [--trials PAIRS [--audio-root R] |
    --scores F] [--overwrite] [--torchscript] [--onnx]``; returns 0, or
    2 on a refused run or existing folder.

    Example
    -------
    >>> import os, tempfile
    >>> empty = tempfile.mkdtemp()  # not a recipe run: refused
    >>> main([empty, os.path.join(empty, "model")])
    2
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A verified recipe run -> a model "
        "folder for load_model and EncoderClassifier.from_hparams.",
    )
    add = parser.add_argument
    add("run", help="the recipe's output_folder")
    add("model", help="the model folder to write")
    add("--trials", help="labelled trial list: threshold at the model's EER")
    add("--audio-root", help="folder of the trial paths")
    add("--scores", help="labelled score file: threshold at its EER")
    for flag in ("--overwrite", "--torchscript", "--onnx", "--verbose"):
        add(flag, action="store_true")
    args = parser.parse_args(argv)
    return common.run(PROG, args, lambda: _main(args))


if __name__ == "__main__":
    sys.exit(main())
