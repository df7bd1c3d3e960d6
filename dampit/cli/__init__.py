"""dampit.cli: console scripts declared in setup.cfg.

- ``dampit-embed`` (``dampit.cli.embed``): audio files -> embedding store;
- ``dampit-verify`` (``dampit.cli.verify``): two files or a trial list ->
  scores and decisions with the model's stored threshold (EER and minDCF
  when the trials are labelled);
- ``dampit-export`` (``dampit.inference.export``): a recipe run -> model.
"""
