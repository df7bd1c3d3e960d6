"""The verification data path (issue 17 item 4): test utterances through
DynamicItemDataset and a DataLoader with workers embed as each would
alone; the crops, cut from each padded batch, are the evenly spaced
ones; stores hold the same rows.

Real speech (dspspeech), the recipe's mini network (``mini_brain``); the
expected embeddings are computed here one utterance at a time.
"""

import csv

import numpy as np
import pytest
import soundfile as sf
import torch

from dampit.dataio.audio import load_audio
from dampit.dataio.crops import eval_crops
from dampit.training.verification import embed, utterance_loader


@pytest.fixture
def manifest(shared_data, tmp_path):
    """Six dspspeech files of different lengths, two of them as ranges."""
    files = sorted((shared_data / "dspspeech").rglob("*.wav"))[::97][:6]
    path = tmp_path / "test.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav", "start", "stop", "spk_id"])
        for k, p in enumerate(files):
            n = sf.info(p).frames
            start, stop = (0, n) if k % 3 else (n // 4, n - n // 5)
            w.writerow([f"u{k}", (stop - start) / 16000, p, start, stop, "s"])
    return path, files


def test_batched_loader_embeds_each_utterance_as_alone(
    manifest, mini_brain, tmp_path
):
    path, files = manifest
    brain, hp = mini_brain()
    brain.modules.eval()
    hp.update(num_workers=2, test_batch_size=6)
    ids = {f"u{k}" for k in range(6)} - {"u5"}  # one left out
    loader = utterance_loader(hp, str(path), ids, n_crops=3)
    stores = [str(tmp_path / "full"), str(tmp_path / "crops")]
    hop = int(hp["hop_length"])
    got_ids, full, crops = embed(
        brain.compute_embeddings, loader, hop, "cpu", stores, False
    )
    assert sorted(got_ids) == sorted(ids) and len(full) == len(crops) == 5
    crop = (int(hp["test_crop_frames"]) - 1) * hop
    with torch.no_grad():
        for row, uid in enumerate(got_ids):
            k = int(uid[1:])
            n = sf.info(files[k]).frames
            start, stop = (0, n) if k % 3 else (n // 4, n - n // 5)
            wav = load_audio(files[k], 16000, start=start, stop=stop)
            alone = brain.compute_embeddings(wav[None], torch.ones(1))
            np.testing.assert_allclose(
                full[row], alone.reshape(-1).numpy(), rtol=1e-4, atol=1e-5
            )
            cuts = eval_crops(wav, 3, crop)
            for c in range(3):
                one = brain.compute_embeddings(cuts[c : c + 1], torch.ones(1))
                np.testing.assert_allclose(
                    crops[row, c], one.reshape(-1).numpy(), rtol=1e-4, atol=1e-5
                )
    durations = [sf.info(files[int(u[1:])]).frames for u in got_ids]
    assert len(set(durations)) > 1  # padding happened
    again = embed(brain.compute_embeddings, loader, hop, "cpu", None, False)
    np.testing.assert_array_equal(again[1], np.asarray(full))
    np.testing.assert_array_equal(again[2], np.asarray(crops))
    plain = utterance_loader(hp, str(path), ids)  # whole utterances only
    assert plain.crops is None and loader.crops == (3, crop)
    alone = embed(brain.compute_embeddings, plain, hop, "cpu", None, False)
    assert alone[0] == got_ids and alone[2] is None
    np.testing.assert_array_equal(alone[1], np.asarray(full))


def test_crop_buffer_reuse_keeps_every_batch(manifest, mini_brain):
    """The crops of each batch are stacked into one reused buffer: with
    batches of 2, 2 and 1 and an ``embed_fn`` that returns a view of its
    input (the first 8 samples), every row still holds its own crops,
    equal to ``eval_crops`` of the utterance read alone."""
    path, files = manifest
    _, hp = mini_brain()
    hp.update(num_workers=0, test_batch_size=2)
    ids = {f"u{k}" for k in range(5)}
    loader = utterance_loader(hp, str(path), ids, n_crops=3)
    first = lambda w, _: w[:, None, :8]  # noqa: E731  (a view)
    got_ids, full, crops = embed(first, loader, None, "cpu", None, False)
    assert len(loader) == 3 and sorted(got_ids) == sorted(ids)
    for row, uid in enumerate(got_ids):
        k = int(uid[1:])
        n = sf.info(files[k]).frames
        start, stop = (0, n) if k % 3 else (n // 4, n - n // 5)
        wav = load_audio(files[k], 16000, start=start, stop=stop)
        np.testing.assert_array_equal(full[row], wav[:8].numpy())
        want = eval_crops(wav, 3, loader.crops[1])[:, :8]
        np.testing.assert_array_equal(crops[row], want.numpy())
