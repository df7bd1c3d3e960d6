"""The speaker-verification template (templates/speaker_verification).

Checks that the two YAML files are one recipe that differs only in the
loss, sampler and classifier lines, that the stock file uses SpeechBrain
pieces only, that the dampit file's sampler really gives P x K batches
through train.py's loader, and that train.py runs both files end to end in
``--debug`` on real audio (dspspeech), on the same split, and writes a
held-out EER.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "speaker_verification"
STOCK = TEMPLATE / "hparams" / "ecapa_aam.yaml"
MULTI = TEMPLATE / "hparams" / "ecapa_multi_metric.yaml"

# Top-level keys allowed to differ, and the module / checkpoint entries.
STOCK_ONLY = {"classifier"}
MULTI_ONLY = {"P", "K", "train_sampler"}
BOTH_DIFFER = {"experiment", "compute_cost"}


class _TaggedLoader(yaml.SafeLoader):
    """A safe loader that keeps HyperPyYAML tags as plain data."""


def _tagged(loader, suffix, node):
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return {"tag": "!" + suffix, "value": value}


_TaggedLoader.add_multi_constructor("!", _tagged)


def _load_tree(path):
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_TaggedLoader)


def _tags(node):
    if isinstance(node, dict):
        if set(node) == {"tag", "value"}:
            yield node["tag"]
        for value in node.values():
            yield from _tags(value)
    elif isinstance(node, list):
        for value in node:
            yield from _tags(value)


def test_yaml_files_differ_only_in_the_loss_and_sampler():
    """Every shared key is identical, modules and checkpoints included."""
    stock, multi = _load_tree(STOCK), _load_tree(MULTI)
    assert set(stock) - set(multi) == STOCK_ONLY
    assert set(multi) - set(stock) == MULTI_ONLY
    differ = [
        k
        for k in set(stock) & set(multi)
        if k not in {"modules", "checkpointer"} and stock[k] != multi[k]
    ]
    assert sorted(differ) == sorted(BOTH_DIFFER)

    s_mod, m_mod = stock["modules"], multi["modules"]
    assert set(s_mod) - set(m_mod) == {"classifier"}
    assert set(m_mod) - set(s_mod) == {"compute_cost"}
    assert {k: v for k, v in s_mod.items() if k != "classifier"} == {
        k: v for k, v in m_mod.items() if k != "compute_cost"
    }
    s_rec = stock["checkpointer"]["value"]["recoverables"]
    m_rec = multi["checkpointer"]["value"]["recoverables"]
    assert s_rec.pop("classifier")["value"] == "<classifier>"
    assert m_rec.pop("compute_cost")["value"] == "<compute_cost>"
    assert s_rec == m_rec


def test_stock_yaml_is_speechbrain_only_and_losses_match():
    """No dampit object in the stock file; the AAM terms agree."""
    stock, multi = _load_tree(STOCK), _load_tree(MULTI)
    stock_tags = list(_tags(stock))
    assert stock_tags and not [t for t in stock_tags if "dampit" in t]
    assert "!new:speechbrain.nnet.losses.LogSoftmaxWrapper" in stock_tags
    aam = stock["compute_cost"]["value"]["loss_fn"]
    assert aam["tag"] == "!new:speechbrain.nnet.losses.AdditiveAngularMargin"

    cost = multi["compute_cost"]
    assert cost["tag"] == "!new:dampit.losses.MultiMetricLoss"
    terms = cost["value"]["terms"]
    assert set(terms) == {"triplet", "npair", "angular", "softmax"}
    soft = terms["softmax"]["value"]
    assert soft["kind"] == "aam"
    assert (soft["margin"], soft["scale"]) == (
        aam["value"]["margin"],
        aam["value"]["scale"],
    )
    assert multi["P"] * multi["K"] == multi["batch_size"]
    assert multi["train_sampler"]["tag"].startswith(
        "!name:dampit.dataio.sampler.PKSampler"
    )


def _import_train():
    spec = importlib.util.spec_from_file_location(
        "template_train", TEMPLATE / "train.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Holder:
    """Stands in for the Brain: make_train_set only sets train_sampler."""

    train_sampler = None


def test_train_loader_follows_the_yaml(shared_data, tmp_path):
    """dampit file: P x K batches and set_epoch; stock: SpeechBrain opts."""
    from hyperpyyaml import load_hyperpyyaml

    train = _import_train()
    data = str(shared_data / "dspspeech")
    loaders = {}
    for path in (STOCK, MULTI):
        with open(path, encoding="utf-8") as f:
            hp = load_hyperpyyaml(
                f, {"data_folder": data, "output_folder": str(tmp_path)}
            )
        os.makedirs(hp["save_folder"], exist_ok=True)
        prep = train.prepare_data(hp)
        train_data, _, encoder = train.dataio_prep(hp, prep)
        holder = _Holder()
        loaders[path.stem] = (train.make_train_set(holder, hp, train_data), hp)
        loaders[path.stem] += (holder, encoder)

    (train_set, opts), hp, holder, _ = loaders["ecapa_aam"]
    assert train_set.__class__.__name__ == "DynamicItemDataset"
    assert opts["shuffle"] is True and opts["batch_size"] == hp["batch_size"]
    assert holder.train_sampler is None

    (loader, opts), hp, holder, encoder = loaders["ecapa_multi_metric"]
    assert opts == {} and holder.train_sampler is loader.batch_sampler
    P, K = hp["P"], hp["K"]
    batch = next(iter(loader))
    labels = batch.spk_id_encoded.data.reshape(-1).tolist()
    assert len(labels) == P * K
    groups = [labels[k : k + K] for k in range(0, P * K, K)]
    assert all(len(set(g)) == 1 for g in groups)  # speaker-major order
    assert len({g[0] for g in groups}) == P
    assert len(encoder) == hp["n_speakers"]
    # A different epoch gives different batches; the same epoch the same.
    holder.train_sampler.set_epoch(1)
    first = [list(b) for b in holder.train_sampler]
    holder.train_sampler.set_epoch(2)
    second = [list(b) for b in holder.train_sampler]
    holder.train_sampler.set_epoch(1)
    assert first != second and first == [list(b) for b in holder.train_sampler]


@pytest.mark.parametrize(
    "override, message",
    [
        ("--lr=abc", "lr='abc' is not a number in [1e-12, 10.0]"),
        ("--seed=abc", "seed='abc' is not an integer in [0, 4294967295]"),
        ("--P=1", "P=1 is not an integer in [2, 100000]"),
    ],
)
def test_bad_value_is_refused_before_any_folder(tmp_path, override, message):
    """A value out of the bounds table is one line naming it, before the
    YAML builds anything (its checkpointer would create the folder)."""
    from dampit.training.arguments import ArgumentError

    train = _import_train()
    (tmp_path / "data").mkdir()
    out = tmp_path / "out"
    argv = [str(MULTI), f"--data_folder={tmp_path / 'data'}"]
    argv += [f"--output_folder={out}", override]
    with pytest.raises(ArgumentError) as err:
        train.main(argv)
    assert str(err.value) == f"{MULTI}: {message}"
    assert os.listdir(tmp_path) == ["data"]


def test_bad_value_exits_with_one_line(tmp_path):
    """train.py itself: exit status 1, one line, no folder."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(TEMPLATE / "train.py"), str(MULTI)]
        + [f"--data_folder={tmp_path}", f"--output_folder={out}", "--K=0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    want = f"error: {MULTI}: K=0 is not an integer in [1, 10000]"
    assert proc.stderr.strip() == want
    assert not out.exists()


@pytest.fixture(scope="module")
def debug_runs(shared_data, tmp_path_factory):
    """Run train.py --debug with both YAML files (about 20 s each)."""
    runs = {}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for path in (STOCK, MULTI):
        out = tmp_path_factory.mktemp(path.stem)
        cmd = [
            sys.executable,
            str(TEMPLATE / "train.py"),
            str(path),
            f"--data_folder={shared_data / 'dspspeech'}",
            f"--output_folder={out}",
            "--debug",
            "--noprogressbar",
        ]
        proc = subprocess.run(
            cmd,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        runs[path.stem] = (proc, out)
    return runs


@pytest.mark.parametrize("name", ["ecapa_aam", "ecapa_multi_metric"])
def test_debug_run_reports_held_out_eer(debug_runs, name):
    """Each file trains, tests on every trial and writes its EER."""
    proc, out = debug_runs[name]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"] == name
    assert 0.0 <= results["eer"] <= 100.0
    trials = (out / "prepared" / "trials.txt").read_text().splitlines()
    assert results["n_trials"] == len(trials) > 0
    assert f"held-out EER {results['eer']:.2f}%" in proc.stdout
    metrics = json.loads(
        (out / "verification" / "full_cosine_metrics.json").read_text()
    )
    assert abs(100 * metrics["eer"] - results["eer"]) < 1e-9
    log = (out / "train_log.txt").read_text()
    assert "epoch: 2" in log and "epoch: 3" not in log  # --debug: 2 epochs
    if name == "ecapa_multi_metric":  # the loss terms are logged
        assert all(t in log for t in ("triplet", "npair", "angular"))


def test_debug_runs_share_the_split(debug_runs):
    """Both files train and test on the same utterances and trials."""
    (_, a), (_, b) = debug_runs["ecapa_aam"], debug_runs["ecapa_multi_metric"]
    for name in ("train.csv", "dev.csv", "test.csv", "trials.txt"):
        assert (a / "prepared" / name).read_bytes() == (
            b / "prepared" / name
        ).read_bytes()
