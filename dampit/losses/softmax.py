"""Softmax (speaker classification) term of the multi-metric loss.

- ``kind="linear"``: plain cross-entropy on a linear classifier with bias
  (the original code: ``Linear(2048 -> n_speakers)``).
- ``kind="aam"`` / ``"am"``: cosine logits of L2-normalised embeddings and
  class weights, through SpeechBrain's
  :class:`speechbrain.nnet.losses.LogSoftmaxWrapper` with
  :class:`~speechbrain.nnet.losses.AdditiveAngularMargin` or
  :class:`~speechbrain.nnet.losses.AngularMargin` (reused, not rewritten).
"""

import operator

import torch
import torch.nn.functional as F
from speechbrain.nnet.losses import (
    AdditiveAngularMargin,
    AngularMargin,
    LogSoftmaxWrapper,
)
from torch import nn

from dampit.losses._utils import check_choice, no_autocast, prepare

KINDS = ("linear", "aam", "am")


def _positive_int(value, arg, owner):
    """``value`` as an int >= 1, or a ValueError naming ``arg``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        out = operator.index(value)
    except TypeError:
        out = 0
    if out < 1:
        raise ValueError(
            f"{owner}: {arg} must be a positive int when no classifier is "
            f"given, got {value!r}"
        )
    return out


class CosineClassifier(nn.Module):
    """Cosine similarities between embeddings and class weight vectors.

    Arguments
    ---------
    input_size : int
        Embedding dimension D.
    n_classes : int
        Number of classes (speakers).
    eps : float
        Norm floor of the L2 normalisation (zero embeddings give cosine 0).

    Example
    -------
    >>> clf = CosineClassifier(4, 3)
    >>> cos = clf(torch.randn(2, 4))
    >>> cos.shape, bool(cos.abs().max() <= 1)
    (torch.Size([2, 3]), True)
    """

    def __init__(self, input_size, n_classes, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, input_size))
        nn.init.xavier_uniform_(self.weight)
        self.eps = eps

    def forward(self, x):
        """Cosine logits.

        Arguments
        ---------
        x : torch.Tensor
            ``[B, D]``.

        Returns
        -------
        torch.Tensor
            ``[B, n_classes]`` in ``[-1, 1]``.
        """
        return F.linear(
            F.normalize(x, dim=1, eps=self.eps),
            F.normalize(self.weight, dim=1, eps=self.eps),
        )


class SoftmaxLoss(nn.Module):
    """Classification loss on the embeddings, with its own classifier.

    The classifier's parameters belong to this module, so an optimizer
    over the module (SpeechBrain: put the loss in ``modules``) trains them.

    After each call ``last_stats`` holds ``accuracy`` (detached, the
    fraction of the batch whose largest logit is its label).

    Arguments
    ---------
    input_size : int
        Embedding dimension D (unused when ``classifier`` is given).
    n_classes : int
        Number of training speakers (unused when ``classifier`` is given).
    kind : str
        ``"linear"`` (cross-entropy), ``"aam"`` (additive angular margin)
        or ``"am"`` (additive cosine margin).
    margin : float
        Margin of ``"aam"`` (radians) or ``"am"`` (cosine units).
    scale : float
        Scale of the cosine logits for ``"aam"`` / ``"am"``.
    classifier : torch.nn.Module, optional
        Use this module instead of building one: it maps ``[B, D]`` to
        logits ``[B, C]`` (or ``[B, 1, C]``); for ``"aam"`` / ``"am"`` it
        must output cosine similarities (e.g. SpeechBrain's ECAPA
        ``Classifier``).
    easy_margin : bool
        Passed to ``AdditiveAngularMargin``.

    Example
    -------
    >>> loss = SoftmaxLoss(input_size=8, n_classes=5, kind="aam")
    >>> value = loss(torch.randn(4, 1, 8), torch.tensor([[0], [1], [2], [3]]))
    >>> value.shape, bool(value > 0)
    (torch.Size([]), True)
    """

    def __init__(
        self,
        input_size=None,
        n_classes=None,
        kind="linear",
        margin=0.2,
        scale=30.0,
        classifier=None,
        easy_margin=False,
    ):
        super().__init__()
        name = type(self).__name__
        self.kind = check_choice(kind, KINDS, "kind", name)
        if classifier is None:
            input_size = _positive_int(input_size, "input_size", name)
            n_classes = _positive_int(n_classes, "n_classes", name)
            if kind == "linear":
                classifier = nn.Linear(input_size, n_classes)
            else:
                classifier = CosineClassifier(input_size, n_classes)
        elif not isinstance(classifier, nn.Module):
            raise TypeError(
                f"{name}: classifier must be a torch.nn.Module, got "
                f"{type(classifier).__name__}"
            )
        self.classifier = classifier
        self.margin = float(margin)
        self.scale = float(scale)
        if kind == "aam":
            self.criterion = LogSoftmaxWrapper(
                AdditiveAngularMargin(
                    margin=self.margin,
                    scale=self.scale,
                    easy_margin=easy_margin,
                )
            )
        elif kind == "am":
            self.criterion = LogSoftmaxWrapper(
                AngularMargin(margin=self.margin, scale=self.scale)
            )
        else:
            self.criterion = None
        self.last_stats = {}

    def logits(self, embeddings):
        """Classifier outputs in float32 (cosines for ``"aam"``/``"am"``).

        Arguments
        ---------
        embeddings : torch.Tensor
            ``[B, D]`` (float32 or float64).

        Returns
        -------
        torch.Tensor
            ``[B, C]``.
        """
        param = next(self.classifier.parameters(), None)
        x = embeddings if param is None else embeddings.to(param.dtype)
        out = self.classifier(x)
        if out.dim() == 3 and out.shape[1] == 1:
            out = out.squeeze(1)
        if out.dim() != 2 or out.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: classifier output must be [B, C] "
                f"or [B, 1, C], got shape {list(out.shape)}"
            )
        return out if out.dtype == torch.float64 else out.float()

    def forward(self, embeddings, labels):
        """Compute the loss of one batch.

        Arguments
        ---------
        embeddings : torch.Tensor
            ``[B, D]`` or ``[B, 1, D]``.
        labels : torch.Tensor
            ``[B]`` or ``[B, 1]`` class indices in ``[0, n_classes)``.

        Returns
        -------
        torch.Tensor
            The scalar loss (mean over the batch).
        """
        name = type(self).__name__
        emb, labels = prepare(embeddings, labels, name)
        with no_autocast(emb.device):
            logits = self.logits(emb)
            n_classes = logits.shape[1]
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= n_classes:
                raise ValueError(
                    f"{name}: labels must be class indices in [0, "
                    f"{n_classes}), got values in [{lo}, {hi}]"
                )
            if self.criterion is None:
                loss = F.cross_entropy(logits, labels)
            else:
                loss = self.criterion(logits.unsqueeze(1), labels.unsqueeze(1))
            with torch.no_grad():
                acc = (logits.argmax(1) == labels).float().mean()
            self.last_stats = {"accuracy": acc}
        return loss
