"""A score-normalisation cohort stored in a model folder.

AS-norm (:func:`dampit.metrics.asnorm.as_norm`) scores each side of a
trial against a cohort of other speakers and normalises the trial's cosine
by the mean and standard deviation of the top :data:`~dampit.metrics.
asnorm.TOP_K` (300) cohort scores of each side (all of them when the
cohort is smaller: S-norm). A model folder can hold such a cohort: one
vector per speaker, the mean of the speaker's unit-length embeddings
scaled to unit length (:func:`speaker_means`), made with the folder's own
model by ``dampit-cohort``.

:func:`write_cohort` stores it as ``cohort.npy`` (NumPy's format, version
1.0, little-endian float16 ``[n, D]``) and records it in
``dampit_export.json`` under ``cohort``: ``speakers`` (n), ``emb_dim``
(D), ``dtype``, the file's ``sha256``, the ``model_fingerprint`` of the
model that made it (:func:`dampit.inference.profiles.model_fingerprint`),
``source`` and ``created``. It writes holding the folder's output lock,
the file and then the JSON, each through a temporary file renamed over the
old one.

:func:`read_cohort` (``load_model`` calls it) reads it back checked, each
refusal one line naming the file: the record's values within
:data:`dampit.inference.folder_checks.BOUNDS`, ``emb_dim`` the model's
embedding size, the fingerprint the loaded model's, the file at most
:data:`~dampit.inference.folder_checks.MAX_COHORT_BYTES`, its sha256 the
recorded one, read without pickles, a C-ordered float16
``(speakers, emb_dim)`` array of finite values. :func:`normalise_scores`
AS-normalises trial scores with the loaded cohort.
"""

import datetime
import hashlib
import io
import json
import os
import re

import numpy as np

from dampit.inference.folder_checks import (
    MAX_COHORT_BYTES,
    SPEC_FILE,
    ModelFolderError,
    check_value,
    one_line,
    read_json,
)
from dampit.inference.profiles import model_fingerprint
from dampit.metrics.asnorm import TOP_K, as_norm
from dampit.utils.atomic import atomic_write_bytes, atomic_write_text
from dampit.utils.file_lock import output_lock

__all__ = [
    "check_target",
    "normalise_scores",
    "read_cohort",
    "require_cohort",
    "speaker_means",
    "write_cohort",
]

COHORT_FILE = "cohort.npy"
#: The key of ``dampit_export.json`` that records the cohort.
RECORD = "cohort"
RECORD_KEYS = (
    "speakers",
    "emb_dim",
    "dtype",
    "sha256",
    "model_fingerprint",
    "source",
    "created",
)
#: How the vectors are stored (NumPy's ``dtype.str``).
STORED_DTYPE = "<f2"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def speaker_means(embeddings, speakers):
    """One unit vector per speaker: the direction of the mean of its
    utterances' unit-length embeddings.

    Arguments
    ---------
    embeddings : array-like
        ``[N, D]`` embeddings.
    speakers : list of str
        ``[N]`` the speaker of each.

    Returns
    -------
    names : list of str
        The speakers, sorted.
    vectors : numpy.ndarray
        ``[n, D]`` float32, row ``k`` of ``names[k]``.

    Example
    -------
    >>> names, vec = speaker_means([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]],
    ...                            ["b", "b", "a"])
    >>> names, vec.astype(float).round(4).tolist()
    (['a', 'b'], [[1.0, 0.0], [0.3162, 0.9487]])
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or len(emb) != len(speakers) or not len(emb):
        raise ValueError(
            f"{emb.shape} embeddings for {len(speakers)} speaker labels"
        )
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if not np.isfinite(emb).all() or not (norms > 0).all():
        raise ValueError("zero or non-finite embeddings")
    labels = np.asarray(speakers, dtype=str)
    names, rows = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(names), emb.shape[1]))
    np.add.at(sums, rows, emb / norms)
    lengths = np.linalg.norm(sums, axis=1, keepdims=True)
    if not (lengths > 0).all():
        bad = names[np.flatnonzero(lengths[:, 0] == 0)[0]]
        raise ValueError(f"speaker {bad}: the embeddings' mean is zero")
    return names.tolist(), (sums / lengths).astype(np.float32)


def _npy_bytes(vectors, model):
    """``cohort.npy``'s content for ``[n, D]`` vectors, checked, and its
    shape."""
    vec = np.asarray(vectors, dtype=np.float32)
    n = len(vec) if vec.ndim == 2 else 0
    if vec.ndim != 2 or vec.shape[1] != model.embedding_size:
        raise ValueError(
            f"cohort of shape {vec.shape}: needs [n, {model.embedding_size}] "
            "(the model's embedding size)"
        )
    check_value("cohort", "speakers", n)
    half = vec.astype(STORED_DTYPE)
    if not np.isfinite(half).all():
        raise ValueError("the cohort has values that are not finite float16")
    buffer = io.BytesIO()
    np.save(buffer, half, allow_pickle=False)
    data = buffer.getvalue()
    if len(data) > MAX_COHORT_BYTES:
        raise ValueError(
            f"a cohort of {vec.shape} takes {len(data)} bytes, more than "
            f"{MAX_COHORT_BYTES}"
        )
    return data, half.shape


def check_target(folder):
    """The JSON of a model folder :func:`write_cohort` can write into: a
    folder that ``dampit-export`` wrote, where this process can create
    files, and whose ``cohort.npy``, if any, is the one its JSON records.

    Example
    -------
    >>> import tempfile
    >>> try:
    ...     check_target(tempfile.mkdtemp(prefix="m"))
    ... except ModelFolderError as err:
    ...     print(str(err).split(": ", 1)[1])
    no dampit_export.json: a cohort goes into a folder dampit-export wrote
    """
    folder = os.path.abspath(os.fspath(folder))
    spec_path = os.path.join(folder, SPEC_FILE)
    path = os.path.join(folder, COHORT_FILE)
    if not os.path.isfile(spec_path):
        raise ModelFolderError(
            f"{folder}: no {SPEC_FILE}: a cohort goes into a folder "
            "dampit-export wrote"
        )
    spec = read_json(spec_path)
    if not isinstance(spec, dict):
        raise ModelFolderError(f"{spec_path}: not a JSON object")
    if os.path.lexists(path) and spec.get(RECORD) is None:
        raise ModelFolderError(
            f"{path} exists and {SPEC_FILE} records no cohort: nothing replaced"
        )
    if not os.access(folder, os.W_OK):
        raise ModelFolderError(f"{folder}: not writable")
    return spec


def write_cohort(model, vectors, source):
    """Store a cohort in the model's folder (replacing the one there).

    Arguments
    ---------
    model : DampitSpeakerRecognition
        Loaded with :func:`~dampit.inference.api.load_model` from a folder
        that ``dampit-export`` wrote (``model.folder``).
    vectors : array-like
        ``[n, D]`` cohort vectors (:func:`speaker_means`), 2 <= n.
    source : str
        What they were made from (``source`` in the record).

    Returns
    -------
    dict
        The ``cohort`` record written into ``dampit_export.json``.

    Example
    -------
    >>> import tempfile
    >>> from dampit.inference.api import load_model
    >>> from dampit.inference.model_files import write_model_files
    >>> from dampit.lobes.resnet import SEResNet
    >>> kw = dict(depth=18, base_width=4, emb_dim=8)
    >>> mods = {k: {"class": f"dampit.lobes.{c}", "kwargs": {}} for k, c in [
    ...     ("compute_features", "features.Features"),
    ...     ("mean_var_norm", "features.CropNormalization"),
    ...     ("embedding_model", "resnet.SEResNet")]}
    >>> mods["embedding_model"]["kwargs"] = kw
    >>> d = tempfile.mkdtemp()
    >>> _ = write_model_files(d, mods, {"embedding_model":
    ...                       SEResNet(**kw).state_dict()}, 0.4, 16000)
    >>> record = write_cohort(load_model(d), np.eye(3, 8), "by hand")
    >>> record["speakers"], load_model(d).cohort.shape
    (3, (3, 8))
    """
    data, shape = _npy_bytes(vectors, model)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    record = {
        "speakers": shape[0],
        "emb_dim": shape[1],
        "dtype": "float16",
        "sha256": hashlib.sha256(data).hexdigest(),
        "model_fingerprint": model_fingerprint(model),
        "source": str(source),
        "created": now,
    }
    folder = os.path.abspath(os.fspath(model.folder))
    spec_path = os.path.join(folder, SPEC_FILE)
    path = os.path.join(folder, COHORT_FILE)
    with output_lock(folder):  # one writer from the read to the write
        spec = check_target(folder)
        atomic_write_bytes(path, data)
        spec[RECORD] = record
        atomic_write_text(spec_path, json.dumps(spec, indent=2))
    return record


def _check_record(where, record, model):
    """``(speakers, emb_dim, sha256)`` of a ``cohort`` record, checked."""
    if not isinstance(record, dict) or sorted(record) != sorted(RECORD_KEYS):
        raise ModelFolderError(
            f"{where}: needs an object of {', '.join(RECORD_KEYS)}"
        )
    n = check_value(where, "speakers", record["speakers"])
    dim = check_value(where, "emb_dim", record["emb_dim"])
    if dim != model.embedding_size:
        raise ModelFolderError(
            f"{where}: emb_dim {dim}, but the model's embeddings have "
            f"{model.embedding_size} values"
        )
    if 2 * n * dim > MAX_COHORT_BYTES:
        raise ModelFolderError(
            f"{where}: {n} x {dim} float16 values are more than "
            f"{MAX_COHORT_BYTES} bytes"
        )
    if record["dtype"] != "float16":
        raise ModelFolderError(
            f"{where}: dtype {one_line(repr(record['dtype']), 40)} is not "
            "'float16'"
        )
    sha = record["sha256"]
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ModelFolderError(f"{where}: sha256 is not 64 hex digits")
    if record["model_fingerprint"] != model_fingerprint(model):
        raise ModelFolderError(
            f"{where}: made with other weights than the folder's (another "
            "model_fingerprint): make it again with dampit-cohort"
        )
    return n, dim, sha


def _read_npy(path, n, dim, sha):
    """The ``[n, dim]`` float16 array of ``path``, checked before and
    after it is read."""
    try:
        size = os.path.getsize(path)
        if size > MAX_COHORT_BYTES:
            raise ModelFolderError(f"{path}: {size} bytes, more than a cohort")
        with open(path, "rb") as f:
            data = f.read()
        head = io.BytesIO(data)
        version = np.lib.format.read_magic(head)
        if version != (1, 0):
            raise ValueError(f"NumPy format version {version}, not (1, 0)")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
    except (OSError, ValueError) as err:
        if isinstance(err, ModelFolderError):
            raise
        raise ModelFolderError(
            f"{path}: not a cohort file: {one_line(err)}"
        ) from None
    if dtype.str != STORED_DTYPE or fortran or shape != (n, dim):
        raise ModelFolderError(
            f"{path}: holds {dtype.str} {shape}; the record says float16 "
            f"{STORED_DTYPE} ({n}, {dim})"
        )
    if hashlib.sha256(data).hexdigest() != sha:
        raise ModelFolderError(f"{path}: its sha256 is not the recorded one")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:
        raise ModelFolderError(f"{path}: {one_line(err)}") from None
    if not np.isfinite(array).all():
        raise ModelFolderError(f"{path}: NaN or inf in the cohort")
    return array.astype(np.float32)


def read_cohort(model):
    """The cohort stored in ``model.folder``, checked, or None.

    Arguments
    ---------
    model : DampitSpeakerRecognition
        A loaded model (``folder``, ``embedding_size`` and weights).

    Returns
    -------
    numpy.ndarray or None
        ``[n, D]`` float32; None when the folder records no cohort.

    Raises
    ------
    ModelFolderError
        One line naming the file, for any value out of bounds or not as
        recorded (see the module's description).
    """
    spec_path = os.path.join(os.fspath(model.folder), SPEC_FILE)
    if not os.path.isfile(spec_path):
        return None
    spec = read_json(spec_path)
    record = spec.get(RECORD) if isinstance(spec, dict) else None
    if record is None:
        return None
    n, dim, sha = _check_record(f"{spec_path}: {RECORD}", record, model)
    return _read_npy(os.path.join(model.folder, COHORT_FILE), n, dim, sha)


def require_cohort(model):
    """``model.cohort``; a model without one raises ModelFolderError.

    Example
    -------
    >>> from types import SimpleNamespace
    >>> try:
    ...     require_cohort(SimpleNamespace(folder="m", cohort=None))
    ... except ModelFolderError as err:
    ...     print(err)
    m: no score-normalisation cohort stored (dampit-cohort makes one)
    """
    cohort = getattr(model, "cohort", None)
    if cohort is None:
        raise ModelFolderError(
            f"{model.folder}: no score-normalisation cohort stored "
            "(dampit-cohort makes one)"
        )
    return cohort


def normalise_scores(
    model, scores, embeddings, enrol_idx, test_idx, top_k=TOP_K
):
    """AS-norm of trial scores with the model's stored cohort.

    Arguments
    ---------
    model : DampitSpeakerRecognition
        A model with a cohort (:func:`require_cohort`).
    scores : array-like
        ``[T]`` cosine scores of the trials.
    embeddings : array-like
        ``[U, D]`` embeddings of the trials' utterances.
    enrol_idx, test_idx : array-like of int
        ``[T]`` rows of ``embeddings``.
    top_k : int
        Cohort scores kept per utterance (:data:`~dampit.metrics.asnorm.
        TOP_K`; all of them when the cohort is smaller).

    Returns
    -------
    numpy.ndarray
        ``[T]`` float64 normalised scores (not on the cosine's scale).

    Example
    -------
    >>> from types import SimpleNamespace
    >>> rng = np.random.default_rng(0)
    >>> model = SimpleNamespace(folder="m", cohort=rng.normal(size=(9, 4)))
    >>> emb = rng.normal(size=(2, 4))
    >>> cos = emb[0] @ emb[1] / np.linalg.norm(emb[0]) / np.linalg.norm(emb[1])
    >>> normalise_scores(model, [cos], emb, [0], [1]).shape
    (1,)
    """
    cohort = require_cohort(model)
    return as_norm(scores, enrol_idx, test_idx, embeddings, cohort, top_k)
