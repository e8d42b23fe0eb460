"""`dlcr bench embed`: test-time feature extraction of a re-id model, torch next to the ONNX
graph `dlcr export` writes run by onnxruntime, side by side in one run on the same inputs.

The model is ResNet-50's architecture with random weights (what `dlcr train` builds from
microsoft/resnet-50, last stride 1) at 384x192, CAL's test size; `arch small` is
builtin:small, the CPU code path. Both rows compute the same feature: embedding(image) +
embedding(its mirror image), L2-normalised (`reid.model.extract_features` with flip; the
exported graph has the mirror sum and the normalisation inside). Inputs are normalised random
images made before the clock starts: decoding and resizing are not timed, the model is.

Each batch size is timed after one warm-up batch, over `steps` batches; the report gives
images/s per row, the ratio onnxruntime / torch, and the largest absolute difference of their
features (the export check's bound applies). The export itself (tracing, translation, the
check) is timed separately.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlcr_cli.bench import cuda_timer, device_label, peak_memory_gb, reset_peak_memory
from dlcr_cli.console import log, stderr
from dlcr_cli.errors import UsageError

if TYPE_CHECKING:
    import torch


@dataclass
class EmbedBenchSettings:
    arch: str = "resnet50"
    """resnet50: microsoft/resnet-50's architecture; small: builtin:small."""
    size: tuple[int, int] = (384, 192)
    batch_sizes: tuple[int, ...] = (64, 256)
    steps: int = 3
    """Timed batches per batch size (after one warm-up batch)."""
    onnx: bool = True
    """Also the exported graph under onnxruntime (needs dlcr[export])."""
    seed: int = 0

    def check(self) -> None:
        if self.arch not in ("resnet50", "small"):
            raise UsageError(f"arch: resnet50 or small; got {self.arch}")
        if min(self.size) < 1 or not self.batch_sizes or min(self.batch_sizes) < 1 or self.steps < 1:
            raise UsageError("size, batch sizes and steps must be positive")


def build(arch: str, device: torch.device) -> Any:
    import torch

    from dlcr_cli.bench.train import build_resnet50_reid
    from dlcr_cli.reid.model import build_model

    if arch == "resnet50":
        return build_resnet50_reid(device).eval()
    torch.manual_seed(0)
    return build_model("builtin:small", device=device).eval()


def run_embed_bench(s: EmbedBenchSettings, device: torch.device) -> dict[str, Any]:
    """{"settings", "device", "export_seconds", "provider", "rows": [{batch, torch, onnxruntime,
    ratio, max_abs_diff}]} (onnxruntime entries None without the extra or with onnx off)."""
    import torch

    from dlcr_cli.reid.model import extract_features

    s.check()
    model = build(s.arch, device)
    with tempfile.TemporaryDirectory(prefix="dlcr-bench-embed-") as tmp:
        session, provider, export_s, why = _onnx_session(model, s, Path(tmp), device) if s.onnx else \
            (None, None, None, "off (--no-onnx)")
        generator = torch.Generator().manual_seed(s.seed)
        rows = []
        for batch in s.batch_sizes:
            images = [torch.randn(batch, 3, *s.size, generator=generator) for _ in range(s.steps + 1)]
            log.info("bench embed: batch %d, torch on %s", batch, device)
            torch_row, want = _time(lambda x: extract_features(model, [x], flip=True), images, device)
            row = {"batch": batch, "torch": torch_row, "onnxruntime": None, "ratio": None, "max_abs_diff": None}
            if session is not None:
                log.info("bench embed: batch %d, onnxruntime (%s)", batch, provider)
                ort_row, got = _time(lambda x: torch.from_numpy(session.run(["features"], {"images": x.numpy()})[0]),
                                     images, torch.device("cpu"))
                row.update(onnxruntime=ort_row, ratio=round(ort_row["images_per_s"] / torch_row["images_per_s"], 3),
                           max_abs_diff=float((got - want).abs().max()))
            rows.append(row)
    return {"settings": asdict(s), "device": device_label(device), "torch": torch.__version__,
            "export_seconds": export_s, "provider": provider, "onnx_skipped": why, "rows": rows}


def _time(fn: Any, images: list[torch.Tensor], device: torch.device) -> tuple[dict[str, Any], torch.Tensor]:
    """Images/s of `fn` over images[1:] after images[0] as warm-up; the last batch's output."""
    fn(images[0])
    reset_peak_memory(device)
    with cuda_timer(device) as timing:
        for x in images[1:]:
            out = fn(x)
    count = sum(len(x) for x in images[1:])
    return ({"images": count, "seconds": round(timing.seconds, 3), "images_per_s": round(count / timing.seconds, 2),
             "peak_mem_gb": peak_memory_gb(device)}, out)


def _onnx_session(model: Any, s: EmbedBenchSettings, folder: Path, device: torch.device
                  ) -> tuple[Any, str | None, float | None, str | None]:
    """The model exported as `dlcr export` does (checked), in an onnxruntime session; or
    why not (the extra missing)."""
    from dlcr_cli.errors import Unavailable
    from dlcr_cli.reid.export import export_onnx, require_extra
    from dlcr_cli.reid.model import save_checkpoint

    try:
        _, ort = require_extra()
    except Unavailable as err:
        return None, None, None, str(err)
    run = save_checkpoint(model, folder / "model", {"image_size": list(s.size)})
    start = time.perf_counter()
    exported = export_onnx(run, folder / "model.onnx", device=device)
    seconds = round(time.perf_counter() - start, 2)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    wanted = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        wanted.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(exported.path), options, providers=wanted)
    return session, session.get_providers()[0], seconds, None


def print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    s = report["settings"]
    table = Table(title=f"bench embed: {s['arch']} at {s['size'][0]}x{s['size'][1]}, mirror sum + L2, "
                        f"{report['device']}" + (f"; onnxruntime {report['provider']}" if report["provider"] else ""),
                  title_justify="left")
    for column in ("batch", "torch images/s", "onnxruntime images/s", "ratio", "max |diff|"):
        table.add_column(column, justify="right")
    for row in report["rows"]:
        ort = row["onnxruntime"]
        table.add_row(str(row["batch"]), f"{row['torch']['images_per_s']:.1f}",
                      "-" if ort is None else f"{ort['images_per_s']:.1f}",
                      "-" if row["ratio"] is None else f"{row['ratio']:.2f}x",
                      "-" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.2g}")
    stderr.print(table)
    if report["onnx_skipped"]:
        stderr.print(f"onnxruntime row skipped: {report['onnx_skipped']}", highlight=False)
    elif report["export_seconds"] is not None:
        stderr.print(f"export (trace, translation, check): {report['export_seconds']:.1f} s", highlight=False)
