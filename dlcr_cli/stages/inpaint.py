"""inpaint: clothes-changed images, K per training image (SPEC.md, stage 1).

Every source image gets K target clothing ids, drawn without replacement from the clothing
ids that have a prompt, its own excluded; variant k is the source with its clothing region
repainted for target k's prompt, pasted back onto the source with the mask so that every
pixel outside the mask is exactly the source's.

Reproducible and resumable: the targets of a source come from (seed, source rel path), those
of a video frame from (seed, its tracklet), so that all frames of a tracklet share their K
targets; the noise seed of variant k from (seed, rel, k), per frame; the jobs are cut into batches by their place
in the plan, never by what is done, so a run resumed after a crash computes every batch
with the same companions as an uninterrupted run and writes byte-identical files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
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
        targets = draw_targets(seed, target_key(source, rel), source.clothes, pool, variants)
        fewer += len(targets) < variants
        for k, target in enumerate(targets):
            jobs.append(Job(source, rel, k, len(targets), target, prompts[target], variant_seed(seed, rel, k),
                            output_rel(rel, k, fmt), out))
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
        raise ItemError("no parsing map in the record (the recolor backend needs one; run dlcr mask)")
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


class DiffusionPainter:
    """A diffusers inpainting pipeline at the paper's settings: (image, mask, prompt) triples
    expanded by hand, one CPU generator per output (the same noise on any device, and the same
    images however a batch is split), resized to the working size and back.

    The model cache's pipeline is shared by every painter of the process and never changed:
    a painter with another scheduler or a compiled UNet calls its own pipeline (`pipe`) made of
    the cached one's modules, with those swapped in.
    """

    needs_parsing = False

    def __init__(self, model_id: str, *, device: Any, dtype: Any, batch_size: int, size: tuple[int, int],
                 steps: int, guidance: float, strength: float, scheduler: str, compile: bool = False,
                 offload_idle: bool = True) -> None:
        from dlcr_cli.cache import CACHE
        from dlcr_cli.runtime import OomSplitter

        self.batch_size = batch_size
        self.height, self.width = size
        self.call = {"num_inference_steps": steps, "guidance_scale": guidance, "strength": strength}
        from dlcr_cli.fingerprint import model_revision

        self.fingerprint = f"diffusion {model_id} {model_revision(model_id)} {size} {self.call} {scheduler} {dtype}"
        cached = CACHE.get("inpainting", model_id, dtype=dtype, device=device, setting="inpaint.model",
                           offload_idle=offload_idle, load=partial(_load_pipeline, model_id, device, dtype))
        swaps = {}
        if scheduler != "default":
            swaps["scheduler"] = _scheduler(cached, scheduler)
        if compile:
            swaps["unet"] = CACHE.get("compiled-unet", model_id, dtype=dtype, device=device, setting="inpaint.compile",
                                      offload_idle=False, load=partial(_Compiled.of, cached.unet)).module
        self.pipe = _with_components(cached, swaps) if swaps else cached
        self.batches = OomSplitter("inpaint")

    def paint(self, sources: list[Source], prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        return self.batches.run(self._paint, list(zip(sources, prompts, seeds)))

    def _paint(self, triples: list[tuple[Source, str, int]]) -> list[np.ndarray]:
        import torch

        size = (self.width, self.height)
        images = [Image.fromarray(s.image).resize(size, Image.BICUBIC) for s, _, _ in triples]
        masks = [Image.fromarray(s.mask.astype(np.uint8) * 255).resize(size, Image.NEAREST) for s, _, _ in triples]
        generators = [torch.Generator("cpu").manual_seed(seed) for _, _, seed in triples]
        with torch.inference_mode():
            result = self.pipe(prompt=[p for _, p, _ in triples], image=images, mask_image=masks, height=self.height,
                               width=self.width, generator=generators, output_type="np", **self.call)
        out = []
        for (source, _, _), painted in zip(triples, result.images):
            pixels = Image.fromarray(np.clip(painted * 255 + 0.5, 0, 255).astype(np.uint8))
            out.append(np.asarray(pixels.resize((source.image.shape[1], source.image.shape[0]), Image.BICUBIC)))
        return out


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


def make_painter(settings: Any) -> Painter:
    """The painter the settings ask for (`settings`: dlcr_cli.settings.Settings)."""
    s = settings.inpaint
    if s.backend == "recolor":
        return RecolorPainter(s.batch_size)
    from dlcr_cli.runtime import resolve_device, resolve_dtype

    device = resolve_device(settings.device)
    return DiffusionPainter(
        s.model, device=device, dtype=resolve_dtype(s.dtype, device), batch_size=s.batch_size, size=s.size,
        steps=s.steps, guidance=s.guidance, strength=s.strength, scheduler=s.scheduler, compile=s.compile,
        offload_idle=settings.models.offload_idle,
    )


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
    (image, mask, and the parsing map for painters that read it). An existing output counts
    as done only with the mark its job gives it now, so another seed, prompt table, model,
    setting, mask or source image paints again instead of skipping. A strip's mark covers
    all its tiles."""
    from dlcr_cli.fingerprint import fingerprint, record_files

    reads = record_files("image", "mask", "parsing") if painter.needs_parsing else record_files("image", "mask")
    files = {job.rel: reads(job.source) for job in jobs}
    flat = [path for paths in files.values() for path in paths]
    digest = dict(zip(flat, digests.many(flat)))
    marks: dict[Path, str] = {}
    for job in jobs:
        mark = fingerprint("inpaint", painter.fingerprint, job.rel, job.variant, job.target, job.prompt, job.seed,
                           [digest[path] for path in files[job.rel]])
        marks[job.out] = fingerprint(marks[job.out], mark) if job.out in marks else mark
    return marks


def _save_marked(image: np.ndarray, path: Path, mark: str) -> None:
    from dlcr_cli.fingerprint import png_info

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
    painted = painter.paint([batch.sources[j.rel] for j in todo], [j.prompt for j in todo], [j.seed for j in todo])
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

