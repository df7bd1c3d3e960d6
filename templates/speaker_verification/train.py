#!/usr/bin/env python3
"""Template recipe: SpeechBrain ECAPA-TDNN speaker embeddings, any loss.

A short SpeechBrain recipe (Fbank -> sentence mean normalisation ->
ECAPA-TDNN) whose loss and batch sampler come from the YAML file. The
same script trains both configurations beside it:

- ``hparams/ecapa_aam.yaml``: SpeechBrain's stock recipe, an ECAPA
  ``Classifier`` and ``LogSoftmaxWrapper(AdditiveAngularMargin)`` on
  shuffled batches;
- ``hparams/ecapa_multi_metric.yaml``: dampit's ``MultiMetricLoss``
  (triplet + n-pair + angular + AAM softmax) on P speakers x K utterances
  batches from dampit's ``PKSampler``.

The Brain below holds no dampit code: the two YAML files differ only in the
lines that declare the loss, the sampler and the classifier. The data
preparation (a speaker-disjoint split of a ``<speaker>/<utt>.wav`` folder
with a trial list) and the scoring of the held-out trials use dampit's
helpers, identically for both files.

Usage (from the repository root)::

    python templates/speaker_verification/train.py \\
        templates/speaker_verification/hparams/ecapa_multi_metric.yaml \\
        --data_folder=../shared/data/dspspeech
    python templates/speaker_verification/train.py \\
        templates/speaker_verification/hparams/ecapa_aam.yaml \\
        --data_folder=../shared/data/dspspeech

Add ``--debug`` for a smoke test (2 epochs of 2 batches). The held-out EER
is printed at the end and written to ``<output_folder>/results.json``.
"""

import json
import logging
import os
import time

import numpy as np
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process, run_on_main

from dampit.dataio.prepare_folder import prepare_folder
from dampit.dataio.trials import read_trials
from dampit.metrics.report import write_report
from dampit.metrics.scoring import cosine_scores
from dampit.training.run_setup import (
    RecipeError,
    check_arguments,
    read_values,
    run_script,
)
from dampit.training.validation import validation_eer
from dampit.training.verification import embed, utterance_loader
from dampit.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)


class SpeakerBrain(sb.core.Brain):
    """Speaker-embedding Brain whose loss works on embeddings or logits.

    ``hparams.compute_cost`` is called as ``compute_cost(outputs, labels)``
    with labels ``[B, 1]``. When the YAML's ``modules`` has a
    ``classifier`` (SpeechBrain's recipe), ``outputs`` are its logits
    ``[B, 1, n_speakers]``; otherwise (dampit's embedding-level losses)
    they are the embeddings ``[B, 1, D]`` themselves.
    """

    def compute_embeddings(self, wavs, lens):
        """Waveforms ``[B, N]`` and relative lengths -> ``[B, 1, D]``."""
        feats = self.modules.compute_features(wavs)
        feats = self.modules.mean_var_norm(feats, lens)
        return self.modules.embedding_model(feats, lens)

    def compute_forward(self, batch, stage):
        """Embed a batch (no augmentation in this template)."""
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        return self.compute_embeddings(wavs, lens)

    def compute_objectives(self, predictions, batch, stage):
        """Training: the YAML's loss. Validation: keep the embeddings."""
        spkid, _ = batch.spk_id_encoded
        if stage != sb.Stage.TRAIN:
            self.valid_emb.append(predictions.detach().squeeze(1).cpu())
            self.valid_spk.append(spkid.detach().reshape(-1).cpu())
            return torch.zeros((), device=self.device)
        outputs = predictions
        if "classifier" in self.modules:  # logit-level loss (stock AAM)
            outputs = self.modules.classifier(predictions)
        # A loss with weights of its own is in ``modules``: call it from
        # there, so that under DDP its gradients are synchronised too.
        if "compute_cost" in self.modules:
            loss = self.modules.compute_cost(outputs, spkid)
        else:
            loss = self.hparams.compute_cost(outputs, spkid)
        # Optional: a loss with ``last_terms`` (dampit's MultiMetricLoss)
        # gets its weighted terms logged too.
        for name, value in getattr(
            self.hparams.compute_cost, "last_terms", {}
        ).items():
            self.term_sums[name] = self.term_sums.get(name, 0.0) + float(value)
        self.term_count += 1
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Reset the per-epoch statistics."""
        if stage == sb.Stage.TRAIN:
            self.term_sums, self.term_count = {}, 0
        else:
            self.valid_emb, self.valid_spk = [], []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log, anneal the learning rate, keep the best checkpoint."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            for name, total in self.term_sums.items():
                self.train_stats[name] = total / max(1, self.term_count)
            return
        # All pairs of the validation embeddings (other utterances of the
        # training speakers); the lowest EER's checkpoint is the one tested.
        stats = {
            "EER": validation_eer(
                torch.cat(self.valid_emb), torch.cat(self.valid_spk)
            )
        }
        if stage == sb.Stage.VALID:
            old_lr, new_lr = self.hparams.lr_annealing(epoch)
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(meta=stats, min_keys=["EER"])


def prepare_data(hparams):
    """Split the data folder into train/dev/test CSVs and trials (once).

    Arguments
    ---------
    hparams : dict
        Needs ``data_folder``, ``prep_folder``, ``n_test_speakers``,
        ``split_seed``, ``n_folds`` and ``fold``.

    Returns
    -------
    dict
        ``train_csv``, ``dev_csv``, ``test_csv``, ``trials`` paths and
        counts (see ``dampit.dataio.prepare_folder.prepare_folder``).
    """
    return prepare_folder(
        data_folder=hparams["data_folder"],
        save_folder=hparams["prep_folder"],
        n_test_speakers=hparams["n_test_speakers"],
        seed=hparams["split_seed"],
        n_folds=hparams["n_folds"],
        fold=hparams["fold"],
    )


def dataio_prep(hparams, prep):
    """Training and validation datasets and the speaker label encoder.

    Arguments
    ---------
    hparams : dict
        The recipe's hyperparameters.
    prep : dict
        Output of :func:`prepare_data`.

    Returns
    -------
    train_data, valid_data : DynamicItemDataset
        With output keys ``id``, ``sig``, ``spk_id_encoded``.
    label_encoder : CategoricalEncoder
        Speaker label encoder fitted on the training set.
    """
    chunk = int(hparams["sample_rate"] * hparams["sentence_len"])

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def train_audio(wav, start, stop):
        start, stop = int(start), int(stop)
        if hparams["random_chunk"] and stop - start > chunk:
            start += int(torch.randint(0, stop - start - chunk + 1, (1,)))
            stop = start + chunk
        return sb.dataio.dataio.read_audio(
            {"file": wav, "start": start, "stop": stop}
        )

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def valid_audio(wav, start, stop):
        return sb.dataio.dataio.read_audio(
            {"file": wav, "start": int(start), "stop": int(stop)}
        )

    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id_encoded")
    def label_pipeline(spk_id):
        return label_encoder.encode_sequence_torch([spk_id])

    datasets = []
    for csv_path, audio in (
        (prep["train_csv"], train_audio),
        (prep["dev_csv"], valid_audio),
    ):
        data = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path)
        data.add_dynamic_item(audio)
        data.add_dynamic_item(label_pipeline)
        data.set_output_keys(["id", "sig", "spk_id_encoded"])
        datasets.append(data)
    label_encoder.load_or_create(
        path=os.path.join(hparams["save_folder"], "label_encoder.txt"),
        from_didatasets=[datasets[0]],
        output_key="spk_id",
    )
    return datasets[0], datasets[1], label_encoder


def make_train_set(brain, hparams, train_data):
    """The training data for ``fit``: a dataset or a P x K DataLoader.

    Without ``train_sampler`` in the YAML, SpeechBrain builds the usual
    shuffled loader from ``train_dataloader_opts`` (and shards it under
    DDP). With it, ``train_sampler(train_data)`` must return a batch
    sampler (dampit's ``PKSampler.from_dataset``); the DataLoader is built
    here and passed to ``fit`` ready-made, so SpeechBrain does not wrap the
    sampler again under DDP (``PKSampler`` already gives each rank its
    share of the batches), and ``brain.train_sampler`` is set so that
    SpeechBrain calls its ``set_epoch`` at the start of every epoch.

    Arguments
    ---------
    brain : SpeakerBrain
        The Brain (its ``train_sampler`` is set for a batch sampler).
    hparams : dict
        Needs ``train_dataloader_opts``; ``train_sampler`` optional.
    train_data : DynamicItemDataset
        The training set.

    Returns
    -------
    train_set : DynamicItemDataset or DataLoader
        What to pass to ``fit``.
    loader_opts : dict
        The ``train_loader_kwargs`` for ``fit``.
    """
    opts = dict(hparams["train_dataloader_opts"])
    make_sampler = hparams.get("train_sampler")
    if make_sampler is None:
        return train_data, opts
    sampler = make_sampler(train_data)
    loader = torch.utils.data.DataLoader(
        train_data,
        batch_sampler=sampler,
        collate_fn=sb.dataio.batch.PaddedBatch,
        num_workers=int(opts.get("num_workers", 0)),
    )
    brain.train_sampler = sampler
    return loader, {}


def evaluate(brain, hparams, prep):
    """Score the held-out trials with whole-utterance cosine similarity.

    Loads the checkpoint with the lowest validation EER, embeds every test
    utterance whole, scores each trial by the cosine of its two
    embeddings, and writes EER, minDCF, a DET curve and a score histogram
    under ``<output_folder>/verification`` and the figures in
    ``<output_folder>/results.json``.

    Arguments
    ---------
    brain : SpeakerBrain
        The trained Brain.
    hparams : dict
        The recipe's hyperparameters.
    prep : dict
        Output of :func:`prepare_data`.

    Returns
    -------
    dict
        ``eer`` (%), ``min_dcf`` (p_target 0.01), ``n_trials`` and more.
    """
    brain.checkpointer.recover_if_possible(min_key="EER")
    brain.modules.eval()
    trials = read_trials(prep["trials"])
    needed = {u for t in trials for u in t[1:]}
    loader = utterance_loader(hparams, prep["test_csv"], needed)
    progress = not brain.noprogressbar
    with torch.no_grad():
        ids, emb, _ = embed(
            brain.compute_embeddings, loader, None, brain.device, None, progress
        )
    index = {uid: k for k, uid in enumerate(ids)}
    enrol = np.array([index[t[1]] for t in trials])
    test = np.array([index[t[2]] for t in trials])
    scores = cosine_scores(emb, enrol, test)
    report = write_report(
        scores,
        np.array([t[0] for t in trials]),
        os.path.join(hparams["output_folder"], "verification"),
        "full_cosine",
        trial_ids=[(t[1], t[2]) for t in trials],
    )
    return {
        "experiment": hparams["experiment"],
        "eer": 100.0 * float(report["eer"]),
        "min_dcf": float(report["min_dcf_0.01"]),
        "n_trials": len(trials),
        "n_test_utterances": len(ids),
        "scoring": "cosine of whole-utterance embeddings",
    }


def main(argv):
    """Prepare the data, train, test on the held-out speakers."""
    start = time.time()
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    # The values first, checked in one line each (dampit's bounds, the
    # data and output folders): loading the YAML builds its objects, and
    # the checkpointer creates the output folder.
    values = read_values(hparams_file, overrides, hparams_file)
    check_arguments(values, hparams_file)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    run_on_main(prepare_data, kwargs={"hparams": hparams})
    prep = prepare_data(hparams)  # every rank reads the saved result
    train_data, valid_data, label_encoder = dataio_prep(hparams, prep)
    if len(label_encoder) != int(hparams["n_speakers"]):
        raise RecipeError(
            f"{hparams_file}: n_speakers={hparams['n_speakers']}, but "
            f"{prep['train_csv']} has {len(label_encoder)} speakers; run "
            f"again with --n_speakers={len(label_encoder)}"
        )
    label_encoder.expect_len(int(hparams["n_speakers"]))

    brain = SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    train_set, train_opts = make_train_set(brain, hparams, train_data)
    brain.fit(
        brain.hparams.epoch_counter,
        train_set,
        valid_data,
        train_loader_kwargs=train_opts,
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    if not if_main_process():
        return
    with torch.no_grad():
        results = evaluate(brain, hparams, prep)
    results["minutes"] = round((time.time() - start) / 60.0, 2)
    atomic_write_text(
        os.path.join(hparams["output_folder"], "results.json"),
        json.dumps(results, indent=2) + "\n",
    )
    print(
        f"[{results['experiment']}] held-out EER {results['eer']:.2f}% "
        f"(minDCF(0.01) {results['min_dcf']:.4f}) on {results['n_trials']} "
        f"trials of {results['n_test_utterances']} utterances; "
        f"{results['minutes']:.1f} min in this process"
    )


if __name__ == "__main__":
    run_script(main)
