"""EER and minDCF on growing N.

Time and peak memory of ``dampit.metrics.error_rates``' EER and minDCF for N
= 10^3 .. 10^6 scores against SpeechBrain's where it can finish. Ratio:
SpeechBrain / dampit, time or memory (> 1: dampit better); n/a where
SpeechBrain is not run (the note says why).

dampit sorts the scores once (O(N log N) time, O(N) memory); SpeechBrain's
``EER`` loops over 2N thresholds (O(N^2) time) and its ``minDCF`` builds a
thresholds x scores matrix (O(N^2) memory: about 18 GB at 37,720 scores),
so its EER runs up to 10^4 scores (37,720 too in the full sizes), its
minDCF up to 2,000. Every measurement runs in its own interpreter: peak
memory is the growth of VmHWM over the resident set just before the call
(for dampit also ``tracemalloc``'s peak; the figure is the larger).
Scores: float32 normal(2, 1) for targets (half the trials), normal(0, 1)
for non-targets, the same for both libraries.
"""

import tracemalloc

import numpy as np
import torch
from benchlib import Clock, isolated, median_time, row, status_mb
from speechbrain.utils.metric_stats import EER, minDCF

from dampit.metrics.error_rates import compute_eer, compute_min_dcf

KEY_ROWS = (
    "eer_time_N=10000",
    "eer_time_N=37720",
    "min_dcf_time_N=2000",
    "min_dcf_time_N=1000000",
    "metrics_peak_memory_N=2000",
)


def make(n, seed=0):
    """``n`` scores and their boolean labels (see the module docstring)."""
    rng = np.random.default_rng(seed)
    lab = rng.random(n) < 0.5
    lab[:2] = [True, False]
    return (rng.standard_normal(n) + 2.0 * lab).astype(np.float32), lab


def dampit_metrics(n):
    """Times of dampit's EER and minDCF(0.01), then the memory of EER +
    minDCF(0.01) + minDCF(0.05) (run in a fresh interpreter)."""
    s, lab = make(n)
    base = status_mb("VmRSS")
    clock, reps = Clock("cpu", "wall"), 5 if n <= 100_000 else 3
    out = {"eer_time": median_time(clock, lambda: compute_eer(s, lab), reps)}
    out["min_dcf_time"] = median_time(
        clock, lambda: compute_min_dcf(s, lab, p_target=0.01), reps
    )
    tracemalloc.start()
    out["eer"], _ = compute_eer(s, lab)
    out["min_dcf"], _ = compute_min_dcf(s, lab, 0.01, normalize=False)
    compute_min_dcf(s, lab, 0.05, normalize=False)
    out["traced_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    out["rss_mb"] = max(0.0, status_mb("VmHWM") - base)
    return out


def speechbrain_metrics(n, run_dcf):
    """SpeechBrain's EER (and minDCF(0.01) when ``run_dcf``): times and
    the larger memory growth (run in a fresh interpreter)."""
    s, lab = make(n)
    pos, neg = torch.from_numpy(s[lab]), torch.from_numpy(s[~lab])
    clock, base = Clock("cpu", "wall"), status_mb("VmRSS")
    out = {"eer": EER(pos, neg)[0]}  # also the warm-up call
    out["eer_time"] = median_time(clock, lambda: EER(pos, neg), 1)
    out["rss_mb"] = max(0.0, status_mb("VmHWM") - base)
    if run_dcf:
        mid = status_mb("VmRSS")
        out["min_dcf"] = minDCF(pos, neg, p_target=0.01)[0]
        out["min_dcf_time"] = median_time(
            clock, lambda: minDCF(pos, neg, p_target=0.01), 1
        )
        out["rss_mb"] = max(out["rss_mb"], status_mb("VmHWM") - mid)
    return out


def run(mode):
    """BENCHMARKS.md rows at ``mode``'s sizes (quick, default, full)."""
    sizes, sb_eer_max = [1000, 100_000], 10_000  # with and without SpeechBrain
    if mode != "quick":
        sizes = [1000, 2000, 10_000, 37_720, 100_000, 1_000_000]
        sb_eer_max = 37_720
    nan, rows, sb_dcf = float("nan"), [], None  # sb_dcf: (n, MB) run

    for n in sizes:
        ours = isolated(__file__, "dampit_metrics", memory=False, n=n)
        sb = None
        if n <= sb_eer_max:
            sb = isolated(
                __file__,
                "speechbrain_metrics",
                memory=False,
                n=n,
                run_dcf=n <= 2000,
            )
        has_dcf = sb is not None and "min_dcf" in sb
        if has_dcf:
            sb_dcf = (n, sb["rss_mb"])
        need = f"{sb_dcf[1] * (n / sb_dcf[0]) ** 2 / 1e3:.1f} GB"
        if sb is not None:
            sb_time = sb["eer_time"]
            note = (
                f"compute_eer vs speechbrain EER on {n} scores; EER "
                f"{ours['eer']:.6f} vs {sb['eer']:.6f}"
            )
        else:
            sb_time = nan
            note = (
                f"compute_eer on {n} scores (EER {ours['eer']:.6f}); "
                "SpeechBrain's EER not run: O(N^2)"
            )
        rows.append(
            row(
                f"eer_time_N={n}",
                ours["eer_time"],
                "s",
                sb_time,
                note,
                ratio=sb_time / ours["eer_time"],
            )
        )
        note = f"compute_min_dcf(p_target=0.01) on {n} scores, raw "
        note += f"{ours['min_dcf']:.6f}"
        if has_dcf:
            note += f" vs speechbrain minDCF {sb['min_dcf']:.6f}"
        else:
            note += f"; SpeechBrain's minDCF not run: it would need {need}"
        sb_time = sb["min_dcf_time"] if has_dcf else nan
        rows.append(
            row(
                f"min_dcf_time_N={n}",
                ours["min_dcf_time"],
                "s",
                sb_time,
                note,
                ratio=sb_time / ours["min_dcf_time"],
            )
        )
        peak = max(ours["rss_mb"], ours["traced_mb"], 1 / 1024)
        note = (
            f"EER + minDCF(0.01) + minDCF(0.05) on {n} scores: RSS growth "
            f"{ours['rss_mb']:.1f} MB, tracemalloc peak "
            f"{ours['traced_mb']:.1f} MB (figure: the larger)"
        )
        if has_dcf:
            note += f"; SpeechBrain EER + minDCF RSS growth {sb['rss_mb']:.1f}"
        else:
            note += f"; SpeechBrain's minDCF would need about {need} (its "
            note += f"peak at {sb_dcf[0]} scores, scaled by N^2)"
        sb_mb = sb["rss_mb"] if has_dcf else nan
        rows.append(
            row(
                f"metrics_peak_memory_N={n}",
                peak,
                "MB",
                sb_mb,
                note,
                ratio=sb_mb / peak,
            )
        )
    return rows
