#!/usr/bin/env python3
"""SpeechBrain's speaker-embedding recipe, for tests (not shipped).

The structure of SpeechBrain's
``recipes/VoxCeleb/SpeakerRec/train_speaker_embeddings.py`` (SpeechBrain
1.1, Apache-2.0; authors Mirco Ravanelli, Hwidong Na, Nauman
Dawalatabad), rewritten short: ``compute_forward`` ends in the classifier,
``compute_objectives`` calls ``compute_cost(predictions, spkid, lens)`` and
feeds the valid error metric, checkpoints are kept by ``ErrorRate``, and
``fit`` gets ``dataloader_options`` for both stages. The lines that
templates/speaker_verification/README.md's diff touches are SpeechBrain's
own; ``prepare_speakers`` stands in for ``voxceleb_prepare`` (a
``<speaker>/<utt>.wav`` folder).

> python sb_speaker_recipe.py sb_speaker_recipe.yaml --data_folder=DIR
"""

import csv
import os
import random
import sys

import soundfile
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main


class SpeakerBrain(sb.core.Brain):
    """Class for speaker embedding training"""

    def compute_forward(self, batch, stage):
        """Augmented waveforms -> features -> embeddings -> classifier."""
        batch = batch.to(self.device)
        wavs, lens = batch.sig

        if stage == sb.Stage.TRAIN and hasattr(self.hparams, "wav_augment"):
            wavs, lens = self.hparams.wav_augment(wavs, lens)

        feats = self.modules.compute_features(wavs)
        feats = self.modules.mean_var_norm(feats, lens)

        embeddings = self.modules.embedding_model(feats)
        outputs = self.modules.classifier(embeddings)

        return outputs, lens

    def compute_objectives(self, predictions, batch, stage):
        """The loss with the speaker ids as labels."""
        predictions, lens = predictions
        uttid = batch.id
        spkid, _ = batch.spk_id_encoded

        if stage == sb.Stage.TRAIN and hasattr(self.hparams, "wav_augment"):
            spkid = self.hparams.wav_augment.replicate_labels(spkid)

        loss = self.hparams.compute_cost(predictions, spkid, lens)

        if stage == sb.Stage.TRAIN and hasattr(
            self.hparams.lr_annealing, "on_batch_end"
        ):
            self.hparams.lr_annealing.on_batch_end(self.optimizer)

        if stage != sb.Stage.TRAIN:
            self.error_metrics.append(uttid, predictions, spkid, lens)

        return loss

    def on_stage_start(self, stage, epoch=None):
        """A fresh error metric for each evaluation."""
        if stage != sb.Stage.TRAIN:
            self.error_metrics = self.hparams.error_stats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log, anneal and keep the checkpoint with the lowest ErrorRate."""
        stage_stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stage_stats
        else:
            stage_stats["ErrorRate"] = self.error_metrics.summarize("average")

        if stage == sb.Stage.VALID:
            old_lr, new_lr = self.hparams.lr_annealing(epoch)
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)

            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr},
                train_stats=self.train_stats,
                valid_stats=stage_stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"ErrorRate": stage_stats["ErrorRate"]},
                min_keys=["ErrorRate"],
            )


def dataio_prep(hparams):
    """The datasets, their audio and label pipelines, the label encoder."""
    data_folder = hparams["data_folder"]
    train_data = sb.dataio.dataset.DynamicItemDataset.from_csv(
        csv_path=hparams["train_annotation"],
        replacements={"data_root": data_folder},
    )
    valid_data = sb.dataio.dataset.DynamicItemDataset.from_csv(
        csv_path=hparams["valid_annotation"],
        replacements={"data_root": data_folder},
    )
    datasets = [train_data, valid_data]
    label_encoder = sb.dataio.encoder.CategoricalEncoder()
    rate = hparams["sample_rate"]
    chunk = int(rate * hparams["sentence_len"])

    @sb.utils.data_pipeline.takes("wav", "start", "stop", "duration")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav, start, stop, duration):
        if hparams["random_chunk"]:
            start = random.randint(0, int(duration * rate) - chunk)
            stop = start + chunk
        else:
            start, stop = int(start), int(stop)
        # torchaudio.load needs torchcodec in torchaudio 2.9: soundfile
        sig, _ = soundfile.read(wav, start=start, stop=stop, dtype="float32")
        return torch.from_numpy(sig)

    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id", "spk_id_encoded")
    def label_pipeline(spk_id):
        yield spk_id
        yield label_encoder.encode_sequence_torch([spk_id])

    sb.dataio.dataset.add_dynamic_item(datasets, label_pipeline)

    lab_enc_file = os.path.join(hparams["save_folder"], "label_encoder.txt")
    label_encoder.load_or_create(
        path=lab_enc_file, from_didatasets=[train_data], output_key="spk_id"
    )
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "spk_id_encoded"])
    return train_data, valid_data, label_encoder


def prepare_speakers(data_folder, save_folder, n_speakers, n_valid, seed):
    """``train.csv`` / ``dev.csv`` (voxceleb_prepare's columns) from the
    first ``n_speakers`` speaker folders: ``n_valid`` random utterances of
    each speaker to dev, the rest to train."""
    rng = random.Random(seed)
    speakers = sorted(
        d
        for d in os.listdir(data_folder)
        if os.path.isdir(os.path.join(data_folder, d))
    )[:n_speakers]
    rows = {"train": [], "dev": []}
    for spk in speakers:
        folder = os.path.join(data_folder, spk)
        wavs = sorted(f for f in os.listdir(folder) if f.endswith(".wav"))
        rng.shuffle(wavs)
        for i, name in enumerate(wavs):
            frames = soundfile.info(os.path.join(folder, name)).frames
            row = [name[:-4], frames / 16000, f"$data_root/{spk}/{name}"]
            row += [0, frames, spk]
            rows["dev" if i < n_valid else "train"].append(row)
    os.makedirs(save_folder, exist_ok=True)
    for split, split_rows in rows.items():
        path = os.path.join(save_folder, f"{split}.csv")
        with open(path, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["ID", "duration", "wav", "start", "stop", "spk_id"])
            out.writerows(split_rows)


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)

    run_on_main(
        prepare_speakers,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "n_speakers": hparams["n_train_speakers"],
            "n_valid": hparams["valid_per_speaker"],
            "seed": hparams["seed"],
        },
    )

    # Dataset IO prep: creating Dataset objects and proper encodings for phones
    train_data, valid_data, label_encoder = dataio_prep(hparams)

    # Create experiment directory
    sb.core.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    # Brain class initialization
    speaker_brain = SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )

    # Training
    speaker_brain.fit(
        speaker_brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=hparams["dataloader_options"],
        valid_loader_kwargs=hparams["dataloader_options"],
    )
