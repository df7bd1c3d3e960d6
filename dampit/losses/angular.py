"""Angular loss (Wang et al. 2017; paper Eqs. 11-13).

On L2-normalised embeddings, for a pair (a, p) of
:func:`~dampit.losses.base.first_two_pairs`, its centre ``c = (a + p) / 2``
and a negative n (the positive of another pair, as in the original code),
Eq. 12 asks ``||a - p||^2 <= 4 tan^2(alpha) ||n - c||^2``. Two forms:

- ``"npair"`` (original code, Wang et al.'s angular N-pair loss): with
  ``f = 4 tan^2(alpha) (a + p) . n - 2 (1 + tan^2(alpha)) a . p``,
  ``mean_pairs log(1 + sum_n exp(f))``;
- ``"hinge"`` (Eq. 13): the mean over (pair, negative) of
  ``relu(||a - p||^2 - 4 tan^2(alpha) ||n - c||^2)``. The paper prints
  the two terms the other way round, which would reward violating Eq. 12.
"""

import math

import torch
import torch.nn.functional as F

from dampit.losses.base import (
    NORM_EPS,
    MetricLoss,
    check_choice,
    first_two_pairs,
)

FORMS = ("npair", "hinge")


class AngularLoss(MetricLoss):
    """Angular loss over the anchor / positive pairs of a P x K batch.

    ``last_stats["frac_violating"]``: the fraction of (pair, negative)
    triplets that violate Eq. 12.

    Arguments
    ---------
    alpha : float
        The angle bound in degrees, 0 < alpha < 90 (paper: 45).
    form : str
        ``"npair"`` (original code) or ``"hinge"`` (Eq. 13).
    allow_empty : bool
        See :class:`~dampit.losses.base.MetricLoss`.

    Example
    -------
    >>> emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    >>> labels = torch.tensor([0, 0, 1, 1])
    >>> AngularLoss(form="hinge")(emb, labels)  # (2 - 4 (1.5 - sqrt 2)) / 2
    tensor(0.8284)
    """

    compares_rows = True

    def __init__(self, alpha=45.0, form="npair", allow_empty=False):
        super().__init__(allow_empty)
        if not 0.0 < float(alpha) < 90.0:
            raise ValueError(
                f"AngularLoss: alpha must be in (0, 90), got {alpha}"
            )
        self.alpha = float(alpha)
        self.tan2 = math.tan(math.radians(self.alpha)) ** 2
        self.form = check_choice(form, FORMS, "form", self)

    def compute(self, emb, labels, sources):
        """See :meth:`dampit.losses.base.MetricLoss.compute`."""
        anchor_idx, positive_idx = first_two_pairs(labels, sources)
        if len(anchor_idx) < 2:
            return None
        x = F.normalize(emb, dim=1, eps=NORM_EPS)
        a, p, t2 = x[anchor_idx], x[positive_idx], self.tan2
        other = ~torch.eye(len(a), dtype=torch.bool, device=x.device)
        if self.form == "npair":  # f[i, j]: pair i, negative p_j
            f = 4 * t2 * (a + p) @ p.t() - 2 * (1 + t2) * (a * p).sum(1, True)
            # For unit vectors Eq. 12 fails exactly when f > 6 tan^2 - 2.
            violating = f[other] > 6 * t2 - 2
            zero = f.new_zeros(len(f), 1)
            f = torch.cat([zero, f.masked_fill(~other, -math.inf)], 1)
            loss = torch.logsumexp(f, 1).mean()
        else:  # ||p_j - c_i||^2 expanded: one matrix product
            c = (a + p) / 2
            sq_nc = c.pow(2).sum(1, True) - 2 * c @ p.t() + p.pow(2).sum(1)
            sq_ap = (a - p).pow(2).sum(1, True)
            hinge = torch.relu(sq_ap - 4 * t2 * sq_nc)[other]
            loss, violating = hinge.mean(), hinge > 0
        return loss, {"frac_violating": violating.float().mean().detach()}
