"""dampit.dataio: from audio files to training batches and trial lists.

- ``audio``: ``load_audio`` / ``read_crop`` (mono, resampling, clear
  ``AudioError`` naming the file);
- ``prepare_voxceleb``: VoxCeleb1/2 -> ``train.csv``, ``dev.csv``,
  ``test.csv`` and ID trial lists (VoxCeleb1-O, -O cleaned, -E, -H);
  ``tools/convert_voxceleb2.py`` turns VoxCeleb2's m4a into wav first;
- ``prepare_folder``: the same for any ``<speaker>/**/<utt>.wav|flac``
  tree, with a deterministic speaker-disjoint split and generated trials;
- ``preparation``: what both share (``scan_audio_tree``, the audio check of
  every file, the dev split, ``DataPreparationError``); ``prepared``: the
  prepared folder's manifests, trial lists and options file;
- ``trials``: read, write and generate ``label enrol test`` trial lists;
- ``synthetic``: a built-in synthetic speaker corpus (``dampit-synth``) for
  demos and tests; it is not a benchmark;
- ``crops``, ``sampler``, ``augment``: crops, P x K batches, noise and
  reverberation.

CSV manifests use SpeechBrain's columns ``ID, duration, wav, start, stop,
spk_id`` (read with ``load_data_csv`` or ``DynamicItemDataset.from_csv``);
utterance IDs are relative paths without extension
(``id10270/x6uYqmx31kE/00001``), which is how trial lists name them.
"""
