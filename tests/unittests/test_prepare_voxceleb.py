"""prepare_voxceleb on tiny fake VoxCeleb1/VoxCeleb2 trees of generated
wavs (VoxCeleb2 as fake .m4a files plus their converted wav mirror)."""

import os

import numpy as np
import pytest
import soundfile as sf
from speechbrain.dataio.dataio import load_data_csv

from dampit.dataio.preparation import DataPreparationError
from dampit.dataio.prepare_voxceleb import (
    OFFICIAL_TRIAL_LISTS,
    find_trial_list,
    prepare_voxceleb,
)
from dampit.dataio.trials import TrialListError, read_trials

VOX1_TRAIN = ["id10001", "id10002", "id10003", "id10004"]
VOX1_TEST = ["id10270", "id10271", "id10272"]
VOX2 = ["id00012", "id00015", "id00017"]
VIDEOS = ["vidA_x", "vidB-y"]


def _wav(path, n, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, 0.1 * rng.standard_normal(n), 16000)


def _utts(spk):
    return [f"{spk}/{v}/{u:05d}" for v in VIDEOS for u in (1, 2, 3)]


def make_vox(root, vox2_layout="mirror"):
    """VoxCeleb1 wav/ (train + test speakers), meta/veri_test.txt, and
    VoxCeleb2 dev/aac (.m4a placeholders) with wavs in ``dev/wav`` (mirror),
    beside the m4a files (beside) or not converted (none)."""
    vox1, vox2 = os.path.join(root, "vox1"), os.path.join(root, "vox2")
    lengths = {}
    for k, spk in enumerate(VOX1_TRAIN + VOX1_TEST):
        for j, utt in enumerate(_utts(spk)):
            n = 1600 + 32 * j + 8 * k
            _wav(os.path.join(vox1, "wav", utt + ".wav"), n, k * 10 + j)
            lengths[utt] = n
    for k, spk in enumerate(VOX2):
        for j, utt in enumerate(_utts(spk)):
            m4a = os.path.join(vox2, "dev", "aac", utt + ".m4a")
            os.makedirs(os.path.dirname(m4a), exist_ok=True)
            with open(m4a, "wb") as f:
                f.write(b"\x00\x00\x00\x20ftypM4A ")
            n = 2000 + 32 * j + 8 * k
            lengths[utt] = n
            if vox2_layout == "mirror":
                _wav(os.path.join(vox2, "dev", "wav", utt + ".wav"), n, j)
            elif vox2_layout == "beside":
                _wav(os.path.splitext(m4a)[0] + ".wav", n, j)
    test = [u for s in VOX1_TEST for u in _utts(s)]
    lines = []
    for i, a in enumerate(test):
        for b in test[i + 1 : i + 5]:
            lab = int(a.split("/")[0] == b.split("/")[0])
            lines.append(f"{lab} {a}.wav {b}.wav")
    os.makedirs(os.path.join(vox1, "meta"))
    with open(os.path.join(vox1, "meta", "veri_test.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    # A "cleaned" list: every other trial, at the vox1 root.
    with open(os.path.join(vox1, "veri_test2.txt"), "w") as f:
        f.write("\n".join(lines[::2]) + "\n")
    return vox1, vox2, lengths, lines


@pytest.fixture
def vox(tmp_path):
    return make_vox(str(tmp_path / "data"))


def _rows(res, key):
    """The rows of a manifest as SpeechBrain reads them, each with its ID."""
    rows = load_data_csv(res[f"{key}_csv"])
    return [{"ID": i, **r} for i, r in rows.items()]


def _spk(rows):
    return {r["spk_id"] for r in rows}


def _prep(out, vox1, vox2, **kw):
    with pytest.warns(UserWarning, match="official VoxCeleb1-O"):
        return prepare_voxceleb(out, vox1, vox2, **kw)


def test_train_dev_test_and_trials(vox, tmp_path):
    vox1, vox2, lengths, lines = vox
    res = _prep(tmp_path / "p", vox1, vox2)
    train, dev, test = (_rows(res, k) for k in ("train", "dev", "test"))
    # Test speakers (named by the trial list) only in test.csv.
    assert _spk(test) == set(VOX1_TEST)
    assert _spk(train) == set(VOX1_TRAIN + VOX2) == _spk(dev)
    # One of the 6 utterances of each training speaker is held out.
    for s in _spk(train):
        assert sum(r["spk_id"] == s for r in train) == 5
        assert sum(r["spk_id"] == s for r in dev) == 1
    # IDs are the official relative paths without extension.
    named = {p[:-4] for line in lines for p in line.split()[1:]}
    assert {r["ID"] for r in test} == named
    for r in train + dev + test:
        assert int(r["stop"]) == lengths[r["ID"]] and int(r["start"]) == 0
        assert float(r["duration"]) == pytest.approx(
            lengths[r["ID"]] / 16000, abs=1e-4
        )
        assert os.path.splitext(r["wav"])[0].endswith(r["ID"])
        assert os.path.isfile(r["wav"])
    vox2_rows = [r for r in train if r["spk_id"] in VOX2]
    assert all(f"{os.sep}dev{os.sep}wav{os.sep}" in r["wav"] for r in vox2_rows)
    # The trial list is the official one with IDs, in the same order.
    path = res["trials"]["veri_test"]
    assert os.path.basename(path) == "trials_veri_test.txt"
    written = read_trials(path, known_ids={r["ID"] for r in test}, as_ids=False)
    expected = [
        (int(a), b[:-4], c[:-4]) for a, b, c in (line.split() for line in lines)
    ]
    assert written == expected
    assert res["trial_stats"]["veri_test"]["trials"] == len(lines)
    assert res["n_test_speakers"] == 3


def test_train_sets(vox, tmp_path):
    vox1, vox2, _, _ = vox
    res = _prep(tmp_path / "p", vox1, vox2, train_sets=("vox2",))
    train, dev = _rows(res, "train"), _rows(res, "dev")
    assert _spk(train) == _spk(dev) == set(VOX2)
    assert len(_rows(res, "test")) == 18


def test_several_trial_lists_aliases_and_count_warning(vox, tmp_path):
    vox1, vox2, _, lines = vox
    with pytest.warns(UserWarning) as rec:
        res = prepare_voxceleb(
            tmp_path / "p",
            vox1,
            vox2,
            trial_lists=("veri_test.txt", "veri_test2.txt"),
        )
    msgs = [str(w.message) for w in rec]
    assert any(
        f"{len(lines)} trials, the official VoxCeleb1-O list has 37720" in m
        for m in msgs
    )
    assert any("VoxCeleb1-O cleaned list has 37611" in m for m in msgs)
    assert set(res["trials"]) == {"veri_test", "veri_test2"}
    assert res["trial_stats"]["veri_test2"]["trials"] == len(lines[::2])
    assert OFFICIAL_TRIAL_LISTS["veri_test.txt"] == ("VoxCeleb1-O", 37720)


def test_vox1_only_without_trials_and_wavs_beside_m4a(tmp_path):
    vox1, vox2, _, _ = make_vox(str(tmp_path / "d"), vox2_layout="beside")
    res = prepare_voxceleb(tmp_path / "p", vox1, None, trial_lists=())
    assert _spk(_rows(res, "train")) == set(VOX1_TRAIN + VOX1_TEST)
    assert _rows(res, "test") == [] and res["trials"] == {}
    res = prepare_voxceleb(tmp_path / "q", None, vox2, trial_lists=())
    rows = _rows(res, "train") + _rows(res, "dev")
    assert len(rows) == 18
    assert all(f"{os.sep}aac{os.sep}" in r["wav"] for r in rows)


def test_unconverted_vox2_is_a_clear_error(tmp_path):
    vox1, vox2, _, _ = make_vox(str(tmp_path / "d"), vox2_layout="none")
    with pytest.raises(DataPreparationError) as err:
        prepare_voxceleb(tmp_path / "p", vox1, vox2, trial_lists=())
    msg = str(err.value)
    assert "no VoxCeleb2 wav files" in msg and "convert_voxceleb2.py" in msg
    # With an (empty) wav mirror: the m4a files are named as unconverted.
    os.makedirs(os.path.join(vox2, "dev", "wav"))
    with pytest.raises(
        DataPreparationError, match="convert_voxceleb2.py"
    ) as err:
        prepare_voxceleb(tmp_path / "p", vox1, vox2, trial_lists=())
    assert f"18 m4a files in {os.path.join(vox2, 'dev', 'aac')}" in str(
        err.value
    )


def test_partial_conversion_listed_or_skipped(tmp_path):
    vox1, vox2, _, _ = make_vox(str(tmp_path / "d"))
    gone = os.path.join(vox2, "dev", "wav", "id00015", VIDEOS[1], "00002.wav")
    os.remove(gone)
    with pytest.raises(DataPreparationError) as err:
        prepare_voxceleb(tmp_path / "p", vox1, vox2, trial_lists=())
    msg = str(err.value)
    assert "1 unusable audio file(s)" in msg
    assert "not converted to wav" in msg and "00002.m4a" in msg
    with pytest.warns(UserWarning, match="skipping 1"):
        res = prepare_voxceleb(
            tmp_path / "p", vox1, vox2, trial_lists=(), skip_bad=True
        )
    ids = {r["ID"] for r in _rows(res, "train") + _rows(res, "dev")}
    assert f"id00015/{VIDEOS[1]}/00002" not in ids
    assert len(ids) == 7 * 6 + 3 * 6 - 1  # no trials: all vox1 trains


def test_missing_and_corrupt_files_all_listed(vox, tmp_path):
    vox1, vox2, _, lines = vox
    missing = os.path.join(vox1, "wav", "id10271", VIDEOS[0], "00001.wav")
    os.remove(missing)
    corrupt = os.path.join(vox1, "wav", "id10002", VIDEOS[1], "00002.wav")
    with open(corrupt, "wb") as f:
        f.write(b"not a wav file at all")
    with pytest.raises(DataPreparationError) as err:
        _prep(tmp_path / "p", vox1, vox2)
    msg = str(err.value)
    assert "2 unusable audio file(s)" in msg and "\n" not in msg
    assert missing in msg and "in a trial list" in msg
    assert corrupt in msg
    assert os.path.isfile(tmp_path / "p" / "bad_files.txt")
    # Skipping drops the files and the trials that name them.
    n_drop = sum(
        "id10271/" + VIDEOS[0] + "/00001.wav" in line for line in lines
    )
    with pytest.warns(UserWarning) as rec:
        res = prepare_voxceleb(tmp_path / "q", vox1, vox2, skip_bad=True)
    assert any(
        f"dropped {n_drop} of {len(lines)}" in str(w.message) for w in rec
    )
    assert res["trial_stats"]["veri_test"]["trials"] == len(lines) - n_drop
    ids = {r["ID"] for r in _rows(res, "train") + _rows(res, "test")}
    assert f"id10271/{VIDEOS[0]}/00001" not in ids
    assert f"id10002/{VIDEOS[1]}/00002" not in ids


def test_skip_if_done(vox, tmp_path):
    vox1, vox2, _, _ = vox
    first = _prep(tmp_path / "p", vox1, vox2)
    mtime = os.path.getmtime(tmp_path / "p" / "train.csv")
    assert prepare_voxceleb(tmp_path / "p", vox1, vox2) == first
    assert os.path.getmtime(tmp_path / "p" / "train.csv") == mtime


def test_argument_and_layout_errors(vox, tmp_path):
    vox1, vox2, _, _ = vox
    with pytest.raises(ValueError, match="vox1_folder and/or vox2_folder"):
        prepare_voxceleb(tmp_path / "p")
    with pytest.raises(ValueError, match="give vox1_folder"):
        prepare_voxceleb(tmp_path / "p", None, vox2)
    with pytest.raises(ValueError, match="vox2_folder is None"):
        prepare_voxceleb(tmp_path / "p", vox1, train_sets=("vox2",))
    with pytest.raises(DataPreparationError) as err:
        prepare_voxceleb(
            tmp_path / "p", vox1, trial_lists=("list_test_hard2.txt",)
        )
    msg = str(err.value)
    assert os.path.join(vox1, "meta", "list_test_hard2.txt") in msg
    no_wav = tmp_path / "empty_vox1"
    no_wav.mkdir()
    with pytest.raises(DataPreparationError, match="has no wav/ folder"):
        prepare_voxceleb(tmp_path / "p", str(no_wav), trial_lists=())
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text(
        "1 id10270/a/1.wav id10270/a/2.wav\n1 id10270/a/1.wav\n"
    )
    with pytest.raises(TrialListError, match=f"{bad_list}:2:"):
        prepare_voxceleb(tmp_path / "p", vox1, trial_lists=(str(bad_list),))


def test_find_trial_list_order(vox, tmp_path):
    vox1, _, _, _ = vox
    assert find_trial_list("veri_test.txt", vox1) == os.path.join(
        vox1, "meta", "veri_test.txt"
    )
    assert find_trial_list("veri_test2.txt", vox1) == os.path.join(
        vox1, "veri_test2.txt"
    )
    own = tmp_path / "mine.txt"
    own.write_text("")
    assert find_trial_list(str(own), vox1) == str(own)
