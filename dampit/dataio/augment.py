"""Additive noise and reverberation from folders of audio files.

This module sits on top of ``speechbrain.augment``: SpeechBrain's
``AddNoise`` (noise at a random SNR) and ``AddReverb`` (convolution with a
measured room impulse response) read their audio through CSV files in
SpeechBrain's extended CSV format (``ID,duration,wav,wav_format,
wav_opts``). ``make_noise_csv`` and ``make_rir_csv`` write those CSVs for
a folder of audio files (searched recursively; the folder is never
modified, unlike ``speechbrain.augment.preparation.write_csv`` with
``max_length``, which deletes the long originals). Long noise recordings
are cut into chunks in a separate folder, because ``AddNoise`` reads
whole files for every utterance of every batch; files at another sample
rate or with several channels are converted there too.

``FolderAugment`` wires both into one module with
``forward(wavs, lengths) -> (wavs, lengths)``, the interface of
``speechbrain.augment.augmenter.Augmenter``, with per-utterance
probabilities: each utterance is reverberated with probability
``reverb_prob`` (by its own RIR) and then gets noise with probability
``noise_prob``. It can run in the training step or in DataLoader workers
(each worker process draws its own noise and RIR order).

Conventions inherited from SpeechBrain (speechbrain 1.1):

- SNR: ``AddNoise`` draws ``snr`` uniformly in ``[snr_low, snr_high]``
  dB and returns ``(1 - a) * clean + noise`` with ``a = 1 / (1 +
  10^(snr / 20))`` and the noise scaled to RMS ``a * rms(clean)``: the
  SNR between the (scaled) speech and the noise is ``snr`` and the output
  level stays close to the input's.
- Reverberation: ``reverberate`` convolves circularly with the RIR
  rotated so that its direct path (largest sample) lands at delay 0, cuts
  RIRs longer than the utterance, and rescales the output to the input's
  mean absolute amplitude (RIRs need no energy normalisation).

In a recipe's YAML::

    augment: !new:dampit.dataio.augment.FolderAugment
        noise_folder: !ref <data_folder_noise>
        rir_folder: !ref <data_folder_rir>
        csv_folder: !ref <save_folder>/augment
        snr_low: 0
        snr_high: 15
        noise_prob: 1.0
        reverb_prob: 0.5

or, with SpeechBrain's own ``Augmenter`` (one RIR for the whole batch)::

    noise_csv: !apply:dampit.dataio.augment.make_noise_csv
        folder: !ref <data_folder_noise>
        csv_path: !ref <save_folder>/noise.csv
    add_noise: !new:speechbrain.augment.time_domain.AddNoise
        csv_file: !ref <noise_csv>
        snr_low: 0
        snr_high: 15
        pad_noise: True
    augmenter: !new:speechbrain.augment.augmenter.Augmenter
        augmentations: [!ref <add_noise>]
"""

import csv
import hashlib
import io
import os

import soundfile as sf
import torch
from speechbrain.augment.time_domain import AddNoise, AddReverb
from speechbrain.dataio.dataloader import make_dataloader
from speechbrain.dataio.legacy import ExtendedCSVDataset

from dampit.dataio.audio import audio_info, load_audio
from dampit.utils.atomic import atomic_path, atomic_write_text

__all__ = [
    "FolderAugment",
    "list_audio_files",
    "make_noise_csv",
    "make_rir_csv",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
CSV_HEADER = ["ID", "duration", "wav", "wav_format", "wav_opts"]


def list_audio_files(folder, extensions=AUDIO_EXTENSIONS):
    """List the audio files under ``folder``, recursively, sorted.

    Arguments
    ---------
    folder : str or os.PathLike
        Folder to search.
    extensions : tuple of str
        File name endings accepted (case-insensitive).

    Returns
    -------
    list of str
        Absolute paths.

    Raises
    ------
    FileNotFoundError
        When the folder does not exist or holds no audio file.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> sf.write(os.path.join(d, "a.wav"), np.zeros(160), 16000)
    >>> [os.path.basename(p) for p in list_audio_files(d)]
    ['a.wav']
    """
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"audio folder not found: {folder}")
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            if name.lower().endswith(tuple(e.lower() for e in extensions)):
                found.append(os.path.join(root, name))
    if not found:
        raise FileNotFoundError(
            f"no audio files ({', '.join(extensions)}) in {folder}"
        )
    return sorted(found)


def _file_key(path, *params):
    """Short hash of a file's identity (path, size, mtime) and params."""
    st = os.stat(path)
    text = "|".join(map(str, (path, st.st_size, st.st_mtime_ns) + params))
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _write_wav(path, wav, sample_rate):
    """Write a float waveform as 16-bit PCM wav atomically (unless there)."""
    if os.path.isfile(path):
        return
    with atomic_path(path) as tmp:
        sf.write(tmp, wav.numpy(), sample_rate, subtype="PCM_16", format="WAV")


def _folder_csv(folder, csv_path, sample_rate, chunk_length, audio_folder):
    """Shared implementation of ``make_noise_csv`` and ``make_rir_csv``."""
    files = list_audio_files(folder)
    folder = os.path.abspath(os.fspath(folder))
    csv_path = os.fspath(csv_path)
    if audio_folder is None:
        stem = os.path.splitext(csv_path)[0]
        audio_folder = stem + "_audio"
    rows = []
    used_ids = set()
    for path in files:
        frames, sr, channels = audio_info(path)
        if frames == 0:
            raise ValueError(f"audio file has no samples: {path}")
        duration = frames / sr
        rel = os.path.relpath(path, folder)
        base_id = os.path.splitext(rel)[0].replace(os.sep, "__")
        if base_id in used_ids:  # a.wav and a.flac
            base_id = rel.replace(os.sep, "__")
        used_ids.add(base_id)
        ext = os.path.splitext(path)[1][1:].lower()
        too_long = chunk_length is not None and duration >= 2 * chunk_length
        if sr == sample_rate and channels == 1 and not too_long:
            rows.append([base_id, f"{duration:.4f}", path, ext, ""])
            continue
        # Convert (resample / down-mix) and/or cut into chunks.
        wav = load_audio(path, sample_rate=sample_rate)
        n = wav.numel()
        if too_long:
            step = int(round(chunk_length * sample_rate))
            starts = list(range(0, n - step + 1, step))
            bounds = [(s, s + step) for s in starts]
            bounds[-1] = (bounds[-1][0], n)  # the remainder joins the last
        else:
            bounds = [(0, n)]
        key = _file_key(path, sample_rate, chunk_length)
        os.makedirs(audio_folder, exist_ok=True)
        for j, (a, b) in enumerate(bounds):
            name = f"{base_id}_{key}_{j:04d}.wav"
            out = os.path.join(audio_folder, name)
            _write_wav(out, wav[a:b], sample_rate)
            piece_id = f"{base_id}_{j:04d}" if too_long else base_id
            dur = (b - a) / sample_rate
            rows.append([piece_id, f"{dur:.4f}", out, "wav", ""])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
    return csv_path


def make_noise_csv(
    folder,
    csv_path,
    sample_rate=16000,
    chunk_length=5.0,
    audio_folder=None,
):
    """Write the CSV that ``speechbrain...AddNoise`` reads, for a folder.

    Arguments
    ---------
    folder : str or os.PathLike
        Folder of noise recordings (searched recursively; left untouched).
    csv_path : str or os.PathLike
        CSV to write (``ID,duration,wav,wav_format,wav_opts``).
    sample_rate : int
        The sample rate of the speech; other rates are converted.
    chunk_length : float or None
        Files of at least ``2 * chunk_length`` seconds are cut into
        ``chunk_length`` s chunks (the remainder joins the last chunk), so
        that each noise draw reads a few seconds instead of a whole
        recording. None: no cutting.
    audio_folder : str or None
        Where chunks and converted files go (default: next to the CSV,
        ``<csv stem>_audio``). Files already there are reused.

    Returns
    -------
    str
        ``csv_path``.

    Raises
    ------
    FileNotFoundError
        When the folder is missing or holds no audio.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> sf.write(os.path.join(d, "n.wav"), np.random.randn(48000) * .1, 16000)
    >>> p = make_noise_csv(d, os.path.join(d, "noise.csv"), chunk_length=1.0)
    >>> open(p).read().splitlines()[0]
    'ID,duration,wav,wav_format,wav_opts'
    >>> len(open(p).read().splitlines())  # header + 3 chunks of 1 s
    4
    """
    if chunk_length is not None and not chunk_length > 0:
        raise ValueError(
            f"make_noise_csv: chunk_length={chunk_length} must be > 0"
        )
    return _folder_csv(
        folder, csv_path, sample_rate, chunk_length, audio_folder
    )


def make_rir_csv(folder, csv_path, sample_rate=16000, audio_folder=None):
    """Write the CSV that ``speechbrain...AddReverb`` reads, for a folder.

    Arguments
    ---------
    folder : str or os.PathLike
        Folder of room impulse responses (searched recursively).
    csv_path : str or os.PathLike
        CSV to write.
    sample_rate : int
        The sample rate of the speech; RIRs at other rates (or with
        several channels) are converted into ``audio_folder``.
    audio_folder : str or None
        Where converted files go (default ``<csv stem>_audio``).

    Returns
    -------
    str
        ``csv_path``.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> rir = np.zeros((160, 2))  # stereo: down-mixed into rir_audio/
    >>> rir[0] = 1.0
    >>> sf.write(os.path.join(d, "r.wav"), rir, 16000)
    >>> p = make_rir_csv(d, os.path.join(d, "rir.csv"))
    >>> row = open(p).read().splitlines()[1].split(",")
    >>> row[1], os.path.basename(os.path.dirname(row[2]))
    ('0.0100', 'rir_audio')
    """
    return _folder_csv(folder, csv_path, sample_rate, None, audio_folder)


def _reseed_loader(module, iter_attr):
    """Give an AddNoise/AddReverb loader a per-process random order.

    SpeechBrain's internal loaders shuffle with a fixed seed, so every
    DataLoader worker would draw the same noise and RIR sequence. Reseed
    from ``torch.initial_seed()`` (distinct per worker; the global seed in
    the main process) once per process, and move to a new epoch when a
    pass over the files ends.
    """
    sampler = getattr(module.data_loader, "sampler", None)
    if getattr(module, "_dampit_pid", None) != os.getpid():
        module._dampit_pid = os.getpid()
        if hasattr(sampler, "seed"):
            sampler.seed = int(torch.initial_seed() % (2**31 - 1))
            sampler.epoch = 0
        setattr(module, iter_attr, iter(module.data_loader))


def _next_epoch(module, iter_attr):
    """Start a new (reshuffled) pass over an internal loader."""
    sampler = getattr(module.data_loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(sampler.epoch + 1)
    setattr(module, iter_attr, iter(module.data_loader))


class _PicklableLoaders:
    """Drop the lazily built internal loaders when pickled or copied.

    DataLoader workers started with "spawn" or "forkserver" pickle the
    augmentation module; the loaders and their iterators are rebuilt on
    first use in the new process.
    """

    def __getstate__(self):
        """The module's state without its loaders."""
        state = self.__dict__.copy()
        for key in ("data_loader", "noise_data", "rir_data", "_dampit_pid"):
            state.pop(key, None)
        return state


class _AddNoise(_PicklableLoaders, AddNoise):
    """``AddNoise`` with a per-process noise order (see _reseed_loader)."""

    def _load_noise_batch(self):
        """Load a batch of noises, reshuffling after each pass."""
        _reseed_loader(self, "noise_data")
        try:
            return next(self.noise_data).at_position(0)
        except StopIteration:
            _next_epoch(self, "noise_data")
            return next(self.noise_data).at_position(0)


class _AddReverb(_PicklableLoaders, AddReverb):
    """``AddReverb`` with a per-process RIR order (see _reseed_loader)."""

    def _load_rir(self, waveforms):
        """Load one RIR ``[1, T, 1]``, reshuffling after each pass."""
        if not hasattr(self, "data_loader"):
            dataset = ExtendedCSVDataset(
                csvpath=self.csv_file, replacements=self.replacements
            )
            self.data_loader = make_dataloader(
                dataset,
                shuffle=(self.sorting == "random"),
                num_workers=self.num_workers,
            )
        _reseed_loader(self, "rir_data")
        try:
            rir, _ = next(self.rir_data).at_position(0)
        except StopIteration:
            _next_epoch(self, "rir_data")
            rir, _ = next(self.rir_data).at_position(0)
        if rir.dim() == 2:
            rir = rir.unsqueeze(-1)
        return rir.to(device=waveforms.device, dtype=waveforms.dtype)


class FolderAugment(torch.nn.Module):
    """Random reverberation and additive noise from folders of audio.

    Arguments
    ---------
    noise_folder : str or None
        Folder of noise recordings (None: no additive noise).
    rir_folder : str or None
        Folder of room impulse responses (None: no reverberation).
    snr_low : float
        Lowest SNR in dB.
    snr_high : float
        Highest SNR in dB.
    noise_prob : float
        Probability that an utterance gets noise.
    reverb_prob : float
        Probability that an utterance is reverberated (before the noise).
    sample_rate : int
        Sample rate of the speech.
    csv_folder : str or None
        Where the CSVs (and noise chunks / converted files) are written.
        None: a cache folder under the system's temporary folder, named
        after the folders and settings (reused across runs).
    noise_chunk_length : float or None
        See ``make_noise_csv``.
    noise_csv : str or None
        A ready noise CSV to use instead of ``noise_folder``.
    rir_csv : str or None
        A ready RIR CSV to use instead of ``rir_folder``.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> sf.write(os.path.join(d, "n.wav"), np.random.randn(32000) * .1, 16000)
    >>> aug = FolderAugment(noise_folder=d, snr_low=5, snr_high=5)
    >>> wavs, lens = aug(torch.randn(2, 16000), torch.ones(2))
    >>> wavs.shape, lens.tolist()
    (torch.Size([2, 16000]), [1.0, 1.0])
    """

    def __init__(
        self,
        noise_folder=None,
        rir_folder=None,
        snr_low=0.0,
        snr_high=15.0,
        noise_prob=1.0,
        reverb_prob=0.5,
        sample_rate=16000,
        csv_folder=None,
        noise_chunk_length=5.0,
        noise_csv=None,
        rir_csv=None,
    ):
        super().__init__()
        for name, p in (
            ("noise_prob", noise_prob),
            ("reverb_prob", reverb_prob),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"FolderAugment: {name}={p} not in [0, 1]")
        if snr_low > snr_high:
            raise ValueError(
                f"FolderAugment: snr_low={snr_low} > snr_high={snr_high}"
            )
        if noise_folder is None and noise_csv is None:
            noise_prob = 0.0
        if rir_folder is None and rir_csv is None:
            reverb_prob = 0.0
        if csv_folder is None:
            import tempfile

            tag = hashlib.sha1(
                repr(
                    (
                        os.path.abspath(noise_folder or ""),
                        os.path.abspath(rir_folder or ""),
                        sample_rate,
                        noise_chunk_length,
                    )
                ).encode()
            ).hexdigest()[:12]
            csv_folder = os.path.join(
                tempfile.gettempdir(), f"dampit-augment-{tag}"
            )
        self.snr_low, self.snr_high = float(snr_low), float(snr_high)
        self.noise_prob, self.reverb_prob = (
            float(noise_prob),
            float(reverb_prob),
        )
        self.sample_rate = sample_rate
        self.add_noise = None
        self.add_reverb = None
        if noise_csv is None and noise_folder is not None:
            noise_csv = make_noise_csv(
                noise_folder,
                os.path.join(csv_folder, "noise.csv"),
                sample_rate=sample_rate,
                chunk_length=noise_chunk_length,
            )
        if rir_csv is None and rir_folder is not None:
            rir_csv = make_rir_csv(
                rir_folder,
                os.path.join(csv_folder, "rir.csv"),
                sample_rate=sample_rate,
            )
        if noise_csv is not None:
            self.add_noise = _AddNoise(
                csv_file=noise_csv,
                snr_low=self.snr_low,
                snr_high=self.snr_high,
                pad_noise=True,
                noise_sample_rate=sample_rate,
                clean_sample_rate=sample_rate,
            )
        if rir_csv is not None:
            self.add_reverb = _AddReverb(
                csv_file=rir_csv,
                reverb_sample_rate=sample_rate,
                clean_sample_rate=sample_rate,
            )
        self.noise_csv, self.rir_csv = noise_csv, rir_csv

    def forward(self, wavs, lengths=None):
        """Augment a batch.

        Arguments
        ---------
        wavs : torch.Tensor
            Waveforms ``[B, N]``.
        lengths : torch.Tensor or None
            Relative lengths ``[B]`` (None: all 1). Padding stays as it was.

        Returns
        -------
        wavs : torch.Tensor
            Augmented waveforms ``[B, N]`` (a new tensor).
        lengths : torch.Tensor
            The lengths, unchanged.
        """
        if wavs.dim() != 2:
            raise ValueError(
                "FolderAugment expects waveforms [B, N], got shape "
                f"{tuple(wavs.shape)}"
            )
        B, N = wavs.shape
        if lengths is None:
            lengths = torch.ones(B, device=wavs.device)
        lengths = torch.as_tensor(lengths).to(wavs.device)
        n_valid = torch.round(lengths.float() * N).long().clamp(1, N).tolist()
        out = wavs.clone()
        if self.add_reverb is not None and self.reverb_prob > 0:
            chosen = torch.rand(B) < self.reverb_prob
            for i in torch.nonzero(chosen).flatten().tolist():
                n = n_valid[i]
                out[i, :n] = self.add_reverb(out[i : i + 1, :n])[0]
        if self.add_noise is not None and self.noise_prob > 0:
            chosen = torch.nonzero(torch.rand(B) < self.noise_prob).flatten()
            if len(chosen):
                chosen = chosen.to(wavs.device)
                noisy = self.add_noise(out[chosen], lengths[chosen])
                out[chosen] = noisy
        # Keep the padding as it was.
        for i, n in enumerate(n_valid):
            if n < N:
                out[i, n:] = wavs[i, n:]
        return out, lengths
