"""What every `dlcr bench` measurement shares: timings with CUDA synchronised around them, peak
GPU memory, FLOP counts, the GPU's measured bf16 matmul rate, and the results table.

On a CPU the GPU-only numbers are None (shown as "no GPU"), never estimates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

NO_GPU = "no GPU"


@dataclass
class Timing:
    seconds: float = 0.0


def synchronize(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def cuda_timer(device: torch.device) -> Iterator[Timing]:
    """Wall time of the block, with the device synchronised before and after (kernels are
    asynchronous: without it the time is that of queueing them)."""
    timing = Timing()
    synchronize(device)
    start = time.perf_counter()
    try:
        yield timing
    finally:
        synchronize(device)
        timing.seconds = time.perf_counter() - start


def reset_peak_memory(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    """Peak allocated GPU memory since the last reset, GiB; None off CUDA."""
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def free_device_memory(device: torch.device) -> None:
    """Collect dropped models so the next measurement starts with their memory returned."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (a multiply-add counts 2) of the matmuls, convolutions and attention `fn` runs.
    Works on `meta` tensors, so a model's count needs neither its weights nor a GPU."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return counter.get_total_flops()


def matmul_peak_flops(device: torch.device, n: int = 8192, iters: int = 20) -> float | None:
    """The GPU's attainable dense bf16 rate, FLOP/s, measured on n x n matmuls; None off CUDA
    (a CPU has no comparable peak worth quoting)."""
    import torch

    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    out = torch.empty_like(a)
    for _ in range(3):  # clocks up, cuBLAS picks its kernel
        torch.mm(a, b, out=out)
    with cuda_timer(device) as timing:
        for _ in range(iters):
            torch.mm(a, b, out=out)
    del a, b, out
    torch.cuda.empty_cache()
    return 2 * n**3 * iters / timing.seconds


def device_label(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


@dataclass
class Row:
    """One measured configuration: `images` produced in `seconds`."""

    name: str
    images: int
    seconds: float
    peak_mem_gb: float | None = None
    flops_per_image: float | None = None
    """Of the part whose share of the peak is reported (e.g. the UNet's); None: not counted."""

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def share_of(self, peak: float | None) -> float | None:
        if peak is None or self.flops_per_image is None:
            return None
        return self.flops_per_image * self.images_per_s / peak

    def as_dict(self, peak: float | None, share_key: str = "share_of_peak") -> dict[str, Any]:
        share = self.share_of(peak)
        return {
            "name": self.name, "images": self.images, "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 4),
            "peak_mem_gb": None if self.peak_mem_gb is None else round(self.peak_mem_gb, 3),
            share_key: None if share is None else round(share, 4),
        }  # fmt: skip


def print_table(title: str, rows: list[Mapping[str, Any]], share_key: str = "share_of_peak",
                share_label: str = "share of peak") -> None:
    """Rows (as `Row.as_dict` gives them) as a table on stderr: stdout stays for --json."""
    from rich.table import Table

    from dlcr_cli.console import stderr

    table = Table(title=title or None, title_justify="left")
    table.add_column("")
    for column in ("images", "seconds", "images/s", "peak GiB", share_label):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        memory, share = row["peak_mem_gb"], row[share_key]
        table.add_row(
            row["name"], str(row["images"]), f"{row['seconds']:.2f}", f"{row['images_per_s']:.3f}",
            NO_GPU if memory is None else f"{memory:.2f}", NO_GPU if share is None else f"{share:.1%}",
        )
    stderr.print(table)
