"""`dlcr demo`: the whole method, offline and weight-free, on the embedded synthetic benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from enum import Enum

import typer

from dlcr_cli.commands.common import state


class Style(str, Enum):
    flat = "flat"
    realistic = "realistic"


class Painter(str, Enum):
    recolor = "recolor"
    transfer = "transfer"


def demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Work folder: seed-S/ per seed (data/, stage1/, the runs) and report/.", file_okay=False)] = Path("dlcr-demo"),
    seed: Annotated[int, typer.Option(help="Seed of the dataset and of the training.")] = 0,
    seeds: Annotated[Optional[str], typer.Option(help="Several seeds, comma-separated (e.g. 0,1,2): the report gives the mean and the spread.", show_default=False)] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A smaller dataset and fewer epochs (about 2 minutes on 2 cores instead of about 7 minutes a seed).")] = False,
    style: Annotated[Style, typer.Option(help="The synthetic outfits: flat (named colours, plain or thinly striped) or realistic (continuous colours, textures, coats, per-camera white balance): `dlcr synth --style`.",)] = Style.realistic,
    backend: Annotated[Optional[Painter], typer.Option(help="Stage 1's weight-free painter: recolor (each garment to the target's colour) or transfer (the target's garments, textures included).  \\[default: that of --weight-free elsewhere, chosen by the README's measurement]", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"baseline": {...}, "dlcr": {...}, "dlcr_no_progressive": {...}, "dlcr_refined": {...}} on stdout, each the evaluate JSON plus train_seconds.')] = False,
) -> None:
    """Run the paper's experiment (`dlcr run`) offline on the embedded synthetic benchmark and
    measure its claim: training with clothes-changed images improves clothes-changing re-id.

    Draws a dataset whose identities live outside their clothes (`dlcr synth --style
    realistic` unless --style says flat) per seed, then
    runs `dlcr run --weight-free --without-progressive` on it with the demo's scaled schedule:
    stage 1 with the weight-free backends (masks from the label maps, colour descriptions,
    vote, garment transfer: 10 variants per training image, 4 per query), the same small model
    trained three ways with the same seed and epochs (real images; + DLCR images with
    progressive learning; + DLCR without it), each evaluated with the LTCC protocol, +DLCR
    refined with the query variants. Prints the table and writes OUT/report (results.md,
    results.json, cmc.png, retrieval.png, contact-sheet.png). Started again, finished stages
    and runs are reused.

    Examples:

        dlcr demo

        dlcr demo --quick --json | jq .dlcr.cc.rank1

        dlcr demo --seeds 0,1,2 --out demo-3-seeds

        dlcr demo --style flat --backend recolor --out demo-flat-recolor
    """
    import json
    import sys

    from dlcr_cli.commands.run import parse_seeds
    from dlcr_cli.demo import run_demo
    from dlcr_cli.experiment import mean_results
    from dlcr_cli.runtime import resolve_device

    chosen = parse_seeds(seeds, seed)
    device = resolve_device(state(ctx).resolve().settings.device)
    per_seed, _ = run_demo(out, chosen, quick, device, style=style.value,
                           backend=backend.value if backend else None)
    if as_json:
        results = per_seed[chosen[0]]["results"] if len(chosen) == 1 else mean_results(per_seed)
        sys.stdout.write(json.dumps(results) + "\n")
