"""Per-epoch statistics of the training embeddings and a collapse alarm.

A metric loss can drive every embedding to the same point (or to zero):
the loss stops falling and the EER goes to 50 %. :class:`EmbeddingHealth`
averages, over an epoch's batches, the mean cosine of same-speaker and of
different-speaker pairs and the mean and standard deviation of the
embedding norms, and warns once per epoch when the embeddings have
collapsed: different speakers' mean cosine at least :data:`MAX_COS_DIFF`
(all directions alike) or a mean norm under :data:`MIN_NORM`.
"""

import logging
import math

import torch
import torch.nn.functional as F

from dampit.losses.base import NORM_EPS

logger = logging.getLogger(__name__)

STATS = ("cos_same", "cos_diff", "norm_mean", "norm_std")
#: A collapse: different speakers' mean cosine at least this ...
MAX_COS_DIFF = 0.99
#: ... or a mean embedding norm below this.
MIN_NORM = 1e-6


def batch_health(emb, labels):
    """``{cos_same, cos_diff, norm_mean, norm_std}`` of one batch.

    The cosines are means over the pairs of distinct rows (NaN when the
    batch has no such pair); ``norm_std`` is the population standard
    deviation of the rows' L2 norms.

    Arguments
    ---------
    emb : torch.Tensor
        Embeddings ``[B, D]`` or ``[B, 1, D]``.
    labels : torch.Tensor
        Speaker labels ``[B]`` or ``[B, 1]``.

    Returns
    -------
    dict of str -> float

    Example
    -------
    >>> emb = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    >>> batch_health(emb, torch.tensor([0, 0, 1]))
    {'cos_same': 1.0, 'cos_diff': 0.0, 'norm_mean': 2.0, 'norm_std': 0.816...}
    """
    emb = emb.detach().reshape(len(emb), -1).float()
    labels = labels.reshape(-1).to(emb.device)
    unit = F.normalize(emb, dim=1, eps=NORM_EPS)
    cos = unit @ unit.t()
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    other = ~torch.eye(len(emb), dtype=torch.bool, device=emb.device)
    norms = emb.norm(dim=1)
    return {
        "cos_same": _mean(cos[same & other]),
        "cos_diff": _mean(cos[~same]),
        "norm_mean": float(norms.mean()),
        "norm_std": float(norms.std(correction=0)),
    }


def _mean(values):
    """The mean of a tensor as a float, NaN when it is empty."""
    return float(values.mean()) if values.numel() else math.nan


class EmbeddingHealth:
    """Epoch means of :func:`batch_health` and the collapse warning.

    Example
    -------
    >>> health = EmbeddingHealth()
    >>> health.update(torch.ones(4, 3), torch.tensor([0, 0, 1, 1]))
    >>> stats = health.summarize(epoch=1)  # logs the collapse warning
    >>> round(stats["cos_diff"], 4), stats["norm_mean"]
    (1.0, 1.732...)
    """

    def __init__(self):
        self.sums, self.counts = {}, {}

    def update(self, emb, labels):
        """Add one batch's statistics."""
        for name, value in batch_health(emb, labels).items():
            if not math.isnan(value):
                self.sums[name] = self.sums.get(name, 0.0) + value
                self.counts[name] = self.counts.get(name, 0) + 1

    def summarize(self, epoch):
        """The epoch's mean statistics (NaN when never seen); warns once
        on a collapse, then starts the next epoch's sums."""
        stats = {}
        for name in STATS:
            count = self.counts.get(name, 0)
            stats[name] = (
                self.sums.get(name, 0.0) / count if count else math.nan
            )
        self.sums, self.counts = {}, {}
        # NaN (no batch) compares False: no warning.
        if stats["cos_diff"] >= MAX_COS_DIFF or stats["norm_mean"] < MIN_NORM:
            logger.warning(
                "epoch %s: the training embeddings have collapsed (mean "
                "cosine of different speakers %.4f, of the same speaker "
                "%.4f; norms %.4g +- %.4g): the losses cannot separate "
                "speakers; lower the learning rate or restart from an "
                "earlier checkpoint",
                epoch,
                stats["cos_diff"],
                stats["cos_same"],
                stats["norm_mean"],
                stats["norm_std"],
            )
        return stats
