"""Weighted sum of loss terms (paper Eq. 14) and the paper's four terms."""

import math
from collections.abc import Mapping
from numbers import Real

import torch
from torch import nn

from dampit.losses.angular import AngularLoss
from dampit.losses.base import MetricLoss, check_choice
from dampit.losses.distributed import gather_rows, mean_over_ranks, world_size
from dampit.losses.npair import NPairLoss
from dampit.losses.softmax import SoftmaxLoss
from dampit.losses.triplet import TripletLoss

# L = 0.5 L_npair + 1.0 L_triplet + 1.0 L_angular + 0.1 L_softmax
PAPER_WEIGHTS = {"npair": 0.5, "triplet": 1.0, "angular": 1.0, "softmax": 0.1}
COPIES = ("exclude", "count")


class MultiMetricLoss(MetricLoss):
    """Weighted sum of loss terms; a term of weight 0 is not computed.

    The terms are submodules (a softmax term's classifier trains with the
    loss). ``last_terms`` maps each name to its detached weighted value,
    ``last_stats`` holds the terms' ``last_stats`` as ``"<name>/<stat>"``.

    Under ``torch.distributed`` with ``cross_rank`` on, each rank holding a
    slice of one global batch of equal size, the terms that compare rows
    (``compares_rows``: n-pair, triplet, angular) are computed on the
    embeddings and labels of all ranks
    (:func:`~dampit.losses.distributed.gather_rows`), the others (softmax,
    AAM) on the rank's own rows, their value the mean over ranks
    (:func:`~dampit.losses.distributed.mean_over_ranks`). Every rank then
    returns the loss of the whole batch, and the gradients DDP averages
    are one process's on the whole batch. ``cross_rank=False`` computes
    every term on the rank's own rows.

    Augmented copies (SpeechBrain's ``wav_augment``: an ``Augmenter`` with
    ``concat_original`` and/or ``repeat_augment`` returns the batch and
    copies of it, with ``replicate_labels`` for the labels): ``augmenter``
    is that Augmenter. Each of its calls gives the source row of every row
    it made (its ``replicate_labels`` of the row indices), which the next
    call of the loss takes (once: a batch the augmenter did not make,
    validation say, has no copies). ``augmented_copies`` says what the
    rows of one source are for each other: ``"exclude"``, neither a
    positive nor a negative pair (the pairs are those of the P x K batch,
    each also with the copies of the other utterances), or ``"count"``, a
    positive pair like two utterances of the speaker (K x (1 + copies)
    utterances per speaker). A call's ``sources`` argument gives the
    sources itself.

    Arguments
    ---------
    terms : dict of str -> torch.nn.Module
        The terms, each called as ``term(embeddings, labels,
        sources=sources)``.
    weights : dict of str -> float, optional
        One finite weight per term; None: :data:`PAPER_WEIGHTS` by name.
    cross_rank : bool
        Under DDP, compute the terms that compare rows on all ranks' rows.
    augmenter : speechbrain.augment.augmenter.Augmenter, optional
        The recipe's ``wav_augment``, whose copies the loss must know.
    augmented_copies : str
        ``"exclude"`` or ``"count"`` (see above).

    Example
    -------
    >>> import torch
    >>> loss = MultiMetricLoss({"triplet": TripletLoss(), "npair": NPairLoss()})
    >>> total = loss(torch.randn(8, 1, 16), torch.tensor([0, 0, 1, 1] * 2))
    >>> loss.weights, bool(total == sum(loss.last_terms.values()))
    ({'triplet': 1.0, 'npair': 0.5}, True)
    """

    def __init__(
        self,
        terms,
        weights=None,
        cross_rank=True,
        augmenter=None,
        augmented_copies="exclude",
    ):
        super().__init__()
        copies = check_choice(
            augmented_copies, COPIES, "augmented_copies", self
        )
        self.augmented_copies = copies
        if augmenter is not None and not (
            isinstance(augmenter, nn.Module)
            and hasattr(augmenter, "replicate_labels")
        ):
            raise TypeError(
                "MultiMetricLoss: augmenter must be SpeechBrain's Augmenter "
                f"(with replicate_labels), got {type(augmenter).__name__}"
            )
        self.made_sources = None  # of the augmenter's batch, not yet taken
        if augmenter is not None:
            augmenter.register_forward_hook(
                self._record_sources, with_kwargs=True
            )
        if not isinstance(cross_rank, bool):
            raise ValueError(
                f"MultiMetricLoss: cross_rank must be True or False, got "
                f"{cross_rank!r}"
            )
        self.cross_rank = cross_rank
        modules = isinstance(terms, Mapping) and terms
        if not modules or not all(
            isinstance(t, nn.Module) for t in modules.values()
        ):
            raise TypeError(
                f"MultiMetricLoss: terms must be a non-empty dict of name "
                f"-> torch.nn.Module, got {terms!r}"
            )
        if weights is None:
            weights = {k: PAPER_WEIGHTS[k] for k in terms if k in PAPER_WEIGHTS}
        if not isinstance(weights, Mapping) or set(weights) != set(terms):
            raise ValueError(
                f"MultiMetricLoss: weights must have the keys of terms "
                f"{sorted(terms)} (paper weights exist for "
                f"{sorted(PAPER_WEIGHTS)}), got {weights}"
            )
        self.weights = {k: weights[k] for k in terms}
        for key, value in self.weights.items():
            if not isinstance(value, Real) or not math.isfinite(value):
                raise ValueError(
                    f"MultiMetricLoss: weights[{key!r}] must be a finite "
                    f"number, got {value!r}"
                )
            self.weights[key] = float(value)
        self.terms = nn.ModuleDict(dict(terms))
        self.last_terms = {}

    def _record_sources(self, augmenter, args, kwargs, output):
        """The augmenter's forward hook: the source row of each row of its
        output, from its own ``replicate_labels``."""
        wavs = args[0] if args else kwargs["x"]
        rows = torch.arange(len(wavs))
        self.made_sources = augmenter.replicate_labels(rows)

    def forward(self, predictions, targets, length=None, sources=None):
        """See :meth:`dampit.losses.base.MetricLoss.forward`; ``sources``
        defaults to those of the augmenter's last batch (see the class
        docstring), and ``augmented_copies="count"`` pairs every row."""
        made, self.made_sources = self.made_sources, None
        if sources is None and made is not None:
            if len(made) != len(targets):
                raise ValueError(
                    f"MultiMetricLoss: the augmenter's last call made "
                    f"{len(made)} rows, the batch has {len(targets)}: give "
                    "the loss the embeddings of the augmenter's output"
                )
            sources = made
        if self.augmented_copies == "count":
            sources = None
        return super().forward(predictions, targets, length, sources)

    def compute(self, emb, labels, sources):
        """See :meth:`dampit.losses.base.MetricLoss.compute`."""
        total, stats, self.last_terms = emb[:0].sum(), {}, {}
        active = {k: t for k, t in self.terms.items() if self.weights[k] != 0}
        across = self.cross_rank and world_size() > 1
        own = everyone = (emb, labels, sources)
        if across and any(_compares_rows(t) for t in active.values()):
            everyone = gather_rows(emb, labels, sources, type(self).__name__)
        for key, term in self.terms.items():
            value = emb[:0].sum()
            if key in active:
                value = self.weights[key] * _term_value(
                    term, own, everyone, across
                )
                for stat, v in getattr(term, "last_stats", {}).items():
                    stats[f"{key}/{stat}"] = v
            total = total + value
            self.last_terms[key] = value.detach()
        return total, stats


def _term_value(term, own, everyone, across):
    """A term on all ranks' rows when it compares rows, else on this
    rank's, reported as the mean over ranks when ``across``; each is
    ``(embeddings, labels, sources)``."""
    if _compares_rows(term):
        emb, labels, sources = everyone
        return term(emb, labels, sources=sources)
    emb, labels, sources = own
    value = term(emb, labels, sources=sources)
    if across:
        return mean_over_ranks(value)
    return value


def _compares_rows(term):
    """Whether ``term`` compares the rows of a batch (``compares_rows``)."""
    return bool(getattr(term, "compares_rows", False))


def paper_multi_metric_loss(input_size, n_classes):
    """The paper's four terms and weights, the original code's options.

    Example
    -------
    >>> loss = paper_multi_metric_loss(input_size=16, n_classes=4)
    >>> sorted(loss.terms) == sorted(PAPER_WEIGHTS) == sorted(loss.weights)
    True
    """
    terms = {
        "npair": NPairLoss(),
        "triplet": TripletLoss(),
        "angular": AngularLoss(),
        "softmax": SoftmaxLoss(input_size, n_classes),
    }
    return MultiMetricLoss(terms, PAPER_WEIGHTS)
