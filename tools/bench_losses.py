"""Benchmark of the multi-metric loss (issue #3).

Measures, in one run and on the same machine, the forward + backward time
of :class:`dampit.losses.MultiMetricLoss` with the paper's four terms and
weights on a P x K = 64 x 2 batch of 2048-d embeddings (softmax over the
5994 VoxCeleb2 training speakers, as in the original code), and of each
term alone, against one training step of the paper's model on the same
batch (goal: the loss costs at most 2 % of a step).

The training step is ``dampit.lobes.resnet.SEResNet(depth=50)`` (gated
ResNet-50, 2048-d embedding) on spectrogram crops ``[B, 3, 161, 300]``:
forward, the multi-metric loss, backward and an Adam step. When SEResNet
cannot be imported, a plain ResNet-50 written here (no gates, no
torchvision) stands in and the note says so.

On CPU a step of batch 128 takes minutes, so the step is timed on a small
P x 2 batch (4 with ``--quick``, 8 otherwise): its forward and backward
part is scaled linearly to 128 samples and the Adam update, timed apart
and independent of the batch, is added once (the note gives the measured
batch). Linear scaling ignores any better efficiency of larger batches,
so the reference may err high (the ratio low); the full run also times
batch 4 and gives both per-sample costs in the note, to show the trend.
The clock is the process's CPU time with one thread: the development
machine is shared, and CPU time counts this process's work only. On a
GPU both are timed at batch 128 on the wall clock with synchronisation.

Usage::

    python tools/bench_losses.py --quick
"""

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

from dampit.losses import paper_multi_metric_loss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Clock, format_rows, resolve_device  # noqa: E402

P, K, EMB_DIM, N_CLASSES = 64, 2, 2048, 5994
N_FREQ, N_FRAMES = 161, 300


def _median_time(clock, fn, reps, desc=None):
    """Median clock seconds of ``reps`` calls after one warm-up call."""
    fn()
    times = []
    for _ in tqdm(range(reps), desc=desc, leave=False, disable=desc is None):
        t0 = clock.now()
        fn()
        times.append(clock.now() - t0)
    return statistics.median(times)


class _Bottleneck(nn.Module):
    """Standard ResNet bottleneck block (fallback reference only)."""

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        out = planes * 4
        self.body = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.down = None
        if stride != 1 or inplanes != out:
            self.down = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride, bias=False),
                nn.BatchNorm2d(out),
            )

    def forward(self, x):
        """Residual bottleneck."""
        skip = x if self.down is None else self.down(x)
        return torch.relu(self.body(x) + skip)


class PlainResNet50(nn.Module):
    """Plain ResNet-50 with the paper's 2048-d head, used when SEResNet is
    not importable.

    Arguments
    ---------
    emb_dim : int
        Embedding size.

    Example
    -------
    >>> PlainResNet50.__name__
    'PlainResNet50'
    """

    def __init__(self, emb_dim=EMB_DIM):
        super().__init__()
        layers = [
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
        inplanes = 64
        for i, n_blocks in enumerate((3, 4, 6, 3)):
            planes = 64 * 2**i
            for b in range(n_blocks):
                stride = 2 if (b == 0 and i > 0) else 1
                layers.append(_Bottleneck(inplanes, planes, stride))
                inplanes = planes * 4
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(inplanes, inplanes, bias=False),
            nn.BatchNorm1d(inplanes),
            nn.PReLU(),
            nn.Dropout(0.1),
            nn.Linear(inplanes, emb_dim),
        )

    def forward(self, x):
        """``[B, 3, F, T]`` -> ``[B, 1, emb_dim]``.

        Arguments
        ---------
        x : torch.Tensor
            Spectrogram crops.

        Returns
        -------
        torch.Tensor
            Embeddings.
        """
        h = self.trunk(x).mean(dim=(2, 3))
        return self.head(h).unsqueeze(1)


def _paper_model():
    """The paper's model, or the plain fallback; and a description."""
    try:
        from dampit.lobes.resnet import SEResNet
    except Exception as err:  # any import failure: use the fallback
        return PlainResNet50(), f"plain ResNet-50 fallback ({err})"
    return SEResNet(depth=50, emb_dim=EMB_DIM), "SEResNet(depth=50)"


def _labels(p, k, device):
    """Speaker-major P x K labels."""
    return torch.arange(p, device=device).repeat_interleave(k)


def loss_times(device, clock, reps, seed=0):
    """Forward + backward seconds of the paper's loss and of each term.

    Arguments
    ---------
    device : str
        Torch device.
    clock : Clock
        The clock.
    reps : int
        Timed repetitions (median).
    seed : int
        Random seed of the embeddings.

    Returns
    -------
    dict
        ``"total"`` and each term's name -> seconds.

    Example
    -------
    >>> t = loss_times("cpu", Clock("cpu", "wall"), 1)
    >>> sorted(t)
    ['angular', 'npair', 'softmax', 'total', 'triplet']
    """
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(P * K, 1, EMB_DIM, generator=gen).to(device)
    emb.requires_grad_()
    labels = _labels(P, K, device)
    loss = paper_multi_metric_loss(EMB_DIM, N_CLASSES).to(device)

    def fwd_bwd(fn):
        def call():
            emb.grad = None
            loss.zero_grad(set_to_none=True)
            fn(emb, labels).backward()

        return call

    out = {"total": _median_time(clock, fwd_bwd(loss), reps, "loss total")}
    for name, term in loss.terms.items():
        weight = loss.weights[name]
        out[name] = _median_time(
            clock,
            fwd_bwd(lambda e, y, t=term, w=weight: w * t(e, y)),
            reps,
            f"loss {name}",
        )
    return out


def train_step_time(batch, device, clock, reps, seed=0):
    """Seconds of one training step of the paper's model at ``batch``.

    Forward of the model, the paper's multi-metric loss, backward and an
    Adam step over the model and the loss's classifier.

    Arguments
    ---------
    batch : int
        Even batch size (P x 2).
    device : str
        Torch device.
    clock : Clock
        The clock.
    reps : int
        Timed repetitions (median).
    seed : int
        Random seed.

    Returns
    -------
    tuple
        (seconds of the step, seconds of its Adam update alone, model
        description).
    """
    torch.manual_seed(seed)
    model, desc = _paper_model()
    model = model.to(device).train()
    loss = paper_multi_metric_loss(EMB_DIM, N_CLASSES).to(device)
    opt = torch.optim.Adam(
        list(model.parameters()) + list(loss.parameters()), lr=3e-4
    )
    x = torch.randn(batch, 3, N_FREQ, N_FRAMES, device=device)
    labels = _labels(batch // K, K, device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss(model(x), labels).backward()
        t0 = clock.now()
        opt.step()
        return clock.now() - t0

    step()  # warm-up (allocates Adam's state)
    totals, opts = [], []
    for _ in tqdm(range(reps), desc=f"train step b={batch}", leave=False):
        t0 = clock.now()
        opts.append(step())
        totals.append(clock.now() - t0)
    return statistics.median(totals), statistics.median(opts), desc


def run(quick):
    """Run the benchmark and return BENCHMARKS.md rows.

    Arguments
    ---------
    quick : bool
        Fewer repetitions and a smaller measured training batch.

    Returns
    -------
    list of dict
        Rows with ``name``, ``figure``, ``unit``, ``reference``, ``ratio``
        and ``note``.
    """
    return _run(quick)


def _run(quick, device=None, threads=None, step_batch=None):
    """:func:`run` with the command line's overrides."""
    device, on_gpu = resolve_device(device)
    if step_batch is None:
        step_batch = P * K if on_gpu else (4 if quick else 8)
    if step_batch < 4 or step_batch % K:
        raise ValueError(
            f"bench_losses: step batch must be even and >= 4, got {step_batch}"
        )
    if threads is None:
        threads = torch.get_num_threads() if on_gpu else 1
    clock_kind = "wall" if on_gpu else "cpu"
    loss_reps = 5 if quick else 20
    step_reps = 2 if quick else 3
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        clock = Clock(device, clock_kind)
        w0 = time.perf_counter()
        losses = loss_times(device, clock, loss_reps)
        step_s, opt_s, desc = train_step_time(
            step_batch, device, clock, step_reps
        )
        extra = None
        if not quick and not on_gpu and step_batch != 4:
            s2, o2, _ = train_step_time(4, device, clock, step_reps)
            extra = (4, s2, o2)
        wall = time.perf_counter() - w0
    finally:
        torch.set_num_threads(saved)
    # Forward and backward grow with the batch; the Adam update does not.
    ref = (step_s - opt_s) * (P * K) / step_batch + opt_s
    trend = ""
    if extra is not None:
        b2, s2, o2 = extra
        trend = (
            f"; forward+backward per sample: {(s2 - o2) / b2 * 1e3:.0f} ms "
            f"at batch {b2}, {(step_s - opt_s) / step_batch * 1e3:.0f} ms "
            f"at batch {step_batch}"
        )
    clock_name = "process CPU time" if clock_kind == "cpu" else "wall time"
    scaled = (
        ""
        if step_batch == P * K
        else f", measured at batch {step_batch}, forward+backward scaled x"
        f"{P * K // step_batch} to {P * K} (Adam update {opt_s * 1e3:.0f} ms"
        " not scaled)"
    )
    where = (
        f"{device}, {threads} thread(s), {clock_name}; reference: one "
        f"training step of {desc} (forward, this loss, backward, Adam) on "
        f"[{P * K}, 3, {N_FREQ}, {N_FRAMES}]{scaled}, median of {step_reps};"
        f" loss: median of {loss_reps}{trend}; whole run {wall:.0f} s wall"
    )
    rows = [
        {
            "name": "MultiMetricLoss forward+backward vs training step",
            "figure": round(losses["total"] * 1e3, 3),
            "unit": "ms",
            "reference": round(ref * 1e3, 1),
            "ratio": round(losses["total"] / ref, 5),
            "note": (
                f"goal ratio <= 0.02; P={P}, K={K}, D={EMB_DIM}, softmax "
                f"over {N_CLASSES} speakers, paper weights; {where}"
            ),
        }
    ]
    for name in ("npair", "triplet", "angular", "softmax"):
        rows.append(
            {
                "name": f"{name} term forward+backward vs training step",
                "figure": round(losses[name] * 1e3, 3),
                "unit": "ms",
                "reference": round(ref * 1e3, 1),
                "ratio": round(losses[name] / ref, 5),
                "note": f"same batch and reference as the total; {desc}",
            }
        )
    return rows


def main(argv=None):
    """Command line: print the rows as a table.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--device", default=None, help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--step-batch",
        type=int,
        default=None,
        help="batch at which the training step is timed (CPU default 4/8)",
    )
    args = parser.parse_args(argv)
    rows = _run(
        args.quick,
        device=args.device,
        threads=args.threads,
        step_batch=args.step_batch,
    )
    print(format_rows(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
