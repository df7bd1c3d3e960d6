"""The base class of dampit's losses and the pieces several losses share.

Every loss is called as SpeechBrain calls ``compute_cost``:
``loss(predictions, targets, length=None)``, with embeddings ``[B, D]`` or
``[B, 1, D]`` and integer speaker labels ``[B]`` or ``[B, 1]``. ``length``
(relative waveform lengths) is accepted and ignored, as SpeechBrain's
``LogSoftmaxWrapper`` ignores it: there is one embedding per utterance.

``sources`` (optional, ``[B]`` integers) says which rows are copies of one
utterance (SpeechBrain's ``wav_augment``: the batch, then augmented copies
of it): rows of one source are neither a positive nor a negative pair for
each other. Without it every row is its own source.
"""

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-6  # norm floor of F.normalize: a zero vector stays zero


class MetricLoss(nn.Module):
    """Owns ``forward``: checks, float32 arithmetic and ``last_stats``.

    Subclasses implement :meth:`compute` only, which gets every row's
    source (see the module docstring). It runs with autocast off on
    float32 embeddings (float64 stays float64), so fp16/bf16 inputs neither
    overflow nor lose the small differences metric losses depend on. A
    batch the loss cannot use (``compute`` returns None: no anchor with a
    positive and a negative, or no row at all) raises ``ValueError``
    naming the loss, or gives a zero loss connected to the graph when
    ``allow_empty`` is True (e.g. validation batches that are not P x K).

    ``compares_rows`` (a class attribute) is True for the losses that
    compare the rows of a batch with each other (pairs, triplets): under
    DDP, :class:`~dampit.losses.MultiMetricLoss` gives them the rows of
    all ranks; the others (a classifier's softmax) see each rank's own.

    Arguments
    ---------
    allow_empty : bool
        Return 0 instead of raising on a batch the loss cannot use.

    Example
    -------
    >>> class Mean(MetricLoss):
    ...     def compute(self, emb, labels, sources):
    ...         return emb.mean(), {"dtype": emb.dtype}
    >>> loss = Mean()
    >>> loss(torch.ones(2, 1, 3).half(), torch.tensor([[0], [1]]), None)
    tensor(1.)
    >>> loss.last_stats
    {'dtype': torch.float32}
    """

    compares_rows = False

    def __init__(self, allow_empty=False):
        super().__init__()
        self.allow_empty = bool(allow_empty)
        self.last_stats = {}

    def compute(self, emb, labels, sources):
        """``(loss, stats)`` of ``[B, D]`` embeddings, ``[B]`` labels and
        ``[B]`` sources (rows of one source are never paired).

        B >= 1. Returns None when the batch cannot be used.
        """
        raise NotImplementedError

    def forward(self, predictions, targets, length=None, sources=None):
        """The scalar loss of one batch (float32, float64 for float64).

        Arguments
        ---------
        predictions : torch.Tensor
            Embeddings ``[B, D]`` or ``[B, 1, D]``.
        targets : torch.Tensor
            Integer speaker labels ``[B]`` or ``[B, 1]``.
        length : torch.Tensor, optional
            Ignored (SpeechBrain's relative lengths).
        sources : torch.Tensor, optional
            Integer source of each row ``[B]`` or ``[B, 1]``: rows of one
            source (an utterance and its augmented copies, which share its
            label) are not paired. None: every row its own source.

        Returns
        -------
        torch.Tensor
            The loss.
        """
        name = type(self).__name__
        emb, labels = _flatten(predictions, targets, name)
        sources = check_sources(sources, labels, name)
        self.last_stats = {}
        with torch.autocast(emb.device.type, enabled=False):
            out = self.compute(emb, labels, sources) if len(labels) else None
        if out is not None:
            loss, self.last_stats = out
            return loss
        if self.allow_empty:
            return emb[:0].sum()  # 0, gradient 0, in the graph
        counts = labels.unique(return_counts=True)[1]
        raise ValueError(
            f"{name}: no usable pair in this batch ({len(counts)} speakers, "
            f"at most {int(counts.max()) if len(counts) else 0} utterances "
            "each); use a P x K sampler (P >= 2, K >= 2) or allow_empty=True"
        )


def _flatten(predictions, targets, name):
    """``[B, D]`` float32 (or float64) embeddings and ``[B]`` long labels."""
    if not isinstance(predictions, torch.Tensor) or not isinstance(
        targets, torch.Tensor
    ):
        raise TypeError(f"{name}: predictions and targets must be tensors")
    emb = predictions
    if emb.dim() == 3 and emb.shape[1] == 1:
        emb = emb.squeeze(1)
    if emb.dim() != 2 or not emb.is_floating_point():
        raise ValueError(
            f"{name}: predictions must be float [B, D] or [B, 1, D], got "
            f"{emb.dtype} of shape {list(predictions.shape)}"
        )
    what = f"{name}: targets must be {len(emb)} integer labels"
    labels = _integer_rows(targets, len(emb), what)
    emb = emb if emb.dtype == torch.float64 else emb.float()
    return emb, labels.to(emb.device, torch.long)


def _integer_rows(x, n, what):
    """``x`` (``n`` integers, ``[B]`` or ``[B, 1]``) as ``[B]``, or a
    ValueError: ``what``, then the shapes accepted and ``x``'s."""
    rows = x.squeeze(1) if x.dim() == 2 and x.shape[1] == 1 else x
    if (
        rows.dim() != 1
        or rows.is_floating_point()
        or rows.is_complex()
        or len(rows) != n
    ):
        raise ValueError(
            f"{what} [B] or [B, 1], got {x.dtype} of shape {list(x.shape)}"
        )
    return rows


def check_sources(sources, labels, name):
    """``[B]`` long sources on the labels' device (None: ``arange(B)``),
    or a ValueError naming ``name`` when they are not B integers or one
    source has rows of two labels.

    Example
    -------
    >>> check_sources(None, torch.tensor([4, 4, 5]), "loss")
    tensor([0, 1, 2])
    """
    if sources is None:
        return torch.arange(len(labels), device=labels.device)
    if not isinstance(sources, torch.Tensor):
        raise TypeError(f"{name}: sources must be a tensor")
    what = f"{name}: sources must be {len(labels)} integers"
    src = _integer_rows(sources, len(labels), what)
    src = src.to(labels.device, torch.long)
    one_source = src.unsqueeze(0) == src.unsqueeze(1)
    if (one_source & (labels.unsqueeze(0) != labels.unsqueeze(1))).any():
        raise ValueError(
            f"{name}: rows of one source have different labels (sources "
            "must say which rows are copies of one utterance)"
        )
    return src


def check_choice(value, choices, arg, owner):
    """``value`` if it is one of ``choices``, else a ValueError naming it.

    Example
    -------
    >>> check_choice("cosine", ("cosine",), "distance", MetricLoss())
    'cosine'
    """
    if value not in choices:
        raise ValueError(
            f"{type(owner).__name__}: {arg} must be one of {choices}, got "
            f"{value!r}"
        )
    return value


def pairwise_distance(x, distance="euclidean"):
    """``[B, B]`` distances between the rows of ``x``, never NaN gradients.

    ``"squared_euclidean"`` comes from the Gram matrix of the centred batch
    (one matrix product; centring keeps distances and limits cancellation
    far from the origin) with an exact-zero diagonal; ``"euclidean"`` is
    its square root, 0 with gradient 0 at 0; ``"cosine"`` is ``1 - cos``.

    Example
    -------
    >>> pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    tensor([[0., 5.],
            [5., 0.]])
    """
    if distance == "cosine":
        xn = F.normalize(x, dim=1, eps=NORM_EPS)
        return (1.0 - xn @ xn.t()).clamp(0.0, 2.0)
    xc = x - x.mean(0, keepdim=True).detach()
    gram = xc @ xc.t()
    norms = gram.diagonal()
    sq = (norms.unsqueeze(1) + norms.unsqueeze(0) - 2.0 * gram).clamp_min(0)
    eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
    sq = sq.masked_fill(eye, 0.0)
    if distance == "squared_euclidean":
        return sq
    nonzero = sq > 1e-12
    return torch.where(nonzero, torch.where(nonzero, sq, 1.0).sqrt(), 0.0)


def first_two_pairs(labels, sources=None):
    """Anchor and positive rows: the first row of each label and the first
    later row of that label from another source.

    Pairs are ordered by the anchor's row. Without ``sources`` (every row
    its own source) these are the first two rows of each repeated label:
    on a speaker-major P x 2 batch the original code's rows ``0::2`` and
    ``1::2``; with K > 2 the further utterances are not used by the pair
    losses.

    Example
    -------
    >>> first_two_pairs(torch.tensor([7, 7, 3, 5, 3, 7]))
    (tensor([0, 2]), tensor([1, 4]))
    >>> first_two_pairs(torch.tensor([7, 3, 7, 3]), torch.tensor([0, 1, 0, 1]))
    (tensor([], dtype=torch.int64), tensor([], dtype=torch.int64))
    """
    if sources is None:
        sources = torch.arange(len(labels), device=labels.device)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    first = same.tril(-1).sum(1) == 0  # no earlier row with the label
    other = sources.unsqueeze(0) != sources.unsqueeze(1)
    candidates = (same & other).triu(1)  # later rows, other sources
    anchors = (first & candidates.any(1)).nonzero().squeeze(1)
    positives = candidates[anchors].int().argmax(1)
    return anchors, positives
