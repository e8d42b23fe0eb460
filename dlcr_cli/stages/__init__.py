"""The work of stage 1, one module per verb; commands only parse options and call these."""

from __future__ import annotations

from dataclasses import dataclass

from dlcr_cli.records import Record


@dataclass
class Outcome:
    """What a stage did with one record: done (record updated), skipped (outputs existed),
    or failed (`error` says why; the run goes on)."""

    record: Record
    error: str | None = None
    skipped: bool = False
