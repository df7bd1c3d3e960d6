"""Benchmark of embedding extraction against the plain network forward.

Embedding extraction is the recipe's chain (``MultiMetricBrain.
compute_embeddings``): waveforms -> ``Spectrogram`` -> ``CropNormalization``
-> ``SEResNet``, in eval mode under ``torch.inference_mode``. The reference
is the network alone on features computed beforehand, so a ratio near 1
means the features, the normalisation and the batching cost little next
to the network.

Rows (``run(quick)``; throughput in crops/s, ``ratio > 1`` means faster
than the reference):

1. ``extract_batch_vs_forward``: the chain on a batch of 3 s waveforms
   against the network on that batch's features; ratio = chain / network.
2. ``embed_utterances_vs_forward``: ``dampit.inference.extract.
   embed_utterances`` on real dspspeech files (read, 10 evenly spaced 3 s
   crops each, padded batches, the chain) against the network on as many
   crops at the same batch size; ratio = extraction / network.
3. GPU-ready switches of the recipe, each against the plain float32
   forward of the same batch (the notes give how far its embeddings are):
   ``channels_last_vs_default``, ``bf16_autocast_vs_fp32`` (and
   ``fp16_autocast_vs_fp32`` on CUDA) and, in the full mode or on a GPU,
   ``torch_compile_vs_eager`` (compile time in the note).

Model: the paper's SEResNet (ResNet-50, base width 64, 2048-d) in the full
mode; the thin ResNet-50 (base width 16, 512-d) with ``--quick``. On CPU
the clock is the process's CPU time with one thread (the development
machine is shared; CPU time counts this process's work only) and the
variants are interleaved rep by rep; on a GPU it is the wall clock with
synchronisation.

Usage: ``python tools/bench_inference.py [--quick] [--device cuda]
[--threads 1] [--data ../shared/data]``.
"""

import argparse
import copy
import csv
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from tqdm import tqdm

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dampit.dataio.audio import load_audio  # noqa: E402
from dampit.dataio.crops import repeat_to_length  # noqa: E402
from dampit.inference.extract import embed_utterances  # noqa: E402
from dampit.lobes.features import CropNormalization, Spectrogram  # noqa: E402
from dampit.lobes.resnet import SEResNet  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Clock, format_rows, resolve_device  # noqa: E402

SR = 16000
HOP = 160
CROP_FRAMES = 300
CROP = (CROP_FRAMES - 1) * HOP  # the recipe's crop_samples
N_CROPS = 10


class Extractor(torch.nn.Module):
    """The recipe's embedding chain: features, normalisation, network.

    Arguments
    ---------
    model : torch.nn.Module
        The embedding network (``[B, T, F] -> [B, 1, D]``).

    Example
    -------
    >>> net = SEResNet(depth=18, base_width=4, emb_dim=8).eval()
    >>> Extractor(net)(torch.randn(2, 3200), torch.ones(2)).shape
    torch.Size([2, 1, 8])
    """

    def __init__(self, model):
        super().__init__()
        self.features = Spectrogram(sample_rate=SR, hop_length=HOP)
        self.norm = CropNormalization("scalar")
        self.model = model

    def forward(self, wavs, lens):
        """Waveforms ``[B, N]`` and relative lengths -> ``[B, 1, D]``."""
        feats = self.norm(self.features(wavs), lens)
        return self.model(feats, lens)


def interleaved(calls, reps, clock, desc=None):
    """Median clock seconds of each call, interleaved rep by rep.

    One untimed warm-up call each; the order is reversed every other rep
    so that a slow phase of a shared machine hits all calls alike.

    Arguments
    ---------
    calls : dict
        Name -> callable without arguments.
    reps : int
        Timed repetitions.
    clock : Clock
        The clock.
    desc : str, optional
        tqdm description.

    Returns
    -------
    dict
        Name -> median seconds.

    Example
    -------
    >>> t = interleaved({"a": lambda: None}, 2, Clock("cpu", "wall"))
    >>> sorted(t)
    ['a']
    """
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    order = list(calls)
    for r in tqdm(range(reps), desc=desc, leave=False, disable=desc is None):
        for name in order if r % 2 == 0 else order[::-1]:
            t0 = clock.now()
            calls[name]()
            times[name].append(clock.now() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def data_root(data=None):
    """The shared data folder, or None when dspspeech is missing.

    Arguments
    ---------
    data : str or None
        Explicit folder (default: ``$DAMPIT_DATA`` or ../shared/data).

    Returns
    -------
    pathlib.Path or None
        The folder holding dspspeech/.
    """
    root = data or os.environ.get("DAMPIT_DATA") or REPO.parent / "shared/data"
    root = pathlib.Path(root)
    if (root / "dspspeech" / "manifest.csv").is_file():
        return root
    return None


def _audio_files(root, n, tmp):
    """``n`` real dspspeech files, or random ones written to ``tmp``."""
    if root is not None:
        with open(root / "dspspeech" / "manifest.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        step = max(1, len(rows) // n)
        paths = [str(root / "dspspeech" / r["path"]) for r in rows[::step]]
        return paths[:n], "real dspspeech files"
    import soundfile as sf

    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        path = os.path.join(tmp, f"utt{k}.wav")
        sf.write(path, 0.1 * rng.standard_normal(2 * SR), SR)
        paths.append(path)
    return paths, "random 2 s files (dspspeech not found)"


def _crop_batch(paths, batch):
    """``batch`` 3 s waveforms from the files (repeated to length)."""
    wavs = [load_audio(paths[i % len(paths)]) for i in range(batch)]
    return torch.stack([repeat_to_length(w, CROP) for w in wavs])


def _min_cosine(a, b):
    """Smallest cosine similarity between matching rows of a and b."""
    a = a.float().reshape(a.shape[0], -1)
    b = b.float().reshape(b.shape[0], -1)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).min())


def _max_rel(a, b):
    """Largest absolute difference relative to the largest magnitude."""
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def run(quick):
    """Run the benchmark and return BENCHMARKS.md rows.

    Arguments
    ---------
    quick : bool
        Thin model, fewer files and repetitions, no torch.compile on CPU.

    Returns
    -------
    list of dict
        Rows with ``name``, ``figure``, ``unit``, ``reference``, ``ratio``
        and ``note``.
    """
    return _run(quick)


def _run(quick, device=None, threads=None, data=None, compile_=None):
    """:func:`run` with the command line's overrides."""
    device, on_gpu = resolve_device(device)
    if threads is None:
        threads = torch.get_num_threads() if on_gpu else 1
    if compile_ is None:
        compile_ = on_gpu or not quick
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _measure(quick, device, on_gpu, threads, data, compile_)
    finally:
        torch.set_num_threads(saved)


def _measure(quick, device, on_gpu, threads, data, compile_):
    """The measurements of :func:`run`."""
    if quick:
        cfg = dict(depth=50, base_width=16, emb_dim=512)
        desc = "thin ResNet-50 (base_width 16, 512-d)"
    else:
        cfg = dict(depth=50, base_width=64, emb_dim=2048)
        desc = "paper ResNet-50 (base_width 64, 2048-d)"
    if on_gpu:
        batch, utt_batch, n_files, reps = 64, 8, 64, 10
    else:
        batch = 4 if quick else 8
        utt_batch, n_files = 1, (2 if quick else 4)
        reps = 3 if quick else 5
    clock_kind = "wall" if on_gpu else "cpu"
    clock = Clock(device, clock_kind)
    clock_name = "wall time" if on_gpu else "process CPU time"
    torch.manual_seed(0)
    model = SEResNet(**cfg).to(device).eval()
    chain = Extractor(model).to(device).eval()
    root = data_root(data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        paths, source = _audio_files(root, max(n_files, batch), tmp)
        wavs = _crop_batch(paths, batch).to(device)
        lens = torch.ones(batch, device=device)
        feats = chain.norm(chain.features(wavs), lens)
        where = (
            f"{desc}, {device}, {threads} thread(s), {clock_name}, median "
            f"of {reps} interleaved reps"
        )

        # 1. The chain against the network on the batch's features.
        t = interleaved(
            {
                "chain": lambda: chain(wavs, lens),
                "net": lambda: model(feats, lens),
            },
            reps,
            clock,
            "inference chain",
        )
        rows.append(
            _row(
                "extract_batch_vs_forward",
                batch / t["chain"],
                batch / t["net"],
                f"waveforms [{batch}, {CROP}] ({source}) -> Spectrogram -> "
                f"CropNormalization -> SEResNet vs SEResNet on the "
                f"precomputed features [{batch}, {CROP_FRAMES}, 161]; "
                f"{where}; ratio = chain / network",
            )
        )

        # 2. embed_utterances over files against the network alone.
        files = paths[:n_files]
        per_call = utt_batch * N_CROPS
        crop_feats = feats[:1].expand(per_call, -1, -1).contiguous()
        crop_lens = torch.ones(per_call, device=device)

        def extract():
            embed_utterances(
                chain,
                files,
                n_crops=N_CROPS,
                crop_samples=CROP,
                batch_size=utt_batch,
                device=device,
                full=False,
                progress=False,
            )

        def forward_same():
            for _ in range(0, len(files), utt_batch):
                model(crop_feats, crop_lens)

        r2 = 2 if quick else 3
        t = interleaved(
            {"extract": extract, "net": forward_same}, r2, clock, "files"
        )
        n = len(files) * N_CROPS
        rows.append(
            _row(
                "embed_utterances_vs_forward",
                n / t["extract"],
                n / t["net"],
                f"embed_utterances on {len(files)} {source} ({N_CROPS} "
                f"crops of 3 s each, {utt_batch} file(s) = {per_call} crops "
                f"per batch: read, crop, pad, features, normalisation, "
                f"network) vs the network on {per_call}-crop feature "
                f"batches; {desc}, {device}, {threads} thread(s), "
                f"{clock_name}, median of {r2}; ratio = extraction / "
                "network",
            )
        )

        # 3. The GPU-ready switches, each against float32 eager.
        ref = model(feats, lens)
        rows += _switch_rows(model, feats, lens, ref, reps, clock, device)
        if compile_:
            rows.append(
                _compile_row(model, feats, lens, ref, reps, clock, device)
            )
    for r in rows[2:]:
        r["note"] += f"; {where}"
    return rows


def _row(name, figure, reference, note, unit="crops/s"):
    """One benchmark row; ratio = figure / reference."""
    return {
        "name": name,
        "figure": round(figure, 3),
        "unit": unit,
        "reference": round(reference, 3),
        "ratio": round(figure / reference, 4),
        "note": note,
    }


def _switch_rows(model, feats, lens, ref, reps, clock, device):
    """channels_last and autocast forwards against float32."""
    batch = feats.shape[0]
    dev_type = torch.device(device).type
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def autocast(dtype):
        def call():
            with torch.autocast(dev_type, dtype=dtype):
                return model(feats, lens)

        return call

    calls = {
        "fp32": lambda: model(feats, lens),
        "channels_last": lambda: cl_model(feats, lens),
        "bf16": autocast(torch.bfloat16),
    }
    if dev_type == "cuda":
        calls["fp16"] = autocast(torch.float16)
    t = interleaved(calls, reps, clock, "switches")
    cl_out = cl_model(feats, lens)
    rows = [
        _row(
            "channels_last_vs_default",
            batch / t["channels_last"],
            batch / t["fp32"],
            f"network forward, weights and activations in channels_last "
            f"vs the default layout, batch [{batch}, {CROP_FRAMES}, 161]; "
            f"max |diff| / max |emb| {_max_rel(cl_out, ref):.1e}; ratio = "
            "channels_last / default",
        )
    ]
    for key in ("bf16", "fp16"):
        if key not in calls:
            continue
        out = calls[key]()
        rows.append(
            _row(
                f"{key}_autocast_vs_fp32",
                batch / t[key],
                batch / t["fp32"],
                f"network forward under torch.autocast({dev_type}, {key}) "
                f"vs float32; min cosine to the float32 embeddings "
                f"{_min_cosine(out, ref):.5f}; ratio = {key} / fp32",
            )
        )
    return rows


def _compile_row(model, feats, lens, ref, reps, clock, device):
    """torch.compile (inductor) forward against eager."""
    batch = feats.shape[0]
    torch._dynamo.reset()
    t0 = time.perf_counter()
    compiled = torch.compile(model)
    out = compiled(feats, lens)
    t_compile = time.perf_counter() - t0
    t = interleaved(
        {
            "eager": lambda: model(feats, lens),
            "compiled": lambda: compiled(feats, lens),
        },
        reps,
        clock,
        "compile",
    )
    return _row(
        "torch_compile_vs_eager",
        batch / t["compiled"],
        batch / t["eager"],
        f"network forward after torch.compile (inductor, first call "
        f"{t_compile:.0f} s wall incl. compilation) vs eager; max |diff| / "
        f"max |emb| {_max_rel(out, ref):.1e}; ratio = compiled / eager",
    )


def main(argv=None):
    """Command line: print the rows.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    list of dict
        The rows.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--device", default=None, help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", default=None, help="shared data folder")
    parser.add_argument(
        "--compile",
        choices=("yes", "no"),
        default=None,
        help="time torch.compile (default: full mode or GPU)",
    )
    args = parser.parse_args(argv)
    compile_ = None if args.compile is None else args.compile == "yes"
    rows = _run(
        args.quick,
        device=args.device,
        threads=args.threads,
        data=args.data,
        compile_=compile_,
    )
    print(format_rows(rows))
    return rows


if __name__ == "__main__":
    main()
