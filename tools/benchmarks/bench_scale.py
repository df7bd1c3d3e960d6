"""Scale: toward VoxCeleb size.

How costs grow toward VoxCeleb: preparation at two tree sizes against
``soundfile.info`` of the same files (projected to 1.1 M files), PKSampler
at VoxCeleb2 dev's size, the recipe's training loader (0, 1, 2 workers)
against bare soundfile crop reads, FolderAugment, file opens per sample,
and the verification loader against a serial loop. Ratio: figure /
reference, as each row's note says; each note states its goal.

Inputs (``scale_inputs.py``): a VoxCeleb-layout tree of symlinks to 8 s
real-format wavs made from ../shared/data, synthetic manifests, labels
and trial lists. Every stage (``scale_stages.py``) runs in its own
interpreter (``benchlib.isolated``), so that each memory figure is that
stage's alone. Sizes: quick (the test), default (a few minutes on 2
cores), full (10^5 files, 4,874 verification files).
"""

import os
import shutil
import tempfile

import numpy as np
import scale_inputs as inputs
from benchlib import DATA, HERE, isolated, row

STAGES = HERE / "scale_stages.py"
VOX2 = 1092009  # VoxCeleb2 dev utterances
H100 = 3000  # training crops/s one H100 consumes
KEY_ROWS = (
    "crops_per_s_per_core_x16",
    "train_file_opens_per_sample",
    "train_main_cpu_per_batch_augmented",
)
SIZES = {
    "quick": dict(
        prep=[300, 600],
        sampler=(110000, 600),
        P=8,
        batches=3,
        aug=2,
        vload=32,
    ),
    "default": dict(
        prep=[1000, 10000],
        sampler=(VOX2, 5994),
        P=64,
        batches=6,
        aug=3,
        vload=400,
    ),
    "full": dict(
        prep=[10000, 100000],
        sampler=(VOX2, 5994),
        P=64,
        batches=10,
        aug=5,
        vload=4874,
    ),
}


def stage(name, **kwargs):
    """One stage of ``scale_stages.py`` in a fresh interpreter."""
    return isolated(STAGES, name, **kwargs)


def fit(xs, ys, x):
    """Least-squares line through ``(xs, ys)`` at ``x``, and its slope."""
    slope, icpt = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(icpt + slope * x), float(slope)


def verdict(ok):
    """'met' or 'NOT met'."""
    return "met" if ok else "NOT met"


def bench_prep(tmp, z, sources):
    """Preparation at two sizes against header reads; 1.1 M projection."""
    rows, raw = [], []
    for n in z["prep"]:
        root = os.path.join(tmp, f"tree{n}")
        vox1, vox2, trials, files = inputs.make_voxceleb_tree(root, n, sources)
        p = stage(
            "prep",
            save=os.path.join(tmp, f"prep{n}"),
            vox1=vox1,
            vox2=vox2,
            trials=trials,
        )
        h = stage("headers", files=files)
        raw.append(dict(n=n, prep=p, headers=h))
        rows.append(
            row(
                f"prepare_voxceleb_cpu_N={n}",
                p["cpu_s"],
                "s",
                h["cpu_s"],
                f"figure / soundfile.info of the same files (CPU s; goal "
                f"<= 1.5: {verdict(p['cpu_s'] <= 1.5 * h['cpu_s'])}); wall "
                f"{p['wall_s']:.1f} s; bare decode (soundfile.read) "
                f"{h['decode_cpu_s']:.1f} s in float32, "
                f"{h['decode_int16_cpu_s']:.1f} s in int16 (a full decode; "
                "check_audio stops at the first block with sound) over "
                f"{h['audio_hours']:.1f} h",
            )
        )
        rows.append(
            row(
                f"prepare_voxceleb_peak_rss_N={n}",
                p["peak_rss_mb"],
                "MB",
                h["peak_rss_mb"],
                "VmHWM of the preparation process / of the "
                "header-read process (both include ~"
                f"{p['base_rss_mb']:.0f} MB of interpreter and imports)",
            )
        )
        shutil.rmtree(root)
    ns = [r["n"] for r in raw]
    t, _ = fit(ns, [r["prep"]["cpu_s"] for r in raw], 1.1e6)
    t_ref, _ = fit(ns, [r["headers"]["cpu_s"] for r in raw], 1.1e6)
    per = [r["prep"]["cpu_s"] / r["n"] for r in raw]
    rows.append(
        row(
            "prepare_voxceleb_projected_cpu_1.1M",
            t,
            "s",
            t_ref,
            f"line through N={ns} projected to 1.1 M files / the same for the "
            f"header reads; per-file cost at the larger N / the smaller: "
            f"{per[1] / per[0]:.2f} (1: linear); 8 s files in page cache: "
            "from a disk, preparation also reads the whole corpus",
        )
    )
    m, slope = fit(ns, [r["prep"]["peak_rss_mb"] for r in raw], 1.1e6)
    rows.append(
        row(
            "prepare_voxceleb_projected_peak_rss_1.1M",
            m,
            "MB",
            2048.0,
            f"line through the peaks ({slope * 1e3:.2f} MB per 1000 files) "
            f"at 1.1 M files / the goal, 2 GB ({verdict(m <= 2048)})",
        )
    )
    return rows, raw


def bench_sampler(z):
    """PKSampler at VoxCeleb2 dev's size."""
    n, n_spk = z["sampler"]
    s = stage("sampler", n_utts=n, n_spk=n_spk)
    total = s["build_cpu_s"] + s["epoch_cpu_s"]
    mem = s["peak_rss_mb"] - s["base_rss_mb"]
    return [
        row(
            f"pksampler_build_and_epoch_U={n}",
            total,
            "s",
            s["ref_cpu_s"],
            f"construction {s['build_cpu_s']:.2f} s + one epoch of "
            f"{s['n_batches']} P x K = 64 x 2 batches over {n_spk} speakers "
            f"{s['epoch_cpu_s']:.2f} s / a plain shuffle cut into batches "
            f"(CPU s; goal < 10 s: {verdict(total < 10)})",
        ),
        row(
            f"pksampler_peak_memory_U={n}",
            mem,
            "MB",
            float("nan"),
            f"VmHWM increase over the {s['base_rss_mb']:.0f} MB after imports "
            f"(reference not run: absolute goal < 1 GB: {verdict(mem < 1024)})",
        ),
    ], s


def bench_loader(tmp, z, sources):
    """Training loader crops/s, augmentation, file opens."""
    root = os.path.join(tmp, "loadtree")
    files = inputs.make_voxceleb_tree(root, 2000, sources, 20)[3]  # 96 spk
    csv = os.path.join(tmp, "train.csv")
    inputs.write_manifest(csv, files, 8 * inputs.SR)
    rows, raw = [], {}
    for w in (0, 1, 2):
        r = raw[w] = stage(
            "loader",
            memory=False,  # no sampler thread in the CPU time
            manifest=csv,
            root=root,
            save=os.path.join(tmp, f"save{w}"),
            workers=w,
            n_batches=z["batches"],
            P=z["P"],
        )
        rows.append(
            row(
                f"train_loader_crops_per_s_workers={w}",
                r["crops_per_s"],
                "crops/s",
                raw[0]["bare"]["crops_per_s"],
                "train.py's loader (read_crop + PKSampler + PaddedBatch, "
                "3 s crops) / bare soundfile seek + read of 3 s crops in a "
                "loop (wall; 2 cores shared)",
            )
        )
    noise, rir = str(DATA / "noise"), str(DATA / "rir")
    r = raw["augmented"] = stage(
        "loader",
        memory=False,
        manifest=csv,
        root=root,
        save=os.path.join(tmp, "save_aug"),
        workers=1,
        n_batches=z["batches"],
        P=z["P"],
        aug=[noise, rir],
    )
    plain, augmented = raw[1], r["main_cpu_ms_per_batch"]
    plain = plain["main_cpu_ms_per_batch"]
    rows.append(
        row(
            "train_main_cpu_per_batch_augmented",
            augmented,
            "ms",
            plain,
            "CPU time of the training process per batch (next() on the "
            "loader, 1 worker) with FolderAugment (noise + reverberation, "
            "probability 0.6 each, added in the worker) / without (goal: "
            f"no growth, <= 1.1: {verdict(augmented <= 1.1 * plain)})",
        )
    )
    one, bare = raw[0]["crops_per_cpu_s"], raw[0]["bare"]["crops_per_cpu_s"]
    rows.append(
        row(
            "train_loader_crops_per_cpu_s",
            one,
            "crops/s",
            bare,
            "the loader with 0 workers / bare soundfile crop reads, per "
            "CPU second (one core)",
        )
    )
    a = raw["augment"] = stage(
        "augment",
        noise=noise,
        rir=rir,
        files=files,
        n_batches=z["aug"],
        batch=2 * z["P"],
    )
    rows.append(
        row(
            "augment_crops_per_cpu_s",
            a["crops_per_cpu_s"],
            "crops/s",
            one,
            "FolderAugment (noise and reverberation, probability 0.6 each, as "
            "multi_metric.yaml) on each crop, as the loader's workers run "
            f"it / the loader, per CPU second; {a['opens_per_crop']:.2f} "
            "noise/RIR file opens per crop",
        )
    )
    core = 1 / (1 / one + 1 / a["crops_per_cpu_s"])
    rows.append(
        row(
            "crops_per_s_per_core_x16",
            16 * core,
            "crops/s",
            H100,
            "16 x one core's loader + augmentation (per CPU second) / 3,000 "
            "crops/s (one H100; the reference is the goal, not measured): "
            f"{verdict(16 * core >= H100)}; loader alone x 16: {16 * one:.0f} "
            f"({verdict(16 * one >= H100)})",
        )
    )
    opens = raw[0]["opens_per_sample"]
    rows.append(
        row(
            "train_file_opens_per_sample",
            opens,
            "opens",
            1.0,
            "audio files opened per training sample (soundfile and open() "
            "counted in the loader's process) / 1 (goal: "
            f"{verdict(opens == 1)})",
        )
    )
    shutil.rmtree(root)
    return rows, raw


def bench_vload(tmp, z, sources):
    """Verification loading: DataLoader with workers vs a serial loop."""
    root = os.path.join(tmp, "vtree")
    files = inputs.make_voxceleb_tree(root, z["vload"] + 80, sources)[3]
    csv = os.path.join(tmp, "test.csv")
    inputs.write_manifest(csv, files, 8 * inputs.SR)
    ids = [inputs.vox_id(p) for p in files]
    rows, raw = [], {}
    for w in (0, 2):
        r = raw[w] = stage(
            "verify_loading", manifest=csv, root=root, ids=ids, workers=w
        )
        rows.append(
            row(
                f"verify_loader_files_per_s_workers={w}",
                r["files_per_s"],
                "files/s",
                raw[0]["serial_files_per_s"],
                "dampit.training.verification's utterance_loader + embed "
                "(whole file + 10 crops of 3 s; trivial network) / a serial "
                f"load_audio + eval_crops loop (wall; {r['files']} 8 s files)",
            )
        )
    serial = raw[0]["serial_cpu_s"] / raw[0]["files"]
    main = raw[2]["cpu_s"] / raw[2]["files"]
    work = raw[2]["child_cpu_s"] / raw[2]["files"]
    rows.append(
        row(
            "verify_loader_files_per_s_x16_cores",
            min(15 / work, 1 / main),
            "files/s",
            1 / serial,
            "15 workers and the main process on 16 cores, from CPU seconds "
            f"per file with 2 workers (workers {1e3 * work:.2f} ms, main "
            f"{1e3 * main:.2f} ms: the bound is min(15 / workers, 1 / main))"
            f" / the serial loop, one core whatever the machine "
            f"({1e3 * serial:.2f} CPU ms per file)",
        )
    )
    shutil.rmtree(root)
    return rows, raw


def run(mode):
    """BENCHMARKS.md rows at ``mode``'s sizes (quick, default, full)."""
    z, rows = SIZES[mode], []
    with tempfile.TemporaryDirectory(prefix="dampit_scale_") as tmp:
        sources = inputs.make_sources(str(DATA), os.path.join(tmp, "src"))
        rows += bench_prep(tmp, z, sources)[0]
        rows += bench_sampler(z)[0]
        rows += bench_loader(tmp, z, sources)[0]
        rows += bench_vload(tmp, z, sources)[0]
    return rows
