"""Benchmark of EER / minDCF and of bounded-memory scoring.

``dampit.metrics.error_rates`` sorts the scores once (O(N log N) time,
O(N) memory); SpeechBrain's ``EER`` loops over 2N thresholds (O(N^2)
time) and its ``minDCF`` builds a thresholds x scores matrix (O(N^2)
memory: about 18 GB at 37,720 scores, 4 TB at 10^6). SpeechBrain is
therefore only run where it finishes: its EER up to 10^4 scores (37,720
too in full mode), its minDCF up to 2,000 scores.

Every measurement runs in a fresh Python process, so that peak memory is
the call's own: ``peak`` = the process's maximum resident set size during
the call minus its resident size just before (``ru_maxrss`` and
``/proc/self/statm``); for dampit the notes add ``tracemalloc``'s peak
(numpy allocations). Scores are float32 normal(2, 1) for targets (half the
trials) and normal(0, 1) for non-targets; both libraries get the same
scores and the notes give the largest difference of their results.

Rows (``run(quick)``; ``ratio > 1`` always means "ours is better"):

- ``eer_time_N=<n>``: seconds for ``compute_eer`` against SpeechBrain's
  ``EER``; ratio = SpeechBrain / ours.
- ``min_dcf_time_N=<n>``: seconds for ``compute_min_dcf`` (p_target 0.01)
  against SpeechBrain's ``minDCF``; ratio = SpeechBrain / ours.
- ``metrics_peak_memory_N=<n>``: peak MB of EER + minDCF(0.01) +
  minDCF(0.05) against SpeechBrain's minDCF (its larger one) where run;
  ratio = SpeechBrain / ours.
- ``stream_scoring_peak_memory``: a store of 100,000 utterances
  (D = 2048 float32, 819 MB; quick: D = 256, 10^5 trials) memory-mapped,
  a trial file of 10^6 trials streamed into index arrays, full-utterance
  cosine scoring in chunks, EER + minDCF, score file written: peak growth
  of the anonymous resident memory (sampled; mapped file pages excluded)
  against the size of the embeddings; ratio = embeddings / peak.

N = 10^3, 2*10^3, 10^4, 10^5 (quick); 10^3, 2*10^3, 10^4, 37,720, 10^5,
10^6 (full).

Usage: ``python tools/bench_metrics.py [--quick]``.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]

_COMMON = r"""
import json, resource, sys, time, tracemalloc
import numpy as np
sys.path.insert(0, {repo!r})

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

def maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def rss_anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0

class AnonPeak:
    # Samples the anonymous resident memory (heap and numpy buffers, not
    # mapped files) every millisecond in a thread; .peak is the growth.
    def __enter__(self):
        import threading
        self.base = self.peak_abs = rss_anon()
        self.stop = threading.Event()
        def loop():
            while not self.stop.wait(0.001):
                self.peak_abs = max(self.peak_abs, rss_anon())
        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self
    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak_abs = max(self.peak_abs, rss_anon())
        self.peak = self.peak_abs - self.base

def make(n, seed=0):
    rng = np.random.default_rng(seed)
    lab = rng.random(n) < 0.5
    lab[:2] = [True, False]
    s = (rng.standard_normal(n) + 2.0 * lab).astype(np.float32)
    return s, lab
"""

_CHILD_OURS = r"""
from dampit.metrics.error_rates import compute_eer, compute_min_dcf
n = int(sys.argv[1])
s, lab = make(n)
out = {}
base = rss()
repeat = 5 if n <= 100_000 else 3
for key, fn in (
    ("eer_time", lambda: compute_eer(s, lab)),
    ("min_dcf_time", lambda: compute_min_dcf(s, lab, p_target=0.01)),
):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    out[key] = best
tracemalloc.start()
eer, _ = compute_eer(s, lab)
dcf1, _ = compute_min_dcf(s, lab, p_target=0.01, normalize=False)
dcf5, _ = compute_min_dcf(s, lab, p_target=0.05, normalize=False)
out["traced_peak"] = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
out["peak"] = max(0, maxrss() - base)
out.update(eer=eer, min_dcf=dcf1, min_dcf5=dcf5)
print(json.dumps(out))
"""

_CHILD_SB = r"""
import torch
torch.set_num_threads(1)
from speechbrain.utils.metric_stats import EER, minDCF
n, run_dcf = int(sys.argv[1]), sys.argv[2] == "1"
s, lab = make(n)
pos, neg = torch.from_numpy(s[lab]), torch.from_numpy(s[~lab])
out = {}
repeat = 3 if n <= 2000 else 1
base = rss()
out["eer_time"] = float("inf")
for _ in range(repeat):
    t0 = time.perf_counter()
    out["eer"], _ = EER(pos, neg)
    out["eer_time"] = min(out["eer_time"], time.perf_counter() - t0)
out["peak"] = max(0, maxrss() - base)
if run_dcf:
    mid = rss()
    t0 = time.perf_counter()
    out["min_dcf"], _ = minDCF(pos, neg, p_target=0.01)
    out["min_dcf_time"] = time.perf_counter() - t0
    out["peak"] = max(out["peak"], maxrss() - mid)
print(json.dumps(out))
"""

_CHILD_STREAM = r"""
import os
from dampit.dataio.trials import read_trial_indices, write_scores
from dampit.metrics.embedding_store import EmbeddingStore, EmbeddingStoreWriter
from dampit.metrics.error_rates import compute_eer, compute_min_dcf
from dampit.metrics.multicrop import ScoringVectors
folder, n_utts, dim, n_trials = (
    sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
rng = np.random.default_rng(0)
per_spk = 50
ids = [f"spk{u // per_spk:05d}/utt{u:06d}.wav" for u in range(n_utts)]
spk_means = rng.standard_normal((n_utts // per_spk + 1, dim),
                                dtype=np.float32)
t0 = time.perf_counter()
with EmbeddingStoreWriter(os.path.join(folder, "store"), n_utts, (dim,)) as w:
    for s in range(0, n_utts, 5000):
        rows = np.arange(s, min(s + 5000, n_utts))
        emb = spk_means[rows // per_spk] + 2.5 * rng.standard_normal(
            (rows.size, dim), dtype=np.float32)
        w.add_batch(ids[s : s + rows.size], emb)
# Half target trials (same speaker), half random pairs.
e = rng.integers(0, n_utts, n_trials)
same = rng.random(n_trials) < 0.5
t = np.where(same, (e // per_spk) * per_spk + rng.integers(0, per_spk,
             n_trials), rng.integers(0, n_utts, n_trials))
t = np.minimum(t, n_utts - 1)
trial_file = os.path.join(folder, "trials.txt")
with open(trial_file, "w") as f:
    for a, b in zip(e, t):
        f.write(f"{int(a // per_spk == b // per_spk)} {ids[a]} {ids[b]}\n")
setup = time.perf_counter() - t0
del ids, spk_means, e, t, same
out = {"setup_time": setup}
base = rss()
with AnonPeak() as mem:
    t0 = time.perf_counter()
    store = EmbeddingStore(os.path.join(folder, "store"))
    ie, it, labels, _ = read_trial_indices(trial_file, store.index)
    out["read_time"] = time.perf_counter() - t0
    sv = ScoringVectors.from_embeddings(store, "cosine")
    scores = sv.score_pairs(ie, it)
    out["score_time"] = time.perf_counter() - t0 - out["read_time"]
    out["eer"], _ = compute_eer(scores, labels)
    out["min_dcf"], _ = compute_min_dcf(scores, labels, p_target=0.01)
    out["min_dcf5"], _ = compute_min_dcf(scores, labels, p_target=0.05)
    write_scores(os.path.join(folder, "scores.txt"),
                 [store.ids[i] for i in ie], [store.ids[i] for i in it],
                 scores, labels)
    out["time"] = time.perf_counter() - t0
out["anon_peak"] = mem.peak
out["peak"] = max(0, maxrss() - base)
out["emb_bytes"] = n_utts * dim * 4
print(json.dumps(out))
"""


def _child(code, *args):
    """Run one measurement in a fresh interpreter; return its JSON."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    src = _COMMON.format(repo=str(REPO)) + code
    proc = subprocess.run(
        [sys.executable, "-c", src, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mb(b):
    return b / 2**20


def run(quick):
    """Run the benchmark.

    Arguments
    ---------
    quick : bool
        Small sizes (about a minute).

    Returns
    -------
    list of dict
        Rows with name, figure, unit, reference, ratio, note.
    """
    if quick:
        sizes, sb_eer_max = [1000, 2000, 10_000, 100_000], 10_000
        stream = (100_000, 256, 100_000)
    else:
        sizes = [1000, 2000, 10_000, 37_720, 100_000, 1_000_000]
        sb_eer_max = 37_720
        stream = (100_000, 2048, 1_000_000)
    sb_dcf_max = 2000
    nan = float("nan")
    rows = []
    sb_dcf_peak = None  # (n, bytes) of the largest minDCF SpeechBrain ran

    def sb_dcf_estimate(n):
        """SpeechBrain's minDCF peak at n, scaled as N^2 from a run."""
        n0, b0 = sb_dcf_peak
        return b0 * (n / n0) ** 2

    for n in sizes:
        ours = _child(_CHILD_OURS, n)
        sb = None
        if n <= sb_eer_max:
            sb = _child(_CHILD_SB, n, int(n <= sb_dcf_max))
            if "min_dcf" in sb:
                sb_dcf_peak = (n, sb["peak"])
        tag = f"N={n}"
        if sb is not None:
            d_eer = abs(ours["eer"] - sb["eer"])
            rows.append(
                {
                    "name": f"eer_time_{tag}",
                    "figure": ours["eer_time"],
                    "unit": "s",
                    "reference": sb["eer_time"],
                    "ratio": sb["eer_time"] / ours["eer_time"],
                    "note": (
                        f"compute_eer vs speechbrain EER on {n} scores; "
                        f"EER {ours['eer']:.6f} vs {sb['eer']:.6f} "
                        f"(|diff| {d_eer:.1e})"
                    ),
                }
            )
        else:
            rows.append(
                {
                    "name": f"eer_time_{tag}",
                    "figure": ours["eer_time"],
                    "unit": "s",
                    "reference": nan,
                    "ratio": nan,
                    "note": (
                        f"compute_eer on {n} scores (EER {ours['eer']:.6f}); "
                        "SpeechBrain's EER not run: O(N^2), measured "
                        "elsewhere at about 30 min for 10^6"
                    ),
                }
            )
        has_dcf = sb is not None and "min_dcf" in sb
        rows.append(
            {
                "name": f"min_dcf_time_{tag}",
                "figure": ours["min_dcf_time"],
                "unit": "s",
                "reference": sb["min_dcf_time"] if has_dcf else nan,
                "ratio": (
                    sb["min_dcf_time"] / ours["min_dcf_time"]
                    if has_dcf
                    else nan
                ),
                "note": (
                    f"compute_min_dcf(p_target=0.01) on {n} scores, raw "
                    f"{ours['min_dcf']:.6f}"
                    + (
                        f" vs speechbrain minDCF {sb['min_dcf']:.6f} (|diff| "
                        f"{abs(ours['min_dcf'] - sb['min_dcf']):.1e})"
                        if has_dcf
                        else "; SpeechBrain's minDCF not run: it would "
                        f"need about {sb_dcf_estimate(n) / 1e9:.1f} GB"
                    )
                ),
            }
        )
        ours_peak = max(ours["peak"], ours["traced_peak"])
        rows.append(
            {
                "name": f"metrics_peak_memory_{tag}",
                "figure": _mb(ours_peak),
                "unit": "MB",
                "reference": _mb(sb["peak"]) if has_dcf else nan,
                "ratio": (sb["peak"] / max(ours_peak, 1) if has_dcf else nan),
                "note": (
                    f"EER + minDCF(0.01) + minDCF(0.05) on {n} scores: "
                    f"RSS growth {_mb(ours['peak']):.1f} MB, tracemalloc "
                    f"peak {_mb(ours['traced_peak']):.1f} MB (figure: the "
                    "larger)"
                    + (
                        f"; SpeechBrain EER + minDCF RSS growth "
                        f"{_mb(sb['peak']):.1f} MB"
                        if has_dcf
                        else "; SpeechBrain's minDCF would need about "
                        f"{sb_dcf_estimate(n) / 1e9:.1f} GB (its peak at "
                        f"{sb_dcf_peak[0]} scores, scaled by N^2)"
                    )
                ),
            }
        )
    n_utts, dim, n_trials = stream
    with tempfile.TemporaryDirectory(prefix="dampit_bench_") as tmp:
        st = _child(_CHILD_STREAM, tmp, n_utts, dim, n_trials)
    rows.append(
        {
            "name": "stream_scoring_peak_memory",
            "figure": _mb(st["anon_peak"]),
            "unit": "MB",
            "reference": _mb(st["emb_bytes"]),
            "ratio": st["emb_bytes"] / st["anon_peak"],
            "note": (
                f"{n_utts} utterances x D={dim} float32 store, memory-mapped; "
                f"{n_trials} trials read from a file into index arrays; "
                f"chunked cosine scoring, EER {st['eer']:.4f}, minDCF(0.01) "
                f"{st['min_dcf']:.4f}, score file written, in "
                f"{st['time']:.1f} s (reading the trials "
                f"{st['read_time']:.1f} s, scoring {st['score_time']:.1f} "
                "s); figure = peak growth of the anonymous resident memory "
                "(heap and numpy buffers, sampled every ms), reference = "
                "the embeddings' size; total RSS growth "
                f"{_mb(st['peak']):.0f} MB adds the mapped file's pages "
                "(page cache, reclaimable)"
            ),
        }
    )
    return rows


def main(argv=None):
    """Print the rows of ``run`` (``--quick``: small sizes); return them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from benchlib import format_rows  # noqa: E402

    print(format_rows(rows))
    return rows


if __name__ == "__main__":
    main()
