"""`dlcr train`: CAL on a dataset's training split, with generated images when given."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dlcr_cli.commands.common import parse_pk, parse_size, state

DATASET_HELP = ("A dataset root (PRCC, LTCC, VC-Clothes, LaST, DeepChange, CCVID: layout detected), a JSONL file "
                "of records with split train (query/gallery for evaluation), or - for records on stdin.")


class Loss(str, Enum):
    cal = "cal"
    ce = "ce"


class Keep(str, Enum):
    best = "best"
    last = "last"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


def train(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help=DATASET_HELP, metavar="DATASET", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: model.safetensors, model.json, settings.json, metrics.jsonl, state/.", file_okay=False, show_default=False)],
    generated: Annotated[Optional[str], typer.Option("--generated", "-g", help="Generated variants of the training images: dlcr inpaint records (JSONL), its output folder, or the authors' released strip format.", show_default=False)] = None,
    backbone: Annotated[Optional[str], typer.Option(help="transformers vision backbone (hub id or folder), or builtin:small (random init, no weights).", show_default=False)] = None,
    loss: Annotated[Optional[Loss], typer.Option(help="cal: identity + clothes adversarial (CAL); ce: the identity baseline.  \\[default: cal]", show_default=False)] = None,
    video: Annotated[Optional[bool], typer.Option("--video/--images", help="Train the video model on clips of tracklets, or on single frames.  \\[default: video when the training records are tracklets, as CCVID's]", show_default=False)] = None,
    image_size: Annotated[Optional[str], typer.Option(help="HEIGHTxWIDTH of the training images.  \\[default: 384x192; video 256x128]", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs.  \\[default: 60; video 150]", show_default=False)] = None,
    batch: Annotated[Optional[str], typer.Option("--batch", help="PxK: the global batch (over all processes) of P chunks of K images (video: clips) of one identity each.  \\[default: 8x8; LaST, DeepChange, video 16x4]", show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the init, the batches, the augmentation and the variant draws.", show_default=False)] = None,
    progressive: Annotated[Optional[bool], typer.Option("--progressive/--no-progressive", help="Progressive learning: early epochs draw from the first variants only.  \\[default: progressive]", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes (0: the main process).", show_default=False)] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Evaluate every N epochs and after the last (0: after the last only).  \\[default: 5; video 10]", show_default=False)] = None,
    keep: Annotated[Optional[Keep], typer.Option(help="best: also keep the best evaluated epoch's model in best/ (CAL's reporting protocol: selected on the test set); last: the last epoch only.  \\[default: best]", show_default=False)] = None,
    precision: Annotated[Optional[Precision], typer.Option(help="Arithmetic of training and its evaluations: fp32, or fp16 / bf16 autocast.  \\[default: auto: CAL's, fp16 for LaST and DeepChange on CUDA, else fp32]", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last finished epoch (--epochs may be raised).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the last epoch's metrics and evaluation as JSON on stdout.")] = False,
) -> None:
    """Train a CC-ReID model with CAL (docs/method.md, stage 2), on real images or real + generated ones.

    Images: ResNet-50 (last stride 1) -> max + average pooling -> BatchNorm embedding;
    identity classifier with label smoothing; from epoch 25 a cosine clothes classifier on
    detached features and the clothes-based adversarial loss; Adam 3.5e-4, lr x0.1 at epochs
    20 and 40, 60 epochs, batches of 8 chunks of 8 images (CAL's sampler). Tracklets (CCVID):
    CAL's c2dres50 video model on clips of 8 frames at stride 4, 256x128, 150 epochs, lr steps
    at 40/80/120, clothes losses from epoch 50, 16 chunks of 4 clips; evaluation averages the
    clip features of each tracklet. With `--generated`, every real image (clip) brings one
    variant of itself (identity loss on both, clothes losses on the real ones), drawn from
    its first variants early on (progressive learning). The protocol is evaluated every
    `--eval-every` epochs and after the last; `--keep best` also keeps the best epoch's model
    in best/, which `dlcr evaluate -c RUN` loads (CAL's reporting protocol).

    Examples:

        dlcr --device cuda train /data/prcc --out runs/prcc-cal

        dlcr --device cuda train /data/prcc --generated gen.jsonl --out runs/prcc-dlcr

        dlcr --device cuda train /data/CCVID --generated ccvid-gen.jsonl --out runs/ccvid-dlcr

        dlcr train /data/LTCC_ReID --generated /data/dlcr-released/LTCC --out runs/ltcc --eval-every 10

        dlcr train data --backbone builtin:small --image-size 128x64 --epochs 20 --keep last --out runs/small

        accelerate launch --multi_gpu --num_processes 4 -m dlcr_cli train /data/LaST --out runs/last
    """
    from dlcr_cli.console import log
    from dlcr_cli.distributed import current_shard
    from dlcr_cli.reid.data import load_reid_data
    from dlcr_cli.runtime import resolve_device

    p, k = parse_pk(batch) if batch is not None else (None, None)
    settings = state(ctx).resolve(train=dict(
        backbone=backbone, loss=loss, video=video, image_size=parse_size(image_size, "--image-size") if image_size
        else None, epochs=epochs, ids_per_batch=p, images_per_id=k, lr=lr, seed=seed, progressive=progressive,
        workers=workers, eval_every=eval_every, keep=keep, precision=precision,
    )).settings
    data = load_reid_data(dataset)  # input errors before anything is built
    data.require("train")
    log.info("train: %s", data.summary())
    from dlcr_cli.reid.train import resolve_for_data

    device = resolve_device(settings.device)
    s = resolve_for_data(settings.train, data, device)
    if s.video:
        log.info("train: video model on clips of %d frames at stride %d (tracklets cut every %d frames)",
                 s.clip_length, s.clip_stride, s.dense_step)
    variants = _variants(generated, data)
    from dlcr_cli.stages.train import train_run

    train_run(data, s, out, device, variants, resume=resume, dataset=dataset, generated=generated)
    if current_shard().is_main:
        _summary(out, as_json, "clips" if s.video else "images")


def _variants(generated: str | None, data) -> Any:
    if generated is None:
        return None
    from dlcr_cli.reid.generated import read_generated

    return read_generated(generated, data.train)


def _summary(out: Path, as_json: bool, unit: str) -> None:
    from rich import box
    from rich.table import Table

    from dlcr_cli.console import log, stderr
    from dlcr_cli.reid.train import METRICS, iter_metrics, read_best

    rows = list(iter_metrics(out / METRICS))
    if not rows:
        log.info("train: nothing to do: %s has finished its epochs", out)
        return
    last = rows[-1]
    table = Table(title=f"{out}: {last['epoch']} epochs", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("epoch", "loss", "accuracy", "lr", f"{unit}/s"):
        table.add_column(column, justify="right")
    for row in rows[-5:]:
        table.add_row(str(row["epoch"]), f"{row['loss']:.4f}", f"{row['accuracy']:.3f}", f"{row['lr']:.2e}",
                      f"{row['images_per_s']:.1f}")
    stderr.print(table)
    evaluated = [row for row in rows if row.get("evaluation")]
    if evaluated:
        final = evaluated[-1]["evaluation"]
        stderr.print("evaluation after epoch %d: %s" % (evaluated[-1]["epoch"], _scores(final)), highlight=False,
                     soft_wrap=True)
    best = read_best(out)
    if best is not None:
        stderr.print(f"best epoch {best['epoch']} ({best['setting']} rank-1 {100 * best['rank1']:.1f}; "
                     f"{best['protocol']}): {_scores(best['evaluation'])}", highlight=False, soft_wrap=True)
    log.info("train: last epoch's model in %s%s (dlcr evaluate DATASET --checkpoint %s)", out,
             f", best epoch's in {out / 'best'}" if best is not None else "", out)
    if as_json:
        import json
        import sys

        sys.stdout.write(json.dumps(last) + "\n")


def _scores(evaluation: dict[str, Any]) -> str:
    return ", ".join(f"{name} rank-1 {100 * v['rank1']:.1f} mAP {100 * v['mAP']:.1f}" for name, v in evaluation.items())
