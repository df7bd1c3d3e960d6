"""dampit: deep multi-metric learning for speaker verification on SpeechBrain.

The package follows SpeechBrain's layout by role:

- ``dampit.losses``: triplet, n-pair, angular and softmax losses and their
  weighted sum (``MultiMetricLoss``), usable from any SpeechBrain YAML;
- ``dampit.lobes``: the paper's gated ResNet embedding network and the
  paper's spectrogram features;
- ``dampit.dataio``: audio loading, dataset preparation, P x K sampling,
  crops, augmentation and the built-in synthetic corpus;
- ``dampit.metrics``: EER, minDCF, trial scoring (whole-utterance cosine,
  multi-crop), score normalisation, plots and the verification report;
- ``dampit.training``: what the recipe scripts share (run setup,
  validation, verification);
- ``dampit.inference``: model folders (export, loading without executing
  their YAML), embedding stores, speaker profiles;
- ``dampit.cli``: every command's ``main`` (``dampit-embed``,
  ``dampit-verify``, ``dampit-export``, ...).
"""

__version__ = "0.1.0"
