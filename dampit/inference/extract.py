"""Embedding extraction for lists of utterances: whole files and crops.

Used by the recipe's verification stage and by ``dampit-embed``. An
``embed_fn`` maps a padded batch of waveforms and relative lengths to
embeddings (the recipe's ``Brain.compute_embeddings``, or
``EncoderClassifier.encode_batch``); this module batches the files, shows
progress, and returns plain arrays.
"""

import numpy as np
import torch
from tqdm import tqdm

from dampit.dataio.audio import load_audio
from dampit.dataio.crops import eval_crops
from dampit.metrics.embedding_store import EmbeddingStore, EmbeddingStoreWriter


def _as_items(items):
    """Normalise items to (id, path, start, stop) tuples."""
    out = []
    for item in items:
        if isinstance(item, (str, bytes)) or hasattr(item, "__fspath__"):
            out.append((str(item), str(item), 0, None))
        elif isinstance(item, dict):
            stop = item.get("stop")
            out.append(
                (
                    item["ID"] if "ID" in item else item["id"],
                    item["wav"],
                    int(item.get("start", 0) or 0),
                    None if stop in (None, "") else int(stop),
                )
            )
        else:
            uid, path, *rest = item
            start = int(rest[0]) if rest else 0
            stop = int(rest[1]) if len(rest) > 1 and rest[1] else None
            out.append((uid, path, start, stop))
    return out


def pad_batch(wavs, hop_length=None):
    """Pad 1-D waveforms into [B, N] with SpeechBrain relative lengths.

    Arguments
    ---------
    wavs : list of torch.Tensor
        Waveforms of any lengths.
    hop_length : int, optional
        The features' STFT hop. When given, each relative length is the
        ratio of (centred) frame counts, ``(1 + n // hop) / (1 + N // hop)``,
        so that a padded item keeps exactly its own frames and embeds as it
        would alone; otherwise ``n / N``.

    Returns
    -------
    batch : torch.Tensor
        [B, max_len], zero padded.
    lengths : torch.Tensor
        [B], length / max_len.

    Example
    -------
    >>> b, lens = pad_batch([torch.ones(4), torch.ones(2)])
    >>> b.shape, lens.tolist()
    (torch.Size([2, 4]), [1.0, 0.5])
    """
    n = max(int(w.numel()) for w in wavs)
    batch = torch.zeros(len(wavs), n)
    for i, w in enumerate(wavs):
        batch[i, : w.numel()] = w
    if hop_length:
        frames = [1 + int(w.numel()) // hop_length for w in wavs]
        lengths = torch.tensor([f / max(frames) for f in frames])
    else:
        lengths = torch.tensor([w.numel() / n for w in wavs])
    return batch, lengths


@torch.no_grad()
def embed_utterances(
    embed_fn,
    items,
    sample_rate=16000,
    n_crops=0,
    crop_samples=None,
    batch_size=16,
    device="cpu",
    full=True,
    progress=True,
    min_samples=400,
    full_store=None,
    crops_store=None,
    hop_length=None,
):
    """Embed whole utterances and/or N evenly spaced crops of each.

    Arguments
    ---------
    embed_fn : callable
        ``embed_fn(wavs [B, N], lengths [B]) -> [B, 1, D] or [B, D]``.
    items : list
        Paths, ``(id, path[, start, stop])`` tuples or CSV-row dicts
        (``ID``, ``wav``, ``start``, ``stop``).
    sample_rate : int
        Rate the model expects; other rates are resampled.
    n_crops : int
        Crops per utterance (0: none).
    crop_samples : int or None
        Length of each crop, in samples.
    batch_size : int
        Utterances per forward pass (crops: utterances x n_crops).
    device : str or torch.device
        Where the batches go.
    full : bool
        Also embed the whole utterances.
    progress : bool
        Show a tqdm progress bar.
    min_samples : int
        Shortest accepted file (shorter ones raise ``AudioError``).
    full_store, crops_store : str or None
        Store folders (``dampit.metrics.embedding_store``): when given, the
        embeddings are streamed to disk batch by batch (memory stays
        bounded whatever the number of utterances), written atomically,
        and returned memory-mapped.
    hop_length : int, optional
        The model's STFT hop: frame-exact relative lengths for padded
        batches (see ``pad_batch``).

    Returns
    -------
    ids : list of str
        Utterance IDs, in input order.
    full_emb : numpy.ndarray or None
        [N, D] whole-utterance embeddings (memory-mapped with a store).
    crop_emb : numpy.ndarray or None
        [N, n_crops, D] crop embeddings (memory-mapped with a store).

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
    >>> ids, full, crops = embed_utterances(
    ...     energy, paths, n_crops=2, crop_samples=800, progress=False)
    >>> full.shape, crops.shape
    ((3, 1), (3, 2, 1))
    """
    items = _as_items(items)
    ids = [uid for uid, *_ in items]
    if len(set(ids)) != len(ids):
        dup = sorted({u for u in ids if ids.count(u) > 1})[:5]
        raise ValueError(f"embed_utterances: duplicate utterance IDs {dup}")
    sinks = {
        "full": _Sink(len(items), full_store) if full else None,
        "crops": _Sink(len(items), crops_store) if n_crops else None,
    }

    def run(wavs):
        batch, lens = pad_batch(wavs, hop_length)
        emb = embed_fn(batch.to(device), lens.to(device))
        return emb.reshape(emb.shape[0], -1).float().cpu().numpy()

    bar = tqdm(total=len(items), desc="embedding", disable=not progress)
    try:
        for lo in range(0, len(items), batch_size):
            chunk = items[lo : lo + batch_size]
            wavs = [
                load_audio(
                    p, sample_rate, start=s, stop=e, min_samples=min_samples
                )
                for _, p, s, e in chunk
            ]
            chunk_ids = [uid for uid, *_ in chunk]
            if full:
                order = sorted(range(len(wavs)), key=lambda k: -wavs[k].numel())
                emb = run([wavs[k] for k in order])
                back = np.empty_like(emb)
                back[order] = emb
                sinks["full"].add(chunk_ids, back)
            if n_crops:
                crops = [eval_crops(w, n_crops, crop_samples) for w in wavs]
                emb = run(list(torch.cat(crops)))
                sinks["crops"].add(
                    chunk_ids, emb.reshape(len(wavs), n_crops, -1)
                )
            bar.update(len(chunk))
    except BaseException:
        for sink in sinks.values():
            if sink is not None:
                sink.abort()
        raise
    finally:
        bar.close()
    full_emb = sinks["full"].close() if full else None
    crop_emb = sinks["crops"].close() if n_crops else None
    return ids, full_emb, crop_emb


class _Sink:
    """Rows gathered in memory, or streamed to an embedding store."""

    def __init__(self, n, folder):
        self.n, self.folder = n, folder
        self.rows, self.writer = [], None

    def add(self, ids, emb):
        if self.folder is None:
            self.rows.append(emb)
            return
        if self.writer is None:
            self.writer = EmbeddingStoreWriter(
                self.folder, self.n, emb.shape[1:]
            )
        self.writer.add_batch(ids, emb)

    def abort(self):
        if self.writer is not None:
            self.writer.abort()

    def close(self):
        if self.folder is None:
            return np.concatenate(self.rows)
        self.writer.close()
        return EmbeddingStore(self.folder).embeddings
