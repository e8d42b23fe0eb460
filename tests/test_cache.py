"""The model cache: one load per (model, dtype, device) per process, offload under pressure."""

from __future__ import annotations

import json

import pytest
import torch

from dlcr_cli import cache as cache_module
from dlcr_cli.cache import ModelCache, weights_bytes
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


class Fake:
    """A model that records its moves."""

    def __init__(self, name, moves):
        self.name, self.moves = name, moves

    def to(self, device):
        self.moves.append((self.name, str(device)))
        return self


GB = 2**30


@pytest.fixture
def gpu(monkeypatch):
    """A pretend 24 GB CUDA device: set gpu["free"]; gpu["emptied"] counts empty_cache calls."""
    state = {"free": 20 * GB, "emptied": 0}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (state["free"], 24 * GB))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: state.__setitem__("emptied", state["emptied"] + 1))
    return state


def test_idle_models_are_offloaded_under_pressure_and_come_back(gpu):
    """On a GPU with little free memory, loading a model first moves idle ones to the CPU."""
    moves = []
    gpu["free"] = 2 * GB
    cache = ModelCache()
    first = cache.get("m", "a", dtype="fp16", device="cuda:0", load=lambda: Fake("a", moves), setting="mask.model")
    cache.get("m", "b", dtype="fp16", device="cuda:0", load=lambda: Fake("b", moves), setting="mask.model")
    assert moves == [("a", "cpu")]
    again = cache.get("m", "a", dtype="fp16", device="cuda:0", load=lambda: Fake("new", moves), setting="mask.model")
    assert again is first and moves == [("a", "cpu"), ("b", "cpu"), ("a", "cuda:0")]
    assert cache.loads == 2


def test_no_offload_without_pressure_or_on_cpu(gpu):
    cache = ModelCache()
    for name in "ab":
        cache.get("m", name, dtype="fp16", device="cuda:0", load=lambda: torch.nn.Linear(1, 1), setting="s")
    assert cache.offload_idle("cpu") == 0
    assert all(not entry.offloaded for entry in cache._entries.values())


def fake_checkpoint(folder, tensors: dict[str, list[int]], name="model.safetensors"):
    """A safetensors file with only its header: its size is read from there, nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    header = json.dumps({k: {"dtype": "F32", "shape": v, "data_offsets": [0, 0]} for k, v in tensors.items()}).encode()
    (folder / name).write_bytes(len(header).to_bytes(8, "little") + header)
    return folder


def test_the_incoming_models_size_counts_before_a_load(gpu, tmp_path):
    """10 of 24 GB free is plenty by fraction, but not for a 8 GB model: idle ones move first."""
    moves = []
    gpu["free"] = 10 * GB
    big = fake_checkpoint(tmp_path / "big", {"w": [4 * GB]})  # 4 G elements: 8 GB in float16
    small = fake_checkpoint(tmp_path / "small", {"w": [GB // 4]})
    cache = ModelCache()
    cache.get("m", "idle", dtype=torch.float16, device="cuda:0", load=lambda: Fake("idle", moves), setting="s")
    cache.get("m", str(small), dtype=torch.float16, device="cuda:0", load=lambda: Fake("small", moves), setting="s")
    assert moves == []
    cache.get("m", str(big), dtype=torch.float16, device="cuda:0", load=lambda: Fake("big", moves), setting="s")
    assert moves == [("idle", "cpu"), ("small", "cpu")]


def test_weight_sizes_come_from_safetensors_headers(tmp_path):
    model = fake_checkpoint(tmp_path / "llm", {"a": [10, 20], "b": [5]}, "model-00001-of-00002.safetensors")
    fake_checkpoint(model, {"c": [100]}, "model-00002-of-00002.safetensors")
    assert weights_bytes(str(model), torch.bfloat16) == 2 * 305
    assert weights_bytes(str(model), torch.float32) == 4 * 305
    pipe = tmp_path / "pipe"
    fake_checkpoint(pipe / "unet", {"w": [1000]}, "diffusion_pytorch_model.safetensors")
    fake_checkpoint(pipe / "unet", {"w": [1000]}, "diffusion_pytorch_model.fp16.safetensors")  # the same weights
    fake_checkpoint(pipe / "vae", {"w": [30]}, "diffusion_pytorch_model.fp16.safetensors")
    (pipe / "scheduler").mkdir()
    fake_checkpoint(pipe, {"w": [10**9]}, "sd-v1-5-inpainting.safetensors")  # a single-file copy, not loaded
    (pipe / "model_index.json").write_text("{}")
    assert weights_bytes(str(pipe), torch.float16) == 2 * 1030
    assert weights_bytes("nobody/none", torch.float16) is None  # not in the hub cache: the fraction test
    assert weights_bytes(str(pipe / "scheduler"), torch.float16) is None  # no weights in it
    assert weights_bytes(str(model), "fp16") is None


def test_a_load_out_of_gpu_memory_moves_idle_models_and_tries_once_more(gpu):
    moves, tries = [], []

    def load():
        tries.append(1)
        if len(tries) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return Fake("new", moves)

    cache = ModelCache()
    for name, device in (("a", "cuda:0"), ("b", "cuda:1"), ("c", "cuda:0")):
        cache.get("m", name, dtype="fp16", device=device, load=lambda n=name: Fake(n, moves), setting="s")
    emptied = gpu["emptied"]
    model = cache.get("m", "new", dtype="fp16", device="cuda:0", load=load, setting="s")
    assert model.name == "new" and len(tries) == 2 and cache.loads == 4
    assert sorted(moves) == [("a", "cpu"), ("c", "cpu")]  # the other GPU's model stays
    assert gpu["emptied"] > emptied


def test_a_load_that_never_fits_is_one_line(gpu):
    def load():
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(Unavailable, match=r"not enough GPU memory on cuda:0 to load model 'big/llm' in float16 "
                                          r"\(even with the idle models on the CPU\).*summarize.model"):
        ModelCache().get("m", "big/llm", dtype=torch.float16, device="cuda:0", load=load, setting="summarize.model")
    with pytest.raises(Unavailable, match="offload_idle is off"):
        ModelCache().get("m", "big/llm", dtype=torch.float16, device="cuda:0", load=load, setting="s",
                         offload_idle=False)


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
