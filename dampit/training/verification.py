"""Verify a trained model on the test trials: weights, embeddings, reports.

Whole-utterance and ``n_test_crops`` crop embeddings of the test set
(``DynamicItemDataset`` + a ``DataLoader`` with ``num_workers``), stored
under ``<output_folder>/verification``, then three scorings per trial
list (cosine of whole utterances, the paper's multi-crop dot and cosine
in closed form, AS-norm on request) with EER, minDCF, DET and histogram.
"""

import json
import logging
import os

import numpy as np
import speechbrain as sb
import torch
from tqdm import tqdm

from dampit.dataio.audio import load_audio
from dampit.dataio.crops import crop_views
from dampit.dataio.trials import read_trials
from dampit.inference.embedding_store import (
    EmbeddingStore,
    EmbeddingStoreWriter,
)
from dampit.inference.extract import frame_lengths
from dampit.lobes.pooling import real_frames
from dampit.metrics.asnorm import as_norm
from dampit.metrics.report import write_report
from dampit.metrics.scoring import ScoringVectors
from dampit.training.tested_model import save_tested_model
from dampit.utils.atomic import atomic_write_text
from dampit.utils.checkpoint_averaging import (
    average_weights,
    select_test_checkpoints,
)

logger = logging.getLogger(__name__)
#: What ``average_checkpoints: N > 1`` averages.
AVERAGED = ("embedding_model", "compute_cost")
#: The score normalisations of ``score_norm`` (None: none).
SCORE_NORMS = ("as-norm",)


def load_test_weights(checkpointer, hparams, tree, out):
    """Load the tested weights, list their checkpoints in
    ``<out>/checkpoints.txt``, save the tested model for ``dampit-export``
    (:func:`~dampit.training.tested_model.save_tested_model`; ``tree``: the
    YAML read plainly) and return the checkpoints (none: the current
    weights).

    ``average_checkpoints: 1``: the checkpoint with the lowest validation
    EER; ``N > 1``: the newest checkpoint, then ``embedding_model`` and
    ``compute_cost`` (its softmax classifier) averaged over the N newest
    end-of-epoch ones.
    """
    n = int(hparams.get("average_checkpoints", 1))
    if n == 1:
        best = checkpointer.recover_if_possible(min_key="EER")
        used = [best] if best is not None else []
    else:
        checkpointer.recover_if_possible()  # every module, newest
        used = select_test_checkpoints(checkpointer, n)
        if used:
            for name in AVERAGED:
                hparams[name].load_state_dict(average_weights(used, name))
    if not used:
        logger.warning("no checkpoint found: testing the current weights")
    logger.info("testing %s", ", ".join(str(c.path) for c in used))
    os.makedirs(out, exist_ok=True)
    text = "".join(f"{c.path}\n" for c in used)
    atomic_write_text(os.path.join(out, "checkpoints.txt"), text)
    save_tested_model(out, hparams, tree, used)
    return used


def utterance_loader(hparams, csv_path, ids, n_crops=0):
    """A DataLoader of the utterances ``ids`` of a prepared manifest,
    sorted by duration: ``id`` and ``sig`` (whole); ``test_batch_size``
    and ``num_workers`` from ``hparams``. Its ``crops``, ``(n_crops, crop
    samples of test_crop_frames)`` or None, tell :func:`embed` to cut
    the evenly spaced crops from each batch."""
    sr = int(hparams["sample_rate"])
    data = sb.dataio.dataset.DynamicItemDataset.from_csv(
        csv_path, replacements={"data_root": hparams["data_folder"]}
    )
    data = data.filtered_sorted(
        key_test={"id": lambda uid: uid in ids}, sort_key="duration"
    )

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def audio(wav, start, stop):
        return load_audio(wav, sr, start=int(start), stop=int(stop))

    data.add_dynamic_item(audio)
    data.set_output_keys(["id", "sig"])
    loader = sb.dataio.dataloader.make_dataloader(
        data,
        batch_size=int(hparams["test_batch_size"]),
        num_workers=int(hparams["num_workers"]),
    )
    loader.crops = None
    if n_crops:
        crop = (int(hparams["test_crop_frames"]) - 1) * hparams["hop_length"]
        loader.crops = (n_crops, crop)
    return loader


@torch.no_grad()
def embed(embed_fn, loader, hop_length, device, stores=None, progress=True):
    """``(ids, [U, D] whole, [U, n_crops, D] crops or None)`` of a loader
    (:func:`utterance_loader`; crops as its ``crops`` say).

    ``embed_fn(wavs [B, N], lens [B]) -> [B, 1, D]``. With ``hop_length``,
    padded utterances get frame-exact lengths ``(1 + n // hop) / (1 + N //
    hop)``: each embeds as it would alone. With ``stores`` (two folders),
    the embeddings stream to embedding stores (bounded memory) and come
    back memory-mapped.
    """
    ids, rows, writers = [], ([], []), [None, None]
    crops, buf = getattr(loader, "crops", None), torch.empty(0)

    def run(wavs, lens):  # a copy: the crop buffer is reused
        emb = embed_fn(wavs, lens.to(device))
        return emb.reshape(len(wavs), -1).float().cpu().numpy().copy()

    def add(k, emb):
        if stores is None:
            rows[k].append(emb)
            return
        if writers[k] is None:
            n, shape = len(loader.dataset), emb.shape[1:]
            writers[k] = EmbeddingStoreWriter(stores[k], n, shape)
        writers[k].add_batch(batch.id, emb)

    try:
        for batch in tqdm(loader, desc="embedding", disable=not progress):
            wavs, rel = batch.sig
            n = real_frames(rel, wavs.shape[1])
            if hop_length:
                rel = frame_lengths(n, wavs.shape[1], hop_length)
            wavs = wavs.to(device)  # the crops are cut on the device
            add(0, run(wavs, rel))
            ids += batch.id
            if crops:  # a stack of views into one reused buffer
                cuts = [crop_views(w[:m], *crops) for w, m in zip(wavs, n)]
                cuts = [c for views in cuts for c in views]
                if len(buf) < len(cuts):  # the first batch is a full one
                    buf = wavs.new_empty(len(cuts), crops[1])
                cuts = torch.stack(cuts, out=buf[: len(cuts)])
                emb = run(cuts, torch.ones(len(cuts)))
                add(1, emb.reshape(len(n), crops[0], -1))
    except BaseException:
        for w in writers:
            if w is not None:
                w.abort()
        raise
    out = [np.concatenate(r) if r else None for r in rows]
    for k, w in enumerate(writers):
        if w is not None:
            w.close()
            out[k] = EmbeddingStore(stores[k]).embeddings
    return ids, out[0], out[1]


def verify(embed_fn, hparams, data, device, progress=True):
    """Embed the test set of ``data`` (:func:`~dampit.training.run_setup.
    prepare_data`, its trial lists checked by ``check_trials``) with
    ``embed_fn(wavs, lens) -> [B, 1, D]`` (evaluation mode), score every
    trial list, write the reports and ``summary.json``; return
    ``{"<list>/<scoring>": metrics}``."""
    out = os.path.join(hparams["output_folder"], "verification")
    trial_sets = {
        name: read_trials(path) for name, path in data["trials"].items()
    }
    needed = {u for ts in trial_sets.values() for t in ts for u in t[1:]}
    hop = int(hparams["hop_length"])
    n_crops = int(hparams["n_test_crops"])
    loader = utterance_loader(hparams, data["test"], needed, n_crops)
    stores = [os.path.join(out, f"embeddings_{k}") for k in ("full", "crops")]
    ids, full, crops = embed(embed_fn, loader, hop, device, stores, progress)
    full = ScoringVectors.from_embeddings(full, "cosine")
    crops = {
        m: ScoringVectors.from_embeddings(crops, m) for m in ("dot", "cosine")
    }
    cohort = None
    if hparams.get("score_norm") in SCORE_NORMS:
        pick = _cohort_ids(data["train"], int(hparams["cohort_size"]))
        loader = utterance_loader(hparams, data["train"], pick)
        cohort = embed(embed_fn, loader, hop, device, None, progress)[1]
    index = {uid: k for k, uid in enumerate(ids)}
    results = {}
    for list_name, trials in trial_sets.items():
        enrol = np.array([index[t[1]] for t in trials])
        test = np.array([index[t[2]] for t in trials])
        methods = {"full_cosine": full.score_pairs(enrol, test)}
        for m, vectors in crops.items():
            methods[f"multicrop_{m}"] = vectors.score_pairs(enrol, test)
        if cohort is not None:
            methods["full_cosine_asnorm"] = as_norm(
                methods["full_cosine"],
                enrol,
                test,
                full,
                cohort,
                top_k=int(hparams["asnorm_top_k"]),
            )
        for name, scores in methods.items():
            results[f"{list_name}/{name}"] = write_report(
                scores,
                np.array([t[0] for t in trials]),
                os.path.join(out, list_name),
                name,
                trial_ids=[(t[1], t[2]) for t in trials],
            )
    text = json.dumps(results, indent=2)
    atomic_write_text(os.path.join(out, "summary.json"), text)
    for key, res in results.items():
        print(
            f"[dampit] {key}: EER {100 * res['eer']:.2f}% "
            f"minDCF(0.01) {res['min_dcf_0.01']:.4f} "
            f"({res['n_target']} target / {res['n_nontarget']} non-target)"
        )
    return results


def _cohort_ids(csv_path, size):
    """``size`` training utterances drawn with seed 0 (the AS-norm cohort)."""
    rows = sb.dataio.dataio.load_data_csv(csv_path)
    ids = list(rows)
    pick = np.random.default_rng(0).permutation(len(ids))[:size]
    return {ids[k] for k in pick}
