"""CAL's identity sampler (Simple-CCReID's (Distributed)RandomIdentitySampler), with a global batch.

Epoch plan, deterministic for (seed, epoch) and the same on every process:

1. Every identity's images, shuffled, are cut into chunks of K, the remainder left out for this
   epoch; an identity with fewer than K images gives one chunk drawn with replacement.
2. All the chunks are shuffled together; a batch is P consecutive chunks. So an epoch visits
   every chunk once, about sum over identities of max(n, K) - max(n, K) % K images, and an
   identity can recur within a batch (two of its chunks side by side), as in CAL.
3. With several processes (rank, world), the chunks are cut to a multiple of `world`, process
   `rank` takes every world-th chunk from `rank`, and its batches are consecutive slices of
   P K / world images of those, the last partial one dropped (CAL's scheme).

The one change: P x K is the global batch, split over the processes, where CAL's TRAIN_BATCH
is per process, so its global batch (and with it the recipe: lr, steps per epoch) grows with the
number of GPUs. Here, when P is a multiple of `world`, the processes' j-th batches together are
exactly the one-process j-th batch, and an epoch has as many steps for any number of processes.

Use it as a DataLoader's `batch_sampler` and call `set_epoch(epoch)` before each epoch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from dlcr_cli.errors import UsageError


class IdentitySampler(Sampler[list[int]]):
    def __init__(self, pids: Sequence[int], p: int = 8, k: int = 8, seed: int = 0, epoch: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        """pids: the identity of every sample (index i -> pids[i]); P x K: the global batch."""
        if p < 1 or k < 1:
            raise UsageError(f"identity sampling needs P >= 1 and K >= 1 (got P={p}, K={k})")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        if p * k % world:
            raise UsageError(f"the batch of P x K = {p} x {k} = {p * k} images does not split over "
                             f"{world} processes")
        groups: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            groups[int(pid)].append(index)
        self.groups = [np.asarray(groups[pid], dtype=np.int64) for pid in sorted(groups)]
        self.p, self.k, self.seed, self.rank, self.world = p, k, seed, rank, world
        self.epoch = epoch
        self.chunks = sum(max(len(g), k) // k for g in self.groups)  # per epoch, whatever the epoch
        self._plan: tuple[int, np.ndarray] | None = None
        if len(self) == 0:
            raise UsageError(f"an epoch has {self.chunks * k} images ({self.chunks} chunks of K={k}), not one "
                             f"batch of P x K = {p * k} over {world} process(es): lower P or K")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self) -> np.ndarray:
        """This epoch's chunks in order, one row of K sample indices each (before sharding)."""
        if self._plan is None or self._plan[0] != self.epoch:
            self._plan = (self.epoch, self._make_plan())
        return self._plan[1]

    def global_batches(self) -> list[list[int]]:
        """The batches of this epoch as one process (world=1) would take them."""
        chunks = self.plan()
        usable = len(chunks) // self.p * self.p
        return chunks[:usable].reshape(-1, self.p * self.k).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        chunks = self.plan()
        stream = chunks[:len(chunks) // self.world * self.world][self.rank::self.world].reshape(-1)
        size = self.p * self.k // self.world
        return iter(stream[:len(stream) // size * size].reshape(-1, size).tolist())

    def __len__(self) -> int:
        return self.chunks // self.world * self.k // (self.p * self.k // self.world)

    def _make_plan(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks: list[np.ndarray] = []
        for indices in self.groups:
            if len(indices) < self.k:
                drawn = rng.choice(indices, size=self.k, replace=True)
            else:
                drawn = rng.permutation(indices)
            usable = len(drawn) // self.k * self.k
            chunks.extend(drawn[:usable].reshape(-1, self.k))
        return np.stack(chunks)[rng.permutation(len(chunks))]
