"""Tests for the DET / histogram PNGs and the metrics report."""

import json
import os

import numpy as np
import pytest
from matplotlib.image import imread

from dampit.dataio.trials import read_scores
from dampit.metrics.error_rates import compute_eer, compute_min_dcf
from dampit.metrics.plots import plot_det, plot_score_histogram
from dampit.metrics.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def scores_labels():
    rng = np.random.default_rng(0)
    lab = np.r_[np.ones(300), np.zeros(2700)].astype(int)
    s = rng.normal(size=lab.size) + 3.0 * lab
    return s, lab


def test_write_report_values_files_and_json(tmp_path, scores_labels):
    s, lab = scores_labels
    ids = [(f"e{k}", f"t{k}") for k in range(lab.size)]
    r = write_report(s, lab, tmp_path / "out", "vox1", ids)
    assert (r["n_trials"], r["n_target"], r["n_nontarget"]) == (3000, 300, 2700)
    assert (r["eer"], r["eer_threshold"]) == compute_eer(s, lab)
    assert r["eer_interp"] == compute_eer(s, lab, method="interp")[0]
    for p in (0.01, 0.05):
        dcf, thr = compute_min_dcf(s, lab, p_target=p)
        assert r[f"min_dcf_{p:g}"] == dcf
        assert r[f"min_dcf_{p:g}_threshold"] == thr
    # Gaussians 3 apart: EER = Phi(-1.5) = 6.7 %.
    assert 0.04 < r["eer"] < 0.10
    assert sorted(os.listdir(tmp_path / "out")) == [
        "vox1_det.png",
        "vox1_hist.png",
        "vox1_metrics.json",
        "vox1_scores.txt",
    ]
    for key in ("det_png", "hist_png"):
        with open(r[key], "rb") as f:
            assert f.read(8) == PNG_MAGIC
        img = imread(r[key])
        assert img.shape[0] > 200 and img.shape[1] > 300
        # Not a blank canvas: several distinct colours were drawn.
        assert len(np.unique(img.reshape(-1, img.shape[2]), axis=0)) > 20
    with open(r["metrics_json"]) as f:
        assert json.load(f) == r


def test_report_with_ties_and_accept_all_threshold(tmp_path):
    # Accept-all is cheapest at p_target 0.9 -> threshold -inf -> JSON null.
    ids = [("e", "a"), ("e", "b"), ("e", "c"), ("e", "d")]
    r = write_report(
        [0.1, 0.2, 0.2, 0.5], [1, 0, 1, 0], tmp_path, "s", ids, (0.9,)
    )
    assert r["min_dcf_0.9_threshold"] is None
    assert json.loads((tmp_path / "s_metrics.json").read_text()) == r


def test_plots_overwrite_atomically(tmp_path, scores_labels):
    s, lab = scores_labels
    p = tmp_path / "det.png"
    p.write_bytes(b"old")
    plot_det(s, lab, p, title="t")
    assert p.read_bytes()[:8] == PNG_MAGIC
    plot_score_histogram(np.full(10, 0.5), [1, 0] * 5, tmp_path / "h.png")
    assert sorted(os.listdir(tmp_path)) == ["det.png", "h.png"]


def test_plot_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no target"):
        plot_det([0.1, 0.2], [0, 0], tmp_path / "d.png")
    with pytest.raises(ValueError, match="finite"):
        write_report([0.1, float("nan")], [0, 1], tmp_path, "s", [(1, 2)] * 2)
    assert not os.listdir(tmp_path)


def test_report_writes_the_score_file(tmp_path):
    ids = [("e1", "t1"), ("e1", "t2"), ("e2", "t1"), ("e2", "t3")]
    s, lab = [0.9, 0.4, 0.5, 0.1], [1, 1, 0, 0]
    r = write_report(s, lab, tmp_path, "full_cosine", ids)
    enrol, test, got, got_lab = read_scores(r["scores_txt"])
    assert list(zip(enrol, test)) == ids
    assert got.tolist() == s and got_lab.tolist() == lab
    with pytest.raises(ValueError, match="3 trial IDs for 4 scores"):
        write_report(s, lab, tmp_path / "x", "full_cosine", ids[:3])
    assert not (tmp_path / "x").exists()
