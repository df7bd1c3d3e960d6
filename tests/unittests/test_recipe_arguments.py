"""The recipe's arguments, variants and manifests: one line, before the
work. ``check_arguments`` and ``resolve_variant`` are called directly
with each hostile value; one subprocess run shows that train.py prints
that one line and exits non-zero."""

import os
import pathlib
import runpy
import subprocess
import sys

import pytest

from dampit.training.run_setup import RecipeError, check_arguments, start_run
from dampit.utils.hparams import resolve_variant

REPO = pathlib.Path(__file__).resolve().parents[2]
MINI = REPO / "recipes" / "VoxCeleb" / "hparams" / "mini.yaml"
HERE = pathlib.Path(__file__).resolve().parent
real_tree = runpy.run_path(str(HERE / "test_prepare_folder.py"))["_real_tree"]


def _hp(tmp_path, **values):
    """Resolved keys of a run: mini.yaml's defaults, then ``values``."""
    hp = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "r")}
    hp.update(P=16, K=2, n_folds=None, fold=0, lr=0.001, crop_frames=150)
    hp.update(number_of_epochs=12, speed_speakers=[], w_npair=0.5)
    hp.update(values)
    return hp


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("fold", "abc", "fold='abc' is not an integer in [0, 999]"),
        ("fold", -1, "fold=-1 is not an integer"),
        ("n_folds", "abc", "n_folds='abc' is not an integer or null"),
        ("n_folds", 1, "n_folds=1 is not an integer or null in [2, 1000]"),
        ("P", "abc", "P='abc' is not an integer"),
        ("P", 1, "P=1 is not an integer in [2, 100000]"),
        ("K", 0, "K=0 is not an integer"),
        ("K", 1, "K=1: w_npair need K >= 2"),
        ("lr", "abc", "lr='abc' is not a number"),
        ("lr", 0.0, "lr=0.0 is not a number"),
        ("lr", float("nan"), "lr=nan is not a number"),
        ("number_of_epochs", -1, "number_of_epochs=-1 is not an integer"),
        ("n_test_speakers", -1, "n_test_speakers=-1 is not an integer"),
        ("number_of_epochs", 2.5, "number_of_epochs=2.5 is not an integer"),
        ("crop_frames", 0, "crop_frames=0 is not an integer"),
        ("batches_per_epoch", 0, "batches_per_epoch=0 is not an integer"),
        ("average_checkpoints", 0, "average_checkpoints=0 is not an"),
        ("num_workers", -1, "num_workers=-1 is not an integer"),
        ("speed_speakers", "abc", "speed_speakers='abc': 'abc' is not an"),
        ("speed_speakers", 40, "40 is not an integer in [50, 200] other"),
        ("speed_speakers", [90, 100], "speed_speakers=[90, 100]: 100 is"),
        ("speed_speakers", [90, 90], "speed_speakers=[90, 90]: 90 is given"),
        ("train_sets", ["vox2", "vox2"], "['vox2', 'vox2']: 'vox2' is given"),
        ("trial_lists", [3], "trial_lists=[3]: 3 is not text"),
        ("torchvision_init", "/nonexistent.pth", "no such file"),
        ("init_from", "/nonexistent", "init_from=/nonexistent: no such"),
        ("noise_folder", "/nonexistent", "noise_folder=/nonexistent: no"),
        ("gate", "spatail", "gate='spatail' is not one of 'spatial', 'none'"),
        ("depth", 19, "depth=19 is not one of 18, 34, 50, 101"),
        ("depth", True, "depth=True is not one of"),
        ("pooling", "max", "pooling='max' is not one of 'avg', 'stats'"),
        ("features", "mfcc", "features='mfcc' is not one of 'spectrogram'"),
        ("n_fft", 0, "n_fft=0 is not an integer in [2, 8192]"),
        ("n_freq", 0, "n_freq=0 is not an integer in [1, 4097]"),
        ("emb_dim", 0, "emb_dim=0 is not an integer in [1, 8192]"),
        ("dropout", 2, "dropout=2 is not a number in [0.0, 1.0]"),
        ("softmax_kind", "aamx", "softmax_kind='aamx' is not one of"),
        ("triplet_mining", "hard", "triplet_mining='hard' is not one of"),
        ("angular_form", "x", "angular_form='x' is not one of 'npair'"),
        ("feature_norm", "foo", "feature_norm='foo' is not one of"),
        ("in_channels", 0, "in_channels=0 is not an integer in [1, 16]"),
        ("score_norm", "asnorm", "score_norm='asnorm' is not one of "),
        ("w_npair", -1, "w_npair=-1 is not a number in [0.0, 1000.0]"),
        ("w_softmax", float("inf"), "w_softmax=inf is not a number"),
    ],
)
def test_bad_value_is_one_line_naming_the_key(key, value, message, tmp_path):
    hp = _hp(tmp_path, **{key: value})
    with pytest.raises(ValueError) as err:
        check_arguments(hp, "mini.yaml")
    assert "\n" not in str(err.value) and message in str(err.value)
    assert not (tmp_path / "r").exists()


def test_fold_beyond_n_folds(tmp_path):
    with pytest.raises(ValueError, match="fold=5 is not in 0..n_folds-1"):
        check_arguments(_hp(tmp_path, n_folds=5, fold=5), "mini.yaml")


@pytest.mark.parametrize(
    "key, value, want",
    [
        ("speed_speakers", 90, [90]),
        ("speed_speakers", [90, 110], [90, 110]),
        ("speed_speakers", None, None),
        ("trial_lists", "veri_test.txt", ["veri_test.txt"]),
        ("train_sets", "vox2", ["vox2"]),
        ("init_modules", "embedding_model", ["embedding_model"]),
    ],
)
def test_scalar_or_list_both_accepted(key, value, want, tmp_path):
    """``--speed_speakers=90`` is ``[90]``: the old recipe died on
    ``len(90)``."""
    hp = _hp(tmp_path, **{key: value})
    check_arguments(hp, "mini.yaml")
    assert hp[key] == want


@pytest.mark.parametrize(
    "features, n_fft, n_freq", [("spectrogram", 400, 161), ("fbank", 320, 200)]
)
def test_n_freq_must_fit_the_features(features, n_fft, n_freq, tmp_path):
    """Spectrogram: n_freq = n_fft // 2 + 1; fbank: at most that."""
    hp = _hp(tmp_path, features=features, n_fft=n_fft, n_freq=n_freq)
    with pytest.raises(ValueError) as err:
        check_arguments(hp, "mini.yaml")
    want = f"mini.yaml: n_freq={n_freq} does not fit features={features} "
    assert str(err.value).startswith(want + f"with n_fft={n_fft}: ")
    assert f"n_fft // 2 + 1 = {n_fft // 2 + 1}" in str(err.value)


def test_good_values_pass_unchanged(tmp_path):
    hp = _hp(tmp_path, n_folds=5, fold=4, K=1, w_npair=0.0, w_triplet=0)
    hp.update(features="fbank", n_fft=400, n_freq=80, score_norm="as-norm")
    hp.update(depth=34, gate="none", pooling="stats", angular_form="hinge")
    want = dict(hp)
    check_arguments(hp, "mini.yaml")
    assert hp == want


# -------------------------------------------------------------- variants


def _write(path, text):
    path.write_text(text)
    return path


def test_extends_loop_is_one_line(tmp_path):
    a = _write(tmp_path / "a.yaml", "extends: b.yaml\nlr: 0.1\n")
    _write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ValueError) as err:
        resolve_variant(a)
    msg = str(err.value)
    assert "a loop" in msg and f"{a} -> {tmp_path / 'b.yaml'} -> {a}" in msg


def test_extends_missing_or_not_a_name(tmp_path):
    v = _write(tmp_path / "v.yaml", "extends: nope.yaml\n")
    with pytest.raises(ValueError, match=f"^{v}: extends nope.yaml: no such"):
        resolve_variant(v)
    _write(v, "extends: [a, b]\n")
    with pytest.raises(ValueError, match="not a file name"):
        resolve_variant(v)
    with pytest.raises(ValueError, match="nope.yaml: no such file"):
        resolve_variant(tmp_path / "nope.yaml")


def test_variant_with_a_yaml_syntax_error_names_file_and_line(tmp_path):
    v = _write(tmp_path / "v.yaml", f"extends: {MINI}\nlr: 0.1\nP: [16\n")
    with pytest.raises(ValueError) as err:
        resolve_variant(v)
    assert str(err.value).startswith(f"{v}:4: not valid YAML: ")
    assert "\n" not in str(err.value)


def test_base_with_a_yaml_syntax_error(tmp_path):
    """The file at the end of the chain is read by start_run."""
    _write(tmp_path / "base.yaml", "lr: [0.1\nP: 16\n")
    v = _write(tmp_path / "v.yaml", "extends: base.yaml\nP: 8\n")
    with pytest.raises(ValueError) as err:
        start_run([str(v), f"--output_folder={tmp_path / 'r'}"])
    assert str(err.value).startswith(f"{v}: ") and "\n" not in str(err.value)
    assert "expected ',' or ']'" in str(err.value)
    assert not (tmp_path / "r").exists()


def test_recipe_prints_one_line_and_exits_non_zero(tmp_path):
    """The one subprocess: train.py with ``--fold=abc``."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        str(REPO / "recipes" / "VoxCeleb" / "train.py"),
        str(MINI),
        f"--data_folder={tmp_path}",
        f"--output_folder={out}",
        "--fold=abc",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"error: {MINI}: fold='abc' is not an integer in [0, 999]"
    ], proc.stderr[-2000:]
    assert not out.exists()


def _start_mini(shared_data, tmp_path, *overrides):
    """start_run of mini.yaml on six real speakers (two tested, P=4)."""
    data = real_tree(shared_data, tmp_path / "data", list("abcdef"))
    argv = [str(MINI), f"--data_folder={data}", "--n_test_speakers=2"]
    argv += ["--P=4", f"--output_folder={tmp_path / 'r'}", *overrides]
    return start_run(argv)


@pytest.mark.parametrize("override", ["--gate=spatail", "--score_norm=x"])
def test_a_bad_choice_is_refused_before_the_preparation(
    override, shared_data, tmp_path
):
    with pytest.raises(ValueError) as err:
        _start_mini(shared_data, tmp_path, override)
    key, value = override[2:].split("=")
    assert str(err.value).startswith(f"{MINI}: {key}={value!r} is not one")
    assert not (tmp_path / "r").exists()


def test_a_value_a_constructor_refuses_is_one_line(shared_data, tmp_path):
    """An even stem kernel passes the bounds but not SEResNet: one line
    naming the YAML and SEResNet's message, no traceback."""
    with pytest.raises(RecipeError) as err:
        _start_mini(shared_data, tmp_path, "--stem_kernel=2")
    assert str(err.value).startswith(f"{MINI}: SEResNet: bad stem_kernel=2")
    assert "\n" not in str(err.value)
