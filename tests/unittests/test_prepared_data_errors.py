"""A prepared manifest or saved label encoder the recipe cannot use: one
line naming the file (and row), never a traceback mid-training."""

import csv
import importlib.util
import pathlib
import sys

import pytest

from dampit.dataio.manifest import ManifestError, check_manifest
from dampit.training.run_setup import RecipeError

REPO = pathlib.Path(__file__).resolve().parents[2]
HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id"]
GOOD = ["s1/a", "1.0", "s1/a.wav", "0", "16000", "s1"]


def _csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_good_manifest_counts_its_rows(tmp_path):
    rows = [GOOD, ["s2/b", "0.5", "s2/b.wav", "100", "8100", "s2"]]
    assert check_manifest(_csv(tmp_path / "t.csv", HEADER, rows)) == 2


@pytest.mark.parametrize("drop", ["stop", "spk_id", "wav"])
def test_missing_column_is_named(drop, tmp_path):
    k = HEADER.index(drop)
    header = HEADER[:k] + HEADER[k + 1 :]
    path = _csv(tmp_path / "t.csv", header, [GOOD[:k] + GOOD[k + 1 :]])
    with pytest.raises(ManifestError, match=f"^{path}: no column {drop} "):
        check_manifest(path)


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("stop", "1e3", "stop='1e3' is not a number"),
        ("stop", "0", "stop=0 is not after start=0"),
        ("start", "-5", "start='-5' is not >= 0"),
        ("start", "abc", "start='abc' is not >= 0"),
        ("stop", "", "stop='' is not a number"),
        ("duration", "nan", "duration 'nan'"),
        ("ID", " ", "empty ID"),
        ("spk_id", "", "empty spk_id"),
    ],
)
def test_bad_row_is_named_by_line(column, value, message, tmp_path):
    bad = list(GOOD)
    bad[HEADER.index(column)] = value
    if column == "start":
        bad[HEADER.index("stop")] = "16000"
    path = _csv(tmp_path / "t.csv", HEADER, [GOOD, bad])
    with pytest.raises(ManifestError) as err:
        check_manifest(path)
    assert str(err.value) == f"{path}:3: {message}"


def test_stop_before_start_from_the_other_side(tmp_path):
    bad = ["s1/b", "1.0", "s1/b.wav", "16000", "8000", "s1"]
    path = _csv(tmp_path / "t.csv", HEADER, [bad])
    with pytest.raises(ManifestError, match=":2: stop=8000 is not after"):
        check_manifest(path)


def test_unreadable_manifest(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"ID,duration,wav,start,stop,spk_id\n\xff\xfe,1\n")
    with pytest.raises(ManifestError, match="cannot read"):
        check_manifest(path)
    with pytest.raises(ManifestError, match="cannot read"):
        check_manifest(tmp_path / "nope.csv")


@pytest.fixture(scope="module")
def recipe_train():
    """recipes/VoxCeleb/train.py as a module."""
    path = REPO / "recipes" / "VoxCeleb" / "train.py"
    spec = importlib.util.spec_from_file_location("_dampit_train_27", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "not a label encoder (KeyError: 'starting_index')"),
        ("================\n'starting_index' => 0\n", "no labels"),
    ],
    ids=["empty", "no_labels"],
)
def test_saved_label_encoder_unusable(recipe_train, text, message, tmp_path):
    """A resumed run's save/label_encoder.txt that is empty."""
    save = tmp_path / "save"
    save.mkdir()
    labels = save / "label_encoder.txt"
    labels.write_text(text)
    rows = [["s1/a", "1.0", "a.wav", "0", "16000", "s1"]]
    data = {
        "train": str(_csv(tmp_path / "train.csv", HEADER, rows)),
        "dev": str(_csv(tmp_path / "dev.csv", HEADER, rows)),
    }
    hparams = {"sample_rate": 16000, "crop_samples": 16000}
    hparams.update(data_folder=str(tmp_path), save_folder=str(save))
    with pytest.raises(RecipeError) as err:
        recipe_train.dataio_prep(hparams, data)
    assert str(err.value).startswith(f"{labels}: {message}")
    assert "\n" not in str(err.value)
