"""`dlcr describe`: a clothing description for every image."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from dlcr_cli.commands.common import FailFastOpt, InputArg, emit, state



class Backend(str, Enum):
    vlm = "vlm"
    colors = "colors"


def describe(
    ctx: typer.Context,
    input: InputArg,
    backend: Annotated[Optional[Backend], typer.Option(help="vlm: a vision-language model; colors: name the garment colours of the parsing map (weight-free).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(help="vlm: image-text-to-text model, hub id or folder.", show_default=False)] = None,
    prompt: Annotated[Optional[str], typer.Option(help="vlm: the question asked.", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per model call.", show_default=False)] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="vlm: longest answer, in tokens.", show_default=False)] = None,
    temperature: Annotated[Optional[float], typer.Option(help="vlm: sampling temperature, 0 for greedy.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="vlm: random seed of the sampling.", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help="Threads reading images.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Describe records that already have a description (default: pass them on).")] = False,
    fail_fast: FailFastOpt = False,
) -> None:
    """Add `description` (what the person wears) to every record, streaming in input order.

    The vlm backend asks a vision-language model (LLaVA-1.5 by default) the paper's question;
    the colors backend needs the `parsing` maps of `dlcr mask` and writes items such as
    `red shirt| blue pants| black shoes`.

    Examples:

        dlcr mask /data/prcc --out work | dlcr describe - > described.jsonl

        dlcr describe masks.jsonl --batch-size 16 --device cuda:1 > described.jsonl

        dlcr describe masks.jsonl --backend colors | head -3
    """
    from dlcr_cli.inputs import read_records
    from dlcr_cli.stages.describe import make_describer, run_describe

    settings = state(ctx).resolve(describe=dict(
        backend=backend, model=model, prompt=prompt, batch_size=batch_size, max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed, workers=workers,
    )).settings
    records = read_records(input)  # input errors come before any model is loaded
    describer = make_describer(settings)
    outcomes = run_describe(records, describer, overwrite=overwrite, workers=settings.describe.workers)
    emit(outcomes, "describe", fail_fast, total=records.total, skipped_means="described already")
