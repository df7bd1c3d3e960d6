"""The training embeddings' statistics and the collapse alarm."""

import itertools
import logging
import math

import torch
import torch.nn.functional as F

from dampit.training.embedding_health import EmbeddingHealth, batch_health

LOGGER = "dampit.training.embedding_health"


def test_batch_health_matches_pair_loops():
    gen = torch.Generator().manual_seed(1)
    emb = torch.randn(10, 1, 6, generator=gen)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    same, diff = [], []
    for i, j in itertools.permutations(range(10), 2):
        cos = float(F.cosine_similarity(emb[i], emb[j]))
        (same if labels[i] == labels[j] else diff).append(cos)
    norms = [math.sqrt(sum(float(v) ** 2 for v in row[0])) for row in emb]
    mean = sum(norms) / len(norms)
    std = math.sqrt(sum((n - mean) ** 2 for n in norms) / len(norms))
    got = batch_health(emb, labels)
    assert math.isclose(got["cos_same"], sum(same) / len(same), abs_tol=1e-6)
    assert math.isclose(got["cos_diff"], sum(diff) / len(diff), abs_tol=1e-6)
    assert math.isclose(got["norm_mean"], mean, rel_tol=1e-6)
    assert math.isclose(got["norm_std"], std, rel_tol=1e-5)


def _batches(n_batches=3, P=4, K=2):
    gen = torch.Generator().manual_seed(2)
    centres = torch.randn(P, 8, generator=gen) * 3
    for _ in range(n_batches):
        x = centres.repeat_interleave(K, 0) + torch.randn(
            P * K, 8, generator=gen
        )
        yield x, torch.arange(P).repeat_interleave(K)


def _epoch(model, health, epoch):
    with torch.no_grad():
        for x, labels in _batches():
            health.update(model(x), labels)
    return health.summarize(epoch)


def test_collapsed_model_warns_once_per_epoch(caplog):
    """A model trained to map every input to one point (its output layer
    pulled to the same vector by a label-blind loss) raises one warning
    per epoch; the same model before that training raises none."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
    )
    health = EmbeddingHealth()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        healthy = _epoch(model, health, epoch=1)
    assert not caplog.records
    assert healthy["cos_same"] > healthy["cos_diff"]
    # Collapse: every row pulled to the batch mean, the mean to (5, ..).
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        for x, _labels in _batches():
            out = model(x)
            spread = (out - out.mean(0)).pow(2).sum(1).mean()
            loss = spread + (out.mean(0) - 5.0).pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        stats = _epoch(model, health, epoch=2)
    assert stats["cos_diff"] > 0.99 and stats["norm_mean"] > 1
    assert len(caplog.records) == 1
    assert "epoch 2" in caplog.text and "collapsed" in caplog.text


def test_zero_embeddings_are_a_collapse(caplog):
    health = EmbeddingHealth()
    health.update(torch.zeros(4, 3), torch.tensor([0, 0, 1, 1]))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        stats = health.summarize(epoch=3)
    assert stats["norm_mean"] == 0.0 and len(caplog.records) == 1


def test_an_epoch_without_batches_is_nan_and_no_warning(caplog):
    health = EmbeddingHealth()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        stats = health.summarize(epoch=1)
    assert all(math.isnan(stats[name]) for name in stats) and len(stats) == 4
    assert not caplog.records
