"""Length-aware pooling of a ``[B, C, F, T]`` feature map to ``[B, D]``.

All three poolings take the valid length of each item along the time axis
*at the feature map's own resolution* as an integer tensor (``None`` means
every frame is real), so that a zero-padded batch pools exactly the same
frames as the files one by one.

- :class:`GlobalAvgPool`: mean over frequency and the real frames (the
  paper's global average pooling), ``D = C``.
- :class:`GlobalMaxPool`: max over frequency and the real frames (an
  earlier upload of the original code), ``D = C``.
- :class:`FreqMeanAttentiveStatsPool`: the map is first averaged over
  frequency, giving a ``[B, C, T]`` sequence, which SpeechBrain's
  :class:`~speechbrain.lobes.models.ECAPA_TDNN.AttentiveStatisticsPooling`
  pools over time (attention-weighted mean and standard deviation),
  ``D = 2 C``. Averaging frequency first (rather than flattening
  ``C x F`` into the channel axis) keeps the attention layer small
  (``C`` rather than ``C F`` inputs: 2048 instead of 12288 for ResNet-50
  on 161 bins) and makes the pooling independent of the number of bins.
- :class:`TemporalStatsPool`: frequency and channels flattened into one
  ``C F`` axis, then the mean and standard deviation over the real frames
  (the "TSTP" of thin ResNets for speaker verification, as in WeSpeaker),
  ``D = 2 C F``. It keeps where in frequency a channel fired, which the
  global average throws away; the output size depends on the number of
  input bins.

Authors
 * dampit contributors 2025
"""

import torch
import torch.nn as nn
from speechbrain.lobes.models.ECAPA_TDNN import AttentiveStatisticsPooling

__all__ = [
    "time_mask",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "FreqMeanAttentiveStatsPool",
    "TemporalStatsPool",
]


def time_mask(n_frames, max_len, dtype=torch.float32):
    """Return a ``[B, 1, 1, max_len]`` mask, 1 on the first frames.

    Arguments
    ---------
    n_frames : torch.Tensor
        Integer tensor ``[B]``: real frames of each item.
    max_len : int
        Time size of the feature map.
    dtype : torch.dtype
        dtype of the mask.

    Returns
    -------
    torch.Tensor
        ``[B, 1, 1, max_len]``.

    Example
    -------
    >>> time_mask(torch.tensor([1, 3]), 3).flatten(1).tolist()
    [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    """
    frames = torch.arange(max_len, device=n_frames.device)
    mask = frames[None, :] < n_frames[:, None]
    return mask.to(dtype)[:, None, None, :]


class GlobalAvgPool(nn.Module):
    """Mean over frequency and the real frames: ``[B, C, F, T] -> [B, C]``.

    Example
    -------
    >>> pool = GlobalAvgPool()
    >>> x = torch.arange(8.0).view(1, 1, 2, 4)
    >>> pool(x).tolist()
    [[3.5]]
    >>> pool(x, torch.tensor([2])).tolist()  # frames 0 and 1 only
    [[2.5]]
    """

    def __init__(self):
        super().__init__()
        self.out_factor = 1

    def forward(self, x, n_frames=None):
        """Pool the feature map.

        Arguments
        ---------
        x : torch.Tensor
            ``[B, C, F, T]``.
        n_frames : torch.Tensor, optional
            Integer ``[B]``: real frames of each item at this resolution.

        Returns
        -------
        torch.Tensor
            ``[B, C]``.
        """
        if n_frames is None:
            return x.mean(dim=(2, 3))
        mask = time_mask(n_frames, x.shape[-1], x.dtype)
        count = n_frames.to(x.dtype)[:, None] * x.shape[2]
        return (x * mask).sum(dim=(2, 3)) / count


class GlobalMaxPool(nn.Module):
    """Max over frequency and the real frames: ``[B, C, F, T] -> [B, C]``.

    Example
    -------
    >>> pool = GlobalMaxPool()
    >>> x = torch.arange(8.0).view(1, 1, 2, 4)
    >>> pool(x, torch.tensor([2])).tolist()
    [[5.0]]
    """

    def __init__(self):
        super().__init__()
        self.out_factor = 1

    def forward(self, x, n_frames=None):
        """Pool the feature map.

        Arguments
        ---------
        x : torch.Tensor
            ``[B, C, F, T]``.
        n_frames : torch.Tensor, optional
            Integer ``[B]``: real frames of each item at this resolution.

        Returns
        -------
        torch.Tensor
            ``[B, C]``.
        """
        if n_frames is not None:
            mask = time_mask(n_frames, x.shape[-1], torch.bool)
            x = x.masked_fill(~mask, float("-inf"))
        return x.amax(dim=(2, 3))


class FreqMeanAttentiveStatsPool(nn.Module):
    """Frequency mean, then SpeechBrain's attentive statistics pooling.

    ``[B, C, F, T] -> mean over F -> [B, C, T] -> ASP -> [B, 2 C]``.

    SpeechBrain's ASP builds its mask with ``len(lengths)``, so a traced or
    ONNX-exported model with this pooling has a fixed batch size (time
    stays dynamic); the average and max poolings have no such limit.

    Arguments
    ---------
    channels : int
        Channels ``C`` of the feature map.
    attention_channels : int
        Hidden size of the attention (SpeechBrain's default 128).
    global_context : bool
        Whether the attention also sees the utterance's mean and std
        (ECAPA-TDNN's default).

    Example
    -------
    >>> pool = FreqMeanAttentiveStatsPool(6, attention_channels=4).eval()
    >>> pool(torch.rand(2, 6, 3, 5), torch.tensor([5, 2])).shape
    torch.Size([2, 12])
    """

    def __init__(self, channels, attention_channels=128, global_context=True):
        super().__init__()
        self.out_factor = 2
        self.asp = AttentiveStatisticsPooling(
            channels,
            attention_channels=attention_channels,
            global_context=global_context,
        )

    def forward(self, x, n_frames=None):
        """Pool the feature map.

        Arguments
        ---------
        x : torch.Tensor
            ``[B, C, F, T]``.
        n_frames : torch.Tensor, optional
            Integer ``[B]``: real frames of each item at this resolution.

        Returns
        -------
        torch.Tensor
            ``[B, 2 C]``: attentive mean and standard deviation.
        """
        seq = x.mean(dim=2)
        # Explicit ones in x's dtype (SpeechBrain's default is float32).
        rel = torch.ones(seq.shape[0], dtype=x.dtype, device=x.device)
        if n_frames is not None:
            # SpeechBrain masks frames i < rel * T. Half a frame below the
            # integer count keeps float rounding of rel * T from adding or
            # dropping a frame.
            rel = (n_frames.to(x.dtype) - 0.5) / seq.shape[-1]
        return self.asp(seq, lengths=rel).squeeze(-1)


class TemporalStatsPool(nn.Module):
    """Mean and standard deviation over time of the flattened ``C x F`` map.

    ``[B, C, F, T] -> [B, C F, T] -> [B, 2 C F]``: for every channel and
    frequency row, the mean and the (biased) standard deviation over the
    real frames, concatenated. The standard deviation is
    ``sqrt(max(var, eps))``, so silent or one-frame inputs keep a finite
    gradient.

    Arguments
    ---------
    n_freq : int
        Frequency rows ``F`` of the feature map (``out_factor = 2 F``).
    eps : float
        Floor of the variance.

    Example
    -------
    >>> pool = TemporalStatsPool(n_freq=2)
    >>> x = torch.tensor([[[[1.0, 3.0, 9.0], [2.0, 2.0, 9.0]]]])
    >>> y = pool(x, torch.tensor([2]))  # the first two frames only
    >>> [round(v, 4) for v in y[0].tolist()]  # means, then stds
    [2.0, 2.0, 1.0, 0.001]
    >>> pool(torch.rand(4, 3, 2, 7)).shape
    torch.Size([4, 12])
    """

    def __init__(self, n_freq, eps=1e-6):
        super().__init__()
        if int(n_freq) < 1:
            raise ValueError(
                f"TemporalStatsPool: n_freq={n_freq} must be positive"
            )
        self.n_freq = int(n_freq)
        self.eps = float(eps)
        self.out_factor = 2 * self.n_freq

    def forward(self, x, n_frames=None):
        """Pool the feature map.

        Arguments
        ---------
        x : torch.Tensor
            ``[B, C, F, T]`` with ``F == n_freq``.
        n_frames : torch.Tensor, optional
            Integer ``[B]``: real frames of each item at this resolution.

        Returns
        -------
        torch.Tensor
            ``[B, 2 C F]``: all the means, then all the standard
            deviations.
        """
        if x.shape[2] != self.n_freq:
            raise ValueError(
                f"TemporalStatsPool: the feature map has {x.shape[2]} "
                f"frequency rows, the pooling was built for {self.n_freq} "
                "(the model's n_freq must match the input features' bins)"
            )
        seq = x.flatten(1, 2)  # [B, C F, T]
        if n_frames is None:
            mean = seq.mean(dim=-1)
            var = (seq - mean[..., None]).pow(2).mean(dim=-1)
        else:
            mask = time_mask(n_frames, seq.shape[-1], x.dtype)[:, 0]
            count = n_frames.to(x.dtype)[:, None]
            mean = (seq * mask).sum(dim=-1) / count
            var = ((seq - mean[..., None]).pow(2) * mask).sum(-1) / count
        std = var.clamp(min=self.eps).sqrt()
        return torch.cat([mean, std], dim=1)
