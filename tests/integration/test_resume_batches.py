"""A run stopped inside an epoch and resumed sees the remaining batches.

The recipe's ``make_train_loader`` (PKSampler in SpeechBrain's
SaveableDataLoader, both checkpoint recoverables) feeds a SpeechBrain
Brain that saves a checkpoint after every batch (``ckpt_interval_steps``)
and never calls ``set_epoch`` itself. Run A trains 3 epochs of 4 batches
uninterrupted; run B stops with an exception at the 6th batch (inside
epoch 2, after the checkpoint of the 5th) and is started again, with new
objects, from its checkpoints: B's batches before the stop and after the
restart must be A's, in order. The same holds under DDP (2 gloo
processes, each rank's own slices).
"""

import importlib.util
import os
import pathlib
import socket
import time

import pytest
import speechbrain as sb
import torch
import torch.multiprocessing as mp
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.distributed import ddp_init_group
from speechbrain.utils.epoch_loop import EpochCounter

from dampit.utils.checkpoints import AtomicCheckpointer

REPO = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "voxceleb_train", REPO / "recipes/VoxCeleb/train.py"
)
recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe)

EPOCHS, BATCHES, STOP_AT = 3, 4, 6


class Stopped(Exception):
    """The stand-in for a kill: raised before a batch is trained."""


class Recorder(sb.Brain):
    """Trains a 1 x 1 linear layer and records each batch's utterances."""

    def compute_forward(self, batch, stage):
        if len(self.seen) + 1 == self.stop_at:
            raise Stopped
        self.seen.append(list(batch.id))
        return self.modules.m(torch.ones(len(batch.id), 1))

    def compute_objectives(self, predictions, batch, stage):
        return predictions.pow(2).mean()


def _train(folder, stop_at=None, run_opts=None):
    """The batches a run in ``folder`` trains (resuming what is there)."""
    data = {f"u{i:02d}": {"spk_id": f"s{i % 6}"} for i in range(24)}
    dataset = DynamicItemDataset(data)
    dataset.set_output_keys(["id", "spk_id"])
    torch.manual_seed(0)
    module = torch.nn.Linear(1, 1)
    counter = EpochCounter(EPOCHS)
    checkpointer = AtomicCheckpointer(
        folder, recoverables={"m": module, "counter": counter}
    )
    brain = Recorder(
        modules={"m": module},
        opt_class=lambda params: torch.optim.SGD(params, lr=0.1),
        run_opts={
            "device": "cpu",
            "noprogressbar": True,
            "ckpt_interval_steps": 1,
            **(run_opts or {}),
        },
        checkpointer=checkpointer,
    )
    brain.seen, brain.stop_at = [], stop_at
    hparams = dict(
        P=2,
        K=2,
        seed=4,
        batches_per_epoch=BATCHES,
        num_workers=0,
        checkpointer=checkpointer,
    )
    loader, _ = recipe.make_train_loader(hparams, dataset)
    try:
        brain.fit(counter, loader)
    except Stopped:
        pass
    return brain.seen


def _stop_and_resume(tmp_path, run_opts=None):
    whole = _train(tmp_path / "a", run_opts=run_opts)
    before = _train(tmp_path / "b", stop_at=STOP_AT, run_opts=run_opts)
    after = _train(tmp_path / "b", run_opts=run_opts)
    return whole, before, after


def test_resume_inside_an_epoch_trains_the_remaining_batches(tmp_path):
    whole, before, after = _stop_and_resume(tmp_path)
    assert len(whole) == EPOCHS * BATCHES
    assert len(set(map(tuple, whole))) > BATCHES  # the epochs differ
    assert len(before) == STOP_AT - 1
    assert before + after == whole


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir):
    torch.set_num_threads(1)  # the parent's thread pool does not survive fork
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    ddp_init_group({"distributed_backend": "gloo"})
    runs = _stop_and_resume(
        pathlib.Path(out_dir), run_opts={"distributed_backend": "gloo"}
    )
    torch.save(runs, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_resume_inside_an_epoch_under_ddp(tmp_path):
    ctx = mp.start_processes(
        _ddp_worker,
        args=(2, _free_port(), str(tmp_path)),
        nprocs=2,
        start_method="fork",
        join=False,
    )
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the 2-process gloo run did not finish in 180 s")
    ranks = [
        torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        for r in range(2)
    ]
    for whole, before, after in ranks:
        assert len(whole) == EPOCHS * BATCHES
        assert before + after == whole
        assert all(len(batch) == 2 for batch in whole)  # 1 speaker x K
    for a, b in zip(ranks[0][0], ranks[1][0]):
        assert not set(a) & set(b)  # each rank its own slice
