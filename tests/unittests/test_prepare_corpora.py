"""Several corpora prepared together (``data_folder`` as a list).

Real speech: a tree of symlinks to so762 FLAC files and one to dspspeech
WAV files whose speaker folders carry the same names (the first so762
speaker names), so a merge of two corpora's ``0001`` would show. Every
expectation is computed here from the trees, the seed's permutations
and pair counts, not read back from the code under test.
"""

import os
import re
import shutil

import numpy as np
import pytest
from speechbrain.dataio.dataio import load_data_csv

from dampit.dataio.preparation import DataPreparationError
from dampit.dataio.prepare_folder import prepare_folder
from dampit.dataio.prepared import OPTS_FILE
from dampit.dataio.trials import read_trials, speaker_of

N_SO, N_DSP, N_UTT = 10, 6, 6


def _link_tree(root, sources):
    """``root/<speaker>/<file>`` symlinks; returns ``{speaker: [stems]}``."""
    tree = {}
    for spk, files in sources.items():
        os.makedirs(root / spk)
        for src in files:
            os.symlink(src, root / spk / os.path.basename(src))
        tree[spk] = sorted(
            os.path.splitext(os.path.basename(f))[0] for f in files
        )
    return tree


@pytest.fixture(scope="module")
def corpora(shared_data, tmp_path_factory):
    """``(so762 folder, dspspeech folder, {corpus: {speaker: [stems]}})``."""
    base = tmp_path_factory.mktemp("corpora")
    so_src = shared_data / "so762"
    so_spk = sorted(d.name for d in so_src.iterdir() if d.is_dir())[:N_SO]
    so_files = {
        s: sorted(str(p) for p in (so_src / s).glob("*.flac"))[:N_UTT]
        for s in so_spk
    }
    dsp_src = shared_data / "dspspeech"
    dsp_spk = sorted(d.name for d in dsp_src.iterdir() if d.is_dir())[:N_DSP]
    dsp_files = {  # renamed as so762's first speakers: the same names
        name: sorted(str(p) for p in (dsp_src / s).glob("*.wav"))[:N_UTT]
        for name, s in zip(so_spk, dsp_spk)
    }
    so, dsp = base / "so762", base / "dspspeech"
    trees = {
        "so762": _link_tree(so, so_files),
        "dspspeech": _link_tree(dsp, dsp_files),
    }
    return so, dsp, trees


def _rows(res, name):
    """The rows of a manifest as SpeechBrain reads them, each with its ID."""
    rows = load_data_csv(res[f"{name}_csv"])
    return [{"ID": i, **r} for i, r in rows.items()]


def _expected_fold(speakers, seed, n_folds, fold):
    perm = np.random.default_rng(seed).permutation(len(speakers))
    return sorted(speakers[k] for k in np.array_split(perm, n_folds)[fold])


def _target_pairs(ids_by_spk):
    return sum(len(v) * (len(v) - 1) // 2 for v in ids_by_spk.values())


def test_ids_and_speakers_are_namespaced_by_corpus(corpora, tmp_path):
    so, dsp, trees = corpora
    res = prepare_folder([so, dsp], tmp_path / "p", n_test_speakers=4, seed=3)
    rows = [r for n in ("train", "dev", "test") for r in _rows(res, n)]
    want = {
        f"{c}:{s}/{u}"
        for c, t in trees.items()
        for s, us in t.items()
        for u in us
    }
    assert {r["ID"] for r in rows} == want and len(rows) == len(want)
    for r in rows:
        speaker, stem = r["ID"].split("/")
        assert r["spk_id"] == speaker == speaker_of(r["ID"])
        corpus, spk = speaker.split(":")
        folder = so if corpus == "so762" else dsp
        ext = ".flac" if corpus == "so762" else ".wav"
        assert r["wav"] == os.path.join(folder, spk, stem + ext)
        assert os.path.samefile(r["wav"], folder / spk / (stem + ext))
    speakers = sorted({r["spk_id"] for r in rows})
    assert len(speakers) == N_SO + N_DSP  # two corpora's "0001" stay apart
    assert {s.split(":")[1] for s in speakers} == set(trees["so762"])
    # pooled: the seed's permutation of all 16 speakers, first 4 test
    perm = np.random.default_rng(3).permutation(len(speakers))
    test_spk = sorted(speakers[k] for k in perm[:4])
    assert res["test_speakers"] == test_spk
    assert sorted({r["spk_id"] for r in _rows(res, "test")}) == test_spk
    test_ids = {r["ID"] for r in _rows(res, "test")}
    trials = read_trials(res["trials"])
    by_spk = {
        s: [i for i in test_ids if i.startswith(s + "/")] for s in test_spk
    }
    assert sum(t[0] for t in trials) == _target_pairs(by_spk)
    for label, a, b in trials:
        assert {a, b} <= test_ids
        assert label == (a.split("/")[0] == b.split("/")[0])
    assert res["corpora"] == {"so762": str(so), "dspspeech": str(dsp)}


def test_kfold_over_one_corpus_with_the_other_always_training(
    corpora, tmp_path
):
    so, dsp, trees = corpora
    so_spk = [f"so762:{s}" for s in sorted(trees["so762"])]
    dsp_spk = {f"dspspeech:{s}" for s in trees["dspspeech"]}
    seen = []
    for fold in range(5):
        res = prepare_folder(
            [so, dsp],
            tmp_path / f"f{fold}",
            n_folds=5,
            fold=fold,
            seed=7,
            test_corpora=["so762"],
        )
        want = _expected_fold(so_spk, 7, 5, fold)
        assert res["test_speakers"] == want and len(want) == 2
        train = {r["spk_id"] for n in ("train", "dev") for r in _rows(res, n)}
        assert train == (set(so_spk) - set(want)) | dsp_spk
        test_ids = {r["ID"] for r in _rows(res, "test")}
        by_spk = {
            s: [i for i in test_ids if i.startswith(s + "/")] for s in want
        }
        trials = read_trials(res["trials"])
        assert all(
            a.startswith("so762:") and b.startswith("so762:")
            for _, a, b in trials
        )
        assert sum(t[0] for t in trials) == _target_pairs(by_spk) == 2 * 15
        # the same folds as so762 prepared alone, whose IDs have no prefix
        alone = prepare_folder(
            so, tmp_path / f"a{fold}", n_folds=5, fold=fold, seed=7
        )
        assert ["so762:" + s for s in alone["test_speakers"]] == want
        seen += want
    assert sorted(seen) == so_spk  # the folds cover so762, each speaker once


def test_per_corpus_split_and_trials_within_each_corpus(corpora, tmp_path):
    so, dsp, trees = corpora
    res = prepare_folder(
        [so, dsp],
        tmp_path / "p",
        n_test_speakers=2,
        seed=1,
        test_corpora=["dspspeech", "so762"],
    )
    want = []
    for corpus in ("so762", "dspspeech"):
        own = [f"{corpus}:{s}" for s in sorted(trees[corpus])]
        perm = np.random.default_rng(1).permutation(len(own))
        want += [own[k] for k in perm[:2]]
    assert res["test_speakers"] == sorted(want)
    trials = read_trials(res["trials"])
    assert all(a.split(":")[0] == b.split(":")[0] for _, a, b in trials)
    assert sum(t[0] for t in trials) == 4 * N_UTT * (N_UTT - 1) // 2
    for corpus in ("so762", "dspspeech"):  # as many non-targets per corpus
        mine = [t for t in trials if t[1].startswith(corpus + ":")]
        assert sum(1 - t[0] for t in mine) == sum(t[0] for t in mine) == 30


def test_one_folder_keeps_its_ids_and_split(corpora, tmp_path):
    so, _, trees = corpora
    plain = prepare_folder(so, tmp_path / "a", n_test_speakers=3)
    listed = prepare_folder([so], tmp_path / "b", n_test_speakers=3)
    prepare_folder(  # one corpus named as the test corpus: the same
        so, tmp_path / "c", n_test_speakers=3, test_corpora=["so762"]
    )
    want = {f"{s}/{u}" for s, us in trees["so762"].items() for u in us}
    ids = {r["ID"] for n in ("train", "dev", "test") for r in _rows(plain, n)}
    assert ids == want
    for name in ("train.csv", "dev.csv", "test.csv", "trials.txt"):
        text = (tmp_path / "a" / name).read_bytes()
        assert (tmp_path / "b" / name).read_bytes() == text
        assert (tmp_path / "c" / name).read_bytes() == text
    assert "corpora" not in plain or plain["corpora"] is None
    assert listed["test_speakers"] == plain["test_speakers"]


def test_same_base_names_get_distinct_corpus_names(corpora, tmp_path):
    so, _, trees = corpora
    a, b = tmp_path / "x" / "data", tmp_path / "y" / "data"
    for root, spk in (
        (a, sorted(trees["so762"])[:4]),
        (b, sorted(trees["so762"])[4:8]),
    ):
        for s in spk:
            shutil.copytree(so / s, root / s, symlinks=True)
    res = prepare_folder([a, b], tmp_path / "p", n_test_speakers=2)
    spk = {r["spk_id"] for n in ("train", "dev", "test") for r in _rows(res, n)}
    assert {s.split(":")[0] for s in spk} == {"data", "data-2"}
    assert res["corpora"] == {"data": str(a), "data-2": str(b)}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(test_corpora=["so"]), "test_corpora=['so']: name one or more of"),
        (dict(test_corpora=[]), "test_corpora=[]: name one or more of"),
        (dict(twice=True), "lists"),
        (dict(link=True), "twice (links followed"),
    ],
)
def test_bad_corpus_options_refused_before_any_work(
    corpora, tmp_path, kwargs, message
):
    so, dsp, _ = corpora
    folders = [so, dsp, so] if kwargs.pop("twice", False) else [so, dsp]
    if kwargs.pop("link", False):  # one corpus again under another name
        os.symlink(so, tmp_path / "so_again")
        folders = [so, dsp, tmp_path / "so_again"]
    out = tmp_path / "p"
    with pytest.raises(DataPreparationError, match=re.escape(message)) as err:
        prepare_folder(folders, out, **kwargs)
    assert "\n" not in str(err.value) and not out.exists()


def test_a_copied_or_moved_prepared_folder_reads_its_own_files(
    corpora, tmp_path
):
    so, _, _ = corpora
    first = prepare_folder(so, tmp_path / "run" / "prepared", n_test_speakers=3)
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    # the copy's own files, different from the original's from now on
    (tmp_path / "copy" / "prepared" / "trials.txt").write_text("1 a b\n")
    copy = prepare_folder(so, tmp_path / "copy" / "prepared", n_test_speakers=3)
    for key in ("train_csv", "dev_csv", "test_csv", "trials"):
        assert os.path.dirname(copy[key]) == str(tmp_path / "copy" / "prepared")
    assert read_trials(copy["trials"]) == [(1, "a", "b")]
    shutil.move(tmp_path / "copy", tmp_path / "moved")
    moved = prepare_folder(
        so, tmp_path / "moved" / "prepared", n_test_speakers=3
    )
    for key in ("train_csv", "dev_csv", "test_csv", "trials"):
        assert os.path.isfile(moved[key])
        assert moved[key].startswith(str(tmp_path / "moved"))
    assert moved["n_train"] == first["n_train"]
    assert (tmp_path / "moved" / "prepared" / OPTS_FILE).is_file()


def test_a_path_speechbrain_would_read_as_a_variable_is_refused(
    corpora, tmp_path
):
    so, _, trees = corpora
    spk = sorted(trees["so762"])[:4]
    data = tmp_path / "cost$5"
    for s in spk:
        shutil.copytree(so / s, data / s, symlinks=True)
    # SpeechBrain's CSV reader takes "$5" for a variable: the CSV breaks
    csv_path = tmp_path / "x.csv"
    csv_path.write_text(f"ID,wav\na,{data}/a.wav\n")
    with pytest.raises(KeyError):
        load_data_csv(str(csv_path))
    out = tmp_path / "p"
    with pytest.raises(DataPreparationError, match=re.escape(str(data))):
        prepare_folder(data, out, n_test_speakers=2)
    assert not out.exists()
