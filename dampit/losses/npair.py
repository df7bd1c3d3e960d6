"""Multi-class N-pair loss (Sohn 2016; paper Eq. 10).

For N (anchor, positive) pairs with embeddings ``f_i`` and ``f_i+``, the
similarity of anchor i to positive j is ``s_ij = f_i . f_j+`` (raw,
unnormalised embeddings) and

``L = mean_i log(1 + sum_{j != i} exp(s_ij - s_ii))
    = mean_i CE(softmax(s_i), i)``

which is Eq. 10 (the paper sums over i, the original code averages:
``reduction`` picks). When a label repeats among the pairs (possible with
``pairing="interleaved"``), the target of anchor i is, as in the original
code, its row of the label-equality matrix ``[y_i == y_j+]`` normalised to
sum 1 (a soft cross-entropy), so a positive of the same speaker is never
pushed away as a negative.

An optional penalty on the embedding norms, also from the original code
(``0.25 * 0.02 * (sum|a|^2 + sum|p|^2) / N``):
``l2_reg * (mean_i |f_i|^2 + mean_i |f_i+|^2)``.

See :mod:`dampit.losses._utils` for how pairs are formed.
"""

import torch
import torch.nn.functional as F
from torch import nn

from dampit.losses._utils import (
    PAIRINGS,
    check_choice,
    make_pairs,
    no_autocast,
    prepare,
    zero_loss,
)


class NPairLoss(nn.Module):
    """N-pair loss over the anchor/positive pairs of a P x K batch.

    After each call ``last_stats`` holds detached 0-dim tensors:
    ``ce`` (the soft cross-entropy), ``l2`` (the weighted norm penalty),
    ``n_pairs`` and ``accuracy`` (fraction of anchors whose most similar
    positive has their label).

    Arguments
    ---------
    l2_reg : float
        Weight of the norm penalty (0.005 in the original code; 0 turns it
        off).
    pairing : str
        ``"first_two"`` (any batch) or ``"interleaved"`` (rows 0::2 are
        anchors, 1::2 positives), see :mod:`dampit.losses._utils`.
    reduction : str
        ``"mean"`` over anchors (original code) or ``"sum"`` (Eq. 10).
    allow_empty : bool
        Return 0 instead of raising ``ValueError`` when the batch cannot
        form pairs of at least two labels.

    Example
    -------
    >>> loss = NPairLoss(l2_reg=0.0)
    >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    >>> loss(emb, torch.tensor([0, 0, 1, 1]))  # log(1 + exp(0 - 1))
    tensor(0.3133)
    """

    def __init__(
        self,
        l2_reg=0.005,
        pairing="first_two",
        reduction="mean",
        allow_empty=False,
    ):
        super().__init__()
        name = type(self).__name__
        self.l2_reg = float(l2_reg)
        if not self.l2_reg >= 0:
            raise ValueError(f"{name}: l2_reg must be >= 0, got {l2_reg!r}")
        self.pairing = check_choice(pairing, PAIRINGS, "pairing", name)
        self.reduction = check_choice(
            reduction, ("mean", "sum"), "reduction", name
        )
        self.allow_empty = bool(allow_empty)
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
        pairs = make_pairs(labels, self.pairing, name, self.allow_empty)
        if pairs is None:
            self.last_stats = {}
            return zero_loss(emb)
        anchor_idx, positive_idx = pairs
        with no_autocast(emb.device):
            anchors, positives = emb[anchor_idx], emb[positive_idx]
            logits = anchors @ positives.t()
            same = labels[anchor_idx].unsqueeze(1) == labels[
                positive_idx
            ].unsqueeze(0)
            targets = same.to(logits.dtype)
            targets = targets / targets.sum(1, keepdim=True)
            log_prob = F.log_softmax(logits, dim=1)
            # Only target entries enter, so -inf log-probs never meet 0.
            ce_rows = -(log_prob.masked_fill(~same, 0.0) * targets).sum(1)
            ce = ce_rows.mean() if self.reduction == "mean" else ce_rows.sum()
            l2 = self.l2_reg * (
                anchors.pow(2).sum(1).mean() + positives.pow(2).sum(1).mean()
            )
            loss = ce + l2
            with torch.no_grad():
                best = logits.argmax(1)
                hit = same.gather(1, best.unsqueeze(1)).float().mean()
            self.last_stats = {
                "ce": ce.detach(),
                "l2": l2.detach(),
                "n_pairs": torch.tensor(float(anchor_idx.numel())),
                "accuracy": hit,
            }
        return loss
