"""Additive noise and reverberation from folders of audio files.

``FolderAugment`` is SpeechBrain's ``AddNoise`` and ``reverberate`` fed
straight from folders (searched recursively, never modified): each
utterance is reverberated with probability ``reverb_prob`` by its own random
room impulse response, then gets noise with probability ``noise_prob``. A
noise is a random crop of a random noise file, read alone (a long recording
is never read whole). Files are drawn with torch's random generator, so each
DataLoader worker draws its own sequence; with both probabilities 0 nothing
is drawn. The recipe (``recipes/VoxCeleb/train.py``) calls it on each
training crop, as a batch of one, in the DataLoader's workers: the utterances
of a batch are augmented independently, as in one call on the whole batch.

SpeechBrain's conventions (speechbrain 1.1): ``AddNoise`` draws the SNR
uniformly in ``[snr_low, snr_high]`` dB and returns ``(1 - a) * clean +
noise`` with ``a = 1 / (1 + 10^(snr / 20))`` and the noise at RMS ``a *
rms(clean)``; ``reverberate`` convolves circularly, the RIR's direct path
(largest sample) at delay 0, and keeps the mean absolute amplitude.
"""

import os

import torch
from speechbrain.augment.time_domain import AddNoise
from speechbrain.processing.signal_processing import reverberate

from dampit.dataio.audio import load_audio, read_crop
from dampit.dataio.preparation import scan_audio_tree
from dampit.lobes.pooling import real_frames


def list_audio_files(folder):
    """Absolute paths of the audio files under ``folder``, sorted.

    Example
    -------
    >>> import tempfile, numpy as np, soundfile as sf
    >>> d = tempfile.mkdtemp()
    >>> sf.write(os.path.join(d, "a.wav"), np.zeros(160), 16000)
    >>> [os.path.basename(p) for p in list_audio_files(d)]
    ['a.wav']
    """
    folder = os.path.abspath(os.fspath(folder))
    rel = scan_audio_tree(folder, min_depth=1)
    if not rel:
        raise ValueError(f"no audio files in {folder}")
    return [os.path.join(folder, *r.split("/")) for r in rel]


def _pick(files):
    """A file drawn with torch's generator."""
    return files[int(torch.randint(len(files), (1,)))]


class _NoiseCrops:
    """``AddNoise``'s ``noise_funct``: a random noise crop per utterance."""

    def __init__(self, files, sample_rate):
        self.files, self.sample_rate = files, sample_rate

    def __call__(self, wavs):
        """Noise ``[B, N]`` for waveforms ``[B, N]``."""
        n = wavs.shape[1]
        crops = [
            read_crop(_pick(self.files), n, self.sample_rate) for _ in wavs
        ]
        return torch.stack(crops).to(wavs)


class FolderAugment(torch.nn.Module):
    """Random reverberation and additive noise from folders of audio.

    Arguments
    ---------
    noise_folder : str or None
        Noise recordings (None: no noise).
    rir_folder : str or None
        Room impulse responses (None: no reverberation).
    snr_low, snr_high : float
        SNR range in dB.
    noise_prob, reverb_prob : float
        Probability that an utterance gets noise / is reverberated.
    sample_rate : int
        Sample rate of the speech (files at other rates are resampled).

    Example
    -------
    >>> import tempfile, numpy as np, soundfile as sf
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
    ):
        super().__init__()
        for name, p in (
            ("noise_prob", noise_prob),
            ("reverb_prob", reverb_prob),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"FolderAugment: {name}={p} not in [0, 1]")
        if snr_low > snr_high:
            raise ValueError(f"FolderAugment: snr_low {snr_low} > {snr_high}")
        self.noise_prob = float(noise_prob) if noise_folder else 0.0
        self.reverb_prob = float(reverb_prob) if rir_folder else 0.0
        self.sample_rate = sample_rate
        self.rirs = list_audio_files(rir_folder) if rir_folder else []
        self.add_noise = None
        if noise_folder:
            noise = _NoiseCrops(list_audio_files(noise_folder), sample_rate)
            self.add_noise = AddNoise(
                snr_low=snr_low, snr_high=snr_high, noise_funct=noise
            )

    def forward(self, wavs, lengths=None):
        """Augment waveforms ``[B, N]`` with relative ``lengths`` ``[B]``;
        returns ``(new waveforms, lengths)``, the padding unchanged."""
        if wavs.dim() != 2:
            raise ValueError(f"FolderAugment expects [B, N], got {wavs.shape}")
        B, N = wavs.shape
        lengths = torch.ones(B) if lengths is None else torch.as_tensor(lengths)
        lengths = lengths.to(wavs.device)
        n_valid = real_frames(lengths, N).tolist()
        out = wavs.clone()
        if self.reverb_prob == 0 and self.noise_prob == 0:
            return out, lengths  # off: no random draw at all
        for i in torch.nonzero(torch.rand(B) < self.reverb_prob)[:, 0].tolist():
            rir = load_audio(_pick(self.rirs), self.sample_rate).to(wavs)
            out[i, : n_valid[i]] = reverberate(
                out[i : i + 1, : n_valid[i]], rir
            )
        chosen = torch.nonzero(torch.rand(B) < self.noise_prob)[:, 0]
        if len(chosen):
            chosen = chosen.to(wavs.device)
            out[chosen] = self.add_noise(out[chosen], lengths[chosen])
        for i, n in enumerate(n_valid):
            out[i, n:] = wavs[i, n:]
        return out, lengths
