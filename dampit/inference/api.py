"""Load an exported model folder without executing anything from it.

:func:`load_model` reads ``dampit_export.json`` with ``json`` (each
module's class name and keyword arguments as plain values, ``threshold``,
``sample_rate``), builds only the classes of :data:`REGISTRY`, loads
``<module>.ckpt`` with ``torch.load(weights_only=True)`` and refuses
non-finite weights or thresholds with one line naming the file.

The folder's ``hyperparams.yaml`` is for SpeechBrain's
``EncoderClassifier.from_hparams``, which *executes* it (HyperPyYAML builds
any Python object it names): that is SpeechBrain's trust model, for folders
you trust. ``load_model(folder, trust=True)`` does the same (it loads
SpeechBrain's own folders, which have no JSON).

The result is SpeechBrain's ``SpeakerRecognition`` deciding with the
folder's threshold, reading audio with :func:`dampit.dataio.audio.
load_audio`, and embedding many files in padded batches whose relative
lengths count frames exactly (:func:`dampit.inference.extract.pad_batch`)::

    model = load_model("model")
    ids, emb = model.embed_files(["a.wav", "b.wav"])
    ids, segments, emb = model.embed_windows(["long.wav"], window=1.5)
    scores, decisions = model.verify_pairs([("a.wav", "b.wav")])
    scores, _ = model.verify_pairs(pairs, asnorm=True)  # AS-norm (cohort)
"""

import os
import tempfile

import torch
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.speaker import SpeakerRecognition
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier
from speechbrain.processing.features import InputNormalization

from dampit.dataio.audio import load_audio
from dampit.inference import cohort
from dampit.inference.extract import embed_utterances, embed_windows
from dampit.inference.folder_checks import (
    DEFAULT_THRESHOLD,
    HPARAMS_FILE,
    LOAD_ERRORS,
    MAX_LABELS_BYTES,
    SPEC_FILE,
    YAML_ERRORS,
    ModelFolderError,
    check_embeddings,
    check_labels,
    check_same_threshold,
    check_spec,
    check_threshold,
    check_value,
    n_classes,
    one_line,
    read_json,
)
from dampit.lobes.features import CropNormalization, Features
from dampit.lobes.resnet import LinearClassifier, SEResNet
from dampit.metrics.scoring import cosine_scores

__all__ = ["DampitSpeakerRecognition", "ModelFolderError", "load_model"]

LABELS_FILE = "label_encoder.ckpt"
#: The only classes :func:`load_model` builds, by the name the JSON gives.
REGISTRY = {
    "dampit.lobes.features.Features": Features,
    "dampit.lobes.features.CropNormalization": CropNormalization,
    "dampit.lobes.resnet.SEResNet": SEResNet,
    "dampit.lobes.resnet.LinearClassifier": LinearClassifier,
    "speechbrain.lobes.features.Fbank": Fbank,
    "speechbrain.processing.features.InputNormalization": InputNormalization,
    "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN": ECAPA_TDNN,
    "speechbrain.lobes.models.ECAPA_TDNN.Classifier": Classifier,
}
#: Modules whose ``<module>.ckpt`` a folder must have when it lists them.
WEIGHTED = ("embedding_model", "classifier")
#: Seconds of noise every loaded model embeds once: a model that gives
#: NaN / inf embeddings is refused at load.
PROBE_SECONDS = 1.0


def read_spec(folder):
    """``dampit_export.json`` of a model folder, checked.

    Arguments
    ---------
    folder : str
        The model folder.

    Returns
    -------
    dict
        ``modules`` (name -> ``{"class", "kwargs"}``), ``sample_rate``,
        ``threshold`` and facts about the export, each value within
        :data:`dampit.inference.folder_checks.BOUNDS`.
    """
    path = os.path.join(folder, SPEC_FILE)
    if not os.path.isdir(folder):
        raise ModelFolderError(f"model folder not found: {folder}")
    if not os.path.isfile(path):
        raise ModelFolderError(
            f"{folder}: no {SPEC_FILE}, not a dampit model folder (export "
            "one with dampit-export; load a SpeechBrain folder you trust "
            "with --trust)"
        )
    return check_spec(path, read_json(path), REGISTRY)


def _build(path, name, entry):
    """One module from its checked JSON entry."""
    try:
        return REGISTRY[entry["class"]](**entry.get("kwargs", {}))
    except (TypeError, ValueError) as err:
        raise ModelFolderError(f"{path}: {name}: {one_line(err)}") from None


def _load_weights(folder, name, module):
    """``<name>.ckpt`` into ``module``: weights only, strict, finite."""
    path = os.path.join(folder, f"{name}.ckpt")
    if not os.path.isfile(path):
        if name in WEIGHTED:
            raise ModelFolderError(f"{path}: missing")
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except LOAD_ERRORS as err:
        raise ModelFolderError(
            f"{path}: cannot load the weights: {one_line(err)}"
        ) from None
    for key, value in module.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ModelFolderError(f"{path}: non-finite weights in {key}")


def _load_labels(folder, n_expected):
    """The checked ``label_encoder.ckpt``, or None when there is none."""
    path = os.path.join(folder, LABELS_FILE)
    if not os.path.isfile(path):
        if n_expected is not None:
            raise ModelFolderError(f"{path}: missing (needed by classifier)")
        return None
    if os.path.getsize(path) > MAX_LABELS_BYTES:
        raise ModelFolderError(f"{path}: more than {MAX_LABELS_BYTES} bytes")
    encoder = CategoricalEncoder()
    try:
        encoder.load(path)
    except (ValueError, SyntaxError, OSError, KeyError) as err:
        raise ModelFolderError(
            f"{path}: not a label encoder: {one_line(err)}"
        ) from None
    return check_labels(path, encoder, n_expected)


def _probe(model, folder):
    """``model`` of ``folder`` in eval mode, once it embedded
    :data:`PROBE_SECONDS` of fixed noise (an error or NaN / inf: one line
    naming the folder; sets ``model.embedding_size``), with its checked
    cohort."""
    model.folder = folder
    model.eval()
    gen = torch.Generator().manual_seed(0)
    n = int(PROBE_SECONDS * model.sample_rate)
    wav = 0.1 * torch.randn(1, n, generator=gen)
    try:
        with torch.no_grad():
            emb = model.encode_batch(wav.to(model.device))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        if isinstance(err, ModelFolderError):
            raise
        raise ModelFolderError(
            f"{model.folder}: the model does not run on {PROBE_SECONDS:g} s "
            f"of audio: {one_line(err)}"
        ) from None
    model.embedding_size = int(emb.shape[-1])
    model.cohort = cohort.read_cohort(model)
    return model


def load_model(source, device="cpu", trust=False):
    """Load a model folder, offline.

    Arguments
    ---------
    source : str or os.PathLike
        The model folder (written by ``dampit-export``).
    device : str
        Where the modules go ("cpu", "cuda:0"...).
    trust : bool
        Load with SpeechBrain's ``from_hparams`` instead, which executes
        the folder's ``hyperparams.yaml``: only for folders you trust.

    Returns
    -------
    DampitSpeakerRecognition
        In eval mode; ``cohort``: the folder's checked AS-norm cohort
        (:mod:`dampit.inference.cohort`) or None.

    Raises
    ------
    ModelFolderError
        One line naming the folder or file: missing, malformed, refused
        class, unreadable or non-finite weights, threshold or cohort, a
        ``hyperparams.yaml`` threshold that is not the JSON's.

    Example
    -------
    >>> from dampit.inference.model_files import write_model_files
    >>> net = SEResNet(depth=18, base_width=4, emb_dim=8)
    >>> mods = {k: {"class": f"dampit.lobes.{c}", "kwargs": {}} for k, c in [
    ...     ("compute_features", "features.Features"),
    ...     ("mean_var_norm", "features.CropNormalization"),
    ...     ("embedding_model", "resnet.SEResNet")]}
    >>> mods["embedding_model"]["kwargs"] = dict(
    ...     depth=18, base_width=4, emb_dim=8)
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_model_files(folder, mods, {"embedding_model":
    ...                       net.state_dict()}, 0.4, 16000)
    >>> model = load_model(folder)
    >>> model.threshold, model.encode_batch(torch.randn(2, 8000)).shape
    (0.4, torch.Size([2, 1, 8]))
    """
    folder = os.path.abspath(os.fspath(source))
    if trust:
        return _load_trusted(folder, device)
    spec = read_spec(folder)
    check_same_threshold(folder, spec)
    path = os.path.join(folder, SPEC_FILE)
    labels = _load_labels(folder, n_classes(spec))
    mods = {k: _build(path, k, v) for k, v in spec["modules"].items()}
    for name, module in mods.items():
        _load_weights(folder, name, module)
    hparams = {
        "threshold": check_threshold(path, spec.get("threshold")),
        "sample_rate": spec["sample_rate"],
        **mods,
    }
    if labels is not None:
        hparams["label_encoder"] = labels
    model = DampitSpeakerRecognition(
        modules=mods, hparams=hparams, run_opts={"device": device}
    )
    return _probe(model, folder)


def _load_trusted(folder, device):
    """SpeechBrain's ``from_hparams`` (runs the YAML), then the checks."""
    if not os.path.isfile(os.path.join(folder, HPARAMS_FILE)):
        raise ModelFolderError(f"{folder}: no {HPARAMS_FILE}")
    with tempfile.TemporaryDirectory(prefix="dampit-model-") as tmp:
        try:
            model = DampitSpeakerRecognition.from_hparams(
                source=folder, savedir=tmp, run_opts={"device": device}
            )
        except YAML_ERRORS as err:
            text = one_line(str(err).replace(tmp, folder))
            raise ModelFolderError(f"{folder}/{HPARAMS_FILE}: {text}") from None
    where = os.path.join(folder, HPARAMS_FILE)
    threshold = getattr(model.hparams, "threshold", None)
    model.hparams.threshold = check_threshold(where, threshold)
    rate = getattr(model.hparams, "sample_rate", None)
    if rate is not None:
        check_value(where, "sample_rate", rate)
    return _probe(model, folder)


class DampitSpeakerRecognition(SpeakerRecognition):
    """``SpeakerRecognition`` with the stored threshold and robust audio.

    ``verify_batch`` / ``verify_files`` decide with :attr:`threshold`
    (SpeechBrain's: 0.25), ``load_audio`` is :func:`dampit.dataio.audio.
    load_audio`, and :meth:`embed_files` / :meth:`verify_pairs` batch many
    files, :meth:`embed_windows` windows of long files; the rest is
    SpeechBrain's.

    Arguments
    ---------
    *args : tuple
        See ``speechbrain.inference.interfaces.Pretrained``.
    **kwargs : dict
        See ``speechbrain.inference.interfaces.Pretrained``.
    """

    @property
    def threshold(self):
        """The decision threshold (same speaker when score > threshold)."""
        value = getattr(self.hparams, "threshold", None)
        return DEFAULT_THRESHOLD if value is None else float(value)

    @property
    def sample_rate(self):
        """Sample rate the model expects."""
        return int(getattr(self.hparams, "sample_rate", 16000))

    def load_audio(self, path, savedir=None):
        """Read a local file as the model expects it (mono, its rate).

        Arguments
        ---------
        path : str or os.PathLike
            The audio file.
        savedir : None
            Unused (SpeechBrain's signature).

        Returns
        -------
        torch.Tensor
            ``[N]`` float32 on the model's device.
        """
        return load_audio(path, self.sample_rate).to(self.device)

    def verify_batch(
        self, wavs1, wavs2, wav1_lens=None, wav2_lens=None, threshold=None
    ):
        """SpeechBrain's ``verify_batch``, by default at :attr:`threshold`.

        Arguments
        ---------
        wavs1, wavs2 : torch.Tensor
            ``[B, N]`` waveforms.
        wav1_lens, wav2_lens : torch.Tensor, optional
            Relative lengths.
        threshold : float, optional
            Defaults to :attr:`threshold`.

        Returns
        -------
        score : torch.Tensor
            ``[B, 1]`` cosine similarities.
        decision : torch.Tensor
            ``score > threshold``.
        """
        threshold = self.threshold if threshold is None else threshold
        return super().verify_batch(
            wavs1, wavs2, wav1_lens, wav2_lens, threshold=threshold
        )

    def encode_batch(self, wavs, wav_lens=None, normalize=False):
        """SpeechBrain's ``encode_batch``; NaN / inf embeddings raise.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, N]`` waveforms.
        wav_lens : torch.Tensor, optional
            Relative lengths.
        normalize : bool
            See SpeechBrain's.

        Returns
        -------
        torch.Tensor
            ``[B, 1, D]`` embeddings, all finite.

        Raises
        ------
        ModelFolderError
            When an embedding is NaN or inf (weights that overflow).
        """
        emb = super().encode_batch(wavs, wav_lens, normalize)
        return check_embeddings(getattr(self, "folder", "model"), emb)

    def embed_files(self, items, batch_size=16, progress=True):
        """Embed audio files in padded batches formed by length (no file
        padded beyond ``MAX_PADDING``, 2, times its length: see
        :func:`dampit.inference.extract.length_batches`), with a progress
        bar.

        Arguments
        ---------
        items : list
            Paths, or ``(id, path)`` pairs.
        batch_size : int
            Most files per forward pass.
        progress : bool
            Show a progress bar.

        Returns
        -------
        ids : list of str
            Item IDs (the paths, for plain paths), in input order.
        embeddings : numpy.ndarray
            ``[N, D]`` float32.
        """
        return embed_utterances(
            self.encode_batch,
            items,
            sample_rate=self.sample_rate,
            batch_size=batch_size,
            device=self.device,
            progress=progress,
            hop_length=self.hop_length(),
        )

    def embed_windows(
        self, items, window, hop=None, trim=False, batch_size=16, progress=True
    ):
        """Embed windows of ``window`` seconds, one every ``hop`` seconds
        (default: ``window``), of long files read block by block (see
        :func:`dampit.inference.extract.embed_windows`).

        Arguments
        ---------
        items : list
            Paths, or ``(id, path)`` pairs.
        window, hop : float
            Seconds (``0 < hop <= window``).
        trim : bool
            Leave out the windows with too little speech
            (:mod:`dampit.dataio.windows`).
        batch_size : int
            Windows per forward pass.
        progress : bool
            Show a progress bar.

        Returns
        -------
        ids : list of str
            ``file_id@start-end`` of each window.
        segments : list of tuple
            ``(file_id, start, end)`` in seconds.
        embeddings : numpy.ndarray
            ``[N, D]`` float32.
        """
        return embed_windows(
            self.encode_batch,
            items,
            window,
            hop,
            sample_rate=self.sample_rate,
            trim=trim,
            batch_size=batch_size,
            device=self.device,
            progress=progress,
            hop_length=self.hop_length(),
        )

    def hop_length(self):
        """The features' STFT hop, when they have one (frame-exact
        relative lengths in padded batches), else None."""
        hop = getattr(self.mods.compute_features, "hop_length", None)
        return hop if isinstance(hop, int) else None

    def verify_pairs(self, pairs, batch_size=16, progress=True, asnorm=False):
        """Score pairs of files (cosine, or AS-norm), each file embedded
        once.

        Arguments
        ---------
        pairs : list of (str, str)
            ``(enrol_path, test_path)`` pairs.
        batch_size : int
            Files per forward pass.
        progress : bool
            Show a progress bar.
        asnorm : bool
            AS-normalise the cosines with the folder's cohort
            (:func:`dampit.inference.cohort.normalise_scores`); a model
            without one raises ModelFolderError before any embedding.

        Returns
        -------
        scores : numpy.ndarray
            ``[P]`` cosine similarities (AS-norm: normalised scores).
        decisions : numpy.ndarray or None
            ``[P]`` booleans, ``scores > threshold``; None for AS-norm
            scores, whose scale the stored threshold is not for.
        """
        if asnorm:
            cohort.require_cohort(self)
        files = sorted({os.fspath(p) for pair in pairs for p in pair})
        ids, emb = self.embed_files(files, batch_size, progress)
        row = {u: k for k, u in enumerate(ids)}
        enrol = [row[os.fspath(p)] for p, _ in pairs]
        test = [row[os.fspath(q)] for _, q in pairs]
        scores = cosine_scores(emb, enrol, test)  # float64, as the CLI
        if asnorm:
            scores = cohort.normalise_scores(self, scores, emb, enrol, test)
            return scores, None
        return scores, scores > self.threshold
