"""Tests of recipes/VoxCeleb/ablation/run_ablation.py: configurations,
command lines and reading runs (the k-fold statistics: test_kfold.py).

No training: the configurations are read from the recipe's real ablation
files and checked against their keys written out by hand; runs are
folders written here in the recipe's and the template's layouts.
"""

import json
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


sys.path.insert(0, str(REPO / "recipes" / "VoxCeleb" / "ablation"))
import ablation_report as report  # noqa: E402
import run_ablation as ra  # noqa: E402


def test_configs_from_the_recipe_ablation_files():
    cfg = ra.ablation_configs()
    assert list(cfg) == [
        "softmax_only",
        "softmax_triplet",
        "softmax_npair",
        "softmax_angular",
        "all_four",
        "no_gates",
    ]
    assert cfg["all_four"] == {}
    assert cfg["no_gates"] == {"gate": "none"}
    assert cfg["softmax_triplet"] == {"w_npair": 0.0, "w_angular": 0.0}
    assert cfg["softmax_npair"] == {"w_triplet": 0.0, "w_angular": 0.0}
    assert cfg["softmax_angular"] == {"w_npair": 0.0, "w_triplet": 0.0}
    # softmax_only also raises w_softmax from the paper's 0.1 to 1.0.
    assert cfg["softmax_only"] == {
        "w_angular": 0.0,
        "w_npair": 0.0,
        "w_softmax": 1.0,
        "w_triplet": 0.0,
    }


def test_config_keys_are_the_variant_keys_less_the_tool_keys(tmp_path):
    """A variant's keys (its chain's, tags included) become overrides;
    experiment, epochs and seed belong to the tool."""
    (tmp_path / "base.yaml").write_text("a: 1\ngate: spatial\n")
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\nb: 2\n")
    (tmp_path / "v.yaml").write_text(
        "extends: mid.yaml\nexperiment: v\na: 1\nb: 3\ngate: none\n"
        "number_of_epochs: 2\nseed: 7\n"
    )
    cfg = ra.ablation_configs(str(tmp_path))
    assert cfg["v"] == {"a": 1, "b": 3, "gate": "none"}
    assert cfg["mid"] == {"b": 2}
    assert cfg["all_four"] == {}
    assert "base" in cfg and cfg["base"] == {}  # not a variant: as is


def test_run_command_for_recipe_and_baseline():
    cmd = ra.run_command("softmax_npair", {"w_triplet": 0.0}, 3, "D", "O", 7, 9)
    assert cmd[1].endswith(os.path.join("recipes", "VoxCeleb", "train.py"))
    assert cmd[2].endswith("mini.yaml")
    assert "--seed=3" in cmd and "--number_of_epochs=7" in cmd
    assert "--batches_per_epoch=9" in cmd and cmd[-1] == "--w_triplet=0.0"
    base = ra.run_command("ecapa_aam", {}, 1, "D", "O", 7, 9)
    assert base[1].endswith(
        os.path.join("templates", "speaker_verification", "train.py")
    )
    assert base[2].endswith("ecapa_aam.yaml")
    assert not any(a.startswith("--batches_per_epoch") for a in base)
    assert "--output_folder=O" in base and "--number_of_epochs=7" in base


def _fake_recipe_run(run_dir, eers, dcf1, dcf5):
    ver = run_dir / "verification"
    ver.mkdir(parents=True)
    summary = {
        f"trials/{name}": {
            "eer": e,
            "min_dcf_0.01": dcf1,
            "min_dcf_0.05": dcf5,
        }
        for name, e in zip(ra.SCORINGS, eers)
    }
    (ver / "summary.json").write_text(json.dumps(summary))


def test_read_run_finds_the_score_files_of_finished_runs(tmp_path):
    # Two seeds of one config, a third not run; the baseline's layout.
    for seed in (1, 2):
        _fake_recipe_run(tmp_path / "a" / str(seed), (0.1, 0.1, 0.1), 0.9, 0.5)
    assert ra.read_run(str(tmp_path / "a" / "3"), "all_four") is None
    got = ra.read_run(str(tmp_path / "a" / "1"), "all_four")
    assert got == dict.fromkeys(ra.SCORINGS)  # no score file recorded
    b = tmp_path / "b" / "1"
    (b / "verification").mkdir(parents=True)
    assert ra.read_run(str(b), "ecapa_aam") is None  # no results.json yet
    (b / "results.json").write_text("{}")
    scores = b / "verification" / "full_cosine_scores.txt"
    scores.write_text("a/1 a/2 1 0.9\n")
    (b / "verification" / "full_cosine_metrics.json").write_text(
        json.dumps({"eer": 0.2, "scores_txt": str(scores)})
    )
    assert ra.read_run(str(b), "ecapa_aam") == {"full_cosine": str(scores)}


def test_read_run_names_the_file_without_full_cosine(tmp_path):
    ver = tmp_path / "verification"
    ver.mkdir()
    only_multicrop = {"trials/multicrop_dot": {"eer": 0.1}}
    (ver / "summary.json").write_text(json.dumps(only_multicrop))
    with pytest.raises(KeyError, match="summary.json: no 'trials/full_cosine'"):
        ra.read_run(str(tmp_path), "all_four")


def test_full_cosine_only_run_reads_its_own_score_file(tmp_path):
    # An encoder scored without training: its summary has one scoring.
    run = tmp_path / "resemblyzer" / "fold0" / "1"
    _fake_recipe_run(run, (0.25,), 0.9, 0.6)
    (run / "verification" / "full.txt").write_text("1 a/1 a/2 0.9\n")
    summary = json.loads((run / "verification" / "summary.json").read_text())
    assert list(summary) == ["trials/full_cosine"]
    summary["trials/full_cosine"]["scores_txt"] = "/old/verification/full.txt"
    (run / "verification" / "summary.json").write_text(json.dumps(summary))
    r = ra.read_run(str(run), "resemblyzer")
    assert r == {"full_cosine": str(run / "verification" / "full.txt")}


def test_replace_section_keeps_the_rest_of_the_page():
    page = "# R\n\ntext\n"
    once = report.replace_section(page, "T1")
    assert once.startswith("# R\n\ntext\n\n<!-- kfold:begin -->\nT1\n")
    twice = report.replace_section(once + "after\n", "T2")
    assert "T1" not in twice and "T2" in twice and twice.endswith("after\n")


def test_set_option_reaches_every_dampit_run(tmp_path, shared_data, capsys):
    """--set KEY=VALUE: YAML values, on every dampit config's command
    line, not the template's; a missing '=' is refused."""
    argv = ["--report-only", "--out", str(tmp_path), "--results-md", ""]
    argv += ["--data", str(shared_data / "dspspeech"), "--set"]
    ra.main(argv + ["speed_speakers=[90, 110]", "rir_folder=/r", "x=null"])
    lines = capsys.readouterr().out.splitlines()
    configs = dict(ln.strip().split(": ", 1) for ln in lines if ln[:2] == "  ")
    assert set(configs) == set(ra.ablation_configs()) | {ra.BASELINE}
    want = "'speed_speakers': [90, 110], 'rir_folder': '/r', 'x': None"
    for name, text in configs.items():
        assert (want in text) == (name != ra.BASELINE), (name, text)
    cmd = ra.run_command("c", {"speed_speakers": [90, 110]}, 1, "d", "o", 1, 1)
    assert cmd[-1] == "--speed_speakers=[90, 110]"
    with pytest.raises(SystemExit):
        ra.main(argv + ["speed_speakers"])
