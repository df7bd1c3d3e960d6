"""Speaker profiles: enrolment and open-set identification.

A profile store is an embedding store (:mod:`dampit.metrics.
embedding_store`, replaced as one unit, so a crash leaves the old profiles
or the new ones): ``ids.txt`` the speaker names, ``embeddings.npy`` ``[P,
D]`` each speaker's profile, ``counts.txt`` the number of utterances in
each, and ``profiles.json`` the fingerprint of the model that made them
(:func:`model_fingerprint`, a hash of its weights). A profile is the mean
of its utterances' unit-length embeddings; with the count, utterances
added later give the same profile as enrolling all of them at once. A
store is refused with another model.

:func:`identify_files` scores each file against every profile (cosine
with the profile's direction) and names the best speaker, or
:data:`UNKNOWN` when the best score is not above the threshold (the
model's, by default: ``score > threshold`` is a match, as in
verification). Every change goes through :func:`_update`, which reads the
store, applies the change and writes the store back.
"""

import contextlib
import hashlib
import json
import os

import numpy as np
import torch

from dampit.inference.embedding_store import (
    EMBEDDINGS_FILE,
    IDS_FILE,
    EmbeddingStore,
    EmbeddingStoreWriter,
    check_id,
)
from dampit.utils.file_lock import output_lock

__all__ = [
    "ProfileError",
    "Profiles",
    "enroll_files",
    "identify_files",
    "model_fingerprint",
    "remove_profile",
    "scores_against",
]

COUNTS_FILE, META_FILE = "counts.txt", "profiles.json"
UNKNOWN = "unknown"
#: The modules that make an embedding (what the fingerprint covers).
EMBEDDING_MODULES = ("compute_features", "mean_var_norm", "embedding_model")


class ProfileError(ValueError):
    """A bad profile store, speaker name or model; one line naming it."""


def model_fingerprint(model):
    """``sha256:<hex>`` of the weights and buffers of the modules that make
    a model's embeddings, and its sample rate.

    Example
    -------
    >>> from types import SimpleNamespace
    >>> net = torch.nn.Linear(2, 2)
    >>> a = SimpleNamespace(mods={"embedding_model": net}, sample_rate=16000)
    >>> fp = model_fingerprint(a)
    >>> with torch.no_grad():
    ...     _ = net.weight.add_(1e-3)
    >>> fp.startswith("sha256:"), fp == model_fingerprint(a)
    (True, False)
    """
    digest = hashlib.sha256(f"sample_rate {model.sample_rate}\n".encode())
    for name in EMBEDDING_MODULES:
        if name not in model.mods:
            continue
        state = model.mods[name].state_dict()
        for key in sorted(state):
            value = state[key].detach().cpu().contiguous()
            head = f"{name}.{key} {value.dtype} {tuple(value.shape)}\n"
            digest.update(head.encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy())
    return f"sha256:{digest.hexdigest()}"


def _check_name(name):
    """Refuse a name that ``ids.txt`` cannot hold (:func:`check_id`: one
    line, not padded), with a tab (identification's output is
    tab-separated), or :data:`UNKNOWN`."""
    with contextlib.suppress(ValueError):
        check_id(name)
        if "\t" not in name and name != UNKNOWN:
            return
    raise ProfileError(
        f"speaker name {name!r}: needs a non-empty name without tabs, "
        f"line breaks or outer spaces, other than {UNKNOWN!r}"
    )


class Profiles:
    """The profiles of a store folder (empty when it does not exist).

    Attributes: ``folder``, ``names`` (list), ``sums`` (``[P, D]`` float64
    sums of unit-length embeddings), ``counts`` (``[P]`` int),
    ``fingerprint`` (None for a new store).

    Example
    -------
    >>> import tempfile
    >>> p = Profiles(os.path.join(tempfile.mkdtemp(), "store"))
    >>> p.add("alice", np.array([[3.0, 4.0], [0.0, 2.0]]))
    >>> p.names, p.counts.tolist(), p.means().tolist()
    (['alice'], [2], [[0.3, 0.9]])
    """

    def __init__(self, folder):
        self.folder = os.path.abspath(os.fspath(folder))
        self.names, self.counts = [], np.zeros(0, dtype=np.int64)
        self.sums, self.fingerprint = None, None
        if not os.path.exists(self.folder):
            return
        meta = os.path.join(self.folder, META_FILE)
        if not os.path.isfile(meta):
            raise ProfileError(
                f"{self.folder} exists and is not a profile store (no "
                f"{META_FILE}); give a new folder"
            )
        try:
            with open(meta, encoding="utf-8") as f:
                info = json.load(f)
            store = EmbeddingStore(self.folder, mmap=False)
            with open(os.path.join(self.folder, COUNTS_FILE)) as f:
                counts = [int(line) for line in f.read().split()]
        except (OSError, ValueError) as err:
            raise ProfileError(f"profile store {self.folder}: {err}") from None
        means = np.asarray(store.embeddings, dtype=np.float64)
        fp = info.get("model_fingerprint") if isinstance(info, dict) else None
        if (
            not isinstance(fp, str)
            or means.ndim != 2
            or len(counts) != len(store.ids)
            or any(c < 1 for c in counts)
            or not np.isfinite(means).all()
        ):
            raise ProfileError(
                f"profile store {self.folder} is inconsistent ({META_FILE}, "
                f"{COUNTS_FILE}, {IDS_FILE}, {EMBEDDINGS_FILE})"
            )
        self.names, self.fingerprint = list(store.ids), fp
        self.counts = np.asarray(counts, dtype=np.int64)
        self.sums = means * self.counts[:, None]

    def check_model(self, fingerprint):
        """Refuse profiles made with another model."""
        if self.fingerprint not in (None, fingerprint):
            raise ProfileError(
                f"profile store {self.folder} was made with another model "
                f"({self.fingerprint[:19]}..., this one "
                f"{fingerprint[:19]}...): enrol into a new store"
            )

    def means(self):
        """``[P, D]`` profiles: the mean unit-length embeddings."""
        return self.sums / self.counts[:, None]

    def add(self, name, embeddings, replace=False):
        """Add ``[N, D]`` embeddings to ``name``'s profile (created if
        new; started afresh with ``replace``)."""
        _check_name(name)
        emb = np.asarray(embeddings, dtype=np.float64)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if emb.ndim != 2 or not len(emb) or not (norms > 0).all():
            raise ProfileError(f"{name}: no, zero or non-finite embeddings")
        if self.sums is not None and emb.shape[1] != self.sums.shape[1]:
            raise ProfileError(
                f"{name}: embeddings of size {emb.shape[1]}, the store "
                f"{self.folder} holds size {self.sums.shape[1]}"
            )
        unit = (emb / norms).sum(axis=0)
        if self.sums is None:
            self.sums = np.zeros((0, emb.shape[1]))
        if name in self.names and not replace:
            k = self.names.index(name)
            self.sums[k] += unit
            self.counts[k] += len(emb)
            return
        if name in self.names:
            self.remove(name)
        self.names.append(name)
        self.sums = np.vstack([self.sums, unit[None]])
        self.counts = np.append(self.counts, len(emb))

    def remove(self, name):
        """Remove ``name``'s profile (a missing name is an error)."""
        if name not in self.names:
            raise ProfileError(
                f"no profile {name!r} in {self.folder} (has {len(self.names)})"
            )
        k = self.names.index(name)
        self.names.pop(k)
        self.sums = np.delete(self.sums, k, axis=0)
        self.counts = np.delete(self.counts, k)

    def save(self, fingerprint):
        """Write the store (replacing the folder as one unit)."""
        files = {
            COUNTS_FILE: "".join(f"{c}\n" for c in self.counts.tolist()),
            META_FILE: json.dumps(
                {"format": 1, "model_fingerprint": fingerprint}, indent=2
            ),
        }
        means = self.means()
        with EmbeddingStoreWriter(
            self.folder, len(means), means.shape[1:]
        ) as w:
            if self.names:  # a store may hold no profile
                w.add_batch(self.names, means)
            for name, text in files.items():
                w.add_file(name, text)
        self.fingerprint = fingerprint


def _update(folder, fingerprint, change):
    """Read the store at ``folder``, check its model, ``change(profiles)``,
    write it back: every write to a store passes here, holding the
    store's output lock from the read to the write (a second writer is
    refused in one line, so no enrolment is lost)."""
    with output_lock(folder):
        profiles = Profiles(folder)
        profiles.check_model(fingerprint)
        change(profiles)
        profiles.save(fingerprint)
    return profiles


def enroll_files(
    model, folder, speakers, replace=False, batch_size=16, progress=False
):
    """Enrol audio files as (more of) speakers' profiles, in one write.

    Arguments
    ---------
    model : DampitSpeakerRecognition
        From :func:`dampit.inference.api.load_model`.
    folder : str or os.PathLike
        The profile store (created when missing).
    speakers : dict
        Speaker name -> list of audio paths or ``(id, path)`` items (as
        ``embed_files`` takes them; the IDs are not used, so that two
        speakers' files may share names).
    replace : bool
        Start each named profile afresh instead of adding to it.
    batch_size : int
        Files per forward pass.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Profiles
        The store as written.

    Example
    -------
    >>> import tempfile, soundfile
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
    >>> wavs = [os.path.join(d, f"{k}.wav") for k in range(3)]
    >>> for k, w in enumerate(wavs):
    ...     t = np.arange(8000) / 16000
    ...     soundfile.write(w, 0.1 * np.sin(400 * np.pi * (k + 1) * t), 16000)
    >>> store = os.path.join(d, "profiles")
    >>> p = enroll_files(load_model(d), store, {"a": wavs[:2], "b": wavs[2:]})
    >>> p.names, p.counts.tolist()
    (['a', 'b'], [2, 1])
    """
    fingerprint = model_fingerprint(model)
    Profiles(folder).check_model(fingerprint)  # before any embedding
    for name, files in speakers.items():
        _check_name(name)
        if not files:
            raise ProfileError(f"{name}: no files to enrol")
    names = [name for name, files in speakers.items() for _ in files]
    paths = [item for files in speakers.values() for item in files]
    paths = [p if isinstance(p, (str, os.PathLike)) else p[1] for p in paths]
    # IDs name nothing in a profile: the row numbers, unique
    items = [(str(k), path) for k, path in enumerate(paths)]
    _, emb = model.embed_files(items, batch_size, progress)
    rows = np.array(names)

    def change(profiles):
        for name in speakers:
            profiles.add(name, emb[rows == name], replace)

    return _update(folder, fingerprint, change)


def remove_profile(model, folder, name):
    """Remove ``name``'s profile from the store made with ``model``.

    Returns
    -------
    Profiles
        The store as written.
    """
    if not os.path.isdir(os.fspath(folder)):
        raise ProfileError(f"profile store not found: {folder}")
    return _update(folder, model_fingerprint(model), lambda p: p.remove(name))


def scores_against(profiles, embeddings):
    """``[N, P]`` cosine scores of embeddings against profiles' directions.

    Example
    -------
    >>> scores_against(np.array([[2.0, 0.0]]), np.array([[1.0, 1.0]]))
    array([[0.70710678]])
    """
    p = np.asarray(profiles, dtype=np.float64)
    e = np.asarray(embeddings, dtype=np.float64)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    return (e / np.linalg.norm(e, axis=1, keepdims=True)) @ p.T


def identify_files(
    model,
    folder,
    files,
    top_k=3,
    threshold=None,
    batch_size=16,
    progress=False,
):
    """Identify each audio file among the store's speakers (open set).

    Arguments
    ---------
    model : DampitSpeakerRecognition
        The model the store was made with.
    folder : str or os.PathLike
        The profile store.
    files : list
        Audio paths or ``(id, path)`` items.
    top_k : int
        Speakers listed per file.
    threshold : float, optional
        Defaults to ``model.threshold``.
    batch_size, progress
        As :meth:`~dampit.inference.api.DampitSpeakerRecognition.
        embed_files`.

    Returns
    -------
    list of dict
        Per file, in order: ``id``, ``speaker`` (the best one, or
        :data:`UNKNOWN` when its score is not above the threshold) and
        ``top`` (``(name, score)`` pairs, best first).
    """
    profiles = Profiles(folder)
    if not profiles.names:
        raise ProfileError(f"no profiles in {profiles.folder}: enrol first")
    profiles.check_model(model_fingerprint(model))
    threshold = model.threshold if threshold is None else float(threshold)
    ids, emb = model.embed_files(list(files), batch_size, progress)
    scores = scores_against(profiles.means(), emb)
    results = []
    for uid, row in zip(ids, scores):
        order = np.argsort(-row, kind="stable")[:top_k]
        top = [(profiles.names[k], float(row[k])) for k in order]
        best = top[0][0] if top[0][1] > threshold else UNKNOWN
        results.append({"id": uid, "speaker": best, "top": top})
    return results
