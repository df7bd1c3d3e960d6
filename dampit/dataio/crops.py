"""Fixed-length crops of waveforms for training and testing.

Training uses one random crop of 3 s per utterance (paper, section 4.2;
``dampit.dataio.audio.read_crop`` reads only the crop from the file).
Utterances shorter than the crop are repeated (tiled) to length, as the
paper says; the original code zero-filled and then overwrote the tail with
the start, which leaves a zero gap in utterances shorter than half the
crop. Testing uses ``n_crops`` evenly spaced, deterministic crops
(VoxCeleb2 paper, Chung et al. 2018) instead of the original code's
random ones.

All functions take a 1-D waveform tensor ``[N]`` and return views or
copies of it; the lengths are in samples (3 s at 16 kHz = 48000).
"""

import torch

__all__ = ["repeat_to_length", "eval_crops", "crop_views"]


def _check(wav, n, fn):
    """A non-empty 1-D waveform and a crop length n >= 1, or a ValueError."""
    wav = torch.as_tensor(wav)
    if wav.dim() != 1 or wav.numel() == 0 or int(n) != n or n <= 0:
        raise ValueError(
            f"{fn}: needs a non-empty 1-D waveform and a crop length n >= 1, "
            f"got shape {tuple(wav.shape)} and n={n}"
        )
    return wav, int(n)


def repeat_to_length(wav, n):
    """Tile a waveform until it has ``n`` samples; never inserts zeros.

    Arguments
    ---------
    wav : torch.Tensor
        Waveform ``[N]``, ``N >= 1``.
    n : int
        Wanted length in samples.

    Returns
    -------
    torch.Tensor
        ``[n]``: ``wav`` repeated back to back and cut at ``n`` samples
        (the first ``n`` samples when ``N >= n``).

    Raises
    ------
    ValueError
        On an empty waveform or a non-positive ``n``.

    Example
    -------
    >>> repeat_to_length(torch.tensor([1.0, 2.0, 3.0]), 7).tolist()
    [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]
    >>> repeat_to_length(torch.tensor([1.0, 2.0, 3.0]), 2).tolist()
    [1.0, 2.0]
    """
    wav, n = _check(wav, n, "repeat_to_length")
    if wav.numel() >= n:
        return wav[:n]
    reps = -(-n // wav.numel())
    return wav.repeat(reps)[:n]


def eval_crops(wav, n_crops=10, n=48000):
    """Take ``n_crops`` evenly spaced crops of ``n`` samples.

    The starts are ``round(i * (N - n) / (n_crops - 1))`` for
    ``i = 0 .. n_crops - 1``: the first crop starts at the beginning, the
    last ends at the end, and the result is deterministic (a single crop
    is the centre one: ``s = (N - n) // 2``). Utterances
    shorter than ``n`` are repeated to length first (all crops are then
    the same).

    Arguments
    ---------
    wav : torch.Tensor
        Waveform ``[N]``.
    n_crops : int
        Number of crops (the paper: 10).
    n : int
        Crop length in samples (the paper: 3 s).

    Returns
    -------
    torch.Tensor
        ``[n_crops, n]`` (a copy).

    Example
    -------
    >>> eval_crops(torch.arange(10.0), n_crops=3, n=4)
    tensor([[0., 1., 2., 3.],
            [3., 4., 5., 6.],
            [6., 7., 8., 9.]])
    >>> eval_crops(torch.tensor([1.0, 2.0]), n_crops=2, n=3)
    tensor([[1., 2., 1.],
            [1., 2., 1.]])
    """
    return torch.stack(crop_views(wav, n_crops, n))


def crop_views(wav, n_crops=10, n=48000):
    """The crops of :func:`eval_crops` as a list of views of ``wav`` (of
    its repetition if shorter than ``n``): stacking the views of a whole
    batch copies each sample once.

    Example
    -------
    >>> w = torch.arange(10.0)
    >>> [v.data_ptr() - w.data_ptr() for v in crop_views(w, 3, 4)]
    [0, 12, 24]
    """
    wav, n = _check(wav, n, "eval_crops")
    if int(n_crops) != n_crops or n_crops < 1:
        raise ValueError(f"eval_crops: n_crops={n_crops} must be >= 1")
    n_crops = int(n_crops)
    if wav.numel() < n:
        wav = repeat_to_length(wav, n)
    span = wav.numel() - n
    d = max(n_crops - 1, 1)  # round(): half to even, as torch.round
    starts = [round(i * span / d) for i in range(n_crops)]
    if n_crops == 1:
        starts = [span // 2]
    return [wav[s : s + n] for s in starts]
