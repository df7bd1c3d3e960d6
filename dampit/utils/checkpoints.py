"""Crash-safe SpeechBrain checkpoints: atomic saves, checked loads.

SpeechBrain's Checkpointer writes ``CKPT.yaml`` first, then the parameter
files: a save killed half-way leaves a checkpoint that looks whole.
``AtomicCheckpointer`` (a drop-in replacement) saves into ``.tmp-CKPT+...``,
which no checkpointer lists, records each file's size in ``CKPT.yaml``,
fsyncs and renames; it lists only checkpoints whose files match, loads
tensors with ``weights_only=True``, falls back to the next candidate when
one does not load, and reports a failed save (full disk, read-only folder)
as one error naming the folder.
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
    METAFNAME,
    PARAMFILE_EXT,
    Checkpoint,
    Checkpointer,
    get_default_hook,
    hook_on_loading_state_dict_checkpoint,
    torch_recovery,
)
from speechbrain.utils.distributed import ddp_barrier, if_main_process

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
FILES_KEY = "dampit-files"


class CheckpointLoadError(RuntimeError):
    """No candidate checkpoint loads; the message lists each one."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (full disk, no permission)."""


def torch_recovery_weights_only(obj, path, end_of_epoch):
    """SpeechBrain's ``torch_recovery`` with ``torch.load(weights_only=True)``.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "lin.ckpt")
    >>> torch.save(torch.nn.Linear(2, 1).state_dict(), p)
    >>> torch_recovery_weights_only(torch.nn.Linear(2, 1), p, True)
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = hook_on_loading_state_dict_checkpoint(state)
    try:
        obj.load_state_dict(state, strict=True)
    except TypeError:  # optimizers and schedulers take no ``strict``
        obj.load_state_dict(state)


def _fsync(path):
    """fsync a file or a folder."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_checkpoint_dir(path):
    """A checkpoint folder and what is wrong with it, if anything.

    Returns
    -------
    checkpoint : Checkpoint or None
        When usable.
    problem : str or None
        Unreadable ``CKPT.yaml``, or a file missing or of another size
        than saved (SpeechBrain's own folders record no sizes).

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
        meta = yaml.safe_load((path / METAFNAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return None, f"{METAFNAME} unreadable ({err})"
    if not isinstance(meta, dict) or "unixtime" not in meta:
        return None, f"{METAFNAME} is incomplete: {meta!r}"
    for name, size in sorted(dict(meta.get(FILES_KEY) or {}).items()):
        got = (path / name).stat().st_size if (path / name).exists() else None
        if got is None:
            return None, f"{name} is missing"
        if got != size:
            return None, f"{name} has {got} bytes, {size} were saved"
    files = {f.stem: f for f in path.iterdir() if f.suffix == PARAMFILE_EXT}
    return Checkpoint(path, meta, files), None


class AtomicCheckpointer(Checkpointer):
    """SpeechBrain's Checkpointer with atomic saves and checked loads.

    Same arguments and methods as SpeechBrain's (see the module docstring).

    Example
    -------
    >>> import tempfile
    >>> net = torch.nn.Linear(2, 1)
    >>> ckpter = AtomicCheckpointer(tempfile.mkdtemp(), {"net": net})
    >>> ckpt = ckpter.save_checkpoint(meta={"EER": 3.1})
    >>> ckpt.path.name.startswith("CKPT+"), sorted(ckpt.paramfiles)
    (True, ['net'])
    >>> ckpter.recover_if_possible(min_key="EER").meta["EER"]
    3.1
    """

    def _new_checkpoint_dirpath(self):
        final = super()._new_checkpoint_dirpath()
        return final.with_name(TMP_PREFIX + final.name)

    def _custom_checkpoint_dirpath(self, name):
        return self.checkpoints_dir / f"{TMP_PREFIX}{CKPT_PREFIX}+{name}"

    def save_checkpoint(
        self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO
    ):
        """SpeechBrain's save into a temporary folder, then a rename."""
        if if_main_process():
            for old in self.checkpoints_dir.glob(TMP_PREFIX + "*"):
                logger.warning("removing %s, left by a killed save", old)
                shutil.rmtree(old, ignore_errors=True)
        try:
            ckpt = super().save_checkpoint(meta, end_of_epoch, name, 0)
            ddp_barrier()
            if ckpt is None:  # not the main process
                return None
            tmp = ckpt.path
            sizes = {}
            for f in sorted(tmp.iterdir()):
                _fsync(f)
                sizes[f.name] = f.stat().st_size
            del sizes[METAFNAME]
            saved = self._save_checkpoint_metafile(
                tmp / METAFNAME, {**meta, FILES_KEY: sizes}, end_of_epoch
            )
            _fsync(tmp / METAFNAME)
            final = tmp.with_name(tmp.name[len(TMP_PREFIX) :])
            if final.exists():  # a custom name saved again
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync(self.checkpoints_dir)
        except (OSError, RuntimeError) as err:
            torch_io = "inline_container" in str(err) or "write" in str(err)
            if not (isinstance(err, OSError) or torch_io):
                raise  # a bug, not the disk
            free = shutil.disk_usage(self.checkpoints_dir).free // 2**20
            why = getattr(err, "strerror", None) or "write failed"
            raise CheckpointSaveError(
                f"cannot save a checkpoint in {self.checkpoints_dir} "
                f"({free} MiB free): {why}"
            ) from err
        logger.log(verbosity, "Saved a checkpoint in %s", final)
        files = {k: final / p.name for k, p in ckpt.paramfiles.items()}
        return Checkpoint(final, saved, files)

    def list_checkpoints(self):
        """The usable checkpoints; broken ones are skipped with a warning."""
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
        reported = self.__dict__.setdefault("_reported", set())
        if key not in reported:
            reported.add(key)
            logger.warning(msg)

    def recover_if_possible(
        self,
        importance_key=None,
        max_key=None,
        min_key=None,
        ckpt_predicate=None,
    ):
        """Load the best candidate; one that fails is reported, the next
        tried; ``CheckpointLoadError`` when none loads."""
        candidates = self.find_checkpoints(
            importance_key, max_key, min_key, ckpt_predicate
        )
        failures = []
        for ckpt in candidates:
            try:
                self.load_checkpoint(ckpt)
                return ckpt
            except Exception as err:  # any damage: try the next one
                failures.append(f"{ckpt.path}: {type(err).__name__}: {err}")
                self._report(ckpt.path, f"cannot load {failures[-1]}")
        if failures:
            raise CheckpointLoadError(
                f"none of the {len(failures)} checkpoint(s) in "
                f"{self.checkpoints_dir} loads:\n  " + "\n  ".join(failures)
            )
        logger.info("no checkpoint in %s yet", self.checkpoints_dir)
        return None

    def _call_load_hooks(self, checkpoint):
        """SpeechBrain's loading, ``weights_only`` for its torch objects."""
        for key, obj in self.recoverables.items():
            if get_default_hook(obj, DEFAULT_LOAD_HOOKS) is torch_recovery:
                self.custom_load_hooks.setdefault(
                    key, torch_recovery_weights_only
                )
        super()._call_load_hooks(checkpoint)
