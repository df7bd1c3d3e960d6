"""Vectorised triplet mining on a batch's distance matrix.

Each miner takes a ``[B, B]`` distance matrix and the label masks of
:func:`dampit.losses._utils.label_masks` and returns the triplets it picks
as index tensors ``(a, p, n)`` (anchor, positive, negative), so a triplet
loss is ``relu(dist[a, p] - dist[a, n] + margin)`` for any miner. Indices
are chosen without gradient; the gradient flows through the gathered
distances. There is no Python loop over the batch.

- :func:`batch_hard` (Hermans et al. 2017; the original code): one triplet
  per anchor, its farthest positive and its nearest negative.
- :func:`semi_hard` (FaceNet, Schroff et al. 2015): one triplet per
  (anchor, positive) pair, with the nearest negative that is farther than
  the positive but inside the margin; when there is none, the hardest
  (nearest) negative.
- :func:`all_triplets`: every valid triplet.

Anchors without a positive or without a negative form no triplet.
"""

import torch

MININGS = ("batch_hard", "semi_hard", "all")


def valid_anchors(pos_mask, neg_mask):
    """Anchors that have at least one positive and one negative.

    Arguments
    ---------
    pos_mask : torch.Tensor
        ``[B, B]`` bool, same label and ``i != j``.
    neg_mask : torch.Tensor
        ``[B, B]`` bool, different label.

    Returns
    -------
    torch.Tensor
        ``[B]`` bool.

    Example
    -------
    >>> from dampit.losses._utils import label_masks
    >>> valid_anchors(*label_masks(torch.tensor([0, 0, 1])))
    tensor([ True,  True, False])
    """
    return pos_mask.any(1) & neg_mask.any(1)


@torch.no_grad()
def batch_hard(dist, pos_mask, neg_mask):
    """Farthest positive and nearest negative of every valid anchor.

    Arguments
    ---------
    dist : torch.Tensor
        ``[B, B]`` distances.
    pos_mask : torch.Tensor
        ``[B, B]`` bool, same label and ``i != j``.
    neg_mask : torch.Tensor
        ``[B, B]`` bool, different label.

    Returns
    -------
    tuple of torch.Tensor
        ``(a, p, n)``, each ``[N]`` long, one triplet per valid anchor.

    Example
    -------
    >>> from dampit.losses._utils import label_masks
    >>> x = torch.tensor([0.0, 1.0, 3.0, 10.0]).unsqueeze(1)
    >>> d = (x - x.t()).abs()
    >>> batch_hard(d, *label_masks(torch.tensor([0, 0, 1, 1])))
    (tensor([0, 1, 2, 3]), tensor([1, 0, 3, 2]), tensor([2, 2, 1, 1]))
    """
    inf = torch.finfo(dist.dtype).max
    a = valid_anchors(pos_mask, neg_mask).nonzero().squeeze(1)
    d = dist[a]
    p = d.masked_fill(~pos_mask[a], -inf).argmax(1)
    n = d.masked_fill(~neg_mask[a], inf).argmin(1)
    return a, p, n


@torch.no_grad()
def semi_hard(dist, pos_mask, neg_mask, margin):
    """Semi-hard negative for every (anchor, positive) pair.

    For the pair (a, p) the negative is the nearest n with
    ``dist[a, p] < dist[a, n] < dist[a, p] + margin``; when there is no
    such n, the nearest negative of a (the hardest).

    Arguments
    ---------
    dist : torch.Tensor
        ``[B, B]`` distances.
    pos_mask : torch.Tensor
        ``[B, B]`` bool, same label and ``i != j``.
    neg_mask : torch.Tensor
        ``[B, B]`` bool, different label.
    margin : float
        The triplet margin.

    Returns
    -------
    tuple of torch.Tensor
        ``(a, p, n)``, each ``[N]`` long, one triplet per (anchor,
        positive) pair of a valid anchor.

    Example
    -------
    >>> from dampit.losses._utils import label_masks
    >>> x = torch.tensor([0.0, 1.0, 1.5, 3.0]).unsqueeze(1)
    >>> d = (x - x.t()).abs()
    >>> a, p, n = semi_hard(d, *label_masks(torch.tensor([0, 0, 1, 1])), 1.0)
    >>> torch.stack([a, p, n]).t().tolist()  # (1, 0), (2, 3): hardest
    [[0, 1, 2], [1, 0, 2], [2, 3, 1], [3, 2, 1]]
    """
    inf = torch.finfo(dist.dtype).max
    neg_d = dist.masked_fill(~neg_mask, inf)
    sorted_d, order = neg_d.sort(dim=1)
    n_neg = neg_mask.sum(1, keepdim=True)
    # First sorted negative strictly farther than each candidate positive.
    first = torch.searchsorted(sorted_d, dist.contiguous(), right=True)
    first_c = first.clamp_max(dist.shape[1] - 1)
    d_first = sorted_d.gather(1, first_c)
    is_semi = (first < n_neg) & (d_first < dist + margin)
    chosen = torch.where(is_semi, first_c, torch.zeros_like(first_c))
    n_all = order.gather(1, chosen)  # [B, B]: negative for pair (a, p)
    keep = pos_mask & neg_mask.any(1, keepdim=True)
    a, p = keep.nonzero(as_tuple=True)
    return a, p, n_all[a, p]


@torch.no_grad()
def all_triplets(pos_mask, neg_mask):
    """Every valid triplet (a, p, n).

    Arguments
    ---------
    pos_mask : torch.Tensor
        ``[B, B]`` bool, same label and ``i != j``.
    neg_mask : torch.Tensor
        ``[B, B]`` bool, different label.

    Returns
    -------
    tuple of torch.Tensor
        ``(a, p, n)``, each ``[N]`` long.

    Example
    -------
    >>> from dampit.losses._utils import label_masks
    >>> a, p, n = all_triplets(*label_masks(torch.tensor([0, 0, 1])))
    >>> torch.stack([a, p, n]).t().tolist()
    [[0, 1, 2], [1, 0, 2]]
    """
    mask = pos_mask.unsqueeze(2) & neg_mask.unsqueeze(1)
    a, p, n = mask.nonzero(as_tuple=True)
    return a, p, n


def mine(dist, pos_mask, neg_mask, mining, margin):
    """Dispatch to the named miner.

    Arguments
    ---------
    dist : torch.Tensor
        ``[B, B]`` distances.
    pos_mask : torch.Tensor
        ``[B, B]`` bool, same label and ``i != j``.
    neg_mask : torch.Tensor
        ``[B, B]`` bool, different label.
    mining : str
        ``"batch_hard"``, ``"semi_hard"`` or ``"all"``.
    margin : float
        The triplet margin (used by ``"semi_hard"``).

    Returns
    -------
    tuple of torch.Tensor
        ``(a, p, n)`` index tensors.

    Example
    -------
    >>> from dampit.losses._utils import label_masks
    >>> d = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 2.0], [2.0, 2.0, 0.0]])
    >>> mine(d, *label_masks(torch.tensor([0, 0, 1])), "all", 0.5)[2]
    tensor([2, 2])
    """
    if mining == "batch_hard":
        return batch_hard(dist, pos_mask, neg_mask)
    if mining == "semi_hard":
        return semi_hard(dist, pos_mask, neg_mask, margin)
    if mining == "all":
        return all_triplets(pos_mask, neg_mask)
    raise ValueError(f"mining must be one of {MININGS}, got {mining!r}")
