"""A small Python API over an exported dampit model.

An exported model folder (see :mod:`dampit.inference.export`) loads with
SpeechBrain's own interfaces, offline::

    from speechbrain.inference.speaker import SpeakerRecognition
    model = SpeakerRecognition.from_hparams(source="model", savedir="tmp")
    score, same = model.verify_files("a.wav", "b.wav")  # threshold 0.25!

SpeechBrain's ``verify_files`` decides with its fixed threshold 0.25.
:func:`load_model` returns a :class:`DampitSpeakerRecognition` instead,
which decides with the model's calibrated ``threshold``, reads audio with
:func:`dampit.dataio.audio.load_audio` (missing, unreadable, empty, silent
files raise :class:`~dampit.dataio.audio.AudioError` naming the file; other
sample rates are resampled with a warning; several channels are averaged)
and embeds many files in padded batches whose relative lengths are exact in
frames, so a batch gives the embeddings of the files one by one::

    from dampit.inference.api import load_model
    model = load_model("model")               # refuses unsafe YAML
    ids, emb = model.embed_files(["a.wav", "b.wav", "c.wav"])
    scores, decisions = model.verify_pairs([("a.wav", "b.wav")])

Relative lengths and frames
---------------------------
SpeechBrain passes relative lengths (``n / N`` samples) to the modules,
which turn them into frames as ``round(length * T)``. With a centred STFT
a file of ``n`` samples has ``1 + n // hop`` frames, and ``round(n / N *
(1 + N // hop))`` can differ from it by one frame, so a padded batch can
differ slightly from one file at a time. :func:`frame_relative_lengths`
gives the relative lengths ``(1 + n // hop) / (1 + N // hop)`` that make
the modules count exactly the file's frames.
"""

import os
import shutil
import tempfile

import numpy as np
import torch
from speechbrain.inference.speaker import SpeakerRecognition

from dampit.dataio.audio import load_audio
from dampit.inference.extract import embed_utterances, pad_batch
from dampit.inference.safe_yaml import check_hparams

__all__ = [
    "DampitSpeakerRecognition",
    "ModelFolderError",
    "cosine_scores",
    "frame_relative_lengths",
    "load_model",
]

HPARAMS_FILE = "hyperparams.yaml"
DEFAULT_THRESHOLD = 0.25  # SpeechBrain's verify_batch default


class ModelFolderError(FileNotFoundError):
    """A model folder that is missing or lacks a needed file."""


def frame_relative_lengths(n_samples, hop_length, n_fft=None, center=True):
    """Relative lengths that give each item its exact STFT frame count.

    Arguments
    ---------
    n_samples : sequence of int
        Samples of each item of the padded batch.
    hop_length : int
        STFT hop.
    n_fft : int, optional
        FFT size (only needed when ``center=False``).
    center : bool
        Whether the STFT is centred (``1 + n // hop`` frames).

    Returns
    -------
    torch.Tensor
        ``[B]`` float32: frames of the item / frames of the longest.

    Example
    -------
    >>> frame_relative_lengths([32000, 16000], 160).tolist()
    [1.0, 0.5024875402450562]
    """
    n = np.asarray(list(n_samples), dtype=np.int64)
    if center:
        frames = 1 + n // int(hop_length)
    else:
        frames = 1 + (n - int(n_fft)) // int(hop_length)
    frames = np.maximum(frames, 1)
    rel = frames.astype(np.float64) / float(frames.max())
    return torch.tensor(rel, dtype=torch.float32)


def cosine_scores(emb_a, emb_b):
    """Row-wise cosine similarity, as ``SpeakerRecognition.verify_batch``.

    Arguments
    ---------
    emb_a : array-like or torch.Tensor
        ``[N, D]`` (or ``[N, 1, D]``).
    emb_b : array-like or torch.Tensor
        Same shape.

    Returns
    -------
    numpy.ndarray
        ``[N]`` cosine similarities (norms floored at 1e-6, like
        SpeechBrain's ``CosineSimilarity(eps=1e-6)``).

    Example
    -------
    >>> s = cosine_scores([[1.0, 0.0], [1.0, 1.0]], [[2.0, 0.0], [-1.0, -1.0]])
    >>> s.round(4).tolist()
    [1.0, -1.0]
    """
    a = torch.as_tensor(np.asarray(emb_a), dtype=torch.float32)
    b = torch.as_tensor(np.asarray(emb_b), dtype=torch.float32)
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    sim = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-6)
    return sim.numpy()


class DampitSpeakerRecognition(SpeakerRecognition):
    """``SpeakerRecognition`` with the stored threshold and robust audio.

    Differences from SpeechBrain's class (everything else is inherited):

    - ``verify_batch`` / ``verify_files`` default to the model's
      ``threshold`` (from ``hyperparams.yaml``) instead of 0.25;
    - ``load_audio`` uses :func:`dampit.dataio.audio.load_audio`;
    - :meth:`embed_files` and :meth:`verify_pairs` batch many files.

    Arguments
    ---------
    *args : tuple
        See ``speechbrain.inference.interfaces.Pretrained``.
    **kwargs : dict
        See ``speechbrain.inference.interfaces.Pretrained``.

    Example
    -------
    >>> import os, tempfile
    >>> from dampit.inference.export import write_demo_model
    >>> folder = write_demo_model(tempfile.mkdtemp())
    >>> model = load_model(folder)
    >>> model.threshold
    0.5
    >>> model.encode_batch(torch.randn(2, 8000)).shape
    torch.Size([2, 1, 16])
    """

    @property
    def threshold(self):
        """The calibrated decision threshold (``score > threshold``)."""
        return float(getattr(self.hparams, "threshold", DEFAULT_THRESHOLD))

    @property
    def sample_rate(self):
        """Sample rate the model expects."""
        rate = getattr(self.hparams, "sample_rate", None)
        if rate is None:
            rate = getattr(self.mods.compute_features, "sample_rate", 16000)
        return int(rate)

    def load_audio(self, path, savedir=None):
        """Read a file as the model expects it (mono, its sample rate).

        Arguments
        ---------
        path : str or os.PathLike
            A local audio file.
        savedir : None
            Unused (SpeechBrain's signature; remote paths are not read).

        Returns
        -------
        torch.Tensor
            ``[N]`` float32 on the model's device.
        """
        return load_audio(path, self.sample_rate).to(self.device)

    def verify_batch(
        self, wavs1, wavs2, wav1_lens=None, wav2_lens=None, threshold=None
    ):
        """Cosine scores and decisions with the stored threshold.

        Arguments
        ---------
        wavs1 : torch.Tensor
            ``[B, N1]`` waveforms.
        wavs2 : torch.Tensor
            ``[B, N2]`` waveforms.
        wav1_lens : torch.Tensor, optional
            Relative lengths of ``wavs1``.
        wav2_lens : torch.Tensor, optional
            Relative lengths of ``wavs2``.
        threshold : float, optional
            Defaults to :attr:`threshold`.

        Returns
        -------
        score : torch.Tensor
            ``[B, 1]`` cosine similarities.
        decision : torch.Tensor
            ``score > threshold``.
        """
        if threshold is None:
            threshold = self.threshold
        return super().verify_batch(
            wavs1, wavs2, wav1_lens, wav2_lens, threshold=threshold
        )

    def frame_lengths(self, n_samples):
        """Frame-exact relative lengths for this model's features.

        Arguments
        ---------
        n_samples : sequence of int
            Samples of each item of a padded batch.

        Returns
        -------
        torch.Tensor
            ``[B]`` relative lengths (see :func:`frame_relative_lengths`);
            plain ``n / max(n)`` for features without ``hop_length``.
        """
        feats = self.mods.compute_features
        hop = getattr(feats, "hop_length", None)
        n = [int(k) for k in n_samples]
        if hop is None:
            return torch.tensor([k / max(n) for k in n])
        return frame_relative_lengths(
            n,
            hop,
            n_fft=getattr(feats, "n_fft", None),
            center=bool(getattr(feats, "center", True)),
        )

    def encode_waveforms(self, wavs):
        """Embed 1-D waveforms of any lengths as one padded batch.

        Arguments
        ---------
        wavs : list of torch.Tensor
            ``[N_i]`` waveforms at :attr:`sample_rate`.

        Returns
        -------
        torch.Tensor
            ``[B, D]`` embeddings, equal (to float rounding) to embedding
            each waveform alone.
        """
        batch, _ = pad_batch(wavs)
        lens = self.frame_lengths([w.numel() for w in wavs])
        with torch.no_grad():
            emb = self.encode_batch(batch, lens)
        return emb.reshape(emb.shape[0], -1)

    def embed_files(self, items, batch_size=16, progress=True):
        """Embed audio files in padded batches, with a progress bar.

        Arguments
        ---------
        items : list
            Paths, ``(id, path[, start, stop])`` tuples or CSV-row dicts
            (see :func:`dampit.inference.extract.embed_utterances`).
        batch_size : int
            Files per forward pass.
        progress : bool
            Show a tqdm progress bar.

        Returns
        -------
        ids : list of str
            Item IDs (the paths, for plain paths), in input order.
        embeddings : numpy.ndarray
            ``[N, D]`` float32.

        Raises
        ------
        dampit.dataio.audio.AudioError
            For a missing, unreadable, empty, silent or too short file.
        """
        lens_fn = self.frame_lengths

        def embed_fn(batch, rel):
            # Recover the sample counts from pad_batch's n / N lengths.
            n = torch.round(rel.double().cpu() * batch.shape[1]).long()
            lens = lens_fn(n.tolist()).to(batch.device)
            return self.encode_batch(batch, lens)

        ids, emb, _ = embed_utterances(
            embed_fn,
            items,
            sample_rate=self.sample_rate,
            batch_size=batch_size,
            device=self.device,
            progress=progress,
        )
        return ids, emb

    def verify_pairs(self, pairs, batch_size=16, progress=True):
        """Score pairs of files; each file is embedded once.

        Arguments
        ---------
        pairs : list of (str, str)
            ``(enrol_path, test_path)`` pairs.
        batch_size : int
            Files per forward pass.
        progress : bool
            Show a tqdm progress bar.

        Returns
        -------
        scores : numpy.ndarray
            ``[P]`` cosine similarities.
        decisions : numpy.ndarray
            ``[P]`` booleans, ``scores > threshold``.
        """
        files = sorted({os.fspath(p) for pair in pairs for p in pair})
        ids, emb = self.embed_files(files, batch_size, progress)
        row = {u: k for k, u in enumerate(ids)}
        a = emb[[row[os.fspath(p)] for p, _ in pairs]]
        b = emb[[row[os.fspath(q)] for _, q in pairs]]
        scores = cosine_scores(a, b)
        return scores, scores > self.threshold


def load_model(
    source, device="cpu", trust=False, savedir=None, cls=None, **kwargs
):
    """Load an exported model folder, offline, after a safety check.

    Arguments
    ---------
    source : str or os.PathLike
        The model folder (with ``hyperparams.yaml``).
    device : str
        Where the modules go ("cpu", "cuda:0"...).
    trust : bool
        Load even if ``hyperparams.yaml`` uses tags outside the allow-list
        (see :mod:`dampit.inference.safe_yaml`).
    savedir : str, optional
        Where SpeechBrain links the files; default: a temporary folder
        removed after loading (the weights are then in memory).
    cls : type, optional
        The interface class (default :class:`DampitSpeakerRecognition`;
        any ``EncoderClassifier`` subclass works).
    **kwargs : dict
        Passed to ``from_hparams``.

    Returns
    -------
    DampitSpeakerRecognition
        The loaded model, in eval mode.

    Raises
    ------
    ModelFolderError
        When ``source`` is not a folder with ``hyperparams.yaml``.
    dampit.inference.safe_yaml.UnsafeYAMLError
        When the YAML uses refused tags and ``trust`` is False.
    """
    source = os.fspath(source)
    hp_file = os.path.join(source, HPARAMS_FILE)
    if not os.path.isdir(source):
        raise ModelFolderError(f"model folder not found: {source}")
    if not os.path.isfile(hp_file):
        raise ModelFolderError(
            f"{source} is not a model folder: {HPARAMS_FILE} is missing "
            "(export one with dampit-export <run> <model>)"
        )
    check_hparams(hp_file, trust=trust)
    cls = cls or DampitSpeakerRecognition
    tmp = None
    if savedir is None:
        tmp = tempfile.mkdtemp(prefix="dampit-model-")
        savedir = tmp
    try:
        model = cls.from_hparams(
            source=os.path.abspath(source),
            savedir=savedir,
            run_opts={"device": device},
            **kwargs,
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    model.eval()
    return model
