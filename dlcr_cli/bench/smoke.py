"""`dlcr bench smoke`: every CUDA-only path of dlcr once, on random weights, in minutes.

Each check runs one path (fp16 inpainting with per-output generators, the compiled UNet on
tail batches, the out-of-memory retry, the model cache's offload round trip, the CAL step in
bf16 and channels_last, a one-process DDP run, the stage commands on tiny models, the
device/CPU agreement of the evaluation code, the three benches at small sizes) and reports
what it measured; a check whose result is wrong fails with the reason. On a CPU the checks a
CPU can run run there (the same code paths), the others are reported as skipped with why.

The models are the tiny random-weight checkpoints of `dlcr_cli.bench.tiny`, built in the work
folder: nothing is downloaded. The CLI stages run as subprocesses (`python -m dlcr_cli`, the
way a user runs them), with an empty config file and no DLCR_ variables from the caller, so
the user's settings cannot change what is checked.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlcr_cli.console import log, stderr
from dlcr_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

TAIL = 800
"""Characters of an error or a subprocess's stderr kept in the report."""

Values = dict[str, Any]
Outcome = tuple[Values, list[str]]
"""What a check measured, and its failed expectations (empty: ok)."""


class Failed(Exception):
    """A check could not get its result (a command failed, a prerequisite is missing); carries
    what it measured so far."""

    def __init__(self, message: str, values: Values | None = None) -> None:
        super().__init__(message)
        self.values = values or {}


def failures(*expectations: tuple[bool, str]) -> list[str]:
    """The messages of the expectations that do not hold."""
    return [message for holds, message in expectations if not holds]


# --- the checks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable[[Smoke], Outcome]
    summary: str
    needs_cuda: str | None = None
    """Why it cannot run without CUDA (it is skipped there)."""
    slow_on_cpu: str | None = None
    """Why a CPU skips it unless --only names it."""


CHECKS: dict[str, Check] = {}


def check(name: str, summary: str, *, needs_cuda: str | None = None,
          slow_on_cpu: str | None = None) -> Callable[[Callable[[Smoke], Outcome]], Callable[[Smoke], Outcome]]:
    def register(fn: Callable[[Smoke], Outcome]) -> Callable[[Smoke], Outcome]:
        CHECKS[name] = Check(name, fn, summary, needs_cuda, slow_on_cpu)
        return fn

    return register


@dataclass(frozen=True)
class Sizes:
    """Problem sizes: small enough for minutes, large enough to take the real kernels."""

    metrics: tuple[int, int, int]
    """queries, gallery, identities of the evaluation problem."""
    rerank: tuple[int, int]
    """queries, gallery of its part re-ranked and refined."""
    features: tuple[int, int, int, int]
    """batches, images per batch, height, width."""
    cal_size: tuple[int, int]
    sources: int
    """Source images of expand and describe (one per clothing id, at most)."""


def sizes_for(cuda: bool, quick: bool) -> Sizes:
    if quick:
        return Sizes((200, 2000, 60), (60, 600), (2, 8, 64, 32), (384, 192) if cuda else (32, 16), 4)
    return Sizes((2000, 20000, 600), (300, 3000), (2, 16, 128, 64), (384, 192) if cuda else (64, 32), 8)


@dataclass
class Result:
    name: str
    ok: bool | None
    """None: skipped."""
    seconds: float
    skipped: str | None = None
    error: str | None = None
    """The last TAIL characters of the error, the failed expectations or the command's stderr."""
    values: Values = field(default_factory=dict)


# --- the run --------------------------------------------------------------------------------


class Smoke:
    """The shared state of one run: device, work folder, budget, and the assets the checks
    share (data, tiny models, the training run), each built once, when first needed."""

    def __init__(self, device: torch.device, out: Path, *, quick: bool, deadline: float) -> None:
        import torch

        self.device, self.out, self.quick, self.deadline = device, out, quick, deadline
        self.cuda = device.type == "cuda"
        self.dtype = torch.float16 if self.cuda else torch.float32  # the stages' fp16 needs a GPU
        self.sizes = sizes_for(self.cuda, quick)
        self._assets: dict[str, Any] = {}

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    # --- assets ---

    def asset(self, name: str, build: Callable[[], Any]) -> Any:
        """`build()` once; a failed build fails every check that needs it, with its error."""
        if name not in self._assets:
            try:
                self._assets[name] = build()
            except Failed as err:
                self._assets[name] = err
            except Exception as err:  # noqa: BLE001 - reported by every check that needs it
                self._assets[name] = Failed(f"building the {name} failed: {type(err).__name__}: {err}")
        value = self._assets[name]
        if isinstance(value, Failed):
            raise value
        return value

    def data(self) -> Path:
        from dlcr_cli.synth import synthesize

        return self.asset("synthetic dataset", lambda: _built(self.out / "data", lambda p: synthesize(
            p, ids=8, cameras=2, per=2, height=64, width=32, seed=0)))

    def sources(self) -> Path:
        """A records file of a few training images, one per clothing id: stage 1's input."""
        return self.asset("source records", lambda: _source_records(self.data(), self.out / "sources.jsonl",
                                                                    self.sizes.sources))

    def model(self, kind: str) -> Path:
        from dlcr_cli.bench import tiny

        builders = {"segformer": tiny.build_tiny_segformer, "inpaint": tiny.build_tiny_inpaint,
                    "llava": tiny.build_tiny_llava,
                    "llama": lambda p: tiny.build_tiny_llama(p, like_llama2_chat=True)}
        return self.asset(f"tiny {kind}", lambda: _built(self.out / "models" / kind, builders[kind]))

    def painter(self, compile: bool = False) -> Any:
        from dlcr_cli.stages.inpaint import DiffusionPainter

        return DiffusionPainter(str(self.model("inpaint")), device=self.device, dtype=self.dtype, batch_size=4,
                                size=(64, 32), steps=2, guidance=7.5, strength=1.0, scheduler="default",
                                compile=compile)

    def trained_run(self) -> Outcome:
        """The run folder `dlcr train` leaves after 2 epochs (the train check; built for the
        checks that need one when it was not selected)."""
        return self.asset("training run", lambda: _train(self))

    def run_folder(self) -> Path:
        try:
            values, problems = self.trained_run()
        except Failed as err:
            raise Failed(f"needs a training run, and `dlcr train` failed: {err}") from None
        if problems:
            raise Failed(f"needs a training run, and the train check failed: {'; '.join(problems)}")
        return Path(values["run"])

    # --- commands ---

    def cli(self, name: str, *args: str | Path, env: dict[str, str] | None = None,
            launcher: list[str] | None = None) -> subprocess.CompletedProcess:
        """`python -m dlcr_cli --device DEV ARGS` (after `launcher`, e.g. torchrun's options),
        its output kept in OUT/logs; a non-zero exit, a timeout or a traceback is a Failed."""
        config = self.out / "logs" / "empty-config.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.touch()
        module = [*(launcher or [sys.executable]), "-m", "dlcr_cli", "--device", str(self.device),
                  "--config", str(config)]
        return run_command(name, [*module, *map(str, args)], self.out / "logs", _child_env(env),
                           timeout=max(10.0, self.remaining()))


def _built(path: Path, build: Callable[[Path], Any]) -> Path:
    """`build(path)` unless an earlier run with the same --out left it (a folder with files)."""
    marker = path.with_name(f".{path.name}.built")  # beside it: a dataset root holds only the dataset
    if not marker.is_file():
        from dlcr_cli.cache import _quiet_libraries

        _quiet_libraries()  # the libraries' "writing shards" bars
        build(path)
        marker.touch()
    return path


def _source_records(data: Path, path: Path, count: int) -> Path:
    from dlcr_cli.inputs import read_records
    from dlcr_cli.records import record_json

    seen, lines = set(), []
    for record in read_records(str(data)):
        if record.split == "train" and record.clothes not in seen and len(lines) < count:
            seen.add(record.clothes)
            lines.append(record_json(record) + "\n")
    path.write_text("".join(lines))
    return path


def _child_env(extra: dict[str, str] | None) -> dict[str, str]:
    """The caller's environment without its DLCR_ settings (DLCR_DEBUG kept), offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLCR_") or k == "DLCR_DEBUG"}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(extra or {})})
    return env


def run_command(name: str, argv: list[str], logs: Path, env: dict[str, str], timeout: float
                ) -> subprocess.CompletedProcess:
    """Run `argv` in its own process group (a launcher's workers die with it on a timeout),
    stdout and stderr to LOGS/NAME.out and .err."""
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    timed_out = False
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.poll() is None:  # timed out or interrupted: take its children along
                _kill_group(proc)
    done = subprocess.CompletedProcess(argv, proc.returncode, out_path.read_text(errors="replace"),
                                       err_path.read_text(errors="replace"))
    if timed_out:
        raise Failed(f"timed out after {timeout:.0f} s (the budget): {_tail(_meaningful(done.stderr))}")
    if done.returncode != 0:
        raise Failed(f"exit {done.returncode}: {_tail(_meaningful(done.stderr))}")
    if "Traceback (most recent call last)" in done.stderr:
        raise Failed(f"exit 0 but a traceback on stderr: {_tail(_meaningful(done.stderr))}")
    return done


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


_C10D_INFO = re.compile(r"^(\[rank\d+\]:)?\[[IW]\d{4} ")


def _meaningful(text: str) -> str:
    """stderr without torch.distributed's INFO lines and DDP's settings dumps (the debug
    logging the ddp check turns on), so the tail shows what went wrong."""
    kept, in_dump = [], False
    for line in text.splitlines():
        if _C10D_INFO.match(line):
            in_dump = "DDP Initialized with" in line
            continue
        if in_dump and re.match(r"^\w+: ", line):
            continue
        in_dump = False
        kept.append(line)
    return "\n".join(kept)


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= TAIL else "..." + text[-TAIL:]


def _warnings(stderr_text: str) -> int:
    return sum("warning:" in line for line in stderr_text.splitlines())


def _json_line(text: str) -> Any:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise Failed("no JSON on stdout")
    try:
        return json.loads(lines[-1])
    except ValueError as err:
        raise Failed(f"stdout is not JSON: {err}: {_tail(lines[-1])}") from None


def _records(text: str) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as err:
        raise Failed(f"stdout holds a line that is no record: {err}") from None


def _finite(*xs: Any) -> bool:
    return all(x is not None and math.isfinite(x) for x in xs)


def _device_of(module: Any) -> str:
    return str(next(module.parameters()).device)


def _max_pixel_diff(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    return int(max(np.abs(x.astype(np.int16) - y.astype(np.int16)).max() for x, y in zip(a, b)))


def _pixel_tolerance(cuda: bool) -> int:
    """Grey levels two paintings of the same seeds may differ by: fp16 kernels pick other
    algorithms for other batch sizes (a wrong noise per output differs by ~100 or more)."""
    return 32 if cuda else 2


def _inputs(n: int = 4) -> tuple[list[Any], list[str], list[int]]:
    """Sources (random pixels and masks, twice the working size), prompts and seeds."""
    from dlcr_cli.stages.inpaint import Source

    rng = np.random.default_rng(0)
    sources = [Source(rng.integers(0, 255, (128, 64, 3), dtype=np.uint8), rng.random((128, 64)) > 0.5)
               for _ in range(n)]
    prompts = ["red shirt blue pants", "green coat", "black dress", "white shirt grey pants"][:n]
    return sources, prompts, list(range(1, n + 1))


# --- environment and memory -----------------------------------------------------------------


@check("env", "versions, GPU, bf16, TF32 settings, free GPU memory")
def check_env(s: Smoke) -> Outcome:
    import diffusers
    import torch
    import transformers

    from dlcr_cli import __version__
    from dlcr_cli.bench import device_label, float32_precision, tf32_env_override

    values: Values = {
        "dlcr": __version__, "python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "device": device_label(s.device), "float32": float32_precision(), "tf32_env_override": tf32_env_override(),
        "gpu": None, "bf16": None, "free_fraction": None,
    }
    if s.cuda:
        free, total = torch.cuda.mem_get_info(s.device)
        values.update(gpu=torch.cuda.get_device_name(s.device), bf16=torch.cuda.is_bf16_supported(),
                      capability=".".join(map(str, torch.cuda.get_device_capability(s.device))),
                      free_fraction=round(free / total, 3), total_gib=round(total / 2**30, 1))
        if not values["bf16"]:
            log.warning("smoke: %s has no bf16: training's autocast and the benches' bf16 rates are slow or wrong",
                        values["gpu"])
    return values, []


@check("oom", "a real CUDA out-of-memory splits the batch, later batches start split, nothing leaks",
       needs_cuda="only CUDA raises torch.OutOfMemoryError")
def check_oom(s: Smoke) -> Outcome:
    import torch

    from dlcr_cli.runtime import OomSplitter

    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(s.device)
    per_item = int(0.3 * free)  # four items do not fit, two do
    calls: list[int] = []

    def allocate(items: list[int]) -> list[int]:
        calls.append(len(items))
        block = torch.empty(len(items) * per_item, dtype=torch.uint8, device=s.device)
        return [block.numel() // per_item] * len(items)

    base = torch.cuda.memory_allocated(s.device)
    splitter = OomSplitter("smoke oom")
    sizes = splitter.run(allocate, list(range(4)))
    first = list(calls)
    again = splitter.run(allocate, list(range(4)))  # remembered: split from the start
    torch.cuda.synchronize(s.device)
    leaked = torch.cuda.memory_allocated(s.device) - base
    values = {"gib_per_item": round(per_item / 2**30, 2), "calls": first, "sizes": sizes,
              "calls_next_batch": calls[len(first):], "leaked_bytes": leaked}
    return values, failures(
        (len(sizes) == 4 and len(again) == 4, f"{len(sizes)} and {len(again)} results for 4 items"),
        (first[0] == 4 and max(sizes) < 4, f"the batch of 4 was not split (calls {first})"),
        (4 not in values["calls_next_batch"], f"the next batch of 4 ran out of memory again ({calls[len(first):]})"),
        (leaked == 0, f"{leaked} bytes still allocated after the retries"),
    )


# --- inpainting -----------------------------------------------------------------------------


@check("inpaint", "fp16 pipeline, per-output generators: repeatable, batch-independent, not blank")
def check_inpaint(s: Smoke) -> Outcome:
    sources, prompts, seeds = _inputs()
    painter = s.painter()
    pipe = painter.pipe
    whole = painter.paint(sources, prompts, seeds)
    again = painter.paint(sources, prompts, seeds)
    split = painter.paint(sources[:2], prompts[:2], seeds[:2]) + painter.paint(sources[2:], prompts[2:], seeds[2:])
    dtypes = {name: str(getattr(pipe, name).dtype).removeprefix("torch.") for name in ("unet", "vae", "text_encoder")}
    wanted = str(s.dtype).removeprefix("torch.")
    values = {"dtypes": dtypes, "repeat_max_diff": _max_pixel_diff(whole, again),
              "split_max_diff": _max_pixel_diff(whole, split), "shape": list(whole[0].shape),
              "min_std": round(float(min(image.std() for image in whole)), 2)}
    tolerance = _pixel_tolerance(s.cuda)
    return values, failures(
        (set(dtypes.values()) == {wanted}, f"models loaded as {dtypes}, not {wanted}"),
        (values["repeat_max_diff"] == 0, f"the same seeds painted differently (up to {values['repeat_max_diff']})"),
        (values["split_max_diff"] <= tolerance,
         f"batches of 2 differ from one of 4 by {values['split_max_diff']} grey levels (> {tolerance})"),
        (values["shape"] == [128, 64, 3], f"painted images of shape {values['shape']}, not the sources' 128x64x3"),
        (values["min_std"] > 1, "a painted image is flat"),
    )


@check("compile", "the torch.compiled UNet on batches of 4, 3 and 1, against eager",
       slow_on_cpu="Inductor's C++ compilation of the UNet takes minutes on a CPU")
def check_compile(s: Smoke) -> Outcome:
    import torch
    from torch._dynamo.utils import counters

    sources, prompts, seeds = _inputs()
    eager = s.painter().paint(sources, prompts, seeds)
    torch._dynamo.reset()  # count this check's graphs only
    counters.clear()
    painter = s.painter(compile=True)
    seconds, compiled = [], None
    for k in (4, 3, 1):  # the tail batches of a run: a new batch size may recompile
        start = time.perf_counter()
        images = painter.paint(sources[:k], prompts[:k], seeds[:k])
        seconds.append(round(time.perf_counter() - start, 2))
        compiled = compiled or images
    values = {"batch_seconds": dict(zip(("4", "3", "1"), seconds)),
              "unique_graphs": counters["stats"]["unique_graphs"], "frames": dict(counters["frames"]),
              "graph_breaks": sum(counters["graph_break"].values()),
              "max_diff_vs_eager": _max_pixel_diff(eager, compiled), "compiled": type(painter.pipe.unet).__name__}
    tolerance = _pixel_tolerance(s.cuda)
    return values, failures(
        (values["compiled"] == "OptimizedModule", f"the UNet is a {values['compiled']}, not compiled"),
        (values["max_diff_vs_eager"] <= tolerance,
         f"compiled and eager differ by {values['max_diff_vs_eager']} grey levels (> {tolerance})"),
    )


@check("offload", "the model cache moves idle models to the CPU under pressure, and back",
       needs_cuda="the cache offloads only from CUDA devices")
def check_offload(s: Smoke) -> Outcome:
    from dlcr_cli import cache

    sources, prompts, seeds = _inputs(2)
    seg_path = s.model("segformer")
    pressure = cache.PRESSURE
    cache.PRESSURE = 1.01  # every load now finds the GPU short of memory
    try:
        painter = s.painter()
        before = painter.paint(sources, prompts, seeds)
        seg = cache.CACHE.get("semantic-segmentation", str(seg_path), dtype=s.dtype, device=s.device,
                              setting="mask.model", load=lambda: _load_segformer(seg_path, s))
        after_seg = {"unet": _device_of(painter.pipe.unet), "segformer": _device_of(seg)}
        painter = s.painter()
        after_pipe = {"unet": _device_of(painter.pipe.unet), "segformer": _device_of(seg)}
        after = painter.paint(sources, prompts, seeds)
    finally:
        cache.PRESSURE = pressure
    values = {"after_segformer_load": after_seg, "after_pipeline_asked": after_pipe,
              "max_diff_after_round_trip": _max_pixel_diff(before, after)}
    gpu = str(s.device) if s.device.index is not None else "cuda:0"
    return values, failures(
        (after_seg == {"unet": "cpu", "segformer": gpu}, f"after loading a second model: {after_seg}"),
        (after_pipe == {"unet": gpu, "segformer": "cpu"}, f"after asking for the pipeline again: {after_pipe}"),
        (values["max_diff_after_round_trip"] == 0, "the pipeline paints differently after the round trip"),
    )


def _load_segformer(path: Path, s: Smoke) -> Any:
    from transformers import AutoModelForSemanticSegmentation

    return AutoModelForSemanticSegmentation.from_pretrained(path, dtype=s.dtype).to(s.device).eval()


# --- training and features ------------------------------------------------------------------


@check("cal", "the CAL step in bf16 autocast and channels_last: finite losses, channels_last grads")
def check_cal(s: Smoke) -> Outcome:
    import torch

    from dlcr_cli.bench import peak_memory_gb, reset_peak_memory
    from dlcr_cli.bench.train import TrainBenchSettings, make_batches, make_stepper

    settings = TrainBenchSettings(arch="resnet50" if s.cuda else "small", ids=4, images_per_id=4,
                                  size=s.sizes.cal_size)
    reset_peak_memory(s.device)
    stepper, losses, grad = _cal_steps(make_stepper(settings, s.device, fast=True), make_batches(settings, 2))
    values = {"arch": settings.arch, "size": list(settings.size), "losses": losses,
              "grad_channels_last": None if grad is None else grad.is_contiguous(memory_format=torch.channels_last),
              "peak_gb": None if (peak := peak_memory_gb(s.device)) is None else round(peak, 2)}
    return values, failures(
        (all(_finite(*step.values()) for step in losses), f"a loss is not finite: {losses}"),
        (all({"id", "clothes", "cal"} <= set(step) for step in losses), "the clothes and CAL losses did not run"),
        (grad is not None, "the first convolution got no gradient"),
        (not s.cuda or values["grad_channels_last"] is True, "the first convolution's gradient is not channels_last"),
    )


def _cal_steps(stepper: Any, batches: list) -> tuple[Any, list[dict[str, float]], Any]:
    """The stepper after a CAL step (clothes losses on) per batch: its losses per step and the
    first convolution's gradient."""
    import torch

    losses = []
    for batch in batches:
        step_losses, _, _ = stepper.step(batch, clothes_on=True)
        losses.append({k: round(float(v), 4) for k, v in step_losses.items()})
    conv = next(m for m in stepper.modules["model"].modules() if isinstance(m, torch.nn.Conv2d))
    return stepper, losses, conv.weight.grad


@check("cal-video", "the video model's CAL step on clips in fp16 autocast with loss scaling and channels_last")
def check_cal_video(s: Smoke) -> Outcome:
    """What CCVID runs (c2dres50 on B x T clips, frames flattened) in the precision CAL gives
    LaST and DeepChange: finite losses, a finite loss scale, channels_last gradients."""
    import torch

    from dlcr_cli.bench.train import TrainBenchSettings, make_batches, make_stepper

    settings = TrainBenchSettings(arch="resnet50" if s.cuda else "small", ids=2, images_per_id=2, video=True,
                                  frames=4, size=s.sizes.cal_size)
    precision = "fp16" if s.cuda else "fp32"
    stepper, losses, grad = _cal_steps(make_stepper(settings, s.device, precision=precision, channels_last=s.cuda),
                                       make_batches(settings, 2))
    scale = float(stepper.scaler.get_scale()) if stepper.scaler.is_enabled() else None
    values = {"arch": settings.arch, "precision": precision, "losses": losses, "loss_scale": scale,
              "dim": stepper.modules["model"].dim,
              "grad_channels_last": None if grad is None else grad.is_contiguous(memory_format=torch.channels_last)}
    return values, failures(
        (all(_finite(*step.values()) for step in losses), f"a loss is not finite: {losses}"),
        (all({"id", "clothes", "cal"} <= set(step) for step in losses), "the clothes and CAL losses did not run"),
        (scale is None or (scale > 0 and _finite(scale)), f"the loss scale is {scale}"),
        (grad is not None, "the first convolution got no gradient"),
        (not s.cuda or values["grad_channels_last"] is True, "the first convolution's gradient is not channels_last"),
    )


@check("features", "feature extraction, float32 against bf16 autocast")
def check_features(s: Smoke) -> Outcome:
    import torch

    from dlcr_cli.reid.model import build_model, extract_features

    batches, per, height, width = s.sizes.features
    model = build_model("builtin:small", device=s.device)
    if s.cuda:
        model = model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(per, 3, height, width, generator=g) for _ in range(batches)]
    fp32 = extract_features(model, images)
    bf16 = extract_features(model, images, precision="bf16" if s.cuda else "fp32")
    diff = float((fp32 - bf16).abs().max())
    values = {"shape": list(fp32.shape), "fp32_vs_bf16_max_diff": round(diff, 5),
              "norms": round(float(fp32.norm(dim=1).mean()), 4)}
    return values, failures(
        (values["shape"] == [batches * per, model.dim], f"features of shape {values['shape']}"),
        (abs(values["norms"] - 1) < 1e-3, "the features are not L2-normalised"),
        (diff < 0.1, f"bf16 features differ from float32 ones by {diff:.3f}"),
        (not s.cuda or diff > 0, "autocast changed nothing: bf16 did not run"),
    )


# --- evaluation on the device ---------------------------------------------------------------


def _problem(s: Smoke) -> Any:
    from dlcr_cli.bench.evaluate import EvalBenchSettings, make_problem

    queries, gallery, ids = s.sizes.metrics
    return s.asset("evaluation problem", lambda: make_problem(EvalBenchSettings(queries=queries, gallery=gallery,
                                                                                ids=ids)))


METRIC_TOLERANCE = 1e-4
"""Metrics from distances computed on another device: rounding there can swap near-ties."""


@check("metrics", "the protocol's metrics on the device against the CPU (standard, cc, sc)")
def check_metrics(s: Smoke) -> Outcome:
    from dlcr_cli.bench import full_float32
    from dlcr_cli.bench.evaluate import max_difference
    from dlcr_cli.reid import metrics

    p = _problem(s)
    values: Values = {"queries": len(p.query), "gallery": len(p.gallery)}
    problems = []
    with full_float32():
        distances = metrics.cosine_distances(p.query, p.gallery)
        for mode in ("standard", "cc", "sc"):
            cpu = {mode: metrics.evaluate_distances(distances, p.query_labels, p.gallery_labels, mode).as_dict()}
            same = {mode: metrics.evaluate_distances(distances, p.query_labels, p.gallery_labels, mode,
                                                     device=s.device).as_dict()}
            own = {mode: metrics.evaluate(p.query, p.gallery, p.query_labels, p.gallery_labels, mode,
                                          device=s.device).as_dict()}
            (same_diff, same_ok), (own_diff, _) = max_difference(cpu, same), max_difference(cpu, own)
            values[mode] = {"same_distances_diff": same_diff, "device_distances_diff": own_diff,
                            "mAP": round(cpu[mode]["mAP"], 4)}
            problems += failures(
                (same_ok, f"{mode}: the device scores the same distances differently ({same_diff:.2e})"),
                (own_diff <= METRIC_TOLERANCE, f"{mode}: metrics from device distances differ by {own_diff:.2e}"),
            )
    values["max_same_distances_diff"] = max(values[m]["same_distances_diff"] for m in ("standard", "cc", "sc"))
    values["max_device_distances_diff"] = max(values[m]["device_distances_diff"] for m in ("standard", "cc", "sc"))
    return values, problems


@check("rerank", "k-reciprocal re-ranking and refinement distances on the device against the CPU")
def check_rerank(s: Smoke) -> Outcome:
    import torch

    from dlcr_cli.bench import full_float32
    from dlcr_cli.bench.evaluate import max_difference
    from dlcr_cli.reid import metrics
    from dlcr_cli.reid.refine import refined_distance_chunks
    from dlcr_cli.reid.rerank import rerank

    p = _problem(s)
    nq, ng = s.sizes.rerank
    q, g = p.query[:nq], p.gallery[:ng]
    ql, gl = p.query_labels.take(np.arange(nq)), p.gallery_labels.take(np.arange(ng))
    variants = np.random.default_rng(1).standard_normal((nq, 4, q.shape[1])).astype(np.float32)
    ok = np.ones((nq, 4), dtype=bool)

    def compare(name: str, make: Callable[[Any], Iterator[torch.Tensor]]) -> dict[str, float]:
        cpu, dev = (torch.cat([c.cpu().clone() for c in make(d)]) for d in ("cpu", s.device))
        a, b = ({"cc": metrics.evaluate_distances(x.numpy(), ql, gl, "cc").as_dict()} for x in (cpu, dev))
        return {f"{name}_max_abs_diff": float((cpu - dev).abs().max()), f"{name}_metrics_diff": max_difference(a, b)[0]}

    values: Values = {"queries": nq, "gallery": ng}
    with full_float32():
        values.update(compare("rerank", lambda d: rerank(q, g, device=d)))
        values.update(compare("refine", lambda d: refined_distance_chunks(q, variants, ok, g, ql, gl, "cc", device=d)))
    return values, [f"{name}: metrics differ by {values[f'{name}_metrics_diff']:.2e} between the CPU and the device"
                    for name in ("rerank", "refine") if values[f"{name}_metrics_diff"] > METRIC_TOLERANCE]


# --- the CLI: training ----------------------------------------------------------------------

TRAIN_ARGS = ("--backbone", "builtin:small", "--image-size", "64x32", "--batch", "2x4", "--workers", "2")
CAL_FROM_EPOCH_2 = {"DLCR_TRAIN__CLOTHES_START": "1"}
"""The clothes classifier and the CAL loss from the second epoch on (25 by default)."""


def _fresh(folder: Path) -> Path:
    """`folder`, emptied: a run an earlier smoke left in --out would be resumed or refused."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def _train(s: Smoke) -> Outcome:
    run = _fresh(s.out / "run")
    done = s.cli("train", "train", s.data(), *TRAIN_ARGS, "--out", run, "--epochs", "2", "--eval-every", "1",
                 "--json", env=CAL_FROM_EPOCH_2)
    last = _json_line(done.stdout)
    evaluation = last.get("evaluation") or {}
    values = {"run": str(run), "epoch": last.get("epoch"), "loss": last.get("loss"), "cal_loss": last.get("cal_loss"),
              "rank1": {k: round(v["rank1"], 4) for k, v in evaluation.items()}, "warnings": _warnings(done.stderr)}
    return values, failures(
        (values["epoch"] == 2, f"the last epoch is {values['epoch']}, not 2"),
        (_finite(values["loss"], values["cal_loss"]), f"loss {values['loss']}, CAL loss {values['cal_loss']}"),
        (bool(evaluation), "no evaluation after the epoch (--eval-every 1)"),
        ((run / "model.safetensors").is_file(), "no model.safetensors in the run folder"),
    )


@check("train", "`dlcr train` for 2 epochs with CAL from epoch 2 and an evaluation after each")
def check_train(s: Smoke) -> Outcome:
    return s.trained_run()


@check("resume", "`dlcr train --resume` continues the run for a third epoch")
def check_resume(s: Smoke) -> Outcome:
    run = s.run_folder()
    done = s.cli("resume", "train", s.data(), *TRAIN_ARGS, "--out", run, "--epochs", "3", "--resume", "--json",
                 env=CAL_FROM_EPOCH_2)
    last = _json_line(done.stdout)
    epochs = [line["epoch"] for line in _records((run / "metrics.jsonl").read_text()) if "epoch" in line]
    values = {"epoch": last.get("epoch"), "loss": last.get("loss"), "metrics_epochs": epochs}
    return values, failures(
        (values["epoch"] == 3, f"the last epoch is {values['epoch']}, not 3"),
        (_finite(values["loss"]), f"loss {values['loss']}"),
        (epochs == [1, 2, 3], f"metrics.jsonl holds epochs {epochs}, not 1, 2, 3"),
    )


@check("ddp", "`dlcr train` under torchrun, one process: the DDP path (NCCL on CUDA, gloo on a CPU)")
def check_ddp(s: Smoke) -> Outcome:
    run = _fresh(s.out / "ddp")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    # DDP's own INFO log prints "DDP Initialized with: ... backend_name: X" per wrapped module.
    env = {**CAL_FROM_EPOCH_2, "TORCH_DISTRIBUTED_DEBUG": "INFO", "TORCH_CPP_LOG_LEVEL": "INFO"}
    done = s.cli("ddp", "train", s.data(), *TRAIN_ARGS, "--out", run, "--epochs", "2", "--json", env=env,
                 launcher=launcher)
    last = _json_line(done.stdout)
    backends = sorted(set(re.findall(r"^backend_name: (\w+)", done.stderr, flags=re.M)))
    values = {"ddp_modules": done.stderr.count("DDP Initialized with"), "backends": backends,
              "epoch": last.get("epoch"), "loss": last.get("loss"), "cal_loss": last.get("cal_loss"),
              "warnings": _warnings(_meaningful(done.stderr))}
    wanted = "nccl" if s.cuda else "gloo"
    return values, failures(
        (values["ddp_modules"] > 0, "the run did not take the DDP path (no DistributedDataParallel was built)"),
        (values["ddp_modules"] == 0 or backends == [wanted], f"process group backend {backends}, not {wanted}"),
        (values["epoch"] == 2 and _finite(values["loss"], values["cal_loss"]),
         f"epoch {values['epoch']}, loss {values['loss']}, CAL loss {values['cal_loss']}"),
        ((run / "model.safetensors").is_file(), "no model.safetensors in the run folder"),
    )


# --- the CLI: stage 1 and refinement --------------------------------------------------------


@check("expand", "`dlcr expand` on tiny models: SegFormer masks, colours, Llama prompts, inpainting")
def check_expand(s: Smoke) -> Outcome:
    work = _fresh(s.out / "expand")
    sets = {"mask.model": s.model("segformer"), "mask.input_size": "[64, 64]", "describe.backend": "colors",
            "summarize.model": s.model("llama"), "summarize.max_new_tokens": 8, "inpaint.model": s.model("inpaint"),
            "inpaint.size": "[64, 32]", "inpaint.steps": 2}
    # --set values are TOML: the folders as quoted strings, whatever characters their paths hold
    args = [arg for key, value in sets.items()
            for arg in ("--set", f"{key}={json.dumps(str(value)) if isinstance(value, Path) else value}")]
    sources = s.sources()
    done = s.cli("expand", "expand", sources, "--out", work, "-k", "2", *args)
    records = _records(done.stdout)
    count = len(sources.read_text().splitlines())
    missing = [r.get("image") for r in records if not Path(r.get("image", "")).is_file()]
    values = {"sources": count, "generated": len(records), "missing_images": len(missing),
              "with_prompt": sum(bool(r.get("prompt")) for r in records), "warnings": _warnings(done.stderr)}
    return values, failures(
        (len(records) == 2 * count, f"{len(records)} generated records for {count} sources x 2"),
        (not missing, f"generated images missing: {missing[:3]}"),
        (values["with_prompt"] == len(records), "generated records without their prompt"),
    )


@check("describe", "`dlcr describe` with a tiny LLaVA: batched generation with a tail batch")
def check_describe(s: Smoke) -> Outcome:
    sources = s.sources()
    done = s.cli("describe", "describe", sources, "--model", s.model("llava"), "--max-new-tokens", "8",
                 "--batch-size", "3")
    records = _records(done.stdout)
    count = len(sources.read_text().splitlines())
    values = {"records": len(records), "described": sum(isinstance(r.get("description"), str) for r in records)}
    return values, failures(
        (len(records) == count, f"{len(records)} records out for {count} in"),
        (values["described"] == count, f"{count - values['described']} records without a description"),
    )


@check("refine", "`dlcr refine --generate --weight-free` with the trained run")
def check_refine(s: Smoke) -> Outcome:
    run, data = s.run_folder(), s.data()
    done = s.cli("refine", "refine", data, "-c", run, "--generate", "--weight-free", "--parsing-dir",
                 data / "parsing", "--work", _fresh(s.out / "query-variants"), "-k", "2", "--json")
    report = _json_line(done.stdout)
    before, after = report.get("before", {}), report.get("after", {})
    values = {name: {"rank1_before": round(before[name]["rank1"], 4), "rank1_after": round(after[name]["rank1"], 4)}
              for name in before if name in after}
    return values, failures(
        (bool(before) and set(before) == set(after), f"settings before {sorted(before)}, after {sorted(after)}"),
    )


# --- the benches ----------------------------------------------------------------------------


def _rows(report: dict[str, Any], *keys: str) -> list[dict[str, Any]]:
    return [{k: row[k] for k in ("name", *keys) if k in row} for row in report["rows"]]


@check("bench-evaluate", "`dlcr bench evaluate`: the reference and dlcr agree at full float32 precision")
def check_bench_evaluate(s: Smoke) -> Outcome:
    from dlcr_cli.bench.evaluate import EvalBenchSettings, run_evaluate_bench

    queries, gallery = (200, 2000) if s.quick else (2000, 20000)
    report = run_evaluate_bench(EvalBenchSettings(queries=queries, gallery=gallery, modes=("standard", "cc")),
                                s.device)
    values = {"queries": queries, "gallery": gallery, "rows": _rows(report, "seconds", "peak_gpu_gb"),
              "speedup": report["speedup"], "max_abs_diff": report["max_abs_diff"], "agree": report["agree"],
              "precision": report.get("precision")}
    return values, failures((report["agree"] is True, f"the metrics disagree by {report['max_abs_diff']}"))


@check("bench-train", "`dlcr bench train` at a small size (ResNet-50 on CUDA, builtin:small on a CPU)")
def check_bench_train(s: Smoke) -> Outcome:
    from dlcr_cli.bench.train import TrainBenchSettings, run_train_bench

    if s.cuda:
        settings = TrainBenchSettings(steps=2 if s.quick else 4, warmup=1 if s.quick else 2)
    else:
        settings = TrainBenchSettings(arch="small", ids=2, images_per_id=2, size=(32, 16) if s.quick else (64, 32),
                                      steps=1 if s.quick else 2, warmup=0 if s.quick else 1)
    report = run_train_bench(settings, s.device)
    values = {"arch": settings.arch, "rows": _rows(report, "images", "images_per_s", "peak_mem_gb"),
              "speedup": report["speedup"]}
    return values, failures((all(row["images"] > 0 and row["images_per_s"] > 0 for row in report["rows"]),
                             "a row trained no images"))


@check("bench-inpaint", "`dlcr bench inpaint` at a small size (SD-1.5 on CUDA, the tiny pipeline on a CPU)")
def check_bench_inpaint(s: Smoke) -> Outcome:
    from dlcr_cli.bench.inpaint import BenchSettings, run_inpaint_bench

    if s.cuda:
        settings = BenchSettings.for_arch("sd15", images=10, batch_size=5, steps=2 if s.quick else 3)
    else:
        settings = BenchSettings.for_arch("tiny", images=5, batch_size=5, steps=1 if s.quick else 2,
                                          size=(16, 8) if s.quick else (64, 32))
    report = run_inpaint_bench(settings, s.device, s.out / "bench-inpaint")
    values = {"arch": settings.arch, "rows": _rows(report, "images", "images_per_s", "peak_mem_gb",
                                                   "unet_share_of_peak"),
              "speedup": report["speedup"], "peak_bf16_tflops": report["peak_bf16_tflops"]}
    wanted = settings.sources * settings.variants
    return values, failures((all(row["images"] == wanted for row in report["rows"]),
                             f"a row painted fewer than {wanted} images"))


# --- running and reporting ------------------------------------------------------------------


def select(only: list[str] | None) -> list[Check]:
    """The checks named (all, in their order, when none are)."""
    if not only:
        return list(CHECKS.values())
    unknown = [name for name in only if name not in CHECKS]
    if unknown:
        raise UsageError(f"--only: no check named {', '.join(unknown)}; the checks are {', '.join(CHECKS)}")
    return [c for c in CHECKS.values() if c.name in only]


def skip_reason(chosen: Check, cuda: bool, named: bool) -> str | None:
    if chosen.needs_cuda and not cuda:
        return f"needs CUDA: {chosen.needs_cuda}"
    if chosen.slow_on_cpu and not cuda and not named:
        return f"skipped on a CPU: {chosen.slow_on_cpu} (--only {chosen.name} runs it)"
    return None


def run_smoke(device: torch.device, out: Path | None, *, budget: float, only: list[str] | None = None,
              quick: bool = False) -> dict[str, Any]:
    """Run the chosen checks in order until `budget` seconds are spent; returns the report."""
    import torch

    from dlcr_cli.bench import device_label

    checks = select(only)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads; never wait on the network
    start = time.monotonic()
    results: list[Result] = []
    with ExitStack() as stack:
        if out is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dlcr-smoke-")))
        else:  # absolute: model folders must not read as hub ids, and the commands run elsewhere
            work = out = out.expanduser().resolve()
            work.mkdir(parents=True, exist_ok=True)
        s = Smoke(device, work, quick=quick, deadline=start + budget)
        for chosen in checks:
            why = skip_reason(chosen, s.cuda, named=bool(only))
            if why is None and s.remaining() <= 0:
                why = f"the time budget ({budget:.0f} s) was spent"
            result = Result(chosen.name, None, 0.0, skipped=why) if why else _run_one(chosen, s)
            _log_result(result)
            results.append(result)
    failed = [r.name for r in results if r.ok is False]
    return {
        "device": device_label(device), "torch": torch.__version__, "quick": quick, "budget_s": budget,
        "seconds": round(time.monotonic() - start, 1), "out": None if out is None else str(out),
        "ok": not failed, "failed": failed, "skipped": [r.name for r in results if r.ok is None],
        "checks": [_result_json(r) for r in results],
    }


def _run_one(chosen: Check, s: Smoke) -> Result:
    log.info("smoke: %s: %s", chosen.name, chosen.summary)
    start = time.perf_counter()
    values: Values = {}
    try:
        values, problems = chosen.fn(s)
        error = "; ".join(problems) or None
    except Failed as err:
        values, error = err.values, str(err)
    except Exception as err:  # noqa: BLE001 - one check's crash is its result, the others still run
        error = _describe(err)
    finally:
        _release(s.device)
    return Result(chosen.name, error is None, round(time.perf_counter() - start, 2),
                  error=None if error is None else _tail(error), values=_jsonable(values))


def _describe(err: BaseException) -> str:
    """The error and where it happened: its innermost frames as file:line in function, or with
    DLCR_DEBUG=1 the whole traceback (in the report only; stderr shows one line)."""
    if os.environ.get("DLCR_DEBUG") not in (None, "", "0"):
        return "".join(traceback.format_exception(err))
    frames = traceback.extract_tb(err.__traceback__)[-3:]
    return "\n".join([f"{type(err).__name__}: {err}",
                      *(f"  at {Path(f.filename).name}:{f.lineno} in {f.name}" for f in frames)])


def _release(device: torch.device) -> None:
    """Drop the models a check loaded: the next check, and the commands' own processes, get
    the memory (the cache would keep them for the whole process)."""
    from dlcr_cli.bench import free_device_memory
    from dlcr_cli.cache import CACHE

    CACHE.clear()
    free_device_memory(device)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _result_json(r: Result) -> dict[str, Any]:
    return {"name": r.name, "ok": r.ok, "seconds": r.seconds, "skipped": r.skipped, "error": r.error, **r.values}


def _log_result(r: Result) -> None:
    if r.ok is None:
        log.info("smoke: %s skipped: %s", r.name, r.skipped)
    elif r.ok:
        log.info("smoke: %s ok (%.1f s)", r.name, r.seconds)
    else:
        log.error("smoke: %s FAILED (%.1f s): %s", r.name, r.seconds, _last_line(r.error))


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip() and not line.startswith("  at ")]
    return lines[-1].strip() if lines else ""


def _brief(values: dict[str, Any], width: int = 100) -> str:
    """The measured values as `key value` pairs for a table cell: the plain numbers and words
    when there are any, else the nested ones, cut to fit (the JSON has them all)."""
    skip = {"name", "ok", "seconds", "skipped", "error", "run"}
    items = [(k, v) for k, v in values.items() if k not in skip and v is not None]
    plain = [(k, v) for k, v in items if not isinstance(v, (dict, list))]
    text = ", ".join(f"{k} {_short(v)}" for k, v in plain or items)
    return text if len(text) <= width else text[: width - 3] + "..."


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def print_report(report: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"dlcr bench smoke on {report['device']}, torch {report['torch']}", title_justify="left",
                  box=box.SIMPLE_HEAD)
    for column in ("check", "result", "seconds", "measured / why"):
        table.add_column(column, justify="right" if column == "seconds" else "left", overflow="fold")
    styles = {True: ("ok", "green"), False: ("FAILED", "bold red"), None: ("skipped", "yellow")}
    for c in report["checks"]:
        label, style = styles[c["ok"]]
        detail = c["skipped"] if c["ok"] is None else _last_line(c["error"]) if c["ok"] is False else _brief(c)
        table.add_row(c["name"], Text(label, style=style), "-" if c["ok"] is None else f"{c['seconds']:.1f}",
                      Text(detail))
    stderr.print(table)
    ran = len(report["checks"]) - len(report["skipped"])
    stderr.print(f"{ran - len(report['failed'])} of {ran} checks that ran are ok, {len(report['skipped'])} skipped, "
                 f"{report['seconds']:.0f} s" + (f"; work folder {report['out']}" if report["out"] else ""),
                 highlight=False)


__all__ = ["CHECKS", "Check", "Failed", "Result", "Smoke", "print_report", "run_command", "run_smoke", "select"]
