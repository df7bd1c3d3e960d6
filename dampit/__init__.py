"""dampit: deep multi-metric learning for speaker verification on SpeechBrain.

The package follows SpeechBrain's layout by role:

- ``dampit.losses``: triplet, n-pair, angular and softmax losses and their
  weighted sum (``MultiMetricLoss``), usable from any SpeechBrain YAML;
- ``dampit.lobes``: the paper's gated ResNet embedding network and the
  paper's spectrogram features;
- ``dampit.dataio``: audio loading, dataset preparation, P x K sampling,
  crops, augmentation and the built-in synthetic corpus;
- ``dampit.metrics``: EER, minDCF, multi-crop scoring, score normalisation
  and plots;
- ``dampit.inference``: export to a SpeechBrain pretrained-model folder;
- ``dampit.cli``: the ``dampit-embed`` and ``dampit-verify`` commands.
"""

__version__ = "0.1.0"
