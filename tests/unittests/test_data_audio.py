"""dampit.dataio.audio on real speech: what counts as silent (issue 16
item 8), down-mixing that cancels out, and training crops read from the
file (one open per sample, silent crops accepted: issue 16 item 3)."""

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import signal

from dampit.dataio.audio import AudioError, check_audio, load_audio, read_crop


@pytest.fixture(scope="module")
def speech(shared_data):
    """A real dspspeech recording, float64 at 16 kHz."""
    path = sorted((shared_data / "dspspeech").glob("*/*.wav"))[0]
    wav, sr = sf.read(str(path))
    assert sr == 16000 and wav.ndim == 1
    return wav


def _float_wav(path, data, sr=16000):
    sf.write(str(path), data, sr, subtype="FLOAT")
    return path


@pytest.mark.parametrize(
    "name,data",
    [
        ("zeros", np.zeros(16000)),
        ("tiny_constant", np.full(16000, 1e-30)),
        ("dc_offset", np.full(16000, 0.5)),
        ("stereo_constants", np.stack([np.full(800, 1e-30), np.zeros(800)], 1)),
    ],
)
def test_constant_signals_are_silent(name, data, tmp_path):
    """A constant channel carries nothing, whatever its level."""
    path = _float_wav(tmp_path / f"{name}.wav", data)
    for read in (load_audio, check_audio):
        with pytest.raises(AudioError, match="silent") as err:
            read(path)
        assert str(path) in str(err.value)


def test_quiet_and_offset_speech_is_not_silent(speech, tmp_path):
    """Speech at -140 dBFS (float file) or on a DC offset is a signal."""
    for name, data in (("quiet", 1e-7 * speech), ("dc", 0.5 + 1e-3 * speech)):
        path = _float_wav(tmp_path / f"{name}.wav", data)
        got = load_audio(path).double().numpy()
        np.testing.assert_allclose(got, data, rtol=1e-6, atol=0)
        assert check_audio(path) == (len(speech), 16000)


def test_inverted_stereo_keeps_a_channel(speech, tmp_path):
    """L = -R is not silent; its mean would be, so the loudest channel is
    kept. Channels that do not cancel are averaged."""
    inverted = _float_wav(tmp_path / "inv.wav", np.stack([speech, -speech], 1))
    np.testing.assert_allclose(load_audio(inverted).numpy(), speech, atol=1e-7)
    assert check_audio(inverted) == (len(speech), 16000)
    louder_right = np.stack([-0.5 * speech, speech], 1)
    path = _float_wav(tmp_path / "mix.wav", louder_right)
    np.testing.assert_allclose(
        load_audio(path).numpy(), 0.25 * speech, atol=1e-7
    )


def test_short_files_refused_for_training(speech, tmp_path):
    """check_audio refuses less than one 25 ms frame (a 10 ms clip)."""
    path = _float_wav(tmp_path / "ten_ms.wav", speech[4000:4160])
    with pytest.raises(AudioError, match="too short"):
        check_audio(path)
    assert check_audio(_float_wav(tmp_path / "ok.wav", speech[4000:4400]))


def test_read_crop_is_a_uniform_slice_of_the_range(speech, tmp_path):
    """Each crop is file[s : s + n] with s uniform in [start, stop - n]."""
    path = _float_wav(tmp_path / "s.wav", speech)
    start, stop, n = 1000, 1000 + 3000, 2000
    torch.manual_seed(0)
    seen = set()
    f32 = speech.astype(np.float32)
    for _ in range(300):
        crop = read_crop(path, n, start=start, stop=stop).numpy()
        hits = [
            s
            for s in np.flatnonzero(f32[start : stop - n + 1] == crop[0])
            + start
            if np.array_equal(crop, f32[s : s + n])
        ]
        assert len(hits) >= 1
        seen.add(hits[0])
    assert min(seen) >= start and max(seen) <= stop - n
    assert len(seen) > 200  # spread over the 1001 starts


def test_read_crop_tiles_short_ranges_and_resamples(speech, tmp_path):
    """A range shorter than the crop is repeated; an 8 kHz file gives a
    full 16 kHz crop read from half as many file samples."""
    path = _float_wav(tmp_path / "s.wav", speech)
    crop = read_crop(path, 1000, start=100, stop=400).numpy()
    want = np.resize(speech[100:400].astype(np.float32), 1000)
    np.testing.assert_array_equal(crop, want)
    low = _float_wav(
        tmp_path / "8k.wav", signal.resample_poly(speech, 1, 2), 8000
    )
    with pytest.warns(UserWarning, match="sample rate 8000 Hz"):
        crop = read_crop(low, 16000)
    assert crop.shape == (16000,) and torch.isfinite(crop).all()


def test_silent_crop_of_a_valid_file(speech, tmp_path):
    """Speech then 5 s of digital silence: the file is valid, and a crop
    that falls inside the silence is zeros, not an error."""
    path = tmp_path / "tail.wav"
    sf.write(str(path), np.r_[speech, np.zeros(80000)], 16000)
    assert check_audio(path) == (len(speech) + 80000, 16000)
    start = len(speech) + 1000
    crop = read_crop(path, 48000, start=start, stop=start + 60000)
    assert crop.shape == (48000,) and not crop.any()
    with pytest.raises(AudioError, match="silent"):  # read whole, refused
        load_audio(path, start=start, stop=start + 60000)


@pytest.mark.parametrize(
    "subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"]
)
def test_check_audio_every_sample_format_over_several_blocks(
    subtype, speech, tmp_path
):
    """check_audio decodes integer PCM as integers, block by block: a file
    that varies only after the first block (2**17 frames) is kept; a
    constant one, an offset included, is silent; NaN and inf in a later
    block of a float file are refused."""
    n = 2**17 + 5000
    blip = np.full((n, 2), 0.25)
    blip[-4000:, 1] += 0.5 * speech[20000:24000]  # in the second block only
    path = str(tmp_path / "blip.wav")
    sf.write(path, blip, 16000, subtype=subtype)
    assert check_audio(path) == (n, 16000)
    sf.write(path, np.full((n, 2), 0.25), 16000, subtype=subtype)
    with pytest.raises(AudioError, match="silent"):
        check_audio(path)
    if subtype in ("FLOAT", "DOUBLE"):
        for bad in (np.nan, np.inf):
            blip[-3, 0] = bad
            sf.write(path, blip, 16000, subtype=subtype)
            with pytest.raises(AudioError, match="NaN or inf"):
                check_audio(path)


def test_missing_and_empty_files_named(tmp_path):
    """The stat checks run only when soundfile fails: same messages."""
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for path, why in ((tmp_path / "no.wav", "not found"), (empty, "empty")):
        for read in (load_audio, check_audio):
            with pytest.raises(AudioError, match=why) as err:
                read(path)
            assert str(path) in str(err.value)


def _full_decode_verdict(path):
    """The reference: decode the whole file in float64, then the rules
    (frames, NaN, silence) of the module docstring, with no early stop."""
    try:
        data, sr = sf.read(str(path), dtype="float64", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        return f"unreadable: {err}"
    if not np.isfinite(data).all():
        return "NaN"
    ptp, peak = np.ptp(data, axis=0), np.abs(data).max(axis=0)
    if (ptp <= 1e-6 * peak).all():
        return "silent"
    return (len(data), sr)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32"])
def test_early_stop_agrees_with_a_full_decode(subtype, shared_data, tmp_path):
    """check_audio stops reading a plain integer WAV at the first block
    that varies; its verdict on real speech, with leading silence of every
    length around the block edges, a large DC offset with sub-threshold
    ripple and a truncated file, equals a full decode's."""
    files = sorted((shared_data / "dspspeech").glob("*/*.wav"))[:6]
    rng = np.random.default_rng(0)
    cases = []
    for i, f in enumerate(files):
        wav = sf.read(str(f))[0]
        lead = [0, 4095, 4096, 12288, 2**17 + 1][i % 5]
        cases.append(np.r_[np.zeros(lead), wav])
    offset = np.full(40000, 0.9)
    offset[::7] += 2.0**-23  # 1 LSB of 24 bits: "constant" next to 0.9
    cases += [offset, np.r_[np.zeros(30000), 0.9, np.zeros(3)]]
    for k, data in enumerate(cases):
        path = tmp_path / f"c{k}.wav"
        sf.write(str(path), data, 16000, subtype=subtype)
        try:
            got = check_audio(path)
        except AudioError as err:
            got = "silent" if "silent" in str(err) else str(err)
        assert got == _full_decode_verdict(path), (k, subtype)
    path = tmp_path / "cut.wav"
    sf.write(str(path), cases[0], 16000, subtype=subtype)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2 + 1 + int(rng.integers(0, 3))])
    assert check_audio(path) == _full_decode_verdict(path)


def test_compressed_files_decoded_to_the_end(speech, tmp_path):
    """A FLAC cut in half opens and starts with sound, yet its second half
    cannot be decoded: check_audio reads it to the end and refuses it."""
    path = tmp_path / "cut.flac"
    sf.write(str(path), np.tile(speech, 4), 16000)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    assert sf.info(str(path)).frames == 4 * len(speech)
    with pytest.raises(AudioError, match="cannot read") as err:
        check_audio(path)
    assert str(path) in str(err.value)
