"""Angular loss (Wang et al. 2017; paper Eqs. 11-13).

On L2-normalised embeddings, for an anchor a, its positive p, their centre
``c = (a + p) / 2`` and a negative n, the angle at n of the rebuilt
triangle stays below alpha when (Eq. 12)
``||a - p||^2 <= 4 tan^2(alpha) ||n - c||^2``.

Two forms:

- ``form="hinge"`` (Eq. 13): the mean over all (pair, negative) triplets
  of ``relu(||a - p||^2 - 4 tan^2(alpha) ||n - c||^2)``. The paper prints
  the two terms the other way round (and a stray "<= 0"); that would
  reward violating Eq. 12, so this follows Eq. 12 and Wang et al.
- ``form="npair"`` (original code, Wang et al.'s angular N-pair loss): with
  ``f_an = 4 tan^2(alpha) (a + p) . n - 2 (1 + tan^2(alpha)) a . p``,
  ``L = mean_pairs log(1 + sum_n exp(f_an))``, computed with a stable
  log-sum-exp.

Negatives of a pair: ``negatives="positives"`` (original code) uses the
positives of the other pairs; ``"all"`` uses every batch embedding whose
label differs. Pairs come from :func:`dampit.losses._utils.make_pairs`
(the original code draws one random pair per speaker; with K = 2 it is the
same pair). Both forms are invariant to rescaling the embeddings.
"""

import math

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
from dampit.losses.distances import squared_euclidean

FORMS = ("npair", "hinge")
NEGATIVES = ("positives", "all")


class AngularLoss(nn.Module):
    """Angular loss over the anchor/positive pairs of a P x K batch.

    After each call ``last_stats`` holds detached 0-dim tensors:
    ``n_pairs`` and ``frac_violating`` (fraction of (pair, negative)
    triplets that violate Eq. 12).

    Arguments
    ---------
    alpha : float
        The angle bound in degrees, 0 < alpha < 90 (paper: 45).
    form : str
        ``"npair"`` (original code) or ``"hinge"`` (Eq. 13).
    pairing : str
        ``"first_two"`` or ``"interleaved"``, see
        :mod:`dampit.losses._utils`.
    negatives : str
        ``"positives"`` (other pairs' positives) or ``"all"``.
    allow_empty : bool
        Return 0 instead of raising ``ValueError`` when the batch cannot
        form pairs of at least two labels.
    eps : float
        Norm floor of the L2 normalisation (zero embeddings stay zero).

    Example
    -------
    >>> loss = AngularLoss(alpha=45.0, form="hinge")
    >>> emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    >>> loss(emb, torch.tensor([0, 0, 1, 1]))  # (2 - 4 (1.5 - sqrt 2)) / 2
    tensor(0.8284)
    >>> AngularLoss(alpha=70.0, form="hinge")(emb, torch.tensor([0, 0, 1, 1]))
    tensor(0.)
    """

    def __init__(
        self,
        alpha=45.0,
        form="npair",
        pairing="first_two",
        negatives="positives",
        allow_empty=False,
        eps=1e-6,
    ):
        super().__init__()
        name = type(self).__name__
        self.alpha = float(alpha)
        if not 0.0 < self.alpha < 90.0:
            raise ValueError(
                f"{name}: alpha is in degrees and must be in (0, 90), got "
                f"{alpha!r}"
            )
        self.tan2 = math.tan(math.radians(self.alpha)) ** 2
        self.form = check_choice(form, FORMS, "form", name)
        self.pairing = check_choice(pairing, PAIRINGS, "pairing", name)
        self.negatives = check_choice(negatives, NEGATIVES, "negatives", name)
        self.allow_empty = bool(allow_empty)
        self.eps = float(eps)
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
            x = F.normalize(emb, dim=1, eps=self.eps)
            a, p = x[anchor_idx], x[positive_idx]
            if self.negatives == "positives":
                cand, cand_labels = p, labels[positive_idx]
            else:
                cand, cand_labels = x, labels
            neg = labels[anchor_idx].unsqueeze(1) != cand_labels.unsqueeze(0)
            t2 = self.tan2
            if self.form == "npair":
                f = 4.0 * t2 * (a + p) @ cand.t() - 2.0 * (1.0 + t2) * (
                    a * p
                ).sum(1, keepdim=True)
                f_neg = f.masked_fill(~neg, float("-inf"))
                zeros = f.new_zeros(f.shape[0], 1)
                loss = torch.logsumexp(torch.cat([zeros, f_neg], 1), 1).mean()
                with torch.no_grad():
                    # For unit vectors, Eq. 12 fails iff f > 6 tan^2 - 2.
                    frac = (f[neg] > 6.0 * t2 - 2.0).float().mean()
            else:
                sq_ap = (a - p).pow(2).sum(1, keepdim=True)
                sq_nc = squared_euclidean((a + p) / 2.0, cand)
                hinge = torch.relu(sq_ap - 4.0 * t2 * sq_nc)
                terms = hinge[neg]
                loss = terms.mean()
                frac = (terms.detach() > 0).float().mean()
            self.last_stats = {
                "n_pairs": torch.tensor(float(anchor_idx.numel())),
                "frac_violating": frac,
            }
        return loss
