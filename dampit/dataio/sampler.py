"""P x K batch sampler: P distinct speakers, K utterances each.

The paper's batches hold P = 64 speakers x K = 2 utterances, speaker-major
(``[s1u1, s1u2, s2u1, ...]``). The losses do not rely on that order: the
pair losses (n-pair, angular) take each speaker's first two rows as anchor
and positive by label (:func:`dampit.losses.base.first_two_pairs`; rows
``0::2`` and ``1::2`` of a P x 2 batch), and the triplet and softmax
losses use every row. Give ``PKSampler`` to a DataLoader as
``batch_sampler``. Epoch ``e`` is drawn from ``(seed, e)``: P speakers
without replacement, with probability proportional to their utterance
counts, each giving the next K of its reshuffled queue, so every utterance
is used about once per pass. Speakers with fewer than K utterances are left
out. An epoch has ``U // (P K)`` batches (``U``: usable utterances)
unless ``batches_per_epoch`` says otherwise.

``set_epoch(e)`` fixes the epoch of the next passes; without it each pass
draws the next epoch. Under DDP (world size W and rank from
``torch.distributed``) the global batch stays P x K: every rank draws the
same global sequence and takes, of each batch, its contiguous slice of
P / W speakers x K utterances (rank 0 the first rows), so that the metric
terms of :class:`~dampit.losses.MultiMetricLoss`, computed on the rows of
all ranks, see one P x K batch; P must be divisible by W. Build the
DataLoader yourself so that SpeechBrain's ``Brain.fit`` does not wrap the
sampler a second time (``DistributedSamplerWrapper``), or give it
``num_replicas=1, rank=0`` and let the wrapper deal whole P x K batches to
the ranks.

The sampler is a SpeechBrain checkpoint recoverable (``add_recoverable``):
it saves the epoch of its pass, and a resumed run draws that epoch again
(a checkpoint saved inside the epoch) or the next one (at its end), with
or without ``set_epoch``. The position inside the epoch is the DataLoader's
to save: SpeechBrain's ``SaveableDataLoader`` counts the batches the
training loop received (a sampler cannot: loader workers draw ahead) and
skips them on resume.
"""

import numpy as np
import torch
import yaml
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)


def _int(name, value, low):
    """``value`` as an int >= ``low``, or a ValueError naming ``name``."""
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"PKSampler: {name}={value!r} must be an int >= {low}")
    return int(value)


@register_checkpoint_hooks
class PKSampler(torch.utils.data.Sampler):
    """Batch sampler of P distinct speakers x K utterances per batch.

    Arguments
    ---------
    labels : sequence
        Speaker label of each dataset item (str, int or scalar tensors);
        for a SpeechBrain dataset use :meth:`from_dataset`.
    P, K : int
        Speakers per (global) batch, utterances per speaker.
    seed : int
        Base seed; epoch ``e`` is drawn from ``(seed, e)``.
    batches_per_epoch : int or None
        Batches per epoch (None: each utterance about once); every rank
        takes its slice of each.
    num_replicas, rank : int or None
        DDP world size and rank (None: from ``torch.distributed``).

    Example
    -------
    >>> labels = ["a", "a", "b", "b", "b", "c", "c", "d"]
    >>> batch = next(iter(PKSampler(labels, P=2, K=2, seed=1)))
    >>> spk = [labels[i] for i in batch]
    >>> spk[0] == spk[1] != spk[2] == spk[3], "d" in spk
    (True, False)
    """

    def __init__(
        self,
        labels,
        P,
        K,
        seed=0,
        batches_per_epoch=None,
        num_replicas=None,
        rank=None,
    ):
        super().__init__()
        if hasattr(labels, "data_ids"):
            raise TypeError("PKSampler: use PKSampler.from_dataset(dataset)")
        self.P, self.K = _int("P", P, 1), _int("K", K, 1)
        self.seed = _int("seed", seed, 0)
        if isinstance(labels, (torch.Tensor, np.ndarray)):
            labels = labels.reshape(-1).tolist()
        groups = {}
        for i, lab in enumerate(labels):
            lab = lab.item() if hasattr(lab, "item") else lab
            groups.setdefault(lab, []).append(i)
        self.speakers = [s for s, v in groups.items() if len(v) >= self.K]
        self._items = [np.asarray(groups[s]) for s in self.speakers]
        self._weights = np.array([len(v) for v in self._items], float)
        if len(self.speakers) < self.P:
            raise ValueError(
                f"PKSampler: only {len(self.speakers)} of {len(groups)} "
                f"speakers have at least K={self.K} utterances, fewer than "
                f"P={self.P}: lower P or K"
            )
        dist = torch.distributed
        ddp = dist.is_available() and dist.is_initialized()
        world, this = (
            (dist.get_world_size(), dist.get_rank()) if ddp else (1, 0)
        )
        num_replicas = world if num_replicas is None else num_replicas
        if rank is None and num_replicas not in (world, 1):
            raise ValueError(
                "PKSampler: num_replicas differs from DDP: give rank"
            )
        if rank is None:
            rank = this if num_replicas == world else 0
        self.num_replicas = _int("num_replicas", num_replicas, 1)
        self.rank = _int("rank", rank, 0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"PKSampler: rank {rank} >= {num_replicas}")
        if self.P % self.num_replicas:
            raise ValueError(
                f"PKSampler: P={self.P} speakers per batch cannot be split "
                f"over {self.num_replicas} ranks: make P a multiple of the "
                "world size"
            )
        if batches_per_epoch is None:
            n = int(self._weights.sum()) // (self.P * self.K)
            batches_per_epoch = max(1, n)
        self.batches_per_epoch = _int("batches_per_epoch", batches_per_epoch, 1)
        self.epoch, self._fixed = 0, False
        self._pass_epoch = None  # epoch of the latest pass, None before

    @classmethod
    def from_dataset(cls, dataset, key="spk_id", **kwargs):
        """A sampler over the ``key`` labels of a dataset: a SpeechBrain
        ``DynamicItemDataset`` (a CSV column, or a dynamic item computed
        alone) or a sequence of dicts.

        Example
        -------
        >>> from speechbrain.dataio.dataset import DynamicItemDataset
        >>> data = {f"u{i}": {"spk_id": i % 3} for i in range(9)}
        >>> ds = DynamicItemDataset(data)
        >>> len(next(iter(PKSampler.from_dataset(ds, P=3, K=2))))
        6
        """
        if hasattr(dataset, "data_ids"):
            ids = dataset.data_ids
            if ids and all(key in dataset.data[i] for i in ids):
                return cls([dataset.data[i][key] for i in ids], **kwargs)
            try:
                with dataset.output_keys_as([key]):
                    return cls([item[key] for item in dataset], **kwargs)
            except (KeyError, ValueError) as err:
                raise KeyError(
                    f"PKSampler: the dataset has no {key!r}"
                ) from err
        return cls([item[key] for item in dataset], **kwargs)

    def set_epoch(self, epoch):
        """Draw epoch ``epoch`` (>= 0) on the following passes."""
        self.epoch, self._fixed = _int("epoch", epoch, 0), True

    def __len__(self):
        """Batches per epoch (on each rank)."""
        return self.batches_per_epoch

    def __iter__(self):
        """This rank's slices of the epoch's batches (lists of
        ``P * K / num_replicas`` indices)."""
        epoch = self.epoch
        self._pass_epoch = epoch
        if not self._fixed:
            self.epoch += 1
        rows = self.P * self.K // self.num_replicas
        start = self.rank * rows
        batches = self.global_batches(epoch)
        return iter([batch[start : start + rows] for batch in batches])

    @mark_as_saver
    def _save(self, path):
        """Write the epoch of the latest pass (or of the next one)."""
        state = {"epoch": self.epoch, "in_pass": False}
        if self._pass_epoch is not None:
            state = {"epoch": self._pass_epoch, "in_pass": True}
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(state, f)

    @mark_as_loader
    def _load(self, path, end_of_epoch):
        """The next pass draws the saved pass's epoch again (saved inside
        it) or the one after (saved at its end)."""
        with open(path, encoding="utf-8") as f:
            state = yaml.safe_load(f)
        if (
            not isinstance(state, dict)
            or not isinstance(state.get("epoch"), int)
            or isinstance(state["epoch"], bool)
            or state["epoch"] < 0
            or not isinstance(state.get("in_pass"), bool)
        ):
            raise ValueError(
                f"PKSampler: {path} is not a saved sampler state: {state!r}"
            )
        finished = state["in_pass"] and end_of_epoch
        self.epoch = state["epoch"] + 1 if finished else state["epoch"]
        self._fixed, self._pass_epoch = False, None

    def global_batches(self, epoch):
        """The ``len(self)`` global P x K batches of an epoch."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        queues, batches = {}, []
        for _ in range(self.batches_per_epoch):
            # Weighted draw without replacement (exponential race).
            keys = rng.exponential(size=len(self.speakers)) / self._weights
            chosen = np.argpartition(keys, self.P - 1)[: self.P]
            chosen = chosen[np.argsort(keys[chosen])]
            batches.append(
                [i for s in chosen for i in self._take(s, queues, rng)]
            )
        return batches

    def _take(self, s, queues, rng):
        """The next K utterances of speaker ``s``; when its queue runs out,
        a fresh shuffled pass follows the leftovers (the K are distinct)."""
        if s not in queues:
            queues[s] = rng.permutation(self._items[s]).tolist()
        left, K = queues[s], self.K
        if len(left) >= K:
            queues[s] = left[K:]
            return left[:K]
        fresh = rng.permutation(self._items[s]).tolist()
        fresh = [i for i in fresh if i not in left]
        queues[s] = fresh[K - len(left) :] + left
        return left + fresh[: K - len(left)]
