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
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dlcr_cli.records import Record, record_json
from dlcr_cli.stages import Outcome

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_shard() -> Shard:
    """This process's place, from the variables torchrun and accelerate launch set."""
    try:
        return Shard(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        return Shard()


def dealt(chunks: Sequence[T], shard: Shard) -> list[tuple[int, T]]:
    """This process's chunks with their numbers: chunk i goes to process i mod world."""
    return [(i, chunk) for i, chunk in enumerate(chunks) if i % shard.world == shard.rank]


def barrier() -> None:
    """All processes wait here (a process group through accelerate; only at start-up)."""
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def run_sharded(work: Callable[[T], Iterable[Outcome]], chunks: Sequence[T], folder: Path, shard: Shard,
                on_outcome: Callable[[Outcome], None] = lambda _: None) -> Iterator[Outcome] | None:
    """Do this process's chunks; on the main process, return every process's outcomes in
    chunk order once all are done; on the others, None."""
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
