"""Length-aware pooling of a ``[B, C, F, T]`` map, chosen by name.

Both poolings take the real frames of each item at the map's own time
resolution (an integer ``[B]`` tensor; ``None``: every frame is real), so a
padded batch pools the same frames as the files one by one.

- ``"avg"``: mean over frequency and the real frames (the paper), ``C``;
- ``"stats"``: mean and standard deviation over the real frames of every
  channel and frequency row (the "TSTP" of thin speaker ResNets, as in
  WeSpeaker; ``mini.yaml``), ``2 C F``.

Authors
 * dampit contributors 2025
"""

import torch
import torch.nn as nn

__all__ = ["real_frames", "time_mask", "GlobalAvgPool", "TemporalStatsPool"]


def real_frames(lengths, n):
    """Real frames ``round(lengths * n)`` of each item of a batch padded to
    ``n`` frames, from relative ``lengths`` (SpeechBrain's convention: 1.0
    is the longest item); int64, at least 1 and at most ``n``.

    Example
    -------
    >>> real_frames(torch.tensor([1.0, 0.5, 0.01]), 10).tolist()
    [10, 5, 1]
    """
    lengths = torch.as_tensor(lengths)
    return torch.round(lengths.double() * n).long().clamp(1, n)


def time_mask(n_frames, max_len, dtype=torch.float32):
    """``[B, 1, 1, max_len]`` mask, 1 on the first ``n_frames[b]`` frames.

    Example
    -------
    >>> time_mask(torch.tensor([1, 3]), 3).flatten(1).tolist()
    [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    """
    frames = torch.arange(max_len, device=n_frames.device)
    return (frames[None, :] < n_frames[:, None]).to(dtype)[:, None, None, :]


def _time_mean(x, n_frames):
    """Mean over the real frames of ``[B, C, F, T]``: ``[B, C, F]``."""
    if n_frames is None:
        return x.mean(dim=-1)
    mask = time_mask(n_frames, x.shape[-1], x.dtype)
    return (x * mask).sum(dim=-1) / n_frames.to(x.dtype)[:, None, None]


class GlobalAvgPool(nn.Module):
    """Mean over frequency and the real frames: ``[B, C, F, T] -> [B, C]``.

    Example
    -------
    >>> x = torch.arange(8.0).view(1, 1, 2, 4)
    >>> GlobalAvgPool()(x, torch.tensor([2])).tolist()  # frames 0 and 1
    [[2.5]]
    """

    def forward(self, x, n_frames=None):
        """Pool ``x``; ``n_frames``: real frames ``[B]`` or None."""
        return _time_mean(x, n_frames).mean(dim=-1)


class TemporalStatsPool(nn.Module):
    """Means then standard deviations over time of every channel and row.

    ``[B, C, F, T] -> [B, 2 C F]``. The standard deviation (biased) is
    ``sqrt(max(var, eps))``: silent or one-frame inputs keep a finite
    gradient.

    Arguments
    ---------
    n_freq : int
        Frequency rows ``F`` of the map.
    eps : float
        Floor of the variance.

    Example
    -------
    >>> x = torch.tensor([[[[1.0, 3.0, 9.0], [2.0, 2.0, 9.0]]]])
    >>> y = TemporalStatsPool(n_freq=2)(x, torch.tensor([2]))
    >>> [round(v, 4) for v in y[0].tolist()]  # means, then stds
    [2.0, 2.0, 1.0, 0.001]
    """

    def __init__(self, n_freq, eps=1e-6):
        super().__init__()
        if int(n_freq) < 1:
            raise ValueError(f"TemporalStatsPool: n_freq={n_freq} must be > 0")
        self.n_freq, self.eps = int(n_freq), float(eps)

    def forward(self, x, n_frames=None):
        """Pool ``x`` ``[B, C, n_freq, T]``; ``n_frames``: real frames."""
        if x.shape[2] != self.n_freq:
            raise ValueError(
                f"TemporalStatsPool: the map has {x.shape[2]} frequency rows, "
                f"the pooling was built for {self.n_freq} (the model's n_freq "
                "must match the input features' bins)"
            )
        mean = _time_mean(x, n_frames)
        var = _time_mean((x - mean[..., None]).pow(2), n_frames)
        std = var.clamp(min=self.eps).sqrt()
        return torch.cat([mean.flatten(1), std.flatten(1)], dim=1)
