"""The recipe runs on the paths as typed, or refuses them in one line."""

import os
import pathlib

import pytest
from speechbrain.dataio.dataio import load_data_csv

from dampit.training.command_line import parse_command_line
from dampit.training.run_setup import USER_ERRORS, start_run

REPO = pathlib.Path(__file__).resolve().parents[2]
MINI = str(REPO / "recipes" / "VoxCeleb" / "hparams" / "mini.yaml")
SMALL = ["--n_test_speakers=2", "--P=4", "--K=2", "--device=cpu"]


def _speech_tree(shared_data, root, first, n_spk=6, n_utt=6):
    """``root/s<k>/`` symlinks to dspspeech speakers ``first``..; the
    speaker folders are named s0, s1... whatever ``first`` is."""
    src = shared_data / "dspspeech"
    speakers = sorted(d.name for d in src.iterdir() if d.is_dir())
    for k, spk in enumerate(speakers[first : first + n_spk]):
        os.makedirs(root / f"s{k}")
        for f in sorted((src / spk).glob("*.wav"))[:n_utt]:
            os.symlink(f, root / f"s{k}" / f.name)
    return root


def test_typed_values_arrive_as_typed():
    argv = [
        MINI,
        "--data_folder=/data/set=1",
        "--output_folder=2024",
        "--noise_folder",
        "/noise/my set",
        '--rir_folder="/rir/a #b"',  # the shell's --rir_folder='"/rir/a #b"'
        "--init_from=null",
        "--n_folds=5",
    ]
    _, run_opts, over = parse_command_line(argv + ["--device=cpu"])
    assert over == {
        "data_folder": "/data/set=1",
        "output_folder": "2024",
        "noise_folder": "/noise/my set",
        "rir_folder": "/rir/a #b",
        "init_from": None,
        "n_folds": 5,
    }
    assert run_opts["device"] == "cpu"
    _, _, over = parse_command_line([MINI, "--data_folder=[/a/x y,/b]"])
    assert over["data_folder"] == ["/a/x y", "/b"]
    _, _, over = parse_command_line([MINI, '--data_folder=["2024",/b]'])
    assert over["data_folder"] == ["2024", "/b"]
    with pytest.raises(USER_ERRORS, match="2024 is not a path"):
        parse_command_line([MINI, "--data_folder=[2024,/b]"])


@pytest.mark.parametrize(
    "key, value",
    [
        ("data_folder", "{tmp}/my #set"),
        ("output_folder", "{tmp}/out #2"),
        ("init_from", "{tmp}/a\nb"),
    ],
)
def test_a_value_yaml_would_change_is_refused_before_any_work(
    shared_data, tmp_path, key, value
):
    data = _speech_tree(shared_data, tmp_path / "my", 0)
    (tmp_path / "my #set").symlink_to(data)
    args = {"data_folder": data, "output_folder": tmp_path / "o"}
    args[key] = value.format(tmp=tmp_path)
    argv = [MINI] + [f"--{k}={v}" for k, v in args.items()] + SMALL
    with pytest.raises(USER_ERRORS) as err:
        start_run(argv)
    message = str(err.value)
    assert "\n" not in message and f"--{key}=" in message
    assert args[key].split("\n")[0] in message
    assert sorted(os.listdir(tmp_path)) == ["my", "my #set"]  # no work done


def test_paths_with_equals_and_digits_run_as_typed(
    shared_data, tmp_path, monkeypatch
):
    data = _speech_tree(shared_data, tmp_path / "set=1", 0)
    monkeypatch.chdir(tmp_path)
    run = start_run(
        [MINI, f"--data_folder={data}", "--output_folder=2024"] + SMALL
    )
    assert run.hparams["data_folder"] == str(data)
    assert run.hparams["output_folder"] == "2024"
    assert os.path.isdir(tmp_path / "2024" / "prepared")
    rows = load_data_csv(run.data["train"]).values()
    assert rows and all(r["wav"].startswith(f"{data}/s") for r in rows)


def test_a_list_of_corpora_through_the_command_line(shared_data, tmp_path):
    one = _speech_tree(shared_data, tmp_path / "one", 0)
    two = _speech_tree(shared_data, tmp_path / "two", 6)  # s0..s5 again
    argv = [MINI, f"--data_folder=[{one},{two}]", "--test_corpora=one"]
    argv += [f"--output_folder={tmp_path}/out"] + SMALL
    run = start_run(argv)
    # 12 speakers (two corpora's s0..s5 apart), 2 of one's test speakers
    assert run.data["n_classes"] == 10 == run.hparams["n_speakers"]
    test = {r["spk_id"] for r in load_data_csv(run.data["test"]).values()}
    assert len(test) == 2 and all(s.startswith("one:s") for s in test)
    train = {r["spk_id"] for r in load_data_csv(run.data["train"]).values()}
    assert {f"two:s{k}" for k in range(6)} <= train
