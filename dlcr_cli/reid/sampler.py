"""The PK batch sampler: every batch holds P distinct identities with K images each.

Epoch plan, deterministic for (seed, epoch) and the same on every process:

1. Every identity's images, shuffled, are cut into chunks of K, the remainder left out for
   this epoch; an identity with fewer than K images gives one chunk drawn with replacement.
   This is CAL's (Distributed)RandomIdentitySampler, so an epoch has as many steps as the
   reference's (about images / (P K)), which the epoch-based schedule (60 epochs, lr steps at
   20 and 40, CAL from 25) presumes.
2. Batches take one chunk from each of P distinct identities, drawn at random with weights
   proportional to the chunks an identity has left (so the big ones do not pile up at the
   end); the plan ends when fewer than P identities have chunks left. Unlike the reference,
   which concatenates shuffled chunks and may put one identity twice in a batch, P is exact.
3. With several processes (rank, world), the plan is cut to a multiple of `world` and process
   `rank` takes every world-th batch from `rank`: distinct batches, the same count everywhere.

Use it as a DataLoader's `batch_sampler` and call `set_epoch(epoch)` before each epoch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from dlcr_cli.errors import UsageError


class PKSampler(Sampler[list[int]]):
    def __init__(self, pids: Sequence[int], p: int = 8, k: int = 8, seed: int = 0, epoch: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        """pids: the identity of every sample (index i -> pids[i])."""
        if p < 1 or k < 1:
            raise UsageError(f"PK sampling needs P >= 1 and K >= 1 (got P={p}, K={k})")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        groups: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            groups[int(pid)].append(index)
        if len(groups) < p:
            raise UsageError(f"a batch of P={p} identities needs at least {p} training identities; "
                             f"there are {len(groups)}: lower P")
        self.groups = [np.asarray(groups[pid], dtype=np.int64) for pid in sorted(groups)]
        self.p, self.k, self.seed, self.rank, self.world = p, k, seed, rank, world
        self.epoch = epoch
        self._plan: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self) -> list[list[int]]:
        """Every process's batches of this epoch, in order (before sharding)."""
        if self._plan is None or self._plan[0] != self.epoch:
            self._plan = (self.epoch, self._make_plan())
        return self._plan[1]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.plan()
        usable = len(batches) // self.world * self.world
        return iter(batches[self.rank:usable:self.world])

    def __len__(self) -> int:
        return len(self.plan()) // self.world

    def _make_plan(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = [self._chunks(indices, rng) for indices in self.groups]
        left = np.array([len(c) for c in chunks], dtype=np.float64)
        batches: list[list[int]] = []
        while np.count_nonzero(left) >= self.p:
            chosen = rng.choice(len(chunks), size=self.p, replace=False, p=left / left.sum())
            batch: list[int] = []
            for pid in chosen:
                left[pid] -= 1
                batch.extend(chunks[pid].pop())
            batches.append(batch)
        return batches

    def _chunks(self, indices: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
        """The identity's images in chunks of K (shuffled; drawn with replacement below K)."""
        if len(indices) < self.k:
            drawn = rng.choice(indices, size=self.k, replace=True)
        else:
            drawn = rng.permutation(indices)
        usable = len(drawn) // self.k * self.k
        return [drawn[i:i + self.k].tolist() for i in range(0, usable, self.k)]
