"""`dlcr inpaint`: clothes-changed images, K per training image."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from dlcr_cli.commands.common import FailFastOpt, InputArg, OverwriteOpt, emit, parse_size, state

SHARD_FOLDER = ".dlcr-inpaint-shards"
"""Inside --out: each process's records under a launcher, until the main process merges them."""


class Backend(str, Enum):
    diffusion = "diffusion"
    recolor = "recolor"
    transfer = "transfer"


class Scheduler(str, Enum):
    default = "default"
    dpm = "dpm"


class Format(str, Enum):
    files = "files"
    strip = "strip"


def inpaint(
    ctx: typer.Context,
    input: InputArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder; it mirrors the sources' tree.", file_okay=False, show_default=False)],
    backend: Annotated[Optional[Backend], typer.Option(help="diffusion: a diffusers inpainting model; recolor: recolour each garment to the target's colour; transfer: fill each garment with the target clothing id's garment, texture and colours, from one of its images (both weight-free, both need parsing maps).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(help="diffusion: inpainting pipeline, hub id or folder.", show_default=False)] = None,
    prompts: Annotated[Optional[Path], typer.Option("--prompts", help="JSON {clothing id: prompt} (dlcr summarize --prompts-out) to draw targets from, instead of the records' prompts.", dir_okay=False, show_default=False)] = None,
    variants: Annotated[Optional[int], typer.Option("--variants", "-k", help="Target clothing ids per source image.", show_default=False)] = None,
    splits: Annotated[Optional[str], typer.Option(help="Comma-separated splits whose records are sources (records without a split always are).", show_default=False)] = None,
    size: Annotated[Optional[str], typer.Option(help="diffusion: working HEIGHTxWIDTH, multiples of 8.", show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option(help="diffusion: denoising steps.", show_default=False)] = None,
    guidance: Annotated[Optional[float], typer.Option(help="diffusion: classifier-free guidance scale.", show_default=False)] = None,
    strength: Annotated[Optional[float], typer.Option(help="diffusion: how far the masked region is noised (1: fully).", show_default=False)] = None,
    scheduler: Annotated[Optional[Scheduler], typer.Option(help="diffusion: default (the checkpoint's own) or dpm (DPM-Solver++, 20-25 steps suffice).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per pipeline call.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the targets drawn and of every variant's noise.", show_default=False)] = None,
    format: Annotated[Optional[Format], typer.Option("--format", help="files: STEM_vK.png per variant; strip: the released format, one PNG of K tiles and a .txt per source.", show_default=False)] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="diffusion: torch.compile the UNet.  \\[default: no-compile]", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help="Threads reading and writing images.", show_default=False)] = None,
    discriminator: Annotated[Optional[Path], typer.Option("--discriminator", help="diffusion: discriminator guidance with this `dlcr discriminator` folder (trained for this pipeline and --size).  \\[default: none]", file_okay=False, show_default=False)] = None,
    dg_weight: Annotated[Optional[float], typer.Option("--dg-weight", help="diffusion: discriminator guidance weight (0: unguided).", show_default=False)] = None,
    dg_min_t: Annotated[Optional[int], typer.Option("--dg-min-t", help="diffusion: guide only the steps with timestep t > this (of 1000).", show_default=False)] = None,
    preview: Annotated[Optional[Path], typer.Option("--preview", help="Also write a contact sheet PNG: the first sources, their masks and variants with prompts.", dir_okay=False, show_default=False)] = None,
    overwrite: OverwriteOpt = False,
    fail_fast: FailFastOpt = False,
) -> None:
    """Write K clothes-changed variants of every source image; emit one record per variant.

    Each source (a training record with `image`, `mask`, `clothes`) gets K distinct target
    clothing ids, never its own, drawn from the ids that have a prompt (the records' `prompt`
    fields, or `--prompts`); variant k is repainted inside the mask for target k's prompt and
    pasted back, so every pixel outside the mask is the source's. Records: `image`, `source`,
    `target_clothes`, `prompt`, `variant`, `seed` and the source's labels.

    Weight-free backends (parsing maps needed, no model): `--backend recolor` recolours each
    garment region to the target prompt's colour for it, keeping its shading; `--backend
    transfer` fills each garment region with the same garment of one image of the target
    clothing id (from the records read; chosen from `--seed`, source path, k), its texture and
    colours resampled into the source garment's shape under the source's shading. A garment
    the target image lacks comes from another target garment (top, coat or dress for a torso
    garment, a dress for a bottom), else is recoloured to the prompt's colour for it.

    Reproducible and resumable: targets and noise come from (`--seed`, source path, k); an
    interrupted run started again skips what exists and gives byte-identical files.

    Discriminator guidance (`--discriminator DIR`, from `dlcr discriminator`): on every step
    with timestep t > `--dg-min-t`, the noise prediction moves against the gradient of the
    discriminator's log(D / (1 - D)) over the noisy latent, scaled by sqrt(1 - alpha_bar_t) x
    `--dg-weight`. The discriminator must have been trained for this `--model` and `--size`.
    Outputs record what guided them: another discriminator or weight paints again.

    Examples:

        dlcr summarize described.jsonl | dlcr --device cuda inpaint - --out gen > gen.jsonl

        dlcr inpaint prompted.jsonl --out gen --scheduler dpm --steps 25 --batch-size 16

        dlcr inpaint queries.jsonl --splits query --prompts prompts.json -k 4 --out qvar

        dlcr inpaint prompted.jsonl --backend recolor --out gen-recolor --format strip --preview sheet.png

        dlcr --device cuda inpaint prompted.jsonl --out gen-dg --discriminator disc --dg-weight 1 --dg-min-t 200

    Many GPUs: `accelerate launch -m dlcr_cli inpaint ...` (or torchrun); each process
    paints its share into the same tree and the main process prints all records.
    """
    from functools import partial
    from itertools import chain

    from dlcr_cli.console import log, progress
    from dlcr_cli.distributed import current_shard, dealt, run_sharded
    from dlcr_cli.errors import InputMissing
    from dlcr_cli.fingerprint import CACHE_NAME, Digests
    from dlcr_cli.inputs import read_records
    from dlcr_cli.stages.inpaint import (check_backend, chunk_plan, make_painter, make_plan, prompt_table,
                                         read_prompt_file, run_inpaint, select_sources)

    split_list = [s.strip() for s in splits.split(",") if s.strip()] if splits is not None else None
    settings = state(ctx).resolve(inpaint=dict(
        backend=backend, model=model, variants=variants, splits=split_list,
        size=parse_size(size, "--size") if size else None, steps=steps, guidance=guidance, strength=strength,
        scheduler=scheduler, batch_size=batch_size, seed=seed, format=format, compile=compile, workers=workers,
        discriminator=discriminator, dg_weight=dg_weight, dg_min_t=dg_min_t,
    )).settings
    s = settings.inpaint
    check_backend(s)
    records = list(read_records(input))  # input errors come before any model is loaded
    sources, others = select_sources(records, s.splits)
    if others:
        log.info("inpaint: %d records of other splits than %s are not sources (--splits)", others, ",".join(s.splits))
    if not sources:
        raise InputMissing(f"no source records of split {','.join(s.splits)} in {input}")
    table = prompt_table(sources, read_prompt_file(prompts) if prompts else None)
    if not table:
        raise InputMissing("no clothing id has a prompt: run dlcr summarize first, or pass --prompts FILE")
    jobs, failed = make_plan(sources, table, variants=s.variants, seed=s.seed, out=out, fmt=s.format)
    painter = make_painter(settings, records)  # transfer: the target clothing ids' images and parsing maps
    digests = Digests(out / CACHE_NAME)  # one for every chunk: the cache file is read and written once
    work = partial(run_inpaint, painter=painter, fmt=s.format, overwrite=overwrite, workers=s.workers,
                   digests=digests)
    shard = current_shard()
    if not shard.active:
        try:
            emit(chain(failed, work(jobs)), "inpaint", fail_fast, total=len(jobs) + len(failed))
        finally:
            digests.save()
            _preview(jobs, s.format, preview)
        return
    chunks = chunk_plan(jobs, painter.batch_size)
    mine = sum(len(chunk) for _, chunk in dealt(chunks, shard))
    log.info("inpaint: process 1 of %d paints %d of %d images", shard.world, mine, len(jobs))
    with progress(f"inpaint (process 1 of {shard.world})", mine) as bar:
        merged = run_sharded(work, chunks, out / SHARD_FOLDER, shard, on_outcome=lambda _: bar.advance())
    if shard.is_main:
        digests.save()
    if merged is not None:
        try:
            emit(chain(failed, merged), "inpaint", fail_fast, bar=False)
        finally:
            _preview(jobs, s.format, preview)


def _preview(jobs: list, fmt: str, path: Path | None) -> None:
    """The contact sheet, also after failed items (it shows what did work)."""
    if path is None:
        return
    from dlcr_cli.console import log
    from dlcr_cli.stages.inpaint import write_preview

    rows = write_preview(jobs, fmt, path)
    if rows:
        log.info("inpaint: contact sheet of %d source images in %s", rows, path)
    else:
        log.warning("inpaint: no source image has all its variants yet; no contact sheet written")
