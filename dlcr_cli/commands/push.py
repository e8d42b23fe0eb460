"""`dlcr push`: a training run's model, records and model card to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dlcr_cli.commands.evaluate import Epoch


def push(
    run: Annotated[Path, typer.Argument(help="A dlcr train run folder (or a model folder: model.safetensors + model.json).", metavar="RUN", show_default=False)],
    repo_id: Annotated[str, typer.Argument(help="The model repository, owner/name (created when missing).", metavar="REPO_ID", show_default=False)],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private (an existing one keeps its visibility).")] = False,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Upload to this branch (created from main when missing).  \\[default: main]", metavar="BRANCH", show_default=False)] = None,
    epoch: Annotated[Epoch, typer.Option(help="Of a run folder: its best evaluated epoch's model (best/, CAL's reporting protocol), or its last epoch's.  \\[default: best when the run kept one]", show_default=False)] = Epoch.best,
    dry_run: Annotated[Optional[Path], typer.Option("--dry-run", help="Write the folder that would be uploaded (model, records, README.md) here and upload nothing.", metavar="DIR", file_okay=False, show_default=False)] = None,
) -> None:
    """Upload a run to the Hugging Face Hub: the model `dlcr evaluate -c RUN` loads (best/ when
    the run kept one, else its last epoch's) as model.safetensors + model.json, the run's
    settings.json and metrics.jsonl, and a generated model card (README.md: library and tags,
    dataset, protocol, the model's metrics, the `dlcr train` command that trained it, how to
    use it). Then `dlcr evaluate DATASET -c REPO_ID` (and every verb taking a checkpoint)
    loads it by hub id. Authenticates with HF_TOKEN or `hf auth login`; the commit's URL goes
    to stdout.

    Examples:

        dlcr push runs/prcc-dlcr user/cal-prcc-dlcr

        dlcr push runs/prcc-dlcr user/cal-prcc-dlcr --private --revision v1

        dlcr push runs/prcc-dlcr user/cal-prcc-dlcr --dry-run upload && cat upload/README.md
    """
    import sys

    from dlcr_cli.hub import push as push_run

    where = push_run(run, repo_id, private=private, revision=revision, which=epoch.value, dry_run=dry_run)
    sys.stdout.write(where + "\n")
