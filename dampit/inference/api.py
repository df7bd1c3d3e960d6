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
    scores, decisions = model.verify_pairs([("a.wav", "b.wav")])
"""

import json
import math
import os
import pickle
import tempfile
import warnings

import torch
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.speaker import SpeakerRecognition
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier
from speechbrain.processing.features import InputNormalization

from dampit.dataio.audio import load_audio
from dampit.inference.extract import embed_utterances
from dampit.lobes.features import CropNormalization, Features
from dampit.lobes.resnet import LinearClassifier, SEResNet

__all__ = ["DampitSpeakerRecognition", "ModelFolderError", "load_model"]

SPEC_FILE = "dampit_export.json"
HPARAMS_FILE = "hyperparams.yaml"
LABELS_FILE = "label_encoder.ckpt"
DEFAULT_THRESHOLD = 0.25  # SpeechBrain's verify_batch default
MODULES = ("compute_features", "mean_var_norm", "embedding_model")
MODULES += ("classifier",)
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
_LOAD_ERRORS = (RuntimeError, ValueError, TypeError, AttributeError, OSError)
_LOAD_ERRORS += (KeyError, EOFError, pickle.UnpicklingError)


class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete, malformed or refused."""


def _one_line(err, limit=300):
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_threshold(where, value):
    """The threshold, or None with a warning; non-finite raises."""
    if value is None:
        warnings.warn(
            f"{where}: no threshold stored; deciding at SpeechBrain's "
            f"default {DEFAULT_THRESHOLD}",
            stacklevel=3,
        )
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ModelFolderError(f"{where}: threshold {value!r} is not finite")
    return float(value)


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
        ``threshold`` and facts about the export.
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
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"{path}: not valid JSON: {err}") from None
    mods = spec.get("modules") if isinstance(spec, dict) else None
    if not isinstance(mods, dict) or any(m not in mods for m in MODULES[:3]):
        raise ModelFolderError(f"{path}: needs modules {', '.join(MODULES)}")
    rate = spec.get("sample_rate")
    if type(rate) is not int or rate <= 0:
        raise ModelFolderError(f"{path}: sample_rate {rate!r} is not valid")
    return spec


def _build(path, name, entry):
    """One module from its JSON entry: registry classes only."""
    if name not in MODULES:
        raise ModelFolderError(f"{path}: unknown module {name!r}")
    entry = entry if isinstance(entry, dict) else {}
    cls = REGISTRY.get(str(entry.get("class")))
    kwargs = entry.get("kwargs", {})
    if cls is None:
        raise ModelFolderError(
            f"{path}: {name}: class {entry.get('class')!r} is not one "
            f"dampit builds ({', '.join(sorted(REGISTRY))})"
        )
    if not isinstance(kwargs, dict):
        raise ModelFolderError(f"{path}: {name}: kwargs must be an object")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ModelFolderError(f"{path}: {name}: {_one_line(err)}") from None


def _load_weights(folder, name, module):
    """``<name>.ckpt`` into ``module``: weights only, strict, finite."""
    path = os.path.join(folder, f"{name}.ckpt")
    if not os.path.isfile(path):
        if name == "embedding_model":
            raise ModelFolderError(f"{path}: missing")
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except _LOAD_ERRORS as err:
        raise ModelFolderError(
            f"{path}: cannot load the weights: {_one_line(err)}"
        ) from None
    for key, value in module.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ModelFolderError(f"{path}: non-finite weights in {key}")


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
        The model, in eval mode.

    Raises
    ------
    ModelFolderError
        One line naming the folder or file: missing, malformed, refused
        class, unreadable or non-finite weights, non-finite threshold.

    Example
    -------
    >>> from dampit.inference.export import write_model_files
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
        if not os.path.isfile(os.path.join(folder, HPARAMS_FILE)):
            raise ModelFolderError(f"{folder}: no {HPARAMS_FILE}")
        with tempfile.TemporaryDirectory(prefix="dampit-model-") as tmp:
            model = DampitSpeakerRecognition.from_hparams(
                source=folder, savedir=tmp, run_opts={"device": device}
            )
        threshold = getattr(model.hparams, "threshold", None)
        model.hparams.threshold = _check_threshold(folder, threshold)
        return model.eval()
    spec = read_spec(folder)
    path = os.path.join(folder, SPEC_FILE)
    mods = {k: _build(path, k, v) for k, v in spec["modules"].items()}
    for name, module in mods.items():
        _load_weights(folder, name, module)
    hparams = {
        "threshold": _check_threshold(path, spec.get("threshold")),
        "sample_rate": spec["sample_rate"],
        **mods,
    }
    labels = os.path.join(folder, LABELS_FILE)
    if os.path.isfile(labels):
        hparams["label_encoder"] = CategoricalEncoder()
        try:
            hparams["label_encoder"].load(labels)
        except (ValueError, SyntaxError, OSError) as err:
            raise ModelFolderError(f"{labels}: {_one_line(err)}") from None
    model = DampitSpeakerRecognition(
        modules=mods, hparams=hparams, run_opts={"device": device}
    )
    return model.eval()


class DampitSpeakerRecognition(SpeakerRecognition):
    """``SpeakerRecognition`` with the stored threshold and robust audio.

    ``verify_batch`` / ``verify_files`` decide with :attr:`threshold`
    (SpeechBrain's: 0.25), ``load_audio`` is :func:`dampit.dataio.audio.
    load_audio`, and :meth:`embed_files` / :meth:`verify_pairs` batch many
    files; the rest is SpeechBrain's.

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

    def embed_files(self, items, batch_size=16, progress=True):
        """Embed audio files in padded batches formed by length (no file
        padded beyond ``MAX_PADDING``, 2, times its length: see
        :func:`dampit.inference.extract.length_batches`), with a progress
        bar.

        Arguments
        ---------
        items : list
            Paths, ``(id, path[, start, stop])`` tuples or CSV-row dicts
            (see :func:`dampit.inference.extract.embed_utterances`).
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
        hop = getattr(self.mods.compute_features, "hop_length", None)
        ids, emb, _ = embed_utterances(
            self.encode_batch,
            items,
            sample_rate=self.sample_rate,
            batch_size=batch_size,
            device=self.device,
            progress=progress,
            hop_length=hop if isinstance(hop, int) else None,
        )
        return ids, emb

    def verify_pairs(self, pairs, batch_size=16, progress=True):
        """Score pairs of files (cosine), each file embedded once.

        Arguments
        ---------
        pairs : list of (str, str)
            ``(enrol_path, test_path)`` pairs.
        batch_size : int
            Files per forward pass.
        progress : bool
            Show a progress bar.

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
        emb = torch.from_numpy(emb)
        a = emb[[row[os.fspath(p)] for p, _ in pairs]]
        b = emb[[row[os.fspath(q)] for _, q in pairs]]
        scores = self.similarity(a, b).numpy()
        return scores, scores > self.threshold
