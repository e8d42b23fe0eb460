"""The process-wide model cache: every stage asks it for models and never loads one itself.

An entry is keyed by (kind, model, dtype, device): a model loaded once serves every later
request in the process (several stages in one run, `refine` generating query variants, the
tests), and the same model in another dtype or on another device is another entry. Under
GPU memory pressure, idle entries move to the CPU before a new model is loaded (counting the
new model's size where its weight files tell it), and move back when asked for again; a
load that runs out of GPU memory all the same moves them and tries once more.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dlcr_cli.console import log
from dlcr_cli.errors import Unavailable
from dlcr_cli.settings import env_name

T = TypeVar("T")

Key = tuple[str, str, str, str]

PRESSURE = 0.25
"""Free fraction of GPU memory (after the incoming model, where its size is known) under
which idle models are offloaded before a load."""


@dataclass
class Entry:
    model: Any
    device: str
    size: int | None = None
    """Bytes of its weights, as estimated before loading (None: unknown)."""
    last_used: float = field(default_factory=time.monotonic)
    offloaded: bool = False


class ModelCache:
    def __init__(self) -> None:
        self._entries: dict[Key, Entry] = {}
        self.loads = 0
        """How many models this cache has loaded (the tests read it)."""

    def get(self, kind: str, model: str, *, dtype: Any, device: Any, load: Callable[[], Any],
            setting: str, offload_idle: bool = True) -> Any:
        """The cached model, or `load()` (which puts it on `device` in `dtype`) run once.

        A model that cannot be loaded ends the command with one line naming it and the
        `setting` that changes it (exit 69).
        """
        key: Key = (kind, model, str(dtype), str(device))
        entry = self._entries.get(key)
        offload = offload_idle and str(device).startswith("cuda")
        if entry is None:
            size = weights_bytes(model, dtype) if offload else None
            if offload:
                self._make_room(str(device), size)
            loaded = self._fitting(key, str(device), lambda: _load(model, load, setting), offload, setting)
            entry = self._entries[key] = Entry(loaded, str(device), size)
            self.loads += 1
        elif entry.offloaded:
            if offload:
                self._make_room(entry.device, entry.size, keep=key)
            self._fitting(key, entry.device, lambda: entry.model.to(entry.device), offload, setting)
            entry.offloaded = False
        entry.last_used = time.monotonic()
        return entry.model

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Key]:
        return list(self._entries)

    def clear(self) -> None:
        """Forget every entry and restart the load count."""
        self._entries.clear()
        self.loads = 0

    def offload_idle(self, device: str, keep: Key | None = None) -> int:
        """Move every entry on `device` but `keep` to the CPU; returns how many moved."""
        moved = 0
        for key, entry in sorted(self._entries.items(), key=lambda kv: kv[1].last_used):
            if key != keep and entry.device == device and not entry.offloaded and hasattr(entry.model, "to"):
                entry.model.to("cpu")
                entry.offloaded = True
                moved += 1
        if moved:
            _empty_cuda_cache()
        return moved

    def _make_room(self, device: str, incoming: int | None, keep: Key | None = None) -> None:
        """Offload idle models if loading `incoming` bytes would leave under PRESSURE free."""
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
        if (free - (incoming or 0)) / total < PRESSURE:
            self.offload_idle(device, keep)

    def _fitting(self, key: Key, device: str, load: Callable[[], T], offload: bool, setting: str) -> T:
        """load(); if the GPU runs out of memory, once more with the idle models on the CPU
        (`offload`: on CUDA with models.offload_idle on)."""
        from dlcr_cli.runtime import is_out_of_memory

        try:
            return load()
        except Exception as err:
            if not is_out_of_memory(err) or not device.startswith("cuda"):
                raise
            if not offload:
                raise _no_room(key, device, setting, "models.offload_idle is off: idle models stay") from None
        # Outside the `except` block: the traceback no longer holds the failed load's tensors.
        log.info("out of GPU memory loading %s: moving idle models to the CPU and trying again", key[1])
        self.offload_idle(device, keep=key)
        _empty_cuda_cache()
        try:
            return load()
        except Exception as err:
            if is_out_of_memory(err):
                raise _no_room(key, device, setting, "even with the idle models on the CPU") from None
            raise


def _no_room(key: Key, device: str, setting: str, why: str) -> Unavailable:
    return Unavailable(f"not enough GPU memory on {device} to load model {key[1]!r} in {key[2].removeprefix('torch.')} "
                       f"({why}); choose a smaller model ({setting}), a smaller dtype or another device (--device)")


def _load(model: str, load: Callable[[], Any], setting: str) -> Any:
    hint = f"(change it with the {setting} setting, e.g. {env_name(setting)}=...)"
    if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().is_dir():
        raise Unavailable(f"model folder not found: {model} {hint}")
    _quiet_libraries()
    try:
        return load()
    except (OSError, ValueError, KeyError, ImportError) as err:
        # transformers/diffusers/huggingface_hub raise OSError subclasses (not found, gated,
        # offline) and ValueError (no safetensors, unknown architecture).
        reason = _first_sentence(" ".join(str(err).split())) or type(err).__name__
        raise Unavailable(f"cannot load model {model!r}: {reason} {hint}") from err


def _first_sentence(text: str, limit: int = 200) -> str:
    end = text.find(". ", 20)
    text = text[: end + 1] if end > 0 else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quiet_libraries() -> None:
    """Their own progress bars and info logs would interleave with ours on stderr."""
    import logging

    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hub_logging

    disable_progress_bars()
    hub_logging.set_verbosity_error()
    for name in ("transformers", "diffusers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _empty_cuda_cache() -> None:
    """Hand what the allocator caches back (collected first: a failed load leaves cycles that
    hold tensors)."""
    import gc

    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


# --- what a model will take, before it is loaded -------------------------------------------


def weights_bytes(model: str, dtype: Any) -> int | None:
    """The bytes of `model`'s weights in `dtype`: the element counts in the safetensors
    headers of its folder (a local one, or its snapshot in the hub cache; a diffusers pipeline:
    its components' folders). None when that is not knowable before loading."""
    itemsize = getattr(dtype, "itemsize", None)
    folder = _model_folder(model)
    if folder is None or not itemsize:
        return None
    parts = sorted(p for p in folder.iterdir() if p.is_dir()) if (folder / "model_index.json").is_file() else [folder]
    count = sum(_parameter_count(part) for part in parts)
    return count * itemsize if count else None


def _model_folder(model: str) -> Path | None:
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import try_to_load_from_cache

    for name in ("model_index.json", "config.json"):
        try:
            found = try_to_load_from_cache(model, name)
        except ValueError:  # not a hub id either
            return None
        if isinstance(found, str):
            return Path(found).parent
    return None


_SHARD = re.compile(r"-\d+-of-\d+$")


def _parameter_count(folder: Path) -> int:
    """Elements in one model folder's safetensors files. Variants (model.safetensors and
    model.fp16.safetensors) hold the same weights: one set is counted, the largest."""
    sets: dict[str, int] = {}
    for path in folder.glob("*.safetensors"):
        parts = path.name.split(".")
        variant = _SHARD.sub("", parts[1]) if len(parts) > 2 else ""
        sets[variant] = sets.get(variant, 0) + _elements(path)
    return max(sets.values(), default=0)


def _elements(path: Path) -> int:
    """Elements of the tensors a safetensors file holds, from its header alone."""
    import math

    try:
        with path.open("rb") as file:
            header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
        return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0


@dataclass
class WithProcessor:
    """A model and its processor or tokenizer, cached as one entry that moves as the model does."""

    model: Any
    processor: Any

    def to(self, device: Any) -> WithProcessor:
        self.model.to(device)
        return self


CACHE = ModelCache()
"""The one cache of the process."""
