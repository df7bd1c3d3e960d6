#!/usr/bin/env python3
"""Train speaker embeddings with deep multi-metric learning (Xu et al. 2020).

The network (a gated ResNet) is trained on P x K batches with a weighted sum
of n-pair, triplet, angular and softmax losses; each epoch ends with an EER
on held-out utterances of the training speakers, and training ends with the
verification of the test trials (as verify.py does).

Usage (from recipes/VoxCeleb, or with full paths from anywhere)::

    python train.py hparams/multi_metric.yaml --data_folder=/data/voxceleb
    python train.py hparams/mini.yaml --data_folder=<speaker tree>
    python train.py hparams/mini.yaml --data_folder='[<tree>,<tree>]' \
        --test_corpora='[<folder name>]' --n_folds=5 --fold=0
    torchrun --nproc_per_node=2 train.py hparams/multi_metric.yaml ...

The data are prepared first (``dampit.training.run_setup``): ``n_speakers``
is the number of training speakers, and the YAML is loaded once. Several
speaker trees (a list) are corpora whose IDs start with the tree's base
name; ``test_corpora`` names those split into test and training speakers.
"""

import logging
import os
import random

import numpy as np
import speechbrain as sb
import torch
from speechbrain.augment.time_domain import Resample
from speechbrain.utils.distributed import if_main_process

from dampit.dataio.audio import load_audio, read_crop
from dampit.dataio.crops import eval_crops, repeat_to_length
from dampit.dataio.sampler import PKSampler
from dampit.inference.api import SPEC_FILE, ModelFolderError, load_model
from dampit.lobes.resnet import load_torchvision_weights
from dampit.training.embedding_health import EmbeddingHealth
from dampit.training.run_data import check_label_encoder, check_prepared
from dampit.training.run_setup import RecipeError, run_script, start_run
from dampit.training.validation import validation_eer
from dampit.training.verification import load_test_weights, verify
from dampit.utils.checkpoints import AtomicCheckpointer

logger = logging.getLogger(__name__)


class MultiMetricBrain(sb.Brain):
    """Brain for P x K training with dampit's MultiMetricLoss.

    GPU switches: SpeechBrain's ``--precision=bf16|fp16`` (the loss stays
    float32), ``--compile`` (``compile_module_keys``) and the YAML's
    ``channels_last`` (the network's weights in NHWC order).

    Each epoch's log has the loss terms and the training embeddings'
    health (:class:`~dampit.training.embedding_health.EmbeddingHealth`:
    same- and different-speaker cosines, norms), with a warning when they
    have collapsed.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(getattr(self, "hparams", None), "channels_last", False):
            self.modules.embedding_model.to(memory_format=torch.channels_last)

    def compute_embeddings(self, wavs, lens, stage=None):
        """Waveforms [B, N] -> embeddings [B, 1, D]; in training, the
        YAML's ``fea_augment`` (SpecAugment) masks the features."""
        feats = self.modules.compute_features(wavs)
        feats = self.modules.normalize(feats, lens)
        fea_augment = getattr(self.hparams, "fea_augment", None)
        if (
            stage == sb.Stage.TRAIN
            and fea_augment is not None
            and fea_augment.augment_prob > 0  # off: no random draw at all
        ):
            feats, lens = fea_augment(feats, lens)
        return self.modules.embedding_model(feats, lens)

    def compute_forward(self, batch, stage):
        """Embed the batch (its noise and reverberation were added by the
        loader's workers, see ``dataio_prep``)."""
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        return self.compute_embeddings(wavs, lens, stage)

    def compute_objectives(self, predictions, batch, stage):
        """The multi-metric loss in training; embeddings kept in validation."""
        labels = batch.spk_id_encoded.data.reshape(-1).to(self.device)
        if stage != sb.Stage.TRAIN:
            self.valid_emb.append(predictions.detach().cpu())
            self.valid_labels.append(labels.cpu())
            return torch.zeros((), device=self.device)
        with torch.autocast(self.device_type, enabled=False):  # float32
            loss = self.modules.compute_cost(predictions.float(), labels)
        cost = getattr(self.modules.compute_cost, "module", None)
        cost = cost or self.modules.compute_cost  # unwrap DDP
        for name, value in cost.last_terms.items():
            self.term_sums[name] = self.term_sums.get(name, 0.0) + float(value)
        self.term_count += 1
        self.health.update(predictions, labels)
        return loss

    def _wrap_distributed(self):
        """DDP without SyncBatchNorm on CPU (it needs CUDA); else as usual."""
        if not (self.distributed_launch and self.distributed_backend == "gloo"):
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = torch.nn.parallel.DistributedDataParallel(
                    module, find_unused_parameters=self.find_unused_parameters
                )

    def on_stage_start(self, stage, epoch=None):
        """Reseed per epoch (resumable, deterministic) and reset stats."""
        if stage != sb.Stage.TRAIN:
            self.valid_emb, self.valid_labels = [], []
            return
        seed = int(self.hparams.seed) + int(epoch or 0)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        if getattr(self, "pk_sampler", None) is not None:
            self.pk_sampler.set_epoch(epoch)
        self.term_sums, self.term_count = {}, 0
        self.health = EmbeddingHealth()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log the loss terms and the valid EER; keep the checkpoints."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            for name, total in self.term_sums.items():
                self.train_stats[name] = total / max(1, self.term_count)
            self.train_stats.update(self.health.summarize(epoch))
            return
        eer = validation_eer(
            torch.cat(self.valid_emb),
            torch.cat(self.valid_labels),
            max_pairs=int(self.hparams.valid_pairs),
        )
        if stage != sb.Stage.VALID:
            return
        lr = self.optimizer.param_groups[0]["lr"]
        _, new_lr = self.hparams.lr_annealing(epoch)
        sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch": epoch, "lr": lr},
            train_stats=self.train_stats,
            valid_stats={"EER": eer},
        )
        # The best by valid EER, and the N newest when the test averages
        # the last N epochs (average_checkpoints).
        self.checkpointer.save_and_keep_only(
            meta={"EER": eer},
            min_keys=["EER"],
            num_to_keep=int(self.hparams.average_checkpoints),
        )


def speed_speakers(dataset, speeds):
    """WeSpeaker's speed perturbation: every training utterance once per
    speed in percent (100 and ``speeds``), a speed other than 100 as an
    utterance of a new speaker ``<spk_id>@sp<speed>``."""
    rows = {}
    for speed in [100, *speeds]:
        tag = "" if speed == 100 else f"@sp{speed}"
        for uid, row in dataset.data.items():
            spk = row["spk_id"] + tag
            rows[uid + tag] = {**row, "spk_id": spk, "speed": speed}
    return sb.dataio.dataset.DynamicItemDataset(rows)


def dataio_prep(hparams, data):
    """Train and valid DynamicItemDatasets and the speaker label encoder.

    Training items are random crops of ``crop_samples`` (short files are
    repeated), of the speakers made by ``speed_speakers`` too, each then
    given the YAML's ``augment`` (noise and reverberation, read and added
    per crop in the DataLoader's workers, as WeSpeaker does: the training
    process reads no audio); validation items one centred crop.
    """
    sr, crop = int(hparams["sample_rate"]), int(hparams["crop_samples"])
    speeds = hparams.get("speed_speakers") or []  # checked by start_run
    resample = {s: Resample(orig_freq=s, new_freq=100) for s in speeds}
    augment = hparams.get("augment")

    @sb.utils.data_pipeline.takes("wav", "start", "stop", "speed")
    @sb.utils.data_pipeline.provides("sig")
    def train_audio(wav, start, stop, speed):
        n = crop * speed // 100  # resampled by 100 / speed: ~crop samples
        sig = read_crop(wav, n, sr, start=int(start), stop=int(stop))
        if speed != 100:
            sig = repeat_to_length(resample[speed](sig[None])[0], crop)
        sig = sig[:crop]
        if augment is not None:  # a batch of one crop: [1, crop]
            sig = augment(sig[None])[0][0]
        return sig

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def valid_audio(wav, start, stop):
        wav = load_audio(wav, sr, start=int(start), stop=int(stop))
        return eval_crops(wav, 1, crop)[0]

    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id_encoded")
    def label_pipeline(spk_id):
        return label_encoder.encode_sequence_torch([spk_id])

    # dev speakers may be unseen in training (n_valid_speakers): own labels
    valid_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id_encoded")
    def valid_label(spk_id):
        return valid_encoder.encode_sequence_torch([spk_id])

    datasets = {}
    for name, audio, labels in (
        ("train", train_audio, label_pipeline),
        ("dev", valid_audio, valid_label),
    ):
        datasets[name] = sb.dataio.dataset.DynamicItemDataset.from_csv(
            data[name], replacements={"data_root": hparams["data_folder"]}
        )
        if name == "train":
            datasets[name] = speed_speakers(datasets[name], speeds)
        datasets[name].add_dynamic_item(audio)
        datasets[name].add_dynamic_item(labels)
        datasets[name].set_output_keys(["id", "sig", "spk_id_encoded"])
    valid_encoder.update_from_didataset(datasets["dev"], output_key="spk_id")
    valid_encoder.expect_len(len(valid_encoder))
    labels = os.path.join(hparams["save_folder"], "label_encoder.txt")
    try:
        label_encoder.load_or_create(
            path=labels,
            from_didatasets=[datasets["train"]],
            output_key="spk_id",
        )
    except (KeyError, ValueError, SyntaxError) as err:
        raise RecipeError(
            f"{labels}: not a label encoder ({type(err).__name__}: {err}); "
            "remove it to write it again"
        ) from None
    if len(label_encoder) == 0:
        raise RecipeError(f"{labels}: no labels; remove it to write it again")
    check_label_encoder(label_encoder, datasets["train"], labels)
    label_encoder.expect_len(len(label_encoder))
    return datasets["train"], datasets["dev"], label_encoder


def make_train_loader(hparams, train_data):
    """A DataLoader of P speakers x K utterances batches; built here so
    that SpeechBrain does not wrap the sampler again under DDP (PKSampler
    gives each rank its slice of every P x K batch).

    The sampler (its epoch) and the loader (SpeechBrain's
    ``SaveableDataLoader``: the batches the training loop received) are
    checkpoint recoverables: a run resumed from a checkpoint saved inside
    an epoch (``--ckpt_interval_steps``, ``--ckpt_interval_minutes``)
    goes on with that epoch's remaining batches."""
    try:
        sampler = PKSampler.from_dataset(
            train_data,
            key="spk_id",
            P=int(hparams["P"]),
            K=int(hparams["K"]),
            seed=int(hparams["seed"]),
            batches_per_epoch=hparams["batches_per_epoch"],
        )
    except ValueError as err:
        raise RecipeError(str(err)) from None
    loader = sb.dataio.dataloader.SaveableDataLoader(
        train_data,
        batch_sampler=sampler,
        collate_fn=sb.dataio.batch.PaddedBatch,
        num_workers=int(hparams["num_workers"]),
    )
    hparams["checkpointer"].add_recoverable(
        "train_sampler", sampler, optional_load=True
    )
    hparams["checkpointer"].add_recoverable(
        "train_loader", loader, optional_load=True
    )
    return loader, sampler


def init_modules_from(hparams):
    """Start from ``init_from``: an exported model folder (fine-tuning:
    its embedding model, the classifier starts anew for the new speakers)
    or another run's best checkpoint (``init_modules``, section 4.6)."""
    source = hparams["init_from"]
    if os.path.isfile(os.path.join(source, SPEC_FILE)):
        init_from_model_folder(hparams, source)
        return
    ckpt = AtomicCheckpointer(source).find_checkpoint(min_key="EER")
    if ckpt is None:
        raise RecipeError(f"init_from={source}: no checkpoint found")
    for key in hparams["init_modules"]:
        if key not in ckpt.paramfiles:
            raise RecipeError(f"init_from={ckpt.path}: no '{key}' file")
        state = torch.load(
            ckpt.paramfiles[key], map_location="cpu", weights_only=True
        )
        hparams[key].load_state_dict(state)


def init_from_model_folder(hparams, folder):
    """Copy the embedding model of a dampit model folder (loaded with
    ``load_model``: nothing in it is executed) into ``embedding_model``.

    The folder's features must be the YAML's (same output on a test
    signal) and its network the same architecture (a strict load), else
    one line says which differs."""
    try:
        model = load_model(folder)
    except ModelFolderError as err:
        raise RecipeError(f"init_from={folder}: {err}") from None
    signal = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = hparams["compute_features"](signal)
        theirs = model.mods.compute_features(signal)
    if ours.shape != theirs.shape or not torch.allclose(
        ours, theirs, rtol=1e-4, atol=1e-4
    ):
        raise RecipeError(
            f"init_from={folder}: its features differ from the YAML's "
            f"(output {tuple(theirs.shape)} vs {tuple(ours.shape)} for 1 s):"
            " fine-tune with the configuration the model was trained with"
        )
    state = model.mods.embedding_model.state_dict()
    try:
        hparams["embedding_model"].load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1:2] or [str(err)]
        raise RecipeError(
            f"init_from={folder}: its embedding model is not the YAML's "
            f"architecture ({first[0].strip()})"
        ) from None


def main(argv):
    """Prepare the data, train, verify."""
    run = start_run(argv)
    hparams = run.hparams
    sb.create_experiment_directory(  # saves the final hyperparameters
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=run.base_file,
        overrides=run.overrides,
    )
    train_data, valid_data, _ = dataio_prep(hparams, run.data)
    if hparams.get("torchvision_init"):
        load_torchvision_weights(
            hparams["embedding_model"], hparams["torchvision_init"]
        )
    if hparams.get("init_from"):
        init_modules_from(hparams)
    brain = MultiMetricBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run.run_opts,
        checkpointer=hparams["checkpointer"],
    )
    train_loader, brain.pk_sampler = make_train_loader(hparams, train_data)
    valid_loader = sb.dataio.dataloader.make_dataloader(
        valid_data,
        batch_size=int(hparams["valid_batch_size"]),
        num_workers=int(hparams["num_workers"]),
    )
    brain.fit(brain.hparams.epoch_counter, train_loader, valid_loader)
    if not (hparams["test_after_training"] and if_main_process()):
        return
    out = os.path.join(hparams["output_folder"], "verification")
    load_test_weights(brain.checkpointer, hparams, run.plain, out)
    if run.data["n_trials"] == 0:
        logger.info("no test speakers (n_test_speakers: 0): nothing to verify")
        return
    check_prepared(hparams, run.data)
    brain.modules.eval()

    def embed(wavs, lens):  # under --eval_precision, as SpeechBrain does
        with torch.no_grad(), brain.evaluation_ctx:
            return brain.compute_embeddings(wavs, lens)

    verify(embed, hparams, run.data, brain.device, not brain.noprogressbar)


if __name__ == "__main__":
    run_script(main)
