"""The multi-metric loss under DDP equals one process on the whole batch.

W gloo processes on the CPU (W = 2, 4) each wrap a small embedding
network and the paper's loss (its defaults: n-pair, triplet, angular on
all ranks' rows, softmax per rank) in DistributedDataParallel and take
their contiguous slice of one speaker-major P x K batch. Every rank's loss
value, and the parameter gradients after DDP's averaging, must equal one
process's on the whole batch; with ``cross_rank=False`` each rank's value
is one process's on its own slice. With augmented copies (each rank's
slice, then a copy of it, the copies' sources given) every rank's value
is one process's on all ranks' rows with those sources. Training over
PKSampler's batches (2 processes, each its slices) ends with one
process's weights.
"""

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from dampit.dataio.sampler import PKSampler
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


def _step(model, loss, x, labels, sources=None):
    value = loss(model(x), labels, sources=sources)
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
    model, loss = _model_and_loss()
    out["copies"] = _step(
        DistributedDataParallel(model),
        DistributedDataParallel(loss),
        *_with_copies(x[rows], labels[rows]),
    )
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _with_copies(x, labels):
    """The rows, then a perturbed copy of each; their sources."""
    copy = x + 2.0 * torch.cos(torch.arange(x.numel())).reshape(x.shape)
    sources = torch.arange(len(x)).repeat(2)
    return torch.cat([x, copy]), labels.repeat(2), sources


def _train(model, loss):
    """3 SGD steps on PKSampler's batches (this rank's slices under DDP)
    of 8 speakers x 4 utterances; the weights after them."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(32, D_IN, generator=gen)
    labels = torch.arange(8).repeat_interleave(4)
    sampler = PKSampler(labels, P=4, K=2, seed=1, batches_per_epoch=3)
    opt = torch.optim.SGD([*model.parameters(), *loss.parameters()], lr=0.1)
    for batch in sampler:
        opt.zero_grad()
        loss(model(x[batch]), labels[batch]).backward()
        opt.step()
    return [p.detach().clone() for p in opt.param_groups[0]["params"]]


def _train_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)  # the parent's thread pool does not survive fork
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    model, loss = _model_and_loss()
    weights = _train(
        DistributedDataParallel(model), DistributedDataParallel(loss)
    )
    torch.save(weights, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _run(world, tmp_path, worker=_worker):
    ctx = mp.start_processes(
        worker,
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
    # copies: one process on all ranks' rows in rank order, the sources
    # of each rank made unique
    xs, ls, ss = [], [], []
    for r in range(world):
        rows = slice(r * P * K // world, (r + 1) * P * K // world)
        x_r, labels_r, sources_r = _with_copies(x[rows], labels[rows])
        xs.append(x_r)
        ls.append(labels_r)
        ss.append(sources_r + r * P * K)
    ref_copies, _ = _step(
        *_model_and_loss(), torch.cat(xs), torch.cat(ls), torch.cat(ss)
    )
    counted, _ = _step(*_model_and_loss(), torch.cat(xs), torch.cat(ls))
    assert abs(counted - ref_copies) > 1e-3  # the sources matter here
    for res in results:
        torch.testing.assert_close(
            res["copies"][0], ref_copies, rtol=1e-5, atol=1e-5
        )


def test_ddp_training_ends_with_one_process_weights(tmp_path):
    want = _train(*_model_and_loss())
    for weights in _run(2, tmp_path, _train_worker):
        assert len(weights) == len(want)
        for got, ref in zip(weights, want):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
