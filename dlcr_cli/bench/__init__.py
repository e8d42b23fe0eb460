"""What every `dlcr bench` measurement shares: timings with CUDA synchronised around them, peak
GPU memory, FLOP counts, the GPU's measured bf16 matmul rate, float32 at full precision, and
the results table.

On a CPU the GPU-only numbers are None (shown as "no GPU"), never estimates.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
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


def repeat_for(fn: Callable[[], Any], min_seconds: float, *, sync: Callable[[], None] = lambda: None,
               clock: Callable[[], float] = time.perf_counter, max_runs: int = 1 << 20) -> tuple[int, float]:
    """Run `fn` in ever larger rounds, synchronised around each, until one round lasts at
    least `min_seconds` (or reaches `max_runs` calls); returns (calls, seconds) of that round.

    A fixed count of fast kernels lasts a few milliseconds on a big GPU: launch overhead and
    clocks that have not ramped up would be most of it. The earlier, shorter rounds warm up.
    """
    runs = 1
    while True:
        sync()
        start = clock()
        for _ in range(runs):
            fn()
        sync()
        seconds = clock() - start
        if seconds >= min_seconds or runs >= max_runs:
            return runs, seconds
        # Aim 20 % past the target from this round's rate; at least double (a round of ~0 s).
        guess = math.ceil(runs * 1.2 * min_seconds / seconds) if seconds > 0 else 2 * runs
        runs = min(max(2 * runs, guess), max_runs)


def matmul_peak_flops(device: torch.device, n: int = 8192, min_seconds: float = 0.5) -> float | None:
    """The GPU's attainable dense bf16 rate, FLOP/s, measured on n x n matmuls repeated for at
    least `min_seconds`; None off CUDA (a CPU has no comparable peak worth quoting)."""
    import torch

    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    out = torch.empty_like(a)
    for _ in range(3):  # clocks up, cuBLAS picks its kernel
        torch.mm(a, b, out=out)
    product = partial(torch.mm, a, b, out=out)
    runs, seconds = repeat_for(product, min_seconds, sync=lambda: synchronize(device))
    del a, b, out, product
    torch.cuda.empty_cache()
    return 2 * n**3 * runs / seconds


# --- float32 precision ----------------------------------------------------------------------

TF32_ENV = ("NVIDIA_TF32_OVERRIDE", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")
"""Read once, when cuBLAS (or torch's context) loads: nothing a running process sets undoes them."""


def _fp32_knobs() -> dict[str, Any]:
    """The backends with a per-backend float32 precision (torch >= 2.9), by name; {} before."""
    import torch

    b = torch.backends
    knobs = {"cuda.matmul": b.cuda.matmul, "cudnn.conv": b.cudnn.conv, "mkldnn.matmul": b.mkldnn.matmul}
    return {name: obj for name, obj in knobs.items() if _readable(obj)}


def _readable(obj: Any) -> bool:
    try:
        obj.fp32_precision
    except (AttributeError, RuntimeError):
        return False
    return True


def float32_precision() -> dict[str, Any]:
    """How float32 matmuls and convolutions run now ("ieee": full precision; "tf32", "bf16":
    reduced; "none": the backend's default), and the environment overrides set."""
    import torch

    knobs = _fp32_knobs()
    if knobs:
        state: dict[str, Any] = {name: obj.fp32_precision for name, obj in knobs.items()}
    else:  # older torch: the legacy flags
        b = torch.backends
        state = {"cuda.matmul": "tf32" if b.cuda.matmul.allow_tf32 else "ieee",
                 "cudnn.conv": "tf32" if b.cudnn.allow_tf32 else "ieee"}
    state["env"] = {name: os.environ[name] for name in TF32_ENV if name in os.environ}
    return state


def tf32_env_override() -> str | None:
    """NAME=VALUE of an environment variable that can make cuBLAS use TF32 whatever torch is
    told; None when there is none. NVIDIA_TF32_OVERRIDE=0 only ever disables TF32: harmless."""
    if os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "") not in ("", "0"):
        return f"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE={os.environ['TORCH_ALLOW_TF32_CUBLAS_OVERRIDE']}"
    if os.environ.get("NVIDIA_TF32_OVERRIDE", "") not in ("", "0"):
        return f"NVIDIA_TF32_OVERRIDE={os.environ['NVIDIA_TF32_OVERRIDE']}"
    return None


@contextmanager
def full_float32() -> Iterator[dict[str, Any]]:
    """Float32 matmuls and convolutions at full IEEE precision inside the block (no TF32 or
    bf16 shortcuts, whatever the process set before), restored after. Yields the report:
    the precision used, the settings before, and an environment override torch cannot undo."""
    import torch

    before = float32_precision()
    knobs = _fp32_knobs()
    b = torch.backends
    if knobs:  # torch >= 2.9: only the per-backend API (mixing it with the legacy flags raises)
        saved: list[Any] = [obj.fp32_precision for obj in knobs.values()]
        for obj in knobs.values():
            obj.fp32_precision = "ieee"
    else:
        saved = [torch.get_float32_matmul_precision(), b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32]
        torch.set_float32_matmul_precision("highest")
        b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = False
    try:
        yield {"float32": "ieee", "before": before, "env_override": tf32_env_override()}
    finally:
        if knobs:
            for obj, value in zip(knobs.values(), saved):
                obj.fp32_precision = value
        else:
            torch.set_float32_matmul_precision(saved[0])
            b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = saved[1], saved[2]


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
