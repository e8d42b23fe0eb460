"""Devices, dtypes and the out-of-memory retry every model-backed stage uses."""

from __future__ import annotations


import pytest
import torch

from dlcr_cli.errors import Unavailable, UsageError
from dlcr_cli.runtime import OomSplitter, resolve_device, resolve_dtype


def fits_at_most(limit: int, calls: list[int]):
    def square(items: list[int]) -> list[int]:
        calls.append(len(items))
        if len(items) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [i * i for i in items]
    return square


def test_out_of_memory_splits_the_batch_until_it_fits():
    calls: list[int] = []
    assert OomSplitter("test").run(fits_at_most(2, calls), list(range(7))) == [i * i for i in range(7)]
    assert calls == [7, 4, 2, 2, 2, 1]  # once 2 fit and 4 did not, the last 3 go as 2 + 1 at once


def test_the_size_that_fit_is_kept_for_later_batches(dlcr_log):
    """An out-of-memory is paid once: later full batches go in pieces that fit, up front."""
    calls: list[int] = []
    splitter = OomSplitter("inpaint")
    square = fits_at_most(3, calls)
    splitter.run(square, list(range(8)))
    assert calls == [8, 4, 2, 2, 2, 2]
    calls.clear()
    for _ in range(3):
        assert splitter.run(square, list(range(8))) == [i * i for i in range(8)]
    assert calls == [2] * 12  # never 8 or 4 again
    assert splitter.limit == 2
    warnings = [m for m in dlcr_log if "out of GPU memory" in m]
    assert warnings == ["inpaint: out of GPU memory with 8 at once; from now on at most 4 at once",
                        "inpaint: out of GPU memory with 4 at once; from now on at most 2 at once"]


def test_a_size_that_fit_once_is_forgotten_when_it_no_longer_fits():
    calls: list[int] = []
    splitter = OomSplitter("describe")
    splitter.run(fits_at_most(4, calls), list(range(6)))
    assert splitter.limit == 3
    calls.clear()
    assert splitter.run(fits_at_most(2, calls), list(range(6))) == [i * i for i in range(6)]
    assert calls == [3, 2, 1, 2, 1] and splitter.limit == 2


def test_other_errors_and_single_items_are_not_retried():
    def fail(items):
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        OomSplitter("test").run(fail, [1, 2, 3])

    def oom(items):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        OomSplitter("test").run(oom, [1, 2])


def test_devices_and_dtypes():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cpu"), language_model=True) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cuda"), language_model=True) == torch.float16
    with pytest.raises(Unavailable, match="cuda:7 is not available"):
        resolve_device("cuda:7")
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("tpu-ish")


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bfloat16_for_language_models_on_gpus_that_have_it(monkeypatch, native):
    """Qwen2-family LLMs overflow in float16; SegFormer and SD-1.5 stay in the reference's float16."""
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return native or including_emulation  # pre-Ampere GPUs only emulate it, slowly

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    cuda = torch.device("cuda")
    assert resolve_dtype("auto", cuda, language_model=True) == (torch.bfloat16 if native else torch.float16)
    assert resolve_dtype("auto", cuda) == torch.float16
    assert asked == [False]


@pytest.mark.parametrize(("local_rank", "visible", "expected"), [("3", 1, "cuda:0"), ("3", 4, "cuda:3"), ("5", 4, "cuda:1")])
def test_a_launched_process_uses_its_gpu_among_those_it_sees(monkeypatch, local_rank, visible, expected):
    """SLURM/Kubernetes give each task its own CUDA_VISIBLE_DEVICES: LOCAL_RANK 3 sees one GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setenv("RANK", local_rank)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cuda") == torch.device(expected)
    assert resolve_device("cuda:0") == torch.device("cuda:0")  # an explicit index is kept


@pytest.mark.parametrize(("stage", "factory", "model_class", "native", "expected"), [
    # language models can overflow float16 (the default Qwen2.5-7B-Instruct does: "probability
    # tensor contains inf/nan"); the reference's float16 stays for GPUs without bfloat16
    ("describe", "make_describer", "VlmDescriber", True, "bfloat16"),
    ("describe", "make_describer", "VlmDescriber", False, "float16"),
    ("summarize", "make_summarizer", "LlmSummarizer", True, "bfloat16"),
    ("summarize", "make_summarizer", "LlmSummarizer", False, "float16"),
    # the image models run in the reference's float16 whatever the GPU has
    ("mask", "make_parser", "SegformerParser", True, "float16"),
    ("inpaint", "make_painter", "DiffusionPainter", True, "float16"),
])
def test_each_stage_gets_its_auto_dtype_on_cuda(monkeypatch, stage, factory, model_class, native, expected):
    import importlib

    import torch

    from dlcr_cli import runtime
    from dlcr_cli.settings import Settings

    module = importlib.import_module(f"dlcr_cli.stages.{stage}")
    made = {}
    monkeypatch.setattr(runtime, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    monkeypatch.setattr(module, model_class, lambda model, **options: made.update(options))
    getattr(module, factory)(Settings())
    assert made["dtype"] == getattr(torch, expected)
