"""`dlcr bench`: performance measurements on random-weight models (nothing to download)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from dlcr_cli.commands.common import parse_pk, parse_size, state

app = typer.Typer(
    name="bench",
    help="Performance measurements on random-weight models of the real architectures (nothing to download).",
    rich_markup_mode="markdown",
    no_args_is_help=True,
)


class Arch(str, Enum):
    sd15 = "sd15"
    tiny = "tiny"


@app.command("inpaint")
def inpaint(
    ctx: typer.Context,
    arch: Annotated[Arch, typer.Option(
        help="sd15: the full-size SD-1.5 inpainting architecture (needs CUDA); tiny: the tests' small one, "
             "to check the code path on CPU.")] = Arch.sd15,
    images: Annotated[Optional[int], typer.Option(
        min=1, max=5000, show_default=False,
        help="Images per row, rounded up to a multiple of 5 (5 per source).  \\[default: sd15 80, tiny 10]")] = None,
    batch_size: Annotated[int, typer.Option(
        min=1, help="dlcr's images per pipeline call (the reference's is 5).")] = 16,
    steps: Annotated[Optional[int], typer.Option(
        min=1, show_default=False, help="Denoising steps.  \\[default: sd15 50, tiny 2]")] = None,
    size: Annotated[Optional[str], typer.Option(
        show_default=False,
        help="Working HEIGHTxWIDTH, multiples of 8.  \\[default: sd15 768x256, tiny 64x32]")] = None,
    compile: Annotated[bool, typer.Option(
        "--compile/--no-compile", help="Add a row: dlcr with the UNet torch.compiled.")] = False,
    dpm: Annotated[bool, typer.Option(
        "--dpm/--no-dpm",
        help="Add a row: dlcr with DPM-Solver++ at half the steps (a different quality setting).")] = False,
    work_dir: Annotated[Optional[Path], typer.Option(
        "--work-dir", file_okay=False, show_default=False,
        help="Keep the built checkpoint and the images here, and reuse a checkpoint an earlier run left "
             "(default: a temporary folder).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")] = False,
) -> None:
    """Images/s of the inpaint stage next to the reference scripts' way of calling diffusers.

    Builds the SD-1.5 inpainting architecture with random weights, saves it and loads it
    back through diffusers, then paints the same procedural sources at the paper's settings
    (768x256, 50 steps, guidance 7.5, strength 1, the checkpoint's PNDM scheduler, fp16) in
    one run: (a) the reference, one pipeline call per source with its 5 prompts, PIL output,
    pasted back and saved in turn; (b) dlcr's stage, `--batch-size` images per call with
    files written by worker threads. Each row is warmed up first; rows report images/s,
    peak GPU memory and the UNet's share of the GPU's peak (FLOPs per forward at the
    guidance batch x forwards per image x images/s, over the measured bf16 matmul rate).
    The table goes to stderr; `--json` prints the results on stdout.

    Examples:

        dlcr bench inpaint

        dlcr bench inpaint --batch-size 32 --compile --dpm --json > bench.json

        dlcr bench inpaint --arch tiny --images 10
    """
    import json
    import sys

    from dlcr_cli.bench.inpaint import (
        BenchSettings,
        bench_device,
        print_report,
        run_inpaint_bench,
    )

    settings = BenchSettings.for_arch(
        arch.value, images=images, batch_size=batch_size, steps=steps,
        size=parse_size(size, "--size") if size else None, compile=compile, dpm=dpm,
    )
    device = bench_device(arch.value, state(ctx).device)
    result = run_inpaint_bench(settings, device, work_dir)
    print_report(result)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")


@app.command("evaluate")
def evaluate(
    ctx: typer.Context,
    queries: Annotated[int, typer.Option(min=1, help="Query features (MSMT17: 11659).")] = 11659,
    gallery: Annotated[int, typer.Option(min=1, help="Gallery features (MSMT17: 82161).")] = 82161,
    dim: Annotated[int, typer.Option(min=1, help="Feature dimension.")] = 512,
    ids: Annotated[int, typer.Option(min=1, help="Identities the features are drawn around (MSMT17 test: 3060).")] = 3060,
    modes: Annotated[str, typer.Option(help="Comma-separated protocol modes to score: standard, cc, sc.")] = "standard",
    seed: Annotated[int, typer.Option(help="Seed of the features and labels.")] = 0,
    reference: Annotated[bool, typer.Option(
        "--reference/--no-reference",
        help="Also run the per-query NumPy reference (it holds the whole Q x G matrix and its argsort).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")] = False,
) -> None:
    """Seconds and peak memory of dlcr's evaluation next to the field's per-query NumPy loop.

    Draws features at MSMT17's size (identity centres, an offset per outfit, noise), then
    scores them (a) as CAL / fast-reid do: the full negative-cosine matrix, an argsort of
    every row and a loop over queries; (b) with dlcr's chunked torch path on `--device`.
    Reports each row's time and peak memory (resident set above the start, and GPU memory
    on CUDA), the ratio, and whether every metric agrees within 1e-6. The table goes to
    stderr; `--json` prints the results on stdout.

    Examples:

        dlcr bench evaluate

        dlcr bench evaluate --modes standard,cc,sc --json > bench-evaluate.json

        dlcr --device cuda bench evaluate --queries 50000 --gallery 500000 --no-reference
    """
    import json
    import sys

    from dlcr_cli.bench.evaluate import EvalBenchSettings, print_report, run_evaluate_bench
    from dlcr_cli.runtime import resolve_device

    settings = EvalBenchSettings(queries=queries, gallery=gallery, dim=dim, ids=ids, seed=seed, reference=reference,
                                 modes=tuple(m.strip() for m in modes.split(",") if m.strip()))
    settings.check()
    device = resolve_device(state(ctx).device or "auto")
    report = run_evaluate_bench(settings, device)
    print_report(report)
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")


class TrainArch(str, Enum):
    resnet50 = "resnet50"
    small = "small"


@app.command("train")
def train(
    ctx: typer.Context,
    arch: Annotated[TrainArch, typer.Option(
        help="resnet50: microsoft/resnet-50's architecture (random weights); small: builtin:small.")] = TrainArch.resnet50,
    batch: Annotated[str, typer.Option(help="PxK: identities x images per identity.")] = "8x8",
    size: Annotated[str, typer.Option(help="HEIGHTxWIDTH of the training images.")] = "384x192",
    steps: Annotated[int, typer.Option(min=1, help="Timed steps per row.")] = 10,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed steps first.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")] = False,
) -> None:
    """Images/s of a CAL training step: the reference's float32 next to dlcr's path.

    ResNet-50 (the architecture of microsoft/resnet-50, last stride 1, random weights) at
    384x192 with PK batches of 8 x 8, the whole step from epoch 25 on (identity loss, the
    clothes classifier's update, the CAL loss, both Adam optimizers): (a) float32 and NCHW as
    the reference trains; (b) dlcr: bfloat16 autocast and channels_last on CUDA (on a CPU the
    same float32 arithmetic). Both rows time the same batches after a warm-up.

    Examples:

        dlcr --device cuda bench train

        dlcr --device cuda bench train --batch 16x4 --json > bench-train.json

        dlcr --device cpu bench train --arch small --size 128x64 --steps 5
    """
    import json
    import sys

    from dlcr_cli.bench.train import TrainBenchSettings, print_report, run_train_bench
    from dlcr_cli.runtime import resolve_device

    p, k = parse_pk(batch)
    settings = TrainBenchSettings(arch=arch.value, ids=p, images_per_id=k, size=parse_size(size, "--size"),
                                  steps=steps, warmup=warmup)
    settings.check()
    device = resolve_device(state(ctx).device or "auto")
    report = run_train_bench(settings, device)
    print_report(report)
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
