"""torchrun entry point of tests/integration/test_multinode.py.

Runs recipes/VoxCeleb/train.py (imported by path) unchanged but for a
record of what each global rank trains on: ``seen_rank<R>.jsonl`` in the
output folder gets one line per training batch (epoch and utterance IDs,
appended as it goes, so a killed rank leaves its lines), and
``final_rank<R>.pt`` the rank's embedding-model weights after ``fit``.
"""

import importlib.util
import json
import os
import pathlib

import torch

REPO = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "dampit_voxceleb_train", REPO / "recipes" / "VoxCeleb" / "train.py"
)
train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train)


class RecordingBrain(train.MultiMetricBrain):
    """The recipe's Brain, writing down each rank's batches and weights."""

    def _record(self, name):
        rank = int(os.environ.get("RANK", "0"))
        return os.path.join(self.hparams.output_folder, f"{name}{rank}")

    def fit_batch(self, batch):
        """Record the batch's utterance IDs, then train on it."""
        line = {"epoch": self.hparams.epoch_counter.current, "ids": batch.id}
        with open(self._record("seen_rank") + ".jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        return super().fit_batch(batch)

    def fit(self, *args, **kwargs):
        """Train, then save this rank's embedding-model weights."""
        super().fit(*args, **kwargs)
        model = self.modules.embedding_model
        model = getattr(model, "module", model)  # unwrap DDP
        torch.save(model.state_dict(), self._record("final_rank") + ".pt")


train.MultiMetricBrain = RecordingBrain

if __name__ == "__main__":
    train.run_script(train.main)
