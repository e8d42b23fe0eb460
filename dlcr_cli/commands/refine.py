"""`dlcr refine`: test-time prediction refinement with clothes-changed variants of the queries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dlcr_cli.commands.common import RevisionOpt, state
from dlcr_cli.commands.evaluate import DATASET_HELP



def refine(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help=DATASET_HELP, metavar="DATASET", show_default=False)],
    checkpoint: Annotated[str, typer.Option("--checkpoint", "-c", help="A dlcr train run folder, or a hub id (owner/name) fetched into huggingface_hub's cache.", metavar="RUN", show_default=False)],
    revision: RevisionOpt = None,
    variants: Annotated[Optional[str], typer.Option("--variants", help="The queries' generated variants: dlcr inpaint records (JSONL) or its output folder (also the strip format).", show_default=False)] = None,
    generate: Annotated[bool, typer.Option("--generate", help="Make the variants here: stage 1 (mask, describe, summarize, inpaint) on the queries, with the stage settings and the shared model cache.")] = False,
    prompts: Annotated[Optional[Path], typer.Option("--prompts", help="--generate: draw target clothes from this {clothing id: prompt} JSON (the training set's, from dlcr expand or summarize) instead of describing the queries.", dir_okay=False, show_default=False)] = None,
    work: Annotated[Optional[Path], typer.Option("--work", help="--generate: folder for the variants and their stage records (resumable).  \\[default: RUN/query-variants; a hub id: ./query-variants-OWNER--NAME]", file_okay=False, show_default=False)] = None,
    weight_free: Annotated[bool, typer.Option("--weight-free", help="--generate with the weight-free backends (parsing maps, colours, vote, garment transfer).")] = False,
    parsing_dir: Annotated[Optional[Path], typer.Option(help="--generate: existing label maps for the mask stage (the parsing backend).", file_okay=False, show_default=False)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="--generate: any stage setting, SECTION.KEY=VALUE, repeatable.", show_default=False)] = None,
    k: Annotated[Optional[int], typer.Option("--k", "-k", help="Variants per query used.", show_default=False)] = None,
    top: Annotated[Optional[int], typer.Option("--top", help="Size of the top lists re-scored.", show_default=False)] = None,
    setting: Annotated[Optional[str], typer.Option("--setting", help="Settings to report, comma-separated, or all.  \\[default: all]", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"before": {SETTING: {...}}, "after": {...}} on stdout, each as dlcr evaluate --json.')] = False,
) -> None:
    """Refine a model's rankings with K clothes-changed variants of every query (docs/method.md,
    refine) and report the dataset's settings before and after, side by side.

    Each query and its variants rank the gallery; the persons of the query's top 5 are
    re-scored by how high and how often they rank in the variants' top 5, and the query's
    top entries move by that score. Queries without variants keep their ranking.

    Examples:

        dlcr inpaint queries.jsonl --splits query --prompts work/prompts.json -k 4 --out qvar > qvar.jsonl

        dlcr --device cuda refine /data/prcc -c runs/prcc --variants qvar.jsonl

        dlcr refine /data/prcc -c runs/prcc --generate --prompts work/prompts.json --json

        dlcr refine data -c runs/small --generate --weight-free --parsing-dir data/parsing

        dlcr refine /data/prcc -c user/cal-prcc-dlcr --revision v1 --variants qvar.jsonl
    """
    from dlcr_cli.console import log
    from dlcr_cli.errors import UsageError
    from dlcr_cli.reid.evaluate import evaluate_settings, extract_with_checkpoint, select_settings
    from dlcr_cli.reid.generated import read_generated
    from dlcr_cli.reid.refine import evaluate_refined, query_variant_features
    from dlcr_cli.runtime import resolve_device

    if (variants is None) == (not generate):
        raise UsageError("refine takes the query variants from --variants GEN, or makes them with --generate")
    from dlcr_cli.commands.expand import stage_sections

    sections = stage_sections(set_ or [], weight_free, parsing_dir) if generate else {}
    resolved = state(ctx).resolve(refine=dict(variants=k, top=top), **sections).settings
    r, s = resolved.refine, resolved.evaluate
    device = resolve_device(resolved.device)
    extracted = extract_with_checkpoint(dataset, checkpoint, s, device, revision=revision)
    data = extracted.data
    source = variants if variants is not None else str(_generate(dataset, work or _default_work(checkpoint),
                                                                 resolved, r.variants, prompts))
    found = read_generated(source, data.query, what="query")
    missing = sum(not found.get(q.path) for q in data.query)  # frames, for video data
    if missing:
        log.warning("refine: %d of %d query images have no variants (a query without any keeps its original "
                    "ranking)", missing,
                    len(data.query))
    vf, ok = query_variant_features(extracted.model, data.query, found, r.variants, size=extracted.size,
                                    batch_size=s.batch_size, workers=s.workers, flip=s.flip,
                                    precision=extracted.precision, clip=extracted.clip)
    features = extracted.features
    wanted = [name.strip() for name in setting.split(",") if name.strip()] if setting else None
    chosen = select_settings(features, wanted)
    before = evaluate_settings(features, chosen, device=device)
    after = evaluate_refined(features, vf, ok, chosen, device=device, top=r.top)
    _table(before, after, f"{features.protocol}: refined with {r.variants} variants per query, top {r.top}")
    if as_json:
        import json
        import sys

        from dlcr_cli.reid.evaluate import as_json as scores

        sys.stdout.write(json.dumps({"before": scores(before), "after": scores(after)}) + "\n")


def _default_work(checkpoint: str) -> Path:
    """RUN/query-variants of a local run; for a hub id (its snapshot is the cache's, not
    ours to write into) query-variants-OWNER--NAME in the current folder."""
    local = Path(checkpoint).expanduser()
    return local / "query-variants" if local.is_dir() else Path(f"query-variants-{checkpoint.replace('/', '--')}")


def _generate(dataset: str, work: Path, settings: Any, k: int, prompts: Path | None) -> Path:
    """Stage 1 on the queries into `work`; returns the file of the generated records."""
    from dlcr_cli.console import log
    from dlcr_cli.stages.expand import expand_to_file

    generation = settings.model_copy(update={"inpaint": settings.inpaint.model_copy(
        update={"splits": ["query"], "variants": k})})
    log.info("refine: generating %d variants of every query in %s", k, work)
    return expand_to_file(dataset, work, generation, work / "query-variants.jsonl", prompts_file=prompts)


def _table(before, after, title: str) -> None:
    from rich import box
    from rich.table import Table

    from dlcr_cli.console import stderr

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("setting", "R1 before", "R1 after", "mAP before", "mAP after", "queries"):
        table.add_column(column, justify="left" if column == "setting" else "right", no_wrap=True)
    for b, a in zip(before, after):
        table.add_row(b.setting.name, f"{100 * b.scores.rank1:.1f}", f"{100 * a.scores.rank1:.1f}",
                      f"{100 * b.scores.mAP:.1f}", f"{100 * a.scores.mAP:.1f}", str(a.scores.queries))
    stderr.print(table)
