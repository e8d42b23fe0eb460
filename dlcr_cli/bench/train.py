"""`dlcr bench train`: images/s of a CAL training step on ResNet-50 at 384x192, the
reference's way (float32, NCHW) next to dlcr's (bfloat16 autocast and channels_last on
CUDA), side by side in one run on the same batches.

The model is the full ResNet-50 architecture of `microsoft/resnet-50` (transformers'
ResNetBackbone, last stride 1) with random weights: nothing to download, the kernels of the
real run. A step is the whole CAL step from epoch 25 on (identity loss, the clothes
classifier's own update on detached features, the CAL loss, both optimizers), on a PK batch
of random images; data loading is left out (it overlaps the GPU in worker processes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from dlcr_cli.bench import cuda_timer, device_label, free_device_memory, peak_memory_gb, reset_peak_memory
from dlcr_cli.console import log, stderr
from dlcr_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

    from dlcr_cli.reid.train import Batch, Stepper


@dataclass
class TrainBenchSettings:
    arch: str = "resnet50"
    """resnet50: microsoft/resnet-50's architecture; small: builtin:small (the CPU code path)."""
    ids: int = 8
    images_per_id: int = 8
    size: tuple[int, int] = (384, 192)
    steps: int = 10
    warmup: int = 3
    num_pids: int = 150
    num_clothes: int = 450

    def check(self) -> None:
        if min(self.ids, self.images_per_id, self.steps, *self.size) < 1 or self.warmup < 0:
            raise UsageError("batch, size and steps must be positive")


@dataclass
class TrainRow:
    name: str
    images: int
    seconds: float
    peak_mem_gb: float | None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def build_resnet50_reid(device: torch.device) -> Any:
    """The re-id model on `microsoft/resnet-50`'s architecture (ResNetConfig's defaults are
    ResNet-50's), random weights, last stride 1, as `build_model` makes it from the hub."""
    import torch
    from transformers import ResNetBackbone, ResNetConfig

    from dlcr_cli.reid.model import _hub_model

    torch.manual_seed(0)
    backbone = ResNetBackbone(ResNetConfig(out_features=["stage4"]))
    return _hub_model(backbone, {"backbone": "microsoft/resnet-50 (random weights)", "kind": "hub",
                                 "last_stride_1": True}).to(device)


def _model(arch: str, device: torch.device) -> Any:
    from dlcr_cli.reid.model import build_model

    return build_resnet50_reid(device) if arch == "resnet50" else build_model("builtin:small", device=device)


def make_stepper(s: TrainBenchSettings, device: torch.device, fast: bool) -> Stepper:
    """A fresh model, classifiers and optimizers; `fast`: dlcr's path on CUDA (bf16, channels_last)."""
    import torch

    from dlcr_cli.reid.losses import ClothesClassifier, IdentityClassifier
    from dlcr_cli.reid.train import Stepper
    from dlcr_cli.settings import DEFAULTS

    from dlcr_cli.reid.train import IMAGE_DEFAULTS

    train = DEFAULTS.train.model_copy(update=IMAGE_DEFAULTS)
    cuda = device.type == "cuda"
    model = _model(s.arch, device)
    if fast and cuda:
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
    return Stepper(modules, opt, opt_cc, pid2clothes, train, device, precision="bf16" if fast and cuda else "fp32",
                   channels_last=fast and cuda)


def make_batches(s: TrainBenchSettings, count: int, pin: bool | None = None) -> list[Batch]:
    """`count` PK batches of random normalised images on the CPU, page-locked (`pin`, by
    default when CUDA is there) as the trainer's loader hands them over, so the timed step
    includes the same asynchronous copy."""
    import torch

    from dlcr_cli.reid.train import Batch

    pin = torch.cuda.is_available() if pin is None else pin
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        pids = torch.randperm(s.num_pids, generator=g)[: s.ids].repeat_interleave(s.images_per_id)
        clothes = pids + s.num_pids * torch.randint(0, s.num_clothes // s.num_pids, pids.shape, generator=g)
        batch = Batch(torch.randn(len(pids), 3, *s.size, generator=g), pids, clothes)
        batches.append(batch.pin_memory() if pin else batch)
    return batches


def time_row(name: str, s: TrainBenchSettings, device: torch.device, fast: bool, batches: list[Batch]) -> TrainRow:
    import torch

    torch.backends.cudnn.benchmark = True  # as the trainer runs, both rows
    stepper = make_stepper(s, device, fast)
    for batch in batches[: s.warmup]:  # cuDNN picks its kernels, the allocator fills up
        stepper.step(batch, clothes_on=True)
    reset_peak_memory(device)
    timed = batches[s.warmup:]
    with cuda_timer(device) as timing:
        for batch in timed:
            stepper.step(batch, clothes_on=True)
    row = TrainRow(name, sum(len(b.images) for b in timed), timing.seconds, peak_memory_gb(device))
    del stepper
    free_device_memory(device)
    log.info("bench: %s: %d images in %.2f s, %.1f images/s", name, row.images, row.seconds, row.images_per_s)
    return row


def run_train_bench(s: TrainBenchSettings, device: torch.device) -> dict[str, Any]:
    s.check()
    batches = make_batches(s, s.warmup + s.steps)
    fast = "bf16 autocast, channels_last" if device.type == "cuda" else "float32 (no GPU)"
    rows = [time_row("(a) reference: float32, NCHW", s, device, False, batches),
            time_row(f"(b) dlcr: {fast}", s, device, True, batches)]
    return {
        "device": device_label(device), "settings": {**asdict(s), "size": list(s.size)},
        "rows": [{**asdict(r), "images_per_s": round(r.images_per_s, 3)} for r in rows],
        "speedup": round(rows[1].images_per_s / rows[0].images_per_s, 3) if rows[0].images_per_s else None,
    }


def print_report(report: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    s = report["settings"]
    stderr.print(f"dlcr bench train: {s['arch']} at {s['size'][0]}x{s['size'][1]}, batch {s['ids']}x{s['images_per_id']}, "
                 f"CAL step, {s['steps']} timed steps after {s['warmup']} on {report['device']}", highlight=False,
                 soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("", "images", "seconds", "images/s", "peak GiB"):
        table.add_column(column, justify="right" if column else "left")
    for row in report["rows"]:
        memory = row["peak_mem_gb"]
        table.add_row(row["name"], str(row["images"]), f"{row['seconds']:.2f}", f"{row['images_per_s']:.1f}",
                      "no GPU" if memory is None else f"{memory:.2f}")
    stderr.print(table)
    if report["speedup"] is not None:
        stderr.print(f"dlcr / reference: {report['speedup']:.2f}x", highlight=False)
