"""The recipe's validation EER: cosine pairs scored by a loop, the EER
from dampit's exact ``compute_eer`` (tested against loops in
test_error_rates.py)."""

import itertools

import torch

from dampit.metrics.error_rates import compute_eer
from dampit.training.validation import validation_eer


def test_validation_eer_is_the_exact_eer_of_all_pairs():
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(12, 1, 5, generator=gen)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3])
    scores, same = [], []
    for i, j in itertools.combinations(range(12), 2):
        a, b = emb[i, 0].double(), emb[j, 0].double()
        scores.append(float(a @ b / (a.norm() * b.norm())))
        same.append(int(labels[i] == labels[j]))
    want, _ = compute_eer(scores, same)
    # float64 rates: exactly 100 * the exact EER (SpeechBrain's EER
    # divides in float32 and is off in the 8th digit).
    assert validation_eer(emb, labels) == 100.0 * want


def test_one_kind_of_pair_or_a_nan_embedding_gives_100(caplog):
    emb = torch.eye(4)
    assert validation_eer(emb, torch.zeros(4, dtype=torch.long)) == 100.0
    assert "no non-target trials among 6" in caplog.text
    assert validation_eer(emb[:1], torch.zeros(1, dtype=torch.long)) == 100.0
    assert "no non-target trials among 0" in caplog.text
    emb[2, 0] = float("nan")
    assert validation_eer(emb, torch.tensor([0, 0, 1, 1])) == 100.0
    assert "scores must be finite" in caplog.text
