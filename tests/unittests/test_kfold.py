"""Speaker k-fold cross-validation (issue 20): the fold split of
``prepare_folder``, and the pooled metrics, speaker bootstrap and paired
tests of ``recipes/VoxCeleb/ablation/kfold_stats.py`` with the ablation
tool's k-fold mode.

The statistics are checked against values worked out here: EER and
minDCF of explicit trial lists (``dampit.metrics.error_rates``, itself
checked against threshold loops in test_error_rates.py), bootstrap
replicates by building the resampled trial list from copies of the drawn
speakers, and p-values worked out by hand (exact Wilcoxon tail counts).
"""

import itertools
import json
import os
import pathlib
import re
import sys

import numpy as np
import pytest
import soundfile as sf
from speechbrain.dataio.dataio import load_data_csv

from dampit.dataio.preparation import DataPreparationError
from dampit.dataio.prepare_folder import prepare_folder
from dampit.dataio.trials import read_scores, write_scores
from dampit.metrics.error_rates import compute_eer, compute_min_dcf

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "recipes" / "VoxCeleb" / "ablation"))
import kfold_stats as ks  # noqa: E402
import run_ablation as ra  # noqa: E402


def _tree(root, n_spk=25, n_utt=6):
    for s in range(n_spk):
        os.makedirs(root / f"spk{s:02d}")
        for u in range(n_utt):
            rng = np.random.default_rng(100 * s + u)
            sig = 0.1 * rng.standard_normal(800 + 16 * u)
            sf.write(root / f"spk{s:02d}" / f"u{u}.wav", sig, 16000)
    return {f"spk{s:02d}" for s in range(n_spk)}


def _speakers(path):
    return {r["spk_id"] for r in load_data_csv(str(path)).values()}


def test_folds_disjoint_covering_and_absent_from_training(tmp_path):
    data = tmp_path / "data"
    speakers = _tree(data)
    tests = []
    for k in range(5):
        res = prepare_folder(data, tmp_path / f"f{k}", n_folds=5, fold=k)
        test = _speakers(res["test_csv"])
        train = _speakers(res["train_csv"]) | _speakers(res["dev_csv"])
        assert len(test) == 5 and set(res["test_speakers"]) == test
        assert not test & train and test | train == speakers
        assert res["n_train_speakers"] == 20
        tests.append(test)
    assert set().union(*tests) == speakers  # covering
    for a, b in itertools.combinations(tests, 2):
        assert not a & b  # disjoint
    # Fold 0 of 5 is today's split with 5 test speakers: the same files.
    default = prepare_folder(data, tmp_path / "d", n_test_speakers=5)
    for name in ("train.csv", "dev.csv", "test.csv", "trials.txt"):
        a = (tmp_path / "f0" / name).read_bytes()
        assert a == (tmp_path / "d" / name).read_bytes()
    assert default["n_test_speakers"] == 5
    # 25 speakers in 4 folds: sizes 7, 6, 6, 6 (numpy's array_split).
    sizes = [
        prepare_folder(data, tmp_path / f"g{k}", n_folds=4, fold=k)[
            "n_test_speakers"
        ]
        for k in range(4)
    ]
    assert sizes == [7, 6, 6, 6]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_folds=5, fold=5), "fold=5"),
        (dict(n_folds=5, fold=-1), "fold=-1"),
        (dict(n_folds=25), "n_test_speakers=1 (fold 0 of n_folds=25)"),
        (dict(n_valid_speakers=1), "n_valid_speakers=1"),
    ],
)
def test_bad_fold_options_are_one_line_errors(tmp_path, kwargs, match):
    data = tmp_path / "data"
    _tree(data, n_spk=25, n_utt=6)
    with pytest.raises(DataPreparationError, match=re.escape(match)) as err:
        prepare_folder(data, tmp_path / "p", **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "p" / "train.csv").exists()


# ------------------------------------------------------------ statistics --


def eer_dcf(scores, labels):
    """EER (%) and normalised minDCF(0.01): dampit's exact ones."""
    eer, _ = compute_eer(scores, labels)
    return 100.0 * eer, compute_min_dcf(scores, labels, p_target=0.01)[0]


def _fold_trials(rng, speakers, shift):
    """All same-speaker pairs of 3 utterances each and as many
    different-speaker pairs; scores drawn around ``shift`` for targets."""
    enrol, test, scores, labels = [], [], [], []
    utts = [f"{s}/u{u}" for s in speakers for u in range(3)]
    for a, b in itertools.combinations(utts, 2):
        same = a.split("/")[0] == b.split("/")[0]
        enrol.append(a)
        test.append(b)
        labels.append(int(same))
        scores.append(float(rng.normal(shift if same else 0.0, 1.0)))
    return enrol, test, np.array(scores), np.array(labels)


def _score_files(tmp_path, shift, n_folds=2, seeds=(1, 2), tag="a"):
    """``{(fold, seed): score file}`` of 3 speakers per fold."""
    files = {}
    for f in range(n_folds):
        spk = [f"f{f}s{k}" for k in range(3)]
        for s in seeds:
            rng = np.random.default_rng([ord(tag), f, s])
            e, t, sc, lab = _fold_trials(rng, spk, shift)
            path = tmp_path / f"{tag}_{f}_{s}.txt"
            write_scores(path, e, t, sc, lab)
            files[f, s] = str(path)
    return files


def test_pooled_metrics_equal_a_plain_computation(tmp_path):
    files = _score_files(tmp_path, shift=1.0)
    runs = [ks.read_trials_scores(p) for p in files.values()]
    enrol, test, scores, labels = ks.pool(runs)
    plain_s, plain_l = [], []
    for p in files.values():  # the score files concatenated, read by hand
        for line in open(p):
            e, t, lab, s = line.split()
            plain_s.append(float(s))
            plain_l.append(int(lab))
    assert scores.tolist() == plain_s and labels.tolist() == plain_l
    assert enrol[0] == "f0s0" and set(test) >= {"f1s2"}
    eer, dcf = ks.metrics(scores, labels)
    want = eer_dcf(plain_s, plain_l)
    assert eer == pytest.approx(want[0], abs=1e-9)
    assert dcf == pytest.approx(want[1], abs=1e-9)
    # The report's pooled row shows the same values.
    row = ks.kfold_report({"x": files}, "x", n_boot=20).splitlines()[2]
    assert row.startswith(f"| x | 4 / 4 | {want[0]:.2f} | [")
    assert f"| {want[1]:.3f} | [" in row


def test_bootstrap_weights_are_copies_of_the_drawn_speakers(tmp_path):
    """Each replicate equals the metrics of a trial list built from
    copies of the drawn speakers: a copy's own target trials, and the
    non-target trials between copies of different speakers."""
    files = _score_files(tmp_path, shift=1.5, seeds=(1,))
    trials = ks.pool([ks.read_trials_scores(p) for p in files.values()])
    strata = {f"f{f}s{k}": f for f in range(2) for k in range(3)}
    speakers, counts = ks.speaker_draws(strata, 8, seed=3)
    reps = ks.bootstrap(trials, speakers, counts)
    enrol, test, scores, labels = trials
    for r, m in enumerate(counts):
        mult = dict(zip(speakers, m.tolist()))
        s_list, l_list = [], []
        for e, t, s, lab in zip(enrol, test, scores, labels):
            copies = mult[e] if lab == 1 else mult[e] * mult[t]
            s_list += [s] * copies
            l_list += [int(lab)] * copies
        if len(set(l_list)) < 2:
            assert np.isnan(reps[r]).all()
            continue
        want = eer_dcf(s_list, l_list)
        assert reps[r] == pytest.approx(want, abs=1e-9)
    # Draws stay inside each fold and keep its size.
    for f in range(2):
        cols = [k for k, s in enumerate(speakers) if strata[s] == f]
        assert (counts[:, cols].sum(1) == 3).all()


def test_bootstrap_reproducible_by_seed_and_interval_holds_point(tmp_path):
    strata = {f"s{k}": k % 3 for k in range(12)}
    a = ks.speaker_draws(strata, 50, seed=7)[1]
    assert np.array_equal(a, ks.speaker_draws(strata, 50, seed=7)[1])
    assert not np.array_equal(a, ks.speaker_draws(strata, 50, seed=8)[1])
    files = _score_files(tmp_path, shift=1.0, n_folds=3)
    report = ks.kfold_report({"x": files}, "x", n_boot=200, seed=1)
    assert report == ks.kfold_report({"x": files}, "x", n_boot=200, seed=1)
    other = ks.kfold_report({"x": files}, "x", n_boot=200, seed=2)
    assert other != report
    cells = [c.strip() for c in report.splitlines()[2].split("|")[1:-1]]
    for value, ci in ((cells[2], cells[3]), (cells[4], cells[5])):
        lo, hi = (float(x) for x in ci.strip("[]").split(","))
        assert lo <= float(value) <= hi and lo < hi


def test_paired_tests_known_answers(tmp_path):
    # Wilcoxon, exact: 5 positive differences -> 2 / 2**5; differences
    # 1..5 and -6: W- = 6, 14 of the 64 sign patterns have W <= 6.
    assert ks.wilcoxon_p([2, 3, 4, 5, 6], [1] * 5) == pytest.approx(2 / 32)
    d = [1, 2, 3, 4, 5, -6]
    assert ks.wilcoxon_p(d, [0] * 6) == pytest.approx(2 * 14 / 64)
    assert np.isnan(ks.wilcoxon_p([1, 2], [1, 2]))
    # Paired bootstrap: a perfect system against its reversed scores is
    # 100 points better in every replicate; against itself, 0.
    good = _score_files(tmp_path, shift=50.0, tag="g")
    bad = {}
    for k, p in good.items():
        e, t, s, lab = read_scores(p)
        bad[k] = str(tmp_path / f"bad_{k[0]}_{k[1]}.txt")
        write_scores(bad[k], e, t, -s, lab)
    n_boot = 99
    text = ks.kfold_report(
        {"good": good, "bad": bad, "same": dict(good)}, "good", n_boot=n_boot
    )
    rows = {r.split(" | ")[0][2:]: r for r in text.splitlines() if " − " in r}
    # Draws with a single distinct speaker in every fold have no
    # non-target trial: no replicate; p = 2 / (replicates + 1).
    strata = {f"f{f}s{k}": f for f in range(2) for k in range(3)}
    m = ks.speaker_draws(strata, n_boot, seed=0)[1]
    distinct = [(m[:, cols] > 0).sum(1) for cols in (slice(0, 3), slice(3, 6))]
    n_ok = int(((distinct[0] > 1) | (distinct[1] > 1)).sum())
    assert 90 < n_ok < n_boot
    p = f"{2 / (n_ok + 1):.3f}"
    bad_row = rows["bad − good"].split(" | ")
    assert bad_row[1:5] == ["4", "+100.00", "[+100.00, +100.00]", p]
    # minDCF(0.01): 1 (reject all) against 0.
    assert bad_row[5:8] == ["+1.000", "[+1.000, +1.000]", p]
    # Per run: 4 EERs of 100 against 4 of 0.
    want = ks.wilcoxon_p([100.0] * 4, [0.0] * 4)
    assert bad_row[-1].rstrip(" |") == f"{want:.3f}" and want < 0.2
    same_row = rows["same − good"].split(" | ")
    assert same_row[2:5] == ["+0.00", "[+0.00, +0.00]", "1.000"]
    assert ks.bootstrap_p(np.full(n_boot, 1.0)) == pytest.approx(2 / 100)


def _fake_kfold_run(run_dir, score_file, n_folds, fold):
    (run_dir / "verification").mkdir(parents=True)
    (run_dir / "prepared").mkdir()
    rep = {"eer": 0.1, "min_dcf_0.01": 0.5, "min_dcf_0.05": 0.4}
    summary = {f"trials/{s}": dict(rep) for s in ra.SCORINGS}
    for scoring in ra.SCORINGS:  # the same scores for each: a zero row
        summary[f"trials/{scoring}"]["scores_txt"] = score_file
    (run_dir / "verification" / "summary.json").write_text(json.dumps(summary))
    opts = {"opts": {"n_folds": n_folds, "fold": fold}}
    (run_dir / "prepared" / "prepare_opts.json").write_text(json.dumps(opts))


def test_kfold_mode_reuses_finished_runs_and_writes_the_page(
    tmp_path, shared_data, capsys
):
    out, page = tmp_path / "out", tmp_path / "R.md"
    page.write_text("# R\n\n<!-- kfold:begin -->\nstale\n<!-- kfold:end -->\n")
    files = {
        "all_four": _score_files(tmp_path, 2.0, seeds=(1,), tag="a"),
        "no_gates": _score_files(tmp_path, 1.0, seeds=(1,), tag="n"),
    }
    for config, per in files.items():
        for (f, s), p in per.items():
            _fake_kfold_run(out / config / f"fold{f}" / str(s), p, 2, f)
    argv = ["--folds", "2", "--seeds", "1", "--configs", "all_four"]
    argv += ["no_gates", "--out", str(out), "--results-md", str(page)]
    argv += ["--bootstrap", "30", "--data", str(shared_data / "dspspeech")]
    assert ra.main(argv) == 0  # nothing to train: every run is finished
    printed = capsys.readouterr().out
    assert "4 runs (2 configs x 2 folds x 1 seeds), 4 already done" in printed
    text = page.read_text()
    assert "stale" not in text and text.startswith("# R\n\n<!-- kfold:begin")
    assert "| all four, no gates − all four (mini.yaml) | 2 |" in text
    # The scorings of all_four: the fake runs give every scoring the same
    # scores, so each difference from full cosine is exactly 0.
    row = "| all four, multicrop_dot − all four, full_cosine | 2 | +0.00 |"
    assert row in text
    for png in ("kfold_eer.png", "kfold_scorings.png"):  # real PNGs
        assert f"(results/{png})" in text
        assert (tmp_path / "results" / png).read_bytes()[:4] == b"\x89PNG"
    # A run prepared as another fold is refused, naming its file.
    _fake_kfold_run(
        out / "all_four" / "fold0" / "2", files["all_four"][0, 1], 2, 1
    )
    with pytest.raises(SystemExit, match="fold0/2/prepared"):
        ra.main(argv[:3] + ["1", "2"] + argv[4:] + ["--report-only"])


def test_kfold_mode_refuses_a_baseline_without_fold_keys(
    tmp_path, shared_data, monkeypatch
):
    """A baseline YAML without an n_folds key would test every run on one
    split: k-fold mode refuses it before any training."""
    yaml = tmp_path / "ecapa_aam.yaml"
    yaml.write_text("n_test_speakers: 5\nsplit_seed: 0\n")
    monkeypatch.setattr(ra, "ECAPA_YAML", str(yaml))
    argv = ["--folds", "5", "--configs", "all_four", ra.BASELINE]
    argv += ["--out", str(tmp_path / "o"), "--results-md", ""]
    argv += ["--data", str(shared_data / "dspspeech"), "--report-only"]
    with pytest.raises(SystemExit, match="ecapa_aam.yaml has no n_folds"):
        ra.main(argv)
    assert not (tmp_path / "o").exists()
    yaml.write_text("n_folds: null\nfold: 0\n")  # keys present: accepted
    assert ra.main(argv) == 0


def test_compare_pools_one_config_over_several_out_folders(
    tmp_path, shared_data, capsys
):
    """--compare LABEL=DIR: the runs of one configuration in each folder,
    pooled as the k-fold mode pools configurations (first: reference)."""
    files = {
        "a": _score_files(tmp_path, 2.0, seeds=(1,), tag="a"),
        "b": _score_files(tmp_path, 0.5, seeds=(1,), tag="b"),
    }
    for tag, per in files.items():
        for (f, s), p in per.items():
            run = tmp_path / tag / "all_four" / f"fold{f}" / str(s)
            _fake_kfold_run(run, p, 2, f)
    argv = ["--folds", "2", "--seeds", "1", "--configs", "all_four"]
    argv += ["--data", str(shared_data / "dspspeech"), "--bootstrap", "20"]
    # a label may hold "=" (split at the last one)
    compare = ["--compare", f"sharp={tmp_path / 'a'}", f"p=1={tmp_path / 'b'}"]
    assert ra.main(argv + compare) == 0
    rows = {
        r.split(" | ")[0][2:]: r.split(" | ")
        for r in capsys.readouterr().out.splitlines()
        if r.startswith("| ")
    }
    pooled = {}
    for tag, label in (("a", "sharp"), ("b", "p=1")):
        trials = ks.pool(
            [ks.read_trials_scores(p) for p in files[tag].values()]
        )
        pooled[label] = eer_dcf(trials[2].tolist(), trials[3].tolist())
        assert rows[label][1:3] == ["2 / 2", f"{pooled[label][0]:.2f}"]
    diff = pooled["p=1"][0] - pooled["sharp"][0]
    assert diff > 10 and rows["p=1 − sharp"][2] == f"{diff:+.2f}"
    assert not (tmp_path / "a" / "all_four" / "fold0" / "2").exists()
    for bad in (["--compare", "x"], compare + ["--configs", "a", "b"]):
        with pytest.raises(SystemExit):
            ra.main(argv + bad)


def test_a_moved_run_reads_its_own_scores_not_its_old_folder(tmp_path):
    # summary.json records absolute score paths; a run folder moved away
    # (and another run written at its old place) must still read its own.
    rng = np.random.default_rng(0)
    old = tmp_path / "a" / "all_four" / "fold0" / "1"
    old_scores = old / "verification" / "trials" / "full_cosine_scores.txt"
    _fake_kfold_run(old, str(old_scores), 2, 0)
    old_scores.parent.mkdir()
    lab = np.array([1, 0] * 4)
    mine = rng.normal(size=8) + 2.0 * lab
    write_scores(old_scores, ["e"] * 8, ["t"] * 8, mine, lab)
    moved = tmp_path / "b" / "all_four" / "fold0" / "1"
    moved.parent.mkdir(parents=True)
    old.rename(moved)
    old_scores.parent.mkdir(parents=True)  # a different run, old place
    write_scores(old_scores, ["e"] * 8, ["t"] * 8, -mine, lab)
    got = ra.read_run(str(moved), "all_four")["full_cosine"]
    assert pathlib.Path(got) == moved / old_scores.relative_to(old)
    np.testing.assert_array_equal(read_scores(got)[2], mine)
