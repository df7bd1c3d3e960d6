"""The speaker-verification template (templates/speaker_verification).

Checks that ecapa_multi_metric.yaml is ecapa_aam.yaml with exactly the
entries that the template's README documents for SpeechBrain's recipes
(nothing else differs), that the stock file uses SpeechBrain pieces only,
that the dampit file's sampler really gives P x K batches through
SpeechBrain's loader, that ``n_speakers`` comes from the prepared data in
the template as in dampit's recipe (one identical warning line when the
YAML says otherwise), and that train.py runs both files end to end in
``--debug`` on real audio (dspspeech), on the same split, and writes a
held-out EER and what it tested, which ``dampit-export`` exports.
"""

import importlib.util
import json
import logging
import os
import pathlib
import subprocess
import sys

import pytest
import soundfile
import speechbrain as sb
import torch
import yaml
from speechbrain.dataio.dataio import load_data_csv
from speechbrain.inference.classifiers import EncoderClassifier

from dampit.cli.export import main as export_main
from dampit.dataio.sampler import PKSampler
from dampit.inference.api import load_model
from dampit.training.arguments import ArgumentError
from dampit.training.run_setup import RecipeError, start_run

REPO = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "speaker_verification"
STOCK = TEMPLATE / "hparams" / "ecapa_aam.yaml"
MULTI = TEMPLATE / "hparams" / "ecapa_multi_metric.yaml"
MINI = REPO / "recipes" / "VoxCeleb" / "hparams" / "mini.yaml"
_spec = importlib.util.spec_from_file_location(
    "readme_snippets", REPO / "tests" / "readme_snippets.py"
)
snippets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(snippets)

# Top-level keys allowed to differ: the README's step-2 entries.
MULTI_ONLY = {"P", "K", "train_sampler", "pk_loader_options"}
BOTH_DIFFER = {"experiment", "classifier", "compute_cost"}


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
    assert set(stock) - set(multi) == set()
    assert set(multi) - set(stock) == MULTI_ONLY
    differ = [k for k in stock if stock[k] != multi[k]]
    assert sorted(differ) == sorted(BOTH_DIFFER)


def _documented_entries():
    """The YAML entries of the README's step 2, as a tagged tree."""
    text = (TEMPLATE / "README.md").read_text(encoding="utf-8")
    blocks = snippets.code_blocks(text)
    (entries,) = [c for _, c, _ in blocks if "MetricHeadLoss" in c]
    return yaml.load(entries, Loader=_TaggedLoader)


def test_multi_metric_yaml_is_the_documented_change():
    """ecapa_multi_metric.yaml = ecapa_aam.yaml + the README's step 2:
    the same entries, the classifier's arguments kept (the template's
    names), and no ``augmenter`` (the template has no wav_augment)."""
    stock, multi = _load_tree(STOCK), _load_tree(MULTI)
    doc = _documented_entries()
    assert set(doc) == MULTI_ONLY | {"classifier", "compute_cost"}
    metric = doc["compute_cost"]["value"]["metric"]["value"]
    assert metric.pop("augmenter") == {"tag": "!ref", "value": "<wav_augment>"}
    assert metric.pop("augmented_copies") == "exclude"  # the default
    for key in sorted(MULTI_ONLY | {"compute_cost"}):
        assert multi[key] == doc[key], key
    assert multi["classifier"]["tag"] == doc["classifier"]["tag"]
    assert multi["classifier"]["value"] == stock["classifier"]["value"]


def test_stock_yaml_is_speechbrain_only_and_losses_match():
    """No dampit object in the stock file; its loss is the AAM term of the
    dampit file's."""
    stock, multi = _load_tree(STOCK), _load_tree(MULTI)
    stock_tags = list(_tags(stock))
    assert stock_tags and not [t for t in stock_tags if "dampit" in t]
    assert "!new:speechbrain.nnet.losses.LogSoftmaxWrapper" in stock_tags
    aam = stock["compute_cost"]["value"]["loss_fn"]
    assert aam["tag"] == "!new:speechbrain.nnet.losses.AdditiveAngularMargin"

    cost = multi["compute_cost"]
    assert cost["tag"] == "!new:dampit.losses.metric_head.MetricHeadLoss"
    assert cost["value"]["softmax"] == stock["compute_cost"]
    assert cost["value"]["head"] == {"tag": "!ref", "value": "<classifier>"}
    terms = cost["value"]["metric"]["value"]["terms"]
    assert set(terms) == {"triplet", "npair", "angular"}
    assert multi["P"] * multi["K"] == multi["batch_size"]


def _import_train():
    spec = importlib.util.spec_from_file_location(
        "template_train", TEMPLATE / "train.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_loader_follows_the_yaml(speech_tree, tmp_path):
    """dampit file: SpeechBrain's loader of the PKSampler gives P x K
    batches, another draw each pass; stock file: SpeechBrain's options."""
    train = _import_train()
    data = speech_tree(tmp_path / "data", n_spk=6, n_utt=8)
    loaders = {}
    for path, small in ((STOCK, []), (MULTI, ["--P=3"])):
        run = train.load_hparams(
            [str(path), f"--data_folder={data}", "--n_test_speakers=2"]
            + [f"--output_folder={tmp_path / path.stem}", "--batch_size=6"]
            + ["--device=cpu"]
            + small
        )
        hp = run.hparams
        train_data, _, encoder = train.dataio_prep(hp, run.prep)
        opts = train.train_loader_options(hp, train_data)
        brain = train.SpeakerBrain(
            modules=hp["modules"], hparams=hp, run_opts=run.run_opts
        )
        loader = brain.make_dataloader(train_data, sb.Stage.TRAIN, **opts)
        loaders[path.stem] = (loader, opts, hp, encoder)

    loader, opts, hp, _ = loaders["ecapa_aam"]
    assert opts == {"batch_size": 6, "shuffle": True, "num_workers": 0}
    assert loader.batch_size == 6 and "batch_sampler" not in opts

    loader, opts, hp, encoder = loaders["ecapa_multi_metric"]
    sampler = opts["batch_sampler"]
    assert isinstance(sampler, PKSampler) and loader.batch_sampler is sampler
    assert (sampler.P, sampler.K, sampler.num_replicas) == (3, 2, 1)
    P, K = hp["P"], hp["K"]
    passes = [
        [b.spk_id_encoded.data.reshape(-1).tolist() for b in loader]
        for _ in range(2)
    ]
    for labels in passes[0]:
        assert len(labels) == P * K
        groups = [labels[k : k + K] for k in range(0, P * K, K)]
        assert all(len(set(g)) == 1 for g in groups)  # speaker-major order
        assert len({g[0] for g in groups}) == P
    assert passes[0] != passes[1]  # each pass draws the next epoch
    assert len(encoder) == hp["n_speakers"] == 4


@pytest.mark.parametrize("which", ["template", "recipe"])
def test_n_speakers_comes_from_the_data(speech_tree, tmp_path, caplog, which):
    """A YAML n_speakers other than the prepared training speakers: the
    data's number is used (built and read plainly), and one warning line
    (the same function in both) names the file and both numbers."""
    data = speech_tree(tmp_path / "data")
    argv = [f"--data_folder={data}", f"--output_folder={tmp_path / 'out'}"]
    argv += ["--n_test_speakers=2", "--n_speakers=7", "--device=cpu"]
    if which == "template":
        yaml_file = MULTI
        run = _import_train().load_hparams([str(MULTI)] + argv)
        train_csv = run.prep["train_csv"]
        weight = run.hparams["classifier"].weight
    else:
        yaml_file = MINI
        run = start_run([str(MINI), "--P=4", "--K=2"] + argv)
        train_csv = run.data["train"]
        weight = run.hparams["compute_cost"].terms["softmax"].classifier.weight
    n = len({row["spk_id"] for row in load_data_csv(train_csv).values()})
    assert n == 4 and run.hparams["n_speakers"] == n == len(weight)
    assert run.plain["n_speakers"] == n  # what verification saves
    lines = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if "n_speakers" in r.getMessage()
    ]
    assert lines == [
        (
            logging.WARNING,
            f"n_speakers={n}: the training classes of the data "
            f"({yaml_file} says 7)",
        )
    ]


def test_resumed_run_draws_the_epoch_it_resumes_at(speech_tree, tmp_path):
    """A run resumed after epoch 2 of 3 trains epoch 3 on the sampler's
    epoch-3 batches (SpeechBrain calls ``set_epoch``), not on a redraw of
    the first epoch's."""
    train = _import_train()
    data = speech_tree(tmp_path / "data", n_spk=6, n_utt=8)
    run = train.load_hparams(
        [str(MULTI), f"--data_folder={data}", "--n_test_speakers=2"]
        + [f"--output_folder={tmp_path / 'out'}", "--P=3", "--device=cpu"]
        + ["--number_of_epochs=3"]
    )
    hp = run.hparams
    train_data, valid_data, _ = train.dataio_prep(hp, run.prep)
    opts = train.train_loader_options(hp, train_data)
    brain = train.make_brain(hp, run.run_opts, opts)
    hp["epoch_counter"].current = 2  # as the checkpoint of epoch 2 says
    brain.fit(
        hp["epoch_counter"],
        train_data,
        valid_data,
        train_loader_kwargs=opts,
        valid_loader_kwargs=hp["valid_dataloader_opts"],
        progressbar=False,
    )
    assert opts["batch_sampler"]._pass_epoch == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("--lr=abc", "lr='abc' is not a number in [1e-12, 10.0]"),
        ("--seed=abc", "seed='abc' is not an integer in [0, 4294967295]"),
        ("--P=1", "P=1 is not an integer in [2, 100000]"),
        ("--bogus=3", "--bogus is not a key of this YAML file"),
    ],
)
def test_bad_value_is_refused_before_any_folder(tmp_path, override, message):
    """A value out of the bounds table or a key the YAML lacks is one line
    naming it, before the YAML builds anything (its checkpointer would
    create the folder)."""

    train = _import_train()
    (tmp_path / "data").mkdir()
    out = tmp_path / "out"
    argv = [str(MULTI), f"--data_folder={tmp_path / 'data'}"]
    argv += [f"--output_folder={out}", override]
    with pytest.raises((ArgumentError, RecipeError)) as err:
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
    """Run train.py --debug with both YAML files (about 20 s each); the
    checkpoints stay in the run's save folder (``--debug_persistently``)."""
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
            "--debug_persistently",
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


@torch.no_grad()
@pytest.mark.parametrize("path", [STOCK, MULTI], ids=lambda p: p.stem)
def test_debug_run_exports_what_it_tested(
    debug_runs, shared_data, tmp_path, monkeypatch, path
):
    """``dampit-export <run> <model>``: both loaders give the template
    Brain's embedding and logits, with the weights of the checkpoint of
    the lowest validation EER, for real speech; the classifier (ECAPA or
    MetricHead) is SpeechBrain's ECAPA ``Classifier``; the threshold is the
    EER threshold of the run's whole-utterance cosine scores."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, out = debug_runs[path.stem]
    model = tmp_path / "model"
    assert export_main([str(out), str(model)]) == 0
    spec = json.loads((model / "dampit_export.json").read_text())
    head = spec["modules"]["classifier"]
    assert head["class"] == "speechbrain.lobes.models.ECAPA_TDNN.Classifier"
    metrics = out / "verification" / "full_cosine_metrics.json"
    assert spec["threshold"] == json.loads(metrics.read_text())["eer_threshold"]

    # The template's Brain, built from the YAML, with the checkpoint of
    # the lowest validation EER (the one its evaluation tests).
    data = shared_data / "dspspeech"
    run = _import_train().load_hparams(
        [str(path), f"--data_folder={data}", f"--output_folder={out}"]
        + ["--device=cpu"]
    )
    hp = run.hparams
    brain = _import_train().SpeakerBrain(
        modules=hp["modules"], hparams=hp, run_opts=run.run_opts
    )
    best = min(
        hp["checkpointer"].list_checkpoints(), key=lambda c: c.meta["EER"]
    )
    assert spec["checkpoints"] == [str(best.path)]
    hp["checkpointer"].load_checkpoint(best)
    brain.modules.eval()
    # A held-out speaker's utterance, whole.
    row = next(iter(load_data_csv(run.prep["test_csv"]).values()))
    wav, _ = soundfile.read(row["wav"], dtype="float32")
    wav = torch.from_numpy(wav)[None]
    want = brain.compute_embeddings(wav, torch.ones(1))
    logits = brain.modules.classifier(want)

    mine = load_model(model)
    sb_model = EncoderClassifier.from_hparams(
        source=str(model),
        savedir=str(tmp_path / "sb"),
        run_opts={"device": "cpu"},
    )
    for loaded in (mine, sb_model):
        torch.testing.assert_close(
            loaded.encode_batch(wav), want, rtol=0, atol=1e-5
        )
        got = loaded.classify_batch(wav)[0]
        torch.testing.assert_close(got, logits.squeeze(1), rtol=0, atol=1e-5)
