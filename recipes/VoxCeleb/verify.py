#!/usr/bin/env python3
"""Verify a trained model on a trial list: embeddings, scores, EER, minDCF.

Run after train.py (which also calls this at the end of training)::

    python verify.py hparams/multi_metric.yaml --data_folder=/data/voxceleb

It loads the best checkpoint (lowest valid EER; or, with
``average_checkpoints: N``, the average of the last N epochs' weights),
embeds every test utterance twice -- whole, and as ``n_test_crops``
evenly spaced crops of ``test_crop_frames`` -- caches the embeddings on
disk, and scores the trials three ways:

- ``full_cosine``: cosine of the whole-utterance embeddings;
- ``multicrop_dot``: the paper's protocol, the mean of the 100 crop-pair
  dot products of raw embeddings, in closed form (dot of the crop means);
- ``multicrop_cosine``: the mean of the crop-pair cosines, likewise.

Each method gets a scores file, EER, minDCF (p_target 0.01 and 0.05), a
DET curve and a score histogram under ``<output_folder>/verification``.
"""

import json
import logging
import os
import sys

import numpy as np
import speechbrain as sb
import torch

from dampit.dataio.trials import read_trials
from dampit.inference.extract import embed_utterances
from dampit.metrics import multicrop
from dampit.metrics.asnorm import as_norm
from dampit.metrics.plots import write_report
from dampit.utils.atomic import atomic_write_text
from dampit.utils.checkpoint_averaging import (
    average_weights,
    select_test_checkpoints,
)
from dampit.utils.hparams import load_hparams

logger = logging.getLogger(__name__)


def prepare_data(hparams):
    """Write (once) the CSVs and trial lists; return their paths.

    Arguments
    ---------
    hparams : dict
        The recipe's hyperparameters (``data_layout``, ``data_folder``...).

    Returns
    -------
    dict
        Paths: ``train``, ``dev`` and ``test`` CSVs, and ``trials``, a
        dict of trial-list name -> ID trial file.
    """
    folder = hparams["prep_folder"]
    layout = hparams["data_layout"]
    if layout == "voxceleb":
        from dampit.dataio.prepare_voxceleb import prepare_voxceleb

        root = hparams["data_folder"]
        vox1 = os.path.join(root, hparams["vox1_subdir"])
        vox2 = os.path.join(root, hparams["vox2_subdir"])
        summary = prepare_voxceleb(
            save_folder=folder,
            vox1_folder=vox1 if os.path.isdir(vox1) else None,
            vox2_folder=vox2 if os.path.isdir(vox2) else None,
            trial_lists=hparams["trial_lists"],
            train_sets=hparams["train_sets"],
            skip_bad=hparams["skip_bad_files"],
        )
    elif layout == "folder":
        from dampit.dataio.prepare_folder import prepare_folder

        summary = prepare_folder(
            data_folder=hparams["data_folder"],
            save_folder=folder,
            n_test_speakers=hparams["n_test_speakers"],
            seed=0,
            skip_bad=hparams["skip_bad_files"],
        )
    else:
        raise ValueError(f"data_layout={layout!r}: use 'voxceleb' or 'folder'")
    trials = summary["trials"]
    if not isinstance(trials, dict):
        trials = {"trials": trials}
    return {
        "train": summary["train_csv"],
        "dev": summary["dev_csv"],
        "test": summary["test_csv"],
        "trials": trials,
    }


def _read_csv(path):
    """Rows of a SpeechBrain CSV as dicts."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run_verification(brain, hparams, csvs, label_encoder=None):
    """Embed the test set, score the trials, write reports.

    Arguments
    ---------
    brain : MultiMetricBrain
        A Brain with ``compute_embeddings`` and a checkpointer.
    hparams : dict
        The recipe's hyperparameters.
    csvs : dict
        Output of ``prepare_data``.
    label_encoder : object, optional
        Unused; kept for symmetry with training.

    Returns
    -------
    dict
        Metrics per scoring method.
    """
    out = os.path.join(hparams["output_folder"], "verification")
    os.makedirs(out, exist_ok=True)
    load_test_weights(brain, hparams, out)
    brain.modules.eval()
    rows = _read_csv(csvs["test"])
    known = {r["ID"] for r in rows}
    trial_sets = {
        name: read_trials(path, known_ids=known)
        for name, path in csvs["trials"].items()
    }
    needed = {u for ts in trial_sets.values() for t in ts for u in t[1:]}
    rows = [r for r in rows if r["ID"] in needed]
    for r in rows:
        r["wav"] = r["wav"].replace("$data_root", hparams["data_folder"])

    crop = (int(hparams["test_crop_frames"]) - 1) * int(hparams["hop_length"])

    def embed_fn(wavs, lens):  # under --eval_precision, as SpeechBrain does
        with brain.evaluation_ctx:
            return brain.compute_embeddings(wavs, lens)

    ids, full, crops = embed_utterances(
        embed_fn,
        rows,
        sample_rate=int(hparams["sample_rate"]),
        n_crops=int(hparams["n_test_crops"]),
        crop_samples=crop,
        batch_size=int(hparams["test_batch_size"]),
        device=brain.device,
        hop_length=int(hparams["hop_length"]),
        full_store=os.path.join(out, "embeddings_full"),
        crops_store=os.path.join(out, "embeddings_crops"),
    )
    stats = multicrop.crop_statistics(crops)
    cohort = None
    if hparams.get("score_norm") == "as-norm":
        cohort = _cohort_embeddings(brain, hparams, csvs, embed_fn)

    index = {uid: k for k, uid in enumerate(ids)}
    results = {}
    for list_name, trials in trial_sets.items():
        enrol = np.array([index[t[1]] for t in trials])
        test = np.array([index[t[2]] for t in trials])
        labels = np.array([t[0] for t in trials])
        methods = {
            "full_cosine": multicrop.cosine_scores(full, enrol, test),
            "multicrop_dot": multicrop.score_trials(stats, enrol, test, "dot"),
            "multicrop_cosine": multicrop.score_trials(
                stats, enrol, test, "cosine"
            ),
        }
        if cohort is not None:
            methods["full_cosine_asnorm"] = as_norm(
                methods["full_cosine"],
                enrol,
                test,
                full,
                cohort,
                top_k=int(hparams["asnorm_top_k"]),
            )
        for name, scores in methods.items():
            key = f"{list_name}/{name}"
            results[key] = write_report(
                scores,
                labels,
                os.path.join(out, list_name),
                name,
                trial_ids=[(t[1], t[2]) for t in trials],
            )
            logger.info("%s: EER %.2f%%", key, 100 * results[key]["eer"])
    atomic_write_text(
        os.path.join(out, "summary.json"), json.dumps(results, indent=2)
    )
    for key, res in results.items():
        print(
            f"[dampit] {key}: EER {100 * res['eer']:.2f}% "
            f"minDCF(0.01) {res['min_dcf_0.01']:.4f} "
            f"({res['n_target']} target / {res['n_nontarget']} non-target)"
        )
    return results


def load_test_weights(brain, hparams, out):
    """Load the weights the run is tested with; list them in a file.

    ``average_checkpoints: 1`` (the paper): the checkpoint with the lowest
    validation EER. ``N > 1``: the most recent checkpoint, then the
    network's weights averaged over the N most recent end-of-epoch
    checkpoints (``dampit.utils.checkpoint_averaging``).

    Arguments
    ---------
    brain : MultiMetricBrain
        A Brain with a checkpointer.
    hparams : dict
        The recipe's hyperparameters (``average_checkpoints``,
        ``embedding_model``).
    out : str
        The verification folder; ``checkpoints.txt`` there lists the
        checkpoint folders used.

    Returns
    -------
    list
        The checkpoints used (empty when there is none).
    """
    n = int(hparams.get("average_checkpoints", 1))
    if n == 1:
        best = brain.checkpointer.recover_if_possible(min_key="EER")
        used = [best] if best is not None else []
    else:
        brain.checkpointer.recover_if_possible()  # every module, newest
        used = select_test_checkpoints(brain.checkpointer, n)
        if used:  # the unwrapped module, also when DDP wrapped it
            hparams["embedding_model"].load_state_dict(
                average_weights(used, "embedding_model")
            )
            logger.info(
                "testing the average of %d checkpoints: %s",
                len(used),
                ", ".join(os.path.basename(str(c.path)) for c in used),
            )
    if not used:
        logger.warning("no checkpoint found: testing the current weights")
    atomic_write_text(
        os.path.join(out, "checkpoints.txt"),
        "".join(f"{c.path}\n" for c in used),
    )
    return used


def _cohort_embeddings(brain, hparams, csvs, embed_fn):
    """Whole-utterance embeddings of a random cohort of training files."""
    rows = _read_csv(csvs["train"])
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(rows))[: int(hparams["cohort_size"])]
    rows = [rows[k] for k in sorted(pick)]
    for r in rows:
        r["wav"] = r["wav"].replace("$data_root", hparams["data_folder"])
    _, emb, _ = embed_utterances(
        embed_fn,
        rows,
        sample_rate=int(hparams["sample_rate"]),
        batch_size=int(hparams["test_batch_size"]),
        device=brain.device,
    )
    return emb


def main(argv):
    """Load the best checkpoint of a finished run and verify."""
    from train import MultiMetricBrain

    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    hparams, _, merged = load_hparams(hparams_file, overrides)
    csvs = prepare_data(hparams)
    lab_file = os.path.join(hparams["save_folder"], "label_encoder.txt")
    if os.path.isfile(lab_file):
        enc = sb.dataio.encoder.CategoricalEncoder()
        enc.load(lab_file)
        if len(enc) != int(hparams["n_speakers"]):
            merged["n_speakers"] = len(enc)
            hparams, _, merged = load_hparams(hparams_file, merged)
    brain = MultiMetricBrain(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    with torch.no_grad():
        run_verification(brain, hparams, csvs)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1:])
