"""The composition root: the typer app, global options, commands, errors -> exit codes.

Importing this module (what `dlcr --help` and every TAB press do) must stay light: no
torch, transformers, diffusers or accelerate. Commands import heavy modules in their bodies.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from dlcr_cli import __version__
from dlcr_cli.commands import bench as bench_cmd
from dlcr_cli.commands import completion as completion_cmd
from dlcr_cli.commands import config as config_cmd
from dlcr_cli.commands import demo as demo_cmd
from dlcr_cli.commands import describe as describe_cmd
from dlcr_cli.commands import embed as embed_cmd
from dlcr_cli.commands import discriminator as discriminator_cmd
from dlcr_cli.commands import evaluate as evaluate_cmd
from dlcr_cli.commands import expand as expand_cmd
from dlcr_cli.commands import export as export_cmd
from dlcr_cli.commands import inpaint as inpaint_cmd
from dlcr_cli.commands import mask as mask_cmd
from dlcr_cli.commands import push as push_cmd
from dlcr_cli.commands import refine as refine_cmd
from dlcr_cli.commands import run as run_cmd
from dlcr_cli.commands import summarize as summarize_cmd
from dlcr_cli.commands import synth as synth_cmd
from dlcr_cli.commands import train as train_cmd
from dlcr_cli.commands.common import AppState, settings_help
from dlcr_cli.console import error_line, setup_logging
from dlcr_cli.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, DlcrError


class DlcrGroup(TyperGroup):
    """Turns our errors into one stderr line and an exit code, in every way of invoking."""

    def invoke(self, ctx):
        try:
            result = super().invoke(ctx)
            _leave_process_group()
            return result
        except DlcrError as err:
            _traceback_if_debug()
            error_line(str(err))
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            _traceback_if_debug()
            error_line("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # The reader of our stdout went away (`dlcr mask ... | head`): stop quietly.
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None


def _leave_process_group() -> None:
    """A command run under a launcher ends by destroying its process groups (never imports torch)."""
    if "torch.distributed" in sys.modules:
        from dlcr_cli.distributed import leave_processes

        leave_processes()


def _traceback_if_debug() -> None:
    if os.environ.get("DLCR_DEBUG") not in (None, "", "0"):
        import traceback

        traceback.print_exc()


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no real file (tests)
        pass


app = typer.Typer(
    name="dlcr",
    cls=DlcrGroup,
    help=(
        "DLCR for clothes-changing person re-identification: clothing masks, descriptions, "
        "prompts and diffusion inpainting that expand a training set, then training, "
        "evaluation and refinement of a CC-ReID model.\n\n"
        "Commands read records (JSON lines) or a dataset and write records to stdout, so they "
        "compose in pipes: `dlcr mask DATA --out work | dlcr describe - | ...`. Logs and "
        "progress go to stderr. Set DLCR_DEBUG=1 for tracebacks."
    ),
    rich_markup_mode="markdown",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"dlcr {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (debug).")] = 0,
    quiet: Annotated[int, typer.Option("--quiet", "-q", count=True, help="Less output: -q warnings and errors, no progress bars; -qq errors only.")] = 0,
    config: Annotated[Optional[Path], typer.Option("--config", help="Config file (TOML) instead of $DLCR_CONFIG or the user config dir's config.toml.", dir_okay=False, show_default=False)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps (setting: device).", show_default=False)] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    from dlcr_cli.distributed import current_shard

    # Under a launcher only the main process logs and shows progress; the others say errors only.
    verbosity = verbose - quiet if current_shard().is_main else min(verbose - quiet, -2)
    ctx.obj = AppState(config=config, device=device, verbosity=verbosity)
    setup_logging(verbosity)


app.command("demo")(demo_cmd.demo)
app.command("run", no_args_is_help=True)(run_cmd.run)
app.command("synth", no_args_is_help=True)(synth_cmd.synth)
app.command("mask", no_args_is_help=True, cls=settings_help("mask"))(mask_cmd.mask)
app.command("describe", no_args_is_help=True, cls=settings_help("describe"))(describe_cmd.describe)
app.command("summarize", no_args_is_help=True, cls=settings_help("summarize"))(summarize_cmd.summarize)
app.command("inpaint", no_args_is_help=True, cls=settings_help("inpaint"))(inpaint_cmd.inpaint)
app.command("discriminator", no_args_is_help=True, cls=settings_help("discriminator"))(discriminator_cmd.discriminator)
app.command("expand", no_args_is_help=True)(expand_cmd.expand)
app.command("train", no_args_is_help=True, cls=settings_help("train"))(train_cmd.train)
app.command("evaluate", no_args_is_help=True, cls=settings_help("evaluate"))(evaluate_cmd.evaluate)
app.command("refine", no_args_is_help=True, cls=settings_help("refine", k="variants", variants=None))(refine_cmd.refine)
app.command("embed", no_args_is_help=True, cls=settings_help("evaluate"))(embed_cmd.embed)
app.command("push", no_args_is_help=True)(push_cmd.push)
app.command("export", no_args_is_help=True)(export_cmd.export)
app.add_typer(bench_cmd.app, name="bench")
app.command("config")(config_cmd.config)
app.command("completion", no_args_is_help=True)(completion_cmd.completion)


def main() -> None:
    app(prog_name="dlcr")
