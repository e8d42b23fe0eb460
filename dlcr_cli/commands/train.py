"""`dlcr train`: CAL on a dataset's training split, with generated images when given."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dlcr_cli.commands.common import parse_pk, parse_size, state
from dlcr_cli.settings import DEFAULTS

D = DEFAULTS.train
DATASET_HELP = ("A dataset root (PRCC, LTCC, VC-Clothes, LaST, DeepChange, CCVID: layout detected), a JSONL file "
                "of records with split train (query/gallery for evaluation), or - for records on stdin.")
# Settings a resumed run may change: they do not alter what the finished epochs computed.
RESUMABLE_CHANGES = {"epochs", "workers", "eval_every"}


class Loss(str, Enum):
    cal = "cal"
    ce = "ce"


def train(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help=DATASET_HELP, metavar="DATASET", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: model.safetensors, model.json, settings.json, metrics.jsonl, state/.", file_okay=False, show_default=False)],
    generated: Annotated[Optional[str], typer.Option("--generated", "-g", help="Generated variants of the training images: dlcr inpaint records (JSONL), its output folder, or the authors' released strip format.", show_default=False)] = None,
    backbone: Annotated[Optional[str], typer.Option(help=f"transformers vision backbone (hub id or folder), or builtin:small (random init, no weights).  \\[default: {D.backbone}]", show_default=False)] = None,
    loss: Annotated[Optional[Loss], typer.Option(help="cal: identity + clothes adversarial (CAL); ce: the identity baseline.  \\[default: cal]", show_default=False)] = None,
    image_size: Annotated[Optional[str], typer.Option(help=f"HEIGHTxWIDTH of the training images.  \\[default: {D.image_size[0]}x{D.image_size[1]}]", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(help=f"Epochs.  \\[default: {D.epochs}]", show_default=False)] = None,
    batch: Annotated[Optional[str], typer.Option("--batch", help="PxK: P identities with K images each per batch.  \\[default: 8x8; LaST, DeepChange 16x4]", show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(help=f"Adam learning rate.  \\[default: {D.lr}]", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help=f"Seed of the init, the batches, the augmentation and the variant draws.  \\[default: {D.seed}]", show_default=False)] = None,
    progressive: Annotated[Optional[bool], typer.Option("--progressive/--no-progressive", help="Progressive learning: early epochs draw from the first variants only.  \\[default: progressive]", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help=f"DataLoader worker processes (0: the main process).  \\[default: {D.workers}]", show_default=False)] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Evaluate every N epochs (0: after the last only).  \\[default: 0]", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last finished epoch (--epochs may be raised).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the last epoch's metrics and evaluation as JSON on stdout.")] = False,
) -> None:
    """Train a CC-ReID model with CAL (SPEC "train"), on real images or real + generated ones.

    ResNet-50 (last stride 1) -> max + average pooling -> BatchNorm embedding; identity
    classifier with label smoothing; from epoch 25 a cosine clothes classifier on detached
    features and the clothes-based adversarial loss; Adam 3.5e-4, lr x0.1 at epochs 20 and 40,
    60 epochs, PK batches of 8 ids x 8 images. With `--generated`, every real image brings one
    variant of itself (identity loss on both, clothes losses on the real ones), drawn from its
    first variants early on (progressive learning). After training (and every `--eval-every`
    epochs) the dataset's protocol is evaluated when it has query and gallery images.

    Examples:

        dlcr --device cuda train /data/prcc --out runs/prcc-cal

        dlcr --device cuda train /data/prcc --generated gen.jsonl --out runs/prcc-dlcr

        dlcr train /data/LTCC_ReID --generated /data/dlcr-released/LTCC --out runs/ltcc --eval-every 10

        dlcr train data --backbone builtin:small --image-size 128x64 --epochs 20 --out runs/small

        accelerate launch --multi_gpu --num_processes 4 -m dlcr_cli train /data/LaST --out runs/last
    """
    from dlcr_cli.console import log
    from dlcr_cli.distributed import current_shard
    from dlcr_cli.reid.data import load_reid_data
    from dlcr_cli.runtime import resolve_device

    p, k = parse_pk(batch) if batch is not None else (None, None)
    settings = state(ctx).resolve(train=dict(
        backbone=backbone, loss=loss, image_size=parse_size(image_size, "--image-size") if image_size else None,
        epochs=epochs, ids_per_batch=p, images_per_id=k, lr=lr, seed=seed, progressive=progressive, workers=workers,
        eval_every=eval_every,
    )).settings
    data = load_reid_data(dataset)  # input errors before anything is built
    data.require("train")
    log.info("train: %s", data.summary())
    from dlcr_cli.reid.train import Trainer, resolve_for_dataset, truncate_metrics

    s = resolve_for_dataset(settings.train, data.name)
    _check_run_folder(out, s, resume, generated)
    variants = _variants(generated, data)
    shard = current_shard()
    inputs = _check_inputs(out, data, variants, s.backbone, resume) if shard.is_main else None
    device = resolve_device(settings.device)
    trainer = Trainer(data, s, out, device=device, variants=variants)
    if resume:
        done = trainer.load_state()
        log.info("train: resuming %s after epoch %d of %d", out, done, s.epochs)
        if shard.is_main:
            truncate_metrics(out / "metrics.jsonl", done)
    if shard.is_main:
        _write_settings(out, s, dataset, generated, inputs)
    trainer.fit(s.epochs, s.eval_every)
    if shard.is_main:
        _summary(out, as_json)


def _variants(generated: str | None, data) -> Any:
    if generated is None:
        return None
    from dlcr_cli.reid.generated import read_generated

    return read_generated(generated, data.train)


def _settings_record(s, dataset: str, generated: str | None) -> dict[str, Any]:
    return {"dataset": dataset, "generated": generated, "train": s.model_dump(mode="json")}


def _check_run_folder(out: Path, s, resume: bool, generated: str | None) -> None:
    """A finished or interrupted run is never overwritten; a resumed one must keep its settings."""
    import json

    from dlcr_cli.errors import UsageError
    from dlcr_cli.reid.train import SETTINGS, STATE_FILE

    has_run = (out / STATE_FILE).is_file()
    if has_run and not resume:
        raise UsageError(f"{out} holds a training run: --resume to continue it, or another --out")
    if not resume or not has_run:
        return
    try:
        before = json.loads((out / SETTINGS).read_text())["train"]
    except (OSError, ValueError, KeyError):
        return
    now = s.model_dump(mode="json")
    changed = sorted(key for key in now if key not in RESUMABLE_CHANGES and before.get(key) != now[key])
    if changed:
        raise UsageError(f"--resume keeps the run's settings; these differ from {out / SETTINGS}: {', '.join(changed)}")


def _check_inputs(out: Path, data, variants, backbone: str, resume: bool) -> dict[str, Any]:
    """The run's inputs now; a resumed run must have been trained on the same ones."""
    import json

    from dlcr_cli.errors import UsageError
    from dlcr_cli.reid.train import INPUTS_FILE, STATE_FILE, changed_inputs, run_inputs

    inputs = run_inputs(data, variants, backbone, out)
    if not resume or not (out / STATE_FILE).is_file():
        return inputs
    try:
        before = json.loads((out / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        raise UsageError(f"--resume: {out} has no readable record of its inputs ({INPUTS_FILE}); "
                         f"start a new run with another --out") from None
    changed = changed_inputs(before, inputs)
    if changed:
        raise UsageError(f"--resume continues a run on the inputs it started with; changed since: {'; '.join(changed)}")
    return inputs


def _write_settings(out: Path, s, dataset: str, generated: str | None, inputs: dict[str, Any] | None) -> None:
    import json

    from dlcr_cli.io import write_text_atomic
    from dlcr_cli.reid.train import INPUTS_FILE, SETTINGS

    (out / INPUTS_FILE).parent.mkdir(parents=True, exist_ok=True)
    if inputs is not None:
        write_text_atomic(json.dumps(inputs) + "\n", out / INPUTS_FILE)
    write_text_atomic(json.dumps(_settings_record(s, dataset, generated), indent=2) + "\n", out / SETTINGS)


def _summary(out: Path, as_json: bool) -> None:
    from rich import box
    from rich.table import Table

    from dlcr_cli.console import log, stderr
    from dlcr_cli.reid.train import METRICS, iter_metrics

    rows = list(iter_metrics(out / METRICS))
    if not rows:
        log.info("train: nothing to do: %s has finished its epochs", out)
        return
    last = rows[-1]
    table = Table(title=f"{out}: {last['epoch']} epochs", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("epoch", "loss", "accuracy", "lr", "images/s"):
        table.add_column(column, justify="right")
    for row in rows[-5:]:
        table.add_row(str(row["epoch"]), f"{row['loss']:.4f}", f"{row['accuracy']:.3f}", f"{row['lr']:.2e}",
                      f"{row['images_per_s']:.1f}")
    stderr.print(table)
    evaluated = [row for row in rows if row.get("evaluation")]
    if evaluated:
        final = evaluated[-1]["evaluation"]
        stderr.print("evaluation after epoch %d: %s" % (evaluated[-1]["epoch"], ", ".join(
            f"{name} rank-1 {100 * v['rank1']:.1f} mAP {100 * v['mAP']:.1f}" for name, v in final.items())),
            highlight=False, soft_wrap=True)
    log.info("train: model in %s (dlcr evaluate DATASET --checkpoint %s)", out, out)
    if as_json:
        import json
        import sys

        sys.stdout.write(json.dumps(last) + "\n")
