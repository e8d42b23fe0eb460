"""The model cache: one load per (model, dtype, device) per process, offload under pressure."""

from __future__ import annotations

import pytest
import torch

from dlcr_cli import cache as cache_module
from dlcr_cli.cache import ModelCache
from dlcr_cli.errors import Unavailable


def loader(calls: list, dtype=torch.float32):
    def load():
        calls.append(1)
        return torch.nn.Linear(2, 2).to(dtype)
    return load


def test_a_model_is_loaded_once_per_process():
    cache, calls = ModelCache(), []
    a = cache.get("m", "some/model", dtype=torch.float32, device="cpu", load=loader(calls), setting="mask.model")
    b = cache.get("m", "some/model", dtype=torch.float32, device="cpu", load=loader(calls), setting="mask.model")
    assert a is b and len(calls) == 1 and cache.loads == 1


def test_another_dtype_or_device_is_another_entry():
    cache, calls = ModelCache(), []
    base = dict(load=loader(calls), setting="mask.model")
    a = cache.get("m", "x", dtype=torch.float32, device="cpu", **base)
    b = cache.get("m", "x", dtype=torch.bfloat16, device="cpu", **base)
    c = cache.get("m", "x", dtype=torch.float32, device="meta", **base)
    d = cache.get("other-kind", "x", dtype=torch.float32, device="cpu", **base)
    assert len({id(a), id(b), id(c), id(d)}) == 4 and len(calls) == 4 and len(cache) == 4


def test_idle_models_are_offloaded_under_pressure_and_come_back(monkeypatch):
    """On a GPU with little free memory, loading a model first moves idle ones to the CPU."""
    moves = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def to(self, device):
            moves.append((self.name, str(device)))
            return self

    monkeypatch.setattr(cache_module, "free_memory_fraction", lambda device: 0.1)
    monkeypatch.setattr(cache_module, "_empty_cuda_cache", lambda: None)
    cache = ModelCache()
    first = cache.get("m", "a", dtype="fp16", device="cuda:0", load=lambda: Fake("a"), setting="mask.model")
    cache.get("m", "b", dtype="fp16", device="cuda:0", load=lambda: Fake("b"), setting="mask.model")
    assert moves == [("a", "cpu")]
    again = cache.get("m", "a", dtype="fp16", device="cuda:0", load=lambda: Fake("new"), setting="mask.model")
    assert again is first and moves == [("a", "cpu"), ("b", "cpu"), ("a", "cuda:0")]
    assert cache.loads == 2


def test_no_offload_without_pressure_or_on_cpu(monkeypatch):
    monkeypatch.setattr(cache_module, "free_memory_fraction", lambda device: 0.9)
    cache = ModelCache()
    for name in "ab":
        cache.get("m", name, dtype="fp16", device="cuda:0", load=lambda: torch.nn.Linear(1, 1), setting="s")
    assert cache.offload_idle("cpu") == 0


def test_load_failure_is_unavailable_naming_model_and_setting():
    def fail():
        raise OSError("nobody/none is not a local folder and is not a valid model identifier")

    with pytest.raises(Unavailable) as err:
        ModelCache().get("m", "nobody/none", dtype="fp32", device="cpu", load=fail, setting="mask.model")
    message = str(err.value)
    assert "nobody/none" in message and "mask.model" in message and "DLCR_MASK__MODEL" in message
    assert err.value.exit_code == 69


def test_the_process_cache_serves_repeated_cli_runs(dlcr, tiny_segformer, tmp_path):
    """Two `dlcr mask` calls in one process load the SegFormer once."""
    from conftest import save_rgb

    save_rgb(tmp_path / "imgs" / "a.png")
    before = cache_module.CACHE.loads
    for out in ("o1", "o2"):
        assert dlcr("mask", tmp_path / "imgs", "--model", tiny_segformer, "--out", tmp_path / out).code == 0
    assert cache_module.CACHE.loads - before <= 1
