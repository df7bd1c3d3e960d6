"""Multi-class N-pair loss (Sohn 2016; paper Eq. 10).

For the pairs of :func:`~dampit.losses.base.first_two_pairs`, anchors
``f_i``, positives ``f_i+`` and raw dot products ``s_ij = f_i . f_j+``:
``mean_i log(1 + sum_{j != i} exp(s_ij - s_ii))`` (Eq. 10 averaged over the
anchors, as the original code), plus the original code's norm penalty
``0.25 * 0.02 * (sum|f_i|^2 + sum|f_i+|^2) / N``, that is
``l2_reg * (mean_i |f_i|^2 + mean_i |f_i+|^2)`` with ``l2_reg = 0.005``.
"""

import torch
import torch.nn.functional as F

from dampit.losses.base import MetricLoss, first_two_pairs


class NPairLoss(MetricLoss):
    """N-pair loss over the anchor / positive pairs of a P x K batch.

    ``last_stats["accuracy"]``: the fraction of anchors whose most similar
    positive is their own.

    Arguments
    ---------
    l2_reg : float
        Weight of the norm penalty (0.005 in the original code, 0: none).
    allow_empty : bool
        See :class:`~dampit.losses.base.MetricLoss`.

    Example
    -------
    >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    >>> NPairLoss(l2_reg=0.0)(emb, torch.tensor([0, 0, 1, 1]))  # log(1+1/e)
    tensor(0.3133)
    """

    compares_rows = True

    def __init__(self, l2_reg=0.005, allow_empty=False):
        super().__init__(allow_empty)
        if not float(l2_reg) >= 0:
            raise ValueError(f"NPairLoss: l2_reg must be >= 0, got {l2_reg}")
        self.l2_reg = float(l2_reg)

    def compute(self, emb, labels, sources):
        """See :meth:`dampit.losses.base.MetricLoss.compute`."""
        anchor_idx, positive_idx = first_two_pairs(labels, sources)
        if len(anchor_idx) < 2:
            return None
        a, p = emb[anchor_idx], emb[positive_idx]
        logits = a @ p.t()
        target = torch.arange(len(a), device=emb.device)
        norms = a.pow(2).sum(1).mean() + p.pow(2).sum(1).mean()
        loss = F.cross_entropy(logits, target) + self.l2_reg * norms
        accuracy = (logits.argmax(1) == target).float().mean().detach()
        return loss, {"accuracy": accuracy}
