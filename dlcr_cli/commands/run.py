"""`dlcr run`: the paper's whole experiment on a dataset, in one resumable command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dlcr_cli.commands.common import state

SEEDS_HELP = "Several seeds, comma-separated (e.g. 0,1,2): the report gives the mean and the spread."


def run(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="A dataset root (PRCC, LTCC, VC-Clothes, LaST, DeepChange, CCVID: layout detected), a folder `dlcr synth` drew, or a JSONL file of records with splits train, query and gallery.", metavar="DATASET", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Experiment folder: stage1/ (train/, query/, their records), seed-S/ (baseline/, dlcr/, ... runs; retrieval.png), report/.", file_okay=False, show_default=False)],
    weight_free: Annotated[bool, typer.Option("--weight-free", help="The weight-free backends of stage 1 (parsing maps, colours, vote, garment transfer) and the builtin:small model, unless set otherwise.")] = False,
    parsing_dir: Annotated[Optional[Path], typer.Option(help="mask: the label maps of the parsing backend.  \\[default with --weight-free: DATASET/parsing]", file_okay=False, show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the training runs (init, batches, augmentation, variant draws).")] = 0,
    seeds: Annotated[Optional[str], typer.Option(help=SEEDS_HELP + " Stage 1 is shared.", show_default=False)] = None,
    variants: Annotated[Optional[int], typer.Option("--variants", "-k", help="Generated variants per training image (setting inpaint.variants).  \\[default: 10]", show_default=False)] = None,
    query_variants: Annotated[Optional[int], typer.Option(help="Generated variants per query for refinement (setting refine.variants).  \\[default: 4]", show_default=False)] = None,
    without_progressive: Annotated[bool, typer.Option("--without-progressive", help="Also train +DLCR without progressive learning (the paper's ablation row).")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any setting, SECTION.KEY=VALUE (TOML value), repeatable: --set train.epochs=40 --set inpaint.steps=25.", show_default=False)] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="Train again the runs in OUT made of other settings or inputs (without it they are refused).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"baseline": {...}, "dlcr": {...}, "dlcr_refined": {...}} on stdout, each the evaluate JSON plus train_seconds (means over --seeds).')] = False,
) -> None:
    """Run the paper's experiment on a dataset (docs/method.md): stage 1 on the training set
    (K = 10) and on the queries (K = 4, targets from the training prompts), CAL trained on
    real images (baseline) and on real + generated ones (+DLCR) with the same seed and
    schedule, both evaluated with the dataset's protocol, +DLCR refined with the query
    variants; the table in the paper's layout on stderr and in OUT/report.

    OUT/report holds results.md (rows baseline, +DLCR, +DLCR +refine; columns the dataset's
    settings x R1, mAP), results.json, cmc.png, retrieval.png (queries the baseline matches to
    another person and +DLCR to the same one: the paper's Figure A4) and contact-sheet.png.
    Each row is its run's best evaluated epoch, as CAL reports (evaluate.epoch=last for the
    last). Started again, it reuses every finished part and resumes an interrupted one,
    saying which; a run made of other settings or inputs is refused unless --retrain. Stage
    and training options are settings: --set, DLCR_* variables or --config.

    Examples:

        dlcr --device cuda run /data/prcc --out exp/prcc

        dlcr --device cuda run /data/LTCC_ReID --out exp/ltcc --seeds 0,1,2 --without-progressive

        dlcr --device cuda run /data/prcc --out exp/prcc-dpm --set inpaint.scheduler=dpm --set inpaint.steps=25

        dlcr synth data && dlcr run data --out exp/synth --weight-free --set train.image_size=[64,32]

        dlcr run data --out exp/synth --weight-free --json | jq .dlcr.cc.rank1
    """
    import json
    import sys

    from dlcr_cli.commands.expand import stage_sections
    from dlcr_cli.experiment import Case, Plan, mean_results, run_experiment
    from dlcr_cli.runtime import resolve_device

    chosen = parse_seeds(seeds, seed)
    sections = stage_sections(set_ or [], weight_free, parsing_dir)
    if weight_free:
        sections.setdefault("train", {}).setdefault("backbone", "builtin:small")
    if variants is not None:
        sections.setdefault("inpaint", {})["variants"] = variants
    if query_variants is not None:
        sections.setdefault("refine", {})["variants"] = query_variants
    settings = state(ctx).resolve(**sections).settings
    device = resolve_device(settings.device)
    data = Path(dataset).expanduser()
    plan = Plan(settings, f"dlcr run: {data.name or data}", no_progressive=without_progressive, retrain=retrain)
    cases = [Case(s, data, out / "stage1", out / f"seed-{s}") for s in chosen]
    per_seed, _ = run_experiment(cases, plan, out / "report", device)
    if as_json:
        results = per_seed[chosen[0]]["results"] if len(chosen) == 1 else mean_results(per_seed)
        sys.stdout.write(json.dumps(results) + "\n")


def parse_seeds(seeds: str | None, seed: int) -> list[int]:
    """--seeds 0,1,2 (distinct non-negative integers), else [--seed]."""
    from dlcr_cli.errors import UsageError

    try:
        chosen = [int(s) for s in seeds.split(",") if s.strip()] if seeds else [seed]
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {seeds!r}") from None
    if not chosen or any(s < 0 for s in chosen) or len(set(chosen)) != len(chosen):
        raise UsageError(f"--seeds takes distinct non-negative integers; got {seeds if seeds else seed!r}")
    return chosen
