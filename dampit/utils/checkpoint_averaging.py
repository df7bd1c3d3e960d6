"""Test with the average of the last epochs' weights.

Averaging the weights of the last few checkpoints of a run (as in
SpeechBrain's ASR recipes, Polyak averaging over epochs) smooths the
epoch-to-epoch jumps of a small model trained on few speakers. The recipe
turns it on with one key, ``average_checkpoints: N``: training keeps the N
most recent end-of-epoch checkpoints, and verification and export load
the average of their weights instead of the checkpoint with the lowest
validation EER.

The averaging itself is SpeechBrain's
:func:`~speechbrain.utils.checkpoints.average_checkpoints`; this module
loads with ``torch.load(weights_only=True)``, keeps integer buffers (the
batch-norm counters) integers, and picks the checkpoints.
"""

import logging

import torch
from speechbrain.utils.checkpoints import (
    average_checkpoints,
    average_state_dicts,
)

__all__ = [
    "average_weights",
    "recent_epoch_checkpoints",
    "select_test_checkpoints",
]

logger = logging.getLogger(__name__)


def _load_weights_only(path, map_location="cpu"):
    """``torch.load`` that refuses anything but tensors and containers."""
    return torch.load(path, map_location=map_location, weights_only=True)


def _average_keep_dtypes(state_dicts):
    """SpeechBrain's ``average_state_dicts``, then each tensor back to its
    own dtype (integer buffers rounded)."""
    state_dicts = iter(state_dicts)
    first = next(state_dicts, None)
    if first is None:
        raise ValueError("no state dicts to average")
    dtypes = {name: value.dtype for name, value in first.items()}

    def chain():
        yield first
        yield from state_dicts

    averaged = average_state_dicts(chain())
    for name, value in averaged.items():
        if not dtypes[name].is_floating_point:
            value = value.round()
        averaged[name] = value.to(dtypes[name])
    return averaged


def recent_epoch_checkpoints(checkpointer, n, meta_key="EER"):
    """The ``n`` most recent end-of-epoch checkpoints, newest first.

    Arguments
    ---------
    checkpointer : speechbrain.utils.checkpoints.Checkpointer
        The run's checkpointer (or one opened on its ``save`` folder).
    n : int
        How many checkpoints (at least 1).
    meta_key : str
        Only checkpoints whose meta records this key (the recipe's
        end-of-epoch checkpoints record the validation ``EER``; SpeechBrain's
        intra-epoch ones do not).

    Returns
    -------
    list
        Checkpoint namedtuples, at most ``n``.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.utils.checkpoints import Checkpointer
    >>> lin = torch.nn.Linear(1, 1)
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), {"lin": lin})
    >>> for epoch in range(4):
    ...     _ = ckpt.save_checkpoint(meta={"EER": 0.1 * epoch})
    >>> _ = ckpt.save_checkpoint(meta={"intra": True})  # no EER: skipped
    >>> [c.meta["EER"] for c in recent_epoch_checkpoints(ckpt, 2)]
    [0.30000000000000004, 0.2]
    """
    if int(n) < 1:
        raise ValueError(f"average_checkpoints must be >= 1, got {n}")
    return checkpointer.find_checkpoints(
        ckpt_predicate=lambda c: meta_key in c.meta,
        max_num_checkpoints=int(n),
    )


def average_weights(checkpoints, name):
    """The average of one recoverable's weights over checkpoints.

    Arguments
    ---------
    checkpoints : list
        Checkpoint namedtuples (from ``find_checkpoints``).
    name : str
        The recoverable, e.g. ``"embedding_model"``.

    Returns
    -------
    dict
        A state dict: floating tensors averaged, integer buffers averaged
        and rounded, every tensor in its original dtype.

    Raises
    ------
    KeyError
        When a checkpoint has no file for ``name`` (the message names it).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.utils.checkpoints import Checkpointer
    >>> bn = torch.nn.BatchNorm1d(1)
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), {"bn": bn})
    >>> for value in (1.0, 2.0, 6.0):
    ...     _ = bn.weight.data.fill_(value)
    ...     _ = bn.num_batches_tracked.fill_(int(value))
    ...     _ = ckpt.save_checkpoint(meta={"EER": value})
    >>> avg = average_weights(recent_epoch_checkpoints(ckpt, 3), "bn")
    >>> avg["weight"], avg["num_batches_tracked"]
    (tensor([3.]), tensor(3))
    """
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise ValueError("no checkpoints to average")
    for ckpt in checkpoints:
        if name not in ckpt.paramfiles:
            raise KeyError(f"checkpoint {ckpt.path} has no '{name}' file")
    return average_checkpoints(
        checkpoints,
        name,
        parameter_loader=_load_weights_only,
        averager=_average_keep_dtypes,
    )


def select_test_checkpoints(checkpointer, n, min_key="EER"):
    """The checkpoints whose weights a run is tested with.

    ``n == 1``: the one with the lowest ``min_key`` (validation EER), or
    the most recent when none records it; ``n > 1``: the ``n`` most recent
    end-of-epoch ones, to be averaged. Fewer than ``n`` (a short run) is
    allowed, with a warning.

    Arguments
    ---------
    checkpointer : speechbrain.utils.checkpoints.Checkpointer
        The run's checkpointer.
    n : int
        The recipe's ``average_checkpoints``.
    min_key : str
        The validation metric in each checkpoint's meta.

    Returns
    -------
    list
        Checkpoint namedtuples, newest first; empty when there is none.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.utils.checkpoints import Checkpointer
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), {"lin": torch.nn.Linear(1, 1)})
    >>> for eer in (0.3, 0.1, 0.2):
    ...     _ = ckpt.save_checkpoint(meta={"EER": eer})
    >>> [c.meta["EER"] for c in select_test_checkpoints(ckpt, 1)]
    [0.1]
    >>> [c.meta["EER"] for c in select_test_checkpoints(ckpt, 2)]
    [0.2, 0.1]
    """
    n = int(n)
    if n == 1:
        best = checkpointer.find_checkpoint(min_key=min_key)
        best = best or checkpointer.find_checkpoint()
        return [best] if best is not None else []
    found = recent_epoch_checkpoints(checkpointer, n, meta_key=min_key)
    if found and len(found) < n:
        logger.warning(
            "average_checkpoints=%d but %s holds only %d end-of-epoch "
            "checkpoint(s): averaging those",
            n,
            checkpointer.checkpoints_dir,
            len(found),
        )
    return found
