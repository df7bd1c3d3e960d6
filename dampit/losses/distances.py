"""Pairwise distance matrices with gradients that never become NaN.

The Euclidean distance is ``sqrt`` of the squared distance, whose
derivative is infinite at 0: two identical embeddings (the diagonal of a
batch's distance matrix, duplicate utterances, a collapsed network) would
give NaN gradients. :func:`safe_sqrt` returns 0 with a zero gradient at or
below ``eps`` instead.

Squared distances come from the Gram matrix (one matrix product, as fast
as it gets on any device) after centring the batch, which leaves distances
unchanged and reduces cancellation for embeddings far from the origin; the
diagonal is set to exactly 0 and small negative rounding is clamped.
"""

import torch
import torch.nn.functional as F

DISTANCES = ("euclidean", "squared_euclidean", "cosine")


def safe_sqrt(x, eps=1e-12):
    """Square root with value and gradient 0 where ``x <= eps``.

    Arguments
    ---------
    x : torch.Tensor
        Non-negative values (squared distances).
    eps : float
        Values at or below it are treated as 0.

    Returns
    -------
    torch.Tensor
        ``sqrt(x)`` where ``x > eps``, else 0.

    Example
    -------
    >>> x = torch.tensor([0.0, 4.0], requires_grad=True)
    >>> y = safe_sqrt(x)
    >>> y.sum().backward()
    >>> y.detach(), x.grad
    (tensor([0., 2.]), tensor([0.0000, 0.2500]))
    """
    mask = x > eps
    safe = torch.where(mask, x, torch.ones_like(x))
    return torch.where(mask, safe.sqrt(), torch.zeros_like(x))


def squared_euclidean(x, y=None):
    """Pairwise squared Euclidean distances.

    Arguments
    ---------
    x : torch.Tensor
        ``[N, D]``.
    y : torch.Tensor, optional
        ``[M, D]``; ``None`` means ``x`` (and then the diagonal is exactly
        0).

    Returns
    -------
    torch.Tensor
        ``[N, M]``, non-negative.

    Example
    -------
    >>> squared_euclidean(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    tensor([[ 0., 25.],
            [25.,  0.]])
    """
    if y is None:
        xc = x - x.mean(0, keepdim=True).detach()
        gram = xc @ xc.t()
        norms = gram.diagonal()
        sq = norms.unsqueeze(1) + norms.unsqueeze(0) - 2.0 * gram
        sq = sq.clamp_min(0.0)
        eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
        return sq.masked_fill(eye, 0.0)
    center = torch.cat([x, y]).mean(0, keepdim=True).detach()
    xc, yc = x - center, y - center
    sq = (
        xc.pow(2).sum(1, keepdim=True)
        + yc.pow(2).sum(1).unsqueeze(0)
        - 2.0 * (xc @ yc.t())
    )
    return sq.clamp_min(0.0)


def euclidean(x, y=None, eps=1e-12):
    """Pairwise Euclidean distances, NaN-free gradients at distance 0.

    Arguments
    ---------
    x : torch.Tensor
        ``[N, D]``.
    y : torch.Tensor, optional
        ``[M, D]``; ``None`` means ``x``.
    eps : float
        Squared distances at or below it count as 0 (see
        :func:`safe_sqrt`).

    Returns
    -------
    torch.Tensor
        ``[N, M]``.

    Example
    -------
    >>> euclidean(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    tensor([[0., 5.],
            [5., 0.]])
    """
    return safe_sqrt(squared_euclidean(x, y), eps=eps)


def cosine(x, y=None, eps=1e-6):
    """Pairwise cosine distances ``1 - cos``; zero vectors are at 1.

    Arguments
    ---------
    x : torch.Tensor
        ``[N, D]``.
    y : torch.Tensor, optional
        ``[M, D]``; ``None`` means ``x``.
    eps : float
        Norm floor of ``F.normalize``: a zero vector stays zero and its
        gradient is bounded by ``1 / eps``.

    Returns
    -------
    torch.Tensor
        ``[N, M]`` in ``[0, 2]``.

    Example
    -------
    >>> cosine(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))
    tensor([[0., 1., 1.],
            [1., 0., 1.],
            [1., 1., 1.]])
    """
    xn = F.normalize(x, dim=1, eps=eps)
    yn = xn if y is None else F.normalize(y, dim=1, eps=eps)
    return (1.0 - xn @ yn.t()).clamp(0.0, 2.0)


def pairwise_distance(x, y=None, distance="euclidean", eps=None):
    """Pairwise distance matrix of the named kind.

    Arguments
    ---------
    x : torch.Tensor
        ``[N, D]``.
    y : torch.Tensor, optional
        ``[M, D]``; ``None`` means ``x``.
    distance : str
        ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
    eps : float, optional
        See :func:`euclidean` and :func:`cosine`; ``None`` keeps their
        defaults (1e-12 on squared distances, 1e-6 on norms).

    Returns
    -------
    torch.Tensor
        ``[N, M]``.

    Example
    -------
    >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    >>> pairwise_distance(x, distance="squared_euclidean")[0, 1]
    tensor(25.)
    """
    kw = {} if eps is None else {"eps": eps}
    if distance == "euclidean":
        return euclidean(x, y, **kw)
    if distance == "squared_euclidean":
        return squared_euclidean(x, y)
    if distance == "cosine":
        return cosine(x, y, **kw)
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
