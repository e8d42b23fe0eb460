"""The process-wide model cache: every stage asks it for models and never loads one itself.

An entry is keyed by (kind, model, dtype, device): a model loaded once serves every later
request in the process (several stages in one run, `refine` generating query variants, the
tests), and the same model in another dtype or on another device is another entry. Under
GPU memory pressure, idle entries move to the CPU before a new model is loaded, and move
back when asked for again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlcr_cli.errors import Unavailable
from dlcr_cli.settings import env_name

Key = tuple[str, str, str, str]

PRESSURE = 0.25
"""Free fraction of GPU memory under which idle models are offloaded before a load."""


@dataclass
class Entry:
    model: Any
    device: str
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
        if entry is None:
            if offload_idle:
                self._make_room(str(device))
            entry = Entry(_load(model, load, setting), str(device))
            self._entries[key] = entry
            self.loads += 1
        elif entry.offloaded:
            if offload_idle:
                self._make_room(entry.device, keep=key)
            entry.model.to(entry.device)
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

    def _make_room(self, device: str, keep: Key | None = None) -> None:
        if device.startswith("cuda") and free_memory_fraction(device) < PRESSURE:
            self.offload_idle(device, keep)


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


def free_memory_fraction(device: str) -> float:
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    return free / total


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
