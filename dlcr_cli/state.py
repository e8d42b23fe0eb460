"""Training states without pickle: modules and optimizers in one safetensors file, with the
rest (epoch, schedule, the optimizers' settings, the caller's own fields) as JSON in its
metadata. One file replaced atomically: a run killed while saving resumes from the previous
state, never from half of each. What `dlcr train` and `dlcr discriminator` resume from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

KEY = "training"
"""The one metadata key (safetensors writes several in a per-process random order)."""


def write_state(path: Path, objects: dict[str, nn.Module | torch.optim.Optimizer], meta: dict[str, Any]) -> None:
    """Every tensor of `objects` (modules' state dicts, optimizers' per-parameter state) and
    `meta` plus the optimizers' settings as JSON, atomically to `path`."""
    from dlcr_cli.reid.model import write_safetensors

    tensors: dict[str, torch.Tensor] = {}
    meta = {**meta, "optimizers": {}}
    for name, obj in objects.items():
        state = obj.state_dict()
        if isinstance(obj, torch.optim.Optimizer):
            meta["optimizers"][name] = {"param_groups": state["param_groups"],
                                        "state": {str(i): sorted(v) for i, v in state["state"].items()}}
            for i, values in state["state"].items():
                tensors.update({f"{name}/{i}/{key}": torch.as_tensor(value) for key, value in values.items()})
        else:
            tensors.update({f"{name}/{key}": value for key, value in state.items()})
    write_safetensors(path, tensors, metadata={KEY: json.dumps(meta)})


def read_state(path: Path, tensors: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(the JSON part, the tensors unless `tensors` is false) of a state file. Raises
    FileNotFoundError, or ValueError for a file that is not a readable state."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[KEY])
        return meta, load_file(path, device="cpu") if tensors else {}
    except FileNotFoundError:
        raise
    except (SafetensorError, KeyError, ValueError, OSError) as err:
        raise ValueError(str(err) or type(err).__name__) from None


def restore_state(objects: dict[str, nn.Module | torch.optim.Optimizer], meta: dict[str, Any],
                  tensors: dict[str, torch.Tensor]) -> None:
    """Load what `write_state` saved into `objects` (the same names)."""
    for name, obj in objects.items():
        if isinstance(obj, torch.optim.Optimizer):
            saved = meta["optimizers"][name]
            state = {int(i): {key: tensors[f"{name}/{i}/{key}"] for key in keys} for i, keys in saved["state"].items()}
            obj.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        else:
            prefix = f"{name}/"
            obj.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
