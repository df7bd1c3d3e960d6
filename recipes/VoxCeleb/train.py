#!/usr/bin/env python3
"""Train speaker embeddings with deep multi-metric learning (Xu et al. 2020).

The network (a gated ResNet) is trained on P x K batches with a weighted sum
of n-pair, triplet, angular and softmax losses; each epoch ends with an EER
on held-out utterances of the training speakers, and training ends with the
verification of the test trials (see verify.py).

Usage (from recipes/VoxCeleb, or with full paths from anywhere)::

    python train.py hparams/multi_metric.yaml --data_folder=/data/voxceleb
    python train.py hparams/mini.yaml --data_folder=<speaker tree>
    python train.py hparams/mini.yaml --data_folder=... --debug
    torchrun --nproc_per_node=2 train.py hparams/multi_metric.yaml ...

Variant files (hparams/ablations/*.yaml, mini.yaml) extend the base file
and list only what they change (see dampit.utils.hparams).
"""

import logging
import os
import random
import sys

import numpy as np
import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main

from dampit.dataio.audio import audio_info, load_audio
from dampit.dataio.crops import eval_crops, repeat_to_length
from dampit.dataio.sampler import PKSampler
from dampit.metrics.error_rates import compute_eer
from dampit.utils.checkpoints import AtomicCheckpointer
from dampit.utils.hparams import load_hparams

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verify import prepare_data, run_verification  # noqa: E402

logger = logging.getLogger(__name__)


class MultiMetricBrain(sb.Brain):
    """Brain for P x K training with dampit's MultiMetricLoss.

    GPU-ready switches: SpeechBrain's ``--precision=bf16|fp16`` (autocast;
    the loss still runs in float32) and ``--compile`` (the YAML's
    ``compile_module_keys`` limits it to the network), and the
    ``channels_last`` hparam (the network's weights, hence its
    activations, in NHWC memory order).
    """

    def __init__(self, *args, **kwargs):
        """SpeechBrain's Brain, then the ``channels_last`` switch."""
        super().__init__(*args, **kwargs)
        if getattr(getattr(self, "hparams", None), "channels_last", False):
            self.modules.embedding_model.to(memory_format=torch.channels_last)

    def compute_embeddings(self, wavs, lens, stage=None):
        """Waveforms [B, N] -> embeddings [B, 1, D] (features, norm, net).

        In training, the YAML's ``fea_augment`` (SpeechBrain's
        ``Augmenter`` of ``SpectrogramDrop``: SpecAugment), if any, masks
        the normalised features.
        """
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
        """Augment (training only), then embed."""
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        if stage == sb.Stage.TRAIN:
            wavs, lens = self.modules.augment(wavs, lens)
        return self.compute_embeddings(wavs, lens, stage)

    def compute_objectives(self, predictions, batch, stage):
        """The multi-metric loss in training; embeddings kept in validation."""
        labels = batch.spk_id_encoded.data.reshape(-1).to(self.device)
        if stage == sb.Stage.TRAIN:
            # Margins and exponentials of the metric losses in float32,
            # also under --precision=bf16/fp16 autocast.
            with torch.autocast(self.device_type, enabled=False):
                loss = self.modules.compute_cost(predictions.float(), labels)
            cost = getattr(self.modules.compute_cost, "module", None)
            cost = cost or self.modules.compute_cost  # unwrap DDP
            for name, value in cost.last_terms.items():
                self.term_sums[name] = self.term_sums.get(name, 0.0) + float(
                    value
                )
            self.term_count += 1
            return loss
        self.valid_embeddings.append(
            predictions.detach().reshape(predictions.shape[0], -1).cpu()
        )
        self.valid_labels.append(labels.cpu())
        return torch.zeros((), device=self.device)

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
        if stage == sb.Stage.TRAIN:
            seed = int(self.hparams.seed) + int(epoch or 0)
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            sampler = getattr(self, "pk_sampler", None)
            if sampler is not None:
                sampler.set_epoch(epoch)
            self.term_sums, self.term_count = {}, 0
        else:
            self.valid_embeddings, self.valid_labels = [], []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log the loss terms and the valid EER; keep the checkpoints."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            for name, total in self.term_sums.items():
                self.train_stats[name] = total / max(1, self.term_count)
            return
        eer = self.valid_eer()
        stats = {"EER": eer}
        if stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"]
            annealing = getattr(self.hparams, "lr_annealing", None)
            if annealing is not None:  # per-epoch schedule, if any
                _, new_lr = annealing(epoch)
                sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            # The best one by valid EER, and the N most recent ones when
            # the test averages the last N (average_checkpoints).
            keep = int(getattr(self.hparams, "average_checkpoints", 1))
            self.checkpointer.save_and_keep_only(
                meta={"EER": eer}, min_keys=["EER"], num_to_keep=keep
            )

    def valid_eer(self):
        """EER (%) over sampled pairs of the validation embeddings."""
        emb = torch.nn.functional.normalize(
            torch.cat(self.valid_embeddings).float(), dim=1
        )
        labels = torch.cat(self.valid_labels)
        n = len(labels)
        gen = torch.Generator().manual_seed(0)
        n_pairs = int(self.hparams.valid_pairs)
        i = torch.randint(0, n, (n_pairs,), generator=gen)
        j = torch.randint(0, n, (n_pairs,), generator=gen)
        keep = i != j
        i, j = i[keep], j[keep]
        scores = (emb[i] * emb[j]).sum(1).numpy()
        same = (labels[i] == labels[j]).numpy()
        if same.all() or not same.any():
            logger.warning("valid set cannot form both kinds of pairs")
            return float("nan")
        eer, _ = compute_eer(scores, same)
        return 100.0 * float(eer)


def make_datasets(hparams, csvs):
    """Train and valid DynamicItemDatasets and the speaker label encoder."""
    sr = int(hparams["sample_rate"])
    crop = int(hparams["crop_samples"])

    def read(wav, start, stop):
        return load_audio(wav, sr, start=int(start), stop=int(stop))

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def train_audio(wav, start, stop):
        start, stop = int(start), int(stop)
        # start/stop count samples at the file's own rate: so must the crop
        # (an 8 or 44.1 kHz file is resampled after reading).
        n = -(-crop * audio_info(wav)[1] // sr)
        if stop - start > n:  # read only a random crop of long files
            start += int(torch.randint(0, stop - start - n + 1, (1,)))
            stop = start + n
        return repeat_to_length(read(wav, start, stop), crop)

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def valid_audio(wav, start, stop):
        return eval_crops(read(wav, start, stop), 1, crop)[0]

    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id_encoded")
    def label_pipeline(spk_id):
        return label_encoder.encode_sequence_torch([spk_id])

    datasets = {}
    for name, audio in (("train", train_audio), ("dev", valid_audio)):
        data = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csvs[name], replacements={"data_root": hparams["data_folder"]}
        )
        data.add_dynamic_item(audio)
        data.add_dynamic_item(label_pipeline)
        data.set_output_keys(["id", "sig", "spk_id_encoded"])
        datasets[name] = data
    lab_file = os.path.join(hparams["save_folder"], "label_encoder.txt")
    label_encoder.load_or_create(
        path=lab_file,
        from_didatasets=[datasets["train"]],
        output_key="spk_id",
    )
    label_encoder.expect_len(len(label_encoder))
    return datasets["train"], datasets["dev"], label_encoder


def make_train_loader(hparams, train_data):
    """A DataLoader whose batches are P speakers x K utterances.

    The recipe builds the loader itself so that SpeechBrain does not wrap
    the batch sampler again under DDP: PKSampler already gives each rank
    its own disjoint batches.
    """
    sampler = PKSampler.from_dataset(
        train_data,
        key="spk_id",
        P=int(hparams["P"]),
        K=int(hparams["K"]),
        seed=int(hparams["seed"]),
        batches_per_epoch=hparams["batches_per_epoch"],
    )
    loader = torch.utils.data.DataLoader(
        train_data,
        batch_sampler=sampler,
        collate_fn=sb.dataio.batch.PaddedBatch,
        num_workers=int(hparams["num_workers"]),
    )
    return loader, sampler


def init_modules_from(brain, hparams):
    """Load modules from the best checkpoint of another run (section 4.6)."""
    source = hparams["init_from"]
    ckpt = AtomicCheckpointer(source).find_checkpoint(min_key="EER")
    if ckpt is None:
        raise FileNotFoundError(f"init_from={source}: no checkpoint found")
    for key in hparams["init_modules"]:
        path = ckpt.paramfiles.get(key)
        if path is None:
            raise KeyError(f"init_from={source}: checkpoint has no '{key}'")
        state = torch.load(path, map_location="cpu", weights_only=True)
        getattr(brain.modules, key).load_state_dict(state)
    logger.info("initialised %s from %s", hparams["init_modules"], ckpt.path)


def main(argv):
    """Parse the command line, prepare the data, train, verify."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    hparams, base_file, merged = load_hparams(hparams_file, overrides)
    if int(hparams.get("average_checkpoints", 1)) < 1:  # before any work
        raise ValueError(
            f"average_checkpoints must be >= 1, got "
            f"{hparams['average_checkpoints']} ({hparams_file})"
        )
    sb.utils.distributed.ddp_init_group(run_opts)
    csvs = run_on_main(prepare_data, kwargs={"hparams": hparams})
    csvs = prepare_data(hparams)  # every rank reads the (cached) result
    train_data, valid_data, label_encoder = make_datasets(hparams, csvs)

    n_spk = len(label_encoder)
    if n_spk != int(hparams["n_speakers"]):
        logger.info(
            "n_speakers=%s in %s, but the training data has %d speakers: "
            "reloading with n_speakers=%d",
            hparams["n_speakers"],
            hparams_file,
            n_spk,
            n_spk,
        )
        merged["n_speakers"] = n_spk
        hparams, base_file, merged = load_hparams(hparams_file, merged)
    sb.create_experiment_directory(  # saves the final hyperparameters
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=base_file,
        overrides=merged,
    )

    brain = MultiMetricBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    if hparams.get("torchvision_init"):
        from dampit.lobes.resnet import load_torchvision_weights

        load_torchvision_weights(
            hparams["embedding_model"], hparams["torchvision_init"]
        )
    if hparams.get("init_from"):
        init_modules_from(brain, hparams)

    train_loader, brain.pk_sampler = make_train_loader(hparams, train_data)
    valid_loader = sb.dataio.dataloader.make_dataloader(
        valid_data,
        batch_size=int(hparams["valid_batch_size"]),
        num_workers=int(hparams["num_workers"]),
    )
    brain.fit(brain.hparams.epoch_counter, train_loader, valid_loader)

    if hparams["test_after_training"] and if_main_process():
        run_verification(brain, hparams, csvs, label_encoder)


if __name__ == "__main__":
    main(sys.argv[1:])
