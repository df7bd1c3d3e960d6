"""dampit.losses: the paper's multi-metric losses as small torch modules.

Each loss takes embeddings ``[B, D]`` or SpeechBrain's ``[B, 1, D]`` and
labels ``[B]`` or ``[B, 1]``, runs in float32 under autocast, and is
usable from YAML as ``!new:dampit.losses.<Name>``:

- :class:`TripletLoss` (Eq. 8): batch-hard / semi-hard / all triplets;
- :class:`NPairLoss` (Eq. 10): multi-class N-pair with soft targets;
- :class:`AngularLoss` (Eqs. 11-13): hinge or N-pair form;
- :class:`SoftmaxLoss`: cross-entropy, AAM or AM softmax (SpeechBrain's);
- :class:`MultiMetricLoss` (Eq. 14): weighted sum, per-term logging;
- :func:`paper_multi_metric_loss`: the paper's four terms and weights.
"""

from dampit.losses.angular import AngularLoss
from dampit.losses.multi_metric import (
    PAPER_WEIGHTS,
    MultiMetricLoss,
    paper_multi_metric_loss,
)
from dampit.losses.npair import NPairLoss
from dampit.losses.softmax import CosineClassifier, SoftmaxLoss
from dampit.losses.triplet import TripletLoss

__all__ = [
    "AngularLoss",
    "CosineClassifier",
    "MultiMetricLoss",
    "NPairLoss",
    "PAPER_WEIGHTS",
    "SoftmaxLoss",
    "TripletLoss",
    "paper_multi_metric_loss",
]
