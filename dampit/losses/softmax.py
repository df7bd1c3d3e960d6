"""Softmax (speaker classification) term of the multi-metric loss.

- ``kind="linear"``: cross-entropy on ``nn.Linear`` with bias (the original
  code's ``Linear(2048 -> n_speakers)``);
- ``kind="aam"``: SpeechBrain's ECAPA ``Classifier`` (cosine logits) with
  ``LogSoftmaxWrapper(AdditiveAngularMargin(margin, scale))``, as
  SpeechBrain's speaker recipes.
"""

import numbers

import torch.nn.functional as F
from speechbrain.lobes.models.ECAPA_TDNN import Classifier
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper
from torch import nn

from dampit.lobes.resnet import LinearClassifier
from dampit.losses.base import MetricLoss, check_choice

KINDS = ("linear", "aam")
LINEAR = "dampit.lobes.resnet.LinearClassifier"
COSINE = "speechbrain.lobes.models.ECAPA_TDNN.Classifier"


class SoftmaxLoss(MetricLoss):
    """Classification loss of the embeddings, with its own classifier.

    The classifier (state-dict keys ``classifier.weight``, and
    ``classifier.bias`` for ``"linear"``) trains with the loss: put the
    loss in SpeechBrain's ``modules`` and checkpointer.
    ``last_stats["accuracy"]``: the fraction whose top logit is the label.

    Arguments
    ---------
    input_size : int
        Embedding dimension D.
    n_classes : int
        Number of training speakers.
    kind : str
        ``"linear"`` or ``"aam"``.
    margin : float
        AAM margin (radians).
    scale : float
        AAM scale of the cosine logits.
    allow_empty : bool
        See :class:`~dampit.losses.base.MetricLoss`.

    Example
    -------
    >>> import torch
    >>> loss = SoftmaxLoss(input_size=8, n_classes=5, kind="aam")
    >>> value = loss(torch.randn(4, 1, 8), torch.tensor([[0], [1], [2], [3]]))
    >>> value.shape, bool(value > 0)
    (torch.Size([]), True)
    """

    def __init__(
        self,
        input_size,
        n_classes,
        kind="linear",
        margin=0.2,
        scale=30.0,
        allow_empty=False,
    ):
        super().__init__(allow_empty)
        for arg, value in (
            ("input_size", input_size),
            ("n_classes", n_classes),
        ):
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(
                    f"SoftmaxLoss: {arg} must be a positive int, got {value!r}"
                )
        self.kind = check_choice(kind, KINDS, "kind", self)
        if kind == "linear":
            self.classifier = nn.Linear(input_size, n_classes)
        else:
            self.classifier = Classifier(input_size, out_neurons=n_classes)
            self.aam = LogSoftmaxWrapper(
                AdditiveAngularMargin(margin=margin, scale=scale)
            )

    def inference_classifier(self):
        """The classifier as a model folder holds it: ``(spec, module)``.

        ``"linear"``: a :class:`~dampit.lobes.resnet.LinearClassifier`
        whose ``out`` is this classifier; ``"aam"``: this classifier, a
        SpeechBrain ``Classifier``. ``spec``: ``{"class", "kwargs"}``.

        Example
        -------
        >>> loss = SoftmaxLoss(input_size=8, n_classes=5)
        >>> spec, module = loss.inference_classifier()
        >>> spec["class"], sorted(module.state_dict())
        ('dampit.lobes.resnet.LinearClassifier', ['out.bias', 'out.weight'])
        """
        n_classes, size = (int(n) for n in self.classifier.weight.shape)
        if self.kind == "linear":
            head = LinearClassifier(size, n_classes)
            head.out = self.classifier
            kwargs = {"input_size": size, "n_classes": n_classes}
            return {"class": LINEAR, "kwargs": kwargs}, head
        kwargs = {"input_size": size, "lin_blocks": 0, "lin_neurons": size}
        kwargs["out_neurons"] = n_classes
        return {"class": COSINE, "kwargs": kwargs}, self.classifier

    def compute(self, emb, labels, sources):
        """See :meth:`dampit.losses.base.MetricLoss.compute` (every row is
        classified, copies too: ``sources`` is not used)."""
        weight = self.classifier.weight
        n_classes = len(weight)
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(
                f"SoftmaxLoss: targets must be class indices in [0, "
                f"{n_classes}), got values in [{lo}, {hi}]"
            )
        logits = self.classifier(emb.to(weight.dtype)).reshape(len(emb), -1)
        if self.kind == "linear":
            loss = F.cross_entropy(logits, labels)
        else:
            loss = self.aam(logits.unsqueeze(1), labels.unsqueeze(1))
        accuracy = (logits.argmax(1) == labels).float().mean().detach()
        return loss, {"accuracy": accuracy}
