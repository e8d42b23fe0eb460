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
    discriminator: Annotated[bool, typer.Option(
        "--discriminator/--no-discriminator",
        help="Add a row: dlcr with discriminator guidance (a random-init discriminator of the default "
             "architecture, weight 1, t > 200), and its cost per image next to (b).")] = False,
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

    `--discriminator` adds (e): (b)'s painter with discriminator guidance (one discriminator
    forward and backward per guided step, in float32), and reports seconds per image guided
    and unguided and their ratio.

    Examples:

        dlcr bench inpaint

        dlcr bench inpaint --batch-size 32 --compile --dpm --json > bench.json

        dlcr bench inpaint --discriminator

        dlcr bench inpaint --arch tiny --images 10
    """
    from dlcr_cli.bench.inpaint import (
        BenchSettings,
        bench_device,
        print_report,
        run_inpaint_bench,
    )

    settings = BenchSettings.for_arch(
        arch.value, images=images, batch_size=batch_size, steps=steps,
        size=parse_size(size, "--size") if size else None, compile=compile, dpm=dpm, discriminator=discriminator,
    )
    device = bench_device(arch.value, state(ctx).device)
    result = run_inpaint_bench(settings, device, work_dir)
    print_report(result)
    _maybe_json(result, as_json)


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
    from dlcr_cli.bench.evaluate import EvalBenchSettings, print_report, run_evaluate_bench
    from dlcr_cli.runtime import resolve_device

    settings = EvalBenchSettings(queries=queries, gallery=gallery, dim=dim, ids=ids, seed=seed, reference=reference,
                                 modes=tuple(m.strip() for m in modes.split(",") if m.strip()))
    settings.check()
    device = resolve_device(state(ctx).device or "auto")
    report = run_evaluate_bench(settings, device)
    print_report(report)
    _maybe_json(report, as_json)


class TrainArch(str, Enum):
    resnet50 = "resnet50"
    small = "small"


@app.command("train")
def train(
    ctx: typer.Context,
    arch: Annotated[TrainArch, typer.Option(
        help="resnet50: microsoft/resnet-50's architecture (random weights); small: builtin:small.")] = TrainArch.resnet50,
    video: Annotated[bool, typer.Option(
        "--video", help="The video model (CAL's c2dres50: every frame through the backbone, max pool, mean over "
                        "the frames) on clips, at CAL's video recipe; reports clips/s and frames/s.")] = False,
    frames: Annotated[Optional[int], typer.Option(
        show_default=False, help="Frames per clip, with --video.  \\[default: 8]")] = None,
    batch: Annotated[Optional[str], typer.Option(
        show_default=False, help="PxK: identities x images (clips) per identity.  \\[default: 8x8; --video 16x4]")] = None,
    size: Annotated[Optional[str], typer.Option(
        show_default=False, help="HEIGHTxWIDTH of the images (frames).  \\[default: 384x192; --video 256x128]")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Timed steps per row.")] = 10,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed steps first.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")] = False,
) -> None:
    """Images/s (clips/s) of a CAL training step: the reference's float32 next to each precision dlcr trains in.

    ResNet-50 (the architecture of microsoft/resnet-50, last stride 1, random weights), the
    whole step from the clothes epoch on (identity loss, the clothes classifier's update, the
    CAL loss, both Adam optimizers), on random PK batches (page-locked on CUDA, as the loader
    hands them over). Images: the image head at 384x192, batches of 8 x 8. `--video`: CAL's
    c2dres50 on clips of `--frames` frames at 256x128, batches of 16 x 4 clips, label
    smoothing 0 (an explicit `--size` or `--batch` wins).

    Rows, each timed on the same batches after a warm-up: **reference** (fp32, NCHW, as CAL
    trains); **fp32** (dlcr's default, CAL's precision; channels_last on CUDA); **fp16**
    (autocast + GradScaler, channels_last: CAL's --amp, dlcr's default for LaST and
    DeepChange); **bf16** (autocast, channels_last). fp16 and bf16 are CUDA-only: on a CPU
    they are skipped with the reason, and fp32 is the reference's arithmetic and layout.

    The table goes to stderr; `--json` prints {device, settings, unit ("images" or "clips"),
    model {backbone, head, dim, last_stride_1, label_smoothing}, float32 (how float32 convs
    and matmuls ran), rows, skipped {row: why}, speedup, fastest} on stdout, each row
    {name, precision, channels_last, images | clips, frames (video: clips x T), seconds,
    images_per_s | clips_per_s, frames_per_s (video), peak_mem_gb (GiB, null without a GPU),
    vs_reference (its per-second figure over the reference's)}; speedup is the fastest dlcr
    row's vs_reference, fastest its name.

    Examples:

        dlcr --device cuda bench train

        dlcr --device cuda bench train --video

        dlcr --device cuda bench train --video --frames 4 --batch 8x4 --json > bench-train-video.json

        dlcr --device cpu bench train --arch small --size 128x64 --steps 5
    """
    from dlcr_cli.bench.train import TrainBenchSettings, print_report, run_train_bench
    from dlcr_cli.runtime import resolve_device

    p, k = parse_pk(batch) if batch else (None, None)
    settings = TrainBenchSettings(arch=arch.value, ids=p, images_per_id=k,
                                  size=parse_size(size, "--size") if size else None, steps=steps, warmup=warmup,
                                  video=video, frames=frames)
    settings.check()
    device = resolve_device(state(ctx).device or "auto")
    report = run_train_bench(settings, device)
    print_report(report)
    _maybe_json(report, as_json)


@app.command("embed")
def embed(
    ctx: typer.Context,
    arch: Annotated[TrainArch, typer.Option(
        help="resnet50: microsoft/resnet-50's architecture (random weights); small: builtin:small.")] = TrainArch.resnet50,
    size: Annotated[str, typer.Option(help="HEIGHTxWIDTH of the images.")] = "384x192",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes, one row each.")] = "64,256",
    steps: Annotated[int, typer.Option(min=1, help="Timed batches per row (after one warm-up batch).")] = 3,
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Also the exported ONNX graph under onnxruntime (dlcr[export]).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")] = False,
) -> None:
    """Images/s of test-time feature extraction: torch next to the graph `dlcr export` writes, run by onnxruntime.

    The same feature both ways (the image's embedding plus its mirror image's,
    L2-normalised), on normalised random images made before the clock starts (the model is
    timed, not decoding). The graph is exported and checked as `dlcr export` does; onnxruntime
    runs on its CPU provider, or CUDA's with onnxruntime-gpu on `--device cuda`. The table
    (images/s, the ratio onnxruntime / torch, the largest feature difference) goes to
    stderr; `--json` prints {settings, device, torch, export_seconds, provider, onnx_skipped,
    rows: [{batch, torch, onnxruntime, ratio, max_abs_diff}]} on stdout.

    Examples:

        dlcr --device cpu bench embed

        dlcr --device cuda bench embed --batch-sizes 64,256 --json > bench-embed.json

        dlcr --device cpu bench embed --arch small --size 128x64 --batch-sizes 8
    """
    from dlcr_cli.bench.embed import EmbedBenchSettings, print_report, run_embed_bench
    from dlcr_cli.errors import UsageError
    from dlcr_cli.runtime import resolve_device

    try:
        batches = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
    except ValueError:
        raise UsageError(f"--batch-sizes takes comma-separated integers, e.g. 64,256; got {batch_sizes!r}") from None
    settings = EmbedBenchSettings(arch=arch.value, size=parse_size(size, "--size"), batch_sizes=batches, steps=steps,
                                  onnx=onnx)
    settings.check()
    device = resolve_device(state(ctx).device or "auto")
    report = run_embed_bench(settings, device)
    print_report(report)
    _maybe_json(report, as_json)


@app.command("digests")
def digests(
    files: Annotated[int, typer.Option(min=1, help="Input files (a dataset's images).")] = 100_000,
    size: Annotated[int, typer.Option(min=1, help="Bytes per file.")] = 20_000,
    work_dir: Annotated[Optional[Path], typer.Option(
        "--work-dir", file_okay=False, exists=True, show_default=False,
        help="Where to write the files (default: the temporary folder).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")] = False,
) -> None:
    """Seconds of the content digests every reuse decision needs: a first run, which reads every
    input file, next to a resume, which reads none (sizes and mtimes match the cache file).

    Examples:

        dlcr bench digests

        dlcr bench digests --files 10000 --json
    """
    from dlcr_cli.bench.digests import print_report, run_digests_bench

    report = run_digests_bench(files, size, work_dir)
    print_report(report)
    _maybe_json(report, as_json)


@app.command("startup")
def startup(
    runs: Annotated[int, typer.Option(min=1, help="Rounds: one `dlcr --help`, one completion and one `import torch` process each.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")] = False,
) -> None:
    """Wall time of whole `dlcr --help` and TAB-completion processes, side by side with
    `python -c "import torch"` and as a ratio to it (the target: at most 0.2x), the CLI's
    own import, and the heavy modules it imported (none, by design).

    Examples:

        dlcr bench startup --runs 20
    """
    from dlcr_cli.bench.startup import run_startup_bench

    report = run_startup_bench(runs)
    _print_startup(report)
    _maybe_json(report, as_json)


@app.command("describe")
def describe(
    ids: Annotated[int, typer.Option(min=2, help="People of the synthetic dataset described.")] = 24,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")] = False,
) -> None:
    """Images/s of `describe --backend colors` (the weight-free baseline) on the synthetic data.

    The VLM backend (LLaVA-1.5-7B) has no random-weight bench yet.

    Examples:

        dlcr bench describe --ids 48
    """
    from dlcr_cli.bench.startup import run_describe_bench

    report = run_describe_bench(ids)
    _print_describe(report)
    _maybe_json(report, as_json)


@app.command("smoke")
def smoke(
    ctx: typer.Context,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", file_okay=False, show_default=False,
        help="Work folder (data, tiny models, runs, each command's logs in logs/), kept; a later run with the "
             "same folder reuses its data and models (default: a temporary folder, removed).")] = None,
    budget: Annotated[float, typer.Option(
        min=1, help="Seconds for the whole run: once spent, the remaining checks are skipped (each says so) "
                    "and a running command is stopped.")] = 480,
    only: Annotated[Optional[str], typer.Option(
        show_default=False, help="Comma-separated checks to run (default: all); naming one also runs it where "
                                 "it would be skipped as slow on a CPU.")] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="Smaller problems: the same code paths, faster (what the CPU test runs).")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help='Print {"ok", "failed", "skipped", "checks": [{"name", "ok", "seconds", "error", ...}]} '
                       "on stdout.")] = False,
) -> None:
    """Every CUDA-only path of dlcr once, on random weights (nothing downloaded), in a few minutes.

    Checks, in order: env (versions, GPU, bf16, TF32 settings); oom (a real CUDA out-of-memory
    halves the batch); inpaint (fp16 pipeline, per-output generators: repeatable and
    batch-independent); compile (the compiled UNet on tail batches); offload (the model cache
    moves idle models to the CPU and back); cal (the CAL step in bf16 and channels_last);
    features (float32 against bf16 autocast); metrics and rerank (device against CPU); train,
    resume and ddp (`dlcr train`, `--resume`, and under torchrun with one process); expand,
    describe and refine (the stage commands on tiny SegFormer, Llama, LLaVA and inpainting
    models); bench-evaluate, bench-train and bench-inpaint at small sizes.

    On a CPU the checks that need CUDA are skipped with the reason, and the others run the
    same code there. The table goes to stderr; `--json` prints the report on stdout. Exit 0
    when every check that ran is ok, else 1, naming the failed ones.

    Examples:

        dlcr --device cuda bench smoke --json > smoke.json

        dlcr bench smoke --only inpaint,compile,offload --out smoke-work

        dlcr --device cpu bench smoke --quick --budget 300
    """
    from dlcr_cli.bench.smoke import print_report, run_smoke
    from dlcr_cli.errors import ItemsFailed
    from dlcr_cli.runtime import resolve_device

    names = [name.strip() for name in only.split(",") if name.strip()] if only else None
    device = resolve_device(state(ctx).device or "auto")
    report = run_smoke(device, out, budget=budget, only=names, quick=quick)
    print_report(report)
    _maybe_json(report, as_json)
    if report["failed"]:
        ran = len(report["checks"]) - len(report["skipped"])
        raise ItemsFailed(f"bench smoke: {len(report['failed'])} of {ran} checks failed: {', '.join(report['failed'])}")


@app.command("all")
def all_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"device", "ran": {...}, "skipped": {...}} on stdout.')] = False,
) -> None:
    """Every measurement this machine can run, at its default size, and what it skipped and why.

    On a CPU: startup, describe (colours), digests (20,000 files), evaluate (MSMT17's size,
    reference included when the memory allows), inpaint with the tiny pipeline (the code path) and train
    (images, then video clips) with builtin:small; SD-1.5 inpainting and ResNet-50 training need CUDA.
    On CUDA: train is `bench train` and `bench train --video` at their defaults.

    Examples:

        dlcr bench all --json > bench.json
    """
    import torch

    from dlcr_cli.bench import device_label
    from dlcr_cli.bench import evaluate as bench_evaluate
    from dlcr_cli.bench.inpaint import BenchSettings, bench_device, run_inpaint_bench
    from dlcr_cli.bench.inpaint import print_report as print_inpaint
    from dlcr_cli.bench.digests import print_report as print_digests
    from dlcr_cli.bench.digests import run_digests_bench
    from dlcr_cli.bench.startup import run_describe_bench, run_startup_bench
    from dlcr_cli.bench.train import TrainBenchSettings, run_train_bench
    from dlcr_cli.bench.train import print_report as print_train
    from dlcr_cli.console import log
    from dlcr_cli.runtime import resolve_device

    device = resolve_device(state(ctx).device or "auto")
    cuda = device.type == "cuda"
    ran: dict = {}
    skipped: dict = {}
    ran["startup"] = run_startup_bench()
    _print_startup(ran["startup"])
    ran["describe colors"] = run_describe_bench()
    _print_describe(ran["describe colors"])
    ran["digests"] = run_digests_bench(files=20_000)
    print_digests(ran["digests"])
    skipped["describe vlm"] = "no random-weight LLaVA-1.5-7B bench yet"
    evaluate = bench_evaluate.EvalBenchSettings()
    free = bench_evaluate.available_bytes()
    if free is not None and bench_evaluate.reference_bytes(evaluate) > 0.9 * free:
        evaluate.reference = False
        skipped["evaluate reference"] = "its Q x G matrix does not fit the available memory"
    ran["evaluate"] = bench_evaluate.run_evaluate_bench(evaluate, device)
    bench_evaluate.print_report(ran["evaluate"])
    arch = "sd15" if cuda else "tiny"
    if not cuda:
        skipped["inpaint sd15"] = "needs CUDA (the tiny pipeline ran instead, to check the code path)"
    ran[f"inpaint {arch}"] = run_inpaint_bench(BenchSettings.for_arch(arch), bench_device(arch, str(device)))
    print_inpaint(ran[f"inpaint {arch}"])
    for video in (False, True):  # images at CAL's image recipe, then clips at its video one
        kind = "train video" if video else "train"
        if cuda:
            train = TrainBenchSettings(video=video)
        else:
            train = TrainBenchSettings(arch="small", size=(64, 32), ids=4, images_per_id=2, frames=4, steps=2, warmup=1,
                                       video=True) if video else \
                TrainBenchSettings(arch="small", size=(128, 64), steps=5, warmup=1)
            skipped[f"{kind} resnet50"] = ("minutes per step without CUDA (builtin:small on clips of 4 frames at 64x32 "
                                           "ran instead)" if video else
                                           "minutes per step without CUDA (builtin:small at 128x64 ran instead)")
        ran[f"{kind} {train.arch}"] = run_train_bench(train, device)
        print_train(ran[f"{kind} {train.arch}"])
    for name, why in skipped.items():
        log.info("bench all: skipped %s: %s", name, why)
    report = {"device": device_label(device), "torch": torch.__version__, "ran": ran, "skipped": skipped}
    _maybe_json(report, as_json)


def _print_startup(report: dict) -> None:
    from dlcr_cli.console import stderr

    h, c, t = report["help_seconds"], report["completion_seconds"], report["import_torch_seconds"]
    heavy = ", ".join(report["heavy_modules_imported"]) or "none"
    stderr.print(f"dlcr --help: median {h['median']:.3f} s ({report['help_vs_import_torch']:.2f}x import torch); "
                 f"TAB completion {c['median']:.3f} s ({report['completion_vs_import_torch']:.2f}x); import torch "
                 f"{t['median']:.3f} s; {h['runs']} processes each, target at most {report['target_ratio']}x; "
                 f"import of the CLI {report['import_seconds']:.3f} s; heavy modules imported: {heavy}",
                 highlight=False, soft_wrap=True)


def _print_describe(report: dict) -> None:
    from dlcr_cli.console import stderr

    stderr.print(f"describe --backend colors: {report['images']} images in {report['seconds']:.2f} s, "
                 f"{report['images_per_s']} images/s", highlight=False)


def _maybe_json(report: dict, as_json: bool) -> None:
    if as_json:
        import json
        import sys

        sys.stdout.write(json.dumps(report) + "\n")
