"""Property-based and integration tests for dampit.dataio.sampler."""

import collections
import os
import time

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from speechbrain.utils.checkpoints import Checkpointer

from dampit.dataio.sampler import PKSampler


@st.composite
def corpora(draw):
    """Labels (interleaved, str or int) with 1..9 utterances per speaker."""
    counts = draw(st.lists(st.integers(1, 9), min_size=1, max_size=12))
    as_str = draw(st.booleans())
    labels = []
    for spk, c in enumerate(counts):
        labels += [f"spk{spk}" if as_str else spk * 7] * c
    perm = draw(st.permutations(range(len(labels))))
    return [labels[i] for i in perm]


def _usable(labels, K):
    counts = collections.Counter(labels)
    return {s for s, c in counts.items() if c >= K}


def _check_batch(batch, labels, P, K):
    assert len(batch) == P * K
    spk = [labels[i] for i in batch]
    blocks = [spk[j * K : (j + 1) * K] for j in range(P)]
    for block in blocks:  # speaker-major: K of the same speaker in a row
        assert len(set(block)) == 1
    assert len({b[0] for b in blocks}) == P  # no speaker twice
    for j in range(P):
        assert len(set(batch[j * K : (j + 1) * K])) == K  # distinct


@settings(max_examples=80, deadline=None)
@given(
    labels=corpora(),
    P=st.integers(1, 6),
    K=st.integers(1, 4),
    seed=st.integers(0, 2**31),
    bpe=st.one_of(st.none(), st.integers(1, 6)),
)
def test_batches_are_p_by_k(labels, P, K, seed, bpe):
    usable = _usable(labels, K)
    if len(usable) < P:
        with pytest.raises(ValueError, match=f"P={P}"):
            PKSampler(labels, P, K, seed=seed)
        return
    sampler = PKSampler(labels, P, K, seed=seed, batches_per_epoch=bpe)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    if bpe is None:
        units = sum(
            max(c, K)
            for s, c in collections.Counter(labels).items()
            if s in usable
        )
        assert len(sampler) == max(1, units // (P * K))
    else:
        assert len(sampler) == bpe
    for batch in batches:
        assert all(isinstance(i, int) for i in batch)
        _check_batch(batch, labels, P, K)
        assert {labels[i] for i in batch} <= usable


@settings(max_examples=40, deadline=None)
@given(labels=corpora(), seed=st.integers(0, 1000), epoch=st.integers(0, 50))
def test_deterministic_per_seed_and_epoch(labels, seed, epoch):
    assume(len(_usable(labels, 2)) >= 2)
    a = PKSampler(labels, 2, 2, seed=seed, batches_per_epoch=4)
    b = PKSampler(labels, 2, 2, seed=seed, batches_per_epoch=4)
    a.set_epoch(epoch)
    b.set_epoch(epoch)
    assert list(a) == list(b)
    assert list(a) == list(a)  # set_epoch fixes the epoch until changed


def test_epochs_and_seeds_differ():
    labels = [s for s in range(20) for _ in range(6)]
    s = PKSampler(labels, P=5, K=2, seed=0)
    epochs = []
    for e in range(4):
        s.set_epoch(e)
        epochs.append(list(s))
    assert len({str(e) for e in epochs}) == 4
    other = PKSampler(labels, P=5, K=2, seed=1)
    other.set_epoch(0)
    assert list(other) != epochs[0]


def test_internal_counter_without_set_epoch():
    labels = [s for s in range(10) for _ in range(4)]
    s = PKSampler(labels, P=3, K=2, seed=3)
    first, second = list(s), list(s)  # two passes, no set_epoch
    assert first != second
    ref = PKSampler(labels, P=3, K=2, seed=3)
    assert ref.global_batches(0) == first
    assert ref.global_batches(1) == second
    assert s.epoch == 2
    assert len(s) == len(first)  # __len__ does not advance the counter
    assert s.epoch == 2


@settings(max_examples=40, deadline=None)
@given(
    labels=corpora(),
    world=st.integers(1, 4),
    bpe=st.one_of(st.none(), st.integers(1, 5)),
    epoch=st.integers(0, 9),
)
def test_ranks_take_contiguous_slices_of_one_global_batch(
    labels, world, bpe, epoch
):
    P = 2 * world
    assume(len(_usable(labels, 2)) >= P)
    per_rank = []
    for r in range(world):
        s = PKSampler(
            labels,
            P,
            2,
            seed=11,
            batches_per_epoch=bpe,
            num_replicas=world,
            rank=r,
        )
        s.set_epoch(epoch)
        per_rank.append(list(s))
    ref = PKSampler(labels, P, 2, seed=11, batches_per_epoch=bpe)
    glob = ref.global_batches(epoch)
    assert {len(b) for b in per_rank} == {len(glob)}
    # rank r holds rows 4r .. 4r + 3 (2 speakers x 2) of every global batch
    for b, batch in enumerate(glob):
        _check_batch(batch, labels, P, 2)
        for r in range(world):
            assert per_rank[r][b] == batch[4 * r : 4 * r + 4]
    if bpe is None:
        units = sum(
            max(c, 2) for c in collections.Counter(labels).values() if c >= 2
        )
        assert len(glob) == max(1, units // (P * 2))


def test_p_not_divisible_by_world_size():
    labels = [s for s in range(10) for _ in range(4)]
    with pytest.raises(ValueError, match="P=3 .* over 2 ranks"):
        PKSampler(labels, 3, 2, num_replicas=2, rank=1)


def test_utterances_used_evenly_within_each_speaker():
    counts = [3, 4, 5, 7, 10, 2, 6]
    labels = [s for s, c in enumerate(counts) for _ in range(c)]
    s = PKSampler(labels, P=3, K=2, seed=0, batches_per_epoch=40)
    use = collections.Counter(i for b in s.global_batches(0) for i in b)
    for spk in range(len(counts)):
        items = [i for i, lab in enumerate(labels) if lab == spk]
        used = [use[i] for i in items]
        assert max(used) - min(used) <= 1, (spk, used)
    # speakers are drawn in proportion to their utterances (roughly)
    per_spk = collections.Counter(
        labels[i] for b in s.global_batches(0) for i in b
    )
    assert per_spk[4] > per_spk[5]


def test_speakers_with_fewer_than_k_are_left_out():
    labels = ["a"] * 5 + ["b"] * 4 + ["c"]
    with pytest.raises(ValueError, match="only 2 of 3 speakers"):
        PKSampler(labels, P=3, K=2)
    s = PKSampler(labels, P=2, K=2, batches_per_epoch=3)
    assert all(labels[i] != "c" for batch in s for i in batch)


def test_bad_arguments():
    labels = [0, 0, 1, 1]
    for kwargs in (
        {"P": 0, "K": 2},
        {"P": 2, "K": 2, "seed": -1},
        {"P": 2, "K": 2, "batches_per_epoch": 0},
        {"P": 2, "K": 2, "num_replicas": 2, "rank": 2},
        {"P": 2, "K": 2, "num_replicas": 2},  # rank missing, no DDP
    ):
        with pytest.raises(ValueError):
            PKSampler(labels, **kwargs)
    with pytest.raises(ValueError, match="epoch"):
        PKSampler(labels, 2, 2).set_epoch(-1)


def test_dataloader_and_tensor_labels():
    labels = torch.tensor([s for s in range(6) for _ in range(3)])
    data = torch.utils.data.TensorDataset(torch.arange(len(labels)), labels)
    sampler = PKSampler(labels, P=3, K=2, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
    n = 0
    for idx, lab in loader:
        n += 1
        assert lab[0::2].tolist() == lab[1::2].tolist()  # anchors/positives
        assert len(set(lab.tolist())) == 3
        assert (labels[idx] == lab).all()
    assert n == len(sampler) == 3  # 18 utterances // (3 * 2)


def test_from_dynamic_item_dataset():
    from speechbrain.dataio.dataset import DynamicItemDataset
    from speechbrain.utils.data_pipeline import provides, takes

    data = {
        f"u{i:02d}": {"spk_id": f"s{i % 4}", "duration": float(i)}
        for i in range(16)
    }
    ds = DynamicItemDataset(data)
    s = PKSampler.from_dataset(ds, "spk_id", P=2, K=2, seed=0)
    batch = next(iter(s))
    with ds.output_keys_as(["spk_id"]):
        spk = [ds[i]["spk_id"] for i in batch]
    assert spk[0] == spk[1] != spk[2] == spk[3]

    # a filtered / sorted view: indices refer to the view's positions
    view = ds.filtered_sorted(
        key_min_value={"duration": 8.0}, sort_key="duration"
    )
    s = PKSampler.from_dataset(view, "spk_id", P=4, K=2)
    with view.output_keys_as(["spk_id", "duration"]):
        for i in next(iter(s)):
            assert view[i]["duration"] >= 8.0

    # a dynamic item as key (computed without reading audio)
    @takes("spk_id")
    @provides("spk_num")
    def to_num(spk_id):
        return int(spk_id[1:])

    ds.add_dynamic_item(to_num)
    s = PKSampler.from_dataset(ds, "spk_num", P=4, K=4)
    assert sorted(labels_of(ds, next(iter(s)))) == sorted([0, 1, 2, 3] * 4)
    with pytest.raises(KeyError, match="nope"):
        PKSampler.from_dataset(ds, "nope", P=2, K=2)
    with pytest.raises(TypeError, match="from_dataset"):
        PKSampler(ds, P=2, K=2)


def labels_of(ds, idx):
    """Numeric speaker of dataset positions (helper)."""
    return [int(ds.data[ds.data_ids[i]]["spk_id"][1:]) for i in idx]


def test_speechbrain_distributed_wrapper_path():
    """Option 2 of the module docstring: SpeechBrain's wrapper splits the
    global sequence of a num_replicas=1 sampler into disjoint halves."""
    from speechbrain.dataio.sampler import DistributedSamplerWrapper

    labels = [s for s in range(12) for _ in range(4)]
    glob = PKSampler(
        labels, 3, 2, seed=0, num_replicas=1, rank=0, batches_per_epoch=8
    )
    glob.set_epoch(1)
    ref = list(glob)
    got = []
    for r in range(2):
        s = PKSampler(
            labels, 3, 2, seed=0, num_replicas=1, rank=0, batches_per_epoch=8
        )
        w = DistributedSamplerWrapper(s, num_replicas=2, rank=r, shuffle=True)
        w.set_epoch(1)  # passes through to the PKSampler
        got.append(list(w))
    assert len(got[0]) == len(got[1]) == 4
    pos = [[ref.index(b) for b in g] for g in got]
    assert sorted(pos[0] + pos[1]) == list(range(8))


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    labels = [s for s in range(10) for _ in range(4)]
    s = PKSampler(labels, P=2, K=2, seed=5)
    s.set_epoch(2)
    torch.save(
        {"rank": s.rank, "world": s.num_replicas, "batches": list(s)},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


def test_rank_and_world_from_torch_distributed(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.start_processes(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        start_method="fork",
        join=False,
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the 2-process gloo run did not finish in 120 s")
    res = [
        torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        for r in range(2)
    ]
    assert [r["rank"] for r in res] == [0, 1]
    assert [r["world"] for r in res] == [2, 2]
    ref = PKSampler(
        [s for s in range(10) for _ in range(4)],
        2,
        2,
        seed=5,
        num_replicas=2,
        rank=0,
    ).global_batches(2)
    assert res[0]["batches"] == [b[:2] for b in ref]
    assert res[1]["batches"] == [b[2:] for b in ref]
    assert len(ref) == 40 // 4


def test_brain_make_dataloader_without_ddp(tmp_path, monkeypatch):
    """Without DDP, SpeechBrain passes the batch sampler through."""
    import speechbrain as sb
    from speechbrain.dataio.dataset import DynamicItemDataset

    monkeypatch.chdir(tmp_path)
    data = {f"u{i:02d}": {"spk_id": f"s{i % 4}"} for i in range(16)}
    ds = DynamicItemDataset(data)
    ds.set_output_keys(["id", "spk_id"])
    sampler = PKSampler.from_dataset(ds, "spk_id", P=2, K=2, seed=0)
    brain = sb.Brain(
        modules={"m": torch.nn.Linear(1, 1)}, run_opts={"device": "cpu"}
    )
    loader = brain.make_dataloader(ds, sb.Stage.TRAIN, batch_sampler=sampler)
    batches = [b.spk_id for b in loader]
    assert len(batches) == len(sampler) == 4
    for spk in batches:
        assert spk[0] == spk[1] != spk[2] == spk[3]
    assert brain.train_sampler is None  # so fit() will not call set_epoch


def test_checkpoint_restores_the_epoch_without_set_epoch(tmp_path):
    """Saved inside a pass: the same epoch again; at its end: the next."""
    labels = [s for s in range(10) for _ in range(4)]
    s = PKSampler(labels, P=3, K=2, seed=3)
    ckpt = Checkpointer(tmp_path, recoverables={"sampler": s})
    assert list(s) == s.global_batches(0)
    assert list(s) == s.global_batches(1)
    iter(s)  # the pass of epoch 2 begins
    inside = ckpt.save_checkpoint(end_of_epoch=False, name="inside")
    at_end = ckpt.save_checkpoint(end_of_epoch=True, name="end")
    for saved, epoch in ((inside, 2), (at_end, 3)):
        fresh = PKSampler(labels, P=3, K=2, seed=3)
        ckpt.add_recoverable("sampler", fresh)
        ckpt.load_checkpoint(saved)
        assert list(fresh) == fresh.global_batches(epoch)
        assert list(fresh) == fresh.global_batches(epoch + 1)
    before_any_pass = PKSampler(labels, P=3, K=2, seed=3)
    before_any_pass.set_epoch(5)
    path = tmp_path / "state.yaml"
    before_any_pass._save(path)
    fresh = PKSampler(labels, P=3, K=2, seed=3)
    fresh._load(path, end_of_epoch=True)
    assert list(fresh) == fresh.global_batches(5)
    path.write_text("epoch: -1\nin_pass: true\n")
    with pytest.raises(ValueError, match="state.yaml is not a saved"):
        fresh._load(path, end_of_epoch=False)
