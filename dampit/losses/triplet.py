"""Triplet loss (paper Eq. 8) with batch-hard, semi-hard or all triplets.

The paper writes the hinge on squared Euclidean distances,
``[||a - p||^2 + m - ||a - n||^2]_+``, and names FaceNet's semi-hard
mining in its ablation but batch-hard mining in its setup; the original
code uses batch-hard mining on plain Euclidean distances of the raw
(unnormalised) embeddings with margin 0.5 and the mean over all anchors.
All of these are options; the defaults reproduce the original code
(``distance="squared_euclidean"`` gives Eq. 8 literally).
"""

import torch
from torch import nn

from dampit.losses._utils import (
    check_choice,
    label_masks,
    no_autocast,
    prepare,
    zero_loss,
)
from dampit.losses.distances import DISTANCES, pairwise_distance
from dampit.losses.miners import MININGS, mine, valid_anchors

REDUCTIONS = ("mean", "nonzero")


class TripletLoss(nn.Module):
    """Triplet margin loss on a labelled batch, fully vectorised.

    The terms are ``relu(d(a, p) - d(a, n) + margin)``. Which triplets:

    - ``mining="batch_hard"``: one per anchor, its farthest positive and
      nearest negative (original code);
    - ``mining="semi_hard"``: one per (anchor, positive) pair, the nearest
      negative farther than the positive but inside the margin, else the
      nearest negative (FaceNet);
    - ``mining="all"``: every valid triplet.

    ``reduction="mean"`` averages over all terms (with batch-hard mining:
    over all anchors, as the original code); ``"nonzero"`` averages over
    the terms that are > 0 only (0 when there are none).

    After each call ``last_stats`` holds detached 0-dim tensors:
    ``frac_an_gt_ap`` (fraction of anchors whose nearest negative is
    farther than their farthest positive, whatever the mining),
    ``mean_d_ap`` / ``mean_d_an`` (those hardest distances, averaged),
    ``n_triplets`` and ``frac_nonzero`` (fraction of terms > 0).

    Arguments
    ---------
    margin : float
        The margin m >= 0, in units of the chosen distance.
    distance : str
        ``"euclidean"`` (original code), ``"squared_euclidean"`` (Eq. 8)
        or ``"cosine"`` (``1 - cos``).
    mining : str
        ``"batch_hard"``, ``"semi_hard"`` or ``"all"``.
    reduction : str
        ``"mean"`` or ``"nonzero"``.
    allow_empty : bool
        When the batch has no anchor with both a positive and a negative
        (every label once, or a single label), return 0 instead of
        raising ``ValueError``.
    eps : float, optional
        Numerical floor of the distance (see
        :func:`dampit.losses.distances.pairwise_distance`).

    Example
    -------
    >>> loss = TripletLoss(margin=0.5)
    >>> emb = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 1.0]])
    >>> loss(emb, torch.tensor([0, 0, 1, 1]))
    tensor(0.)
    >>> loss(emb, torch.tensor([0, 1, 0, 1]))  # d_ap 3, d_an 1
    tensor(2.5000)
    >>> loss.last_stats["frac_an_gt_ap"]
    tensor(0.)
    """

    def __init__(
        self,
        margin=0.5,
        distance="euclidean",
        mining="batch_hard",
        reduction="mean",
        allow_empty=False,
        eps=None,
    ):
        super().__init__()
        name = type(self).__name__
        self.margin = float(margin)
        if not self.margin >= 0:
            raise ValueError(f"{name}: margin must be >= 0, got {margin!r}")
        self.distance = check_choice(distance, DISTANCES, "distance", name)
        self.mining = check_choice(mining, MININGS, "mining", name)
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction", name)
        self.allow_empty = bool(allow_empty)
        self.eps = eps
        self.last_stats = {}

    def forward(self, embeddings, labels):
        """Compute the loss of one batch.

        Arguments
        ---------
        embeddings : torch.Tensor
            ``[B, D]`` or ``[B, 1, D]``.
        labels : torch.Tensor
            ``[B]`` or ``[B, 1]`` integer speaker ids.

        Returns
        -------
        torch.Tensor
            The scalar loss (float32, or float64 for float64 input).
        """
        name = type(self).__name__
        emb, labels = prepare(embeddings, labels, name)
        with no_autocast(emb.device):
            dist = pairwise_distance(emb, distance=self.distance, eps=self.eps)
            pos_mask, neg_mask = label_masks(labels)
            valid = valid_anchors(pos_mask, neg_mask)
            if not bool(valid.any()):
                self.last_stats = {}
                if self.allow_empty:
                    return zero_loss(emb)
                if not bool(pos_mask.any()):
                    what = "no positive pair (every label appears once)"
                else:
                    what = "a single label, so no negative"
                raise ValueError(
                    f"{name}: batch has {what}; use a P x K sampler with "
                    "P >= 2 and K >= 2 or allow_empty=True"
                )
            a, p, n = mine(dist, pos_mask, neg_mask, self.mining, self.margin)
            terms = torch.relu(dist[a, p] - dist[a, n] + self.margin)
            if self.reduction == "mean":
                loss = terms.mean()
            else:
                nonzero = (terms > 0).sum().clamp_min(1)
                loss = terms.sum() / nonzero
            self.last_stats = self._stats(dist, pos_mask, neg_mask, terms)
        return loss

    @torch.no_grad()
    def _stats(self, dist, pos_mask, neg_mask, terms):
        """Detached statistics of the batch (see the class docstring).

        Arguments
        ---------
        dist : torch.Tensor
            ``[B, B]`` distances.
        pos_mask : torch.Tensor
            ``[B, B]`` same-label mask without the diagonal.
        neg_mask : torch.Tensor
            ``[B, B]`` different-label mask.
        terms : torch.Tensor
            The hinge terms.

        Returns
        -------
        dict
            Name -> detached 0-dim tensor.
        """
        dist = dist.detach()
        a, p, n = mine(dist, pos_mask, neg_mask, "batch_hard", self.margin)
        d_ap, d_an = dist[a, p], dist[a, n]
        terms = terms.detach()
        return {
            "frac_an_gt_ap": (d_an > d_ap).float().mean(),
            "mean_d_ap": d_ap.mean(),
            "mean_d_an": d_an.mean(),
            "n_triplets": torch.tensor(float(terms.numel())),
            "frac_nonzero": (terms > 0).float().mean(),
        }
