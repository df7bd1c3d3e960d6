"""dampit-verify scores a long trial list in bounded memory.

Issue 16 item 8: 10^6 trials over 6 files peaked at 6.3 GB. Here one
process runs ``dampit-verify`` on 6 trials, then on 200,000 trials over
the same 6 files, and reads how far its resident memory rose above where
it started (the peak reset through ``/proc/self/clear_refs``): the long
list may add at most 50 MB (its index arrays and scores take about 6 MB;
the former lists of per-trial strings took 200 MB here, 6.3 GB for 10^6).
"""

import json
import os
import pathlib
import runpy
import subprocess
import sys

import numpy as np
import pytest

# The test-only model writer (tests/ is not a package).
MODELS = pathlib.Path(__file__).resolve().parents[1] / "model_folder.py"
write_demo_model = runpy.run_path(str(MODELS))["write_demo_model"]

SCRIPT = """
import json, sys
from dampit.cli.verify import main

def kb(key):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(key))

growth = []
for argv in json.loads(sys.argv[1]):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current size
    before = kb("VmRSS:")
    assert main(argv) == 0
    growth.append(kb("VmHWM:") - before)
print(json.dumps(growth))
"""


@pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="Linux /proc"
)
def test_long_trial_list_in_bounded_memory(shared_data, tmp_path):
    model = write_demo_model(tmp_path)
    root = shared_data / "dspspeech"
    spk = sorted(p for p in root.iterdir() if p.is_dir())[:3]
    files = [f for s in spk for f in sorted(s.glob("*.wav"))[:2]]
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(files), size=(200_000, 2))
    lines = [
        f"{int(a // 2 == b // 2)} {files[a]} {files[b]}\n" for a, b in pairs
    ]
    short, long = tmp_path / "short.txt", tmp_path / "long.txt"
    short.write_text("".join(lines[:6]))
    long.write_text("".join(lines))
    runs = [
        ["--model", str(model), "--trials", str(t), "--out", str(out)]
        + ["--no-progress"]
        for t, out in (
            (short, tmp_path / "s6"),  # warms up: lazy imports, caches
            (short, tmp_path / "s6"),
            (long, tmp_path / "s200k"),
        )
    ]
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(runs)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    _, short_kb, long_kb = json.loads(res.stdout.splitlines()[-1])
    assert (long_kb - short_kb) / 1024 < 50, (short_kb, long_kb)
    scored = (tmp_path / "s200k").read_text().splitlines()
    assert len(scored) == 200_000
    assert scored[:6] == (tmp_path / "s6").read_text().splitlines()
    assert "200000 trials scored" in res.stdout
