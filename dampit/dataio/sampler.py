"""P x K batch sampler: P distinct speakers, K utterances each.

The paper forms every mini-batch from P = 64 speakers with K = 2
utterances each (batch 128); the losses then read anchors as
``batch[0::2]`` and positives as ``batch[1::2]``. ``PKSampler`` is a
*batch* sampler: give it to ``torch.utils.data.DataLoader(dataset,
batch_sampler=sampler)`` (or to SpeechBrain's ``make_dataloader``) and it
yields lists of ``P * K`` dataset indices in speaker-major order
``[s1u1, s1u2, ..., s1uK, s2u1, ...]``. A speaker never appears twice in a
batch (the original code's sampler let that happen), and an utterance
never appears twice in a batch unless ``small_classes="replace"`` had to
repeat the utterances of a speaker with fewer than K.

How batches are drawn (for an epoch ``e``, from ``numpy`` generator seeded
with ``(seed, e)``):

- every usable speaker keeps a shuffled queue of its utterances; a batch
  takes the next K of each chosen speaker's queue; an exhausted queue is
  reshuffled (so each utterance is used about once per pass);
- the P speakers of a batch are drawn without replacement with
  probability proportional to their number of utterances, so utterances,
  not speakers, are sampled roughly uniformly.

Epoch length: by default each rank gets
``max(1, (U // (P * K)) // num_replicas)`` batches, where ``U`` is the
number of utterances of the usable speakers (speakers with fewer than K
count K in "replace" mode): each utterance is used about once per epoch
over all ranks. ``batches_per_epoch`` sets the per-rank count instead
(what ``len(sampler)`` returns).

Epochs: ``set_epoch(e)`` (called by SpeechBrain's ``Brain.fit`` on
``brain.train_sampler``) fixes the epoch used by the following
``__iter__`` calls. If it is never called, an internal counter starts at 0
and advances on every ``__iter__``, so every pass over the loader is
reshuffled anyway.

Distributed training (DDP): with ``num_replicas=None`` and ``rank=None``
the sampler reads the world size and rank from ``torch.distributed`` when
it is initialised. All ranks build the same global sequence of
``num_replicas * len(sampler)`` batches from ``(seed, epoch)``, and rank
``r`` takes batches ``r, r + num_replicas, ...``: the ranks get disjoint
batches, the same number each, and together the whole sequence.

SpeechBrain and DDP (speechbrain 1.1, ``Brain._train_loader_specifics``):
when ``Brain.fit`` / ``Brain.make_dataloader`` builds the training loader
under DDP, it wraps any ``batch_sampler`` in
``speechbrain.dataio.sampler.DistributedSamplerWrapper`` (a
``DistributedSampler`` over the list of batches: it permutes the batches
with its own seed and epoch, pads the list with repeated batches until it
divides by the world size, and keeps every ``world_size``-th one). A
``PKSampler`` that already splits per rank would then be split a second
time. So in a DDP recipe either

1. (recommended) build the loader yourself and pass the DataLoader, not
   the dataset, to ``fit`` (SpeechBrain only wraps what it builds), and
   set ``brain.train_sampler = sampler`` so that ``fit`` calls
   ``set_epoch``::

       sampler = PKSampler.from_dataset(train_data, "spk_id", P=64, K=2)
       loader = sb.dataio.dataloader.make_dataloader(
           train_data, batch_sampler=sampler, num_workers=4)
       brain.train_sampler = sampler
       brain.fit(epoch_counter, loader, valid_loader)

2. or let SpeechBrain wrap it, with ``num_replicas=1, rank=0`` (the
   sampler then yields the global sequence and the wrapper splits it) and
   a ``batches_per_epoch`` that is a multiple of the world size (otherwise
   the wrapper's padding repeats batches on some ranks).

Without DDP, passing ``batch_sampler=sampler`` in ``train_loader_kwargs``
is fine: SpeechBrain hands it to the DataLoader unchanged (but does not
call ``set_epoch``; the internal counter then reshuffles every epoch, and
``brain.train_sampler = sampler`` makes the epochs follow ``fit``'s).
"""

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["PKSampler"]


def _as_label(value):
    """Turn a label (str, int, 1-element tensor/array) into a hashable."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"a label must be a scalar, got a tensor of shape "
                f"{tuple(value.shape)}"
            )
        return value.item()
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(
                f"a label must be a scalar, got an array of shape {value.shape}"
            )
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _dist_world():
    """(world_size, rank) from torch.distributed, or (1, 0)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class PKSampler(torch.utils.data.Sampler):
    """Batch sampler of P distinct speakers x K utterances per batch.

    Arguments
    ---------
    labels : sequence
        Speaker label of every dataset item (str, int, or scalar tensors);
        index ``i`` of the dataset has label ``labels[i]``. For a
        SpeechBrain ``DynamicItemDataset`` use ``PKSampler.from_dataset``.
    P : int
        Speakers per batch.
    K : int
        Utterances per speaker per batch.
    seed : int
        Base seed (>= 0); epoch ``e`` is drawn from ``(seed, e)``.
    batches_per_epoch : int or None
        Batches per epoch *per rank* (``len(sampler)``); None: each usable
        utterance about once per epoch over all ranks (see the module
        docstring).
    small_classes : str
        Speakers with fewer than K utterances: "skip" (left out, the
        default) or "replace" (kept; their K utterances are drawn with
        replacement, each of their utterances as evenly as possible).
    num_replicas : int or None
        Number of DDP ranks (None: torch.distributed's world size when
        initialised, else 1).
    rank : int or None
        This rank (None: torch.distributed's rank when initialised, else
        0).

    Raises
    ------
    ValueError
        When fewer than P speakers are usable, or an argument is invalid.

    Example
    -------
    >>> labels = ["a", "a", "b", "b", "b", "c", "c", "d"]
    >>> sampler = PKSampler(labels, P=2, K=2, seed=1)
    >>> len(sampler)
    1
    >>> batch = next(iter(sampler))
    >>> len(batch)
    4
    >>> spk = [labels[i] for i in batch]
    >>> spk[0] == spk[1] and spk[2] == spk[3] and spk[0] != spk[2]
    True
    >>> "d" in spk
    False
    """

    def __init__(
        self,
        labels,
        P,
        K,
        seed=0,
        batches_per_epoch=None,
        small_classes="skip",
        num_replicas=None,
        rank=None,
    ):
        super().__init__()
        if hasattr(labels, "data_ids") and hasattr(labels, "pipeline"):
            raise TypeError(
                "PKSampler: labels is a SpeechBrain dataset; use "
                "PKSampler.from_dataset(dataset, key='spk_id', ...)"
            )
        for name, value in (("P", P), ("K", K)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(
                    f"PKSampler: {name}={value!r} must be an int >= 1"
                )
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ValueError(f"PKSampler: seed={seed!r} must be an int >= 0")
        if small_classes not in ("skip", "replace"):
            raise ValueError(
                f"PKSampler: small_classes={small_classes!r} must be 'skip' "
                "or 'replace'"
            )
        self.P, self.K, self.seed = int(P), int(K), int(seed)
        self.small_classes = small_classes

        if isinstance(labels, (torch.Tensor, np.ndarray)):
            labels = labels.reshape(-1).tolist()
        groups = {}
        for i, lab in enumerate(labels):
            try:
                groups.setdefault(_as_label(lab), []).append(i)
            except TypeError as err:
                raise ValueError(
                    f"PKSampler: label {lab!r} of item {i} is not hashable"
                ) from err
        self.n_items = sum(len(v) for v in groups.values())
        min_count = self.K if small_classes == "skip" else 1
        self.speakers = [s for s, v in groups.items() if len(v) >= min_count]
        self._items = [np.asarray(groups[s]) for s in self.speakers]
        n_skipped = len(groups) - len(self.speakers)
        if len(self.speakers) < self.P:
            if small_classes == "skip" and n_skipped:
                why = (
                    f"only {len(self.speakers)} of {len(groups)} speakers "
                    f"have at least K={self.K} utterances"
                )
                hint = "lower P or K, or use small_classes='replace'"
            else:
                why = f"only {len(groups)} speakers"
                hint = "lower P"
            raise ValueError(
                f"PKSampler: {why}, fewer than P={self.P} needed for one "
                f"batch ({self.n_items} items); {hint}"
            )
        if n_skipped:
            logger.info(
                "PKSampler: skipping %d speakers with fewer than K=%d "
                "utterances",
                n_skipped,
                self.K,
            )
        # Weight of a speaker = its number of utterances (K at least).
        self._weights = np.array(
            [max(len(v), self.K) for v in self._items], dtype=np.float64
        )

        world, this_rank = _dist_world()
        if num_replicas is None:
            num_replicas = world
        if rank is None:
            if num_replicas == world:
                rank = this_rank
            elif num_replicas == 1:
                rank = 0
            else:
                raise ValueError(
                    f"PKSampler: num_replicas={num_replicas} differs from "
                    f"the torch.distributed world size {world}; give rank"
                )
        if int(num_replicas) != num_replicas or num_replicas < 1:
            raise ValueError(
                f"PKSampler: num_replicas={num_replicas!r} must be >= 1"
            )
        if int(rank) != rank or not 0 <= rank < num_replicas:
            raise ValueError(
                f"PKSampler: rank={rank!r} must be in [0, {num_replicas})"
            )
        self.num_replicas, self.rank = int(num_replicas), int(rank)

        if batches_per_epoch is None:
            n_global = int(self._weights.sum()) // (self.P * self.K)
            batches_per_epoch = max(1, n_global // self.num_replicas)
        if (
            isinstance(batches_per_epoch, bool)
            or int(batches_per_epoch) != batches_per_epoch
            or batches_per_epoch < 1
        ):
            raise ValueError(
                f"PKSampler: batches_per_epoch={batches_per_epoch!r} must "
                "be an int >= 1"
            )
        self.batches_per_epoch = int(batches_per_epoch)
        self._epoch = 0
        self._explicit_epoch = False

    @classmethod
    def from_dataset(cls, dataset, key="spk_id", **kwargs):
        """Build a sampler from the labels of a dataset.

        For a SpeechBrain ``DynamicItemDataset`` (filtered or sorted
        with ``filtered_sorted`` or not) a static CSV column is read
        straight from ``dataset.data`` without loading any audio; a
        dynamic item is computed with ``dataset.output_keys_as([key])``,
        which only runs the pipeline that ``key`` needs.

        Arguments
        ---------
        dataset : DynamicItemDataset or sequence of dicts
            The training dataset; sampler index ``i`` is ``dataset[i]``.
        key : str
            The label key ("spk_id" in dampit's CSVs).
        **kwargs : dict
            ``P``, ``K`` and the other ``PKSampler`` arguments.

        Returns
        -------
        PKSampler
            The sampler.

        Example
        -------
        >>> from speechbrain.dataio.dataset import DynamicItemDataset
        >>> data = {f"u{i}": {"spk_id": f"s{i % 3}"} for i in range(9)}
        >>> ds = DynamicItemDataset(data)
        >>> sampler = PKSampler.from_dataset(ds, "spk_id", P=3, K=2)
        >>> len(next(iter(sampler)))
        6
        """
        if hasattr(dataset, "data_ids") and hasattr(dataset, "data"):
            ids = dataset.data_ids
            static = bool(ids) and all(key in dataset.data[i] for i in ids)
            if static:
                labels = [dataset.data[i][key] for i in ids]
            else:
                try:
                    with dataset.output_keys_as([key]):
                        labels = [dataset[i][key] for i in range(len(dataset))]
                except (KeyError, ValueError) as err:
                    raise KeyError(
                        f"PKSampler.from_dataset: the dataset has no key "
                        f"{key!r} (neither a CSV column nor a dynamic item)"
                    ) from err
        else:
            labels = []
            for i in range(len(dataset)):
                item = dataset[i]
                if key not in item:
                    raise KeyError(
                        f"PKSampler.from_dataset: item {i} has no key {key!r}"
                    )
                labels.append(item[key])
        return cls(labels, **kwargs)

    @property
    def epoch(self):
        """The epoch the next ``__iter__`` will draw."""
        return self._epoch

    def set_epoch(self, epoch):
        """Fix the epoch drawn by the following iterations.

        Arguments
        ---------
        epoch : int
            Epoch number (>= 0); SpeechBrain's ``fit`` passes 1, 2, ...
        """
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"PKSampler: epoch={epoch!r} must be >= 0")
        self._epoch = int(epoch)
        self._explicit_epoch = True

    def __len__(self):
        """Number of batches this rank yields per epoch."""
        return self.batches_per_epoch

    def __iter__(self):
        """Yield this rank's batches (lists of ``P * K`` indices)."""
        epoch = self._epoch
        if not self._explicit_epoch:
            self._epoch += 1
        batches = self.global_batches(epoch)
        return iter(batches[self.rank :: self.num_replicas])

    def global_batches(self, epoch):
        """All ranks' batches of an epoch, in global order.

        Arguments
        ---------
        epoch : int
            The epoch.

        Returns
        -------
        list of list of int
            ``num_replicas * len(self)`` batches; rank ``r`` gets
            ``[r::num_replicas]`` of them.
        """
        rng = np.random.default_rng([self.seed, int(epoch)])
        n_batches = self.batches_per_epoch * self.num_replicas
        queues = {}
        batches = []
        for _ in range(n_batches):
            # Weighted sampling without replacement as an exponential race:
            # speaker s "arrives" at Exp(1) / w_s; the first P arrive, in
            # their (random) order.
            keys = rng.exponential(size=len(self.speakers)) / self._weights
            chosen = np.argpartition(keys, self.P - 1)[: self.P]
            chosen = chosen[np.argsort(keys[chosen])]
            batch = []
            for s in chosen:
                batch.extend(self._take(int(s), queues, rng))
            batches.append(batch)
        return batches

    def _take(self, s, queues, rng):
        """The next K utterances of speaker ``s`` (refilling its queue)."""
        items = self._items[s]
        K = self.K
        if len(items) < K:  # small_classes == "replace"
            picks = np.resize(rng.permutation(items), K)
            return rng.permutation(picks).tolist()
        queue = queues.get(s)
        if queue is None:
            queue = queues[s] = rng.permutation(items).tolist()
        if len(queue) >= K:
            out = queue[:K]
            del queue[:K]
            return out
        # Not enough left: a fresh pass, with the leftovers moved to its
        # end so that the K returned utterances are distinct.
        left = queue[:]
        fresh = [i for i in rng.permutation(items).tolist() if i not in left]
        need = K - len(left)
        out = left + fresh[:need]
        queues[s] = fresh[need:] + left
        return out
