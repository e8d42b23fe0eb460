"""`dlcr expand`: all of stage 1 (mask, describe, summarize, inpaint) in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dlcr_cli.commands.common import FailFastOpt, InputArg, OverwriteOpt, state


def expand(
    ctx: typer.Context,
    input: InputArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Work folder: masks/, parsing/, records/ (each stage's records), prompts.json, generated/, preview.png.", file_okay=False, show_default=False)],
    weight_free: Annotated[bool, typer.Option("--weight-free", help="The weight-free backends of every stage: parsing maps, colours, vote, garment transfer.")] = False,
    parsing_dir: Annotated[Optional[Path], typer.Option(help="mask: folder of existing label maps (the parsing backend; --weight-free needs it).", file_okay=False, show_default=False)] = None,
    variants: Annotated[Optional[int], typer.Option("--variants", "-k", help="inpaint: target clothing ids per source image (setting inpaint.variants).", show_default=False)] = None,
    prompts: Annotated[Optional[Path], typer.Option("--prompts", help="JSON {clothing id: prompt} to draw targets from; describe and summarize are then not needed and skipped.", dir_okay=False, show_default=False)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any setting, SECTION.KEY=VALUE (TOML value), repeatable: --set inpaint.steps=25 --set describe.batch_size=16.", show_default=False)] = None,
    guidance: Annotated[bool, typer.Option("--discriminator-guidance", help="The authors' two passes: the unguided pass (OUT/generated), a discriminator trained on it (OUT/discriminator, settings discriminator.*), then the guided pass (OUT/generated-guided), whose records are emitted.")] = False,
    overwrite: OverwriteOpt = False,
    fail_fast: FailFastOpt = False,
) -> None:
    """Expand a training set in one process: mask, describe, summarize and inpaint the
    source images (split `inpaint.splits`, default train); emit the generated records.

    Each model loads once (the shared model cache) and idle ones leave the GPU when a later
    one needs the memory. Every stage's records are kept in OUT/records, so a crashed or
    interrupted run started again goes on where it stopped; changed input or settings redo
    the stages they affect. Stage options are settings: --set, DLCR_* variables or --config.

    Examples:

        dlcr --device cuda expand /data/prcc --out work > generated.jsonl

        dlcr expand /data/LTCC_ReID --out work --set inpaint.scheduler=dpm --set inpaint.steps=25

        dlcr expand synth --out work --weight-free --parsing-dir synth/parsing -k 10

        dlcr expand queries.jsonl --out qwork --prompts work/prompts.json -k 4 --set 'inpaint.splits=["query"]'

        dlcr --device cuda expand /data/prcc --out work --discriminator-guidance > generated-dg.jsonl
    """
    from dlcr_cli.stages.expand import run_expand

    sections = stage_sections(set_ or [], weight_free, parsing_dir)
    if variants is not None:
        sections.setdefault("inpaint", {})["variants"] = variants
    settings = state(ctx).resolve(**sections).settings
    run_expand(input, out, settings, prompts_file=prompts, overwrite=overwrite, fail_fast=fail_fast, guidance=guidance)


def stage_sections(assignments: list[str], weight_free: bool, parsing_dir: Path | None) -> dict[str, dict[str, Any]]:
    """The stage settings of --set, --weight-free (backends not set otherwise) and --parsing-dir."""
    from dlcr_cli.stages.expand import WEIGHT_FREE  # not at import: the record model is not needed for --help

    sections = _sections(assignments)
    if weight_free:
        for name, values in WEIGHT_FREE.items():
            sections.setdefault(name, {}).update({k: v for k, v in values.items() if k not in sections[name]})
    if parsing_dir is not None:
        sections.setdefault("mask", {})["parsing_dir"] = parsing_dir
    return sections


def _sections(assignments: list[str]) -> dict[str, dict[str, Any]]:
    """`section.key=value` strings -> {section: {key: value}}; values are TOML (bare words are strings)."""
    import tomllib

    from dlcr_cli.errors import UsageError

    sections: dict[str, dict[str, Any]] = {}
    for text in assignments:
        name, sep, raw = text.partition("=")
        section, dot, key = name.strip().partition(".")
        if not (sep and dot and section and key):
            raise UsageError(f"--set takes SECTION.KEY=VALUE, e.g. inpaint.steps=25; got {text!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        sections.setdefault(section, {})[key] = value
    return sections
