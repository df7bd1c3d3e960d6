"""The validation EER of the recipe and the template (one function)."""

import logging

import torch

from dampit.metrics.error_rates import compute_eer

logger = logging.getLogger(__name__)


def validation_eer(embeddings, labels, max_pairs=None, seed=0):
    """EER (%) of the cosine scores of pairs of validation embeddings.

    Arguments
    ---------
    embeddings : torch.Tensor
        [N, D] or [N, 1, D].
    labels : torch.Tensor
        [N] speaker indices.
    max_pairs : int or None
        Every pair i < j, or this many pairs drawn with ``seed`` when
        there are more.
    seed : int
        Seed of the drawn pairs.

    Returns
    -------
    float
        The EER in percent; 100 (with a warning) when the pairs cannot
        be both same- and different-speaker, as in short debug runs, or
        when an embedding is not finite (a diverged model).

    Example
    -------
    >>> emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> validation_eer(emb, torch.tensor([0, 0, 1, 1]))
    0.0
    """
    emb = embeddings.reshape(len(embeddings), -1).float()
    emb = torch.nn.functional.normalize(emb, dim=1)
    labels = labels.reshape(-1)
    n = len(labels)
    if max_pairs is None or n * (n - 1) // 2 <= max_pairs:
        i, j = torch.triu_indices(n, n, offset=1)
    else:
        gen = torch.Generator().manual_seed(seed)
        i, j = torch.randint(0, n, (2, int(max_pairs)), generator=gen)
        i, j = i[i != j], j[i != j]
    scores = (emb[i] * emb[j]).sum(1)
    try:
        eer, _ = compute_eer(scores, labels[i] == labels[j])
    except ValueError as err:  # pairs of one kind, or not finite scores
        logger.warning("validation EER set to 100: %s", err)
        return 100.0
    return 100.0 * float(eer)
