"""dampit.cli: every command's ``main`` (argument parsing, messages, exit
status) over the library functions; the console scripts of setup.cfg.

- ``dampit-embed`` (``embed``): audio files -> embedding store;
- ``dampit-verify`` (``verify``): two files or a trial list -> scores and
  decisions with the model's stored threshold (EER and minDCF when the
  trials are labelled);
- ``dampit-calibrate`` (``calibrate``): a model's threshold at an
  operating point, from labelled trials;
- ``dampit-cohort`` (``cohort``): the AS-norm cohort of a model folder;
- ``dampit-enroll`` / ``dampit-identify`` (``enroll``, ``identify``):
  speaker profiles and open-set identification;
- ``dampit-export`` (``export``): a verified recipe run -> a model folder;
- ``dampit-synth`` (``synth``): the built-in synthetic corpus;
- ``python -m dampit.cli.check_pretrained`` (``check_pretrained``): the
  quickstart's check of an export through SpeechBrain's ``from_hparams``;
- ``common``: what the commands share (inputs, output folders, errors).
"""
