"""A tiny, randomly initialised model folder for tests (not shipped).

Written by ``dampit.inference.model_files.write_model_files``, the writer
that ``dampit-export`` uses. pytest runs with ``--import-mode=importlib``: load
this file with :func:`importlib.util.spec_from_file_location`.
"""

import os

import torch

from dampit.inference.model_files import write_model_files
from dampit.lobes.resnet import SEResNet
from dampit.utils.atomic import atomic_folder

FEATURES = {
    "spectrogram": {"kind": "spectrogram"},
    "fbank": {"kind": "fbank", "n_bins": 40, "n_fft": 400},
}


def _random_state(kwargs, seed):
    """An ``SEResNet(**kwargs)`` state of random weights and statistics."""
    gen = torch.Generator().manual_seed(seed)
    state = SEResNet(**kwargs).state_dict()
    for name, t in state.items():
        if name.endswith("running_var"):
            t.copy_(0.5 + torch.rand(t.shape, generator=gen))
        elif name.endswith("running_mean"):
            t.copy_(0.1 * torch.randn(t.shape, generator=gen))
        elif t.is_floating_point():
            t.copy_(0.1 * torch.randn(t.shape, generator=gen))
    return state


def write_demo_model(
    folder,
    seed=0,
    threshold=0.5,
    emb_dim=16,
    features="spectrogram",
    default_init=False,
):
    """Write ``<folder>/model``: random weights and batch-norm statistics.

    ``features="spectrogram"``: the paper's features and network;
    ``"fbank"``: 40 log mel bands and the mini recipe's network (3 x 3
    stem, no max pooling, mean + std pooling). ``default_init``: PyTorch's
    initialisation (seeded) instead, whose embeddings spread out (the
    random weights give cosines of 1 for any two files) and keep some
    speaker information (EER near 30% on dspspeech). Returns the folder.
    """
    kwargs = {"depth": 18, "base_width": 4, "emb_dim": emb_dim}
    if features == "fbank":
        kwargs.update(stem_kernel=3, stem_pool=False, pooling="stats")
        kwargs["n_freq"] = 40
    if default_init:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            state = SEResNet(**kwargs).state_dict()
    else:
        state = _random_state(kwargs, seed)
    modules = {
        "compute_features": {
            "class": "dampit.lobes.features.Features",
            "kwargs": FEATURES[features],
        },
        "mean_var_norm": {
            "class": "dampit.lobes.features.CropNormalization",
            "kwargs": {"mode": "scalar"},
        },
        "embedding_model": {
            "class": "dampit.lobes.resnet.SEResNet",
            "kwargs": kwargs,
        },
    }
    target = os.path.join(os.fspath(folder), "model")
    with atomic_folder(target, overwrite=True) as tmp:
        write_model_files(
            tmp, modules, {"embedding_model": state}, threshold, 16000
        )
    return target
