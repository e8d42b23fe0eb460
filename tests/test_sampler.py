"""The PK sampler: P distinct identities x K images per batch, reproducible, shardable."""

from __future__ import annotations

from collections import Counter

import pytest

from dlcr_cli.errors import UsageError
from dlcr_cli.reid.sampler import PKSampler


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


SIZES = {pid: 3 + (pid * 7) % 20 for pid in range(30)}  # 3 .. 22 images each, some below K
PIDS = _pids(SIZES)


def test_batches_hold_p_distinct_identities_with_k_images_each():
    sampler = PKSampler(PIDS, p=8, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 32
        counts = Counter(PIDS[i] for i in batch)
        assert len(counts) == 8 and set(counts.values()) == {4}
        for j in range(0, 32, 4):  # chunk by chunk: one identity's images
            assert len({PIDS[i] for i in batch[j:j + 4]}) == 1


def test_small_identities_are_drawn_with_replacement():
    pids = _pids({0: 2, 1: 1, 2: 10, 3: 9})
    sampler = PKSampler(pids, p=2, k=4, seed=3)
    seen_small = False
    for epoch in range(5):
        sampler.set_epoch(epoch)
        for batch in sampler:
            for j in range(0, len(batch), 4):
                chunk = batch[j:j + 4]
                pid = pids[chunk[0]]
                assert all(pids[i] == pid for i in chunk)
                if pid in (0, 1):
                    seen_small = True
                    assert len(set(chunk)) < 4  # repeats: fewer than K images
                else:
                    assert len(set(chunk)) == 4  # without replacement
    assert seen_small


def test_an_epoch_covers_the_data_like_the_reference():
    """About images / (P K) batches, as CAL's RandomIdentitySampler; every image at most once
    for identities with at least K images."""
    sampler = PKSampler(PIDS, p=8, k=4, seed=1)
    chunks = sum(max(n, 4) // 4 for n in SIZES.values())
    assert chunks // 8 - 3 <= len(sampler) <= chunks // 8
    used = Counter(i for batch in sampler for i in batch if SIZES[PIDS[i]] >= 4)
    assert max(used.values()) == 1


def test_deterministic_for_seed_and_epoch():
    first = list(PKSampler(PIDS, p=8, k=4, seed=5, epoch=2))
    assert first == list(PKSampler(PIDS, p=8, k=4, seed=5, epoch=2))
    assert first != list(PKSampler(PIDS, p=8, k=4, seed=6, epoch=2))
    sampler = PKSampler(PIDS, p=8, k=4, seed=5)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    assert epochs[2] == first
    assert epochs[0] != epochs[1] != epochs[2]
    assert list(sampler) == list(sampler)  # iterating twice in one epoch gives the same batches


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_get_disjoint_batches_of_equal_count(world):
    sizes = {pid: 8 + pid % 5 for pid in range(40)}  # all >= K: every image at most once per epoch
    pids = _pids(sizes)
    samplers = [PKSampler(pids, p=4, k=4, seed=0, epoch=1, rank=rank, world=world) for rank in range(world)]
    shards = [list(s) for s in samplers]
    whole = PKSampler(pids, p=4, k=4, seed=0, epoch=1).plan()
    assert {len(s) for s in samplers} == {len(shard) for shard in shards} == {len(whole) // world}
    indices = [{i for batch in shard for i in batch} for shard in shards]
    for a in range(world):
        for b in range(a + 1, world):
            assert not indices[a] & indices[b]
    assert sorted(map(tuple, sum(shards, []))) == sorted(map(tuple, whole[:len(whole) // world * world]))


def test_bad_arguments():
    with pytest.raises(UsageError, match="at least 8"):
        PKSampler(_pids({0: 5, 1: 5}), p=8, k=4)
    with pytest.raises(UsageError):
        PKSampler(PIDS, p=0, k=4)
    with pytest.raises(ValueError):
        PKSampler(PIDS, rank=2, world=2)
