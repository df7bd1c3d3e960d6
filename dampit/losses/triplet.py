"""Triplet loss (paper Eq. 8) with batch-hard or semi-hard mining.

The defaults follow the original code (batch-hard, Euclidean distances of
the raw embeddings, margin 0.5); the paper's text says squared distances
(Eq. 8) and FaceNet's semi-hard mining: both are options.
"""

import torch

from dampit.losses.base import MetricLoss, check_choice, pairwise_distance

DISTANCES = ("euclidean", "squared_euclidean", "cosine")
MININGS = ("batch_hard", "semi_hard")


@torch.no_grad()
def batch_hard(dist, pos, neg):
    """``(a, p, n)``: farthest positive, nearest negative of each anchor."""
    big = torch.finfo(dist.dtype).max
    a = (pos.any(1) & neg.any(1)).nonzero().squeeze(1)
    p = dist[a].masked_fill(~pos[a], -big).argmax(1)
    n = dist[a].masked_fill(~neg[a], big).argmin(1)
    return a, p, n


@torch.no_grad()
def semi_hard(dist, pos, neg, margin):
    """``(a, p, n)`` for every (anchor, positive) pair (FaceNet).

    n is the nearest negative with ``d_ap < d_an < d_ap + margin``, else
    the anchor's nearest negative.
    """
    big = torch.finfo(dist.dtype).max
    sorted_d, order = dist.masked_fill(~neg, big).sort(1)
    # first[a, p]: first sorted negative of a strictly farther than d[a, p]
    first = torch.searchsorted(sorted_d, dist.contiguous(), right=True)
    first_c = first.clamp_max(len(dist) - 1)
    semi = (first < neg.sum(1, keepdim=True)) & (
        sorted_d.gather(1, first_c) < dist + margin
    )
    n = order.gather(1, torch.where(semi, first_c, 0))
    a, p = (pos & neg.any(1, keepdim=True)).nonzero(as_tuple=True)
    return a, p, n[a, p]


class TripletLoss(MetricLoss):
    """Mean of ``relu(d(a, p) - d(a, n) + margin)`` over mined triplets.

    An anchor's positives are the rows of its label from other sources
    (see :mod:`dampit.losses.base`), its negatives the rows of other labels.

    ``last_stats["frac_an_gt_ap"]``: the fraction of anchors whose nearest
    negative is farther than their farthest positive.

    Arguments
    ---------
    margin : float
        The margin, >= 0, in units of ``distance``.
    distance : str
        ``"euclidean"`` (original code), ``"squared_euclidean"`` (Eq. 8)
        or ``"cosine"`` (``1 - cos``).
    mining : str
        ``"batch_hard"`` (original code) or ``"semi_hard"`` (FaceNet).
    allow_empty : bool
        See :class:`~dampit.losses.base.MetricLoss`.

    Example
    -------
    >>> emb = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 1.0]])
    >>> TripletLoss(margin=0.5)(emb, torch.tensor([0, 1, 0, 1]))  # 3 - 1 + .5
    tensor(2.5000)
    """

    compares_rows = True

    def __init__(
        self,
        margin=0.5,
        distance="euclidean",
        mining="batch_hard",
        allow_empty=False,
    ):
        super().__init__(allow_empty)
        if not float(margin) >= 0:
            raise ValueError(f"TripletLoss: margin must be >= 0, got {margin}")
        self.margin = float(margin)
        self.distance = check_choice(distance, DISTANCES, "distance", self)
        self.mining = check_choice(mining, MININGS, "mining", self)

    def compute(self, emb, labels, sources):
        """See :meth:`dampit.losses.base.MetricLoss.compute`."""
        dist = pairwise_distance(emb, self.distance)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        pos = same & (sources.unsqueeze(0) != sources.unsqueeze(1))
        a, p, n = batch_hard(dist, pos, ~same)
        if not len(a):
            return None
        frac = (dist[a, n] > dist[a, p]).float().mean().detach()
        if self.mining == "semi_hard":
            a, p, n = semi_hard(dist, pos, ~same, self.margin)
        loss = torch.relu(dist[a, p] - dist[a, n] + self.margin).mean()
        return loss, {"frac_an_gt_ap": frac}
