"""SpecAugment in the recipe: SpeechBrain's SpectrogramDrop on features.

The recipe's ``MultiMetricBrain.compute_embeddings`` runs on real
dspspeech audio; a forward pre-hook on the network records the features
it receives. With ``spec_augment_prob: 1`` the training stage must see
whole time bands (every bin of a frame) and whole frequency bands (every
frame of a bin) set to 0, within the configured widths, and the
validation stage none; with the default 0 the training stage must see the
validation stage's features exactly and draw no random number.
"""

import random

import pytest
import speechbrain as sb
import torch

from dampit.dataio.audio import load_audio


@pytest.fixture
def wavs(shared_data):
    files = sorted((shared_data / "dspspeech").glob("*/*.wav"))[:4]
    sigs = [load_audio(f, 16000)[:16000] for f in files]
    n = min(len(s) for s in sigs)
    return torch.stack([s[:n] for s in sigs]), torch.ones(len(sigs))


def network_input(brain, wavs, lens, stage):
    """The features the embedding network receives."""
    seen = []
    net = brain.modules.embedding_model
    handle = net.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach().clone())
    )
    try:
        brain.modules.eval()  # no dropout: only the masks differ
        with torch.no_grad():
            brain.compute_embeddings(wavs, lens, stage)
    finally:
        handle.remove()
    return seen[0]


def zero_bands(feats, dim):
    """Per example, the indices along ``dim`` (1 time, 2 freq) that are 0
    across the whole other axis."""
    return [
        torch.nonzero((x == 0).all(dim=2 - dim)).flatten().tolist()
        for x in feats
    ]


def runs(indices):
    """Lengths of the runs of consecutive indices."""
    out, length = [], 0
    for k, i in enumerate(indices):
        length = length + 1 if k and i == indices[k - 1] + 1 else 1
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            out.append(length)
    return out


def test_masks_in_training_only(mini_brain, wavs):
    brain, hp = mini_brain(
        spec_augment_prob=1.0, n_spec_masks=2, time_mask_max=20
    )
    x, lens = wavs
    torch.manual_seed(0)
    train = network_input(brain, x, lens, sb.Stage.TRAIN)
    valid = network_input(brain, x, lens, sb.Stage.VALID)
    assert not (valid == 0).all(dim=1).any()  # real speech: no empty band
    assert not (valid == 0).all(dim=2).any()
    times, freqs = zero_bands(train, 1), zero_bands(train, 2)
    for t, f in zip(times, freqs):
        assert t and f, "each example gets a time and a frequency mask"
        # 1..2 masks of 1..19 frames / 1..9 bins (they may touch or overlap)
        assert all(1 <= r <= 2 * 19 for r in runs(t)), t
        assert all(1 <= r <= 2 * 9 for r in runs(f)), f
        assert len(t) <= 2 * 19 and len(f) <= 2 * 9
    # Outside the masks the features are the validation ones.
    keep = train != 0
    torch.testing.assert_close(train[keep], valid[keep])


def test_off_by_default_draws_nothing(mini_brain, wavs):
    brain, hp = mini_brain()
    assert hp["spec_augment_prob"] == 0.0
    x, lens = wavs
    state = random.getstate()
    t_state = torch.get_rng_state()
    train = network_input(brain, x, lens, sb.Stage.TRAIN)
    assert random.getstate() == state
    assert torch.equal(torch.get_rng_state(), t_state)
    valid = network_input(brain, x, lens, sb.Stage.VALID)
    assert torch.equal(train, valid)
