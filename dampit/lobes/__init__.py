"""dampit.lobes: the paper's embedding network and its features.

- ``resnet``: ``SEResNet`` (``forward(x, lengths) -> [B, 1, D]``),
  ``LinearClassifier``, ``load_torchvision_weights``;
- ``gates``: the paper's spatial gate; ``pooling``: length-aware pooling;
- ``features``: the paper's spectrogram, ``Features``, ``CropNormalization``;
- ``metric_head``: ``MetricHead``, a stock SpeechBrain recipe's classifier
  that keeps its input for ``dampit.losses.metric_head.MetricHeadLoss``.
"""
