"""Scale-out under a launcher (`accelerate launch`, `torchrun`): which share of the work this
process does, and how the processes' records meet again.

The launcher starts one process per GPU and tells each its place through the environment
(RANK, WORLD_SIZE, LOCAL_RANK). The work is cut into chunks that are dealt round-robin; every
process writes its outputs into the one output tree and its records, each tagged with its
chunk, to `rank-R.jsonl` in a shard folder, which appears (atomic rename) only once the
process is done. The main process then merges the files by chunk, so stdout holds the same
records in the same order as a run in one process.

Waiting for the other processes is done by watching for their files, not with a collective:
processes can finish hours apart (one resumes a shard that is mostly done), far beyond a
process group's timeout. If a process dies, the launcher stops the others.

The process group is dlcr's own (`join_processes`), not accelerate's `PartialState`, which
picks its backend from the host rather than from `--device` (NCCL for a CPU run on a GPU
machine) and does no collective at all on a CPU host. Its backend follows the device (NCCL
for CUDA, bound to this process's GPU; gloo otherwise), and a second, gloo group with a long
timeout serves `barrier`: the main process evaluates and saves while the others wait, which
can take longer than NCCL's 10-minute watchdog allows, and a gloo barrier holds no GPU work
the watchdog could time out.
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from dlcr_cli.records import Record, record_json
from dlcr_cli.stages import Outcome

T = TypeVar("T")


WAIT_TIMEOUT = timedelta(hours=12)
"""How long `barrier` waits for the slowest process (the main one evaluating a large test set)."""


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    launched: bool = False
    """Started by a launcher (torchrun, accelerate launch), even as its only process."""

    @property
    def active(self) -> bool:
        """Several processes, or one under a launcher: the distributed code path (a single
        launched process runs it too, which is how one GPU checks the multi-GPU path)."""
        return self.world > 1 or self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_shard() -> Shard:
    """This process's place, from the variables torchrun and accelerate launch set."""
    env = os.environ
    try:
        return Shard(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                     launched="WORLD_SIZE" in env and "MASTER_ADDR" in env)
    except ValueError:
        return Shard()


def dealt(chunks: Sequence[T], shard: Shard) -> list[tuple[int, T]]:
    """This process's chunks with their numbers: chunk i goes to process i mod world."""
    return [(i, chunk) for i, chunk in enumerate(chunks) if i % shard.world == shard.rank]


_WAIT_GROUP: Any = None
"""The gloo group `barrier` uses (made by `join_processes`)."""


def backend_for(device: Any) -> str:
    """NCCL for a CUDA device, gloo for anything else: the device decides, not the host."""
    return "nccl" if getattr(device, "type", str(device).split(":")[0]) == "cuda" else "gloo"


def join_processes(device: Any) -> str:
    """Join the launcher's process group (from RANK, WORLD_SIZE, MASTER_ADDR/PORT) once per
    process; returns its backend. On CUDA the group is bound to this process's GPU, as
    PyTorch recommends (`device_id`): its collectives and barriers then use that device."""
    global _WAIT_GROUP
    import torch
    import torch.distributed as dist

    from dlcr_cli.console import log

    if not dist.is_initialized():
        backend = backend_for(device)
        options: dict[str, Any] = {}
        if backend == "nccl":
            torch.cuda.set_device(device)
            options["device_id"] = torch.device(device)
        dist.init_process_group(backend, init_method="env://", **options)
        log.debug("process group: %s, process %d of %d", backend, dist.get_rank() + 1, dist.get_world_size())
    if _WAIT_GROUP is None:
        _WAIT_GROUP = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return dist.get_backend()


def leave_processes() -> None:
    """Destroy the process groups (PyTorch warns at exit about groups left alive); after a
    failure they are left to the launcher, which stops every process."""
    global _WAIT_GROUP
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _WAIT_GROUP = None


def barrier() -> None:
    """All processes wait here, as long as the slowest needs (up to WAIT_TIMEOUT)."""
    import torch.distributed as dist

    if _WAIT_GROUP is None:
        raise RuntimeError("barrier() before join_processes()")
    dist.barrier(group=_WAIT_GROUP)


def run_sharded(work: Callable[[T], Iterable[Outcome]], chunks: Sequence[T], folder: Path, shard: Shard,
                on_outcome: Callable[[Outcome], None] = lambda _: None) -> Iterator[Outcome] | None:
    """Do this process's chunks; on the main process, return every process's outcomes in
    chunk order once all are done; on the others, None."""
    join_processes("cpu")  # one barrier is all it needs of a group: no GPU collective
    if shard.is_main:
        shutil.rmtree(folder, ignore_errors=True)  # a previous run's files must not be merged
        folder.mkdir(parents=True, exist_ok=True)
    barrier()
    done = _rank_file(folder, shard.rank)
    part = done.with_name(done.name + ".part")
    with part.open("w", encoding="utf-8") as out:
        for number, chunk in dealt(chunks, shard):
            for outcome in work(chunk):
                out.write(_line(number, outcome))
                on_outcome(outcome)
    os.replace(part, done)
    if not shard.is_main:
        return None
    _wait_for(folder, shard.world)
    return _merged(folder, shard.world)


def _rank_file(folder: Path, rank: int) -> Path:
    return folder / f"rank-{rank}.jsonl"


def _line(chunk: int, outcome: Outcome) -> str:
    return (f'{{"chunk": {chunk}, "skipped": {json.dumps(outcome.skipped)}, "error": {json.dumps(outcome.error)}, '
            f'"record": {record_json(outcome.record)}}}\n')


def _wait_for(folder: Path, world: int, poll: float = 0.5) -> None:
    from dlcr_cli.console import log

    missing = [r for r in range(world) if not _rank_file(folder, r).exists()]
    if missing:
        log.info("waiting for %d other processes to finish their shares", len(missing))
    while missing:
        time.sleep(poll)
        missing = [r for r in missing if not _rank_file(folder, r).exists()]


def _merged(folder: Path, world: int) -> Iterator[Outcome]:
    """Every rank's lines, in chunk order (each file is already in its chunk order); the
    folder is removed once all are read."""
    files = [_rank_file(folder, r).open(encoding="utf-8") for r in range(world)]
    try:
        lines = heapq.merge(*(map(json.loads, f) for f in files), key=lambda line: line["chunk"])
        for line in lines:
            yield Outcome(Record.model_validate(line["record"]), line["error"], line["skipped"])
    finally:
        for f in files:
            f.close()
    shutil.rmtree(folder, ignore_errors=True)
