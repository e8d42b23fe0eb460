"""`dlcr bench train`: throughput of a CAL training step, the reference's way (float32, NCHW)
next to each precision dlcr trains in, side by side in one run on the same batches.

Rows, in order:

- reference: float32, NCHW, as CAL trains.
- fp32: dlcr's default (CAL's precision), channels_last on CUDA.
- fp16: fp16 autocast with a GradScaler, channels_last (CAL's --amp, dlcr's default for
  LaST and DeepChange).
- bf16: bf16 autocast, channels_last.

The autocast rows are CUDA-only (skipped on a CPU, where the fp32 row is the reference's
arithmetic and layout). Float32 convolutions and matmuls run as the process has them (the
report's "float32" says how: PyTorch's default lets cuDNN use TF32), as `dlcr train` does.

Image (default): the full ResNet-50 architecture of `microsoft/resnet-50` (transformers'
ResNetBackbone, last stride 1) with random weights, nothing to download, the kernels of the
real run; the image head (max + average pool, 2C-d) at 384x192, PK batches of 8 x 8 (CAL's
image recipe). Video (`video`): the same backbone with the video head, CAL's c2dres50
(every frame through the backbone, spatial max pool, mean over the T frames, C-d), on clips
of `frames` (8) frames at 256x128, batches of 16 x 4 clips, label smoothing 0 (CAL's video
recipe); it reports clips/s and frames/s (clips x T).

A step is the whole CAL step from the clothes epoch on (identity loss, the clothes
classifier's own update on detached features, the CAL loss, both optimizers), on a PK batch
of random images or clips, page-locked on CUDA as the trainer's loader hands them over; data
loading is left out (it overlaps the GPU in worker processes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from dlcr_cli.bench import (
    cuda_timer,
    device_label,
    float32_precision,
    free_device_memory,
    peak_memory_gb,
    reset_peak_memory,
)
from dlcr_cli.console import log, stderr
from dlcr_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

    from dlcr_cli.reid.train import Batch, Stepper


@dataclass(frozen=True)
class RowSpec:
    name: str
    precision: str
    """fp32, fp16 or bf16 (autocast; fp16 with a GradScaler)."""
    channels_last: bool
    """On CUDA; a CPU row is NCHW whatever this says, as `dlcr train` runs there."""
    about: str


ROWS = (
    RowSpec("reference", "fp32", False, "as CAL trains"),
    RowSpec("fp32", "fp32", True, "dlcr's default (CAL's precision)"),
    RowSpec("fp16", "fp16", True, "autocast + GradScaler (CAL's --amp)"),
    RowSpec("bf16", "bf16", True, "autocast"),
)
AUTOCAST_NEEDS_CUDA = "autocast rows are CUDA-only"


@dataclass
class TrainBenchSettings:
    arch: str = "resnet50"
    """resnet50: microsoft/resnet-50's architecture; small: builtin:small (the CPU code path)."""
    ids: int | None = None
    """Identities per batch (default: CAL's, 8 images, 16 video)."""
    images_per_id: int | None = None
    """Images (video: clips) per identity (default: CAL's, 8 images, 4 video)."""
    size: tuple[int, int] | None = None
    """HEIGHT, WIDTH (default: CAL's, 384x192 images, 256x128 video)."""
    steps: int = 10
    warmup: int = 3
    num_pids: int = 150
    num_clothes: int = 450
    video: bool = False
    """The video model (CAL's c2dres50) on clips of `frames` frames."""
    frames: int | None = None
    """Frames per clip (video only; default 8, CAL's clip length)."""

    def __post_init__(self) -> None:
        from dlcr_cli.reid.train import IMAGE_DEFAULTS, VIDEO_DEFAULTS

        recipe = VIDEO_DEFAULTS if self.video else IMAGE_DEFAULTS
        self.ids = recipe["ids_per_batch"] if self.ids is None else self.ids
        self.images_per_id = recipe["images_per_id"] if self.images_per_id is None else self.images_per_id
        self.size = tuple(recipe["image_size"]) if self.size is None else tuple(self.size)  # type: ignore[assignment]
        if self.video and self.frames is None:
            self.frames = 8

    def check(self) -> None:
        if self.frames is not None and not self.video:
            raise UsageError("--frames is the clip length of the video bench: add --video")
        if self.video and self.frames is not None and self.frames < 1:
            raise UsageError(f"--frames must be positive; got {self.frames}")
        if min(self.ids, self.images_per_id, self.steps, *self.size) < 1 or self.warmup < 0:  # type: ignore[misc]
            raise UsageError("batch, size and steps must be positive")

    @property
    def unit(self) -> str:
        """What a row counts: images, or clips for the video bench."""
        return "clips" if self.video else "images"

    @property
    def head(self) -> str:
        return "video" if self.video else "image"


@dataclass
class TrainRow:
    name: str
    precision: str
    channels_last: bool
    items: int
    """Images, or clips for the video bench."""
    frames_per_item: int | None
    """T for the video bench, else None."""
    seconds: float
    peak_mem_gb: float | None

    @property
    def per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    def report(self, unit: str, reference: TrainRow) -> dict[str, Any]:
        """The JSON row: images / images_per_s, or clips, frames, clips_per_s, frames_per_s."""
        row: dict[str, Any] = {"name": self.name, "precision": self.precision, "channels_last": self.channels_last,
                               unit: self.items}
        if self.frames_per_item is not None:
            row["frames"] = self.items * self.frames_per_item
        row["seconds"] = self.seconds
        row[f"{unit}_per_s"] = round(self.per_s, 3)
        if self.frames_per_item is not None:
            row["frames_per_s"] = round(self.per_s * self.frames_per_item, 3)
        row["peak_mem_gb"] = self.peak_mem_gb
        row["vs_reference"] = round(self.per_s / reference.per_s, 3) if reference.per_s else None
        return row


def build_resnet50_reid(device: torch.device, head: str = "image") -> Any:
    """The re-id model on `microsoft/resnet-50`'s architecture (ResNetConfig's defaults are
    ResNet-50's), random weights, last stride 1, with the image or video head, as
    `build_model` makes it from the hub."""
    import torch
    from transformers import ResNetBackbone, ResNetConfig

    from dlcr_cli.reid.model import _hub_model

    torch.manual_seed(0)
    backbone = ResNetBackbone(ResNetConfig(out_features=["stage4"]))
    return _hub_model(backbone, {"backbone": "microsoft/resnet-50 (random weights)", "kind": "hub",
                                 "last_stride_1": True, "head": head}).to(device)


def _model(arch: str, device: torch.device, head: str = "image") -> Any:
    import torch

    from dlcr_cli.reid.model import build_model

    if arch == "resnet50":
        return build_resnet50_reid(device, head)
    torch.manual_seed(0)
    return build_model("builtin:small", device=device, head=head)


def make_stepper(s: TrainBenchSettings, device: torch.device, fast: bool = False, *, precision: str | None = None,
                 channels_last: bool | None = None) -> Stepper:
    """A fresh model (the settings' head), classifiers and optimizers, with the recipe's train
    settings (CAL's image or video one). `precision` and `channels_last` (CUDA only) say the
    row; without them `fast` is dlcr's fastest path on CUDA (bf16, channels_last), else the
    reference's (fp32, NCHW)."""
    import torch

    from dlcr_cli.reid.losses import ClothesClassifier, IdentityClassifier
    from dlcr_cli.reid.train import IMAGE_DEFAULTS, VIDEO_DEFAULTS, Stepper
    from dlcr_cli.settings import DEFAULTS

    train = DEFAULTS.train.model_copy(update=VIDEO_DEFAULTS if s.video else IMAGE_DEFAULTS)
    cuda = device.type == "cuda"
    precision = precision or ("bf16" if fast and cuda else "fp32")
    channels_last = cuda and (fast if channels_last is None else channels_last)
    model = _model(s.arch, device, s.head)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    id_clf = IdentityClassifier(model.dim, s.num_pids).to(device)
    clothes_clf = ClothesClassifier(model.dim, s.num_clothes).to(device)
    opt = torch.optim.Adam([*model.parameters(), *id_clf.parameters()], lr=train.lr, weight_decay=train.weight_decay)
    opt_cc = torch.optim.Adam(clothes_clf.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    pid2clothes = torch.zeros(s.num_pids, s.num_clothes, dtype=torch.bool, device=device)
    pid2clothes[torch.arange(s.num_clothes) % s.num_pids, torch.arange(s.num_clothes)] = True
    modules = {"model": model, "id": id_clf, "clothes": clothes_clf}
    for module in modules.values():
        module.train()
    return Stepper(modules, opt, opt_cc, pid2clothes, train, device, precision=precision, channels_last=channels_last)


MAX_DISTINCT_BATCHES = 4
"""Random batches made per run, used in turn: the copy and the step cost the same whatever
the values, and video batches are large (16 x 4 clips of 8 frames at 256x128: 200 MB each)."""


def make_batches(s: TrainBenchSettings, count: int, pin: bool | None = None) -> list[Batch]:
    """`count` PK batches of random normalised images (video: clips, B x T x 3 x H x W) on the
    CPU, page-locked (`pin`, by default when CUDA is there) as the trainer's loader hands them
    over, so the timed step includes the same asynchronous copy. At most
    MAX_DISTINCT_BATCHES distinct ones, repeated in turn."""
    import torch

    from dlcr_cli.reid.train import Batch

    pin = torch.cuda.is_available() if pin is None else pin
    g = torch.Generator().manual_seed(0)
    frames = (s.frames,) if s.video else ()
    distinct: list[Batch] = []
    for _ in range(min(count, MAX_DISTINCT_BATCHES)):
        pids = torch.randperm(s.num_pids, generator=g)[: s.ids].repeat_interleave(s.images_per_id)
        clothes = pids + s.num_pids * torch.randint(0, s.num_clothes // s.num_pids, pids.shape, generator=g)
        batch = Batch(torch.randn(len(pids), *frames, 3, *s.size, generator=g), pids, clothes)  # type: ignore[misc]
        distinct.append(batch.pin_memory() if pin else batch)
    return [distinct[i % len(distinct)] for i in range(count)]


def time_row(spec: RowSpec, s: TrainBenchSettings, device: torch.device, batches: list[Batch]) -> tuple[TrainRow, Any]:
    """The row's timing, and its model (backbone, head, dim, last_stride_1) and label smoothing."""
    import torch

    torch.backends.cudnn.benchmark = True  # as the trainer runs, every row
    stepper = make_stepper(s, device, precision=spec.precision, channels_last=spec.channels_last)
    for batch in batches[: s.warmup]:  # cuDNN picks its kernels, the allocator fills up
        stepper.step(batch, clothes_on=True)
    reset_peak_memory(device)
    timed = batches[s.warmup:]
    with cuda_timer(device) as timing:
        for batch in timed:
            stepper.step(batch, clothes_on=True)
    row = TrainRow(spec.name, spec.precision, stepper.channels_last, sum(len(b.images) for b in timed),
                   s.frames if s.video else None, timing.seconds, peak_memory_gb(device))
    info = {**{k: stepper.modules["model"].spec.get(k) for k in ("backbone", "head", "dim", "last_stride_1")},
            "label_smoothing": stepper.s.label_smoothing}
    del stepper
    free_device_memory(device)
    extra = f", {row.per_s * row.frames_per_item:.1f} frames/s" if row.frames_per_item else ""
    log.info("bench: %s: %d %s in %.2f s, %.1f %s/s%s", spec.name, row.items, s.unit, row.seconds, row.per_s,
             s.unit, extra)
    return row, info


def run_train_bench(s: TrainBenchSettings, device: torch.device) -> dict[str, Any]:
    """The report: device, settings, unit (images or clips), model (backbone, head, dim,
    last_stride_1, label_smoothing), float32 (how float32 ran),
    rows (see TrainRow.report), skipped ({row: why}), speedup and fastest (the fastest dlcr
    row over the reference, and its name)."""
    s.check()
    cuda = device.type == "cuda"
    specs = [spec for spec in ROWS if cuda or spec.precision == "fp32"]
    skipped = {spec.name: AUTOCAST_NEEDS_CUDA for spec in ROWS if spec not in specs}
    batches = make_batches(s, s.warmup + s.steps)
    rows, model = [], {}
    for spec in specs:
        row, model = time_row(spec, s, device, batches)
        rows.append(row)
    reference = rows[0]
    fastest = max(rows[1:], key=lambda r: r.per_s)
    return {
        "device": device_label(device), "settings": {**asdict(s), "size": list(s.size)},  # type: ignore[arg-type]
        "unit": s.unit,
        "model": model,
        "float32": float32_precision(),
        "rows": [row.report(s.unit, reference) for row in rows],
        "skipped": skipped,
        "speedup": round(fastest.per_s / reference.per_s, 3) if reference.per_s else None,
        "fastest": fastest.name,
    }


def print_report(report: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    s, unit, model = report["settings"], report["unit"], report["model"]
    what = f"clips of {s['frames']} frames" if s["video"] else "images"
    stderr.print(f"dlcr bench train: {s['arch']} ({model['head']} head, {model['dim']}-d) at "
                 f"{s['size'][0]}x{s['size'][1]}, batch {s['ids']}x{s['images_per_id']} {what}, CAL step, "
                 f"{s['steps']} timed steps after {s['warmup']} on {report['device']}", highlight=False, soft_wrap=True)
    video = bool(s["video"])
    table = Table(box=box.SIMPLE_HEAD)
    columns = ["", unit, *(["frames"] if video else []), "s", f"{unit}/s", *(["frames/s"] if video else []),
               "vs ref", "peak GiB"]
    for i, column in enumerate(columns):
        table.add_column(column, justify="right" if i else "left")
    for row in report["rows"]:
        memory = row["peak_mem_gb"]
        table.add_row(row["name"], str(row[unit]),
                      *([str(row["frames"])] if video else []), f"{row['seconds']:.2f}",
                      f"{row[f'{unit}_per_s']:.1f}", *([f"{row['frames_per_s']:.1f}"] if video else []),
                      "" if row["vs_reference"] is None else f"{row['vs_reference']:.2f}x",
                      "no GPU" if memory is None else f"{memory:.2f}")
    stderr.print(table)
    about = {spec.name: spec.about for spec in ROWS}
    layout = {True: "channels_last", False: "NCHW"}
    stderr.print("; ".join(f"{row['name']}: {row['precision']}, {layout[row['channels_last']]}, {about[row['name']]}"
                           for row in report["rows"]), highlight=False, soft_wrap=True)
    reasons: dict[str, list[str]] = {}
    for name, why in report["skipped"].items():
        reasons.setdefault(why, []).append(name)
    for why, names in reasons.items():
        stderr.print(f"skipped {', '.join(names)}: {why}", highlight=False, soft_wrap=True)
    if report["speedup"] is not None:
        stderr.print(f"dlcr / reference: {report['speedup']:.2f}x ({report['fastest']})", highlight=False)
