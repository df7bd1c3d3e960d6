"""Each loss pulls same-speaker pairs together on real speech.

Six DSPSpeech speakers, ten utterances each (isolated words). A fixed,
cheap utterance embedding (mean and standard deviation of 40 log-mel
filterbanks) goes through a small linear projection trained for 30 Adam
steps on P x K = 6 x 2 batches drawn from six utterances per speaker. On
the four held-out utterances per speaker (other words than the training
ones) the separation of same-speaker from different-speaker distances must
improve over the untrained projection: both the AUC (probability that a
same-speaker pair is closer than a different-speaker pair) and d' (mean
gap over pooled standard deviation).
"""

import csv

import pytest
import torch
import torch.nn.functional as F
import torchaudio

from dampit.dataio.audio import load_audio
from dampit.losses import (
    AngularLoss,
    NPairLoss,
    SoftmaxLoss,
    TripletLoss,
    paper_multi_metric_loss,
)

N_SPEAKERS, N_UTTS, N_TRAIN, DIM = 6, 10, 6, 32


@pytest.fixture(scope="module")
def features(shared_data):
    """Standardised fbank statistics, labels and a train/held-out mask."""
    root = shared_data / "dspspeech"
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    speakers = sorted({r["speaker"] for r in rows})[:N_SPEAKERS]
    feats, labels, train = [], [], []
    for s_idx, spk in enumerate(speakers):
        paths = sorted(r["path"] for r in rows if r["speaker"] == spk)
        for u_idx, path in enumerate(paths[:N_UTTS]):
            wav = load_audio(root / path)
            fbank = torchaudio.compliance.kaldi.fbank(
                wav.unsqueeze(0) * 32768.0,
                num_mel_bins=40,
                sample_frequency=16000,
            )
            feats.append(torch.cat([fbank.mean(0), fbank.std(0)]))
            labels.append(s_idx)
            train.append(u_idx < N_TRAIN)
    x = torch.stack(feats)
    train = torch.tensor(train)
    x = (x - x[train].mean(0)) / x[train].std(0)
    return x, torch.tensor(labels), train


def _separation(emb, labels, distance):
    """AUC and d' of same- vs different-speaker distances."""
    if distance == "cosine":
        unit = F.normalize(emb, dim=1)
        dist = 1.0 - unit @ unit.t()
    else:
        dist = torch.cdist(emb, emb)
    same = labels[:, None] == labels[None, :]
    upper = torch.ones_like(same).triu(1)
    d_same, d_diff = dist[same & upper], dist[~same & upper]
    auc = (d_same[:, None] < d_diff[None, :]).float().mean().item()
    pooled = ((d_same.var() + d_diff.var()) / 2).sqrt()
    d_prime = ((d_diff.mean() - d_same.mean()) / pooled).item()
    return auc, d_prime


LOSSES = {
    "triplet": (lambda: TripletLoss(), "euclidean"),
    "npair": (lambda: NPairLoss(), "cosine"),
    "angular": (lambda: AngularLoss(), "cosine"),
    "angular_hinge": (lambda: AngularLoss(form="hinge", alpha=40), "cosine"),
    "softmax": (lambda: SoftmaxLoss(DIM, N_SPEAKERS), "cosine"),
    "multi_metric": (
        lambda: paper_multi_metric_loss(DIM, N_SPEAKERS),
        "cosine",
    ),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_separates_speakers_on_held_out_utterances(features, name):
    """30 steps of one loss improve held-out speaker separation."""
    x, labels, train = features
    make_loss, distance = LOSSES[name]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    proj = torch.nn.Linear(x.shape[1], DIM)
    loss_fn = make_loss()
    opt = torch.optim.Adam(
        list(proj.parameters()) + list(loss_fn.parameters()), lr=0.01
    )
    x_tr, y_tr = x[train], labels[train]
    x_te, y_te = x[~train], labels[~train]
    with torch.no_grad():
        auc0, dp0 = _separation(proj(x_te), y_te, distance)
    values = []
    for _ in range(30):
        idx = []  # P x K = 6 x 2, speaker-major
        for spk in range(N_SPEAKERS):
            cand = (y_tr == spk).nonzero().squeeze(1)
            pick = torch.randperm(len(cand), generator=gen)[:2]
            idx += cand[pick].tolist()
        loss = loss_fn(proj(x_tr[idx]).unsqueeze(1), y_tr[idx].unsqueeze(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(loss.item())
    with torch.no_grad():
        auc1, dp1 = _separation(proj(x_te), y_te, distance)
    msg = f"{name}: AUC {auc0:.3f} -> {auc1:.3f}, d' {dp0:.2f} -> {dp1:.2f}"
    assert sum(values[-5:]) < sum(values[:5]), msg
    assert auc1 > auc0 + 0.03, msg
    assert dp1 > dp0 + 0.1, msg
