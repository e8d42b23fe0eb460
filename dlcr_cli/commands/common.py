"""What every command shares: the app state, option types, settings, and record emission."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from typer.core import TyperCommand

from dlcr_cli.console import log, progress
from dlcr_cli.errors import ItemsFailed
from dlcr_cli.stages import Outcome

if TYPE_CHECKING:
    from dlcr_cli.settings import Resolved
    from dlcr_cli.records import Record

INPUT_HELP = (
    "A dataset root (PRCC, LTCC, VC-Clothes, LaST, DeepChange, CCVID: layout detected), a folder of "
    "images, a JSONL file of records, or - for records on stdin."
)

InputArg = Annotated[str, typer.Argument(help=INPUT_HELP, metavar="INPUT", show_default=False)]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Redo outputs that already exist (default: skip them).")]
RevisionOpt = Annotated[Optional[str], typer.Option("--revision", help="Of a hub id: the branch, tag or commit to load.  \\[default: main]", show_default=False)]
FailFastOpt = Annotated[bool, typer.Option("--fail-fast", help="Stop at the first item that fails (default: log it, go on, exit 1 at the end).")]


@dataclass
class AppState:
    """The global options, as the root callback saw them."""

    config: Path | None = None
    device: str | None = None
    verbosity: int = 0

    def resolve(self, **sections: dict[str, Any]) -> Resolved:
        """Settings with the options the user set (not None) over env, file and defaults."""
        from dlcr_cli.settings import resolve

        cli: dict[str, Any] = {name: _set_only(values) for name, values in sections.items()}
        if self.device is not None:
            cli["device"] = self.device
        return resolve(cli, self.config)


def _set_only(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.value if hasattr(v, "value") else v for k, v in values.items() if v is not None}


class SettingsHelp(TyperCommand):
    """A command whose options stand for the settings of one section (`section`; an option
    named otherwise than its setting is in `renamed`, one that is no setting maps to None):
    its help ends each such option's text with the setting's default, read when the help is
    drawn, so that listing the commands or completing a word never loads the settings model
    (pydantic-settings and the validators: most of what `dlcr --help` once cost)."""

    section = ""
    renamed: dict[str, str | None] = {}

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from dlcr_cli.settings import DEFAULTS

        values = getattr(DEFAULTS, self.section)
        for param in self.params:
            field = self.renamed.get(param.name or "", param.name)
            if not field or param.param_type_name != "option" or param.default is not None:
                continue
            bare = param.__dict__.setdefault("bare_help", param.help or "")
            value = getattr(values, field, None)
            if value is not None and "[default:" not in bare:
                param.help = f"{bare}  \\[default: {show_value(value, param)}]".lstrip()
        super().format_help(ctx, formatter)


def settings_help(section: str, **renamed: str | None) -> type[TyperCommand]:
    """The command class of a verb whose options set `section` (cli.py registers it)."""
    return type(f"{section.title()}Help", (SettingsHelp,), {"section": section, "renamed": renamed})


def show_value(value: Any, option: Any) -> str:
    """A setting as one types it: a flag by its name, lists comma-separated, sizes
    HEIGHTxWIDTH, floats short."""
    if isinstance(value, bool):
        names = option.opts if value else option.secondary_opts
        return names[0] if names else ("on" if value else "off")
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(getattr(value, "value", value))


def state(ctx: typer.Context) -> AppState:
    return ctx.obj if isinstance(ctx.obj, AppState) else AppState()


def emit(outcomes: Iterable[Outcome], verb: str, fail_fast: bool, total: int | None = None,
         bar: bool = True, skipped_means: str = "outputs exist") -> None:
    """Write each done record to stdout, log each failure with its path, and end with exit 1
    if any failed (at once with `fail_fast`). `bar`: show progress (off when the outcomes
    are ready at once); `skipped_means`: why a stage skips, for the closing line."""
    from dlcr_cli.records import write_record

    tally = consume(outcomes, verb, fail_fast, write_record, total, bar, skipped_means)
    tally.raise_if_failed()


@dataclass
class Tally:
    done: int = 0
    skipped: int = 0
    failed: int = 0

    def raise_if_failed(self) -> None:
        if self.failed:
            total = self.done + self.skipped + self.failed
            raise ItemsFailed(f"{self.failed} of {total} items failed (see the messages above)")


def consume(outcomes: Iterable[Outcome], verb: str, fail_fast: bool, sink: Callable[[Record], Any],
            total: int | None = None, bar: bool = True, skipped_means: str = "outputs exist") -> Tally:
    """`sink` each done or skipped record, log each failure with its path (stop at the first
    with `fail_fast`), show progress, and log the counts at the end."""
    tally = Tally()
    with progress(verb, total, enabled=bar) as bar_:
        for outcome in outcomes:
            bar_.advance()
            if outcome.error is not None:
                tally.failed += 1
                log.error("%s: %s", outcome.record.image, outcome.error)
                if fail_fast:
                    raise ItemsFailed(f"stopped at the first failure (--fail-fast): {outcome.record.image}")
                continue
            tally.skipped += outcome.skipped
            tally.done += not outcome.skipped
            sink(outcome.record)
    log.info("%s: %d done, %d skipped (%s), %d failed", verb, tally.done, tally.skipped, skipped_means, tally.failed)
    return tally


def parse_size(text: str, option: str) -> tuple[int, int]:
    """`HxW` (e.g. 128x64) -> (height, width)."""
    from dlcr_cli.errors import UsageError

    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"{option} takes HEIGHTxWIDTH, e.g. 128x64; got {text!r}") from None
    if height < 1 or width < 1:
        raise UsageError(f"{option}: height and width must be positive; got {text!r}")
    return height, width


def parse_range(text: str, option: str) -> tuple[int, int]:
    """`A-B` or `N` -> (A, B) or (N, N)."""
    from dlcr_cli.errors import UsageError

    try:
        low, _, high = text.partition("-")
        return int(low), int(high or low)
    except ValueError:
        raise UsageError(f"{option} takes N or MIN-MAX, e.g. 2-4; got {text!r}") from None


def parse_pk(text: str, option: str = "--batch") -> tuple[int, int]:
    """`PxK` (e.g. 8x8) -> (identities, images per identity)."""
    from dlcr_cli.errors import UsageError

    try:
        p, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"{option} takes PxK (identities x images each), e.g. 8x8; got {text!r}") from None
    if p < 1 or k < 1:
        raise UsageError(f"{option}: identities and images per identity must be positive; got {text!r}")
    return p, k
