"""Memory bounded by the audio, not by a header or a neighbour.

A child process, its address space capped at 1 GB above what it holds
after the imports, reads hostile files: a 62 kB WAV whose header claims
1 Hz (resampled to 16 kHz it would take 4 GB), a FLAC whose header claims
2^33 frames (32 GB), and a second of audio at 44101 Hz (torchaudio's
resampling filter for 44101 -> 16000 Hz alone takes 12 GB). Each ends in
an ``AudioError`` naming the file or in a waveform, its peak resident
memory within 64 MB of the start. In a batch, one long file among short
ones is embedded without padding any of them beyond twice its length.
"""

import json
import os
import pathlib
import runpy
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from dampit.dataio.audio import (
    MAX_UPSAMPLE,
    AudioError,
    check_audio,
    load_audio,
)
from dampit.inference.api import load_model
from dampit.inference.extract import (
    MAX_PADDING,
    embed_utterances,
    length_batches,
)

HERE = pathlib.Path(__file__).resolve().parent
write_demo_model = runpy.run_path(str(HERE.parent / "model_folder.py"))[
    "write_demo_model"
]

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from dampit.dataio.audio import AudioError, load_audio

    def kb(key):
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith(key))

    cap = kb("VmSize:") * 1024 + 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out = {}
    for path in sys.argv[1:]:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak (VmHWM) back to the current size
        before = kb("VmRSS:")
        try:
            wav = load_audio(path, 16000)
            res = ["ok", wav.numpy().tolist()]
        except AudioError as err:
            res = ["AudioError", str(err)]
        except (MemoryError, RuntimeError) as err:
            res = [type(err).__name__, str(err)[:200]]
        out[path] = res + [kb("VmHWM:") - before]
    print(json.dumps(out))
    """
)


def wav_with_rate(path, rate, n=31000):
    """A 16-bit mono WAV of ``n`` noise samples whose header says
    ``rate`` Hz (the fields patched in the bytes)."""
    noise = np.random.default_rng(0).normal(0, 0.1, n)
    sf.write(path, noise, 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    fmt = data.index(b"fmt ")
    data[fmt + 12 : fmt + 20] = struct.pack("<II", rate, 2 * rate)
    path.write_bytes(data)
    return path


def flac_claiming(path, frames):
    """A 1 s FLAC whose STREAMINFO claims ``frames`` frames."""
    noise = np.random.default_rng(1).normal(0, 0.1, 16000)
    sf.write(path, noise, 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = 8 + 10  # "fLaC", the block header, then 10 bytes to the count
    field = int.from_bytes(data[at : at + 8], "big")
    field = (field >> 36 << 36) | frames  # its low 36 bits
    data[at : at + 8] = field.to_bytes(8, "big")
    path.write_bytes(data)
    return path


@pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="Linux /proc"
)
def test_hostile_headers_do_not_allocate(tmp_path):
    one_hz = wav_with_rate(tmp_path / "one_hz.wav", 1)
    assert one_hz.stat().st_size < 63_000
    flac = flac_claiming(tmp_path / "claims.flac", 2**33)
    assert sf.info(str(flac)).frames == 2**33
    t = np.arange(44101) / 44101
    odd = tmp_path / "odd_rate.wav"
    sf.write(odd, 0.5 * np.sin(2 * np.pi * 440 * t), 44101, subtype="FLOAT")
    files = [one_hz, flac, odd]
    res = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, files)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.splitlines()[-1])
    for path in files:
        kind, value, grew_kb = out[str(path)]
        assert kind in ("ok", "AudioError"), (path, kind, value)
        assert grew_kb < 64 * 1024, (path, grew_kb)
        if kind == "AudioError":
            assert str(path) in value
    kind, message, _ = out[str(one_hz)]
    assert kind == "AudioError" and "sample rate 1 Hz" in message
    kind, wav, _ = out[str(odd)]
    assert kind == "ok" and len(wav) == 16000  # one second at 16 kHz
    spectrum = np.abs(np.fft.rfft(wav))  # 1 Hz bins: the tone stays 440
    assert int(np.argmax(spectrum)) == 440


def test_lowest_rate_accepted_is_the_stated_factor(tmp_path):
    """A rate of 16000 / MAX_UPSAMPLE Hz is read (MAX_UPSAMPLE times more
    samples); one Hz less is refused."""
    low = 16000 // MAX_UPSAMPLE
    ok = wav_with_rate(tmp_path / "ok.wav", low, n=low)
    with pytest.warns(UserWarning, match="2000 Hz, resampled to 16000"):
        assert load_audio(ok, 16000).numel() == MAX_UPSAMPLE * low
    bad = wav_with_rate(tmp_path / "bad.wav", low - 1, n=low)
    with pytest.raises(AudioError, match=f"{low - 1} Hz .*bad.wav"):
        load_audio(bad, 16000)
    assert check_audio(ok) == (low, low)  # training's check agrees
    with pytest.raises(AudioError, match=f"{low - 1} Hz .*bad.wav"):
        check_audio(bad)


def test_length_batches_bound_the_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 10**6, size=500).tolist()
    batches = length_batches(lengths, batch_size=16)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= 16
        assert all(MAX_PADDING * lengths[i] >= longest for i in batch)


def test_one_long_file_does_not_pad_the_batch(shared_data, tmp_path):
    """Fifteen files of about 2 s and one of 60 s in one call with
    batch_size 16: no waveform is padded beyond MAX_PADDING times its
    length, and each embedding is the file's embedding alone."""
    root = shared_data / "dspspeech"
    short = sorted(root.glob("*/*.wav"))[:15]
    pieces = [sf.read(str(p), dtype="float32")[0] for p in short]
    longest = np.tile(np.concatenate(pieces), 3)[: 60 * 16000]
    sf.write(tmp_path / "long.wav", longest, 16000)
    items = [str(p) for p in short[:7]] + [str(tmp_path / "long.wav")]
    items += [str(p) for p in short[7:]]
    model = load_model(write_demo_model(tmp_path))
    hop = model.mods.compute_features.hop_length
    seen = []

    def encode(batch, lens):
        seen.append((batch.shape[1], lens.tolist()))
        return model.encode_batch(batch, lens)

    ids, emb = embed_utterances(
        encode, items, batch_size=16, progress=False, hop_length=hop
    )
    assert ids == items
    for total, lens in seen:
        for rel in lens:  # the item's own frames / the batch's frames
            assert 1 / rel <= MAX_PADDING + 1e-6, (total, rel)
    alone = [
        embed_utterances(model.encode_batch, [p], progress=False)[1][0]
        for p in items
    ]
    np.testing.assert_allclose(emb, np.stack(alone), rtol=1e-4, atol=1e-5)
