"""`dlcr bench inpaint`: images/s of the inpaint stage against the reference scripts' way of
calling diffusers, on the full-size SD-1.5 inpainting architecture with random weights.

Random weights cost nothing to download and run exactly the kernels the real checkpoint runs
(same shapes, same dtype, same scheduler), so the timings are the real ones; the images are
noise. Both paths load the checkpoint the builder saved through diffusers' `from_pretrained`
and paint the same sources with the same prompts, steps and size, in one process.

The UNet's share of the peak: its FLOPs (counted on the meta device: no weights, no GPU) per
forward x forwards per image x images/s, over the GPU's measured bf16 matmul rate.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from dlcr_cli.bench import (
    Row,
    count_flops,
    cuda_timer,
    device_label,
    free_device_memory,
    matmul_peak_flops,
    peak_memory_gb,
    print_table,
    reset_peak_memory,
)
from dlcr_cli.console import log, stderr
from dlcr_cli.errors import Unavailable, UsageError

if TYPE_CHECKING:
    import torch

    from dlcr_cli.records import Record
    from dlcr_cli.stages import Outcome
    from dlcr_cli.stages.inpaint import Job, Painter

# --- the architectures ----------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    """The component configs of an inpainting pipeline and the bench's defaults for it."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    """CLIPTextConfig arguments; vocab_size, when absent, is the tokenizer's size."""
    scheduler: dict[str, Any]
    dtype: str
    """The dtype the weights are saved in."""
    size: tuple[int, int]
    steps: int
    images: int


# stable-diffusion-v1-5/stable-diffusion-inpainting, component by component.
SD15 = Arch(
    unet=dict(
        in_channels=9, out_channels=4, sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
        center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
        mid_block_scale_factor=1,
    ),
    vae=dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=512, block_out_channels=(128, 256, 512, 512),
        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        act_fn="silu", norm_num_groups=32, scaling_factor=0.18215,
    ),
    # CLIP ViT-L/14's text tower; bos/eos/pad are those of the offline tokenizer below.
    text=dict(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ),
    scheduler=dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
    ),
    dtype="float16", size=(768, 256), steps=50, images=80,
)

# What the tests' tiny pipeline always was (dlcr_cli.bench.tiny.build_tiny_inpaint).
TINY = Arch(
    unet=dict(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=9, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    ),
    vae=dict(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    ),
    text=dict(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=2,
    ),
    scheduler=dict(skip_prk_steps=True, steps_offset=1),
    dtype="float32", size=(64, 32), steps=2, images=10,
)

ARCHS: dict[str, Arch] = {"sd15": SD15, "tiny": TINY}


def clip_tokenizer() -> Any:
    """A CLIP tokenizer from an in-memory vocabulary (nothing to download): the 256 byte
    characters and their `</w>` forms, no merges, so any prompt tokenizes without unknowns
    and every id is < 514, inside any text encoder's embedding table."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def build_inpaint_pipeline(path: Path, arch: str = "sd15", *, dtype: Any = None, seed: int = 0) -> Path:
    """Save a random-weight Stable-Diffusion inpainting pipeline of architecture `arch` (9-channel
    UNet, VAE, CLIP text encoder, PNDM scheduler, no safety checker) to `path` as safetensors,
    loadable with `AutoPipelineForInpainting.from_pretrained(path)`; returns `path`.

    Weights come from `seed` (built on the CPU: the same on every machine) and are saved in
    `dtype` (default: the arch's, float16 for sd15: ~2 GB on disk).
    """
    import torch

    from dlcr_cli.cache import _quiet_libraries

    _quiet_libraries()  # their progress bars and notices, before they are imported
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = ARCHS[arch]
    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**spec.unet)
    vae = AutoencoderKL(**spec.vae)
    tokenizer = clip_tokenizer()
    text = {"vocab_size": len(tokenizer), **spec.text}
    if len(tokenizer) > text["vocab_size"]:
        raise ValueError(f"tokenizer ids reach {len(tokenizer)} but the text encoder has {text['vocab_size']} rows")
    pipe = StableDiffusionInpaintPipeline(
        unet=unet, vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**text)), tokenizer=tokenizer,
        scheduler=PNDMScheduler(**spec.scheduler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    dtype = dtype or getattr(torch, spec.dtype)
    if dtype != torch.float32:  # built in float32; a no-op cast would still log a notice per model
        pipe.to(dtype=dtype)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def ensure_pipeline(path: Path, arch: str) -> Path:
    """The checkpoint at `path`, built first unless an earlier run (--work-dir) left it."""
    if not (path / "model_index.json").is_file():
        log.info("bench: building the %s inpainting architecture with random weights in %s", arch, path)
        build_inpaint_pipeline(path, arch)
    return path


# --- counting -------------------------------------------------------------------------------


def unet_flops(config: Mapping[str, Any], latent: tuple[int, int], batch: int = 2, text_len: int = 77) -> int:
    """FLOPs of one UNet forward on `batch` latents of `latent` (height, width), counted on the
    meta device: the architecture's count, with no weights and on any machine."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(config))
        sample = torch.zeros(batch, unet.config.in_channels, *latent)
        context = torch.zeros(batch, text_len, unet.config.cross_attention_dim)
        timestep = torch.tensor(999)
    return count_flops(lambda: unet(sample, timestep, encoder_hidden_states=context))


def unet_calls(scheduler: Any, steps: int, strength: float, above: int | None = None) -> int:
    """UNet forwards per image: the timesteps the pipeline walks at `strength` (PNDM without
    its PRK warm-up walks steps + 1); with `above`, only those with t > above (the steps
    discriminator guidance acts on)."""
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(steps)
    start = max(steps - min(int(steps * strength), steps), 0)
    walked = fresh.timesteps[start * fresh.order:]
    return len(walked) if above is None else int((walked > above).sum())


# --- the inputs -----------------------------------------------------------------------------

_GARMENT_WORDS = {"upper-clothes": "shirt"}


def outfit_prompt(outfit: Mapping[str, Any]) -> str:
    """An inpainting prompt in the summarize stage's form: "navy coat grey pants red shoes"."""
    items = [outfit[slot] for slot in ("upper", "lower", "shoes") if outfit.get(slot)]  # a dress has no lower
    words = [f"{colour} {_GARMENT_WORDS.get(garment, garment)}" for garment, colour in items]
    return ("striped " if outfit.get("pattern") == "stripes" else "") + " ".join(words)


def make_sources(folder: Path, count: int, seed: int = 0) -> tuple[list[Record], dict[str, str]]:
    """`count` training images of the procedural dataset, each with its clothing mask (PNG),
    and a prompt for every clothing id of the dataset (plenty of targets to draw from)."""
    from dlcr_cli.io import load_label_map
    from dlcr_cli.labels import DEFAULT_KEEP, label_ids
    from dlcr_cli.inputs import read_records
    from dlcr_cli.synth import synthesize

    data = folder / "data"
    synthesize(data, ids=2 * max(3, -(-count // 4)), cameras=2, per=1, seed=seed)  # >= 4 train images per id
    outfits = json.loads((data / "outfits.json").read_text())
    prompts = {f"{pid}_{k}": outfit_prompt(o) for pid, person in outfits.items() for k, o in person.items()}
    keep = label_ids("lip", DEFAULT_KEEP)
    sources = []
    for record in (r for r in read_records(str(data)) if r.split == "train"):
        if len(sources) == count:
            break
        mask = folder / "masks" / record.rel
        mask.parent.mkdir(parents=True, exist_ok=True)
        clothing = ~np.isin(load_label_map(data / "parsing" / record.rel), keep)
        Image.fromarray(clothing.astype(np.uint8) * 255).save(mask)
        sources.append(record.model_copy(update={"mask": str(mask), "prompt": prompts[record.clothes]}))
    return sources, prompts


# --- the benchmark --------------------------------------------------------------------------


@dataclass
class BenchSettings:
    arch: str = "sd15"
    images: int = 80
    """Generated images per row, rounded up to a multiple of `variants`."""
    batch_size: int = 16
    """dlcr's images per pipeline call (the reference's is `variants`)."""
    steps: int = 50
    size: tuple[int, int] = (768, 256)
    guidance: float = 7.5
    strength: float = 1.0
    variants: int = 5
    """K: the authors' script's hard-coded 5 targets per source, one pipeline call each."""
    compile: bool = False
    dpm: bool = False
    discriminator: bool = False
    """Add a row: dlcr's painter with discriminator guidance (a random-init discriminator)."""
    seed: int = 0

    @classmethod
    def for_arch(cls, arch: str, **given: Any) -> BenchSettings:
        """The arch's defaults (size, steps, images) under the values given (None: not given)."""
        spec = ARCHS[arch]
        values = {"size": spec.size, "steps": spec.steps, "images": spec.images}
        values.update({k: v for k, v in given.items() if v is not None})
        settings = cls(arch=arch, **values)
        settings.check()
        return settings

    def check(self) -> None:
        height, width = self.size
        if height <= 0 or width <= 0 or height % 8 or width % 8:
            raise UsageError(f"--size must be positive multiples of 8, got {height}x{width}")

    @property
    def sources(self) -> int:
        return -(-self.images // self.variants)


NEEDS_CUDA = ("dlcr bench inpaint needs a CUDA GPU for the sd15 architecture "
              "(or --arch tiny to check the code path on CPU)")


def bench_device(arch: str, wanted: str | None) -> torch.device:
    """sd15: a CUDA device (--device cuda:N picks one); tiny: the CPU unless --device says otherwise."""
    import torch

    from dlcr_cli.runtime import resolve_device

    if arch != "sd15":
        return resolve_device(wanted or "cpu")
    if not torch.cuda.is_available():
        raise Unavailable(NEEDS_CUDA)
    device = resolve_device(wanted or "cuda")
    if device.type != "cuda":
        raise Unavailable(NEEDS_CUDA)
    return device


def run_inpaint_bench(settings: BenchSettings, device: torch.device, work: Path | None = None) -> dict[str, Any]:
    """Build (or reuse) the checkpoint, paint the same sources the reference way and dlcr's way,
    and return the report: device, arch, settings, rows, speedup (dlcr / reference) and the
    FLOP figures behind the UNet shares (None where there is no GPU)."""
    import torch

    s = settings
    dtype = torch.float16 if device.type == "cuda" else torch.float32  # the paper's fp16 needs a GPU
    with ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dlcr-bench-")))
        model = ensure_pipeline(work / f"model-{s.arch}", s.arch)
        sources, prompts = make_sources(work / "sources", s.sources, seed=s.seed)
        plan = partial(_plan, sources, prompts, s, work)
        peak = matmul_peak_flops(device)
        reference, forward_flops, scheduler = _reference_row(s, model, device, dtype, plan)
        free_device_memory(device)
        dlcr_rows, guided = _dlcr_rows(s, model, device, dtype, plan, forward_flops)
        rows = [reference, *dlcr_rows]
    return {
        "device": device_label(device), "arch": s.arch,
        "settings": {**asdict(s), "size": list(s.size), "sources": len(sources), "scheduler": scheduler,
                     "dtype": str(dtype).removeprefix("torch."), "reference_batch": s.variants},
        "rows": [row.as_dict(peak, "unet_share_of_peak") for row in rows],
        "speedup": round(rows[1].images_per_s / rows[0].images_per_s, 4) if rows[0].images_per_s else None,
        "unet_gflop_per_forward": round(forward_flops / 1e9, 3),
        "peak_bf16_tflops": None if peak is None else round(peak / 1e12, 2),
        **({"guidance": guided} if guided else {}),
    }  # fmt: skip


def _plan(sources: list[Record], prompts: dict[str, str], s: BenchSettings, work: Path, name: str) -> list[Job]:
    """The jobs of one row, K per source, written under work/out/<name>."""
    from dlcr_cli.stages.inpaint import make_plan

    return make_plan(sources, prompts, variants=s.variants, seed=s.seed, out=work / "out" / name, fmt="files")[0]


def _reference_row(s: BenchSettings, model: Path, device: torch.device, dtype: Any,
                   plan: Any) -> tuple[Row, int, str]:
    """Row (a), the UNet's FLOPs per forward and the checkpoint's scheduler's name."""
    pipe = load_reference(model, device, dtype)
    latent = (s.size[0] // pipe.vae_scale_factor, s.size[1] // pipe.vae_scale_factor)
    forward = unet_flops(pipe.unet.config, latent, batch=2 if s.guidance > 1 else 1)  # guidance doubles the batch
    call = {"num_inference_steps": s.steps, "guidance_scale": s.guidance, "strength": s.strength}
    paint = partial(paint_reference, pipe, size=s.size, call=call, device=device)
    log.info("bench: (a) reference: one diffusers call per source, batch %d", s.variants)
    paint(_by_source(plan("warm-reference"))[:1])
    reset_peak_memory(device)
    with cuda_timer(device) as timing:
        images = paint(_by_source(plan("reference")))
    row = Row(f"(a) reference, batch {s.variants}", images, timing.seconds,
              peak_memory_gb(device), forward * unet_calls(pipe.scheduler, s.steps, s.strength))
    _log_row(row)
    return row, forward, type(pipe.scheduler).__name__


def _dlcr_rows(s: BenchSettings, model: Path, device: torch.device, dtype: Any, plan: Any,
               forward: int) -> tuple[list[Row], dict[str, Any] | None]:
    """dlcr's rows, and with `s.discriminator` the cost of guidance: (b) against (e)."""
    from dlcr_cli.stages.inpaint import DiffusionPainter

    dpm_steps = -(-s.steps // 2)
    variants: list[tuple[str, str, dict[str, Any]]] = [(f"(b) dlcr, batch {s.batch_size}", "dlcr", {})]
    if s.compile:
        variants.append((f"(c) dlcr compiled, batch {s.batch_size}", "dlcr-compile", {"compile": True}))
    if s.dpm:  # fewer steps of another sampler: faster, but not the paper's images
        variants.append((f"(d) dlcr, dpm {dpm_steps} steps: other quality", "dlcr-dpm",
                         {"scheduler": "dpm", "steps": dpm_steps}))
    described = None
    if s.discriminator:  # (b)'s painter, guided: the same pipeline, steps and batches
        dg, described = bench_guidance(device)
        variants.append((f"(e) dlcr + discriminator guidance, batch {s.batch_size}", "dlcr-dg", {"dg": dg}))
    rows = []
    for name, slug, extra in variants:
        options = {"scheduler": "default", "steps": s.steps, "compile": False, **extra}
        log.info("bench: %s", name)
        painter = DiffusionPainter(str(model), device=device, dtype=dtype, batch_size=s.batch_size, size=s.size,
                                   guidance=s.guidance, strength=s.strength, **options)
        # each painter's scheduler and compiled UNet are its own: the cached pipeline stays as it is
        warm = _warm_batches(plan(f"warm-{slug}"), s.batch_size, tail=options["compile"])
        row = _time_dlcr(name, painter, plan(slug), warm, device)
        row.flops_per_image = forward * unet_calls(painter.pipe.scheduler, options["steps"], s.strength)
        _log_row(row)
        rows.append(row)
    if described is None:
        return rows, None
    unguided, guided = rows[0], rows[-1]
    plain_s, guided_s = unguided.seconds / unguided.images, guided.seconds / guided.images
    scheduler = painter.pipe.scheduler  # the last row's: (b)'s default one
    return rows, {
        "discriminator": described, "dg_weight": GUIDANCE_WEIGHT, "dg_min_t": GUIDANCE_MIN_T,
        "guided_unet_calls_per_image": unet_calls(scheduler, s.steps, s.strength, above=GUIDANCE_MIN_T),
        "unet_calls_per_image": unet_calls(scheduler, s.steps, s.strength),
        "unguided_s_per_image": round(plain_s, 5), "guided_s_per_image": round(guided_s, 5),
        "ratio": round(guided_s / plain_s, 4) if plain_s > 0 else None,
    }


GUIDANCE_WEIGHT, GUIDANCE_MIN_T = 1.0, 200
"""The authors' guidance settings (dlcr's defaults): the steps with t > 200 are guided."""


def bench_guidance(device: torch.device) -> tuple[Any, str]:
    """Discriminator guidance with a random-init discriminator of the default architecture
    (`dlcr_cli.discriminator.Discriminator(width=128, levels=4)`, seed 0, float32), or, where
    that module is missing, a stand-in of the same kind (said so in the report)."""
    import torch

    from dlcr_cli.stages.inpaint import DiscriminatorGuidance

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            from dlcr_cli.discriminator import Discriminator
        except ImportError:
            log.warning("bench: dlcr_cli.discriminator is missing: timing guidance with a stand-in discriminator")
            module, described = StandInDiscriminator(width=128, levels=4), STAND_IN
        else:
            module = Discriminator(width=128, levels=4)
            described = "dlcr_cli.discriminator.Discriminator(width=128, levels=4), random init"
    module = module.to(device=device, dtype=torch.float32).eval()
    return DiscriminatorGuidance(module, weight=GUIDANCE_WEIGHT, min_t=GUIDANCE_MIN_T, digest="bench"), described


STAND_IN = ("stand-in (dlcr_cli.discriminator missing): a time-conditioned residual conv encoder, "
            "width 128, 4 levels, random init")


def StandInDiscriminator(width: int = 128, levels: int = 4) -> Any:  # a class, made lazily
    """A time-conditioned conv encoder of the default discriminator's size class: stem, per level
    a residual block (GroupNorm, SiLU, 3x3 convs, the timestep's embedding added) and a stride-2
    conv, then mean-pooling and a linear logit. (latents [B, 4, h, w], timesteps [B]) -> [B]."""
    import math

    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, channels: int, embed: int) -> None:
            super().__init__()
            self.norm1, self.conv1 = nn.GroupNorm(32, channels), nn.Conv2d(channels, channels, 3, padding=1)
            self.time = nn.Linear(embed, channels)
            self.norm2, self.conv2 = nn.GroupNorm(32, channels), nn.Conv2d(channels, channels, 3, padding=1)

        def forward(self, x: Any, emb: Any) -> Any:
            h = self.conv1(nn.functional.silu(self.norm1(x))) + self.time(emb)[:, :, None, None]
            return x + self.conv2(nn.functional.silu(self.norm2(h)))

    class StandIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.width, embed = width, 4 * width
            self.embed = nn.Sequential(nn.Linear(width, embed), nn.SiLU(), nn.Linear(embed, embed))
            self.stem = nn.Conv2d(4, width, 3, padding=1)
            self.blocks = nn.ModuleList(Block(width, embed) for _ in range(levels))
            self.downs = nn.ModuleList(nn.Conv2d(width, width, 3, stride=2, padding=1) for _ in range(levels))
            self.head = nn.Sequential(nn.GroupNorm(32, width), nn.SiLU())
            self.out = nn.Linear(width, 1)

        def forward(self, latents: Any, timesteps: Any) -> Any:
            half = self.width // 2
            freqs = torch.exp(-math.log(10000) * torch.arange(half, device=latents.device) / half)
            angles = timesteps.float()[:, None] * freqs[None]
            emb = self.embed(torch.cat([angles.cos(), angles.sin()], dim=1))
            x = self.stem(latents)
            for block, down in zip(self.blocks, self.downs):
                x = down(block(x, emb))
            return self.out(self.head(x).mean(dim=(2, 3))).squeeze(1)

    return StandIn()


def _warm_batches(jobs: list[Job], batch_size: int, tail: bool) -> list[list[Job]]:
    """One batch; with `tail` also one of the last batch's size (a compiled UNet recompiles
    for a new shape: that belongs in the warm-up, not in the timing)."""
    rest = len(jobs) % batch_size
    return [jobs[:batch_size]] + ([jobs[-rest:]] if tail and rest else [])


def _time_dlcr(name: str, painter: Painter, jobs: list[Job], warm: list[list[Job]], device: torch.device) -> Row:
    from dlcr_cli.stages.inpaint import run_inpaint

    for batch in warm:
        _count(run_inpaint(batch, painter, overwrite=True))
    reset_peak_memory(device)
    with cuda_timer(device) as timing:
        images = _count(run_inpaint(jobs, painter, overwrite=True))
    return Row(name, images, timing.seconds, peak_memory_gb(device))


def _count(outcomes: Iterable[Outcome]) -> int:
    done = 0
    for outcome in outcomes:
        if outcome.error is not None:
            log.error("%s: %s", outcome.record.image, outcome.error)
        done += outcome.error is None
    return done


def _log_row(row: Row) -> None:
    log.info("bench: %s: %d images in %.2f s, %.3f images/s", row.name, row.images, row.seconds, row.images_per_s)


# --- the reference path -----------------------------------------------------------------------


def load_reference(model: Path, device: torch.device, dtype: Any) -> Any:
    """The pipeline as the research scripts load it: StableDiffusionInpaintPipeline in fp16,
    safety checker off."""
    from dlcr_cli.cache import _quiet_libraries

    _quiet_libraries()
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    pipe = StableDiffusionInpaintPipeline.from_pretrained(model, dtype=dtype, safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _by_source(jobs: list[Job]) -> list[list[Job]]:
    return [list(group) for _, group in groupby(jobs, key=lambda job: job.rel)]


def paint_reference(pipe: Any, groups: list[list[Job]], *, size: tuple[int, int], call: dict[str, Any],
                    device: torch.device) -> int:
    """The authors' loop, plainly: per source one pipeline call with its K prompts and the
    image and mask repeated K times, PIL output, each image resized back, pasted back with the
    mask and saved, one after the other. Returns the images written."""
    import torch

    height, width = size
    written = 0
    for jobs in groups:
        image = Image.open(jobs[0].source.image).convert("RGB")
        mask = Image.open(jobs[0].source.mask).convert("L")
        k = len(jobs)
        result = pipe(prompt=[job.prompt for job in jobs], image=[image.resize((width, height))] * k,
                      mask_image=[mask.resize((width, height))] * k, height=height, width=width,
                      generator=torch.Generator(device).manual_seed(jobs[0].seed), **call)
        for job, painted in zip(jobs, result.images):
            job.out.parent.mkdir(parents=True, exist_ok=True)
            Image.composite(painted.resize(image.size), image, mask).save(job.out)
            written += 1
    return written


# --- the report -------------------------------------------------------------------------------


def print_report(result: Mapping[str, Any]) -> None:
    """The settings, the rows as a table, the ratio and the FLOP figures, on stderr."""
    s = result["settings"]
    height, width = s["size"]
    stderr.print(f"dlcr bench inpaint: {result['arch']} on {result['device']}; {height}x{width}, {s['steps']} steps "
                 f"({s['scheduler']}), guidance {s['guidance']}, strength {s['strength']}, {s['dtype']}; "
                 f"{s['sources']} sources x {s['variants']} prompts", highlight=False, soft_wrap=True)
    print_table("", list(result["rows"]), "unet_share_of_peak", "UNet/peak")
    peak, speedup = result["peak_bf16_tflops"], result["speedup"]
    stderr.print(f"dlcr / reference: {'-' if speedup is None else f'{speedup:.2f}x'}; UNet "
                 f"{result['unet_gflop_per_forward']:.1f} GFLOP per forward (guidance batch); bf16 matmul peak: "
                 f"{'no GPU' if peak is None else f'{peak:.0f} TFLOP/s'}", highlight=False, soft_wrap=True)
    guided = result.get("guidance")
    if guided:
        ratio = guided["ratio"]
        stderr.print(f"discriminator guidance (weight {guided['dg_weight']:g}, t > {guided['dg_min_t']}): "
                     f"{guided['guided_s_per_image']:.4f} s/image guided, {guided['unguided_s_per_image']:.4f} "
                     f"s/image unguided, {'-' if ratio is None else f'{ratio:.2f}x'} "
                     f"({guided['guided_unet_calls_per_image']} of {guided['unet_calls_per_image']} UNet calls guided); "
                     f"{guided['discriminator']}",
                     highlight=False, soft_wrap=True)


__all__ = [
    "ARCHS", "Arch", "BenchSettings", "NEEDS_CUDA", "SD15", "TINY", "bench_device", "bench_guidance",
    "build_inpaint_pipeline",
    "clip_tokenizer", "ensure_pipeline", "load_reference", "make_sources", "outfit_prompt", "paint_reference",
    "print_report", "run_inpaint_bench", "unet_calls", "unet_flops",
]
