"""inpaint: clothes-changed images, K per training image (docs/method.md, stage 1).

Every source image gets K target clothing ids, drawn without replacement from the clothing
ids that have a prompt, its own excluded; variant k is the source with its clothing region
repainted for target k's prompt, pasted back onto the source with the mask so that every
pixel outside the mask is exactly the source's.

Reproducible and resumable: the targets of a source come from (seed, source rel path), those
of a video frame from (seed, its tracklet), so that all frames of a tracklet share their K
targets; the noise seed of variant k from (seed, rel, k), per frame (the transfer backend's target
image from (seed, tracklet, k), so one clip takes its outfit from one image); the jobs are cut into batches by their place
in the plan, never by what is done, so a run resumed after a crash computes every batch
with the same companions as an uninterrupted run and writes byte-identical files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from dlcr_cli.console import log
from dlcr_cli.errors import ItemError
from dlcr_cli.io import load_label_map, load_rgb, mirrored, parsing_labels_of, prefetch, save_atomic, write_text_atomic
from dlcr_cli.records import Record, rel_path
from dlcr_cli.stages import Outcome

# --- the plan -------------------------------------------------------------------------------


@dataclass
class Job:
    """One generated image: variant `variant` of `source`, repainted for `target`'s prompt."""

    source: Record
    rel: str
    variant: int
    of: int
    """How many variants the source has (K, or fewer when there are not enough targets)."""
    target: str
    prompt: str
    seed: int
    out_rel: str
    """Where the output goes inside the output folder. files: this variant's PNG; strip: the
    source's strip PNG (all its variants)."""
    out_dir: Path
    target_seed: int
    """Which image of the target clothing id a painter that paints from one (transfer) takes:
    of (seed, the source's target key, k), so every frame of a tracklet takes the same."""

    @property
    def out(self) -> Path:
        return self.out_dir / self.out_rel


def stable_int(*parts: object) -> int:
    """A 63-bit integer from `parts`, the same on every machine and Python run."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def draw_targets(seed: int, rel: str, own: str | None, pool: list[str], k: int) -> list[str]:
    """K distinct clothing ids from `pool` (sorted), never `own`, reproducible per source.
    The first of a random order of all candidates, so a smaller K draws a prefix of a larger
    K's targets: raising K keeps every image made so far."""
    candidates = [c for c in pool if c != own]
    order = np.random.default_rng(stable_int("targets", seed, rel)).permutation(len(candidates))
    return [candidates[i] for i in order[:k]]


def target_key(source: Record, rel: str) -> str:
    """What a source's targets are drawn for: its tracklet when it is a video frame (every
    frame of a tracklet wears the same K outfits, so variant k of its frames makes a clip of
    one outfit), else the image itself."""
    tracklet = getattr(source, "tracklet", None)
    return f"tracklet:{tracklet}" if tracklet is not None else rel


def variant_seed(seed: int, rel: str, variant: int) -> int:
    return stable_int("variant", seed, rel, variant)


def output_rel(rel: str, variant: int, fmt: str) -> str:
    """files: <rel dir>/<stem>_v<k>.png; strip: <rel dir>/<stem>.png (and .txt)."""
    base = mirrored(Path(), rel)
    return (base if fmt == "strip" else base.with_name(f"{base.stem}_v{variant}.png")).as_posix()


def prompt_table(records: list[Record], prompts_file: dict[str, str] | None) -> dict[str, str]:
    """The target pool: the --prompts file when given, else the sources' own `prompt` fields."""
    if prompts_file is not None:
        return dict(prompts_file)
    table: dict[str, str] = {}
    for record in records:
        if record.clothes and record.prompt:
            table.setdefault(record.clothes, record.prompt)
    return table


def read_prompt_file(path: Path) -> dict[str, str]:
    """A {clothing id: prompt} JSON file, as `dlcr summarize --prompts-out` writes it."""
    import json

    from dlcr_cli.errors import InputMissing, MalformedInput

    try:
        table = json.loads(path.expanduser().read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputMissing(f"prompts file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MalformedInput(f"{path}: not valid JSON ({err})") from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise MalformedInput(f"{path}: expected a JSON object of clothing id -> prompt string")
    return {str(k): v for k, v in table.items()}


def make_plan(sources: list[Record], prompts: dict[str, str], *, variants: int, seed: int, out: Path,
              fmt: str) -> tuple[list[Job], list[Outcome]]:
    """Every job, in source order then variant order, and the sources that cannot be planned."""
    pool = sorted(prompts)
    jobs: list[Job] = []
    failed: list[Outcome] = []
    fewer = 0
    for source in sources:
        problem = _unplannable(source, pool)
        if problem:
            failed.append(Outcome(source, problem))
            continue
        rel = rel_path(source)
        key = target_key(source, rel)
        targets = draw_targets(seed, key, source.clothes, pool, variants)
        fewer += len(targets) < variants
        for k, target in enumerate(targets):
            jobs.append(Job(source, rel, k, len(targets), target, prompts[target], variant_seed(seed, rel, k),
                            output_rel(rel, k, fmt), out, variant_seed(seed, key, k)))
    if fewer:
        log.warning("only %d clothing ids have a prompt: %d source images get fewer than %d variants "
                    "(each target is drawn once per source)", len(pool), fewer, variants)
    return jobs, failed


def _unplannable(source: Record, pool: list[str]) -> str | None:
    if not source.mask:
        return "no mask in the record (run dlcr mask first)"
    if not source.clothes:
        return "no clothing id (field clothes) in the record"
    if not [c for c in pool if c != source.clothes]:
        return "no other clothing id has a prompt to draw a target from"
    return None


def select_sources(records: Iterable[Record], splits: list[str]) -> tuple[list[Record], int]:
    """Records of `splits` (and records without a split) and how many others were left out."""
    sources, others = [], 0
    for record in records:
        if record.split is None or record.split in splits:
            sources.append(record)
        else:
            others += 1
    return sources, others


# --- painting ---------------------------------------------------------------------------------


@dataclass
class Source:
    """A source image as the painters need it, read in a worker thread."""

    image: np.ndarray
    """H x W x 3 uint8."""
    mask: np.ndarray
    """H x W bool: True where clothing is repainted."""
    parsing: np.ndarray | None = None
    labels: str | None = None


class Painter(Protocol):
    batch_size: int
    needs_parsing: bool
    fingerprint: str
    """Everything of the painter that changes its pixels (backend, model, size, steps...)."""

    def paint(self, sources: list[Source], prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        """One H x W x 3 uint8 image per source, at the source's size (pasted back later)."""


def read_source(record: Record, needs_parsing: bool) -> Source:
    image = np.asarray(load_rgb(record.image))
    mask = load_label_map(record.mask) >= 128
    if mask.shape != image.shape[:2]:
        raise ItemError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}")
    if not needs_parsing:
        return Source(image, mask)
    if not record.parsing:
        raise ItemError("no parsing map in the record (the recolor and transfer backends need one; run dlcr mask)")
    parsing = load_label_map(record.parsing)
    if parsing.shape != mask.shape:
        raise ItemError(f"parsing map is {parsing.shape[1]}x{parsing.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}")
    return Source(image, mask, parsing, parsing_labels_of(record.parsing_labels, record.parsing, parsing))


def paste_back(source: Source, painted: np.ndarray) -> np.ndarray:
    """out = m * painted + (1 - m) * source: outside the mask, exactly the source's pixels."""
    return np.where(source.mask[..., None], painted, source.image)


class RecolorPainter:
    """Weight-free: each garment region recoloured to the target prompt's colour for it,
    keeping its shading (the paper's Figure 1 baseline)."""

    needs_parsing = True
    fingerprint = "recolor 1"

    def __init__(self, batch_size: int = 8) -> None:
        self.batch_size = batch_size

    def paint(self, sources: list[Source], prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        from dlcr_cli.recolor import recolour

        return [recolour(s.image, s.parsing, s.labels, p, s.mask) for s, p in zip(sources, prompts)]


class TransferPainter:
    """Weight-free: each garment region filled with the same garment of one image of the target
    clothing id, its texture and colours carried over (dlcr_cli.transfer); garments the target
    image lacks are recoloured to the prompt's colour for them.

    The target image of variant k of a source is one of the target clothing id's records that
    have a parsing map (sorted by path), chosen from the job's target seed, of (seed, source
    path, k), for a video frame (seed, tracklet, k): the same on every run, and the same for
    every frame of a clip. One that cannot be read (or whose map is not the image's
    size) gives way to the next in that order; when none can, the variant is recoloured from
    the prompt alone (with a warning).
    """

    needs_parsing = True
    needs_targets = True
    fingerprint = "transfer 2"  # 2: a video frame's target image per tracklet

    def __init__(self, records: Iterable[Record], batch_size: int = 8) -> None:
        self.batch_size = batch_size
        self.candidates: dict[str, list[Record]] = {}
        for record in records:
            if record.clothes and record.parsing:
                self.candidates.setdefault(record.clothes, []).append(record)
        for group in self.candidates.values():
            group.sort(key=rel_path)
        self._read: dict[str, tuple[np.ndarray, np.ndarray, str] | str] = {}
        self._warned: set[str] = set()

    def paint(self, sources: list[Source], prompts: list[str], seeds: list[int],
              targets: list[str] | None = None, target_seeds: list[int] | None = None) -> list[np.ndarray]:
        """`seeds` (noise) are unused: the painting is deterministic given its target image."""
        from dlcr_cli.transfer import transfer

        if targets is None or target_seeds is None:
            raise ValueError("the transfer painter needs each job's target clothing id and target seed")
        out = []
        for source, prompt, target, target_seed in zip(sources, prompts, targets, target_seeds):
            image = self.target_image(target, target_seed)
            donor = image if image is not None else (None, None, None)
            out.append(transfer(source.image, source.parsing, source.labels, *donor, prompt, source.mask))
        return out

    def target_files(self, target: str) -> list[str]:
        """The files a variant of `target` may paint from (its output's mark covers them)."""
        return [str(path) for record in self.candidates.get(target, []) for path in (record.image, record.parsing)]

    def target_image(self, target: str, seed: int) -> tuple[np.ndarray, np.ndarray, str] | None:
        """(image, parsing map, label set) of the target image of a variant, None without one."""
        group = self.candidates.get(target, [])
        start = stable_int("transfer", seed) % len(group) if group else 0
        problems = []
        for i in range(len(group)):
            read = self._load(group[(start + i) % len(group)])
            if not isinstance(read, str):
                return read
            problems.append(read)
        if target not in self._warned:
            self._warned.add(target)
            why = "; ".join(problems) if problems else "no record of it has a parsing map"
            log.warning("inpaint: clothing id %s has no usable target image for the transfer backend (%s): "
                        "its variants are recoloured from its prompt", target, why)
        return None

    def _load(self, record: Record) -> tuple[np.ndarray, np.ndarray, str] | str:
        key = record.image
        if key not in self._read:
            try:
                image = np.asarray(load_rgb(record.image))
                parsing = load_label_map(record.parsing)
                if parsing.shape != image.shape[:2]:
                    raise ItemError(f"parsing map {record.parsing} is {parsing.shape[1]}x{parsing.shape[0]} "
                                    f"but the image is {image.shape[1]}x{image.shape[0]}")
                self._read[key] = (image, parsing, parsing_labels_of(record.parsing_labels, record.parsing, parsing))
            except ItemError as err:
                self._read[key] = f"{record.image}: {err}"
        return self._read[key]


class DiffusionPainter:
    """A diffusers inpainting pipeline at the paper's settings: (image, mask, prompt) triples
    expanded by hand, one CPU generator per output (the same noise on any device, and the same
    images however a batch is split), resized to the working size and back.

    The model cache's pipeline is shared by every painter of the process and never changed:
    a painter with another scheduler, a compiled UNet or discriminator guidance calls its own
    pipeline (`pipe`) made of the cached one's modules, with those swapped in (guidance: the
    UNet, plain or compiled, inside a GuidedUNet).
    """

    needs_parsing = False

    def __init__(self, model_id: str, *, device: Any, dtype: Any, batch_size: int, size: tuple[int, int],
                 steps: int, guidance: float, strength: float, scheduler: str, compile: bool = False,
                 offload_idle: bool = True, dg: DiscriminatorGuidance | None = None) -> None:
        from dlcr_cli.cache import CACHE
        from dlcr_cli.runtime import OomSplitter

        self.batch_size = batch_size
        self.height, self.width = size
        self.call = {"num_inference_steps": steps, "guidance_scale": guidance, "strength": strength}
        from dlcr_cli.fingerprint import model_revision

        self.fingerprint = f"diffusion {model_id} {model_revision(model_id)} {size} {self.call} {scheduler} {dtype}"
        if dg is not None and not dg.active:
            log.info("inpaint: discriminator guidance weight 0: painting unguided")
        self.dg = dg if dg is not None and dg.active else None
        """Discriminator guidance, None without (no discriminator, or weight 0: the unguided painter,
        same pipeline, same fingerprint, the same bytes)."""
        if self.dg is not None:  # unguided outputs keep their marks; guided ones name what guided them
            self.fingerprint += f" dg {self.dg.digest} {self.dg.weight!r} {self.dg.min_t}"
        cached = CACHE.get("inpainting", model_id, dtype=dtype, device=device, setting="inpaint.model",
                           offload_idle=offload_idle, load=partial(_load_pipeline, model_id, device, dtype))
        self.latent_shape = (cached.vae.config.latent_channels, self.height // cached.vae_scale_factor,
                             self.width // cached.vae_scale_factor)
        """The sampler's latents (C, h, w) at the working size: what a discriminator must be made for."""
        swaps = {}
        if scheduler != "default":
            swaps["scheduler"] = _scheduler(cached, scheduler)
        if compile:
            swaps["unet"] = CACHE.get("compiled-unet", model_id, dtype=dtype, device=device, setting="inpaint.compile",
                                      offload_idle=False, load=partial(_Compiled.of, cached.unet)).module
        if self.dg is not None:
            _check_guidable(swaps.get("scheduler", cached.scheduler))
            # CFG is on when the pipeline doubles the batch (its do_classifier_free_guidance)
            halves = guidance > 1 and cached.unet.config.time_cond_proj_dim is None
            swaps["unet"] = _guided_unet_class()(swaps.get("unet", cached.unet), self.dg, halves=halves, device=device)
        self.pipe = _with_components(cached, swaps) if swaps else cached
        if self.dg is not None:
            self.pipe.unet.scheduler = self.pipe.scheduler  # the one the view steps with
        self.batches = OomSplitter("inpaint")

    def paint(self, sources: list[Source], prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        return self.batches.run(self._paint, list(zip(sources, prompts, seeds)))

    def _paint(self, triples: list[tuple[Source, str, int]]) -> list[np.ndarray]:
        import torch

        size = (self.width, self.height)
        images = [Image.fromarray(s.image).resize(size, Image.BICUBIC) for s, _, _ in triples]
        masks = [Image.fromarray(s.mask.astype(np.uint8) * 255).resize(size, Image.NEAREST) for s, _, _ in triples]
        generators = [torch.Generator("cpu").manual_seed(seed) for _, _, seed in triples]
        # Guidance differentiates inside the UNet call: inference-mode tensors cannot enter
        # autograd, so the guided pipeline runs under no_grad (GuidedUNet enables grad for its
        # discriminator alone); the unguided one keeps inference mode (and its exact bytes).
        with torch.no_grad() if self.dg is not None else torch.inference_mode():
            result = self.pipe(prompt=[p for _, p, _ in triples], image=images, mask_image=masks, height=self.height,
                               width=self.width, generator=generators, output_type="np", **self.call)
        out = []
        for (source, _, _), painted in zip(triples, result.images):
            pixels = Image.fromarray(np.clip(painted * 255 + 0.5, 0, 255).astype(np.uint8))
            out.append(np.asarray(pixels.resize((source.image.shape[1], source.image.shape[0]), Image.BICUBIC)))
        return out


# --- discriminator guidance -------------------------------------------------------------------


@dataclass(frozen=True)
class DiscriminatorGuidance:
    """Discriminator guidance (DLCR, after Kim et al. 2023): on every denoising step with
    timestep t > `min_t` (of 1000), eps <- eps - sqrt(1 - alpha_bar_t) * weight * g, g the
    gradient over the noisy latent x_t of the discriminator's logit log(D / (1 - D))."""

    discriminator: Any
    """A torch module: (latents [B, 4, h, w] float32, timesteps [B] int64) -> logits [B] (float32),
    on the painter's device (dlcr_cli.discriminator.Discriminator)."""
    weight: float = 1.0
    min_t: int = 200
    digest: str = ""
    """What identifies the discriminator's weights in the painter's fingerprint."""

    @property
    def active(self) -> bool:
        return self.discriminator is not None and self.weight > 0


def __getattr__(name: str) -> Any:
    """`GuidedUNet`, made on first use (torch and diffusers are imported lazily here)."""
    if name == "GuidedUNet":
        return _guided_unet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _guided_unet_class() -> type:
    import torch
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    class GuidedUNet(torch.nn.Module):
        """The pipeline's UNet (plain or compiled) with discriminator guidance applied to what
        it returns: called exactly as the pipeline calls a UNet, it calls the real one, then
        subtracts sqrt(1 - alpha_bar_t) * weight * grad_x log(D / (1 - D)) from the noise
        prediction at timesteps t > min_t.

        The discriminator sees what the sampler sees: x_t is the first 4 of the inpainting
        UNet's 9 input channels (x_t, mask, masked-image latents), the pipeline's scaled
        latents (the schedulers guided here leave the UNet input unscaled: `_check_guidable`);
        alpha_bar_t comes from the view's scheduler's `alphas_cumprod` at the timestep the UNet
        is called with. The gradient is taken in float32 (x_t cast, the discriminator kept in
        float32) whatever the pipeline's dtype, and the corrected prediction is rounded back
        to it once.

        With classifier-free guidance the pipeline calls the UNet on [x_t; x_t] (uncond, text)
        and mixes eps = eps_u + s (eps_c - eps_u) after. That mix is linear with weights summing
        to 1, so subtracting the same correction c from both halves gives eps - c, exactly the
        correction applied after the mix; both halves share x_t, so D's gradient is computed on
        one half and subtracted from both.

        The UNet is a registered submodule (the pipeline's `to` moves it, a no-op for the view,
        which has the cached pipeline's device and dtype); the discriminator is not, so no
        pipeline cast ever turns it into float16.
        """

        def __init__(self, unet: Any, dg: DiscriminatorGuidance, *, halves: bool, device: Any = None) -> None:
            super().__init__()
            self.unet = unet
            self.halves = halves
            self.weight = float(dg.weight)
            self.min_t = int(dg.min_t)
            self.scheduler: Any = None
            """Set by the painter: its pipeline's scheduler (alphas_cumprod)."""
            discriminator = dg.discriminator
            if device is not None:
                discriminator.to(device=device)
            discriminator.to(dtype=torch.float32).eval()
            self.__dict__["discriminator"] = discriminator  # unregistered: out of the pipeline's `to`
            self._alpha_bars: dict[str, Any] = {}

        # what the pipeline reads of its UNet
        @property
        def config(self) -> Any:
            return self.unet.config

        @property
        def dtype(self) -> Any:
            return self.unet.dtype

        @property
        def device(self) -> Any:
            return self.unet.device

        def __getattr__(self, name: str) -> Any:  # e.g. encoder_hid_proj, add_embedding
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(super().__getattr__("unet"), name)

        def alpha_bar(self, timesteps: Any) -> Any:
            cumprod = self.scheduler.alphas_cumprod
            key = str(timesteps.device)
            if key not in self._alpha_bars or self._alpha_bars[key][0] is not cumprod:
                self._alpha_bars[key] = (cumprod, cumprod.to(device=timesteps.device, dtype=torch.float32))
            return self._alpha_bars[key][1][timesteps]

        def correction(self, sample: Any, timestep: Any) -> Any | None:
            """sqrt(1 - alpha_bar_t) * weight * grad_x logit, float32, [B, 4, h, w] for the
            latents of one half; None when no sample's t is above min_t."""
            x_t = sample[:, :4]
            if self.halves:
                if x_t.shape[0] % 2:
                    raise RuntimeError(f"classifier-free guidance doubles the batch, but the UNet got {x_t.shape[0]}")
                x_t = x_t[: x_t.shape[0] // 2]
            batch = x_t.shape[0]
            t = torch.as_tensor(timestep, device=x_t.device).reshape(-1).long()
            t = t.expand(batch) if t.numel() == 1 else t[:batch]
            on = t > self.min_t
            if not bool(on.any()):
                return None
            with torch.inference_mode(False), torch.enable_grad():
                x = x_t.detach().to(torch.float32, copy=True).requires_grad_(True)
                logits = self.discriminator(x, t.clone())
                (grad,) = torch.autograd.grad(logits.float().sum(), x)  # each logit depends on its own x only
            scale = (1 - self.alpha_bar(t)).sqrt() * self.weight * on
            return scale.view(-1, 1, 1, 1) * grad

        def forward(self, sample: Any, timestep: Any, *args: Any, return_dict: bool = True, **kwargs: Any) -> Any:
            out = self.unet(sample, timestep, *args, return_dict=return_dict, **kwargs)
            eps = out[0] if isinstance(out, tuple) else out.sample
            c = self.correction(sample, timestep)
            if c is not None:
                if self.halves:
                    c = torch.cat([c, c])
                eps = (eps.float() - c).to(eps.dtype)
            return (eps, *out[1:]) if isinstance(out, tuple) else UNet2DConditionOutput(sample=eps)

    return GuidedUNet


def _check_guidable(scheduler: Any) -> None:
    """Guidance as dlcr applies it assumes an epsilon-predicting scheduler whose UNet input is
    x_t itself (PNDM, DDIM, DPM-Solver: init_noise_sigma 1); others are one line."""
    from dlcr_cli.errors import UsageError

    prediction = getattr(scheduler.config, "prediction_type", "epsilon")
    if prediction != "epsilon" or float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0:
        raise UsageError(f"discriminator guidance needs an epsilon-predicting scheduler on unscaled latents; "
                         f"{type(scheduler).__name__} ({prediction}) is not one (inpaint.scheduler)")


@dataclass
class _Compiled:
    """A torch.compile'd UNet, kept in the model cache per (model, dtype, device) so that painters
    share its compiled graphs. No `to`: its weights are the cached pipeline's UNet's, which
    the cache moves with the pipeline."""

    module: Any

    @classmethod
    def of(cls, unet: Any) -> _Compiled:
        import torch

        return cls(torch.compile(unet))


def _with_components(pipe: Any, swaps: dict[str, Any]) -> Any:
    """A pipeline of `pipe`'s modules (shared, not copied) with `swaps` in their place."""
    view = type(pipe).from_pipe(pipe, dtype=pipe.dtype, **swaps)  # from_pipe casts to its dtype (float32 if none)
    view.set_progress_bar_config(disable=True)
    return view


def _load_pipeline(model_id: str, device: Any, dtype: Any) -> Any:
    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    pipe = _from_pretrained(model_id, dtype)
    _check_dtype(pipe, dtype, model_id)
    pipe.set_progress_bar_config(disable=True)
    return _place(pipe, torch.device(device))


def _from_pretrained(model_id: str, dtype: Any) -> Any:
    """In float16, the checkpoint's fp16 weights (half the download) where it has them."""
    import torch
    from diffusers import AutoPipelineForInpainting

    options = {"dtype": dtype, "use_safetensors": True,
               "safety_checker": None, "requires_safety_checker": False}  # it blacks out harmless person crops
    if dtype == torch.float16:
        try:
            return AutoPipelineForInpainting.from_pretrained(model_id, variant="fp16", **options)
        except ValueError as err:  # diffusers: "... the `variant=fp16`, but no such modeling files are available"
            if "variant=fp16" not in str(err):
                raise
        except OSError:  # offline, with only the default files in the hub cache; else the same error again
            pass
        log.info("%s has no fp16 weight files: loading its default weights in float16", model_id)
    return AutoPipelineForInpainting.from_pretrained(model_id, **options)


def _check_dtype(pipe: Any, dtype: Any, model_id: str) -> None:
    """diffusers releases before 0.40 ignore `dtype=` (they know only `torch_dtype=`) with a
    notice under our log level: a float32 pipeline, twice the memory, where float16 was asked."""
    import diffusers

    from dlcr_cli.errors import Unavailable

    for name in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, name, None)
        if module is not None and module.dtype != dtype:
            raise Unavailable(f"diffusers {diffusers.__version__} loaded the {name} of {model_id} in "
                              f"{str(module.dtype).removeprefix('torch.')}, not the requested "
                              f"{str(dtype).removeprefix('torch.')}; upgrade diffusers (>=0.40)")


def _place(pipe: Any, device: Any) -> Any:
    import torch

    pipe.to(device)
    if device.type == "cuda":  # diffusers' advice: the UNet's convolutions run faster in NHWC on GPUs
        pipe.unet.to(memory_format=torch.channels_last)
    return pipe


SCHEDULERS = {"dpm": "DPMSolverMultistepScheduler"}


def _scheduler(pipe: Any, name: str) -> Any:
    """dpm: DPM-Solver++ multistep from the checkpoint's scheduler config ("default" keeps its own)."""
    import diffusers

    return getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)


def check_backend(s: Any) -> None:
    """Settings the backend cannot honour (`s`: InpaintSettings): one line, exit 2."""
    from dlcr_cli.errors import UsageError

    if s.backend in ("recolor", "transfer") and s.discriminator is not None:
        raise UsageError("discriminator guidance (--discriminator, inpaint.discriminator) needs the diffusion "
                         f"backend, not {s.backend}")


def make_painter(settings: Any, records: Iterable[Record] = ()) -> Painter:
    """The painter the settings ask for (`settings`: dlcr_cli.settings.Settings); `records`: every
    record read, where the transfer backend finds the target clothing ids' images."""
    s = settings.inpaint
    check_backend(s)
    if s.backend == "recolor":
        return RecolorPainter(s.batch_size)
    if s.backend == "transfer":
        return TransferPainter(records, s.batch_size)
    from dlcr_cli.runtime import resolve_device, resolve_dtype

    device = resolve_device(settings.device)
    loaded = load_guidance(s, device) if s.discriminator is not None else None  # its errors before the pipeline's
    painter = DiffusionPainter(
        s.model, device=device, dtype=resolve_dtype(s.dtype, device), batch_size=s.batch_size, size=s.size,
        steps=s.steps, guidance=s.guidance, strength=s.strength, scheduler=s.scheduler, compile=s.compile,
        offload_idle=settings.models.offload_idle, dg=loaded[0] if loaded else None,
    )
    if loaded:  # the latents it was made for against the pipeline's own (its VAE's scale at inpaint.size)
        _check_discriminator(loaded[1], s, latent_shape=painter.latent_shape)
    return painter


def load_guidance(s: Any, device: Any) -> tuple[DiscriminatorGuidance, dict]:
    """The discriminator of `s.discriminator` (`s`: InpaintSettings) on `device` in float32, with
    its digest for the painter's fingerprint, and its config. One made for another pipeline
    (or revision) is refused here, before that pipeline loads (one line, exit 78); its latent
    shape is checked once the pipeline has loaded (`_check_discriminator`)."""
    import torch

    from dlcr_cli.discriminator import discriminator_digest, load_discriminator

    folder = Path(s.discriminator).expanduser()
    discriminator, config = load_discriminator(folder, device)
    _check_discriminator(config, s, latent_shape=tuple(config.get("latent_shape") or ()))
    discriminator = discriminator.to(device=device, dtype=torch.float32).eval()
    guidance = DiscriminatorGuidance(discriminator, weight=s.dg_weight, min_t=s.dg_min_t,
                                     digest=discriminator_digest(folder))
    return guidance, config


def _check_discriminator(config: dict, s: Any, *, latent_shape: tuple[int, ...]) -> None:
    from dlcr_cli.discriminator import check_pipeline
    from dlcr_cli.fingerprint import model_revision

    check_pipeline(config, model=s.model, revision=model_revision(s.model), latent_shape=tuple(latent_shape),
                   folder=Path(s.discriminator).expanduser())


# --- running the plan -----------------------------------------------------------------------


def chunk_plan(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """The plan cut into runs of whole batches, each starting at a source's first variant:
    the unit processes share under a launcher. Whole batches keep every batch's companions
    (and so its pixels) those of a run in one process; whole sources keep a strip's tiles in
    one process."""
    chunks: list[list[Job]] = []
    start = 0
    for i in range(batch_size, len(jobs), batch_size):
        if jobs[i].variant == 0:
            chunks.append(jobs[start:i])
            start = i
    if start < len(jobs):
        chunks.append(jobs[start:])
    return chunks



def output_marks(jobs: list[Job], painter: Painter, digests: Any) -> dict[Path, str]:
    """The mark (dlcr_cli.fingerprint) of every output file: the painter's fingerprint, the
    job (source, variant, target, prompt, seed) and the content of the files it paints from
    (image, mask, and the parsing map for painters that read it; for a painter that paints
    from the target clothing id's images, every candidate image and map of the target: which
    one it takes depends on which can be read). An existing output counts
    as done only with the mark its job gives it now, so another seed, prompt table, model,
    setting, mask or source image paints again instead of skipping. A strip's mark covers
    all its tiles."""
    from dlcr_cli.fingerprint import fingerprint, record_files

    reads = record_files("image", "mask", "parsing") if painter.needs_parsing else record_files("image", "mask")
    files = {job.rel: reads(job.source) for job in jobs}
    donors = getattr(painter, "target_files", None)  # a painter that paints from the target's images
    targets = {job.target: donors(job.target) for job in jobs} if donors else {}
    flat = sorted({*(path for paths in files.values() for path in paths),
                   *(path for paths in targets.values() for path in paths)})
    digest = dict(zip(flat, digests.many(flat)))
    marks: dict[Path, str] = {}
    for job in jobs:
        donor = [[digest[path] for path in targets[job.target]], job.target_seed] if donors else []  # others unchanged
        mark = fingerprint("inpaint", painter.fingerprint, job.rel, job.variant, job.target, job.prompt, job.seed,
                           [digest[path] for path in files[job.rel]], *donor)
        marks[job.out] = fingerprint(marks[job.out], mark) if job.out in marks else mark
    return marks


def _save_marked(image: np.ndarray, path: Path, mark: str) -> None:
    from dlcr_cli.fingerprint import png_info

    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a killed run's half-written file of this output
        stale.unlink(missing_ok=True)
    save_atomic(Image.fromarray(image), path, pnginfo=png_info(mark))


@dataclass
class Batch:
    jobs: list[Job]
    done: list[bool]
    sources: dict[str, Source | str] = field(default_factory=dict)
    """rel -> the read source, or why it could not be read."""


def run_inpaint(jobs: list[Job], painter: Painter, *, fmt: str = "files", overwrite: bool = False,
                workers: int = 4, digests: Any = None) -> Iterator[Outcome]:
    """Generate, paste back and write every job; one outcome per generated image (or per
    source that failed), in plan order. `digests`: of the source files, saved by the caller
    (default: cached in the output folder, saved here)."""
    from dlcr_cli.fingerprint import CACHE_NAME, Digests

    if not jobs:
        return
    batches = [jobs[i:i + painter.batch_size] for i in range(0, len(jobs), painter.batch_size)]
    if digests is None:
        digests = Digests(jobs[0].out_dir / CACHE_NAME)
        marks = output_marks(jobs, painter, digests)
        digests.save()
    else:
        marks = output_marks(jobs, painter, digests)
    writer = _StripWriter(marks) if fmt == "strip" else None
    failed: set[str] = set()
    read = partial(_read_batch, overwrite=overwrite, needs_parsing=painter.needs_parsing, marks=marks)
    with ThreadPoolExecutor(workers, thread_name_prefix="dlcr-write") as pool:
        for future in prefetch(read, batches, workers=min(workers, 2), depth=2):
            batch = future.result()
            if all(batch.done):
                for job in batch.jobs:
                    if writer is not None:
                        yield from writer.add(job, None, done=True)
                    else:
                        yield Outcome(generated_record(job), skipped=True)
                continue
            yield from _paint_batch(batch, painter, pool, writer, failed, marks)


def _read_batch(jobs: list[Job], overwrite: bool, needs_parsing: bool, marks: dict[Path, str]) -> Batch:
    from dlcr_cli.fingerprint import has_mark

    batch = Batch(jobs, [not overwrite and has_mark(job.out, marks[job.out]) for job in jobs])
    if all(batch.done):
        return batch
    for job in jobs:
        if job.rel not in batch.sources:
            try:
                batch.sources[job.rel] = read_source(job.source, needs_parsing)
            except ItemError as err:
                batch.sources[job.rel] = str(err)
    return batch


def _paint_batch(batch: Batch, painter: Painter, pool: ThreadPoolExecutor, writer: _StripWriter | None,
                 failed: set[str], marks: dict[Path, str]) -> Iterator[Outcome]:
    todo = [job for job in batch.jobs if isinstance(batch.sources[job.rel], Source)]
    extra = {"targets": [j.target for j in todo], "target_seeds": [j.target_seed for j in todo]} \
        if getattr(painter, "needs_targets", False) else {}
    painted = painter.paint([batch.sources[j.rel] for j in todo], [j.prompt for j in todo], [j.seed for j in todo],
                            **extra)
    results = {id(job): paste_back(batch.sources[job.rel], image) for job, image in zip(todo, painted)}
    writes = {id(job): pool.submit(_save_marked, results[id(job)], job.out, marks[job.out])
              for job, done in zip(batch.jobs, batch.done) if writer is None and not done and id(job) in results}
    for job, done in zip(batch.jobs, batch.done):
        problem = batch.sources[job.rel]
        if isinstance(problem, str):
            if job.rel not in failed:
                failed.add(job.rel)
                yield Outcome(job.source, problem)
        elif writer is not None:
            yield from writer.add(job, None if done else results[id(job)], done)
        else:
            if id(job) in writes:
                writes[id(job)].result()
            yield Outcome(generated_record(job), skipped=done)


class _StripWriter:
    """The released format: one PNG per source with its variants side by side, and a .txt with
    one prompt per line; written when the source's last variant is painted."""

    def __init__(self, marks: dict[Path, str]) -> None:
        self.marks = marks
        self.tiles: dict[str, dict[int, np.ndarray | None]] = {}
        self.jobs: dict[str, list[Job]] = {}

    def add(self, job: Job, tile: np.ndarray | None, done: bool) -> Iterator[Outcome]:
        self.tiles.setdefault(job.rel, {})[job.variant] = tile
        self.jobs.setdefault(job.rel, []).append(job)
        if len(self.tiles[job.rel]) < job.of:
            return
        tiles, jobs = self.tiles.pop(job.rel), sorted(self.jobs.pop(job.rel), key=lambda j: j.variant)
        if not done:
            strip = np.concatenate([tiles[k] for k in range(job.of)], axis=1)
            write_text_atomic("".join(j.prompt + "\n" for j in jobs), job.out.with_suffix(".txt"))
            _save_marked(strip, job.out, self.marks[job.out])  # last: the mark says the .txt is there
        yield from (Outcome(generated_record(j), skipped=done) for j in jobs)


def generated_record(job: Job) -> Record:
    """The record of a generated image: the source's fields (its description dropped: it is of
    the old clothes), the new image, and where it came from."""
    data = job.source.model_dump(exclude_unset=True)
    data.pop("description", None)
    data.update(
        image=str(job.out.resolve()), rel=job.out_rel, source=job.source.image, target_clothes=job.target,
        prompt=job.prompt, variant=job.variant, seed=job.seed,
    )
    return Record.model_validate(data)


# --- the contact sheet ----------------------------------------------------------------------


def write_preview(jobs: list[Job], fmt: str, path: Path, sources: int = 6) -> int:
    """A contact sheet of the first `sources` source images whose variants were all written:
    source, mask (tinted) and each variant with its prompt. Returns how many rows it holds."""
    from dlcr_cli.pictures import SheetRow, contact_sheet

    rows = []
    for rel, group in _by_source(jobs):
        if len(rows) == sources:
            break
        try:
            source = read_source(group[0].source, needs_parsing=False)
            variants = _written_variants(group, fmt)
        except (ItemError, OSError):
            continue  # a failed source has no variants to show
        rows.append(SheetRow(rel, source.image, source.mask, [(v, j.prompt) for v, j in zip(variants, group)]))
    if rows:
        save_atomic(contact_sheet(rows), path)
    return len(rows)


def _by_source(jobs: list[Job]) -> Iterator[tuple[str, list[Job]]]:
    from itertools import groupby

    for rel, group in groupby(jobs, key=lambda job: job.rel):
        yield rel, list(group)


def _written_variants(group: list[Job], fmt: str) -> list[np.ndarray]:
    if fmt == "strip":
        strip = np.asarray(load_rgb(group[0].out))
        return np.split(strip, group[0].of, axis=1)
    return [np.asarray(load_rgb(job.out)) for job in group]

