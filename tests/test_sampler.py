"""CAL's identity sampler: chunks of K per identity, shuffled together, P x K the global batch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from dlcr_cli.errors import UsageError
from dlcr_cli.reid.sampler import IdentitySampler


def _pids(sizes: dict[int, int]) -> list[int]:
    """Sample pids, identities interleaved: identity `pid` has `sizes[pid]` images."""
    out: list[int] = []
    left = dict(sizes)
    while any(left.values()):
        for pid in sorted(left):
            if left[pid]:
                out.append(pid)
                left[pid] -= 1
    return out


def _chunks(batch: list[int], k: int) -> list[list[int]]:
    return [batch[j:j + k] for j in range(0, len(batch), k)]


def _cal_images(sizes, k: int) -> int:
    """CAL's RandomIdentitySampler length: sum over ids of max(n, K) - max(n, K) % K."""
    return sum(max(n, k) - max(n, k) % k for n in sizes)


SIZES = {pid: 3 + (pid * 7) % 20 for pid in range(30)}  # 3 .. 22 images each, some below K
PIDS = _pids(SIZES)

TOY = {0: 10, 1: 1, 2: 5, 3: 3}  # K=4: 2, 1, 1, 1 chunks
TOY_PIDS = _pids(TOY)


def test_hand_computed_epoch_on_a_skewed_toy_set():
    sampler = IdentitySampler(TOY_PIDS, p=2, k=4, seed=0)
    assert sampler.chunks == 5 and len(sampler) == 2  # 5 chunks, batches of 2: the 5th dropped
    expected = Counter({0: 2, 1: 1, 2: 1, 3: 1})
    seen, dropped = Counter(), set()
    for epoch in range(40):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 2
        assert batches == sampler.global_batches()  # one process: the global batches
        assert all(len(b) == 8 and all(type(i) is int for i in b) for b in batches)
        counts = Counter()
        for batch in batches:
            for chunk in _chunks(batch, 4):
                pid = TOY_PIDS[chunk[0]]
                assert all(TOY_PIDS[i] == pid for i in chunk)  # a chunk is one identity's
                counts[pid] += 1
                if pid == 1:
                    assert len(set(chunk)) == 1  # one image, drawn 4 times
                elif pid == 3:
                    assert len(set(chunk)) < 4  # 3 images, 4 draws: with replacement
                else:
                    assert len(set(chunk)) == 4  # enough images: without replacement
        id0 = [i for batch in batches for i in batch if TOY_PIDS[i] == 0]
        assert len(id0) == len(set(id0))  # id 0's two chunks are disjoint: no image twice an epoch
        assert sum(counts.values()) == 4 and not counts - expected  # 4 of the 5 chunks, each once
        dropped |= set(expected - counts)
        seen |= counts
    assert set(seen) == set(TOY)  # every identity's chunks show up over the epochs
    assert dropped == set(TOY)  # and the dropped chunk is anyone's, not always the same one's


def test_plan_follows_the_documented_draws():
    """default_rng([seed, epoch]): per identity in pid order a draw (with replacement below K, else a
    permutation), chunks of K, then one permutation of all the chunks. Pinned: recorded runs replay."""
    pids = [10 + p for p in TOY_PIDS]  # pids need not start at 0
    sampler = IdentitySampler(pids, p=2, k=4, seed=7, epoch=3)
    rng = np.random.default_rng([7, 3])
    chunks = []
    for pid in sorted(set(pids)):
        indices = np.array([i for i, q in enumerate(pids) if q == pid])
        drawn = rng.choice(indices, 4, replace=True) if len(indices) < 4 else rng.permutation(indices)
        chunks += [drawn[j:j + 4].tolist() for j in range(0, len(drawn) // 4 * 4, 4)]
    chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    assert sampler.global_batches() == [chunks[0] + chunks[1], chunks[2] + chunks[3]]


def test_epoch_length_is_cals_and_covers_skewed_data():
    rng = np.random.default_rng(0)
    sizes = np.maximum(1, rng.lognormal(2.0, 2.0, size=300).astype(int))  # 1 .. 3401 images per id
    pids = np.repeat(np.arange(300), sizes)
    p, k = 16, 4
    sampler = IdentitySampler(pids, p=p, k=k, seed=0)
    assert len(sampler) == _cal_images(sizes, k) // (p * k) == 258  # CAL's length, drop_last
    batches = list(sampler)
    assert len(batches) == 258 and all(len(b) == p * k for b in batches)
    # Every chunk once but the < P dropped ones: the big ids' images are each seen at most once,
    # all but (P - 1) K of them.
    big = sizes[pids] >= k
    used = Counter(i for b in batches for i in b if big[i])
    assert max(used.values()) == 1
    assert len(used) >= sum(n - n % k for n in sizes if n >= k) - (p - 1) * k
    # P distinct identities per batch (each chunk at most once) allows at most B batches, the
    # largest B with sum over ids of min(chunks, B) >= P B: here 193, 75% of CAL's epoch; the few
    # huge identities run out of partners.
    chunks = np.maximum(sizes, k) // k
    distinct = max(b for b in range(len(sampler) + 1) if np.minimum(chunks, b).sum() >= p * b)
    assert distinct / len(sampler) < 0.8


def test_an_identity_can_recur_within_a_batch():
    pids = _pids({0: 12, 1: 12, 2: 4})  # 3 + 3 + 1 chunks, P=2
    sampler = IdentitySampler(pids, p=2, k=4, seed=0)
    twice = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        for batch in sampler:
            first, second = _chunks(batch, 4)
            if pids[first[0]] == pids[second[0]]:
                twice.append(batch)
    assert twice
    assert all(len(set(batch)) == 8 for batch in twice)  # two different chunks of that identity


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_split_each_global_batch(world):
    p, k = 8, 4
    one = IdentitySampler(PIDS, p=p, k=k, seed=0, epoch=1)
    assert one.chunks % world  # the trim to a multiple of world is exercised
    ranks = [IdentitySampler(PIDS, p=p, k=k, seed=0, epoch=1, rank=r, world=world) for r in range(world)]
    shards = [list(s) for s in ranks]
    whole = one.global_batches()
    assert {len(s) for s in ranks} == {len(s) for s in shards} == {len(one)} == {len(whole)}
    for j, batch in enumerate(whole):
        parts = [shard[j] for shard in shards]
        assert all(len(part) == p * k // world for part in parts)
        union = sorted(tuple(c) for part in parts for c in _chunks(part, k))
        assert union == sorted(tuple(c) for c in _chunks(batch, k))  # the same chunks, whole
    assert Counter(i for s in shards for b in s for i in b) == Counter(i for b in whole for i in b)
    assert all(s.global_batches() == whole for s in ranks)  # the same plan on every process


def test_steps_per_epoch_do_not_depend_on_the_world():
    lengths = {world: len(IdentitySampler(PIDS, p=8, k=4, world=world)) for world in (1, 2, 4, 8)}
    assert len(set(lengths.values())) == 1


def test_ranks_stream_every_world_th_chunk_when_p_does_not_split():
    p, k, world = 3, 4, 2  # 6 images per process: batches cut across chunks
    one = IdentitySampler(PIDS, p=p, k=k, seed=2)
    chunks = one.plan().tolist()
    usable = len(chunks) // world * world
    ranks = [IdentitySampler(PIDS, p=p, k=k, seed=2, rank=r, world=world) for r in range(world)]
    assert len({len(s) for s in ranks}) == 1
    for rank, sampler in enumerate(ranks):
        batches = list(sampler)
        assert len(batches) == len(sampler) == usable // world * k // 6
        assert all(len(b) == 6 for b in batches)
        stream = [i for c in chunks[rank:usable:world] for i in c]
        assert [i for b in batches for i in b] == stream[:len(batches) * 6]


def test_deterministic_for_seed_and_epoch():
    first = list(IdentitySampler(PIDS, p=8, k=4, seed=5, epoch=2))
    assert first == list(IdentitySampler(PIDS, p=8, k=4, seed=5, epoch=2))
    assert first != list(IdentitySampler(PIDS, p=8, k=4, seed=6, epoch=2))
    sampler = IdentitySampler(PIDS, p=8, k=4, seed=5)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
        assert list(sampler) == epochs[-1]  # iterating twice in one epoch gives the same batches
    assert epochs[2] == first
    assert epochs[0] != epochs[1] != epochs[2]
    assert len({len(e) for e in epochs}) == 1


def test_works_as_a_dataloader_batch_sampler():
    sampler = IdentitySampler(PIDS, p=4, k=4, seed=1, rank=1, world=2)
    data = torch.utils.data.TensorDataset(torch.arange(len(PIDS)))
    loaded = [x.tolist() for (x,) in torch.utils.data.DataLoader(data, batch_sampler=sampler)]
    assert loaded == list(sampler) and len(loaded) == len(sampler)


def test_bad_arguments():
    with pytest.raises(UsageError, match=r"P x K = 3 x 3 = 9 images does not split over 2 processes"):
        IdentitySampler(PIDS, p=3, k=3, world=2)
    with pytest.raises(UsageError, match="P >= 1"):
        IdentitySampler(PIDS, p=0, k=4)
    with pytest.raises(UsageError, match="P >= 1"):
        IdentitySampler(PIDS, p=4, k=0)
    with pytest.raises(UsageError, match=r"an epoch has 8 images .*lower P or K"):
        IdentitySampler(_pids({0: 5, 1: 2}), p=4, k=4)  # 2 chunks, 4 needed
    with pytest.raises(UsageError, match="lower P or K"):
        IdentitySampler([], p=1, k=1)
    # 7 chunks of 2: a batch of 6 chunks on 1 or 2 processes, but 4 get 1 chunk each, < 12 / 4 images
    IdentitySampler(_pids({pid: 2 for pid in range(7)}), p=6, k=2, world=2)
    with pytest.raises(UsageError, match="lower P or K"):
        IdentitySampler(_pids({pid: 2 for pid in range(7)}), p=6, k=2, world=4)
    for rank, world in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="rank"):
            IdentitySampler(PIDS, rank=rank, world=world)
