"""`dlcr mask`: clothing masks and label maps for every image."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from dlcr_cli.commands.common import FailFastOpt, InputArg, OverwriteOpt, emit, state



class Backend(str, Enum):
    segformer = "segformer"
    parsing = "parsing"


class LabelSet(str, Enum):
    auto = "auto"
    lip = "lip"
    atr = "atr"


def mask(
    ctx: typer.Context,
    input: InputArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: OUT/masks/REL.png (0/255) and OUT/parsing/REL.png (label ids).", file_okay=False, show_default=False)],
    backend: Annotated[Optional[Backend], typer.Option(help="segformer: a segmentation model; parsing: existing label maps.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(help="segformer: hub id or folder.", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per model call.", show_default=False)] = None,
    parsing_dir: Annotated[Optional[Path], typer.Option(help="parsing: folder of label maps; the map of ROOT/a/b.jpg is DIR/a/b.png.", file_okay=False, show_default=False)] = None,
    labels: Annotated[Optional[LabelSet], typer.Option(help="parsing: label set of the maps.  \\[default: auto]", show_default=False)] = None,
    keep: Annotated[Optional[str], typer.Option(help="Comma-separated labels never repainted.", show_default=False)] = None,
    dilation: Annotated[Optional[int], typer.Option(help="Grow masks by this many pixels.  \\[default: 0]", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help="Threads reading and writing images.", show_default=False)] = None,
    overwrite: OverwriteOpt = False,
    fail_fast: FailFastOpt = False,
) -> None:
    """Write the clothing mask and the label map of every image; emit records with
    `mask`, `parsing` and `parsing_labels` added.

    The mask is 255 where clothing is repainted and 0 where identity and background are
    kept (background, hat, hair, face, arms, legs), at the image's size.

    Examples:

        dlcr mask /data/LTCC_ReID --out work > masks.jsonl   # work/masks/, work/parsing/

        dlcr mask data --backend parsing --parsing-dir data/parsing --out work | head

        dlcr mask records.jsonl --out work --dilation 3 --device cuda:1
    """
    from dlcr_cli.inputs import read_records
    from dlcr_cli.stages.mask import MaskJob, make_parser, run_mask

    keep_list = [k.strip() for k in keep.split(",") if k.strip()] if keep is not None else None
    settings = state(ctx).resolve(mask=dict(
        backend=backend, model=model, batch_size=batch_size, parsing_dir=parsing_dir,
        labels=labels, keep=keep_list, dilation=dilation, workers=workers,
    )).settings
    records = read_records(input)  # input errors come before any model is loaded
    parser = make_parser(settings)
    job = MaskJob(out, settings.mask.keep, settings.mask.dilation, overwrite, settings.mask.workers)
    emit(run_mask(records, parser, job), "mask", fail_fast, total=records.total)
