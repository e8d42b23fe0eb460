"""The work of stage 1, one module per verb; commands only parse options and call these."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # the record model (pydantic) is not needed to draw --help
    from dlcr_cli.records import Record

T = TypeVar("T")


@dataclass
class Outcome:
    """What a stage did with one record: done (record updated), skipped (outputs existed),
    or failed (`error` says why; the run goes on)."""

    record: Record
    error: str | None = None
    skipped: bool = False


def in_batches(items: Iterable[T], batch_size: int, needs_work: Callable[[T], bool]) -> Iterator[list[T]]:
    """Consecutive runs of `items`, in order, each holding `batch_size` items that need work.

    Items that need none (skipped, failed) ride along with the next batch; a run of them is
    let go after 8 batches' worth, so a resumed run streams its skipped records promptly.
    """
    pending: list[T] = []
    todo = 0
    for item in items:
        pending.append(item)
        todo += needs_work(item)
        if todo >= batch_size or len(pending) >= 8 * batch_size:
            yield pending
            pending, todo = [], 0
    if pending:
        yield pending
