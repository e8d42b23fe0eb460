"""Devices, dtypes and the out-of-memory retry every model-backed stage uses."""

from __future__ import annotations

import pytest
import torch

from dlcr_cli.errors import Unavailable
from dlcr_cli.runtime import halving_on_oom, resolve_device, resolve_dtype


def test_out_of_memory_halves_the_batch_until_it_fits():
    calls: list[int] = []

    def square(items: list[int]) -> list[int]:
        calls.append(len(items))
        if len(items) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [i * i for i in items]

    assert halving_on_oom(square, list(range(7))) == [i * i for i in range(7)]
    assert calls == [7, 3, 1, 2, 4, 2, 2]


def test_other_errors_and_single_items_are_not_retried():
    def fail(items):
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        halving_on_oom(fail, [1, 2, 3])

    def oom(items):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        halving_on_oom(oom, [1, 2])


def test_devices_and_dtypes():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(Unavailable, match="cuda:7 is not available"):
        resolve_device("cuda:7")
    with pytest.raises(Unavailable, match="unknown device"):
        resolve_device("tpu-ish")
