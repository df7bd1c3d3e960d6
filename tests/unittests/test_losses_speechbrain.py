"""dampit's losses called as SpeechBrain's speaker recipe calls compute_cost.

SpeechBrain's ``train_speaker_embeddings.py`` encodes each speaker with a
``CategoricalEncoder`` (``encode_sequence_torch([spk_id])``), batches with
``PaddedBatch`` and calls ``compute_cost(predictions, spkid, lens)`` with
``spkid`` a ``[B, 1]`` LongTensor and ``lens`` the waveforms' relative
lengths. The batches here are built by those SpeechBrain objects.
"""

import pytest
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.lobes.models.ECAPA_TDNN import Classifier
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper
from speechbrain.utils.data_pipeline import provides, takes

from dampit.losses import (
    AngularLoss,
    NPairLoss,
    SoftmaxLoss,
    TripletLoss,
    paper_multi_metric_loss,
)

P, K, D = 4, 2, 16


def _speechbrain_batch():
    """``(wavs, lens)`` and ``spkid`` as SpeechBrain's recipe gets them."""
    gen = torch.Generator().manual_seed(0)
    data = {
        f"utt{i}": {"spk_id": f"id{1000 + i // K}", "n": 800 + 37 * i}
        for i in range(P * K)
    }
    dataset = DynamicItemDataset(data)
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(v["spk_id"] for v in data.values())

    @takes("n")
    @provides("sig")
    def audio_pipeline(n):
        return torch.randn(n, generator=gen)

    @takes("spk_id")
    @provides("spk_id", "spk_id_encoded")
    def label_pipeline(spk_id):  # as SpeechBrain's recipe
        yield spk_id
        yield encoder.encode_sequence_torch([spk_id])

    dataset.add_dynamic_item(audio_pipeline)
    dataset.add_dynamic_item(label_pipeline)
    dataset.set_output_keys(["id", "sig", "spk_id_encoded"])
    batch = PaddedBatch([dataset[i] for i in range(len(dataset))])
    _, lens = batch.sig
    spkid, _ = batch.spk_id_encoded
    return lens, spkid


def _losses():
    return {
        "triplet": TripletLoss(),
        "triplet_semi": TripletLoss(mining="semi_hard"),
        "npair": NPairLoss(),
        "angular": AngularLoss(),
        "angular_hinge": AngularLoss(form="hinge", alpha=25.0),
        "softmax": SoftmaxLoss(D, P),
        "softmax_aam": SoftmaxLoss(D, P, kind="aam"),
        "paper": paper_multi_metric_loss(D, P),
    }


@pytest.mark.parametrize("name", list(_losses()))
def test_compute_cost_with_length_equals_the_plain_call(name):
    """compute_cost(predictions [B,1,D], spkid [B,1], lens) and with
    ``length=`` give exactly the value of loss([B, D], [B]): the relative
    lengths are ignored, as LogSoftmaxWrapper ignores them."""
    lens, spkid = _speechbrain_batch()
    assert spkid.shape == (P * K, 1) and spkid.dtype == torch.long
    assert lens.shape == (P * K,) and lens.min() < lens.max() == 1
    torch.manual_seed(0)
    loss = _losses()[name]
    emb = torch.randn(P * K, 1, D, requires_grad=True)
    value = loss(emb, spkid, lens)
    assert value.shape == () and torch.isfinite(value)
    assert torch.equal(value, loss(emb, spkid, length=lens))
    assert torch.equal(value, loss(emb.squeeze(1), spkid.squeeze(1)))
    assert torch.equal(value, loss(emb, spkid.squeeze(1), None))
    value.backward()
    assert emb.grad.abs().sum() > 0


def test_aam_softmax_equals_speechbrains_recipe_loss():
    """SoftmaxLoss(kind="aam") is SpeechBrain's stock compute_cost,
    LogSoftmaxWrapper(AdditiveAngularMargin(0.2, 30)), on the ECAPA
    Classifier's output, with the same classifier weights."""
    lens, spkid = _speechbrain_batch()
    torch.manual_seed(0)
    emb = torch.randn(P * K, 1, D)
    ours = SoftmaxLoss(D, P, kind="aam", margin=0.2, scale=30.0)
    classifier = Classifier(D, out_neurons=P)
    classifier.load_state_dict(
        {"weight": ours.state_dict()["classifier.weight"]}
    )
    stock = LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30.0))
    want = stock(classifier(emb), spkid, lens)
    got = ours(emb, spkid, lens)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert sorted(ours.state_dict()) == ["classifier.weight"]
