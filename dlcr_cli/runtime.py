"""Devices and dtypes: settings strings -> torch objects, with a clear error when absent."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from dlcr_cli.console import log
from dlcr_cli.errors import Unavailable, UsageError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
R = TypeVar("R")


def resolve_device(name: str) -> "torch.device":
    """auto: CUDA if present, else Apple MPS, else CPU. An absent device is exit 69. Under a
    launcher (accelerate launch, torchrun), `auto` and `cuda` mean this process's own GPU:
    LOCAL_RANK modulo the GPUs it sees (a scheduler that gives each task its own
    CUDA_VISIBLE_DEVICES shows it one GPU, cuda:0, whatever its local rank)."""
    import torch

    from dlcr_cli.distributed import current_shard

    shard = current_shard()
    if shard.active and name in ("auto", "cuda") and torch.cuda.is_available():
        name = f"cuda:{shard.local_rank % torch.cuda.device_count()}"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        # a name torch does not know is a usage error (2); a known device this machine lacks is 69
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps (--device, DLCR_DEVICE)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (device.index or 0) >= count:
            raise Unavailable(f"device {name} is not available here ({count} CUDA devices); set --device or DLCR_DEVICE")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise Unavailable("device mps is not available here; set --device or DLCR_DEVICE")
    return device


def resolve_dtype(name: str, device: "torch.device", *, language_model: bool = False) -> "torch.dtype":
    """auto: float32 off CUDA. On CUDA, float16 for the image models (SegFormer, SD-1.5: the
    reference runs them in fp16); for language models (describe's VLM, summarize's LLM)
    bfloat16 where the GPU has it natively (Ampere and newer), else float16: Qwen2-family
    models overflow in float16 ("probability tensor contains inf/nan")."""
    import torch

    if name != "auto":
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
    if device.type != "cuda":
        return torch.float32
    if language_model and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float16


PRECISIONS = ("fp32", "fp16", "bf16")
"""Arithmetic of re-id training and feature extraction: float32, or autocast to float16 /
bfloat16 (the weights stay float32)."""


def autocast(device: "torch.device", precision: str) -> Any:
    """The autocast context of `precision` on `device` (fp32: none)."""
    from contextlib import nullcontext

    import torch

    if precision == "fp32":
        return nullcontext()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError)


class OomSplitter:
    """Runs a batch function, splitting the batch on CUDA out-of-memory, and remembers the
    largest size that fit: later batches go in pieces of that size from the start (a
    diffusion batch can run out of memory only at the VAE decode, after all its steps).

    One per model user (a painter, a describer...): what fits depends on the model and its
    settings.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.failed: int | None = None
        """The smallest size that ran out of memory."""
        self.fit: int | None = None
        """The largest size that ran through, below `failed`."""

    @property
    def limit(self) -> int | None:
        """The size batches are cut to (None: no out-of-memory yet, whole batches)."""
        if self.failed is None:
            return None
        return self.fit or max(1, (self.failed + 1) // 2)

    def run(self, fn: Callable[[list[T]], list[R]], items: list[T]) -> list[R]:
        limit = self.limit
        if limit is not None and len(items) > limit:
            return [r for start in range(0, len(items), limit) for r in self.run(fn, items[start:start + limit])]
        try:
            out = fn(items)
        except Exception as err:
            if not is_out_of_memory(err) or len(items) == 1:
                raise
        else:
            if self.failed is not None:
                self.fit = max(self.fit or 0, len(items))
            return out
        # Outside the `except` block: the failed call's tensors are freed before the retry.
        self._ran_out(len(items))
        return self.run(fn, items)

    def _ran_out(self, size: int) -> None:
        import torch

        torch.cuda.empty_cache()
        self.failed = min(self.failed or size, size)
        if self.fit is not None and self.fit >= self.failed:
            self.fit = None  # memory got tighter than when it fit
        log.warning("%s: out of GPU memory with %d at once; from now on at most %d at once",
                    self.what, size, self.limit)
