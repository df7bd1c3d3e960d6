"""Embedding extraction for lists of audio files: whole files and
windows of long files.

Used by ``load_model(...).embed_files`` / ``embed_windows``
(``dampit-embed``, ``dampit-verify``). An ``embed_fn`` maps a
padded batch of waveforms and relative lengths to embeddings
(``EncoderClassifier.encode_batch``, or the recipe's
``compute_embeddings``); this module reads and batches the files, shows
progress, and returns plain arrays.

Memory: files are batched by length (their headers' durations, then the
decoded lengths), so that padding makes no waveform more than
``MAX_PADDING`` (2) times its own length: a batch takes at most twice the
memory of its decoded audio (``audio`` bounds the decoding), and one long
file among short ones is embedded alone instead of padding them all.
Windows (:func:`embed_windows`) are read block by block and embedded
``batch_size`` at a time: the memory holds one block, one batch and the
``[N, D]`` embeddings, whatever the length of the file.
"""

import os

import numpy as np
import torch
from tqdm import tqdm

from dampit.dataio.audio import load_audio, open_audio
from dampit.dataio.windows import check_window_hop, read_windows
from dampit.inference.embedding_store import window_id

__all__ = [
    "check_windows",
    "embed_batch",
    "embed_utterances",
    "embed_windows",
    "header_duration",
    "length_batches",
    "pad_batch",
]

_PATHS = (str, os.PathLike)
MIN_SAMPLES = 400  # shorter files raise AudioError (less than one frame)
#: Padding makes no waveform of a batch more than this many times longer.
MAX_PADDING = 2.0
#: Shortest hop between windows, in seconds (their IDs give milliseconds).
MIN_HOP = 0.01


def pad_batch(wavs, hop_length=None):
    """Pad 1-D waveforms into ``[B, N]`` with SpeechBrain relative lengths.

    Arguments
    ---------
    wavs : list of torch.Tensor
        Waveforms of any lengths.
    hop_length : int, optional
        The features' (centred) STFT hop. When given, each relative length
        is the ratio of frame counts, ``(1 + n // hop) / (1 + N // hop)``,
        so that a padded item keeps exactly its own frames and embeds as
        it would alone; otherwise ``n / N``.

    Returns
    -------
    batch : torch.Tensor
        ``[B, N]``, zero padded.
    lengths : torch.Tensor
        ``[B]`` relative lengths.

    Example
    -------
    >>> b, lens = pad_batch([torch.ones(4), torch.ones(2)])
    >>> b.shape, lens.tolist()
    (torch.Size([2, 4]), [1.0, 0.5])
    """
    n = torch.tensor([int(w.numel()) for w in wavs])
    batch = torch.zeros(len(wavs), int(n.max()))
    for i, w in enumerate(wavs):
        batch[i, : n[i]] = w
    if hop_length:
        return batch, frame_lengths(n, int(n.max()), hop_length)
    return batch, n / n.max()


def header_duration(path):
    """A file's duration in seconds by its header; a file that cannot be
    opened (missing, empty, not audio) raises ``AudioError`` naming it.

    Example
    -------
    >>> header_duration("no-such-file.wav")
    Traceback (most recent call last):
    ...
    dampit.dataio.audio.AudioError: audio file not found: no-such-file.wav
    """
    with open_audio(os.fspath(path)) as f:
        return f.frames / f.samplerate if f.samplerate > 0 else 0.0


def length_batches(lengths, batch_size, max_padding=MAX_PADDING):
    """Batches of item indices by length: longest first, at most
    ``batch_size`` items, and no item shorter than ``1 / max_padding`` of
    its batch's longest, so that padding never makes an item more than
    ``max_padding`` times its own length (an item of length 0 is alone).

    Example
    -------
    >>> length_batches([1.0, 10.0, 3.0, 9.0, 2.0], batch_size=2)
    [[1, 3], [2, 4], [0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = []
    for i in order:
        last = batches[-1] if batches else None
        fits = last is not None and len(last) < batch_size
        if fits and lengths[i] * max_padding >= lengths[last[0]]:
            last.append(i)
        else:
            batches.append([i])
    return batches


def frame_lengths(n, total, hop_length):
    """Relative lengths ``(1 + n // hop) / (1 + total // hop)`` of items of
    ``n`` samples padded to ``total``: they count the centred STFT frames,
    so that a padded item embeds as it would alone (the one frame-length
    helper).

    Example
    -------
    >>> frame_lengths(torch.tensor([320, 100]), 320, 160).tolist()
    [1.0, 0.3333333432674408]
    """
    return (1 + torch.as_tensor(n) // hop_length) / (1 + total // hop_length)


def _id_path_pairs(items):
    """``(id, path)`` of paths or pairs; duplicate IDs raise."""
    items = [(os.fspath(i),) * 2 if isinstance(i, _PATHS) else i for i in items]
    ids = [uid for uid, _ in items]
    if len(set(ids)) != len(ids):
        dup = sorted({u for u in ids if ids.count(u) > 1})[:5]
        raise ValueError(f"duplicate utterance IDs {dup}")
    return items


def embed_batch(embed_fn, wavs, device="cpu", hop_length=None):
    """``[B, D]`` embeddings of 1-D waveforms, padded into one batch
    (:func:`pad_batch`): the one forward pass of this module.

    Example
    -------
    >>> def energy(w, lens):  # a toy embedding: mean power
    ...     return (w ** 2).sum(1, keepdim=True) / (lens * w.shape[1])[:, None]
    >>> embed_batch(energy, [torch.ones(4), 2 * torch.ones(2)]).tolist()
    [[1.0], [4.0]]
    """
    batch, lens = pad_batch(wavs, hop_length)
    emb = embed_fn(batch.to(device), lens.to(device))
    return emb.reshape(emb.shape[0], -1).float().cpu().numpy()


@torch.no_grad()
def embed_utterances(
    embed_fn,
    items,
    sample_rate=16000,
    batch_size=16,
    device="cpu",
    progress=True,
    hop_length=None,
):
    """Embed whole files, in padded batches formed by length.

    Arguments
    ---------
    embed_fn : callable
        ``embed_fn(wavs [B, N], lengths [B]) -> [B, 1, D] or [B, D]``.
    items : list
        Paths, or ``(id, path)`` pairs.
    sample_rate : int
        Rate the model expects; other rates are resampled.
    batch_size : int
        Most files per forward pass; files are batched by length
        (:func:`length_batches`).
    device : str or torch.device
        Where the batches go.
    progress : bool
        Show a tqdm progress bar.
    hop_length : int, optional
        The model's STFT hop: frame-exact relative lengths for padded
        batches (see :func:`pad_batch`).

    Returns
    -------
    ids : list of str
        Item IDs (the paths, for plain paths), in input order.
    embeddings : numpy.ndarray
        ``[N, D]`` whole-file embeddings (``[0, 0]`` when no item).

    Raises
    ------
    AudioError
        For a file that cannot be used; one whose header cannot be read,
        before any forward pass (the headers give the batches).

    Example
    -------
    >>> import os, tempfile, soundfile as sf
    >>> d = tempfile.mkdtemp()
    >>> for k in range(3):
    ...     sf.write(os.path.join(d, f"{k}.wav"),
    ...              np.random.randn(1600 * (k + 1)) * 0.1, 16000)
    >>> paths = sorted(os.path.join(d, f) for f in os.listdir(d))
    >>> def energy(w, lens):  # a toy embedding: mean power
    ...     return (w ** 2).sum(1, keepdim=True) / (lens * w.shape[1])[:, None]
    >>> ids, emb = embed_utterances(energy, paths, progress=False)
    >>> emb.shape
    (3, 1)
    """
    items = _id_path_pairs(items)
    ids = [uid for uid, _ in items]
    rows = [None] * len(items)
    seconds = [header_duration(path) for _, path in items]
    groups = length_batches(seconds, batch_size)
    for group in tqdm(groups, disable=not progress):
        wavs = [
            load_audio(items[k][1], sample_rate, min_samples=MIN_SAMPLES)
            for k in group
        ]
        # the headers may lie: batch by the decoded lengths
        sizes = [w.numel() for w in wavs]
        for part in length_batches(sizes, batch_size):
            batch = [wavs[j] for j in part]
            emb = embed_batch(embed_fn, batch, device, hop_length)
            for j, row in zip(part, emb):
                rows[group[j]] = row
    if not rows:
        return ids, np.zeros((0, 0), np.float32)
    return ids, np.stack(rows)


def check_windows(window, hop, sample_rate=None):
    """Refuse windows that :func:`embed_windows` cannot embed: not
    ``0 < hop <= window``, a hop under ``MIN_HOP`` (window IDs give
    milliseconds), or (``sample_rate`` given) a half window shorter than
    ``MIN_SAMPLES``; ``ValueError`` says which.

    Example
    -------
    >>> check_windows(1.5, 1.5, 16000)
    >>> check_windows(0.04, 0.04, 16000)
    Traceback (most recent call last):
    ...
    ValueError: window 0.04 s is shorter than 0.05 s: a half window must \
hold 400 samples at 16000 Hz
    """
    check_window_hop(window, hop)
    if hop < MIN_HOP:
        raise ValueError(f"hop {hop} s is shorter than {MIN_HOP} s")
    if sample_rate is not None and window * sample_rate < 2 * MIN_SAMPLES:
        raise ValueError(
            f"window {window} s is shorter than "
            f"{2 * MIN_SAMPLES / sample_rate:g} s: a half window must hold "
            f"{MIN_SAMPLES} samples at {sample_rate} Hz"
        )


@torch.no_grad()
def embed_windows(
    embed_fn,
    items,
    window,
    hop=None,
    sample_rate=16000,
    trim=False,
    batch_size=16,
    device="cpu",
    progress=True,
    hop_length=None,
):
    """Embed windows of ``window`` seconds, one every ``hop`` seconds, of
    each file, reading it block by block
    (:func:`dampit.dataio.windows.read_windows`: its last windows are kept
    when they last half a window or more; ``trim`` leaves out the windows
    with too little speech).

    Arguments
    ---------
    embed_fn : callable
        ``embed_fn(wavs [B, N], lengths [B]) -> [B, 1, D] or [B, D]``.
    items : list
        Paths, or ``(id, path)`` pairs.
    window : float
        Window length in seconds: at least ``2 * MIN_SAMPLES`` samples at
        ``sample_rate``, so that a half window can be embedded.
    hop : float, optional
        Seconds between window starts: ``MIN_HOP`` to ``window``
        (default) (:func:`check_windows`).
    sample_rate : int
        Rate the model expects; other rates are resampled.
    trim : bool
        Leave out the windows with too little speech.
    batch_size : int
        Windows per forward pass (a window cut short pads to at most
        twice its length).
    device : str or torch.device
        Where the batches go.
    progress : bool
        Show a tqdm progress bar (seconds of audio read).
    hop_length : int, optional
        The model's STFT hop (see :func:`pad_batch`).

    Returns
    -------
    ids : list of str
        ``file_id@start-end`` (:func:`dampit.inference.embedding_store.
        window_id`), in file and time order.
    segments : list of tuple
        ``(file_id, start, end)`` of each window, in seconds.
    embeddings : numpy.ndarray
        ``[N, D]`` (``[0, 0]`` when no window is left).

    Example
    -------
    >>> import os, tempfile, soundfile as sf
    >>> p = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(p, np.random.randn(40000) * 0.1, 16000)  # 2.5 s
    >>> def energy(w, lens):  # a toy embedding: mean power
    ...     return (w ** 2).sum(1, keepdim=True) / (lens * w.shape[1])[:, None]
    >>> ids, segments, emb = embed_windows(
    ...     energy, [("a", p)], 1.0, progress=False)
    >>> ids, emb.shape
    (['a@0.000-1.000', 'a@1.000-2.000', 'a@2.000-2.500'], (3, 1))
    """
    hop = window if hop is None else hop
    check_windows(window, hop, sample_rate)
    items = _id_path_pairs(items)
    total = sum(header_duration(path) for _, path in items)
    bar = tqdm(total=total, unit="s", disable=not progress)

    def windows():  # every window of every file; the bar: seconds read
        for uid, path in items:
            read = 0.0
            for start, end, wav in read_windows(
                path, window, hop, sample_rate, trim
            ):
                bar.update(max(0.0, end - read))
                read = max(read, end)
                yield uid, start, end, wav
            bar.update(max(0.0, header_duration(path) - read))

    ids, segments, rows, batch = [], [], [], []
    with bar:
        for uid, start, end, wav in windows():
            ids.append(window_id(uid, start, end))
            segments.append((uid, start, end))
            batch.append(wav)
            if len(batch) == batch_size:
                rows.append(embed_batch(embed_fn, batch, device, hop_length))
                batch = []
        if batch:
            rows.append(embed_batch(embed_fn, batch, device, hop_length))
    emb = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
    return ids, segments, emb
