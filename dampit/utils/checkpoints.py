"""Crash-safe SpeechBrain checkpoints: atomic saves, checked loads.

SpeechBrain's :class:`~speechbrain.utils.checkpoints.Checkpointer` writes
a checkpoint in place: it creates ``CKPT+<time>``, writes ``CKPT.yaml``
*first*, then one ``<name>.ckpt`` per recoverable. A process killed during
the save (SIGKILL, out of memory, a full disk, a pre-empted node) leaves a
folder that looks complete -- it has ``CKPT.yaml`` -- but whose parameter
files are missing or truncated; being the most recent, it is the one the
next run tries to resume from, and the restart crashes (or, with
``allow_partial_load``, silently resumes half a model).

:class:`AtomicCheckpointer` is a drop-in replacement that

- saves into a hidden temporary folder (``.tmp-CKPT+...``, which no
  checkpointer lists), fsyncs every file, records each parameter file's
  size in ``CKPT.yaml``, and only then renames the folder to
  ``CKPT+...``: a checkpoint folder either appears whole or not at all;
- lists only checkpoints whose ``CKPT.yaml`` parses and whose files match
  the recorded sizes (others are skipped with a warning naming them);
- loads tensors with ``torch.load(weights_only=True)`` (no unpickling of
  arbitrary objects);
- when recovering, falls back to the next candidate checkpoint if one
  fails to load (a legacy half-written folder, a damaged file), with a
  warning naming it, and raises one error listing all of them if none
  loads.

Use it in a recipe YAML exactly like SpeechBrain's::

    checkpointer: !new:dampit.utils.checkpoints.AtomicCheckpointer
        checkpoints_dir: !ref <save_folder>
        recoverables:
            embedding_model: !ref <embedding_model>
"""

import logging
import os
import pathlib
import shutil

import torch
import yaml
from speechbrain.utils.checkpoints import (
    CKPT_PREFIX,
    DEFAULT_LOAD_HOOKS,
    DEFAULT_SAVE_HOOKS,
    METAFNAME,
    PARAMFILE_EXT,
    Checkpoint,
    Checkpointer,
    get_default_hook,
    hook_on_loading_state_dict_checkpoint,
    torch_recovery,
)
from speechbrain.utils.distributed import (
    ddp_barrier,
    ddp_broadcast,
    if_main_process,
)

__all__ = [
    "AtomicCheckpointer",
    "CheckpointLoadError",
    "FILES_KEY",
    "TMP_PREFIX",
    "check_checkpoint_dir",
    "torch_recovery_weights_only",
]

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
FILES_KEY = "dampit-files"


class CheckpointLoadError(RuntimeError):
    """No candidate checkpoint could be loaded; the message lists each one
    with its error."""


def torch_recovery_weights_only(obj, path, end_of_epoch):
    """Load a state dict with ``torch.load(weights_only=True)``.

    Replaces SpeechBrain's ``torch_recovery`` (modules, optimizers,
    schedulers, grad scalers): the same key patching and strict loading,
    but a file holding anything other than tensors and plain containers
    is refused instead of unpickled.

    Arguments
    ---------
    obj : object
        Anything with ``load_state_dict``.
    path : str or os.PathLike
        The ``.ckpt`` file.
    end_of_epoch : bool
        Unused (the signature of SpeechBrain's load hooks).

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "lin.ckpt")
    >>> torch.save(torch.nn.Linear(2, 1).state_dict(), p)
    >>> torch_recovery_weights_only(torch.nn.Linear(2, 1), p, True)
    """
    del end_of_epoch
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = hook_on_loading_state_dict_checkpoint(state)
    try:
        obj.load_state_dict(state, strict=True)
    except TypeError:  # optimizers and schedulers take no ``strict``
        obj.load_state_dict(state)


def _fsync(path):
    """fsync a file or a folder (best effort where folders cannot be)."""
    flags = os.O_RDONLY
    if os.path.isdir(path):
        flags |= getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_checkpoint_dir(path):
    """Read a checkpoint folder and say what is wrong with it, if anything.

    Arguments
    ---------
    path : str or os.PathLike
        A ``CKPT+...`` folder.

    Returns
    -------
    checkpoint : speechbrain.utils.checkpoints.Checkpoint or None
        The checkpoint (``path``, ``meta``, ``paramfiles``) when usable.
    problem : str or None
        Why it is not usable: unreadable ``CKPT.yaml``, or a parameter
        file missing or of another size than recorded at save time.
        Folders written by SpeechBrain's own Checkpointer record no sizes;
        only their ``CKPT.yaml`` is checked.

    Example
    -------
    >>> import tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "CKPT+x"
    >>> d.mkdir()
    >>> meta = "{unixtime: 1, dampit-files: {a.ckpt: 3}}"
    >>> _ = (d / METAFNAME).write_text(meta)
    >>> check_checkpoint_dir(d)[1]
    'a.ckpt is missing'
    """
    path = pathlib.Path(path)
    try:
        with open(path / METAFNAME, encoding="utf-8") as f:
            meta = yaml.load(f, Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return None, f"{METAFNAME} unreadable ({err})"
    if not isinstance(meta, dict) or "unixtime" not in meta:
        return None, f"{METAFNAME} is incomplete: {meta!r}"
    files = meta.get(FILES_KEY)
    if files is not None:
        if not isinstance(files, dict):
            return None, f"{METAFNAME}: {FILES_KEY} is not a mapping"
        for name, size in sorted(files.items()):
            try:
                got = (path / name).stat().st_size
            except OSError:
                return None, f"{name} is missing"
            if got != size:
                return None, f"{name} has {got} bytes, {size} were saved"
    paramfiles = {
        f.stem: f for f in path.iterdir() if f.suffix == PARAMFILE_EXT
    }
    return Checkpoint(path, meta, paramfiles), None


class AtomicCheckpointer(Checkpointer):
    """A SpeechBrain Checkpointer whose saves are atomic.

    Same arguments and methods as
    :class:`speechbrain.utils.checkpoints.Checkpointer`; see the module
    docstring for what differs (temporary folder + rename, size manifest,
    checked listing, ``weights_only`` loading, fallback on a bad
    checkpoint).

    Arguments
    ---------
    checkpoints_dir : str or os.PathLike
        Where the ``CKPT+...`` folders go.
    recoverables : mapping, optional
        Name -> object to save and recover.
    custom_load_hooks : mapping, optional
        Name -> load hook.
    custom_save_hooks : mapping, optional
        Name -> save hook.
    allow_partial_load : bool
        Skip recoverables missing from a checkpoint instead of raising.

    Example
    -------
    >>> import tempfile
    >>> net = torch.nn.Linear(2, 1)
    >>> ckpter = AtomicCheckpointer(tempfile.mkdtemp(), {"net": net})
    >>> ckpt = ckpter.save_checkpoint(meta={"EER": 3.1})
    >>> ckpt.path.name.startswith("CKPT+"), sorted(ckpt.paramfiles)
    (True, ['net'])
    >>> with torch.no_grad():
    ...     _ = net.weight.fill_(0.0)
    >>> ckpter.recover_if_possible(min_key="EER").meta["EER"]
    3.1
    >>> bool(net.weight.abs().sum() > 0)
    True
    """

    def __init__(
        self,
        checkpoints_dir,
        recoverables=None,
        custom_load_hooks=None,
        custom_save_hooks=None,
        allow_partial_load=False,
    ):
        super().__init__(
            checkpoints_dir,
            recoverables=recoverables,
            custom_load_hooks=custom_load_hooks,
            custom_save_hooks=custom_save_hooks,
            allow_partial_load=allow_partial_load,
        )
        self._reported = set()

    # ------------------------------------------------------------ saving

    def save_checkpoint(
        self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO
    ):
        """Save a checkpoint atomically (temporary folder, then rename).

        Arguments
        ---------
        meta : mapping
            Added to ``CKPT.yaml`` (``unixtime``, ``end-of-epoch`` and the
            file sizes under ``dampit-files`` are added too).
        end_of_epoch : bool
            Whether the checkpoint is at the end of an epoch.
        name : str, optional
            A custom name (``CKPT+<name>``); default: a timestamp.
        verbosity : int
            Logging level of the "saved" message.

        Returns
        -------
        speechbrain.utils.checkpoints.Checkpoint or None
            The saved checkpoint (None on processes other than the main).
        """
        final = tmp = None
        if if_main_process():
            self._remove_stale_temporaries()
            if name is None:
                final = self._new_checkpoint_dirpath()
            else:
                final = self._custom_checkpoint_dirpath(name)
            tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        final, tmp = ddp_broadcast((final, tmp), src=0)

        paramfiles = {}
        for key, obj in self.recoverables.items():
            hook = self.custom_save_hooks.get(key)
            if hook is None:
                hook = get_default_hook(obj, DEFAULT_SAVE_HOOKS)
            if hook is None:
                raise RuntimeError(
                    f"Don't know how to save {type(obj)} ('{key}'): register "
                    "a default hook or give a custom save hook."
                )
            hook(obj, tmp / f"{key}{PARAMFILE_EXT}")
            paramfiles[key] = final / f"{key}{PARAMFILE_EXT}"
        ddp_barrier()  # every rank's files are in tmp

        saved_meta = None
        if if_main_process():
            files = {}
            for f in sorted(tmp.iterdir()):
                _fsync(f)
                files[f.name] = f.stat().st_size
            saved_meta = self._save_checkpoint_metafile(
                tmp / METAFNAME,
                {**meta, FILES_KEY: files},
                end_of_epoch,
            )
            _fsync(tmp / METAFNAME)
            _fsync(tmp)
            self._publish(tmp, final)
            ckpt_type = "end-of-epoch" if end_of_epoch else "intra-epoch"
            logger.log(
                verbosity, "Saved an %s checkpoint in %s", ckpt_type, final
            )
        ddp_barrier()
        if if_main_process():
            return Checkpoint(final, saved_meta, paramfiles)
        return None

    def _publish(self, tmp, final):
        """Rename ``tmp`` to ``final``; an older ``final`` (custom names)
        is moved aside first and removed after."""
        old = None
        if final.exists():
            old = final.with_name(f"{OLD_PREFIX}{final.name}")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync(self.checkpoints_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _remove_stale_temporaries(self):
        """Delete temporary folders left by a save that was killed, and put
        back a checkpoint moved aside by a killed ``_publish``."""
        for entry in self.checkpoints_dir.iterdir():
            if entry.name.startswith(TMP_PREFIX + CKPT_PREFIX):
                logger.warning(
                    "removing %s, left by a checkpoint save that did not "
                    "finish",
                    entry,
                )
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.startswith(OLD_PREFIX + CKPT_PREFIX):
                target = entry.with_name(entry.name[len(OLD_PREFIX) :])
                if target.exists():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    os.rename(entry, target)

    # ----------------------------------------------------------- listing

    def list_checkpoints(self):
        """List the usable checkpoints; skip (with a warning) broken ones.

        Returns
        -------
        list
            Checkpoint namedtuples (``path``, ``meta``, ``paramfiles``).
        """
        found = []
        for path in self._list_checkpoint_dirs():
            ckpt, problem = check_checkpoint_dir(path)
            if problem is None:
                found.append(ckpt)
            else:
                self._report(path, f"ignoring checkpoint {path}: {problem}")
        return found

    def _report(self, key, msg):
        """Warn once per checkpoint."""
        if key not in self._reported:
            self._reported.add(key)
            logger.warning(msg)

    # ----------------------------------------------------------- loading

    def recover_if_possible(
        self,
        importance_key=None,
        max_key=None,
        min_key=None,
        ckpt_predicate=None,
    ):
        """Load the best usable checkpoint, falling back on failure.

        Candidates are ranked as by SpeechBrain (most recent by default,
        or by ``importance_key`` / ``max_key`` / ``min_key``); one that
        fails to load is reported and the next one is tried.

        Arguments
        ---------
        importance_key : callable, optional
            Higher is better.
        max_key : str, optional
            Meta key whose highest value wins.
        min_key : str, optional
            Meta key whose lowest value wins.
        ckpt_predicate : callable, optional
            Filter on the candidates.

        Returns
        -------
        speechbrain.utils.checkpoints.Checkpoint or None
            The loaded checkpoint, or None when there is none.

        Raises
        ------
        CheckpointLoadError
            When there are candidates and none of them loads.
        """
        candidates = self.find_checkpoints(
            importance_key=importance_key,
            max_key=max_key,
            min_key=min_key,
            ckpt_predicate=ckpt_predicate,
        )
        if not candidates:
            logger.info("Would load a checkpoint here, but none found yet.")
            return None
        failures = []
        for ckpt in candidates:
            try:
                self.load_checkpoint(ckpt)
            except Exception as err:  # any damage: try the next one
                failures.append(f"{ckpt.path}: {type(err).__name__}: {err}")
                self._report(
                    ckpt.path,
                    f"cannot load checkpoint {ckpt.path} ({err}); trying "
                    "the next one",
                )
                continue
            return ckpt
        raise CheckpointLoadError(
            f"none of the {len(candidates)} checkpoint(s) in "
            f"{self.checkpoints_dir} loads:\n  " + "\n  ".join(failures)
        )

    def _call_load_hooks(self, checkpoint):
        """SpeechBrain's hook dispatch, with ``weights_only`` loading for
        every object SpeechBrain would load with ``torch_recovery``."""
        logger.info("Loading a checkpoint from %s", checkpoint.path)
        end_of_epoch = checkpoint.meta["end-of-epoch"]
        for key, obj in self.recoverables.items():
            path = checkpoint.paramfiles.get(key)
            if path is None:
                optional = self.optional_recoverables.get(key)
                if self.allow_partial_load or optional or "dataloader" in key:
                    logger.warning(
                        "%s has no '%s'; skipped", checkpoint.path, key
                    )
                    continue
                raise RuntimeError(
                    f"checkpoint {checkpoint.path} has no file for '{key}'"
                )
            hook = self.custom_load_hooks.get(key)
            if hook is None:
                hook = get_default_hook(obj, DEFAULT_LOAD_HOOKS)
                if hook is torch_recovery:
                    hook = torch_recovery_weights_only
            if hook is None:
                raise RuntimeError(
                    f"Don't know how to load {type(obj)} ('{key}'): register "
                    "a default hook or give a custom load hook."
                )
            hook(obj, path, end_of_epoch)
