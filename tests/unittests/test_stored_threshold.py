"""dampit.inference.stored_threshold: a new threshold reaches load_model
and SpeechBrain's from_hparams, the replaced values are kept, and a folder
it cannot update is refused with nothing changed."""

import json
import multiprocessing
import os
import pathlib
import runpy
import signal

import pytest
from speechbrain.inference.speaker import SpeakerRecognition

from dampit.inference.api import ModelFolderError, load_model
from dampit.inference.stored_threshold import (
    read_calibration,
    restore_threshold,
    write_threshold,
)

MODELS = pathlib.Path(__file__).resolve().parents[1] / "model_folder.py"
write_demo_model = runpy.run_path(str(MODELS))["write_demo_model"]


def snapshot(folder):
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder))}


def test_both_loaders_see_the_new_threshold(tmp_path):
    folder = pathlib.Path(write_demo_model(tmp_path, threshold=0.5))
    (folder / "README.md").write_text("# model\n\nthreshold 0.5\n")
    record = {"operating_point": "far", "llr": {"scale": 9.0, "offset": -4}}
    write_threshold(folder, 0.61, "first", record)
    spec = write_threshold(folder, 0.73, "second")
    assert load_model(folder).threshold == 0.73
    sb = SpeakerRecognition.from_hparams(
        source=str(folder), savedir=str(tmp_path / "sb")
    )
    assert sb.hparams.threshold == 0.73
    on_disk = json.loads((folder / "dampit_export.json").read_text())
    assert on_disk == spec
    history = spec["threshold_history"]
    assert [h["threshold"] for h in history] == [0.5, 0.61]
    assert history[1]["threshold_source"] == "first"
    assert history[1]["calibration"] == record
    assert spec["threshold_source"] == "second"
    assert read_calibration(folder) is None  # the second had none
    readme = (folder / "README.md").read_text()
    assert readme.startswith("# model\n\nthreshold 0.5\n")
    assert readme.count("## Calibrated threshold") == 1 and "0.73" in readme
    assert sorted(os.listdir(folder)) == sorted(snapshot(folder))  # no tmp


def test_refusals_change_nothing(tmp_path):
    folder = pathlib.Path(write_demo_model(tmp_path))
    before = snapshot(folder)
    with pytest.raises(ModelFolderError, match="not finite"):
        write_threshold(folder, float("nan"), "x")
    yaml_path = folder / "hyperparams.yaml"
    text = yaml_path.read_text()
    yaml_path.write_text(text + "threshold: 0.9\n")
    with pytest.raises(ModelFolderError, match="exactly one top-level"):
        write_threshold(folder, 0.3, "x")
    yaml_path.write_text(text)
    assert snapshot(folder) == before
    with pytest.raises(ModelFolderError, match="no dampit_export.json"):
        write_threshold(tmp_path, 0.3, "x")


def test_read_calibration_checks_the_llr(tmp_path):
    folder = pathlib.Path(write_demo_model(tmp_path))
    write_threshold(folder, 0.4, "x", {"llr": {"scale": 2.0, "offset": 1}})
    assert read_calibration(folder)["llr"] == {"scale": 2.0, "offset": 1}
    spec = json.loads((folder / "dampit_export.json").read_text())
    spec["calibration"]["llr"]["scale"] = "2"
    (folder / "dampit_export.json").write_text(json.dumps(spec))
    with pytest.raises(ModelFolderError, match="llr"):
        read_calibration(folder)


def _write_and_die_after_rename(folder, k):
    """(A forked child.) ``write_threshold`` killed with SIGKILL right
    after its k-th rename of one of the folder's files."""
    rename, left = os.replace, [k]

    def replace(src, dst):
        rename(src, dst)
        if os.path.basename(dst) in (
            "README.md",
            "hyperparams.yaml",
            "dampit_export.json",
        ):
            left[0] -= 1
            if left[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    write_threshold(folder, 0.73, "killed")


def thresholds(folder, savedir):
    """``load_model``'s threshold (or its one-line refusal) and
    SpeechBrain's ``from_hparams``'s."""
    try:
        ours = load_model(folder).threshold
    except ModelFolderError as err:
        ours = err
    sb = SpeakerRecognition.from_hparams(
        source=str(folder), savedir=str(savedir)
    )
    return ours, sb.hparams.threshold


@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_writer_killed_between_its_renames(tmp_path, k):
    """Killed after its k-th rename (YAML, JSON, README): the two loaders
    agree, or load_model refuses in one line naming the YAML;
    restore_threshold gives the JSON's value back to the YAML, and the
    next write leaves no temporary or lock file."""
    folder = pathlib.Path(write_demo_model(tmp_path, threshold=0.5))
    (folder / "README.md").write_text("# model\n")
    names = sorted(os.listdir(folder))
    child = multiprocessing.get_context("fork").Process(
        target=_write_and_die_after_rename, args=(folder, k)
    )
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL, child.exitcode
    json_value = json.loads((folder / "dampit_export.json").read_text())
    ours, theirs = thresholds(folder, tmp_path / "sb1")
    assert theirs == 0.73  # the YAML is renamed first
    if isinstance(ours, ModelFolderError):
        message = str(ours)
        assert "\n" not in message
        assert message.startswith(f"{folder / 'hyperparams.yaml'}: ")
        assert f"threshold {theirs} is not the 0.5 of dampit_export" in message
        assert json_value["threshold"] == 0.5 != theirs
        assert restore_threshold(folder)
        ours, theirs = thresholds(folder, tmp_path / "sb2")
    assert ours == theirs == json_value["threshold"]
    assert not restore_threshold(folder)
    write_threshold(folder, 0.42, "next")  # the next writer
    assert thresholds(folder, tmp_path / "sb3") == (0.42, 0.42)
    assert sorted(os.listdir(folder)) == names
    assert not [n for n in os.listdir(folder.parent) if n.startswith(".")]


def test_a_new_threshold_keeps_the_users_readme_sections(tmp_path):
    """Only dampit's section (up to the next heading of its level or
    higher) is replaced: what the user wrote after it stays byte for byte,
    through a calibration and through a restore."""
    folder = pathlib.Path(write_demo_model(tmp_path, threshold=0.5))
    readme = folder / "README.md"
    readme.write_text("# model\n\nthreshold 0.5\n")
    write_threshold(folder, 0.61, "first")
    first = readme.read_text()
    mine = "## Deployment notes (mine)\ntext\n\n### Sub\nmore\n"
    readme.write_text(first + mine)
    write_threshold(folder, 0.73, "second")
    second = first.replace("0.61 (first)", "0.73 (second)")
    assert second != first
    assert readme.read_text() == second + mine
    yaml_path = folder / "hyperparams.yaml"  # a stopped update: YAML ahead
    yaml_path.write_text(
        yaml_path.read_text().replace("threshold: 0.73", "threshold: 0.9")
    )
    assert restore_threshold(folder)
    assert readme.read_text() == second + mine
