"""dampit.inference: use a trained model outside the recipe.

- ``dampit.inference.extract``: batched embedding of files and crops;
- ``dampit.inference.export``: a recipe run -> a self-contained model folder
  that SpeechBrain's ``EncoderClassifier.from_hparams`` loads offline
  (``dampit-export``);
- ``dampit.inference.api``: ``load_model`` and ``DampitSpeakerRecognition``
  (stored threshold, batched files, robust audio);
- ``dampit.inference.check_pretrained``: load an exported folder with
  ``SpeakerRecognition.from_hparams`` and verify pairs of a run's test data;
- ``dampit.inference.safe_yaml``: allow-list check of a model's YAML;
- ``dampit.inference.pretrainer``: ``FolderPretrainer`` (paths relative to
  the model folder);
- ``dampit.inference.torchscript`` / ``dampit.inference.onnx_export``:
  waveform -> embedding programs with a variable time axis.

Submodules are imported on demand (SpeechBrain's inference classes are slow
to import).
"""
