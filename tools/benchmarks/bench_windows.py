"""Long audio: memory of embedding one hour by 1.5 s windows.

``dampit-embed --window 1.5`` with the shipped ``pretrained/dampit-so762``
on one hour of 16 kHz speech (so762 sentences end to end, a 16-bit WAV),
and as the reference on one 1.5 s window of it: each in a fresh
interpreter, one thread. Ratio: peak resident memory (VmHWM) of the hour /
of the one window (near 1: the memory does not grow with the length; the
decoded hour alone would take 230 MB as float32). Quick: 15 s.
"""

import itertools
import os
import tempfile
import time

import soundfile as sf
from benchlib import DATA, REPO, isolated, row

from dampit.cli.embed import main
from dampit.dataio.preparation import scan_audio_tree

KEY_ROWS = ("embed_by_1.5s_windows_peak_rss",)


def embed(audio, out):
    """``dampit-embed --window 1.5`` of ``audio``: rows and wall seconds."""
    t0 = time.perf_counter()
    argv = ["--model", str(REPO / "pretrained" / "dampit-so762"), audio]
    assert main(argv + ["--out", out, "--window", "1.5", "--no-progress"]) == 0
    rows = sum(1 for _ in open(os.path.join(out, "ids.txt")))
    return {"rows": rows, "wall_s": time.perf_counter() - t0}


def run(mode):
    """The row (``"quick"``: 15 s of audio instead of an hour)."""
    seconds = 15 if mode == "quick" else 3600
    so762 = DATA / "so762"
    files = scan_audio_tree(so762, (".flac",))
    speech = itertools.cycle([so762 / name for name in files])
    with tempfile.TemporaryDirectory(prefix="dampit_windows_") as tmp:
        hour, one = os.path.join(tmp, "hour.wav"), os.path.join(tmp, "w.wav")
        with sf.SoundFile(hour, "w", 16000, 1, "PCM_16") as f:
            while f.frames < 16000 * seconds:  # the files in turn
                x = sf.read(next(speech), dtype="int16")[0]
                f.write(x[: 16000 * seconds - f.frames])
        sf.write(one, sf.read(hour, frames=24000, dtype="int16")[0], 16000)
        ref = isolated(__file__, "embed", audio=one, out=os.path.join(tmp, "1"))
        big = isolated(
            __file__, "embed", audio=hour, out=os.path.join(tmp, "h")
        )
    note = (
        f"{seconds} s of audio, {big['rows']} windows in {big['wall_s']:.0f} s"
        f" wall; RssAnon peak {big['peak_anon_mb']:.0f} MB vs "
        f"{ref['peak_anon_mb']:.0f} MB; ratio = the whole file / one window"
    )
    name, hour_mb = "embed_by_1.5s_windows_peak_rss", big["peak_rss_mb"]
    return [row(name, hour_mb, "MB", ref["peak_rss_mb"], note)]
