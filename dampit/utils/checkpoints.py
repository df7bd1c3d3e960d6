"""Crash-safe SpeechBrain checkpoints: atomic saves, checked loads.

SpeechBrain's Checkpointer writes ``CKPT.yaml`` first, so a killed save
looks whole. ``AtomicCheckpointer`` saves into ``.tmp-CKPT+...`` (listed by
no checkpointer) with each file's size in ``CKPT.yaml``, fsyncs, renames;
it lists only checkpoints whose files match, loads ``weights_only``, falls
back to the next candidate when one does not load, and reports a failed
save (full disk, read-only folder) as one error naming the folder.
"""

import logging
import os
import pathlib
import shutil

import speechbrain.utils.checkpoints as sbc
import torch
import yaml
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from dampit.utils.atomic import fsync

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
FILES_KEY = "dampit-files"


class CheckpointLoadError(RuntimeError):
    """No candidate checkpoint loads; the message lists each one."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (full disk, no permission)."""


def load_weights(path, map_location="cpu"):
    """A checkpoint file's tensors: ``torch.load`` with
    ``weights_only=True`` (a checkpoint runs no pickled code)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def _recovery_weights_only(obj, path, end_of_epoch):
    """SpeechBrain's ``torch_recovery`` with ``weights_only=True``."""
    state = load_weights(path)
    state = sbc.hook_on_loading_state_dict_checkpoint(state)
    try:
        obj.load_state_dict(state, strict=True)
    except TypeError:  # optimizers and schedulers take no ``strict``
        obj.load_state_dict(state)


def check_checkpoint_dir(path):
    """``(Checkpoint, None)`` when usable, else ``(None, problem)``: an
    unreadable ``CKPT.yaml``, or a file missing or of another size than
    saved (SpeechBrain's own folders record no sizes).

    Example
    -------
    >>> import tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "CKPT+x"
    >>> d.mkdir()
    >>> _ = (d / "CKPT.yaml").write_text("{unixtime: 1, dampit-files: {a: 3}}")
    >>> check_checkpoint_dir(d)[1]
    'a is missing'
    """
    path = pathlib.Path(path)
    try:
        meta = yaml.safe_load((path / sbc.METAFNAME).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return None, f"{sbc.METAFNAME} unreadable ({err})"
    if not isinstance(meta, dict) or "unixtime" not in meta:
        return None, f"{sbc.METAFNAME} is incomplete: {meta!r}"
    for name, size in sorted(dict(meta.get(FILES_KEY) or {}).items()):
        if not (path / name).exists():
            return None, f"{name} is missing"
        if (path / name).stat().st_size != size:
            got = (path / name).stat().st_size
            return None, f"{name} has {got} bytes, {size} were saved"
    files = {f.stem: f for f in path.glob("*" + sbc.PARAMFILE_EXT)}
    return sbc.Checkpoint(path, meta, files), None


class AtomicCheckpointer(sbc.Checkpointer):
    """SpeechBrain's Checkpointer with atomic saves and checked loads
    (same arguments and methods; see the module docstring).

    Example
    -------
    >>> import tempfile
    >>> ckpter = AtomicCheckpointer(tempfile.mkdtemp(),
    ...                             {"net": torch.nn.Linear(2, 1)})
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
        return self.checkpoints_dir / f"{TMP_PREFIX}{sbc.CKPT_PREFIX}+{name}"

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, **kw):
        """SpeechBrain's save into a temporary folder, then a rename."""
        leftovers = self.checkpoints_dir.glob(
            TMP_PREFIX + sbc.CKPT_PREFIX + "*"
        )
        if if_main_process():
            for old in leftovers:
                logger.warning("removing %s, left by a killed save", old)
                shutil.rmtree(old, ignore_errors=True)
        try:
            ckpt = super().save_checkpoint(meta, end_of_epoch, name, 0)
            ddp_barrier()
            if ckpt is None:  # not the main process
                ddp_barrier()  # the main process has renamed the folder
                return None
            tmp = ckpt.path
            sizes = {f.name: f.stat().st_size for f in tmp.iterdir()}
            del sizes[sbc.METAFNAME]
            meta = {**meta, FILES_KEY: sizes}
            meta = self._save_checkpoint_metafile(
                tmp / sbc.METAFNAME, meta, end_of_epoch
            )
            for f in tmp.iterdir():
                fsync(f)
            final = tmp.with_name(tmp.name[len(TMP_PREFIX) :])
            shutil.rmtree(final, ignore_errors=True)  # a custom name again
            os.rename(tmp, final)
            fsync(self.checkpoints_dir)
            # Every rank lists the same checkpoints afterwards (the
            # deletions of save_and_keep_only are one collective each).
            ddp_barrier()
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
        logger.info("Saved a checkpoint in %s", final)
        files = {k: final / p.name for k, p in ckpt.paramfiles.items()}
        return sbc.Checkpoint(final, meta, files)

    def list_checkpoints(self):
        """The usable checkpoints; broken ones are skipped with a warning."""
        found = []
        for path in self._list_checkpoint_dirs():
            ckpt, problem = check_checkpoint_dir(path)
            if ckpt:
                found.append(ckpt)
            if problem:  # warned once per folder
                self._report(path, f"ignoring checkpoint {path}: {problem}")
        return found

    def _report(self, key, msg):
        """Warn once per checkpoint."""
        if key not in self.__dict__.setdefault("_reported", set()):
            self._reported.add(key)
            logger.warning(msg)

    def recover_if_possible(self, *args, **kwargs):
        """Load the best candidate; one that fails is reported and the
        next one tried; ``CheckpointLoadError`` when none loads."""
        failures = []
        for ckpt in self.find_checkpoints(*args, **kwargs):
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
        return None

    def _call_load_hooks(self, checkpoint):
        """SpeechBrain's loading, ``weights_only`` for its torch objects."""
        hooks = self.custom_load_hooks
        for key, obj in self.recoverables.items():
            hook = sbc.get_default_hook(obj, sbc.DEFAULT_LOAD_HOOKS)
            if hook is sbc.torch_recovery:
                hooks.setdefault(key, _recovery_weights_only)
        super()._call_load_hooks(checkpoint)
