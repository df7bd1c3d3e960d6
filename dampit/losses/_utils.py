"""Shared helpers of the losses: input checks, float32 compute, pairing.

Every loss in :mod:`dampit.losses` accepts embeddings ``[B, D]`` or
SpeechBrain's ``[B, 1, D]`` and labels ``[B]`` or ``[B, 1]``. The helpers
here flatten them, check them (errors name the loss, the argument and what
is wrong) and run the loss in float32 even under fp16/bf16 autocast.

Anchor / positive pairs (n-pair and angular losses)
----------------------------------------------------
``pairing="first_two"`` (default) works on any batch with repeated labels:
for every label that occurs at least twice, its first occurrence in the
batch is the anchor and its second the positive; pairs are ordered by the
anchor's position. On a speaker-major P x K batch
``[s1u1, s1u2, s2u1, s2u2, ...]`` with K = 2 this is exactly the original
code's ``features[0::2]`` / ``features[1::2]``; with K > 2 the further
utterances of a speaker are not used by these two losses (the triplet
loss uses every row). ``pairing="interleaved"`` is the original code's
rule literally: anchors are the even rows and positives the odd rows, so
a label can repeat among the anchors (handled by soft targets in
:class:`~dampit.losses.NPairLoss`).
"""

import contextlib

import torch

PAIRINGS = ("first_two", "interleaved")


def flatten_embeddings(embeddings, owner):
    """Return embeddings as a float32 ``[B, D]`` tensor after checks.

    Arguments
    ---------
    embeddings : torch.Tensor
        ``[B, D]`` or ``[B, 1, D]``, floating point.
    owner : str
        Name of the calling loss, used in error messages.

    Returns
    -------
    torch.Tensor
        ``[B, D]`` float32 (float64 stays float64).

    Example
    -------
    >>> flatten_embeddings(torch.zeros(3, 1, 4), "TripletLoss").shape
    torch.Size([3, 4])
    """
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(
            f"{owner}: embeddings must be a torch.Tensor, got "
            f"{type(embeddings).__name__}"
        )
    if embeddings.dim() == 3 and embeddings.shape[1] == 1:
        embeddings = embeddings.squeeze(1)
    if embeddings.dim() != 2:
        raise ValueError(
            f"{owner}: embeddings must be [B, D] or [B, 1, D], got shape "
            f"{list(embeddings.shape)}"
        )
    if embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(
            f"{owner}: embeddings is empty (shape {list(embeddings.shape)})"
        )
    if not embeddings.is_floating_point():
        raise TypeError(
            f"{owner}: embeddings must be floating point, got "
            f"{embeddings.dtype}"
        )
    if embeddings.dtype != torch.float64:
        embeddings = embeddings.float()
    return embeddings


def flatten_labels(labels, batch_size, owner, device=None):
    """Return labels as a long ``[B]`` tensor after checks.

    Arguments
    ---------
    labels : torch.Tensor
        ``[B]`` or ``[B, 1]`` integer class indices (speaker ids).
    batch_size : int
        B, the number of embeddings.
    owner : str
        Name of the calling loss, used in error messages.
    device : torch.device, optional
        Move the labels to this device.

    Returns
    -------
    torch.Tensor
        ``[B]`` long.

    Example
    -------
    >>> flatten_labels(torch.tensor([[3], [3], [5]]), 3, "NPairLoss")
    tensor([3, 3, 5])
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"{owner}: labels must be a torch.Tensor of class indices, got "
            f"{type(labels).__name__}"
        )
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels.squeeze(1)
    if labels.dim() != 1:
        raise ValueError(
            f"{owner}: labels must be [B] or [B, 1], got shape "
            f"{list(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(
            f"{owner}: labels must be an integer tensor of class indices, "
            f"got {labels.dtype}"
        )
    if labels.shape[0] != batch_size:
        raise ValueError(
            f"{owner}: labels has {labels.shape[0]} entries but embeddings "
            f"has {batch_size} rows"
        )
    labels = labels.long()
    if device is not None:
        labels = labels.to(device)
    return labels


def prepare(embeddings, labels, owner):
    """Flatten and check embeddings and labels together.

    Arguments
    ---------
    embeddings : torch.Tensor
        ``[B, D]`` or ``[B, 1, D]``.
    labels : torch.Tensor
        ``[B]`` or ``[B, 1]``.
    owner : str
        Name of the calling loss, used in error messages.

    Returns
    -------
    embeddings : torch.Tensor
        ``[B, D]`` float32 (or float64).
    labels : torch.Tensor
        ``[B]`` long, on the embeddings' device.

    Example
    -------
    >>> e, y = prepare(torch.ones(2, 1, 3), torch.tensor([[0], [1]]), "X")
    >>> e.shape, y.shape
    (torch.Size([2, 3]), torch.Size([2]))
    """
    embeddings = flatten_embeddings(embeddings, owner)
    labels = flatten_labels(
        labels, embeddings.shape[0], owner, device=embeddings.device
    )
    return embeddings, labels


def no_autocast(device):
    """Context manager that disables autocast on ``device``'s type.

    Losses run their arithmetic in float32 inside it, so fp16/bf16
    embeddings from an autocast forward pass neither overflow nor lose the
    small differences that metric losses depend on.

    Arguments
    ---------
    device : torch.device
        The device the computation runs on.

    Returns
    -------
    contextlib.AbstractContextManager
        ``torch.autocast(device.type, enabled=False)``, or a no-op context
        for device types autocast does not know.

    Example
    -------
    >>> with no_autocast(torch.device("cpu")):
    ...     torch.is_autocast_enabled("cpu")
    False
    """
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # pragma: no cover - exotic devices
        return contextlib.nullcontext()


def zero_loss(embeddings):
    """A zero scalar that stays connected to the graph, never NaN.

    Summing an empty slice gives exactly 0 with a zero gradient, whatever
    the values of ``embeddings`` (even inf), so ``backward()`` works.

    Arguments
    ---------
    embeddings : torch.Tensor
        The (flattened) embeddings of the batch.

    Returns
    -------
    torch.Tensor
        A 0-dim tensor equal to 0.

    Example
    -------
    >>> zero_loss(torch.full((2, 3), float("inf")))
    tensor(0.)
    """
    return embeddings[:0].sum()


def label_masks(labels):
    """Same-label (without the diagonal) and different-label masks.

    Arguments
    ---------
    labels : torch.Tensor
        ``[B]`` long.

    Returns
    -------
    pos_mask : torch.Tensor
        ``[B, B]`` bool, True where ``i != j`` and labels match.
    neg_mask : torch.Tensor
        ``[B, B]`` bool, True where labels differ.

    Example
    -------
    >>> pos, neg = label_masks(torch.tensor([0, 0, 1]))
    >>> pos.int()
    tensor([[0, 1, 0],
            [1, 0, 0],
            [0, 0, 0]], dtype=torch.int32)
    >>> neg.int()
    tensor([[0, 0, 1],
            [0, 0, 1],
            [1, 1, 0]], dtype=torch.int32)
    """
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def make_pairs(labels, pairing, owner, allow_empty):
    """Anchor and positive indices of a batch (see the module docstring).

    Arguments
    ---------
    labels : torch.Tensor
        ``[B]`` long.
    pairing : str
        ``"first_two"`` or ``"interleaved"``.
    owner : str
        Name of the calling loss, used in error messages.
    allow_empty : bool
        When the batch cannot form two pairs with different labels, return
        ``None`` instead of raising.

    Returns
    -------
    tuple of torch.Tensor or None
        ``(anchor_idx, positive_idx)``, each ``[N]`` long, N >= 2 and at
        least two distinct labels among the pairs; ``None`` when that is
        impossible and ``allow_empty`` is True.

    Example
    -------
    >>> y = torch.tensor([7, 7, 3, 5, 3, 7])
    >>> make_pairs(y, "first_two", "NPairLoss", False)
    (tensor([0, 2]), tensor([1, 4]))
    """
    hint = (
        "use a P x K sampler with P >= 2 speakers and K >= 2 utterances "
        "each, or allow_empty=True"
    )
    batch = labels.shape[0]
    if pairing == "interleaved":
        if batch % 2:
            raise ValueError(
                f"{owner}: pairing='interleaved' needs an even batch "
                f"(anchors = rows 0::2, positives = rows 1::2), got B={batch}"
            )
        anchor_idx = torch.arange(0, batch, 2, device=labels.device)
        positive_idx = anchor_idx + 1
        bad = labels[anchor_idx] != labels[positive_idx]
        if bool(bad.any()):
            row = int(anchor_idx[bad.nonzero()[0, 0]])
            raise ValueError(
                f"{owner}: pairing='interleaved' needs labels[0::2] == "
                f"labels[1::2] (speaker-major P x K batch), but rows {row} "
                f"and {row + 1} have labels {int(labels[row])} and "
                f"{int(labels[row + 1])}"
            )
    elif pairing == "first_two":
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        earlier = torch.ones(
            batch, batch, dtype=torch.bool, device=labels.device
        ).tril(-1)
        rank = (same & earlier).sum(1)  # occurrences of my label before me
        count = same.sum(1)
        anchor_idx = ((rank == 0) & (count >= 2)).nonzero().squeeze(1)
        is_second = rank == 1
        positive_idx = (
            (same[anchor_idx] & is_second.unsqueeze(0)).int().argmax(1)
        )
    else:
        raise ValueError(
            f"{owner}: pairing must be one of {PAIRINGS}, got {pairing!r}"
        )
    if anchor_idx.numel() == 0:
        if allow_empty:
            return None
        raise ValueError(
            f"{owner}: batch has no positive pair (every label appears "
            f"once); {hint}"
        )
    pair_labels = labels[anchor_idx]
    if bool((pair_labels == pair_labels[0]).all()):
        if allow_empty:
            return None
        raise ValueError(
            f"{owner}: all anchor/positive pairs of the batch have the same "
            f"label, so there is no negative; {hint}"
        )
    return anchor_idx, positive_idx


def check_choice(value, choices, name, owner):
    """Raise a clear ValueError if ``value`` is not one of ``choices``.

    Arguments
    ---------
    value : str
        The given option.
    choices : tuple of str
        The allowed values.
    name : str
        The argument's name.
    owner : str
        Name of the calling loss.

    Returns
    -------
    str
        ``value``.

    Example
    -------
    >>> check_choice("cosine", ("cosine", "euclidean"), "distance", "T")
    'cosine'
    """
    if value not in choices:
        raise ValueError(
            f"{owner}: {name} must be one of {choices}, got {value!r}"
        )
    return value
