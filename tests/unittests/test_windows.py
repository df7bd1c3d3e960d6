"""dampit.dataio.windows on real speech: window times against a hand
count, windows equal to reading that slice of the file (resampled and
stereo files included), block-by-block reading in bounded memory, and the
energy trim on speech with inserted digital silence or low-level real
noise, at any gain."""

import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import signal

from dampit.dataio.audio import AudioError, load_audio
from dampit.dataio.windows import header_windows, read_windows

#: 0005/000050003.flac lasts 69488 samples at 16 kHz: 4.343 s.
SHORT = "so762/0005/000050003.flac"
#: 9615/096150026.flac: 14.853 s of read speech, no long pause.
LONG = "so762/9615/096150026.flac"


@pytest.fixture(scope="module")
def short(shared_data):
    return shared_data / SHORT


def _times(path, window, hop, **kw):
    return [(s, e) for s, e, _ in read_windows(path, window, hop, **kw)]


def test_window_times_by_hand(short):
    """Starts every hop; the windows cut short by the end of the file
    are kept when they last half a window (0.75 s of 1.5 s) or more."""
    x = sf.read(short, dtype="float32")[0]
    assert len(x) == 69488  # 4.343 s
    assert _times(short, 1.5, 0.5) == [
        (0.0, 1.5),
        (0.5, 2.0),
        (1.0, 2.5),
        (1.5, 3.0),
        (2.0, 3.5),
        (2.5, 4.0),
        (3.0, 4.343),  # 1.343 s
        (3.5, 4.343),  # 0.843 s; from 4.0 s: 0.343 s, dropped
    ]
    assert _times(short, 1.5, 1.5) == [(0.0, 1.5), (1.5, 3.0), (3.0, 4.343)]
    assert _times(short, 2.0, 2.0) == [(0.0, 2.0), (2.0, 4.0)]  # 0.343 s
    assert header_windows(short, 1.5, 0.5) == 8
    for s, e, wav in read_windows(short, 1.5, 0.5):
        assert torch.equal(
            wav, torch.from_numpy(x[round(s * 16000) : round(e * 16000)])
        )


def test_windows_of_a_resampled_stereo_file(short, tmp_path):
    """A 48 kHz stereo file: each window is what load_audio reads of
    that slice of the file (cut at 48 kHz, down-mixed, resampled)."""
    x = sf.read(short)[0]
    y = signal.resample_poly(x, 3, 1)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([y, 0.5 * y[::-1]], 1), 48000, subtype="FLOAT")
    with pytest.warns(UserWarning, match="resampled to 16000 Hz"):
        windows = list(read_windows(path, 1.0, 0.75))
    assert [(s, e) for s, e, _ in windows][-1] == (3.75, len(y) / 48000)
    for s, e, wav in windows:
        with pytest.warns(UserWarning):
            want = load_audio(path, 16000, round(s * 48000), round(e * 48000))
        torch.testing.assert_close(wav, want, rtol=0, atol=1e-6)


def _peak_reading(path):
    """(windows, traced peak bytes) of reading ``path`` by 1.5 s windows."""
    tracemalloc.start()
    try:
        n = sum(1 for _ in read_windows(path, 1.5, 1.5))
        return n, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_long_file_is_read_block_by_block(short, tmp_path):
    """3 and 12 minutes of speech (46 MB as float32) are read in blocks
    of 4 MB: the traced peak does not grow with the length."""
    x = sf.read(short, dtype="int16")[0]
    peaks = []
    for minutes in (3, 12):
        n = 16000 * 60 * minutes
        path = tmp_path / f"{minutes}min.wav"
        sf.write(path, np.tile(x, -(-n // len(x)))[:n], 16000)
        windows, peak = _peak_reading(path)
        assert windows == 40 * minutes
        peaks.append(peak)
    assert peaks[1] < 1.2 * peaks[0], peaks
    assert peaks[1] < 4 * 16000 * 60 * 12 / 2, peaks


def test_bad_files_name_themselves(short, tmp_path):
    """Shorter than half a window, NaN after the first block, silent."""
    with pytest.raises(AudioError, match="half a window") as err:
        list(read_windows(short, 10.0, 10.0))
    assert str(short) in str(err.value)
    nan = np.full(2**21, 0.1, np.float32)
    nan[-5] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN") as err:
        list(read_windows(tmp_path / "nan.wav", 1.5, 1.5))
    assert "nan.wav" in str(err.value)
    sf.write(tmp_path / "zeros.wav", np.zeros(48000), 16000)
    with pytest.raises(AudioError, match="silent"):
        list(read_windows(tmp_path / "zeros.wav", 1.5, 1.5))


def _with_gap(speech, gap, gain, path):
    """``speech`` with ``gap`` inserted at 6.0 s, times ``gain``."""
    y = np.r_[speech[:96000], gap, speech[96000:]] * gain
    sf.write(path, y, 16000, subtype="FLOAT")
    return path


@pytest.mark.parametrize("gain", [1.0, 1e-3])
@pytest.mark.parametrize(
    "gap", ["digital silence", "doing_the_dishes", "running_tap"]
)
def test_trim_drops_the_inserted_gap(shared_data, tmp_path, gap, gain):
    """4.5 s of digital silence, or of real noise 30 dB below the
    speech's RMS, inserted at 6.0 s of 14.9 s of read speech: --trim
    drops the three windows of the gap and keeps the ten of speech,
    whatever the gain of the file."""
    speech = sf.read(shared_data / LONG)[0]
    assert len(speech) == 237648  # 14.853 s
    if gap == "digital silence":
        inserted = np.zeros(72000)
    else:
        noise = sf.read(shared_data / "noise" / f"{gap}.wav")[0]
        noise = noise[160000:232000]
        level = np.sqrt(np.mean(speech**2) / np.mean(noise**2))
        inserted = noise * level * 10 ** (-30 / 20)
    path = _with_gap(speech, inserted, gain, tmp_path / "gap.wav")
    every = _times(path, 1.5, 1.5)
    assert len(every) == 13 and every[-1] == (18.0, 309648 / 16000)
    in_gap = [(6.0, 7.5), (7.5, 9.0), (9.0, 10.5)]
    assert _times(path, 1.5, 1.5, trim=True) == [
        w for w in every if w not in in_gap
    ]
