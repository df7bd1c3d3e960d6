"""Training step of the paper's model: gates and loss.

Samples/s of a training step and of inference of the gated ResNet-50 against
the same network without gates (goal ratio >= 0.90), the FLOPs the gates
add, the thin model, and the share of a training step the paper's multi-
metric loss costs (loss time / step time; goal <= 0.02, lower is better).

The network is ResNet-50 with spatial gates after conv2..conv4 on
spectrogram crops ``[B, 3, 161, 300]``, trained with a softmax head; the
training step is timed here once and is the reference of the loss rows:
forward + backward of :func:`dampit.losses.paper_multi_metric_loss` (four
terms, paper weights) on a P x K = 64 x 2 batch of 2048-d embeddings,
softmax over 5994 speakers, against the gated step's time per sample x
128. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``.
On CPU the clock is the process's CPU time with one thread (a shared
machine) and batches are 16; on a GPU 128, wall time. The quick sizes
(the test's) only show that it runs: 1 s crops ``[B, 3, 161, 100]``,
batch 2 on CPU (32 on a GPU), one repeat.
"""

import statistics

import torch
import torch.nn.functional as F
from benchlib import Clock, median_time, row
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from dampit.lobes.resnet import LinearClassifier, SEResNet
from dampit.losses import paper_multi_metric_loss

N_FREQ = 161
N_FRAMES = 300
N_CLASSES = 1000
P, K, EMB_DIM, N_SPEAKERS = 64, 2, 2048, 5994
KEY_ROWS = (
    "ResNet-50 training step, gates vs no gates",
    "ResNet-50 inference, gates vs no gates",
    "MultiMetricLoss forward+backward vs training step",
)


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
        Name -> {"train_s", "infer_s" (medians per step), "train_flops",
        "infer_flops" (per step)}.

    Example
    -------
    >>> cfg = dict(depth=18, base_width=4, emb_dim=8)
    >>> out = compare({"a": cfg}, 2, 1, clock_kind="wall", n_frames=50)
    >>> sorted(out["a"])
    ['infer_flops', 'infer_s', 'train_flops', 'train_s']
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
        for r in tqdm(range(reps), desc=f"bench_model {phase}", disable=None):
            order = list(configs)
            if r % 2 == 1:  # alternate the order: no config always goes first
                order.reverse()
            for name in order:
                t0 = clock.now()
                calls[name]()
                times[name].append(clock.now() - t0)
        for name in configs:
            out[name][f"{phase}_s"] = statistics.median(times[name])
    return out


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
    >>> sorted(loss_times("cpu", Clock("cpu", "wall"), 1))
    ['angular', 'npair', 'softmax', 'total', 'triplet']
    """
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(P * K, 1, EMB_DIM, generator=gen).to(device)
    emb.requires_grad_()
    labels = torch.arange(P, device=device).repeat_interleave(K)
    loss = paper_multi_metric_loss(EMB_DIM, N_SPEAKERS).to(device)

    def fwd_bwd(fn):
        def call():
            emb.grad = None
            loss.zero_grad(set_to_none=True)
            fn(emb, labels).backward()

        return call

    out = {"total": median_time(clock, fwd_bwd(loss), reps)}
    for name, term in loss.terms.items():
        weight = loss.weights[name]
        out[name] = median_time(
            clock, fwd_bwd(lambda e, y, t=term, w=weight: w * t(e, y)), reps
        )
    return out


def run(mode):
    """BENCHMARKS.md rows (``"quick"``: shorter crops, smaller batch,
    fewer repeats)."""
    quick = mode == "quick"
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    if on_gpu:
        batch = 32 if quick else 128
    else:
        batch = 2 if quick else 16
    clock_kind = "wall" if on_gpu else "cpu"
    threads = torch.get_num_threads() if on_gpu else 1
    reps = 1 if quick else 7
    n_frames = 100 if quick else N_FRAMES
    torch.set_num_threads(threads)
    clock = Clock(device, clock_kind)
    paper = dict(depth=50, base_width=64, gate="spatial")
    configs = {
        "gated": paper,
        "plain": dict(paper, gate="none"),
        "thin": dict(paper, base_width=16),
    }
    res = compare(configs, batch, reps, device, clock_kind, n_frames=n_frames)
    rows = _rows(res, batch, reps, device, threads, clock_kind, n_frames)
    losses = loss_times(device, clock, 1 if quick else 20)
    step = res["gated"]["train_s"] / batch * P * K
    where = (
        f"P={P}, K={K}, D={EMB_DIM}, softmax over {N_SPEAKERS} speakers, "
        f"paper weights; reference: the gated training step above per "
        f"sample x {P * K}"
    )
    for name in ("total", "npair", "triplet", "angular", "softmax"):
        what = "MultiMetricLoss" if name == "total" else f"{name} term"
        rows.append(
            row(
                f"{what} forward+backward vs training step",
                losses[name] * 1e3,
                "ms",
                step * 1e3,
                f"goal ratio <= 0.02; {where}",
            )
        )
    return rows


def _rows(res, batch, reps, device, threads, clock_kind, n_frames=N_FRAMES):
    """Turn :func:`compare`'s timings into benchmark rows."""
    g, p, thin = res["gated"], res["plain"], res["thin"]
    clock = "process CPU time" if clock_kind == "cpu" else "wall time"
    where = (
        f"{device}, {threads} thread(s), batch {batch} x [3, {N_FREQ}, "
        f"{n_frames}], median of {reps} interleaved steps, {clock}"
    )

    def sps(r, phase):
        return batch / r[f"{phase}_s"]

    rows = []
    for phase, what in (("train", "training step"), ("infer", "inference")):
        rows.append(
            row(
                f"ResNet-50 {what}, gates vs no gates",
                sps(g, phase),
                "samples/s",
                sps(p, phase),
                f"goal ratio >= 0.90 (gates cost <= 10%); {where}",
            )
        )
    rows.append(
        row(
            "ResNet-50 forward FLOPs, gates vs no gates",
            g["infer_flops"] / batch / 1e9,
            "GFLOP/sample",
            p["infer_flops"] / batch / 1e9,
            "counted, not timed: 3 spatial gates with 16 channels",
        )
    )
    rows.append(
        row(
            "thin model (base_width 16) training step vs full width",
            sps(thin, "train"),
            "samples/s",
            sps(g, "train"),
            f"both gated ResNet-50; {thin['infer_flops'] / batch / 1e9:.3f}"
            f" GFLOP per sample forward; {where}",
        )
    )
    return rows
