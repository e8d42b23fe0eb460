"""The stderr console: logging, progress bars and tables. stdout is for records only."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

stderr = Console(stderr=True)
log = logging.getLogger("dlcr")

_state = {"verbosity": 0}


class _ConsoleHandler(logging.Handler):
    """One unwrapped line per message (paths stay greppable), coloured on a terminal."""

    STYLES = {logging.DEBUG: "dim", logging.WARNING: "yellow", logging.ERROR: "red"}

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        stderr.print(f"dlcr: {prefix}{self.format(record)}", style=self.STYLES.get(record.levelno),
                     markup=False, highlight=False, soft_wrap=True)


def setup_logging(verbosity: int) -> None:
    """verbosity: 0 info, >0 debug, -1 warnings and errors only, < -1 errors only."""
    _state["verbosity"] = verbosity
    level = logging.DEBUG if verbosity > 0 else {0: logging.INFO, -1: logging.WARNING}.get(verbosity, logging.ERROR)
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def error_line(message: str) -> None:
    stderr.print(f"dlcr: error: {message}", style="bold red", markup=False, highlight=False, soft_wrap=True)


def bars_enabled() -> bool:
    return stderr.is_terminal and _state["verbosity"] >= 0


@contextmanager
def progress(description: str, total: int | None = None, unit: str = "images",
             enabled: bool = True) -> Iterator["Bar"]:
    """A progress bar on stderr with rate and ETA; silent when stderr is no terminal or -q."""
    if not (enabled and bars_enabled()):
        yield Bar(None, None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed or 0:.1f} {unit}/s", style="progress.data.speed")

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=stderr, redirect_stdout=False, redirect_stderr=False,
                  transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield Bar(bar, task)


class Bar:
    def __init__(self, bar, task) -> None:
        self._bar, self._task = bar, task

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def describe(self, text: str) -> None:
        """Replace the bar's description (e.g. with the running loss)."""
        if self._bar is not None:
            self._bar.update(self._task, description=text)
