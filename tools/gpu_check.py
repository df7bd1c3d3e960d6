"""GPU check of the paper's training and test, in one command.

Builds the paper's network, features and loss from
``recipes/VoxCeleb/hparams/multi_metric.yaml`` (``load_hparams``: the
real configuration, 5,994 speakers), trains it on random audio of real
length (3 s crops, P x K = 64 x 2) for ``--steps`` steps in each mode
(fp32; bf16 autocast; bf16 + channels_last; + torch.compile when the
budget leaves time), and measures samples/s, peak memory and crop
extraction speed. The report (Markdown, printed and written to ``--out``)
projects one VoxCeleb2 epoch (1,092,009 utterances), the YAML's schedule
(``number_of_epochs x batches_per_epoch x P x K`` samples) and the
Vox1-O test (4,874 utterances x 10 crops). Then a short epoch of the
recipe itself (``gpu_check_recipe.py``: ``train.py``'s Brain and training
loader with ``--workers`` loader workers, noise and reverberation, no
validation) in the bf16 + channels_last mode (fp32 on the CPU), reported
as a ratio of that mode's bare step (goal: at least 0.90).

``--cpu`` runs on the CPU with P x K = 2 x 2, 1 s crops and 4-crop
extraction batches, and the recipe epoch on 2 speakers (so that ``--cpu
--steps 1`` takes about half a minute: the test's mode); its numbers
only show that the check runs. Memory is then the process's peak RSS,
not GPU memory.

Usage::

    tools/gpu_check.sh [--cpu] [--steps 200] [--workers N] [--out FILE]
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import speechbrain
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpu_check_recipe import recipe_epoch  # noqa: E402

from dampit.utils.hparams import load_hparams  # noqa: E402

YAML = REPO / "recipes" / "VoxCeleb" / "hparams" / "multi_metric.yaml"
VOX2_UTTS = 1092009
VOX1O_CROPS = 4874 * 10
MODES = ("fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile")
RECIPE_GOAL = 0.90  # recipe epoch / bare step, samples/s


def versions(device):
    """Device and software, as ``(name, value)`` pairs."""
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    out = [("device", str(device))]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out += [("gpu", f"{p.name}, {p.total_memory / 2**30:.0f} GiB")]
        out += [("cuda", torch.version.cuda)]
        out += [("cudnn", str(torch.backends.cudnn.version()))]
        tf32 = (
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
        )
        out += [("fp32 uses TF32 (conv, matmul)", str(tf32))]
    else:
        out += [("cpu", platform.processor() or platform.machine())]
        out += [("torch threads", str(torch.get_num_threads()))]
    out += [("cpu cores usable", str(len(os.sched_getaffinity(0))))]
    out += [
        ("torch", torch.__version__),
        ("speechbrain", speechbrain.__version__),
    ]
    out += [("python", platform.python_version()), ("dampit", rev or "?")]
    return out


def build(tmp, extra):
    """The paper's modules and hyperparameters from multi_metric.yaml with
    the overrides ``extra`` (the batch is built here: P and K stay the
    paper's, for the schedule)."""
    overrides = dict(extra, data_folder=tmp, output_folder=tmp)
    return load_hparams(YAML, overrides)[0]


def peak_memory_mb(device):
    """Peak GPU memory allocated (CUDA) or the process's peak RSS (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/status") as f:
        hwm = [ln for ln in f if ln.startswith("VmHWM:")]
    return int(hwm[0].split()[1]) / 1024 if hwm else float("nan")


def sync(device):
    """Wait for the device's queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Step:
    """One training step of the recipe (features, normalisation, network,
    float32 loss, backward, Adam) in a precision mode."""

    def __init__(self, hp, mode, device):
        self.device, self.hp = device, hp
        self.bf16 = mode.startswith("bf16")
        self.feats = hp["compute_features"].to(device)
        self.norm = hp["normalize"].to(device)
        self.net = hp["embedding_model"].to(device)
        self.loss = hp["compute_cost"].to(device)
        if "channels_last" in mode:
            self.net.to(memory_format=torch.channels_last)
        self.run_net = (
            torch.compile(self.net) if "compile" in mode else self.net
        )
        params = list(self.net.parameters()) + list(self.loss.parameters())
        self.opt = hp["opt_class"](params)

    def embed(self, wavs):
        """Embeddings [B, 1, D] of waveforms [B, N] under the mode."""
        lens = torch.ones(len(wavs), device=self.device)
        with torch.autocast(self.device.type, torch.bfloat16, self.bf16):
            feats = self.norm(self.feats(wavs), lens)
            return self.run_net(feats, lens)

    def train(self, wavs, labels):
        """One optimiser step; returns the loss."""
        self.net.train()
        emb = self.embed(wavs)
        loss = self.loss(emb.float(), labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss

    @torch.no_grad()
    def extract(self, crops):
        """Test-time embeddings of crops [B, N]."""
        self.net.eval()
        return self.embed(crops)


def measure(step, P, K, steps, warmup, ext_batch, device):
    """Samples/s, peak memory and extraction crops/s of one mode."""
    n = int(step.hp["crop_samples"])
    gen = torch.Generator(device="cpu").manual_seed(0)
    wavs = (0.1 * torch.randn(P * K, n, generator=gen)).to(device)
    spk = torch.randperm(int(step.hp["n_speakers"]), generator=gen)[:P]
    labels = spk.repeat_interleave(K).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        loss = step.train(wavs, labels)
    sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        loss = step.train(wavs, labels)
    sync(device)
    t2 = time.perf_counter()
    crops = wavs[:1].expand(ext_batch, n).contiguous()
    step.extract(crops)
    sync(device)
    t3 = time.perf_counter()
    reps = max(1, steps // 10)
    for _ in range(reps):
        step.extract(crops)
    sync(device)
    t4 = time.perf_counter()
    return dict(
        samples_per_s=P * K * steps / (t2 - t1),
        step_ms=1000 * (t2 - t1) / steps,
        warmup_s=t1 - t0,
        peak_mb=peak_memory_mb(device),
        crops_per_s=ext_batch * reps / (t4 - t3),
        loss=float(loss.detach()),
        finite=bool(torch.isfinite(loss)),
    )


def project(res, hp):
    """Projected hours of a VoxCeleb2 epoch and of the YAML's schedule,
    and minutes of the Vox1-O test (crops only)."""
    schedule = int(hp["number_of_epochs"]) * int(hp["batches_per_epoch"])
    schedule *= int(hp["P"]) * int(hp["K"])
    return dict(
        vox2_epoch_h=VOX2_UTTS / res["samples_per_s"] / 3600,
        schedule_h=schedule / res["samples_per_s"] / 3600,
        schedule_samples=schedule,
        vox1o_test_min=VOX1O_CROPS / res["crops_per_s"] / 60,
    )


def render_recipe(r, bare, args):
    """The report's lines on the recipe epoch."""
    lines = ["", "## The recipe's training epoch", ""]
    if "skipped" in r:
        return lines + [f"Not measured: {r['skipped']}."]
    ratio = r["samples_per_s"] / bare["samples_per_s"]
    verdict = "met" if ratio >= RECIPE_GOAL else "NOT met"
    return lines + [
        f"recipes/VoxCeleb/train.py's Brain on its own training loader "
        f"(loader workers: {r['workers']}; {args.crop_s:.0f} s crops of "
        f"{args.P} synthetic speakers, each reverberated and given noise "
        f"with probability 0.6), {r['mode']}, no validation: "
        f"{r['samples_per_s']:.1f} samples/s ({r['step_ms']:.1f} ms a "
        f"batch, of which "
        f"{r['wait_ms']:.1f} ms waiting for the loader; the training "
        f"process's CPU {r['main_cpu_ms']:.1f} ms a batch) over "
        f"{args.steps} batches after {args.warmup}, loss {r['loss']:.3f}. "
        "Against the "
        f"bare {r['mode']} step above ({bare['samples_per_s']:.1f} "
        f"samples/s): **{ratio:.2f}** (goal >= {RECIPE_GOAL:.2f}: "
        f"{verdict}).",
    ]


def render(info, results, recipe, args, batch):
    """The Markdown report."""
    ran = [r for r in results.values() if "skipped" not in r]
    n_params = ran[0]["params"] if ran else 0
    lines = ["# dampit GPU check", ""]
    lines += [f"- {k}: {v}" for k, v in info]
    lines += [
        "",
        f"multi_metric.yaml's network, features and loss; batch {batch} "
        f"(P x K = {args.P} x {args.K}) of random {args.crop_s:.0f} s audio; "
        f"{args.steps} timed steps after {args.warmup} warm-up; extraction "
        f"batches of {args.ext_batch} crops; network parameters: "
        f"{n_params:,}. Projections: one VoxCeleb2 epoch "
        f"({VOX2_UTTS:,} utterances), the YAML's schedule and the Vox1-O "
        f"test ({VOX1O_CROPS:,} crops).",
        "",
        "| mode | samples/s | step ms | peak memory MB | VoxCeleb2 epoch h "
        "| schedule h | extraction crops/s | Vox1-O test min | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        r = results.get(mode)
        if r is None or "skipped" in r:
            why = (r or {}).get("skipped", "not run")
            lines.append(f"| {mode} | | | | | | | | {why} |")
            continue
        lines.append(
            f"| {mode} | {r['samples_per_s']:.1f} | {r['step_ms']:.1f} | "
            f"{r['peak_mb']:.0f} | {r['vox2_epoch_h']:.2f} | "
            f"{r['schedule_h']:.1f} | {r['crops_per_s']:.1f} | "
            f"{r['vox1o_test_min']:.2f} | warm-up {r['warmup_s']:.1f} s, "
            f"loss {r['loss']:.3f} |"
        )
    if args.cpu:
        lines += [
            "",
            "CPU mode: memory is the process's peak RSS; the "
            "numbers only show that the check runs.",
        ]
    if recipe is not None:
        lines += render_recipe(recipe, results[args.recipe_mode], args)
    return "\n".join(lines) + "\n"


def measure_recipe(args, device, tmp):
    """The recipe epoch (``gpu_check_recipe.py``), or why it did not run."""
    folder = os.path.join(tmp, "recipe")
    try:
        r = recipe_epoch(
            YAML,
            folder,
            device,
            args.recipe_mode,
            args.P,
            args.K,
            args.steps,
            args.warmup,
            args.workers,
            args.hparams,
        )
    except Exception as err:  # recorded in the report
        first = str(err).splitlines()[0][:160] if str(err) else ""
        return {"skipped": f"failed: {type(err).__name__}: {first}"}
    print(
        f"[gpu_check] recipe epoch: {r['samples_per_s']:.1f} samples/s",
        file=sys.stderr,
    )
    return r


def main(argv=None):
    """Run the check; 0 when every mode that ran and the recipe epoch
    gave a finite loss."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default="gpu_check.md")
    parser.add_argument("--json", help="also write the figures here")
    cores = len(os.sched_getaffinity(0))
    parser.add_argument(
        "--workers",
        type=int,
        default=max(1, cores - 2),
        help="loader workers of the recipe epoch (default: the usable "
        f"cores less 2, here {max(1, cores - 2)})",
    )
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds of measurement on the GPU (default 420; a mode is "
        "skipped when it would not fit, compile when less than half is "
        "left); none on the CPU",
    )
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: use --cpu")
    device = torch.device("cpu" if args.cpu else "cuda")
    args.P, args.K = (2, 2) if args.cpu else (64, 2)
    args.ext_batch = 4 if args.cpu else 160
    args.warmup = 1 if args.cpu else 10
    args.recipe_mode = "fp32" if args.cpu else "bf16+channels_last"
    # the YAML's 3 s crops on a GPU, 1 s (100 frames) on the CPU
    args.hparams = {"crop_frames": 100} if args.cpu else {}
    if args.workers < 1:
        parser.error(f"--workers={args.workers}: at least 1")
    if args.budget is None:
        args.budget = float("inf") if args.cpu else 420.0
    start, results, recipe = time.perf_counter(), {}, None
    modes = MODES[:3] if args.cpu else MODES
    with tempfile.TemporaryDirectory() as tmp:
        hp = build(tmp, args.hparams)
        args.crop_s = int(hp["crop_samples"]) / int(hp["sample_rate"])
        for mode in modes:
            left = args.budget - (time.perf_counter() - start)
            last = max(
                (r.get("total_s", 0) for r in results.values()), default=0
            )
            if left < 1.5 * last or (
                "compile" in mode and left < args.budget / 2
            ):
                results[mode] = {
                    "skipped": f"skipped: {left:.0f} s of budget left"
                }
                continue
            t0 = time.perf_counter()
            try:
                step = Step(hp, mode, device)
                r = measure(
                    step,
                    args.P,
                    args.K,
                    args.steps,
                    args.warmup,
                    args.ext_batch,
                    device,
                )
            except Exception as err:  # recorded in the report
                results[mode] = {
                    "skipped": f"failed: {type(err).__name__}: "
                    f"{str(err).splitlines()[0][:120]}"
                }
                continue
            r.update(project(r, hp), total_s=time.perf_counter() - t0)
            r["params"] = sum(p.numel() for p in step.net.parameters())
            results[mode] = r
            print(
                f"[gpu_check] {mode}: {r['samples_per_s']:.1f} samples/s",
                file=sys.stderr,
            )
            if mode == args.recipe_mode:
                recipe = measure_recipe(args, device, tmp)
    text = render(versions(device), results, recipe, args, args.P * args.K)
    print(text)
    pathlib.Path(args.out).write_text(text)
    if args.json:
        blob = dict(results=results, batch=args.P * args.K, device=str(device))
        blob["recipe"] = recipe
        pathlib.Path(args.json).write_text(json.dumps(blob, indent=1))
    ran = [r for r in results.values() if "skipped" not in r]
    ran += [r for r in [recipe] if r is not None and "skipped" not in r]
    failed = recipe is None or "failed" in recipe.get("skipped", "")
    return 0 if ran and all(r["finite"] for r in ran) and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
