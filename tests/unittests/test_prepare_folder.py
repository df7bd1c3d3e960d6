"""prepare_folder: speaker-disjoint CSVs and trial lists for any
``<speaker>/**/<utt>.wav|flac`` tree (tiny generated trees, and dspspeech)."""

import itertools
import os

import numpy as np
import pytest
import soundfile as sf

from dampit.dataio.audio import load_audio
from dampit.dataio.prepare_folder import (
    BAD_FILES,
    CSV_FIELDS,
    DataPreparationError,
    prepare_folder,
    read_csv,
    scan_audio_tree,
)
from dampit.dataio.trials import read_trials


def _write_wav(path, n, sr=16000, fmt="WAV", seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, 0.1 * rng.standard_normal(n), sr, format=fmt)


def make_tree(root, n_spk=6, n_utt=5, nested=False):
    """Speakers s0..; utterance u of speaker s has 800 + 160*u + 16*s
    samples (distinct, known lengths)."""
    lengths = {}
    for s in range(n_spk):
        for u in range(n_utt):
            if nested:  # LibriSpeech-like: spk/chapter/utt.flac
                rel = f"s{s}/ch{u % 2}/s{s}-{u}.flac"
                fmt = "FLAC"
            else:
                rel = f"s{s}/s{s}-{u}.wav"
                fmt = "WAV"
            n = 800 + 160 * u + 16 * s
            _write_wav(os.path.join(root, rel), n, fmt=fmt, seed=s * 100 + u)
            lengths[os.path.splitext(rel)[0]] = n
    return lengths


def _ids(rows):
    return [r["ID"] for r in rows]


def _spk(rows):
    return {r["spk_id"] for r in rows}


def test_csvs_trials_and_disjoint_split(tmp_path):
    data, out = tmp_path / "data", tmp_path / "prep"
    lengths = make_tree(data, n_spk=10, n_utt=10)
    (data / "README.md").write_text("not audio")
    _write_wav(str(data / "stray.wav"), 100)  # no speaker folder: ignored
    res = prepare_folder(data, out, n_test_speakers=3, dev_fraction=0.2)
    train, dev, test = (
        read_csv(out / f"{k}.csv") for k in ("train", "dev", "test")
    )
    with open(out / "train.csv") as f:
        assert f.readline().strip() == ",".join(CSV_FIELDS)
    # Every file lands in exactly one CSV, with its own length.
    all_rows = train + dev + test
    assert sorted(_ids(all_rows)) == sorted(lengths)
    for r in all_rows:
        n = lengths[r["ID"]]
        assert (int(r["start"]), int(r["stop"])) == (0, n)
        assert float(r["duration"]) == pytest.approx(n / 16000, abs=1e-4)
        assert r["spk_id"] == r["ID"].split("/")[0]
        assert os.path.isabs(r["wav"]) and sf.info(r["wav"]).frames == n
    # Speaker-disjoint test set; dev holds out 2 of each training speaker.
    assert len(_spk(test)) == 3 and not _spk(test) & _spk(train)
    assert _spk(dev) == _spk(train) and len(_spk(train)) == 7
    for s in _spk(dev):
        assert sum(r["spk_id"] == s for r in dev) == 2
    assert sorted(res["test_speakers"]) == sorted(_spk(test))
    # Trials: all same-speaker pairs of test utterances, as many others.
    trials = read_trials(res["trials"], known_ids=set(_ids(test)))
    tgt = {(e, t) for lab, e, t in trials if lab == 1}
    non = [(e, t) for lab, e, t in trials if lab == 0]
    ids = sorted(_ids(test))
    want = {
        (a, b)
        for a, b in itertools.combinations(ids, 2)
        if a.split("/")[0] == b.split("/")[0]
    }
    assert tgt == want and len(want) == 3 * 45
    assert len(non) == len(tgt) == len(set(non))
    assert all(e.split("/")[0] != t.split("/")[0] for e, t in non)
    assert (res["n_train"], res["n_dev"], res["n_test_utts"]) == (56, 14, 30)
    assert res["n_trials"] == 270


def test_deterministic_and_seed_dependent(tmp_path):
    data = tmp_path / "data"
    make_tree(data, n_spk=8, n_utt=4)
    names = ("train.csv", "dev.csv", "test.csv", "trials.txt")

    def run(seed, out, workers=1):
        prepare_folder(
            data,
            tmp_path / out,
            seed=seed,
            dev_fraction=0.25,
            num_workers=workers,
        )
        return [(tmp_path / out / n).read_bytes() for n in names]

    first = run(0, "a")
    assert run(0, "b", workers=3) == first  # threaded header reads
    test_spk = set()
    for s in range(4):
        run(s, f"s{s}")
        rows = read_csv(tmp_path / f"s{s}" / "test.csv")
        test_spk.add(frozenset(r["spk_id"] for r in rows))
    assert len(test_spk) > 1


def test_default_split_sizes(tmp_path):
    data = tmp_path / "data"
    make_tree(data, n_spk=10, n_utt=2)
    res = prepare_folder(data, tmp_path / "p")
    assert (res["n_train_speakers"], res["n_test_speakers"]) == (8, 2)
    res = prepare_folder(data, tmp_path / "q", test_fraction=0.5)
    assert res["n_test_speakers"] == 5


def test_nested_flac_tree(tmp_path):
    data = tmp_path / "libri"
    lengths = make_tree(data, n_spk=4, n_utt=4, nested=True)
    res = prepare_folder(data, tmp_path / "p", n_test_speakers=2)
    rows = read_csv(res["train_csv"]) + read_csv(res["dev_csv"])
    rows += read_csv(res["test_csv"])
    assert sorted(_ids(rows)) == sorted(lengths)
    assert "s0/ch1/s0-1" in _ids(rows)
    assert {r["spk_id"] for r in rows} == {"s0", "s1", "s2", "s3"}
    # Extension filter: nothing to find when only .wav is asked for.
    with pytest.raises(DataPreparationError, match="no audio files"):
        prepare_folder(data, tmp_path / "w", exts=(".wav",))


def test_bad_files_all_listed_or_skipped(tmp_path):
    data, out = tmp_path / "data", tmp_path / "prep"
    make_tree(data, n_spk=4, n_utt=3)
    corrupt = data / "s1" / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 10)
    empty = data / "s2" / "empty.wav"
    empty.write_bytes(b"")
    noframes = data / "s3" / "noframes.wav"
    sf.write(str(noframes), np.zeros(0), 16000)
    with pytest.raises(DataPreparationError) as err:
        prepare_folder(data, out, n_test_speakers=2)
    msg = str(err.value)
    assert "3 missing or corrupt audio file(s)" in msg
    for p in (corrupt, empty, noframes):
        assert str(p) in msg
    assert "skip_bad=True" in msg
    listed = (out / BAD_FILES).read_text()
    assert str(corrupt) in listed and str(empty) in listed
    assert not (out / "train.csv").exists()

    with pytest.warns(UserWarning, match="skipping 3 missing or corrupt"):
        res = prepare_folder(data, out, n_test_speakers=2, skip_bad=True)
    ids = []
    for k in ("train_csv", "dev_csv", "test_csv"):
        ids += _ids(read_csv(res[k]))
    assert len(ids) == 12 and res["n_bad_skipped"] == 3
    assert not {"s1/corrupt", "s2/empty", "s3/noframes"} & set(ids)


def test_full_check_catches_silent_file(tmp_path):
    data = tmp_path / "data"
    make_tree(data, n_spk=3, n_utt=2)
    sf.write(str(data / "s0" / "silent.wav"), np.zeros(800), 16000)
    prepare_folder(data, tmp_path / "a", n_test_speakers=2)  # header: fine
    with pytest.raises(DataPreparationError, match="silent"):
        prepare_folder(data, tmp_path / "b", n_test_speakers=2, full_check=True)


def test_duplicate_ids_named(tmp_path):
    data = tmp_path / "data"
    make_tree(data, n_spk=3, n_utt=2)
    _write_wav(str(data / "s0" / "s0-1.flac"), 400, fmt="FLAC")
    _write_wav(str(data / "s2" / "s2-0.flac"), 400, fmt="FLAC")
    with pytest.raises(DataPreparationError) as err:
        prepare_folder(data, tmp_path / "p", n_test_speakers=2)
    assert "2 duplicate utterance ID(s): s0/s0-1, s2/s2-0" in str(err.value)


def test_argument_and_folder_errors(tmp_path):
    data = tmp_path / "data"
    make_tree(data, n_spk=3, n_utt=2)
    with pytest.raises(DataPreparationError, match="3 speaker"):
        prepare_folder(data, tmp_path / "p", n_test_speakers=3)
    with pytest.raises(DataPreparationError, match="3 speaker"):
        prepare_folder(data, tmp_path / "p", n_test_speakers=1)
    with pytest.raises(ValueError, match="test_fraction"):
        prepare_folder(data, tmp_path / "p", test_fraction=1.5)
    with pytest.raises(DataPreparationError, match="data folder not found"):
        prepare_folder(tmp_path / "missing", tmp_path / "p")


def test_skip_if_done_and_reprepare_on_new_options(tmp_path):
    data, out = tmp_path / "data", tmp_path / "prep"
    make_tree(data, n_spk=4, n_utt=3)
    first = prepare_folder(data, out, n_test_speakers=2)
    mtime = os.path.getmtime(out / "train.csv")
    os.remove(data / "s0" / "s0-0.wav")  # not noticed: nothing is rescanned
    assert prepare_folder(data, out, n_test_speakers=2) == first
    assert os.path.getmtime(out / "train.csv") == mtime
    # Other options (or skip_if_done=False) prepare again.
    second = prepare_folder(data, out, n_test_speakers=2, seed=1)
    total = second["n_train"] + second["n_dev"] + second["n_test_utts"]
    assert total == 11


def test_seg_dur_chunks_training_files_only(tmp_path):
    data = tmp_path / "data"
    for s in range(3):
        _write_wav(str(data / f"s{s}" / "long.wav"), 16000 * 2 + 4000)
        _write_wav(str(data / f"s{s}" / "short.wav"), 8000)
    res = prepare_folder(
        data, tmp_path / "p", n_test_speakers=2, dev_fraction=0, seg_dur=1.0
    )
    train = read_csv(res["train_csv"])
    long_rows = [r for r in train if "/long_" in r["ID"]]
    assert [(int(r["start"]), int(r["stop"])) for r in long_rows] == [
        (0, 16000),
        (16000, 32000),
    ]
    assert long_rows[0]["ID"].endswith("long_0_16000")
    short = [r for r in train if "short" in r["ID"]]
    assert [(int(r["start"]), int(r["stop"])) for r in short] == [(0, 8000)]
    test = read_csv(res["test_csv"])
    assert all("_" not in r["ID"] for r in test) and len(test) == 4


def test_scan_audio_tree_skips_hidden_and_root_files(tmp_path):
    for rel in [
        "a/x.wav",
        "a/.hidden.wav",
        ".cache/b/y.wav",
        "root.wav",
        "b/c/z.FLAC",
    ]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    assert scan_audio_tree(tmp_path) == ["a/x.wav", "b/c/z.FLAC"]
    assert scan_audio_tree(tmp_path, min_depth=1) == [
        "a/x.wav",
        "b/c/z.FLAC",
        "root.wav",
    ]


def test_dspspeech_defaults_and_speechbrain_loading(shared_data, tmp_path):
    import speechbrain as sb
    import torch

    res = prepare_folder(shared_data / "dspspeech", tmp_path / "dsp")
    assert (res["n_train_speakers"], res["n_test_speakers"]) == (20, 5)
    assert (res["n_train"], res["n_dev"], res["n_test_utts"]) == (720, 80, 200)
    assert (res["n_target"], res["n_nontarget"]) == (3900, 3900)
    # The manifest at the data root agrees on every duration.
    manifest = {}
    with open(shared_data / "dspspeech" / "manifest.csv") as f:
        next(f)
        for line in f:
            path, spk, dur = line.strip().split(",")
            manifest[os.path.splitext(path)[0]] = (spk, float(dur))
    rows = read_csv(res["train_csv"]) + read_csv(res["test_csv"])
    for r in rows:
        spk, dur = manifest[r["ID"]]
        assert r["spk_id"] == spk
        assert float(r["duration"]) == pytest.approx(dur, abs=1e-3)
    # SpeechBrain reads the CSV; start/stop select the samples.
    data = sb.dataio.dataio.load_data_csv(res["test_csv"])
    assert len(data) == 200
    item = data[sorted(data)[3]]
    assert isinstance(item["duration"], float)
    wav = sb.dataio.dataio.read_audio(
        {
            "file": item["wav"],
            "start": int(item["start"]),
            "stop": int(item["stop"]),
        }
    )
    ours = load_audio(
        item["wav"], start=int(item["start"]), stop=int(item["stop"])
    )
    assert wav.shape[0] == int(item["stop"]) - int(item["start"])
    assert torch.allclose(wav, ours, atol=1e-6)
