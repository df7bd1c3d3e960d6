#!/usr/bin/env python3
"""Template recipe: SpeechBrain ECAPA-TDNN speaker embeddings, any loss.

A short SpeechBrain recipe (Fbank -> sentence mean normalisation ->
ECAPA-TDNN -> classifier) whose classifier, loss and batch sampler come
from the YAML file. The same script trains both configurations beside it:

- ``hparams/ecapa_aam.yaml``: SpeechBrain's stock recipe, an ECAPA
  ``Classifier`` and ``LogSoftmaxWrapper(AdditiveAngularMargin)`` on
  shuffled batches;
- ``hparams/ecapa_multi_metric.yaml``: the same file with the entries of
  the README's step 2: dampit's ``MetricHead`` classifier and
  ``MetricHeadLoss`` (the AAM softmax of the logits + triplet, n-pair and
  angular losses of the embeddings) on P speakers x K utterances batches
  from dampit's ``PKSampler``.

The Brain below holds no dampit code: it ends ``compute_forward`` in the
classifier and calls ``compute_cost(logits, spkid, lens)``, as
SpeechBrain's speaker recipes do. The data preparation (a
speaker-disjoint split of a ``<speaker>/<utt>.wav`` folder with a trial
list), ``n_speakers`` (the training speakers of the prepared data) and
the scoring of the held-out trials use dampit's helpers, identically for
both files.

Usage (from the repository root)::

    python templates/speaker_verification/train.py \\
        templates/speaker_verification/hparams/ecapa_multi_metric.yaml \\
        --data_folder=../shared/data/dspspeech
    python templates/speaker_verification/train.py \\
        templates/speaker_verification/hparams/ecapa_aam.yaml \\
        --data_folder=../shared/data/dspspeech

Add ``--debug`` for a smoke test (2 epochs of 2 batches). The held-out EER
is printed at the end and written to ``<output_folder>/results.json``;
``dampit-export <output_folder> <model folder>`` exports the tested model.
"""

import json
import logging
import os
import time
import types

import numpy as np
import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main

from dampit.dataio.audio import load_audio, read_crop
from dampit.dataio.prepare_folder import prepare_folder
from dampit.dataio.trials import read_trials
from dampit.metrics.report import write_report
from dampit.metrics.scoring import cosine_scores
from dampit.training.command_line import parse_command_line
from dampit.training.run_data import check_label_encoder, holds_run
from dampit.training.run_setup import (
    check_arguments,
    load_with_n_speakers,
    read_values,
    run_script,
)
from dampit.training.validation import validation_eer
from dampit.training.verification import (
    embed,
    load_test_weights,
    utterance_loader,
)
from dampit.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)


class SpeakerBrain(sb.core.Brain):
    """SpeechBrain's speaker-embedding Brain: features, ECAPA-TDNN, the
    YAML's classifier and loss.

    ``compute_forward`` ends in ``self.modules.classifier``, and training
    calls the YAML's ``compute_cost(logits, spkid, lens)``, as SpeechBrain's
    speaker recipes do. Validation keeps the embeddings, for the EER of
    all their pairs.
    """

    def compute_embeddings(self, wavs, lens):
        """Waveforms ``[B, N]`` and relative lengths -> ``[B, 1, D]``."""
        feats = self.modules.compute_features(wavs)
        feats = self.modules.mean_var_norm(feats, lens)
        return self.modules.embedding_model(feats, lens)

    def compute_forward(self, batch, stage):
        """The logits ``[B, 1, n_speakers]``, the embeddings ``[B, 1, D]``
        and the relative lengths of a batch (no augmentation here)."""
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        embeddings = self.compute_embeddings(wavs, lens)
        return self.modules.classifier(embeddings), embeddings, lens

    def compute_objectives(self, predictions, batch, stage):
        """Training: the YAML's loss of the logits. Validation: keep the
        embeddings."""
        logits, embeddings, lens = predictions
        spkid, _ = batch.spk_id_encoded
        if stage != sb.Stage.TRAIN:
            self.valid_emb.append(embeddings.detach().squeeze(1).cpu())
            self.valid_spk.append(spkid.detach().reshape(-1).cpu())
            return torch.zeros((), device=self.device)
        loss = self.hparams.compute_cost(logits, spkid, lens)
        # Optional: a loss with ``last_terms`` (dampit's MetricHeadLoss)
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
        keep=holds_run(hparams["save_folder"]),  # never re-split its data
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
    sr = int(hparams["sample_rate"])
    chunk = int(sr * hparams["sentence_len"])

    # dampit's readers: mono at sample_rate (another rate is resampled,
    # with a warning), as the test utterances are read; start and stop
    # are samples at the file's own rate.
    @sb.utils.data_pipeline.takes("wav", "start", "stop", "duration")
    @sb.utils.data_pipeline.provides("sig")
    def train_audio(wav, start, stop, duration):
        start, stop = int(start), int(stop)
        if hparams["random_chunk"] and float(duration) > chunk / sr:
            return read_crop(wav, chunk, sr, start=start, stop=stop)
        return load_audio(wav, sr, start=start, stop=stop)

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def valid_audio(wav, start, stop):
        return load_audio(wav, sr, start=int(start), stop=int(stop))

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
    labels = os.path.join(hparams["save_folder"], "label_encoder.txt")
    label_encoder.load_or_create(
        path=labels, from_didatasets=[datasets[0]], output_key="spk_id"
    )
    # One written by another run (other training speakers) is refused.
    check_label_encoder(label_encoder, datasets[0], labels)
    return datasets[0], datasets[1], label_encoder


def train_loader_options(hparams, train_data):
    """The ``train_loader_kwargs`` of ``fit``: shuffled batches or the
    YAML's batch sampler.

    Without ``train_sampler`` in the YAML: ``train_dataloader_opts``
    (SpeechBrain's shuffled batches). With it (dampit's
    ``PKSampler.from_dataset``): ``pk_loader_options`` with the sampler of
    ``train_data`` as ``batch_sampler``, as the README's step 3 does in
    SpeechBrain's recipe. SpeechBrain builds the loader; under DDP its
    ``DistributedSamplerWrapper`` deals each rank whole P x K batches.

    Arguments
    ---------
    hparams : dict
        Needs ``train_dataloader_opts``, or ``train_sampler`` and
        ``pk_loader_options``.
    train_data : DynamicItemDataset
        The training set.

    Returns
    -------
    dict
        The ``train_loader_kwargs`` for ``fit``.
    """
    make_sampler = hparams.get("train_sampler")
    if make_sampler is None:
        return hparams["train_dataloader_opts"]
    sampler = make_sampler(train_data)
    return hparams["pk_loader_options"](batch_sampler=sampler)


def evaluate(brain, hparams, prep, tree):
    """Score the held-out trials with whole-utterance cosine similarity.

    Loads the checkpoint with the lowest validation EER and saves what it
    tests for ``dampit-export`` as dampit's recipe does
    (``dampit.training.verification.load_test_weights``:
    ``checkpoints.txt``, ``tested_model.json`` and the weights), embeds
    every test utterance whole, scores each trial by the cosine of its two
    embeddings, and writes EER, minDCF, a DET curve and a score histogram
    under ``<output_folder>/verification``, with the metrics in its
    ``summary.json`` (``trials/full_cosine``, as dampit's recipe names
    them).

    Arguments
    ---------
    brain : SpeakerBrain
        The trained Brain.
    hparams : dict
        The recipe's hyperparameters.
    prep : dict
        Output of :func:`prepare_data`.
    tree : dict
        The same YAML read plainly (``!new:`` entries with their tags).

    Returns
    -------
    dict
        ``eer`` (%), ``min_dcf`` (p_target 0.01), ``n_trials`` and more.
    """
    out = os.path.join(hparams["output_folder"], "verification")
    load_test_weights(brain.checkpointer, hparams, tree, out)
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
        out,
        "full_cosine",
        trial_ids=[(t[1], t[2]) for t in trials],
    )
    summary = json.dumps({"trials/full_cosine": report}, indent=2)
    atomic_write_text(os.path.join(out, "summary.json"), summary)
    return {
        "experiment": hparams["experiment"],
        "eer": 100.0 * float(report["eer"]),
        "min_dcf": float(report["min_dcf_0.01"]),
        "n_trials": len(trials),
        "n_test_utterances": len(ids),
        "scoring": "cosine of whole-utterance embeddings",
    }


def make_brain(hparams, run_opts, train_opts):
    """The ``SpeakerBrain`` of the YAML, told the batch sampler of
    ``train_opts`` (if any) as its ``train_sampler``: SpeechBrain then
    calls its ``set_epoch(epoch)`` as each epoch starts, so a resumed run
    draws the batches of the epoch it resumes at, as an unbroken run does.
    """
    brain = SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.train_sampler = train_opts.get("batch_sampler")
    return brain


def load_hparams(argv):
    """Read the command line, check it, prepare the data, load the YAML.

    The values are read plainly and checked first, in one line each
    (dampit's bounds, the data and output folders): loading the YAML builds
    its objects, and the checkpointer creates the output folder. The data
    are prepared from those values, and the YAML is loaded once with
    ``n_speakers`` set to the training speakers of the prepared data, as in
    dampit's recipe (a different value in the YAML: one warning line,
    ``dampit.training.run_setup.load_with_n_speakers``), and read plainly
    again with it (what :func:`evaluate` saves as the tested model).

    Arguments
    ---------
    argv : list of str
        The command line: the YAML file, SpeechBrain's options and
        ``--key=value`` overrides.

    Returns
    -------
    types.SimpleNamespace
        ``hparams`` (the loaded YAML), ``plain`` (its values, nothing
        built), ``run_opts``, ``prep`` (:func:`prepare_data`),
        ``hparams_file`` and ``overrides`` (with ``n_speakers``).
    """
    hparams_file, run_opts, overrides = parse_command_line(argv)
    values = read_values(hparams_file, overrides, hparams_file)
    check_arguments(values, hparams_file)
    sb.utils.distributed.ddp_init_group(run_opts)
    run_on_main(prepare_data, kwargs={"hparams": values})
    prep = prepare_data(values)  # every rank reads the saved result
    hparams, plain = load_with_n_speakers(
        hparams_file, overrides, values, prep["n_train_speakers"], hparams_file
    )
    return types.SimpleNamespace(
        hparams=hparams,
        plain=plain,
        run_opts=run_opts,
        prep=prep,
        hparams_file=hparams_file,
        overrides=overrides,
    )


def main(argv):
    """Prepare the data, train, test on the held-out speakers."""
    start = time.time()
    run = load_hparams(argv)
    hparams, prep = run.hparams, run.prep
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=run.hparams_file,
        overrides=run.overrides,
    )
    train_data, valid_data, label_encoder = dataio_prep(hparams, prep)
    label_encoder.expect_len(hparams["n_speakers"])

    train_opts = train_loader_options(hparams, train_data)
    brain = make_brain(hparams, run.run_opts, train_opts)
    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=train_opts,
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    if not if_main_process():
        return
    with torch.no_grad():
        results = evaluate(brain, hparams, prep, run.plain)
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
