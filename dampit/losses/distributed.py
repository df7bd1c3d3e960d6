"""The rows of all DDP ranks, for loss terms that compare rows.

Under ``torch.distributed`` every rank holds a slice of one global batch
(:class:`~dampit.dataio.sampler.PKSampler` gives rank r the r-th
contiguous slice). :func:`gather_rows` returns the embeddings, labels and
sources of all ranks in rank order, that is the global batch. Only this
rank's rows stay in the graph: every rank computes the same loss L on the
global batch and back-propagates ``dL/d(own rows)``, which DDP then
averages over the W ranks; multiplying the own rows' gradient by W makes
that average ``sum_r dL/d(rows of r) / W * W``, one process's gradient on
the whole batch. No collective runs in the backward pass.
"""

import torch
import torch.distributed as dist


def world_size():
    """The number of ranks of the default process group (1: none).

    Example
    -------
    >>> world_size()
    1
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def gather_rows(emb, labels, sources, owner):
    """Embeddings ``[W * B, D]``, labels and sources ``[W * B]`` of all
    ranks.

    This rank's rows keep their graph, with their gradient multiplied by
    the world size W (see the module docstring); the other ranks' rows
    are constants. A rank's sources s become ``s * W + rank``: the copies
    of an utterance are on its rank, and the sources of two ranks never
    meet. Every rank must hold the same number of rows, else a
    ValueError names ``owner`` and the sizes (on every rank alike). Without
    a process group (or with one rank) the inputs come back unchanged.

    Arguments
    ---------
    emb : torch.Tensor
        This rank's embeddings ``[B, D]``.
    labels : torch.Tensor
        This rank's labels ``[B]``.
    sources : torch.Tensor
        This rank's sources ``[B]`` (long).
    owner : str
        Named in the error.

    Returns
    -------
    (torch.Tensor, torch.Tensor, torch.Tensor)
        The embeddings, labels and sources of all ranks, in rank order.

    Example
    -------
    >>> emb, labels = torch.ones(4, 2), torch.tensor([0, 0, 1, 1])
    >>> gather_rows(emb, labels, torch.arange(4), "loss")[1]
    tensor([0, 0, 1, 1])
    """
    world = world_size()
    if world == 1:
        return emb, labels, sources
    size = torch.tensor([len(emb)], device=emb.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    if len(set(sizes)) != 1:
        raise ValueError(
            f"{owner}: the ranks hold batches of {sizes} rows; terms "
            "computed on all ranks' rows need equal slices (PKSampler)"
        )
    rows = [torch.empty_like(emb) for _ in range(world)]
    dist.all_gather(rows, emb.detach().contiguous())
    all_labels = [torch.empty_like(labels) for _ in range(world)]
    dist.all_gather(all_labels, labels.contiguous())
    own = sources * world + dist.get_rank()
    all_sources = [torch.empty_like(own) for _ in range(world)]
    dist.all_gather(all_sources, own.contiguous())
    rows[dist.get_rank()] = _ScaleGradient.apply(emb, float(world))
    return torch.cat(rows), torch.cat(all_labels), torch.cat(all_sources)


def mean_over_ranks(value):
    """``value``'s mean over all ranks, in ``value``'s graph.

    The result has the mean as its value and ``value``'s own gradient: a
    term computed per rank on equal slices then reports the whole batch's
    mean on every rank, and DDP's average of the per-rank gradients is
    the whole batch's gradient. Without a process group: ``value``.

    Example
    -------
    >>> mean_over_ranks(torch.tensor(2.0))
    tensor(2.)
    """
    world = world_size()
    if world == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return value + (total / world - value).detach()
