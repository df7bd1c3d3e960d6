"""The multi-metric loss under DDP equals one process on the whole batch.

W gloo processes on the CPU (W = 2, 4) each wrap a small embedding
network and the paper's loss (its defaults: n-pair, triplet, angular on
all ranks' rows, softmax per rank) in DistributedDataParallel and take
their contiguous slice of one speaker-major P x K batch. Every rank's loss
value, and the parameter gradients after DDP's averaging, must equal one
process's on the whole batch; with ``cross_rank=False`` each rank's value
is one process's on its own slice.
"""

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from dampit.losses import paper_multi_metric_loss

P, K, D_IN, D_EMB = 8, 2, 6, 5


def _batch():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(P * K, D_IN, generator=gen)
    labels = torch.arange(P).repeat_interleave(K)  # speaker-major
    return x, labels


def _model_and_loss(cross_rank=True):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(D_IN, 7), torch.nn.Tanh(), torch.nn.Linear(7, D_EMB)
    )
    loss = paper_multi_metric_loss(D_EMB, P)
    loss.cross_rank = cross_rank
    return model, loss


def _step(model, loss, x, labels):
    value = loss(model(x), labels)
    value.backward()
    grads = [p.grad.clone() for p in [*model.parameters(), *loss.parameters()]]
    return value.detach(), grads


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)  # the parent's thread pool does not survive fork
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    x, labels = _batch()
    rows = slice(rank * P * K // world, (rank + 1) * P * K // world)
    out = {}
    for cross_rank in (True, False):
        model, loss = _model_and_loss(cross_rank)
        out[cross_rank] = _step(
            DistributedDataParallel(model),
            DistributedDataParallel(loss),
            x[rows],
            labels[rows],
        )
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _run(world, tmp_path):
    ctx = mp.start_processes(
        _worker,
        args=(world, str(tmp_path / "init"), str(tmp_path)),
        nprocs=world,
        start_method="fork",
        join=False,
    )
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail(f"the {world}-process gloo run did not finish")
    return [
        torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        for r in range(world)
    ]


@pytest.mark.parametrize("world", [2, 4])
def test_ddp_loss_and_gradients_equal_one_process(world, tmp_path):
    x, labels = _batch()
    ref_value, ref_grads = _step(*_model_and_loss(), x, labels)
    results = _run(world, tmp_path)
    for rank, res in enumerate(results):
        value, grads = res[True]
        torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-5)
        assert len(grads) == len(ref_grads)
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        rows = slice(rank * P * K // world, (rank + 1) * P * K // world)
        own_value, _ = _step(*_model_and_loss(), x[rows], labels[rows])
        torch.testing.assert_close(res[False][0], own_value)
