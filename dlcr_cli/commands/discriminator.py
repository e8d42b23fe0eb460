"""`dlcr discriminator`: train the time-conditioned discriminator of discriminator guidance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dlcr_cli.commands.common import parse_size, state

INPUT_HELP = "dlcr inpaint's records (a JSONL file, or - for stdin): generated images with their `source`."


def discriminator(
    ctx: typer.Context,
    input: Annotated[str, typer.Argument(help=INPUT_HELP, metavar="INPUT", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder: discriminator.safetensors, discriminator.json, latents.safetensors, state.safetensors, run.json.", file_okay=False, show_default=False)],
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (one pass over the larger class each).", show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate.", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Real and generated latents per step, each.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the init, the held-out split, the batches, t and the noise.", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out after its last finished epoch (--epochs may be raised).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the training record (epochs, losses, held-out accuracies) as JSON on stdout.")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any setting, SECTION.KEY=VALUE (TOML value; inpaint.size also HxW), repeatable: --set inpaint.model=DIR --set inpaint.size=768x256 --set discriminator.width=64.", show_default=False)] = None,
) -> None:
    """Train the discriminator of discriminator guidance on real and generated images (docs/method.md).

    Real images are the records' distinct `source` images, generated ones their `image`s
    (files format; a strip, an image K times as wide as its source, gives tile `variant`).
    Every image is resized to the working size (`inpaint.size`) and encoded by the
    pipeline's VAE (`inpaint.model`): the mean of its latent distribution times its
    scaling factor, as the sampler sees latents; the latents are cached in --out. The
    discriminator (a time-conditioned ADM-style encoder from diffusers' blocks, one logit)
    learns, with binary cross-entropy and Adam, to tell real from generated latents
    noised at t uniform in the pipeline scheduler's schedule, in batches of --batch-size
    of each. A seeded held-out share of the source images (`discriminator.held_out`, with
    their generated images) measures its balanced accuracy after every epoch.

    After every epoch --out holds discriminator.safetensors and discriminator.json (for
    `dlcr inpaint --discriminator`) and the training state: `--resume` continues an
    interrupted run exactly as it would have gone on. It must be the same pipeline and
    size that `dlcr inpaint` paints with.

    Examples:

        dlcr --device cuda discriminator gen.jsonl --out disc

        dlcr --device cuda discriminator gen.jsonl --out disc --epochs 80 --resume

        dlcr discriminator gen.jsonl --out disc --set inpaint.model=./my-inpainting --set inpaint.size=512x256

        dlcr --device cuda inpaint prompted.jsonl --out gen-dg --discriminator disc
    """
    from dlcr_cli.commands.expand import stage_sections
    from dlcr_cli.stages.discriminator import run_discriminator

    sections = stage_sections(set_ or [], False, None)
    size = sections.get("inpaint", {}).get("size")
    if isinstance(size, str):  # --set inpaint.size=768x256 (TOML would want [768, 256])
        sections["inpaint"]["size"] = parse_size(size, "--set inpaint.size")
    options = dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    sections.setdefault("discriminator", {}).update({k: v for k, v in options.items() if v is not None})
    settings = state(ctx).resolve(**sections).settings
    run_discriminator(input, out, settings, resume=resume, as_json=as_json)
