"""train.py user errors: one line naming the argument, non-zero exit,
refused before any work (issue 16 item 7); a full disk while saving a
checkpoint names the checkpoint folder."""

import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from dampit.utils.checkpoints import AtomicCheckpointer


def _one_line_error(proc):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-2000:]
    return last


def test_missing_data_folder(tmp_path, run_recipe):
    out = tmp_path / "run"
    err = _one_line_error(run_recipe(tmp_path / "nowhere", out))
    assert f"data_folder={tmp_path / 'nowhere'}: no such folder" in err
    assert not out.exists()


def test_bad_average_checkpoints(tmp_path, synthetic_corpus, run_recipe):
    out = tmp_path / "run"
    proc = run_recipe(synthetic_corpus, out, "--average_checkpoints=0")
    err = _one_line_error(proc)
    assert "average_checkpoints=0 is not an integer in [1, 1000]" in err
    assert not out.exists()


def test_output_inside_a_file(tmp_path, synthetic_corpus, run_recipe):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    err = _one_line_error(run_recipe(synthetic_corpus, out))
    assert f"{tmp_path / 'file'} is not a writable folder" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_output(tmp_path, synthetic_corpus, run_recipe):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    err = _one_line_error(run_recipe(synthetic_corpus, ro / "run"))
    assert f"{ro} is not a writable folder" in err


def test_fewer_speakers_than_p(tmp_path, synthetic_corpus, run_recipe):
    """12 speakers, 4 for the test: 8 cannot fill P=16."""
    proc = run_recipe(synthetic_corpus, tmp_path / "run", "--P=16")
    err = _one_line_error(proc)
    assert "16" in err and str(synthetic_corpus) in err


def test_speed_speakers_train_as_new_classes(
    tmp_path, synthetic_corpus, run_recipe
):
    """speed_speakers [90, 110] on 8 training speakers: 24 classes in
    the label encoder and the softmax, enough for P=16 (8 speakers alone
    are not, above) but not for P=25; a speed of 100 is refused in one
    line."""
    out = tmp_path / "run"
    speeds = "--speed_speakers=[90, 110]"
    proc = run_recipe(synthetic_corpus, out, speeds, "--P=16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels = (out / "save" / "label_encoder.txt").read_text()
    entries = labels.split("=" * 16)[0].splitlines()  # then starting_index
    speakers = {ln.split("'")[1] for ln in entries if "=>" in ln}
    plain = {s for s in speakers if "@" not in s}
    assert len(plain) == 8 and len(speakers) == 24
    assert speakers == {
        f"{s}{t}" for s in plain for t in ("", "@sp90", "@sp110")
    }
    # The YAML the modules were built from (saved by SpeechBrain).
    saved = (out / "hyperparams.yaml").read_text()
    assert re.findall(r"n_classes: (\d+)", saved) == ["24"]
    assert re.search(r"^n_speakers: 24 ", saved, re.M)
    proc = run_recipe(
        synthetic_corpus, tmp_path / "r2", "--speed_speakers=[100]"
    )
    assert "speed_speakers=[100]: 100 is not" in _one_line_error(proc)
    proc = run_recipe(synthetic_corpus, tmp_path / "r3", speeds, "--P=25")
    assert (
        "8 training speaker(s) with 2 or more training utterances; "
        "at least 9 needed" in _one_line_error(proc)
    )


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


def test_no_data_folder_given(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    recipe = os.path.join(repo, "recipes", "VoxCeleb")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(recipe, "train.py"),
            os.path.join(recipe, "hparams", "mini.yaml"),
            f"--output_folder={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = _one_line_error(proc)
    assert "mini.yaml: 'data_folder' is a !PLACEHOLDER" in err
    assert not (tmp_path / "run").exists()
