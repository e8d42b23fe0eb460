"""discriminator: the stage that trains the discriminator of discriminator guidance from
inpaint records (docs/method.md, stage 1): the inputs and their digests, the run folder's
resume checks, and the training run. The model, latents and epochs are dlcr_cli.discriminator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dlcr_cli.discriminator import Item
    from dlcr_cli.records import Record
    from dlcr_cli.settings import Settings

# Settings a resumed run may change: they do not alter what the finished epochs computed.
RESUMABLE_CHANGES = {"epochs", "batch_encode"}


# --- the inputs --------------------------------------------------------------------------------


@dataclass
class Inputs:
    real: list[Item]
    fake: list[Item]
    fake_source: list[str]
    """The source image path of each generated image (its group for the held-out split)."""
    real_paths: list[str]
    pairs: int

    def record(self) -> dict[str, dict[str, str]]:
        """What the run is trained on: every image by path (and tile) and content digest."""
        return {"real": {item.name: item.digest for item in self.real},
                "generated": {item.name: item.digest for item in self.fake}}


def read_inputs(source: str, records: list[Record]) -> tuple[list[tuple[str, str, int | None]], list[str]]:
    """(generated image, source image, variant) of every record, and the distinct sources in
    order of appearance. No generated record at all: exit 66; a record without `source`: 65."""
    from dlcr_cli.errors import InputMissing, MalformedInput

    name = "<stdin>" if source == "-" else source
    base = Path.cwd() if source == "-" else Path(source).expanduser().resolve().parent
    with_source = [r for r in records if getattr(r, "source", None)]
    if not with_source:
        raise InputMissing(f"no generated records (with a `source`) in {name}: give dlcr inpaint's records")
    pairs, sources = [], {}
    for number, record in enumerate(records, start=1):
        origin = getattr(record, "source", None)
        if not origin or not isinstance(origin, str):
            raise MalformedInput(f"{name}: record {number} ({record.image}) has no `source`: every record must be "
                                 f"a generated one of dlcr inpaint")
        path = origin if Path(origin).is_absolute() else str(base / origin)
        variant = getattr(record, "variant", None)
        pairs.append((record.image, path, variant if isinstance(variant, int) else None))
        sources.setdefault(path, None)
    return pairs, list(sources)


def _size(path: str, what: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    from dlcr_cli.errors import InputMissing, MalformedInput

    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise InputMissing(f"{what} image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise MalformedInput(f"cannot read {what} image {path} ({err})") from None


def collect(source: str, records: list[Record], digests: Any) -> Inputs:
    """The real and generated items of the records, each file checked and digested. A
    generated image exactly n >= 2 times as wide as its source (same height) is a strip of n
    tiles (dlcr inpaint --format strip): its tile `variant` is the generated image."""
    from dlcr_cli.discriminator import Item
    from dlcr_cli.errors import MalformedInput

    pairs, sources = read_inputs(source, records)
    sizes = {path: _size(path, "source") for path in sources}
    tiles: list[tuple[int | None, int | None]] = []
    for image, origin, variant in pairs:
        width, height = _size(image, "generated")
        sw, sh = sizes[origin]
        n = width // sw if sw and height == sh and width % sw == 0 else 1
        if n >= 2:
            if variant is None or not 0 <= variant < n:
                raise MalformedInput(f"{image} is a strip of {n} tiles but its record's variant is {variant!r}")
            tiles.append((variant, n))
        else:
            tiles.append((None, None))
    found = digests.many([*sources, *(image for image, _, _ in pairs)])
    real = [Item(path, digest) for path, digest in zip(sources, found)]
    fake = [Item(image, digest, tile, n)
            for (image, _, _), digest, (tile, n) in zip(pairs, found[len(sources):], tiles)]
    real_count, fake_count = len(real), len({item.name for item in fake})
    if real_count < 2 or fake_count < 2:
        raise MalformedInput(f"{source}: {real_count} real (source) and {fake_count} generated images; training and "
                             f"holding out need at least 2 of each")
    return Inputs(real, fake, [origin for _, origin, _ in pairs], sources, len(pairs))


# --- the run folder ----------------------------------------------------------------------------


def run_settings(settings: Settings, revision: str, dtype: Any) -> dict[str, Any]:
    """What a resumed run must keep: the pipeline, its size, the VAE's dtype, the training settings."""
    s = settings.discriminator
    return {
        "pipeline": settings.inpaint.model, "pipeline_revision": revision, "image_size": list(settings.inpaint.size),
        "vae_dtype": str(dtype).removeprefix("torch."),
        "discriminator": {k: v for k, v in s.model_dump(mode="json").items() if k not in RESUMABLE_CHANGES},
    }


def check_folder(out: Path, resume: bool, now: dict[str, Any], inputs: dict[str, dict[str, str]]) -> bool:
    """Whether there is a run to resume. A run is never overwritten (exit 2 without --resume);
    a resumed one must keep its settings and inputs (exit 2 naming what changed)."""
    import json

    from dlcr_cli.discriminator import RUN_FILE, STATE_FILE, RunChanged
    from dlcr_cli.errors import UsageError

    has_run = (out / STATE_FILE).is_file()
    if has_run and not resume:
        raise UsageError(f"{out} holds a discriminator run: --resume to continue it, or another --out")
    if not has_run:
        return False
    try:
        before = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
        settings, used = before["settings"], before["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RunChanged(f"--resume: {out} has no readable record of its settings and inputs ({RUN_FILE}); "
                         f"start a new run with another --out") from None
    changed = _changed_settings(settings, now)
    if changed:
        raise RunChanged(f"--resume keeps the run's settings; these differ from {out / RUN_FILE}: {', '.join(changed)}")
    problem = _changed_inputs(used, inputs)
    if problem:
        raise RunChanged(f"--resume continues a run on the images it started with; {problem}")
    return True


def _changed_settings(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    changed = []
    for key in ("pipeline", "image_size", "vae_dtype"):
        if before.get(key) != now[key]:
            changed.append("inpaint.model" if key == "pipeline" else "inpaint.size" if key == "image_size"
                           else "discriminator.dtype")
    if before.get("pipeline_revision") and now["pipeline_revision"] and before["pipeline_revision"] != now["pipeline_revision"]:
        changed.append("the revision of inpaint.model")
    old = before.get("discriminator", {})
    changed += [f"discriminator.{k}" for k in sorted(now["discriminator"]) if old.get(k) != now["discriminator"][k]]
    return changed


def _changed_inputs(before: dict[str, dict[str, str]], now: dict[str, dict[str, str]]) -> str:
    for role in ("real", "generated"):
        old, new = before.get(role, {}), now[role]
        added = [k for k in new if k not in old]
        removed = [k for k in old if k not in new]
        edited = [k for k in new if k in old and old[k] != new[k]]
        for what, names in (("changed", edited), ("added", added), ("no longer given", removed)):
            if names:
                more = f" and {len(names) - 1} more" if len(names) > 1 else ""
                return f"{role} image {what} since: {names[0]}{more}"
    return ""


# --- the run -----------------------------------------------------------------------------------


def run_discriminator(source: str, out: Path, settings: Settings, *, resume: bool = False,
                      as_json: bool = False) -> dict[str, Any]:
    """Train (or go on training) the discriminator in `out`; returns the final config."""
    import json
    import sys
    from functools import partial

    import torch

    from dlcr_cli import discriminator as dm
    from dlcr_cli.cache import CACHE
    from dlcr_cli.console import log, progress
    from dlcr_cli.fingerprint import CACHE_NAME, Digests, fingerprint, model_revision
    from dlcr_cli.inputs import read_records
    from dlcr_cli.runtime import resolve_device, resolve_dtype

    s, model_id = settings.discriminator, settings.inpaint.model
    height, width = settings.inpaint.size
    records = list(read_records(source))  # input errors before anything is loaded
    out = Path(out).expanduser()
    digests = Digests(out / CACHE_NAME)
    inputs = collect(source, records, digests)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(s.dtype, device)
    revision = model_revision(model_id)
    resuming = check_folder(out, resume, run_settings(settings, revision, dtype), inputs.record())
    if resume and not resuming:
        log.info("discriminator: no run in %s to resume: starting one", out)
    log.info("discriminator: %d real and %d generated images (%d records)", len(inputs.real), len(inputs.fake),
             inputs.pairs)

    from dlcr_cli.stages.inpaint import _load_pipeline

    pipe = CACHE.get("inpainting", model_id, dtype=dtype, device=device, setting="inpaint.model",
                     offload_idle=settings.models.offload_idle, load=partial(_load_pipeline, model_id, device, dtype))
    vae, scheduler = pipe.vae, pipe.scheduler
    revision = model_revision(model_id) or revision  # a hub id's first load fills the hub cache
    out.mkdir(parents=True, exist_ok=True)
    dm.write_json(out / dm.RUN_FILE, {"settings": run_settings(settings, revision, dtype), "inputs": inputs.record()})
    digests.save()

    scaling = float(vae.config.scaling_factor)
    cache = dm.LatentCache(out / dm.LATENTS_FILE,
                           fingerprint("latents", dm.VERSION, model_id, revision, [height, width], str(vae.dtype),
                                       "mean", scaling))
    everything = [*inputs.real, *inputs.fake]
    distinct = len({item.key for item in everything})
    cached = len({item.key for item in everything if item.key in cache.rows})
    log.info("discriminator: latents of %d of %d images from %s; encoding %d", cached, distinct,
             out / dm.LATENTS_FILE, distinct - cached)
    with progress("encode", distinct - cached) as bar:
        dm.encode_all(everything, cache, vae, (height, width), s.batch_encode, on_batch=bar.advance)

    held = dm.split_groups(inputs.real_paths, s.held_out, s.seed)
    real_train = [item for item, path in zip(inputs.real, inputs.real_paths) if path not in held]
    real_held = [item for item, path in zip(inputs.real, inputs.real_paths) if path in held]
    fake_train = [item for item, origin in zip(inputs.fake, inputs.fake_source) if origin not in held]
    fake_held = [item for item, origin in zip(inputs.fake, inputs.fake_source) if origin in held]
    tensors = {name: dm.stack(items, cache) for name, items in
               (("real", real_train), ("fake", fake_train), ("real_held", real_held), ("fake_held", fake_held))}
    cache.rows.clear()  # the stacked copies are all that is needed now
    latent_shape = list(tensors["real"].shape[1:])
    alphas = scheduler.alphas_cumprod.detach().to("cpu", torch.float32).clone()
    timesteps = int(scheduler.config.num_train_timesteps)

    architecture = {"in_channels": latent_shape[0], "width": s.width, "levels": s.levels}
    model = dm.build(architecture, seed=s.seed).to(device)
    c = dm.TrainConfig(epochs=s.epochs, lr=s.lr, weight_decay=s.weight_decay, batch_size=s.batch_size, seed=s.seed)
    optimizer = dm.make_optimizer(model, c)
    done, history = 0, {"loss": [], "held_out_accuracy": []}
    if resuming:
        done, history = dm.load_state(out, model, optimizer)
        history = {k: v[:done] for k, v in history.items()}
        log.info("discriminator: resuming %s after epoch %d of %d", out, done, s.epochs)

    def config() -> dict[str, Any]:
        return {
            "format": dm.FORMAT, "version": dm.VERSION, "pipeline": model_id, "pipeline_revision": revision,
            "image_size": [height, width], "latent_shape": latent_shape, "scaling_factor": scaling,
            "num_train_timesteps": timesteps, "latents": "mean of the VAE's latent distribution x scaling_factor",
            "vae_dtype": str(vae.dtype).removeprefix("torch."), "timestep_input": "t / 999",
            "architecture": {**architecture, "layers_per_level": dm.LAYERS_PER_LEVEL},
            "training": {
                "epochs": len(history["loss"]), "epochs_planned": s.epochs, "lr": s.lr,
                "weight_decay": s.weight_decay, "batch_size": s.batch_size, "seed": s.seed, "pairs": inputs.pairs,
                "held_out": s.held_out,
                "images": {"train": {"real": len(real_train), "generated": len(fake_train)},
                           "held_out": {"real": len(real_held), "generated": len(fake_held)}},
                "steps_per_epoch": dm.steps_per_epoch(len(real_train), len(fake_train), s.batch_size),
                "loss": history["loss"], "held_out_accuracy": history["held_out_accuracy"],
                "accuracy": "balanced: the mean of the held-out real and generated images' accuracies",
            },
        }

    log.info("discriminator: training on %d real and %d generated latents %s, holding out %d and %d",
             len(real_train), len(fake_train), "x".join(map(str, latent_shape)), len(real_held), len(fake_held))
    steps = dm.steps_per_epoch(len(real_train), len(fake_train), s.batch_size)
    for epoch in range(done, s.epochs):
        with progress(f"epoch {epoch + 1}/{s.epochs}", steps, unit="steps") as bar:
            def step(loss: float, bar=bar, epoch=epoch) -> None:
                bar.advance()
                bar.describe(f"epoch {epoch + 1}/{s.epochs} loss {loss:.3f}")

            loss = dm.train_epoch(model, optimizer, tensors["real"], tensors["fake"], alphas, epoch, c, device,
                                  on_step=step)
        accuracy = dm.held_out_accuracy(model, tensors["real_held"], tensors["fake_held"], alphas, s.seed, device)
        history["loss"].append(loss)
        history["held_out_accuracy"].append(accuracy)
        dm.write_products(out, model, config())
        dm.save_state(out, model, optimizer, epoch + 1, history)  # last: the products of its epoch are written
        log.info("epoch %d/%d: loss %.4f, held-out accuracy %.3f", epoch + 1, s.epochs, loss, accuracy)
    if done >= s.epochs:
        log.info("discriminator: nothing to do: %s has finished its %d epochs", out, done)
    final = config()
    log.info("discriminator: %s (dlcr inpaint ... --discriminator %s)", out / dm.WEIGHTS_FILE, out)
    if as_json:
        sys.stdout.write(json.dumps(final["training"]) + "\n")
    return final
