"""dampit.inference: use a trained model outside the recipe (the commands
over it are in ``dampit.cli``).

- ``api``: ``load_model`` (a model folder -> SpeechBrain's
  ``SpeakerRecognition`` with the stored threshold; executes nothing);
- ``export``: a verified recipe run -> a model folder (``dampit-export``);
- ``model_files``: the one writer of a model folder's files;
- ``extract``: batched embedding of files and of windows of long files;
- ``portable``: TorchScript / ONNX programs, waveform -> embedding;
- ``check_pretrained``: the steps of the quickstart's check through
  ``from_hparams``;
- ``embedding_store``: on-disk, memory-mapped embedding stores;
- ``calibration``: a threshold at an operating point, its error rates on
  held-out speakers, a score -> log-likelihood-ratio map;
- ``stored_threshold``: the one writer of a model folder's threshold;
- ``profiles``: speaker profiles, enrolment and open-set identification.
"""
