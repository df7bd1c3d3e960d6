"""dampit.losses: the paper's multi-metric losses as small torch modules.

Every loss is a :class:`~dampit.losses.base.MetricLoss`, called as
SpeechBrain's ``compute_cost(predictions, targets, length=None)``:
:class:`TripletLoss` (Eq. 8), :class:`NPairLoss` (Eq. 10),
:class:`AngularLoss` (Eqs. 11-13), :class:`SoftmaxLoss` (cross-entropy or
SpeechBrain's AAM) and their weighted sum :class:`MultiMetricLoss`
(Eq. 14; :func:`paper_multi_metric_loss` builds the paper's).
:class:`~dampit.losses.metric_head.MetricHeadLoss` adds a metric loss to
a stock SpeechBrain recipe's logit loss (its ``compute_cost``).
"""

from dampit.losses.angular import AngularLoss
from dampit.losses.base import MetricLoss
from dampit.losses.multi_metric import (
    PAPER_WEIGHTS,
    MultiMetricLoss,
    paper_multi_metric_loss,
)
from dampit.losses.npair import NPairLoss
from dampit.losses.softmax import SoftmaxLoss
from dampit.losses.triplet import TripletLoss

__all__ = [
    "AngularLoss",
    "MetricLoss",
    "MultiMetricLoss",
    "NPairLoss",
    "PAPER_WEIGHTS",
    "SoftmaxLoss",
    "TripletLoss",
    "paper_multi_metric_loss",
]
