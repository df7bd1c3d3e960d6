"""Weighted sum of metric-learning terms (paper Eq. 14).

``L = w_npair L_npair + w_tri L_tri + w_ang L_ang + w_soft L_soft`` with the
paper's weights 0.5, 1.0, 1.0 and 0.1. Any subset of terms works; each is
a module ``term(embeddings, labels) -> scalar``, so the whole thing is
written in SpeechBrain YAML as::

    compute_cost: !new:dampit.losses.MultiMetricLoss
        terms:
            triplet: !new:dampit.losses.TripletLoss
            npair: !new:dampit.losses.NPairLoss
            angular: !new:dampit.losses.AngularLoss
            softmax: !new:dampit.losses.SoftmaxLoss
                input_size: 2048
                n_classes: !ref <out_n_neurons>
        weights: {triplet: 1.0, npair: 0.5, angular: 1.0, softmax: 0.1}
"""

import math
from collections.abc import Mapping

from torch import nn

from dampit.losses._utils import flatten_embeddings, flatten_labels, zero_loss
from dampit.losses.angular import AngularLoss
from dampit.losses.npair import NPairLoss
from dampit.losses.softmax import SoftmaxLoss
from dampit.losses.triplet import TripletLoss

PAPER_WEIGHTS = {"npair": 0.5, "triplet": 1.0, "angular": 1.0, "softmax": 0.1}


class MultiMetricLoss(nn.Module):
    """Weighted sum of loss terms; logs each weighted term.

    The terms live in an ``nn.ModuleDict`` so the parameters of a
    :class:`~dampit.losses.SoftmaxLoss` classifier are part of this
    module (give the loss to the optimizer / SpeechBrain ``modules``).

    After each call ``last_terms`` maps each name to its detached weighted
    value, and ``last_stats`` holds every term's ``last_stats`` as
    ``"<name>/<stat>"``.

    Arguments
    ---------
    terms : dict of str -> torch.nn.Module
        The terms, each called as ``term(embeddings, labels)``.
    weights : dict of str -> float, optional
        One finite weight per term (same keys as ``terms``). ``None``
        takes the paper's weights by name (npair 0.5, triplet 1.0,
        angular 1.0, softmax 0.1). A term with weight 0 is skipped.

    Example
    -------
    >>> import torch
    >>> loss = MultiMetricLoss(
    ...     {"triplet": TripletLoss(), "npair": NPairLoss()},
    ...     {"triplet": 1.0, "npair": 0.5},
    ... )
    >>> emb = torch.randn(8, 1, 16)
    >>> total = loss(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    >>> sorted(loss.last_terms)
    ['npair', 'triplet']
    >>> bool(torch.isclose(total, sum(loss.last_terms.values())))
    True
    """

    def __init__(self, terms, weights=None):
        super().__init__()
        name = type(self).__name__
        if not isinstance(terms, Mapping) or not terms:
            raise ValueError(
                f"{name}: terms must be a non-empty dict of name -> loss "
                f"module, got {terms!r}"
            )
        for key, term in terms.items():
            if not isinstance(term, nn.Module):
                raise TypeError(
                    f"{name}: terms[{key!r}] must be a torch.nn.Module, got "
                    f"{type(term).__name__}"
                )
        if weights is None:
            unknown = sorted(set(terms) - set(PAPER_WEIGHTS))
            if unknown:
                raise ValueError(
                    f"{name}: no paper weight for terms {unknown} (paper "
                    f"weights exist for {sorted(PAPER_WEIGHTS)}); pass weights"
                )
            weights = {key: PAPER_WEIGHTS[key] for key in terms}
        if not isinstance(weights, Mapping):
            raise ValueError(
                f"{name}: weights must be a dict of name -> float, got "
                f"{weights!r}"
            )
        missing = sorted(set(terms) - set(weights))
        extra = sorted(set(weights) - set(terms))
        if missing or extra:
            raise ValueError(
                f"{name}: weights and terms must have the same keys; "
                f"no weight for {missing}, weight without a term for {extra}"
            )
        self.weights = {}
        for key in terms:
            try:
                value = float(weights[key])
            except (TypeError, ValueError):
                value = float("nan")
            if not math.isfinite(value):
                raise ValueError(
                    f"{name}: weights[{key!r}] must be a finite number, got "
                    f"{weights[key]!r}"
                )
            self.weights[key] = value
        self.terms = nn.ModuleDict(dict(terms))
        self.last_terms = {}
        self.last_stats = {}

    def forward(self, embeddings, labels):
        """Weighted sum of the terms on one batch.

        Arguments
        ---------
        embeddings : torch.Tensor
            ``[B, D]`` or ``[B, 1, D]``.
        labels : torch.Tensor
            ``[B]`` or ``[B, 1]`` integer speaker ids.

        Returns
        -------
        torch.Tensor
            The scalar total loss.
        """
        name = type(self).__name__
        emb = flatten_embeddings(embeddings, name)
        labels = flatten_labels(labels, emb.shape[0], name, emb.device)
        total = None
        last_terms, last_stats = {}, {}
        for key, term in self.terms.items():
            weight = self.weights[key]
            if weight == 0.0:
                last_terms[key] = zero_loss(emb).detach()
                continue
            value = weight * term(emb, labels)
            total = value if total is None else total + value
            last_terms[key] = value.detach()
            for stat, stat_value in getattr(term, "last_stats", {}).items():
                last_stats[f"{key}/{stat}"] = stat_value
        self.last_terms, self.last_stats = last_terms, last_stats
        return zero_loss(emb) if total is None else total


def paper_multi_metric_loss(
    input_size,
    n_classes,
    softmax_kind="linear",
    triplet_mining="batch_hard",
    angular_form="npair",
    weights=None,
):
    """The paper's four-term loss with its weights (Eq. 14, Sec. 4).

    Arguments
    ---------
    input_size : int
        Embedding dimension (2048 in the paper).
    n_classes : int
        Number of training speakers.
    softmax_kind : str
        ``"linear"`` (paper / original code), ``"aam"`` or ``"am"``.
    triplet_mining : str
        ``"batch_hard"`` (original code), ``"semi_hard"`` or ``"all"``.
    angular_form : str
        ``"npair"`` (original code) or ``"hinge"`` (Eq. 13).
    weights : dict, optional
        Override of :data:`PAPER_WEIGHTS`.

    Returns
    -------
    MultiMetricLoss
        Terms ``npair``, ``triplet``, ``angular``, ``softmax``.

    Example
    -------
    >>> import torch
    >>> loss = paper_multi_metric_loss(input_size=16, n_classes=4)
    >>> loss.weights
    {'npair': 0.5, 'triplet': 1.0, 'angular': 1.0, 'softmax': 0.1}
    >>> total = loss(torch.randn(8, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    >>> total.requires_grad
    True
    """
    terms = {
        "npair": NPairLoss(),
        "triplet": TripletLoss(mining=triplet_mining),
        "angular": AngularLoss(form=angular_form),
        "softmax": SoftmaxLoss(input_size, n_classes, kind=softmax_kind),
    }
    return MultiMetricLoss(terms, dict(weights or PAPER_WEIGHTS))
