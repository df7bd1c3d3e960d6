"""dampit.lobes: the paper's embedding network and features.

- ``dampit.lobes.resnet``: ``SEResNet`` (gated ResNet, SpeechBrain
  interface ``forward(x, lengths) -> [B, 1, D]``), ``LinearClassifier`` and
  ``load_torchvision_weights``;
- ``dampit.lobes.gates``: the paper's spatial gate and a classic
  squeeze-and-excitation gate;
- ``dampit.lobes.pooling``: length-aware global pooling;
- ``dampit.lobes.features``: the paper's spectrogram features.
"""
