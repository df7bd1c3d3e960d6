"""The classifier slot of a stock SpeechBrain speaker recipe, keeping its
input for dampit's losses.

SpeechBrain's speaker recipes end ``compute_forward`` in
``self.modules.classifier(embeddings)``. :class:`MetricHead` is that
classifier (SpeechBrain's ECAPA ``Classifier``: same arguments and
weights) and keeps the embeddings of its last call, for
:class:`dampit.losses.metric_head.MetricHeadLoss`;
``templates/speaker_verification/README.md`` has the YAML.
"""

from speechbrain.lobes.models.ECAPA_TDNN import Classifier


class MetricHead(Classifier):
    """SpeechBrain's ECAPA ``Classifier`` that keeps its last input.

    Arguments and weights are ``Classifier``'s (an exported model loads it
    as one). ``embeddings``: the ``[B, 1, D]`` input of the last call.

    Example
    -------
    >>> import torch
    >>> head = MetricHead(input_size=4, out_neurons=3)
    >>> x = torch.randn(2, 1, 4)
    >>> head(x).shape, head.embeddings is x
    (torch.Size([2, 1, 3]), True)
    """

    def forward(self, x):
        """The cosine logits ``[B, 1, C]`` of embeddings ``x``."""
        self.embeddings = x
        return super().forward(x)
