"""Test with the average of the last N epochs' weights.

``average_checkpoints: N`` in the recipe: training keeps the N newest
end-of-epoch checkpoints, verification and export load the average of
their weights (SpeechBrain's ``average_checkpoints``, loaded with
``weights_only``, integer buffers kept integers).
"""

import itertools
import logging

import speechbrain.utils.checkpoints as sbc

from dampit.utils.checkpoints import load_weights

logger = logging.getLogger(__name__)


def _average_keep_dtypes(state_dicts):
    """``average_state_dicts``, each tensor back to its dtype (rounded)."""
    state_dicts = iter(state_dicts)
    first = next(state_dicts)
    dtypes = {name: value.dtype for name, value in first.items()}
    averaged = sbc.average_state_dicts(itertools.chain([first], state_dicts))
    for name, dtype in dtypes.items():
        if not dtype.is_floating_point:
            averaged[name] = averaged[name].round()
        averaged[name] = averaged[name].to(dtype)
    return averaged


def average_weights(checkpoints, name):
    """The average of one recoverable's weights over ``checkpoints``
    (``KeyError`` naming a checkpoint without a file for ``name``).

    Example
    -------
    >>> import tempfile, torch
    >>> from speechbrain.utils.checkpoints import Checkpointer
    >>> bn = torch.nn.BatchNorm1d(1)
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), {"bn": bn})
    >>> for value in (1, 2, 6):
    ...     _ = bn.num_batches_tracked.fill_(value)
    ...     _ = ckpt.save_checkpoint(meta={"EER": value})
    >>> average_weights(ckpt.list_checkpoints(), "bn")["num_batches_tracked"]
    tensor(3)
    """
    for ckpt in checkpoints:
        if name not in ckpt.paramfiles:
            raise KeyError(f"checkpoint {ckpt.path} has no '{name}' file")
    return sbc.average_checkpoints(
        checkpoints,
        name,
        parameter_loader=load_weights,
        averager=_average_keep_dtypes,
    )


def select_test_checkpoints(checkpointer, n, min_key="EER"):
    """The checkpoints averaged for the test (``n`` > 1, ``n == 1`` is
    the recipe's best checkpoint): the ``n`` newest that record
    ``min_key`` (end-of-epoch ones; fewer: a warning), newest first.

    Example
    -------
    >>> import tempfile, torch
    >>> from speechbrain.utils.checkpoints import Checkpointer
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), {"lin": torch.nn.Linear(1, 1)})
    >>> for eer in (0.3, 0.1, 0.2):
    ...     _ = ckpt.save_checkpoint(meta={"EER": eer})
    >>> _ = ckpt.save_checkpoint(meta={"intra": True})  # no EER: skipped
    >>> [c.meta["EER"] for c in select_test_checkpoints(ckpt, 2)]
    [0.2, 0.1]
    """
    found = checkpointer.find_checkpoints(
        ckpt_predicate=lambda c: min_key in c.meta,
        max_num_checkpoints=int(n),
    )
    if found and len(found) < int(n):
        logger.warning(
            "average_checkpoints=%s but %s holds %d end-of-epoch "
            "checkpoint(s): averaging those",
            n,
            checkpointer.checkpoints_dir,
            len(found),
        )
    return found
