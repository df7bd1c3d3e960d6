"""A SpeechBrain ``Pretrainer`` whose paths are relative to the model folder.

SpeechBrain's ``Pretrainer`` fetches every loadable either from an explicit
path or from ``<source>/<name>.ckpt``; a bare file name in ``paths`` is read
relative to the *current directory*. An exported dampit model keeps its
label encoder as ``label_encoder.txt`` (SpeechBrain's own convention for
that file), so :class:`FolderPretrainer` reads such bare names relative to
the ``source`` given to ``from_hparams``. The folder stays relocatable and
loads without overrides and without the network::

    EncoderClassifier.from_hparams(source="path/to/model", savedir=tmp)
"""

import os

from speechbrain.utils.parameter_transfer import Pretrainer

__all__ = ["FolderPretrainer"]


class FolderPretrainer(Pretrainer):
    """``Pretrainer`` reading bare file names in ``paths`` from the source.

    Arguments
    ---------
    *args : tuple
        Passed to ``speechbrain.utils.parameter_transfer.Pretrainer``.
    **kwargs : dict
        Passed to ``speechbrain.utils.parameter_transfer.Pretrainer``.

    Example
    -------
    >>> import os, tempfile, torch
    >>> src, save = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> model = torch.nn.Linear(2, 2)
    >>> torch.save(model.state_dict(), os.path.join(src, "weights.bin"))
    >>> fresh = torch.nn.Linear(2, 2)
    >>> pt = FolderPretrainer(
    ...     collect_in=save, loadables={"model": fresh},
    ...     paths={"model": "weights.bin"})
    >>> _ = pt.collect_files(default_source=src)
    >>> pt.load_collected()
    >>> bool(torch.equal(fresh.weight, model.weight))
    True
    """

    def collect_files(self, default_source=None, **kwargs):
        """Resolve bare file names against ``default_source``, then fetch.

        Arguments
        ---------
        default_source : str or os.PathLike, optional
            The model folder (``from_hparams``' ``source``).
        **kwargs : dict
            Passed to ``Pretrainer.collect_files``.

        Returns
        -------
        dict
            Loadable name -> local path.
        """
        if default_source is not None and os.path.isdir(
            os.fspath(default_source)
        ):
            root = os.path.abspath(os.fspath(default_source))
            for name, path in list(self.paths.items()):
                if (
                    isinstance(path, (str, os.PathLike))
                    and "/" not in os.fspath(path)
                    and os.path.isfile(os.path.join(root, os.fspath(path)))
                ):
                    self.paths[name] = os.path.join(root, os.fspath(path))
        return super().collect_files(default_source=default_source, **kwargs)
