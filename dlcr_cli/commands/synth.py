"""`dlcr synth`: the embedded procedural CC-ReID dataset."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from dlcr_cli.commands.common import parse_range, parse_size


def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into (LTCC layout).", metavar="OUT", file_okay=False, show_default=False)],
    ids: Annotated[int, typer.Option(help="People; the first half are train, the rest query/gallery.")] = 24,
    outfits: Annotated[str, typer.Option(help="Outfits per person: N or MIN-MAX.")] = "2-4",
    cameras: Annotated[int, typer.Option(help="Cameras (background, light, position).")] = 4,
    per: Annotated[int, typer.Option(help="Images per (person, outfit, camera).")] = 2,
    size: Annotated[str, typer.Option(help="Image size HEIGHTxWIDTH.")] = "128x64",
    seed: Annotated[int, typer.Option(help="Same seed, byte-identical dataset.")] = 0,
    style: Annotated[str, typer.Option(help="How outfits are drawn: 'flat' (named palette colours, plain or thinly striped; the default, unchanged) or 'realistic' (continuous colours, stripes/checks/dots/prints, open coats over tops, per-camera white balance; more ground truth in outfits.json and cameras.json).", case_sensitive=False)] = "flat",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Write a procedural clothes-changing re-id dataset: little people whose identity lives
    in skin, hair, build and hats while 2-4 outfits each come from one shared palette.

    Layout: OUT/{train,query,test}/PID_CLOTHES_cCAM_FRAME.png (LTCC), the exact LIP label map
    of every image in OUT/parsing/..., and the ground truth in OUT/outfits.json and
    OUT/people.json.

    Examples:

        dlcr synth data && dlcr mask data --backend parsing --parsing-dir data/parsing --out work

        dlcr synth big --ids 200 --cameras 6 --per 4 --size 256x128 --seed 1

        dlcr synth real --style realistic
    """
    from dlcr_cli.console import log
    from dlcr_cli.synth import synthesize

    height, width = parse_size(size, "--size")
    summary = synthesize(out, ids=ids, outfits=parse_range(outfits, "--outfits"), cameras=cameras,
                         per=per, height=height, width=width, seed=seed, style=style.lower())
    if as_json:
        sys.stdout.write(json.dumps(summary.as_dict()) + "\n")
    log.info("synth: %s", summary)
