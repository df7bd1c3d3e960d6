"""prepare_folder: speaker-disjoint CSVs and trial lists for any
``<speaker>/**/<utt>.wav|flac`` tree (tiny generated trees, and dspspeech)."""

import itertools
import json
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
from speechbrain.dataio.dataio import load_data_csv

from dampit.cli.common import list_audio_inputs
from dampit.dataio import preparation
from dampit.dataio.audio import load_audio, read_crop
from dampit.dataio.preparation import DataPreparationError, scan_audio_tree
from dampit.dataio.prepare_folder import prepare_folder
from dampit.dataio.prepared import (
    BAD_FILES,
    CSV_FIELDS,
    OPTS_FILE,
    PreparedFolderError,
)
from dampit.dataio.trials import read_trials, speaker_of


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


def csv_rows(path):
    """The rows of a manifest as SpeechBrain reads them, each with its ID."""
    return [{"ID": i, **r} for i, r in load_data_csv(str(path)).items()]


def _ids(rows):
    return [r["ID"] for r in rows]


def _spk(rows):
    return {r["spk_id"] for r in rows}


def test_csvs_trials_and_disjoint_split(tmp_path):
    data, out = tmp_path / "data", tmp_path / "prep"
    lengths = make_tree(data, n_spk=10, n_utt=10)
    (data / "README.md").write_text("not audio")
    _write_wav(str(data / "stray.wav"), 1000)  # no speaker folder: ignored
    res = prepare_folder(data, out, n_test_speakers=3)
    train, dev, test = (
        csv_rows(out / f"{k}.csv") for k in ("train", "dev", "test")
    )
    with open(out / "train.csv") as f:
        assert f.readline().strip() == ",".join(CSV_FIELDS)
    # Every file lands in exactly one CSV, with its own length.
    all_rows = train + dev + test
    assert sorted(_ids(all_rows)) == sorted(lengths)
    for r in all_rows:
        n = lengths[r["ID"]]
        assert (int(r["start"]), int(r["stop"])) == (0, n)
        assert r["duration"] == pytest.approx(n / 16000, abs=1e-4)
        assert r["spk_id"] == r["ID"].split("/")[0]
        assert os.path.isabs(r["wav"]) and sf.info(r["wav"]).frames == n
    # Speaker-disjoint test set; dev holds out 1 of each speaker's 10.
    assert len(_spk(test)) == 3 and not _spk(test) & _spk(train)
    assert _spk(dev) == _spk(train) and len(_spk(train)) == 7
    for s in _spk(dev):
        assert sum(r["spk_id"] == s for r in dev) == 1
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
    assert (res["n_train"], res["n_dev"], res["n_test_utts"]) == (63, 7, 30)
    assert res["n_trials"] == 270


def test_deterministic_and_seed_dependent(tmp_path):
    data = tmp_path / "data"
    make_tree(data, n_spk=8, n_utt=6)
    names = ("train.csv", "dev.csv", "test.csv", "trials.txt")

    def run(seed, out):
        prepare_folder(data, tmp_path / out, seed=seed)
        return [(tmp_path / out / n).read_bytes() for n in names]

    first = run(0, "a")
    assert run(0, "b") == first  # threads decode the files in any order
    test_spk = set()
    for s in range(4):
        run(s, f"s{s}")
        rows = csv_rows(tmp_path / f"s{s}" / "test.csv")
        test_spk.add(frozenset(r["spk_id"] for r in rows))
    assert len(test_spk) > 1


def test_default_split_sizes(tmp_path):
    data = tmp_path / "data"
    make_tree(data, n_spk=10, n_utt=6)
    res = prepare_folder(data, tmp_path / "p")
    assert (res["n_train_speakers"], res["n_test_speakers"]) == (8, 2)


def test_nested_flac_tree(tmp_path):
    data = tmp_path / "libri"
    lengths = make_tree(data, n_spk=4, n_utt=6, nested=True)
    res = prepare_folder(data, tmp_path / "p", n_test_speakers=2)
    rows = csv_rows(res["train_csv"]) + csv_rows(res["dev_csv"])
    rows += csv_rows(res["test_csv"])
    assert sorted(_ids(rows)) == sorted(lengths)
    assert "s0/ch1/s0-1" in _ids(rows)
    assert {r["spk_id"] for r in rows} == {"s0", "s1", "s2", "s3"}


def _speech(shared_data):
    """A real dspspeech recording (float64, 16 kHz)."""
    wav, sr = sf.read(str(next((shared_data / "dspspeech").glob("*/*.wav"))))
    assert sr == 16000
    return wav


def test_unusable_files_all_listed_or_skipped(shared_data, tmp_path):
    """What training cannot use is found at preparation, all of it: NaN,
    silent (zeros, a 1e-30 constant), 10 ms, corrupt, empty, no frames.
    Real speech followed by 5 s of digital silence is a valid file, and a
    training crop inside its silence is a normal input."""
    data, out = tmp_path / "data", tmp_path / "prep"
    make_tree(data, n_spk=4, n_utt=6)
    speech = _speech(shared_data)
    tail = data / "s0" / "speech_then_silence.wav"
    sf.write(str(tail), np.r_[speech, np.zeros(5 * 16000)], 16000)
    nan = speech.copy()
    nan[100] = np.nan
    bad = {
        "s1/nan.wav": lambda p: sf.write(p, nan, 16000, subtype="FLOAT"),
        "s1/zeros.wav": lambda p: sf.write(p, np.zeros(16000), 16000),
        "s2/tiny.wav": lambda p: sf.write(
            p, np.full(16000, 1e-30), 16000, subtype="FLOAT"
        ),
        "s2/ten_ms.wav": lambda p: sf.write(p, speech[4000:4160], 16000),
        "s3/corrupt.wav": lambda p: open(p, "wb").write(b"RIFF\x00garbage"),
        "s3/empty.wav": lambda p: open(p, "wb").close(),
        "s3/noframes.wav": lambda p: sf.write(p, np.zeros(0), 16000),
    }
    for rel, write in bad.items():
        write(str(data / rel))
    with pytest.raises(DataPreparationError) as err:
        prepare_folder(data, out, n_test_speakers=2)
    msg = str(err.value)
    assert "\n" not in msg and "7 unusable audio file(s)" in msg
    assert str(data) in msg and "skip_bad_files=True" in msg
    listed = (out / BAD_FILES).read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == sorted(
        str(data / rel) for rel in bad
    )
    assert not (out / "train.csv").exists()

    with pytest.warns(UserWarning, match="skipping 7 unusable"):
        res = prepare_folder(data, out, n_test_speakers=2, skip_bad=True)
    rows = []
    for k in ("train_csv", "dev_csv", "test_csv"):
        rows += csv_rows(res[k])
    assert len(rows) == 25 and res["n_bad_skipped"] == 7
    assert "s0/speech_then_silence" in _ids(rows)
    # Every kept file loads whole, and a crop inside the silence loads.
    for r in rows:
        assert load_audio(r["wav"]).numel() == int(r["stop"])
    n = len(speech)
    crop = read_crop(str(tail), 16000, start=n + 8000, stop=n + 5 * 16000)
    assert crop.shape == (16000,) and not crop.any()

    # Without the bad files, a new preparation leaves no stale listing.
    for rel in bad:
        os.remove(data / rel)
    res = prepare_folder(data, out, n_test_speakers=2, seed=1)
    assert res["n_bad_skipped"] == 0
    assert (out / BAD_FILES).read_text() == ""


def test_duplicate_ids_named(tmp_path):
    data = tmp_path / "data"
    make_tree(data, n_spk=3, n_utt=2)
    _write_wav(str(data / "s0" / "s0-1.flac"), 400, fmt="FLAC")
    _write_wav(str(data / "s2" / "s2-0.flac"), 400, fmt="FLAC")
    with pytest.raises(DataPreparationError) as err:
        prepare_folder(data, tmp_path / "p", n_test_speakers=2)
    assert "2 duplicate utterance ID(s): s0/s0-1, s2/s2-0" in str(err.value)


def _tree(root, utts_per_speaker):
    for s, n in enumerate(utts_per_speaker):
        for u in range(n):
            _write_wav(str(root / f"s{s}" / f"u{u}.wav"), 800, seed=u)
    return root


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing", "data folder not found"),
        ("empty", "no audio files"),
        ("flat", "no <speaker>/ sub-folders"),
        ("one_speaker", "1 speaker(s) found"),
        ("too_few_test", "n_test_speakers=1"),
        ("too_many_test", "n_test_speakers=5 must be at least 2 and at most 4"),
        ("no_one_left", "1 training speaker(s) left by the test speakers"),
        ("one_utt_each", "dev.csv would be empty"),
        ("fewer_than_P", "4 training speaker(s) with 2 or more"),
    ],
)
def test_data_errors_are_one_line_and_write_nothing(case, match, tmp_path):
    """Each bad training folder: one line naming the folder, raised before
    anything is written; an earlier preparation in the folder is kept."""
    data, out = tmp_path / "data", tmp_path / "prep"
    old = prepare_folder(_tree(tmp_path / "ok", [6] * 6), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    kwargs = {}
    if case == "empty":
        data.mkdir()
    elif case == "flat":
        _write_wav(str(data / "a.wav"), 800)
    elif case == "one_speaker":
        _tree(data, [6])
    elif case == "too_few_test":
        _tree(data, [6] * 4)
        kwargs = {"n_test_speakers": 1}
    elif case == "too_many_test":
        _tree(data, [6] * 4)
        kwargs = {"n_test_speakers": 5}
    elif case == "no_one_left":
        _tree(data, [6] * 4)
        kwargs = {"n_test_speakers": 3}
    elif case == "one_utt_each":
        _tree(data, [1] * 6)
    elif case == "fewer_than_P":
        _tree(data, [6] * 6)
        kwargs = {"n_test_speakers": 2, "min_speakers": 5}
    with pytest.raises(DataPreparationError, match=re.escape(match)) as err:
        prepare_folder(data, out, **kwargs)
    assert "\n" not in str(err.value) and str(data) in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert prepare_folder(tmp_path / "ok", out) == old


def test_skip_if_done_and_reprepare_on_new_options(tmp_path):
    data, out = tmp_path / "data", tmp_path / "prep"
    make_tree(data, n_spk=4, n_utt=6)
    first = prepare_folder(data, out, n_test_speakers=2)
    mtime = os.path.getmtime(out / "train.csv")
    assert prepare_folder(data, out, n_test_speakers=2) == first
    assert os.path.getmtime(out / "train.csv") == mtime
    # A file removed since: the data are prepared again, without it.
    os.remove(data / "s0" / "s0-0.wav")
    again = prepare_folder(data, out, n_test_speakers=2)
    total = again["n_train"] + again["n_dev"] + again["n_test_utts"]
    assert total == 23
    csvs = [(out / f"{n}.csv").read_text() for n in ("train", "dev", "test")]
    assert not any("s0-0" in text for text in csvs)
    # Other options prepare again.
    second = prepare_folder(data, out, n_test_speakers=2, seed=1)
    total = second["n_train"] + second["n_dev"] + second["n_test_utts"]
    assert total == 23


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


def _copied_speakers(shared_data, root, names):
    """Two real dspspeech files for each of ``names`` under ``root``."""
    speakers = sorted(p for p in (shared_data / "dspspeech").iterdir())
    for name, spk in zip(names, [p for p in speakers if p.is_dir()]):
        (root / name).mkdir(parents=True)
        for f in sorted(spk.glob("*.wav"))[:2]:
            shutil.copy(f, root / name / f.name)
    return root


def test_a_folder_reached_twice_is_refused(shared_data, tmp_path):
    """A link loop (``alice/up -> ..``) or one folder linked twice would
    list its files twice: one line naming both paths, from the scan and
    from prepare_folder, nothing written; a linked folder reached once is
    scanned like any other."""
    data = _copied_speakers(shared_data, tmp_path / "loop", ["alice", "bob"])
    elsewhere = _copied_speakers(shared_data, tmp_path / "kept", ["carol"])
    (data / "carol").symlink_to(elsewhere / "carol")
    files = sorted(
        f"{s}/{f.name}"
        for s in ("alice", "bob", "carol")
        for f in (data / s).iterdir()
    )
    assert scan_audio_tree(data) == files
    assert [i for i, _ in list_audio_inputs([str(data)])] == [
        os.path.splitext(f)[0] for f in files
    ]
    out = tmp_path / "prep"
    for link, target, other in [
        (data / "alice" / "up", "..", data),
        (data / "bob" / "again", elsewhere / "carol", data / "carol"),
    ]:
        link.symlink_to(target)
        with pytest.raises(DataPreparationError) as err:
            scan_audio_tree(data)
        msg = str(err.value)
        assert "\n" not in msg and "one folder" in msg, msg
        assert {str(link), str(other)} == set(
            msg.split(" are one folder")[0].split(" and ")
        )
        with pytest.raises(DataPreparationError, match="one folder"):
            prepare_folder(data, out)
        assert not out.exists()
        link.unlink()


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
    rows = csv_rows(res["train_csv"]) + csv_rows(res["test_csv"])
    for r in rows:
        spk, dur = manifest[r["ID"]]
        assert r["spk_id"] == spk
        assert r["duration"] == pytest.approx(dur, abs=1e-3)
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


@pytest.mark.parametrize("folds", [{}, {"n_folds": 3, "fold": 2}])
def test_valid_speakers_disjoint_from_train_and_test(tmp_path, folds):
    """n_valid_speakers: dev.csv is every utterance of speakers seen
    neither in train.csv nor in the test set; all files are used once."""
    data, out = tmp_path / "data", tmp_path / "prep"
    lengths = make_tree(data, n_spk=10, n_utt=6)
    res = prepare_folder(
        data, out, n_test_speakers=2, n_valid_speakers=3, **folds
    )
    train, dev, test = (
        csv_rows(out / f"{k}.csv") for k in ("train", "dev", "test")
    )
    assert _spk(dev) == set(res["valid_speakers"]) and len(_spk(dev)) == 3
    assert not _spk(dev) & _spk(train) and not _spk(dev) & _spk(test)
    assert not _spk(train) & _spk(test)
    n_test = 3 if folds else 2  # 10 speakers in 3 folds: 4, 3, 3
    assert len(_spk(test)) == n_test == res["n_test_speakers"]
    assert res["n_train_speakers"] == len(_spk(train)) == 10 - 3 - n_test
    assert len(dev) == 3 * 6 and len(train) == (10 - 3 - n_test) * 6
    assert sorted(_ids(train + dev + test)) == sorted(lengths)
    # The test split is the one without validation speakers.
    plain = prepare_folder(data, tmp_path / "plain", n_test_speakers=2, **folds)
    assert plain["test_speakers"] == res["test_speakers"]
    assert plain["valid_speakers"] == []


def test_one_id_for_a_file_in_preparation_trials_and_cli(tmp_path):
    """The CSV ID of a file (nested folders, dots in names) is the ID the
    trial reader and the command-line tools give its path."""
    data = tmp_path / "data"
    rels = []
    for s in range(4):
        for u in range(6):
            rel = f"sp.{s}/take.{u % 2}/utt.v{u}.{'WAV' if u else 'flac'}"
            fmt = "WAV" if u else "FLAC"
            _write_wav(str(data / rel), 1200, fmt=fmt, seed=10 * s + u)
            rels.append(rel)
    res = prepare_folder(data, tmp_path / "p", n_test_speakers=2)
    rows = [
        r for k in ("train", "dev", "test") for r in csv_rows(res[f"{k}_csv"])
    ]
    csv_id = {os.path.relpath(r["wav"], data): r["ID"] for r in rows}
    assert sorted(csv_id) == sorted(rels)
    assert csv_id["sp.0/take.1/utt.v1.WAV"] == "sp.0/take.1/utt.v1"
    for r in rows:
        assert r["spk_id"] == speaker_of(r["ID"]) == r["ID"].split("/")[0]
    # A trial list naming the files by path (./, backslashes, extensions).
    a, b = rels[0], rels[6]
    lst = tmp_path / "trials.txt"
    lst.write_text(f"0 ./{a} {b.replace('/', chr(92))}\n1 {a} {rels[1]}\n")
    got = read_trials(lst, known_ids=set(csv_id.values()))
    assert got == [(0, csv_id[a], csv_id[b]), (1, csv_id[a], csv_id[rels[1]])]
    cli = dict(list_audio_inputs([str(data)]))
    assert {os.path.relpath(p, data): i for i, p in cli.items()} == csv_id


def _real_tree(shared_data, root, names, n_utt=6):
    """Speaker folders ``names``, each with ``n_utt`` dspspeech recordings
    of one real speaker (copied, never linked into the repository)."""
    sources = sorted((shared_data / "dspspeech").iterdir())
    sources = [s for s in sources if s.is_dir()]
    for name, src in zip(names, sources):
        (root / name).mkdir(parents=True)
        for wav in sorted(src.glob("*.wav"))[:n_utt]:
            shutil.copyfile(wav, root / name / wav.name)
    return root


@pytest.mark.parametrize("name", ["s 0", "s\t0", "#s0"])
def test_id_trial_lists_cannot_hold_refused_at_the_scan(
    name, shared_data, tmp_path, monkeypatch
):
    """A speaker folder whose name would break trial lists or score files
    (white space, a leading '#') is refused by the scan, whatever the seed
    (with seed 0 the speaker only trains, with seed 1 it is tested): one
    line naming the path, before any file is checked or output written."""
    data, out = tmp_path / "data", tmp_path / "prep"
    _real_tree(shared_data, data, [name, "s1", "s2", "s3", "s4"])
    old = prepare_folder(_tree(tmp_path / "ok", [6] * 6), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    checked, check_audio = [], preparation.check_audio

    def spy(path):
        checked.append(path)
        return check_audio(path)

    monkeypatch.setattr(preparation, "check_audio", spy)
    for seed in (0, 1, 0):
        with pytest.raises(DataPreparationError) as err:
            prepare_folder(data, out, seed=seed)
        msg = str(err.value)
        assert "\n" not in msg and str(data / name) in msg
        assert checked == []
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    assert prepare_folder(tmp_path / "ok", out) == old


def test_failed_write_leaves_no_matching_options(
    shared_data, tmp_path, monkeypatch
):
    """A preparation that fails once it started replacing the outputs (a
    full disk while the trial list is written) leaves no options record
    that matches: the earlier options prepare again, and the summary they
    return describes the files in the folder."""
    data, out = tmp_path / "data", tmp_path / "prep"
    _real_tree(shared_data, data, ["s0", "s1", "s2", "s3", "s4"])
    first = prepare_folder(data, out, seed=0)
    assert first["test_speakers"] == ["s2", "s4"]

    def full_disk(path, trials):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("dampit.dataio.prepared.write_trials", full_disk)
    with pytest.raises(OSError, match="No space left"):
        prepare_folder(data, out, seed=1)  # test speakers s0 and s4
    assert _spk(csv_rows(out / "test.csv")) == {"s0", "s4"}
    monkeypatch.undo()
    again = prepare_folder(data, out, seed=0)
    assert again == first
    assert _spk(csv_rows(out / "test.csv")) == {"s2", "s4"}
    assert {
        speaker_of(u) for t in read_trials(out / "trials.txt") for u in t[1:]
    } == {"s2", "s4"}


def test_keep_refuses_another_split_before_replacing_anything(tmp_path):
    """``keep`` (a run trains on the folder): another fold is refused in
    one line naming the option, nothing replaced; a folder whose
    options lack a key this version records (``files``) is prepared
    again to the same split."""
    data, prep = tmp_path / "data", tmp_path / "prep"
    make_tree(data, n_spk=10, n_utt=6)
    prepare_folder(data, prep, n_folds=5, fold=0)
    before = {p.name: p.read_bytes() for p in prep.iterdir()}
    with pytest.raises(PreparedFolderError, match="other options fold;"):
        prepare_folder(data, prep, n_folds=5, fold=1, keep=True)
    assert {p.name: p.read_bytes() for p in prep.iterdir()} == before
    opts_file = prep / OPTS_FILE
    saved = json.loads(opts_file.read_text())
    del saved["opts"]["files"]  # as an earlier version wrote it
    opts_file.write_text(json.dumps(saved))
    prepare_folder(data, prep, n_folds=5, fold=0, keep=True)
    for name in ("train.csv", "dev.csv", "test.csv", "trials.txt"):
        assert (prep / name).read_bytes() == before[name]
