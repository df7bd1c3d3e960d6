"""Every recipe YAML is listed in tests/recipes/recipes.csv and runs.

Each listed file runs with SpeechBrain's ``--debug`` (2 batches, 1 epoch)
plus the row's flags on tiny real-speech data (its script's ``main``, in
this process), through training, the valid EER, checkpointing and the
verification stage, and must leave a summary with a finite EER. The
ablations and the fine-tuning file change the losses, the gates or the
initial weights, not the verification: their rows skip it
(``--test_after_training=False``). Every row trains a thin ResNet-18 (the
paper's ResNet-50 is checked against torchvision's in
tests/unittests/test_resnet.py). A row whose flags say "(run by <test>)"
is run by that test instead.
"""

import csv
import functools
import importlib.util
import json
import math
import pathlib
import re

import pytest

from dampit.utils.hparams import load_hparams, resolve_variant

REPO = pathlib.Path(__file__).resolve().parents[2]
LISTING = REPO / "tests" / "recipes" / "recipes.csv"
COMMON = [
    "--debug",
    "--debug_batches=2",
    "--debug_epochs=1",
    "--batches_per_epoch=2",
    "--num_workers=0",
    "--valid_pairs=500",
    "--noprogressbar",
]


def _rows():
    with open(LISTING, newline="") as f:
        return list(csv.DictReader(f))


ROWS = _rows()
# The tiny VoxCeleb tree's trial list (fake_voxceleb) is short by design.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*trials, the official VoxCeleb1-O list has:UserWarning"
)


def test_every_recipe_yaml_is_listed():
    """The listing and the YAML files on disk agree, both ways."""
    on_disk = {
        str(p.relative_to(REPO))
        for top in ("recipes", "templates")
        for p in (REPO / top).rglob("*.yaml")
    }
    listed = {r["hparams_file"] for r in ROWS}
    assert on_disk - listed == set(), "YAML files missing from recipes.csv"
    assert listed - on_disk == set(), "recipes.csv lists missing files"
    for row in ROWS:
        assert (REPO / row["script_file"]).is_file(), row


@functools.cache
def script(path):
    """The recipe script at ``path`` (relative to the repository), imported
    once under a name of its own."""
    name = "recipe_" + path.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_recipe(row, data_folder, out, extra=()):
    """Run one listed recipe in debug mode: its script's ``main`` in this
    process (train.py as a program: test_recipe_arguments.py and the
    integration tests)."""
    flags = row["debug_flags"].split() + list(extra)
    script(row["script_file"]).main(
        [
            str(REPO / row["hparams_file"]),
            f"--data_folder={data_folder}",
            f"--output_folder={out}",
            *COMMON,
            *flags,
        ]
    )


@pytest.fixture(scope="module")
def dspspeech_subset(shared_data, tmp_path_factory):
    """8 utterances of each of 15 dspspeech speakers (symlinks): 5 folds
    of 3 test speakers, and enough training utterances for the mini row's
    AS-norm cohort of 60."""
    root = tmp_path_factory.mktemp("dspspeech")
    src = shared_data / "dspspeech"
    for spk in sorted(p for p in src.iterdir() if p.is_dir())[:15]:
        (root / spk.name).mkdir()
        for wav in sorted(spk.glob("*.wav"))[:8]:
            (root / spk.name / wav.name).symlink_to(wav)
    return root


@pytest.fixture(scope="module")
def data_for(request):
    """Map a row's data kind to a folder (fixtures built on demand)."""

    def get(kind):
        name = {
            "voxceleb": "fake_voxceleb",
            "dspspeech": "dspspeech_subset",
            "synthetic": "synthetic_corpus",
        }[kind]
        return request.getfixturevalue(name)

    return get


@pytest.fixture(scope="module")
def pretrained_run(data_for, tmp_path_factory):
    """A persistent debug run of the softmax pre-training (section 4.6):
    its row's run, and the start of the fine-tuning row's."""
    row = next(
        r for r in ROWS if r["hparams_file"].endswith("softmax_pretrain.yaml")
    )
    out = tmp_path_factory.mktemp("pretrain")
    run_recipe(row, data_for(row["data"]), out, ["--debug_persistently"])
    return out


def _check_lr_schedule(train_log, keys):
    """The logged lr follows a linear decay from lr to final_lr.

    lr of epoch e (1-based) = lr + (final_lr - lr) (e - 1) / (epochs - 1),
    written here from the definition, not from SpeechBrain's scheduler;
    without final_lr (the paper's files) it is constant.
    """
    text = (REPO / "recipes/VoxCeleb/hparams/multi_metric.yaml").read_text()
    base = dict(re.findall(r"^(lr|number_of_epochs): (\S+)", text, re.M))
    lr = float(keys.get("lr", base["lr"]))
    final = float(keys.get("final_lr", lr))
    epochs = int(keys.get("number_of_epochs", base["number_of_epochs"]))
    logged = [
        float(m.group(1))
        for m in re.finditer(r"lr: ([0-9.e+-]+)", train_log.read_text())
    ]
    assert logged, f"no lr in {train_log}"
    for e, value in enumerate(logged, start=1):
        expect = lr + (final - lr) * (e - 1) / max(1, epochs - 1)
        assert value == pytest.approx(expect, rel=0.01), (e, logged)


@pytest.mark.parametrize(
    "row",
    [r for r in ROWS if "(run by " not in r["debug_flags"]],
    ids=lambda r: r["hparams_file"],
)
def test_recipe_runs_in_debug(row, data_for, tmp_path, request):
    """Train, validate, checkpoint and verify in --debug; finite EERs."""
    if "<pretrained>" in row["debug_flags"]:
        save = request.getfixturevalue("pretrained_run") / "save"
        row = dict(row)
        row["debug_flags"] = row["debug_flags"].replace(
            "<pretrained>", str(save)
        )
    if row["hparams_file"].endswith("softmax_pretrain.yaml"):
        run = request.getfixturevalue("pretrained_run")  # this row's run
    else:
        run = tmp_path / "run"
        run_recipe(row, data_for(row["data"]), run)
    _, keys = resolve_variant(REPO / row["hparams_file"])
    _check_lr_schedule(run / "train_log.txt", keys)
    no_test = "--test_after_training=False" in row["debug_flags"].split()
    if no_test or keys.get("test_after_training") is False:
        assert not (run / "verification").exists()
        return
    summary = run / "verification" / "summary.json"
    results = json.loads(summary.read_text())
    assert results, "no scoring method in the summary"
    for key, res in results.items():
        assert math.isfinite(res["eer"]) and 0 <= res["eer"] <= 1, key


def test_a_variant_may_hold_tagged_objects(tmp_path):
    """A variant replaces an object of its base by a tagged one, refers to
    the base's values, and the command line still wins."""
    mini = REPO / "recipes" / "VoxCeleb" / "hparams" / "mini.yaml"
    (tmp_path / "v.yaml").write_text(
        f"extends: {mini}\n"
        "emb_dim: 24\n"
        "normalize: !new:dampit.lobes.features.CropNormalization\n"
        "    mode: freq\n"
        "valid_pairs: !ref <emb_dim> * 10\n"
    )
    hp, base, _ = load_hparams(
        tmp_path / "v.yaml", {"data_folder": str(tmp_path), "emb_dim": 32}
    )
    assert (
        pathlib.Path(base)
        == REPO / "recipes/VoxCeleb/hparams/multi_metric.yaml"
    )
    assert hp["normalize"].mode == "freq"
    assert hp["valid_pairs"] == 320 and hp["n_freq"] == 80  # mini's value
    assert hp["modules"]["normalize"] is hp["normalize"]
