"""Tests of dampit.utils.checkpoint_averaging and the recipe's use of it.

Checkpoints are written by the recipe's own checkpointer (mini.yaml's
``AtomicCheckpointer``, modules and ``MultiMetricBrain``, from the
``mini_brain`` fixture); the expected averages are computed here by a
plain loop over the saved state dicts, in float64.
"""

import json
import logging
import os
import re

import pytest
import torch

from dampit.training.verification import load_test_weights
from dampit.utils.checkpoint_averaging import (
    average_weights,
    select_test_checkpoints,
)
from dampit.utils.checkpoints import AtomicCheckpointer


def perturb(module, gen):
    """New random floating weights; the BN counters move on by 3."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen))
            else:
                t.add_(3)


def save_epochs(hp, eers, gen, classifiers=None):
    """One end-of-epoch checkpoint per EER; returns each epoch's network
    state (and appends its loss state to ``classifiers``)."""
    states = []
    for epoch, eer in enumerate(eers, start=1):
        perturb(hp["embedding_model"], gen)
        perturb(hp["compute_cost"], gen)
        hp["epoch_counter"].current = epoch
        hp["checkpointer"].save_checkpoint(meta={"EER": eer})
        states.append(
            {
                k: v.clone()
                for k, v in hp["embedding_model"].state_dict().items()
            }
        )
        if classifiers is not None:
            cost = hp["compute_cost"].state_dict()
            classifiers.append({k: v.clone() for k, v in cost.items()})
    return states


def loop_average(states):
    """The mean of state dicts, key by key, in float64 (ints rounded)."""
    out = {}
    for name in states[0]:
        total = torch.zeros(states[0][name].shape, dtype=torch.float64)
        for state in states:
            total += state[name].double()
        mean = total / len(states)
        if not states[0][name].is_floating_point():
            mean = mean.round()
        out[name] = mean
    return out


@pytest.fixture
def saved(mini_brain):
    _, hp = mini_brain()
    gen = torch.Generator().manual_seed(0)
    states = save_epochs(hp, [30.0, 10.0, 25.0, 20.0], gen)
    return hp, states


def test_average_equals_a_loop_over_the_saved_states(saved):
    hp, states = saved
    for n in (2, 3, 4):  # (n = 1 tests the best one: load_test_weights)
        ckpts = select_test_checkpoints(hp["checkpointer"], n)
        assert [c.meta["EER"] for c in ckpts] == [20.0, 25.0, 10.0, 30.0][:n]
        got = average_weights(ckpts, "embedding_model")
        want = loop_average(states[-n:])
        assert set(got) == set(want)
        for name in want:
            assert got[name].dtype == states[0][name].dtype, name
            torch.testing.assert_close(
                got[name].double(), want[name], rtol=1e-6, atol=1e-6
            )


def test_selection_for_the_test(saved, caplog):
    hp, _ = saved
    ckpt = hp["checkpointer"]
    assert [c.meta["EER"] for c in select_test_checkpoints(ckpt, 3)] == [
        20.0,
        25.0,
        10.0,
    ]
    # An intra-epoch checkpoint (no EER) is never averaged.
    ckpt.save_checkpoint(meta={"intra": True}, end_of_epoch=False)
    assert [c.meta["EER"] for c in select_test_checkpoints(ckpt, 2)] == [
        20.0,
        25.0,
    ]
    with caplog.at_level(logging.WARNING):
        found = select_test_checkpoints(ckpt, 9)
    assert len(found) == 4
    assert "average_checkpoints=9" in caplog.text


def test_missing_recoverable_names_the_checkpoint(saved):
    hp, _ = saved
    ckpts = select_test_checkpoints(hp["checkpointer"], 2)
    with pytest.raises(KeyError, match=re.escape(ckpts[0].path.name)):
        average_weights(ckpts, "no_such_module")


def test_training_keeps_the_best_and_the_last_n(mini_brain):
    """save_and_keep_only as train.py calls it, with num_to_keep = N."""
    _, hp = mini_brain()
    ckpt = hp["checkpointer"]
    for epoch, eer in enumerate([30.0, 10.0, 25.0, 20.0, 22.0], start=1):
        hp["epoch_counter"].current = epoch
        ckpt.save_and_keep_only(
            meta={"EER": eer}, min_keys=["EER"], num_to_keep=2
        )
    kept = sorted(c.meta["EER"] for c in ckpt.list_checkpoints())
    assert kept == [10.0, 20.0, 22.0]  # the 2 best (10, 20), the 2 newest


@pytest.mark.parametrize("n", [1, 3])
def test_recipe_loads_the_weights_it_tests(tmp_path, mini_brain, mini_tree, n):
    brain, hp = mini_brain(average_checkpoints=n)  # the Brain is a recoverable
    gen = torch.Generator().manual_seed(1)
    costs = []
    states = save_epochs(hp, [30.0, 10.0, 25.0, 20.0], gen, costs)
    perturb(hp["embedding_model"], gen)  # weights no checkpoint holds
    out = tmp_path / "verification"
    out.mkdir()
    tree = mini_tree(average_checkpoints=n)
    used = load_test_weights(brain.checkpointer, hp, tree, str(out))
    listed = (out / "checkpoints.txt").read_text().split()
    assert listed == [str(c.path) for c in used]
    got = hp["embedding_model"].state_dict()
    want = loop_average(states[-n:]) if n > 1 else loop_average([states[1]])
    assert len(used) == n
    for name in want:
        torch.testing.assert_close(
            got[name].double(), want[name], rtol=1e-6, atol=1e-6
        )
    assert all(os.path.isdir(p) for p in listed)
    # What export reads: the same weights, the YAML's modules, and the
    # softmax term's classifier averaged over the same checkpoints.
    saved = torch.load(out / "embedding_model.ckpt", weights_only=True)
    for name in want:
        torch.testing.assert_close(
            saved[name].double(), want[name], rtol=1e-6, atol=1e-6
        )
    tested = json.loads((out / "tested_model.json").read_text())
    assert tested["checkpoints"] == listed
    assert tested["sample_rate"] == 16000
    for name, key in [
        ("compute_features", "compute_features"),
        ("mean_var_norm", "normalize"),
        ("embedding_model", "embedding_model"),
    ]:
        assert tested["modules"][name] == {
            "class": tree[key].tag.value[len("!new:") :],
            "kwargs": dict(tree[key]),
        }
    assert tested["modules"]["classifier"] == {
        "class": "dampit.lobes.resnet.LinearClassifier",
        "kwargs": {"input_size": 32, "n_classes": 4},
    }
    clf = torch.load(out / "classifier.ckpt", weights_only=True)
    cost = loop_average(costs[-n:]) if n > 1 else loop_average([costs[1]])
    for part in ("weight", "bias"):
        torch.testing.assert_close(
            clf[f"out.{part}"].double(),
            cost[f"terms.softmax.classifier.{part}"],
            rtol=1e-6,
            atol=1e-6,
        )


def test_recipe_without_checkpoints_says_so(
    tmp_path, mini_brain, mini_tree, caplog
):
    brain, hp = mini_brain(average_checkpoints=2)
    brain.checkpointer = AtomicCheckpointer(tmp_path / "empty")
    out = tmp_path / "verification"
    out.mkdir()
    with caplog.at_level(logging.WARNING):
        used = load_test_weights(brain.checkpointer, hp, mini_tree(), str(out))
    assert used == []
    assert "no checkpoint found" in caplog.text
    assert (out / "checkpoints.txt").read_text() == ""


def test_recipe_refuses_a_bad_count_before_any_work(recipe, tmp_path):
    train, _ = recipe
    mini = train.__file__.replace("train.py", "hparams/mini.yaml")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="average_checkpoints=0 is not an"):
        train.main(
            [
                mini,
                f"--data_folder={tmp_path}",
                f"--output_folder={out}",
                "--average_checkpoints=0",
            ]
        )
    assert not out.exists()  # refused before the lock and the preparation
