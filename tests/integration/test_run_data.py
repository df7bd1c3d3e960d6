"""A run folder holds one run's data: another fold, changed data, a shared
save or prep folder are refused in one line, before they do harm.

Real speech (dspspeech recordings linked into small speaker trees); the
recipe's first step (``start_run``) and ``dataio_prep`` are called
directly, nothing is trained.
"""

import importlib.util
import os
import pathlib

import numpy as np
import pytest
import soundfile as sf

from dampit.dataio.prepare_folder import prepare_folder
from dampit.dataio.prepared import PreparedFolderError
from dampit.training import run_setup
from dampit.training.run_data import RunDataError, check_prepared
from dampit.training.run_lock import RunLockError
from dampit.training.run_setup import prepare_data, start_run
from dampit.utils.file_lock import FileLock, LockError

REPO = pathlib.Path(__file__).resolve().parents[2]
MINI = str(REPO / "recipes" / "VoxCeleb" / "hparams" / "mini.yaml")
TEMPLATE = REPO / "templates" / "speaker_verification" / "train.py"


@pytest.fixture
def started(monkeypatch):
    """``start_run`` whose folder locks are released when it returns (a
    run holds them until its process exits)."""
    locks = []
    monkeypatch.setattr(run_setup.atexit, "register", locks.append)

    def start(argv):
        try:
            return start_run(argv)
        finally:
            for release in locks:
                release()
            locks.clear()

    return start


def _argv(data, out, *extra):
    return [
        MINI,
        f"--data_folder={data}",
        f"--output_folder={out}",
        "--n_folds=5",
        "--P=4",
        "--device=cpu",
        *extra,
    ]


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_other_fold_into_a_run_folder_is_refused_before_preparing(
    speech_tree, tmp_path, started, recipe
):
    """Fold 1 into the folder of a fold 0 run (its label encoder written)
    would resume fold 0's model and test it on speakers it trained on: it
    is refused in one line naming the folder and the option, and the
    prepared split is left as it was; fold 0 itself resumes."""
    train, _ = recipe
    data = speech_tree(tmp_path / "data", n_spk=10)
    out = tmp_path / "run"
    argv = _argv(data, out, "--speed_speakers=[90]")
    run = started(argv + ["--fold=0"])
    train.dataio_prep(run.hparams, run.data)  # writes label_encoder.txt
    prepared = _files(out / "prepared")
    with pytest.raises(RunDataError) as err:
        started(argv + ["--fold=1"])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"output_folder={out} holds a run")
    assert "fold=0 there, 1 asked" in msg
    assert _files(out / "prepared") == prepared
    run = started(argv + ["--fold=0"])  # the same run resumes
    _, _, encoder = train.dataio_prep(run.hparams, run.data)
    assert len(encoder) == run.data["n_classes"] == 16  # 8 speakers x 2


def test_changed_data_are_prepared_again_and_refused_to_a_run(
    speech_tree, tmp_path, started, recipe
):
    """A file deleted after a run prepared its data: the cached split is
    not reused (the deleted file would end verification in an AudioError)
    and resuming the run on the changed data is refused in one line
    before its prepared split is touched; touched files (the same sizes)
    resume."""
    train, _ = recipe
    data = speech_tree(tmp_path / "data", n_spk=10)
    prep = tmp_path / "prep"
    first = prepare_folder(data, prep, n_folds=5, fold=0)
    test_spk = first["test_speakers"][0]
    gone = sorted((data / test_spk).iterdir())[0]
    gone.unlink()
    again = prepare_folder(data, prep, n_folds=5, fold=0)
    assert again["n_test_utts"] == first["n_test_utts"] - 1
    assert gone.stem not in (prep / "test.csv").read_text()
    (data / "new").mkdir()
    os.symlink(sorted((data / test_spk).iterdir())[0], data / "new" / "a.wav")
    os.symlink(sorted((data / test_spk).iterdir())[1], data / "new" / "b.wav")
    third = prepare_folder(data, prep, n_folds=5, fold=0)
    n_spk = third["n_train_speakers"] + third["n_test_speakers"]
    assert n_spk == 11

    out = tmp_path / "run"
    run = started(_argv(data, out, "--fold=0"))
    train.dataio_prep(run.hparams, run.data)
    for wav in data.glob("*/*.wav"):  # copied or touched: the same data
        os.utime(wav, ns=(0, 0), follow_symlinks=False)
    started(_argv(data, out, "--fold=0"))
    prepared = _files(out / "prepared")
    (data / "new" / "b.wav").unlink()
    with pytest.raises(PreparedFolderError) as err:
        started(_argv(data, out, "--fold=0"))
    assert str(err.value).startswith(f"prep_folder={out / 'prepared'}: a run")
    assert "other data files (changed since it was prepared)" in str(err.value)
    assert _files(out / "prepared") == prepared  # nothing replaced


def test_label_encoder_of_other_speakers_is_refused(
    speech_tree, tmp_path, started, recipe
):
    """The recipe's and the template's dataio_prep refuse a saved label
    encoder whose labels are not the training speakers (another fold's
    run wrote it), naming the file."""
    train, _ = recipe
    data = speech_tree(tmp_path / "data", n_spk=10)
    run = started(_argv(data, tmp_path / "run", "--fold=0"))
    train.dataio_prep(run.hparams, run.data)
    labels = os.path.join(run.hparams["save_folder"], "label_encoder.txt")
    fold1 = dict(run.plain, prep_folder=str(tmp_path / "fold1"), fold=1)
    other = prepare_data(fold1)
    with pytest.raises(RunDataError) as err:
        train.dataio_prep(run.hparams, other)
    assert str(err.value).startswith(f"{labels}: its 8 speakers are not")

    spec = importlib.util.spec_from_file_location("template_train", TEMPLATE)
    template = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(template)
    hp = {"sample_rate": 16000, "sentence_len": 1.5, "random_chunk": True}
    hp["save_folder"] = str(tmp_path / "template")
    os.makedirs(hp["save_folder"])
    fold0 = prepare_folder(data, tmp_path / "t0", n_folds=5, fold=0)
    template.dataio_prep(hp, fold0)
    template.dataio_prep(hp, fold0)  # its own encoder loads
    fold1 = prepare_folder(data, tmp_path / "t1", n_folds=5, fold=1)
    with pytest.raises(RunDataError, match="label_encoder.txt: its 8 speak"):
        template.dataio_prep(hp, fold1)


def test_shared_save_folder_is_locked(speech_tree, tmp_path, monkeypatch):
    """Two runs given one save_folder outside their output folders: the
    second is refused, naming the save folder and the holder, before it
    prepares anything (it would delete the first one's checkpoints)."""
    data = speech_tree(tmp_path / "data", n_spk=10)
    save = tmp_path / "shared_save"
    monkeypatch.setattr(run_setup.atexit, "register", lambda f: None)
    start_run(_argv(data, tmp_path / "a", f"--save_folder={save}"))
    with pytest.raises(RunLockError) as err:
        start_run(_argv(data, tmp_path / "b", f"--save_folder={save}"))
    msg = str(err.value)
    assert msg.startswith(f"{save} is in use by another run (pid {os.getpid()}")
    assert msg.endswith("choose another save_folder")
    assert not (tmp_path / "b" / "prepared").exists()


def test_shared_prep_folder_is_locked_and_checked(
    speech_tree, tmp_path, started
):
    """A prep folder being prepared by another run is refused in one line;
    one prepared again with other options (a fold 1 run sharing it) since
    this run read it is refused before verification."""
    data = speech_tree(tmp_path / "data", n_spk=10)
    prep = tmp_path / "prep"
    argv = _argv(data, tmp_path / "a", f"--prep_folder={prep}", "--fold=0")
    with FileLock(prep / "prep.lock", "x"):
        with pytest.raises(LockError) as err:
            started(argv)
    assert str(err.value).startswith(f"prep_folder {prep} is in use")
    run = started(argv)
    check_prepared(run.hparams, run.data)  # unchanged: fine
    prepare_data(dict(run.plain, fold=1))  # another run's preparation
    with pytest.raises(RunDataError) as err:
        check_prepared(run.hparams, run.data)
    assert str(err.value).startswith(f"prep_folder={prep}: prepared again")
    assert "(fold)" in str(err.value)


def test_template_reads_other_rates_as_the_test_does(speech_tree, tmp_path):
    """A 48 kHz file trains and validates at the YAML's 16 kHz in the
    template (resampled, as dampit reads the test utterances): its length
    is a third of the file's samples."""
    data = speech_tree(tmp_path / "data", n_spk=6)
    for link in sorted(data.glob("*/*.wav")):
        wav, sr = sf.read(link)
        assert sr == 16000
        link.unlink()
        up = np.repeat(wav, 3)  # the same length in seconds at 48 kHz
        sf.write(link, up, 48000)
    spec = importlib.util.spec_from_file_location("template_train", TEMPLATE)
    template = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(template)
    prep = prepare_folder(data, tmp_path / "prep", n_test_speakers=2)
    hp = {"sample_rate": 16000, "sentence_len": 1.5, "random_chunk": False}
    hp["save_folder"] = str(tmp_path / "save")
    os.makedirs(hp["save_folder"])
    train_data, valid_data, _ = template.dataio_prep(hp, prep)
    resampled = "48000 Hz, resampled to 16000 Hz"  # the documented warning
    for dataset in (train_data, valid_data):
        with pytest.warns(UserWarning, match=resampled):
            item = dataset[0]
        frames = sf.info(str(data / f"{item['id']}.wav")).frames
        assert frames % 3 == 0
        assert len(item["sig"]) == frames // 3
    hp["random_chunk"] = True  # a 1.5 s chunk of a longer file
    with pytest.warns(UserWarning, match=resampled):
        item = train_data[0]
    frames = sf.info(str(data / f"{item['id']}.wav")).frames
    assert frames // 3 > 24000 and len(item["sig"]) == 24000
