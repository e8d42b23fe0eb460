"""The work of `dlcr export`: a re-id model as an ONNX graph, checked against torch.

The graph (`images` -> `features`, a dynamic batch axis):

- image model, by default: normalised images, float32 batch x 3 x H x W, to the test-time
  feature of `dlcr evaluate`: embedding(image) + embedding(its mirror image), L2-normalised
  (`reid.model.extract_features` with flip; metadata `mirror_sum_and_l2: true`). `raw`: the
  bare embedding of the image (BatchNorm neck output; `mirror_sum_and_l2: false`).
- video model: clips, float32 batch x T x 3 x H x W (T: the run's test clip length), to the
  raw clip feature (`mirror_sum_and_l2: false`): CAL's test averages a tracklet's clip
  features, then L2-normalises, which is the caller's part.

Inputs are prepared as dlcr's test transforms do (`reid.transforms.TestTransform`,
`reid.video.clip_test_transform`): RGB, values in 0..1, resized to H x W (antialiased;
bilinear for images, bicubic clamped to 0..1 for video frames), then (x - mean) / std per
channel with ImageNet's mean and std. The metadata (`metadata_props`) says so, with the opset,
the input size, the backbone and dlcr's version.

`half`: the weights and the computation in float16, the input and the output float32 (cast
inside the graph), the mirror sum and normalisation in float32. For CUDA deployment.

The check: an onnxruntime session on random normal inputs (seeded; normalised images are
roughly that) at batch sizes 1 and 3, against `reid.model.extract_features` in float32 torch
(the fp32 features are the reference for `half` too); the largest absolute difference over
all outputs must stay within the bound (1e-4, `half` 1e-2; for raw features times the
largest absolute reference value when that exceeds 1). The session runs on onnxruntime's CPU
provider, or its CUDA provider (onnxruntime-gpu) when the device is CUDA. The CPU provider
casts to float32 around the float16 nodes it has no float16 kernel for, so a CPU check of a
`half` graph covers the float16 weights but not all of the float16 arithmetic of a GPU.
The file is written next to its target and renamed into place only when the check passes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlcr_cli.errors import EXIT_DATAERR, DlcrError, Unavailable, UsageError

EXTRA = "pip install 'dlcr[export]'"
DEFAULT_OPSET = 20
MIN_OPSET = 18
"""The torch.export-based exporter writes opset 18 and later (older ones would go through
onnx's version converter)."""
BOUND = 1e-4
HALF_BOUND = 1e-2
CHECK_BATCHES = (1, 3)
TRACE_BATCH = 2
"""Traced at 2: an example batch of 1 would be specialised into the graph."""
INPUT, OUTPUT = "images", "features"


class ExportError(DlcrError):
    """A model that cannot be exported, or whose ONNX graph fails the check (exit 65)."""

    exit_code = EXIT_DATAERR


class CheckFailed(ExportError):
    pass


@dataclass
class Exported:
    path: Path
    named: str
    """Which model of the run, in words."""
    head: str
    opset: int
    input_shape: list[Any]
    output_shape: list[Any]
    precision: str
    mirror_sum_and_l2: bool
    provider: str
    max_abs_diff: float
    bound: float
    metadata: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"onnx": str(self.path), "model": self.named, "head": self.head, "opset": self.opset,
                "input": {"name": INPUT, "shape": self.input_shape}, "output": {"name": OUTPUT,
                "shape": self.output_shape}, "precision": self.precision,
                "mirror_sum_and_l2": self.mirror_sum_and_l2, "check": {"provider": self.provider,
                "batches": list(CHECK_BATCHES), "max_abs_diff": self.max_abs_diff, "bound": self.bound}}


def require_extra() -> tuple[Any, Any]:
    """onnx and onnxruntime (and onnxscript, which torch's exporter needs), or Unavailable
    naming the extra."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter imports it)
    except ImportError as err:
        name = getattr(err, "name", None) or "onnx"
        raise Unavailable(f"ONNX export needs onnx, onnxscript and onnxruntime ({name} is not installed): "
                          f"{EXTRA}") from None
    return onnx, onnxruntime


def _wrapper(model: Any, mirror_l2: bool, half: bool) -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Embedding(nn.Module):
        """normalised images -> features (see the module doc)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.to(torch.float16) if half else images
            features = self.model(x).float()
            if mirror_l2:
                features = features + self.model(x.flip(-1)).float()
                features = F.normalize(features, dim=1)
            return features

    return Embedding().eval()


def metadata(*, backbone: str, head: str, source: str, epoch: Any, opset: int, size: tuple[int, int],
             clip_length: int | None, dim: int, mirror_l2: bool, half: bool) -> dict[str, str]:
    """The graph's metadata_props: what it expects and returns."""
    from dlcr_cli import __version__
    from dlcr_cli.reid.transforms import IMAGENET_MEAN, IMAGENET_STD

    h, w = size
    video = head == "video"
    resize = "bicubic, antialiased, clamped to 0..1" if video else "bilinear, antialiased"
    frames = f"batch x {clip_length} x 3 x {h} x {w}" if video else f"batch x 3 x {h} x {w}"
    props = {
        "dlcr_version": __version__, "backbone": backbone, "head": head, "source": source,
        "opset": str(opset), "input_size": f"{h}x{w}",
        "input": f"{INPUT}: float32 {frames}" + (f" (clips of {clip_length} frames)" if video else ""),
        "normalization": (f"RGB, values in 0..1, resized to {h}x{w} (height x width; {resize}), then "
                          f"(x - mean) / std per channel, mean {','.join(map(str, IMAGENET_MEAN))}, "
                          f"std {','.join(map(str, IMAGENET_STD))} (ImageNet), as dlcr's test transform"),
        "mirror_sum_and_l2": "true" if mirror_l2 else "false",
        "output": f"{OUTPUT}: float32 batch x {dim}, " + (
            "embedding(image) + embedding(mirror image), L2-normalised: compare by cosine (dot product)"
            if mirror_l2 else "the raw clip feature: average a tracklet's clips, then L2-normalise"
            if video else "the raw embedding of the image: add the mirror image's, then L2-normalise, as dlcr does"),
        "precision": "fp16 weights and compute, float32 input and output" if half else "fp32",
    }
    if video:
        props["clip_length"] = str(clip_length)
    if epoch is not None:
        props["epoch"] = str(epoch)
    return props


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's warnings (deprecations, torchvision ops it skips) and prints kept off
    the terminal and stdout (which `--json` owns)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _max_opset() -> int:
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:  # a private module: torch 2.13 has it
        return 23
    return int(ONNX_MAX_OPSET)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def export_onnx(checkpoint: Path, out: Path, *, epoch: str = "best", image_size: tuple[int, int] | None = None,
                opset: int = DEFAULT_OPSET, half: bool = False, raw: bool = False, bound: float | None = None,
                device: Any = "cpu", revision: str | None = None) -> Exported:
    """Export the model of `checkpoint` (a run folder's best/ or last epoch, as `dlcr
    evaluate` picks it) to `out`, check it, and say how it went (see the module doc)."""
    from dlcr_cli.console import log
    from dlcr_cli.reid.evaluate import run_model

    folder, config, named = run_model(Path(checkpoint), epoch, revision=revision)
    onnx, ort = require_extra()
    import torch

    from dlcr_cli.reid.features import DEFAULT_IMAGE_SIZE
    from dlcr_cli.reid.model import load_checkpoint

    top = _max_opset()
    if not MIN_OPSET <= opset <= top:
        raise UsageError(f"--opset: {MIN_OPSET} to {top} with this torch; got {opset}")
    if bound is not None and not bound >= 0:
        raise UsageError(f"--check-bound must be 0 or more; got {bound}")
    log.info("export: %s", named)
    model = load_checkpoint(folder, "cpu")
    head = model.spec.get("head", "image")
    video = head == "video"
    if video and raw:
        log.info("export: a video model's graph gives the raw clip feature anyway (--raw changes nothing)")
    mirror_l2 = not (raw or video)
    height, width = image_size or config.get("image_size") or DEFAULT_IMAGE_SIZE
    size = (int(height), int(width))
    clip_length = int((config.get("clip") or (8, 4))[0]) if video else None
    frame = (clip_length, 3, *size) if video else (3, *size)
    bound = (HALF_BOUND if half else BOUND) if bound is None else bound

    import copy

    exported = copy.deepcopy(model).half() if half else model
    wrapper = _wrapper(exported, mirror_l2, half)
    example = torch.randn(TRACE_BATCH, *frame, generator=torch.Generator().manual_seed(0))
    props = metadata(backbone=str(model.spec.get("backbone")), head=head, source=str(folder),
                     epoch=config.get("epoch"), opset=opset, size=size, clip_length=clip_length, dim=model.dim,
                     mirror_l2=mirror_l2, half=half)
    log.info("export: tracing %s (%s, opset %d, input batch x %s)", head, "fp16" if half else "fp32", opset,
             " x ".join(map(str, frame)))
    try:
        with _quiet():
            program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=[INPUT],
                                        output_names=[OUTPUT], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                        opset_version=opset, verbose=False, optimize=True)
    except DlcrError:
        raise
    except Exception as err:  # torch.export and the translation raise many kinds
        raise ExportError(f"cannot export {folder} ({model.spec.get('backbone')}) to ONNX: {_first_line(err)}") from err
    program.model.metadata_props.update(props)

    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with _quiet():
                program.save(tmp, external_data=False)
        except OSError as err:
            raise UsageError(f"--onnx {out}: cannot write it ({err.strerror or _first_line(err)})") from err
        provider, diff, scale = _check(onnx, ort, tmp, model, frame, mirror_l2, device)
        limit = bound * scale
        shown = f"largest absolute difference {diff:.3g} (bound {limit:.3g}" + (
            f" = {bound:g} x the largest feature value {scale:.3g})" if scale > 1 else ")")
        if not (diff <= limit):  # NaN fails too
            raise CheckFailed(f"{out}: onnxruntime ({provider}) and torch differ beyond the bound: {shown}; "
                              f"not written")
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    log.info("export: onnxruntime (%s) against torch at batch sizes %s: %s", provider,
             " and ".join(map(str, CHECK_BATCHES)), shown)
    log.info("export: %s: %s -> %s", out, props["input"], props["output"])
    return Exported(out, named, head, opset, ["batch", *frame], ["batch", model.dim],
                    "fp16" if half else "fp32", mirror_l2, provider, diff, limit, props)


def _check(onnx: Any, ort: Any, path: Path, model: Any, frame: tuple[int, ...], mirror_l2: bool,
           device: Any) -> tuple[str, float, float]:
    """The provider, the largest absolute difference between onnxruntime's outputs and
    torch's float32 features at each of CHECK_BATCHES, and the scale of the bound."""
    import numpy as np
    import torch

    from dlcr_cli.reid.model import extract_features

    try:
        onnx.checker.check_model(str(path))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        wanted = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            wanted.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(str(path), options, providers=wanted)
    except Exception as err:  # onnx.checker's ValidationError, onnxruntime's Fail / InvalidGraph ...
        raise CheckFailed(f"the exported graph does not load in onnxruntime: {_first_line(err)}") from err
    provider = session.get_providers()[0]
    generator = torch.Generator().manual_seed(1)
    diff, scale = 0.0, 1.0
    for batch in CHECK_BATCHES:
        x = torch.randn(batch, *frame, generator=generator)
        want = extract_features(model, [x], flip=mirror_l2, normalize=mirror_l2).numpy()
        try:
            (got,) = session.run([OUTPUT], {INPUT: x.numpy()})
        except Exception as err:
            raise CheckFailed(f"onnxruntime cannot run the exported graph at batch {batch}: {_first_line(err)}") from err
        if got.shape != want.shape:
            raise CheckFailed(f"the exported graph gives {tuple(got.shape)} at batch {batch}, torch {tuple(want.shape)}")
        scale = max(scale, float(np.abs(want).max()))
        if not np.isfinite(got).all():
            return provider, float("nan"), 1.0  # fails any bound
        diff = max(diff, float(np.abs(got.astype(np.float64) - want).max()))
    return provider, diff, scale if not mirror_l2 else 1.0
