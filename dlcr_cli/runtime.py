"""Devices and dtypes: settings strings -> torch objects, with a clear error when absent."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from dlcr_cli.errors import Unavailable

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
R = TypeVar("R")


def resolve_device(name: str) -> "torch.device":
    """auto: CUDA if present, else Apple MPS, else CPU. An absent device is exit 69. Under a
    launcher (accelerate launch, torchrun), `auto` and `cuda` mean this process's own GPU."""
    import torch

    from dlcr_cli.distributed import current_shard

    shard = current_shard()
    if shard.active and name in ("auto", "cuda") and torch.cuda.is_available():
        name = f"cuda:{shard.local_rank}"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise Unavailable(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps (--device, DLCR_DEVICE)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (device.index or 0) >= count:
            raise Unavailable(f"device {name} is not available here ({count} CUDA devices); set --device or DLCR_DEVICE")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise Unavailable("device mps is not available here; set --device or DLCR_DEVICE")
    return device


def resolve_dtype(name: str, device: "torch.device") -> "torch.dtype":
    """auto: float16 on CUDA (the reference runs its models in fp16), float32 elsewhere."""
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError)


def halving_on_oom(fn: Callable[[list[T]], list[R]], items: list[T]) -> list[R]:
    """fn(items); on CUDA out-of-memory, fn over each half instead (recursively).

    The retry happens outside the `except` block so the failed call's tensors are freed first.
    """
    try:
        return fn(items)
    except Exception as err:
        if not is_out_of_memory(err) or len(items) == 1:
            raise
    import torch

    torch.cuda.empty_cache()
    half = len(items) // 2
    return halving_on_oom(fn, items[:half]) + halving_on_oom(fn, items[half:])
