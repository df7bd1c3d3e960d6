#!/usr/bin/env python3
"""Verify a trained model on the test trials: embeddings, scores, EER, minDCF.

Run after train.py (which verifies at the end of training too)::

    python verify.py hparams/multi_metric.yaml --data_folder=/data/voxceleb

It loads the tested weights (the checkpoint with the lowest valid EER, or
with ``average_checkpoints: N`` the average of the last N epochs'), embeds
every test utterance whole and as ``n_test_crops`` evenly spaced crops,
and scores the trials three ways -- ``full_cosine``, and the paper's
``multicrop_dot`` and ``multicrop_cosine`` (the mean of the crop-pair
scores, in closed form) -- with EER, minDCF, a DET curve and a score
histogram under ``<output_folder>/verification`` (dampit.training.verification).
"""

import os

import speechbrain as sb
import torch

from dampit.training.run_data import check_prepared
from dampit.training.run_setup import run_script, start_run
from dampit.training.verification import load_test_weights, verify


def main(argv):
    """Load the tested weights of a finished run and verify."""
    run = start_run(argv)
    hparams = run.hparams
    brain = sb.Brain(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run.run_opts,
        checkpointer=hparams["checkpointer"],
    )
    out = os.path.join(hparams["output_folder"], "verification")
    load_test_weights(brain.checkpointer, hparams, run.plain, out)
    brain.modules.eval()

    def embed(wavs, lens):  # features, normalisation, network
        with torch.no_grad(), brain.evaluation_ctx:
            feats = brain.modules.compute_features(wavs)
            feats = brain.modules.normalize(feats, lens)
            return brain.modules.embedding_model(feats, lens)

    check_prepared(hparams, run.data)
    verify(embed, hparams, run.data, brain.device, not brain.noprogressbar)


if __name__ == "__main__":
    run_script(main)
