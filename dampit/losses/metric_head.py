"""dampit's losses in the ``compute_cost`` slot of a stock SpeechBrain recipe.

SpeechBrain's speaker recipes end ``compute_forward`` in
``self.modules.classifier(embeddings)`` and call
``compute_cost(predictions, spkid, lens)`` on the logits. With
:class:`dampit.lobes.metric_head.MetricHead` as that classifier (it keeps
the embeddings of its last call), :class:`MetricHeadLoss` adds the metric
terms on them to the stock logit loss. The recipe's Python,
error metric (the classifier's error rate) and checkpointer stay as they
are; ``templates/speaker_verification/README.md`` has the YAML.
"""

from torch import nn

from dampit.lobes.metric_head import MetricHead


class MetricHeadLoss(nn.Module):
    """``softmax_weight * softmax(logits) + metric(head.embeddings)``.

    Called as the recipe's ``compute_cost(predictions, targets, length)``
    right after ``head`` computed ``predictions``. ``last_terms``: the
    detached weighted terms (``softmax`` and the metric loss's own).

    Arguments
    ---------
    head : MetricHead
        The recipe's classifier.
    metric : torch.nn.Module
        A dampit loss of the embeddings (e.g. ``MultiMetricLoss``; give its
        terms ``allow_empty=True`` for validation batches, and it the
        recipe's ``wav_augment`` as ``augmenter`` so that it knows the
        augmented copies of each utterance).
    softmax : torch.nn.Module
        The stock logit loss (``LogSoftmaxWrapper``).
    softmax_weight : float
        Weight of ``softmax`` (the paper's 0.1).

    Example
    -------
    >>> import torch
    >>> from speechbrain.nnet.losses import LogSoftmaxWrapper
    >>> from speechbrain.nnet.losses import AdditiveAngularMargin
    >>> from dampit.losses import TripletLoss
    >>> head = MetricHead(input_size=4, out_neurons=2)
    >>> aam = LogSoftmaxWrapper(AdditiveAngularMargin(0.2, 30))
    >>> loss = MetricHeadLoss(head, TripletLoss(), aam)
    >>> spk = torch.tensor([[0], [0], [1], [1]])
    >>> total = loss(head(torch.randn(4, 1, 4)), spk, torch.ones(4))
    >>> sorted(loss.last_terms), bool(total > 0)
    (['TripletLoss', 'softmax'], True)
    """

    def __init__(self, head, metric, softmax, softmax_weight=0.1):
        super().__init__()
        if not isinstance(head, MetricHead):
            raise TypeError(
                f"MetricHeadLoss: head must be the recipe's MetricHead "
                f"classifier, got {type(head).__name__}"
            )
        self.head = [head]  # a reference, not a submodule (no weights)
        self.metric, self.softmax = metric, softmax
        self.softmax_weight = float(softmax_weight)
        self.last_terms = {}

    def forward(self, predictions, targets, length=None):
        """The loss of one batch (see the class docstring)."""
        emb = getattr(self.head[0], "embeddings", None)
        if emb is None or len(emb) != len(predictions):
            raise ValueError(
                "MetricHeadLoss: the predictions are not the output of the "
                "head's last call (compute_forward must end in the head)"
            )
        soft = self.softmax_weight * self.softmax(predictions, targets, length)
        total = soft + self.metric(emb, targets)
        terms = getattr(self.metric, "last_terms", None)
        terms = terms or {type(self.metric).__name__: total - soft}
        self.last_terms = {"softmax": soft.detach()}
        self.last_terms.update({k: v.detach() for k, v in terms.items()})
        return total
