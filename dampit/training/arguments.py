"""The recipe's numbers, lists and paths, checked before any work.

:func:`check_values` checks each key of :data:`BOUNDS` present in a run's
resolved hyperparameters (command-line overrides included; a text key
with a fixed set of values takes one of the values its module's
constructor takes), that K >= 2 when a pair-based loss term is on, that
``n_freq`` fits ``features`` and ``n_fft``, that the paths of
:data:`PATHS` exist, and turns a scalar given for a key of :data:`LISTS`
(``--speed_speakers=90``) into a one-element list (a speed of 100, the
original, and an item given twice are refused); anything else is one
line naming the key.
"""

import os

from dampit.lobes.features import FEATURE_KINDS, NORM_MODES
from dampit.lobes.resnet import DEPTHS, GATES, POOLINGS
from dampit.losses.angular import FORMS
from dampit.losses.softmax import KINDS
from dampit.losses.triplet import MININGS
from dampit.training.verification import SCORE_NORMS
from dampit.utils.bounds import (
    CHOICE,
    INT,
    OR_NULL,
    REAL,
    TEXT,
    describe,
    within,
)

__all__ = ["BOUNDS", "LISTS", "ArgumentError", "check_values"]

#: key -> (kind, lower, upper), as :mod:`dampit.utils.bounds` reads them.
BOUNDS = {
    "seed": (INT, 0, 2**32 - 1),
    "sample_rate": (INT, 1000, 384000),
    "P": (INT, 2, 100000),
    "K": (INT, 1, 10000),
    "n_folds": (INT + OR_NULL, 2, 1000),
    "fold": (INT, 0, 999),
    "n_test_speakers": (INT + OR_NULL, 0, 1000000),  # 0: all train
    "n_valid_speakers": (INT, 0, 1000000),
    "crop_frames": (INT, 2, 1000000),
    "test_crop_frames": (INT, 2, 1000000),
    "crop_samples": (INT, 1, 10**9),
    "n_test_crops": (INT, 1, 1000),
    "lr": (REAL, 1e-12, 10.0),
    "final_lr": (REAL, 0.0, 10.0),
    "weight_decay": (REAL, 0.0, 10.0),
    "max_grad_norm": (REAL, 0.0, 1e9),
    "number_of_epochs": (INT, 0, 100000),  # 0: test the initial weights
    "batches_per_epoch": (INT + OR_NULL, 1, 10**9),
    "num_workers": (INT, 0, 1024),
    "valid_batch_size": (INT, 1, 100000),
    "test_batch_size": (INT, 1, 100000),
    "valid_pairs": (INT, 1, 10**9),
    "average_checkpoints": (INT, 1, 1000),
    "features": (CHOICE, FEATURE_KINDS, None),
    "n_fft": (INT, 2, 8192),
    "n_freq": (INT, 1, 4097),
    "feature_norm": (CHOICE, NORM_MODES, None),
    "depth": (CHOICE, tuple(DEPTHS), None),
    "in_channels": (INT, 1, 16),
    "gate": (CHOICE, GATES, None),
    "pooling": (CHOICE, POOLINGS, None),
    "emb_dim": (INT, 1, 8192),
    "dropout": (REAL, 0.0, 1.0),
    "w_npair": (REAL, 0.0, 1000.0),
    "w_triplet": (REAL, 0.0, 1000.0),
    "w_angular": (REAL, 0.0, 1000.0),
    "w_softmax": (REAL, 0.0, 1000.0),
    "triplet_mining": (CHOICE, MININGS, None),
    "angular_form": (CHOICE, FORMS, None),
    "softmax_kind": (CHOICE, KINDS, None),
    "score_norm": (CHOICE + OR_NULL, SCORE_NORMS, None),
}
#: key -> what it names, when not null.
PATHS = {
    "torchvision_init": "file",
    "init_from": "folder",
    "noise_folder": "folder",
    "rir_folder": "folder",
}
#: Loss weights of the terms that need K >= 2 utterances per speaker.
PAIR_TERMS = ("w_npair", "w_triplet", "w_angular")
#: key -> (kind of each item, lower, upper): a list (no item twice), or
#: one item.
LISTS = {
    "speed_speakers": (INT, 50, 200),
    "trial_lists": (TEXT, 1, 4096),
    "train_sets": (TEXT, 1, 4096),
    "init_modules": (TEXT, 1, 4096),
    "compile_module_keys": (TEXT, 1, 4096),
}


class ArgumentError(ValueError):
    """A recipe value out of bounds; one line naming the key."""


def check_values(hp, where):
    """Check ``hp``'s keys of :data:`BOUNDS` and :data:`LISTS` in place
    (a scalar of a list key becomes a list); ``where`` names the file.

    Example
    -------
    >>> hp = {"P": 16, "speed_speakers": 90, "trial_lists": "t.txt"}
    >>> check_values(hp, "mini.yaml")
    {'P': 16, 'speed_speakers': [90], 'trial_lists': ['t.txt']}
    >>> try:
    ...     check_values({"fold": "abc"}, "mini.yaml")
    ... except ArgumentError as err:
    ...     print(err)
    mini.yaml: fold='abc' is not an integer in [0, 999]
    >>> try:
    ...     check_values({"gate": "spatail"}, "mini.yaml")
    ... except ArgumentError as err:
    ...     print(err)
    mini.yaml: gate='spatail' is not one of 'spatial', 'none'
    """
    for key, (kind, lower, upper) in BOUNDS.items():
        if key in hp and not within(kind, hp[key], lower, upper):
            what = describe(kind, lower, upper)
            raise ArgumentError(f"{where}: {key}={hp[key]!r} is not {what}")
    folds = hp.get("n_folds")
    if isinstance(folds, int) and hp.get("fold", 0) >= folds:
        raise ArgumentError(
            f"{where}: fold={hp['fold']} is not in 0..n_folds-1 ({folds})"
        )
    if all(k in hp for k in ("features", "n_fft", "n_freq")):
        bins = hp["n_fft"] // 2 + 1  # the bins of the spectrogram
        fbank = hp["features"] == "fbank"
        if hp["n_freq"] > bins or (not fbank and hp["n_freq"] != bins):
            raise ArgumentError(
                f"{where}: n_freq={hp['n_freq']} does not fit features="
                f"{hp['features']} with n_fft={hp['n_fft']}: spectrogram "
                f"takes n_fft // 2 + 1 = {bins}, fbank at most that"
            )
    pairs = [k for k in PAIR_TERMS if hp.get(k)]
    if pairs and hp.get("K", 2) < 2:
        raise ArgumentError(
            f"{where}: K={hp['K']}: {', '.join(pairs)} need K >= 2 "
            "utterances per speaker"
        )
    for key, kind in PATHS.items():
        path = hp.get(key)
        is_kind = os.path.isfile if kind == "file" else os.path.isdir
        if path is not None and not (isinstance(path, str) and is_kind(path)):
            raise ArgumentError(f"{where}: {key}={path}: no such {kind}")
    for key, (kind, lower, upper) in LISTS.items():
        value = hp.get(key)
        if value is None:
            continue
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        what = describe(kind, lower, upper)
        speeds = key == "speed_speakers"  # 100: the original, always used
        if speeds:
            what += " other than 100"
        for k, item in enumerate(items):
            if not within(kind, item, lower, upper) or (speeds and item == 100):
                raise ArgumentError(
                    f"{where}: {key}={value!r}: {item!r} is not {what}"
                )
            if item in items[:k]:
                raise ArgumentError(
                    f"{where}: {key}={value!r}: {item!r} is given twice"
                )
        hp[key] = items
    return hp
