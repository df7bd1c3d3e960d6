"""Benchmark of dampit's gated ResNet-50 (issue #4).

Measures, in one run and on the same machine:

- training-step and inference samples/s of the paper's network (ResNet-50,
  spatial gates after conv2..conv4) on spectrogram crops
  ``[B, 3, 161, 300]``, against the same network without gates; the ratio
  is the gates' cost (goal: ratio >= 0.90, i.e. at most 10 %);
- the achieved GFLOP/s of those steps (convolution and matmul FLOPs
  counted with ``torch.utils.flop_counter.FlopCounterMode``) against this
  machine's float32 matmul GFLOP/s (a large ``torch.mm``);
- the FLOPs the gates add, and the speed of the thin model
  (``base_width=16``) against the full one.

On CPU the clock is the process's CPU time with one thread by default: the
development machine is shared by several jobs, and CPU time counts the
work of this process only, not the time other processes hold the cores.
The wall-clock figures are given in the notes. Batches are small on CPU
(4 with ``--quick``, 16 otherwise); on a GPU they are 32 / 128 (the paper's
P x K = 64 x 2) and the clock is wall time with synchronisation.

Usage::

    python tools/bench_model.py --quick
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from dampit.lobes.resnet import LinearClassifier, SEResNet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Clock, format_rows, resolve_device  # noqa: E402

N_FREQ = 161
N_FRAMES = 300
N_CLASSES = 1000


def _timed(clock, fn):
    """Run ``fn`` once; return (clock seconds, wall seconds)."""
    t0, w0 = clock.now(), time.perf_counter()
    fn()
    t1 = clock.now()
    return t1 - t0, time.perf_counter() - w0


def matmul_gflops(n, reps, clock, device):
    """Float32 ``torch.mm`` GFLOP/s of ``n x n`` matrices (median of reps).

    Arguments
    ---------
    n : int
        Matrix size.
    reps : int
        Timed repetitions after one warm-up.
    clock : Clock
        The clock.
    device : str
        Torch device.

    Returns
    -------
    float
        ``2 n^3 / t`` in GFLOP/s.

    Example
    -------
    >>> clock = Clock("cpu", "wall")
    >>> matmul_gflops(64, 2, clock, "cpu") > 0
    True
    """
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)
    times = [_timed(clock, lambda: torch.mm(a, b))[0] for _ in range(reps)]
    return 2 * n**3 / max(statistics.median(times), 1e-9) / 1e9


def _make(config, device):
    """Model, classifier and Adam optimiser for one configuration."""
    model = SEResNet(**config).to(device)
    clf = LinearClassifier(model.emb_dim, N_CLASSES).to(device)
    params = list(model.parameters()) + list(clf.parameters())
    return model, clf, torch.optim.Adam(params, lr=3e-4)


def _train_step(model, clf, opt, x, y):
    """One optimisation step with a softmax loss."""
    model.train()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(clf(model(x)).squeeze(1), y)
    loss.backward()
    opt.step()


def _infer(model, x):
    """One inference pass."""
    model.eval()
    with torch.inference_mode():
        model(x)


def _count_flops(fn):
    """Run ``fn`` under FlopCounterMode; return its FLOPs."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def compare(
    configs,
    batch,
    reps,
    device="cpu",
    clock_kind="cpu",
    seed=0,
    n_freq=N_FREQ,
    n_frames=N_FRAMES,
):
    """Time training steps and inference of several configurations.

    The configurations are interleaved rep by rep (order reversed every
    other rep) so that a slow phase of the machine hits them all alike.
    The warm-up call of each is run under FlopCounterMode to count FLOPs.

    Arguments
    ---------
    configs : dict
        Name -> keyword arguments of :class:`SEResNet`.
    batch : int
        Batch size.
    reps : int
        Timed repetitions.
    device : str
        Torch device.
    clock_kind : str
        ``"cpu"`` (process CPU time) or ``"wall"``.
    seed : int
        Seed of the models and inputs.
    n_freq, n_frames : int
        Input size ``[batch, 3, n_freq, n_frames]`` (the paper's crop by
        default).

    Returns
    -------
    dict
        Name -> {"train_s", "infer_s", "train_wall_s", "infer_wall_s"
        (medians per step), "train_flops", "infer_flops" (per step)}.

    Example
    -------
    >>> cfg = dict(depth=18, base_width=4, emb_dim=8)
    >>> out = compare({"a": cfg}, 2, 1, clock_kind="wall", n_frames=50)
    >>> sorted(out["a"])[:3]
    ['infer_flops', 'infer_s', 'infer_wall_s']
    """
    clock = Clock(device, clock_kind)
    torch.manual_seed(seed)
    x = torch.randn(batch, 3, n_freq, n_frames, device=device)
    y = torch.randint(0, N_CLASSES, (batch,), device=device)
    built = {name: _make(cfg, device) for name, cfg in configs.items()}
    out = {name: {} for name in configs}
    for phase in ("infer", "train"):
        calls = {}
        for name, (model, clf, opt) in built.items():
            if phase == "train":
                calls[name] = lambda m=model, c=clf, o=opt: _train_step(
                    m, c, o, x, y
                )
            else:
                calls[name] = lambda m=model: _infer(m, x)
            out[name][f"{phase}_flops"] = _count_flops(calls[name])
        times = {name: [] for name in configs}
        walls = {name: [] for name in configs}
        order = list(configs)
        for r in tqdm(range(reps), desc=f"bench_model {phase}", disable=None):
            for name in order if r % 2 == 0 else order[::-1]:
                t, w = _timed(clock, calls[name])
                times[name].append(t)
                walls[name].append(w)
        for name in configs:
            out[name][f"{phase}_s"] = statistics.median(times[name])
            out[name][f"{phase}_wall_s"] = statistics.median(walls[name])
    return out


def run(quick):
    """BENCHMARKS.md rows (``quick``: smaller batch, fewer repetitions)."""
    return _run(quick)


def _run(quick, device=None, threads=None, batch=None, clock_kind=None):
    """:func:`run` with the command line's overrides."""
    device, on_gpu = resolve_device(device)
    if batch is None:
        batch = (32 if quick else 128) if on_gpu else (4 if quick else 16)
    if clock_kind is None:
        clock_kind = "wall" if on_gpu else "cpu"
    if threads is None:
        threads = torch.get_num_threads() if on_gpu else 1
    reps = 4 if quick else 7
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        clock = Clock(device, clock_kind)
        mm = matmul_gflops(2048, 3 if quick else 5, clock, device)
        paper = dict(depth=50, base_width=64, gate="spatial")
        configs = {
            "gated": paper,
            "plain": dict(paper, gate="none"),
            "thin": dict(paper, base_width=16),
        }
        res = compare(configs, batch, reps, device, clock_kind)
    finally:
        torch.set_num_threads(saved_threads)
    return _rows(res, mm, batch, reps, device, threads, clock_kind)


def _sig(value, digits=4):
    """Round to ``digits`` significant digits."""
    if value == 0:
        return 0.0
    return float(f"{value:.{digits}g}")


def _rows(res, mm, batch, reps, device, threads, clock_kind):
    """Turn :func:`compare`'s timings into benchmark rows."""
    g, p, thin = res["gated"], res["plain"], res["thin"]
    clock = "process CPU time" if clock_kind == "cpu" else "wall time"
    where = (
        f"{device}, {threads} thread(s), batch {batch} x [3, {N_FREQ}, "
        f"{N_FRAMES}], median of {reps} interleaved steps, {clock}"
    )

    def sps(r, phase, key="s"):
        return batch / r[f"{phase}_{key}"]

    rows = []
    for phase, what in (("train", "training step"), ("infer", "inference")):
        rows.append(
            {
                "name": f"ResNet-50 {what}, gates vs no gates",
                "figure": _sig(sps(g, phase)),
                "unit": "samples/s",
                "reference": _sig(sps(p, phase)),
                "ratio": _sig(sps(g, phase) / sps(p, phase)),
                "note": (
                    f"goal ratio >= 0.90 (gates cost <= 10%); {where}; "
                    f"wall clock {sps(g, phase, 'wall_s'):.3f} vs "
                    f"{sps(p, phase, 'wall_s'):.3f} samples/s"
                ),
            }
        )
    for phase, what in (("train", "training step"), ("infer", "inference")):
        achieved = g[f"{phase}_flops"] / g[f"{phase}_s"] / 1e9
        rows.append(
            {
                "name": f"ResNet-50 (gated) {what}, achieved GFLOP/s",
                "figure": _sig(achieved),
                "unit": "GFLOP/s",
                "reference": _sig(mm),
                "ratio": _sig(achieved / mm),
                "note": (
                    "conv/matmul FLOPs from FlopCounterMode "
                    f"({g[f'{phase}_flops'] / batch / 1e9:.2f} GFLOP per "
                    f"sample); reference: float32 torch.mm 2048^3 in the "
                    f"same run; {where}"
                ),
            }
        )
    rows.append(
        {
            "name": "ResNet-50 forward FLOPs, gates vs no gates",
            "figure": _sig(g["infer_flops"] / batch / 1e9),
            "unit": "GFLOP/sample",
            "reference": _sig(p["infer_flops"] / batch / 1e9),
            "ratio": _sig(g["infer_flops"] / p["infer_flops"]),
            "note": "counted, not timed: 3 spatial gates with 16 channels",
        }
    )
    rows.append(
        {
            "name": "thin model (base_width 16) training step vs full width",
            "figure": _sig(sps(thin, "train")),
            "unit": "samples/s",
            "reference": _sig(sps(g, "train")),
            "ratio": _sig(sps(thin, "train") / sps(g, "train")),
            "note": (
                "both gated ResNet-50; "
                f"{thin['infer_flops'] / batch / 1e9:.3f} GFLOP per sample "
                f"forward; {where}"
            ),
        }
    )
    return rows


def main(argv=None):
    """Print the rows as a table (``argv``: default ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--device", default=None, help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None)
    args = parser.parse_args(argv)
    rows = _run(
        args.quick,
        device=args.device,
        threads=args.threads,
        batch=args.batch,
        clock_kind=args.clock,
    )
    print(format_rows(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
