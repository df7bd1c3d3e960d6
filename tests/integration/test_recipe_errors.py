"""train.py user errors: one line naming the argument, refused before any
work; a full disk while saving a checkpoint names the checkpoint folder.

The checks are called directly (``start_run``, the recipe's first step,
and ``prepare_data``); one run of ``train.py`` shows that such an error
ends the process with that one line and no traceback.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

from dampit.dataio.preparation import DataPreparationError
from dampit.training.command_line import parse_command_line
from dampit.training.run_setup import (
    RecipeError,
    check_arguments,
    prepare_data,
    read_values,
    start_run,
)
from dampit.utils.checkpoints import AtomicCheckpointer
from dampit.utils.hparams import resolve_variant

REPO = pathlib.Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "VoxCeleb"
MINI = str(RECIPE / "hparams" / "mini.yaml")


def _start(data, out):
    """``start_run`` of mini.yaml; it must refuse before any work."""
    argv = [MINI, f"--data_folder={data}", f"--output_folder={out}"]
    with pytest.raises(RecipeError) as err:
        start_run(argv)
    return str(err.value)


def test_missing_data_folder(tmp_path):
    out = tmp_path / "run"
    err = _start(tmp_path / "nowhere", out)
    assert err == f"data_folder={tmp_path / 'nowhere'}: no such folder"
    assert not out.exists()


def test_unknown_key_is_one_line_before_any_work(tmp_path, synthetic_corpus):
    out = tmp_path / "run"
    argv = [MINI, f"--data_folder={synthetic_corpus}", f"--output_folder={out}"]
    with pytest.raises(RecipeError) as err:
        start_run(argv + ["--bogus=3"])
    assert str(err.value) == f"{MINI}: --bogus is not a key of this YAML file"
    assert not out.exists()


def test_output_inside_a_file(tmp_path, synthetic_corpus):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    want = f"{tmp_path / 'file'} is not a writable folder"
    assert _start(synthetic_corpus, out) == f"output_folder={out}: {want}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_output(tmp_path, synthetic_corpus):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    err = _start(synthetic_corpus, ro / "run")
    assert f"{ro} is not a writable folder" in err


def _folder_data(corpus, prep, P, speeds):
    """The keys ``prepare_data`` reads, as mini.yaml sets them."""
    return {
        "data_layout": "folder",
        "data_folder": str(corpus),
        "prep_folder": str(prep),
        "save_folder": str(prep.parent / "save"),
        "n_test_speakers": 4,
        "n_folds": None,
        "fold": 0,
        "n_valid_speakers": 0,
        "skip_bad_files": False,
        "P": P,
        "speed_speakers": speeds,
    }


def test_p_counts_the_speed_speakers(tmp_path, synthetic_corpus):
    """12 speakers, 4 for the test: 8 cannot fill P=16; with
    speed_speakers [90, 110] they are 24 classes, enough for P=16 (8 x 3
    >= 16) but not for P=25 (9 speakers needed); the error names the
    data folder and the count."""
    prep = tmp_path / "prep"
    with pytest.raises(DataPreparationError) as err:
        prepare_data(_folder_data(synthetic_corpus, prep, 16, []))
    assert str(synthetic_corpus) in str(err.value)
    assert "8 training speaker(s)" in str(err.value)
    assert "at least 16 needed" in str(err.value)
    data = prepare_data(_folder_data(synthetic_corpus, prep, 16, [90, 110]))
    assert data["n_classes"] == 24
    with pytest.raises(DataPreparationError, match="at least 9 needed"):
        prepare_data(_folder_data(synthetic_corpus, prep, 25, [90, 110]))


_FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys, torch
    from dampit.utils.checkpoints import AtomicCheckpointer
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a kill
    ckpter = AtomicCheckpointer(sys.argv[1], {"net": torch.nn.Linear(1, 1)})
    ckpter.save_checkpoint(meta={"EER": 1.0})
    ckpter.add_recoverable("big", torch.nn.Linear(512, 512))
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    ckpter.save_checkpoint(meta={"EER": 2.0})
    """
)


def test_checkpoint_save_on_a_full_disk_names_the_folder(tmp_path):
    """RLIMIT_FSIZE makes the 1 MB write fail as a full disk does: the
    error names the folder (not torch's inline_container.cc), no broken
    checkpoint is listed, the first one still loads."""
    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dampit.utils.checkpoints.CheckpointSaveError")
    assert f"cannot save a checkpoint in {tmp_path}" in last
    assert "inline_container" not in last
    ckpter = AtomicCheckpointer(tmp_path, {"net": torch.nn.Linear(1, 1)})
    assert [c.meta["EER"] for c in ckpter.list_checkpoints()] == [1.0]


def test_no_data_folder_given_is_one_line(tmp_path):
    """No --data_folder: one line naming the YAML's placeholder, nothing
    written."""
    out = tmp_path / "run"
    with pytest.raises(RecipeError) as err:
        start_run([MINI, f"--output_folder={out}"])
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"{MINI}: 'data_folder' is a !PLACEHOLDER")
    assert not out.exists()


def test_trial_naming_an_unknown_utterance_stops_before_training(
    tmp_path, synthetic_corpus
):
    """A prepared trial list (reused by the next run) with a row naming an
    utterance that is not in the prepared test set: train.py stops with
    one line naming the list and its line, before the experiment folder
    is set up (with 0 epochs, the verification would come next)."""
    out = tmp_path / "run"
    argv = [MINI, f"--data_folder={synthetic_corpus}", f"--output_folder={out}"]
    argv += ["--n_test_speakers=4", "--P=4", "--number_of_epochs=0"]
    hparams_file, _, overrides = parse_command_line(argv)
    base_file, merged = resolve_variant(hparams_file, overrides)
    values = read_values(base_file, merged, hparams_file)
    check_arguments(values, hparams_file)
    data = prepare_data(values)  # what train.py finds prepared
    trials = data["trials"]["trials"]
    with open(trials, encoding="utf-8") as f:
        rows = f.read().splitlines()
    _, known, _ = rows[0].split()
    with open(trials, "a", encoding="utf-8") as f:
        f.write(f"0 {known} nobody/x\n")
    proc = subprocess.run(
        [sys.executable, str(RECIPE / "train.py"), *argv, "--noprogressbar"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr  # SpeechBrain logs to stdout
    assert "Traceback" not in output, output[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"error: {trials}: 1 trial utterance(s) not among the known IDs: "
        f"line {len(rows) + 1}: nobody/x"
    )
    assert sorted(os.listdir(out)) == ["prepared"]
