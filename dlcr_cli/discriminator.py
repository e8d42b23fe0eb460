"""The time-conditioned discriminator of discriminator guidance (DLCR, after Kim et al., ICML 2023,
"Refining Generative Process with Discriminator Guidance in Score-based Diffusion Models").

A small network learns to tell the latents of real training images from those of a first,
unguided generation pass, at every noise level of the inpainting pipeline's own schedule;
`dlcr inpaint --discriminator DIR` then moves each denoising step along the gradient of its
logit (dlcr_cli.stages.inpaint.GuidedUNet). Everything it sees is what the pipeline's sampler
sees (docs/method.md):

- latents: the pipeline VAE's latents of the images at the inpaint working size
  (`inpaint.size`), the mean of the VAE's latent distribution (deterministic, so cacheable),
  multiplied by `vae.config.scaling_factor`, as the sampler's latents are. (The authors' code
  trains on unscaled latents of [0, 255] pixels: a defect not copied.)
- noise: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with the pipeline scheduler's own
  `alphas_cumprod`, t uniform in 0..num_train_timesteps-1. (The authors' code uses another
  schedule than SD's: not copied either.)

The architecture is built from diffusers' blocks, in the spirit of ADM's classifier encoder
(not a copy of it): the timestep enters as s = t / 999 (the module divides), embedded
sinusoidally at scale 1000 (so the frequencies resolve single steps) and through an MLP; a 3x3
input convolution of `width` channels; `levels` levels of two scale-shift-normed ResNet
blocks (diffusers' DownBlock2D) of width x 1, 2, 3, 4, 4... channels with a stride-2
convolution between levels; a mid block (ResNet, self-attention, ResNet); GroupNorm + SiLU;
attention pooling (a learned query plus the mean of the last feature map attending over its
positions, no positional table, so any latent size works); a linear layer giving one logit.

Small latents: a stride-2 3x3 convolution with padding 1 maps a side of n to ceil(n / 2), so a
side of 1 stays 1: levels that would go below 1x1 keep working at 1x1 (4x8x4 latents reach 1x1
after the third level's downsampling; nothing crashes, nothing is padded).

The folder `dlcr discriminator` writes (and `load_discriminator` reads): discriminator.safetensors
(the weights) and discriminator.json (FORMAT, the pipeline and latents it was trained for, the
architecture, the training record); its training state besides (see `train`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dlcr_cli.errors import ConfigError, InputMissing, MalformedInput, UsageError

FORMAT = "dlcr-discriminator"
VERSION = 1
CONFIG_FILE = "discriminator.json"
WEIGHTS_FILE = "discriminator.safetensors"
STATE_FILE = "state.safetensors"
"""The training state: weights, optimizer, epochs done (resume)."""
RUN_FILE = "run.json"
"""The settings and inputs the run was started with (resume checks them)."""
LATENTS_FILE = "latents.safetensors"
"""The cached latents, by image content digest."""

LAYERS_PER_LEVEL = 2
TIME_SCALE = 1000.0
"""The sinusoidal embedding of s = t / 999 is taken of TIME_SCALE * s (SD's UNet embeds t itself)."""
MAX_T = 999


# --- the architecture --------------------------------------------------------------------------


def level_channels(width: int, levels: int) -> list[int]:
    """Channels of each level: width x 1, 2, 3, 4, then 4 (ADM's 64x64 classifier: 1, 2, 3, 4)."""
    return [width * min(i + 1, 4) for i in range(levels)]


class AttentionPool(nn.Module):
    """One vector per sample from a feature map [B, C, h, w]: a query (a learned vector plus the
    mean of the map) attends over the map's positions and itself (as ADM's and CLIP's pooling,
    without their positional table, which would tie the module to one latent size)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, channels))
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # [B, hw, C]
        query = tokens.mean(dim=1, keepdim=True) + self.query
        keys = torch.cat([query, tokens], dim=1)
        out, _ = self.attention(query, keys, keys, need_weights=False)
        return out[:, 0]


class Discriminator(nn.Module):
    """(latents [B, C, h, w], timesteps [B] in 0..999) -> logits [B] float32: log(D / (1 - D)),
    D = sigmoid(logit) the probability that the (noisy) latent is of a real image."""

    def __init__(self, in_channels: int = 4, width: int = 128, levels: int = 4) -> None:
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.unets.unet_2d_blocks import DownBlock2D, UNetMidBlock2D

        if min(in_channels, width, levels) < 1:
            raise ValueError(f"in_channels, width and levels must be positive, got {in_channels}, {width}, {levels}")
        self.in_channels, self.width, self.levels = in_channels, width, levels
        groups = math.gcd(32, width)  # divides every level's channels (multiples of width)
        temb = 4 * width
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0, scale=TIME_SCALE)
        self.time_embedding = TimestepEmbedding(width, temb)
        self.conv_in = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        blocks, previous = [], width
        for i, channels in enumerate(level_channels(width, levels)):
            blocks.append(DownBlock2D(
                in_channels=previous, out_channels=channels, temb_channels=temb, num_layers=LAYERS_PER_LEVEL,
                resnet_groups=groups, resnet_time_scale_shift="scale_shift", add_downsample=i < levels - 1,
                downsample_padding=1,
            ))
            previous = channels
        self.down = nn.ModuleList(blocks)
        head_dim = 64 if previous % 64 == 0 else previous
        self.mid = UNetMidBlock2D(
            in_channels=previous, temb_channels=temb, resnet_groups=groups, attn_groups=groups,
            resnet_time_scale_shift="scale_shift", attention_head_dim=head_dim,
        )
        self.norm_out = nn.GroupNorm(groups, previous)
        self.pool = AttentionPool(previous, heads=previous // head_dim)
        self.head = nn.Linear(previous, 1)

    @property
    def architecture(self) -> dict[str, int]:
        return {"in_channels": self.in_channels, "width": self.width, "levels": self.levels}

    def forward(self, latents: Tensor, timesteps: Tensor) -> Tensor:
        dtype = self.conv_in.weight.dtype
        batch = latents.shape[0]
        t = torch.as_tensor(timesteps, device=latents.device).reshape(-1)
        if t.numel() == 1 and batch != 1:
            t = t.expand(batch)
        s = t.to(torch.float32) / MAX_T
        emb = self.time_embedding(self.time_proj(s).to(dtype))
        h = self.conv_in(latents.to(dtype))
        for block in self.down:
            h, _ = block(h, emb)
        h = self.mid(h, emb)
        h = nn.functional.silu(self.norm_out(h))
        return self.head(self.pool(h)).reshape(batch).float()


def build(architecture: dict[str, int], seed: int | None = None) -> Discriminator:
    """A Discriminator of `architecture`, its initial weights from `seed` (the global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return Discriminator(**architecture)


# --- the folder: reading, checking, digesting ----------------------------------------------------


def load_discriminator(folder: Path, device: Any) -> tuple[Discriminator, dict]:
    """The discriminator of a `dlcr discriminator` folder on `device` (float32, eval mode) and its
    config (discriminator.json). Missing folder or files: exit 66; unreadable or foreign JSON,
    weights that do not fit the architecture: exit 65; each one line naming the path."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    config = read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise InputMissing(f"discriminator weights not found: {weights}")
    try:
        model = Discriminator(**_architecture(config, folder))
    except (TypeError, ValueError) as err:
        raise MalformedInput(f"{folder / CONFIG_FILE}: bad architecture ({err})") from None
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError) as err:
        raise MalformedInput(f"{weights}: not a readable safetensors file ({' '.join(str(err).split())})") from None
    problem = _mismatch(model, tensors)
    if problem:
        raise MalformedInput(f"{weights}: the weights do not match the architecture in {CONFIG_FILE} ({problem})")
    model.load_state_dict(tensors)
    return model.to(device=device, dtype=torch.float32).eval(), config


def read_config(folder: Path) -> dict:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputMissing(f"discriminator folder not found: {folder} (make one with dlcr discriminator)")
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputMissing(f"{path} not found: {folder} is no dlcr discriminator folder") from None
    except (OSError, ValueError) as err:
        raise MalformedInput(f"{path}: not valid JSON ({' '.join(str(err).split())})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise MalformedInput(f"{path}: not a dlcr discriminator config (format is not {FORMAT!r})")
    if not isinstance(config.get("version"), int) or config["version"] > VERSION:
        raise MalformedInput(f"{path}: version {config.get('version')!r} is not one this dlcr reads (<= {VERSION}); "
                             f"upgrade dlcr")
    return config


def _architecture(config: dict, folder: Path) -> dict[str, int]:
    arch = config.get("architecture")
    keys = ("in_channels", "width", "levels")
    if not isinstance(arch, dict) or not all(isinstance(arch.get(k), int) and not isinstance(arch.get(k), bool)
                                             for k in keys):
        raise MalformedInput(f"{folder / CONFIG_FILE}: architecture must hold integers {', '.join(keys)}")
    return {k: arch[k] for k in keys}


def _mismatch(model: nn.Module, tensors: dict[str, Tensor]) -> str:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(k for k in set(expected) & set(tensors) if tuple(expected[k].shape) != tuple(tensors[k].shape))
    parts = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)):
        if names:
            parts.append(f"{what}: {names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else ""))
    return "; ".join(parts)


def check_pipeline(config: dict, *, model: str, revision: str, latent_shape: tuple[int, int, int],
                   folder: Path) -> None:
    """One line, exit 78, when the discriminator of `folder` (its `config`) was trained for
    another pipeline (model id, or revision where both are known) or another latent shape."""
    how = f"retrain it: dlcr discriminator GENERATED.jsonl --out DIR --set inpaint.model={model}"
    trained = config.get("pipeline")
    if not _same_model(trained, model):
        raise ConfigError(f"discriminator {folder} was trained for pipeline {trained!r}, not inpaint.model "
                          f"{model!r}; use that pipeline or {how}")
    before = config.get("pipeline_revision") or ""
    if before and revision and before != revision:
        raise ConfigError(f"discriminator {folder} was trained for another revision of {model!r} ({before[:12]}, "
                          f"now {revision[:12]}); {how}")
    shape = tuple(config.get("latent_shape") or ())
    if shape != tuple(latent_shape):
        size = config.get("image_size") or ()
        trained_at = f" (images {size[0]}x{size[1]})" if len(size) == 2 else ""
        raise ConfigError(f"discriminator {folder} was trained on latents {_shape(shape)}{trained_at}, but this "
                          f"pipeline's are {_shape(latent_shape)}; paint at its size (inpaint.size) or {how} "
                          f"--set inpaint.size=HxW")


def _same_model(a: Any, b: str) -> bool:
    if a == b:
        return True
    if not isinstance(a, str):
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape) or "unknown"


def discriminator_digest(folder: Path) -> str:
    """A content digest of the folder's weights and config (what identifies the discriminator
    in the marks of the images it guides)."""
    from dlcr_cli.fingerprint import file_digest, fingerprint

    folder = Path(folder).expanduser()
    try:
        return fingerprint(FORMAT, file_digest(folder / WEIGHTS_FILE), file_digest(folder / CONFIG_FILE))
    except FileNotFoundError as err:
        raise InputMissing(f"discriminator file not found: {err.filename}") from None


# --- atomic writes -----------------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    from dlcr_cli.io import write_text_atomic

    write_text_atomic(json.dumps(data, indent=2) + "\n", path)


# --- noise -----------------------------------------------------------------------------------


def noised(x0: Tensor, t: Tensor, eps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, abar the scheduler's `alphas_cumprod` (float32)."""
    abar = alphas_cumprod.to(device=x0.device, dtype=torch.float32)[t.to(x0.device).long()].view(-1, 1, 1, 1)
    return abar.sqrt() * x0.float() + (1 - abar).sqrt() * eps.float()


# --- latents -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One image the discriminator learns from: a file, or tile `tile` of `tiles` of a strip."""

    path: str
    digest: str
    tile: int | None = None
    tiles: int | None = None

    @property
    def key(self) -> str:
        """What its latent is cached under: the content, and the tile of a strip."""
        return self.digest if self.tile is None else f"{self.digest}.{self.tile}of{self.tiles}"

    @property
    def name(self) -> str:
        return self.path if self.tile is None else f"{self.path} (tile {self.tile} of {self.tiles})"


def read_pixels(item: Item, size: tuple[int, int]) -> Tensor:
    """[3, H, W] in [-1, 1] (diffusers' VaeImageProcessor), the image (or its tile) resized to
    `size` (H, W) with PIL's bicubic filter, as the painter resizes its sources."""
    import numpy as np
    from PIL import Image

    from dlcr_cli.errors import ItemError
    from dlcr_cli.io import load_rgb
    from dlcr_cli.reid.generated import Variant

    try:
        image = Variant(item.path, item.tile, item.tiles).crop(load_rgb(item.path))
    except ItemError as err:
        if "not found" in str(err):
            raise InputMissing(f"image not found: {item.path}") from None
        raise MalformedInput(f"{item.path}: {err}") from None
    height, width = size
    array = np.asarray(image.resize((width, height), Image.BICUBIC), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1) * 2.0 - 1.0


def encode_batch(vae: Any, pixels: Tensor) -> Tensor:
    """The scaled latents of [B, 3, H, W] pixels in [-1, 1]: the mean of the VAE's latent
    distribution (deterministic) times `vae.config.scaling_factor`, as the sampler sees latents."""
    with torch.inference_mode():
        posterior = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
        return (posterior.mean * vae.config.scaling_factor).cpu()


class LatentCache:
    """DIR/latents.safetensors: the latents of every image the run uses, one row per content
    key (digest, and tile), under one fingerprint of what made them (pipeline, revision, size,
    VAE dtype). A changed image has another digest and is encoded again; a cache of another
    fingerprint is not used."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key
        self.rows: dict[str, Tensor] = {}
        self.dirty = False
        self._load()

    def _load(self) -> None:
        from safetensors import SafetensorError, safe_open

        if not self.path.is_file():
            return
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != self.key:
                    return
                keys = json.loads(meta["keys"])
                latents = f.get_tensor("latents")
        except (SafetensorError, OSError, ValueError, KeyError):
            return  # an unreadable cache is encoded again
        if len(keys) == latents.shape[0]:
            self.rows = dict(zip(keys, latents.unbind(0)))

    def save(self, keep: Sequence[str]) -> None:
        """Write the rows of `keep` (atomically), when something is new."""

        if not self.dirty:
            return
        keys = [k for k in dict.fromkeys(keep) if k in self.rows]
        if not keys:
            return
        stacked = torch.stack([self.rows[k] for k in keys]).contiguous()
        meta = {"format": FORMAT, "key": self.key, "keys": json.dumps(keys)}
        from dlcr_cli.reid.model import write_safetensors

        write_safetensors(self.path, {"latents": stacked}, metadata=meta)
        self.dirty = False


def encode_all(items: Sequence[Item], cache: LatentCache, vae: Any, size: tuple[int, int], batch: int,
               on_batch: Callable[[int], Any] = lambda n: None) -> int:
    """The latents of every item not in `cache` put there (in batches of `batch`, images read in
    threads); returns how many were encoded. The cache is saved after the last batch, and also
    when encoding stops early (an error, Ctrl-C), so what was encoded is kept."""
    from dlcr_cli.io import prefetch

    todo = list({item.key: item for item in items if item.key not in cache.rows}.values())
    chunks = [todo[i:i + batch] for i in range(0, len(todo), batch)]
    keep = [item.key for item in items]
    try:
        read = partial(_read_chunk, size=size)
        for chunk, future in zip(chunks, prefetch(read, chunks, workers=2, depth=2)):
            pixels = future.result()
            for item, latent in zip(chunk, encode_batch(vae, pixels)):
                cache.rows[item.key] = latent.clone()
            cache.dirty = True
            on_batch(len(chunk))
    finally:
        cache.save(keep)
    return len(todo)


def _read_chunk(chunk: Sequence[Item], size: tuple[int, int]) -> Tensor:
    return torch.stack([read_pixels(item, size) for item in chunk])


def stack(items: Sequence[Item], cache: LatentCache) -> Tensor:
    return torch.stack([cache.rows[item.key] for item in items])


# --- splitting and training ----------------------------------------------------------------------


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from `parts`, the same on every machine and Python run."""
    import hashlib

    digest = hashlib.sha256("\x1f".join(map(str, ("discriminator", *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def split_groups(groups: Sequence[str], held_out: float, seed: int) -> set[str]:
    """The held-out groups (source images: a source and all its generated images stay on one
    side): a seeded draw of round(held_out x n) of them, at least 1 and at most n - 1."""
    import numpy as np

    ordered = sorted(set(groups))
    n = len(ordered)
    count = min(max(1, round(held_out * n)), n - 1)
    order = np.random.default_rng(stable_seed("split", seed)).permutation(n)
    return {ordered[i] for i in order[:count]}


def _cycled(n: int, length: int, generator: torch.Generator) -> Tensor:
    """`length` indices of 0..n-1: shuffled passes over all of them, one after the other."""
    passes = [torch.randperm(n, generator=generator) for _ in range(math.ceil(length / n))]
    return torch.cat(passes)[:length]


@dataclass
class TrainConfig:
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    seed: int


def steps_per_epoch(real: int, fake: int, batch: int) -> int:
    """An epoch is one pass over the larger class (in batches of `batch` of each)."""
    return math.ceil(max(real, fake) / batch)


def train_epoch(model: Discriminator, optimizer: torch.optim.Optimizer, real: Tensor, fake: Tensor,
                alphas_cumprod: Tensor, epoch: int, c: TrainConfig, device: Any,
                on_step: Callable[[float], Any] = lambda loss: None) -> float:
    """One epoch of balanced batches (c.batch_size real + c.batch_size generated latents, each
    noised at its own t uniform in 0..T-1); binary cross-entropy on the logits (real = 1).
    Every draw (orders, t, noise) comes from a CPU generator seeded by (seed, epoch): an epoch
    computes the same whether or not the run was resumed before it. Returns the mean loss."""
    generator = torch.Generator().manual_seed(stable_seed("epoch", c.seed, epoch))
    steps = steps_per_epoch(len(real), len(fake), c.batch_size)
    length = steps * c.batch_size
    real_order, fake_order = _cycled(len(real), length, generator), _cycled(len(fake), length, generator)
    timesteps = len(alphas_cumprod)
    labels = torch.cat([torch.ones(c.batch_size), torch.zeros(c.batch_size)]).to(device)
    model.train()
    total = 0.0
    for step in range(steps):
        window = slice(step * c.batch_size, (step + 1) * c.batch_size)
        x0 = torch.cat([real[real_order[window]], fake[fake_order[window]]]).float()
        t = torch.randint(0, timesteps, (len(x0),), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        x_t = noised(x0.to(device), t.to(device), eps.to(device), alphas_cumprod)
        logits = model(x_t, t.to(device))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        total += value
        on_step(value)
    return total / steps


@torch.no_grad()
def held_out_accuracy(model: Discriminator, real: Tensor, fake: Tensor, alphas_cumprod: Tensor, seed: int,
                      device: Any, batch: int = 64) -> float:
    """Balanced accuracy (the mean of the real and the generated images' accuracies: chance is
    0.5 whatever the class sizes) of sign(logit) on the held-out latents, each noised at a t
    and with an eps drawn from `seed` alone: the same noisy latents every epoch."""
    model.eval()
    generator = torch.Generator().manual_seed(stable_seed("held-out", seed))
    timesteps = len(alphas_cumprod)
    scores = []
    for latents in (real, fake):
        right = 0
        for start in range(0, len(latents), batch):
            x0 = latents[start:start + batch].float()
            t = torch.randint(0, timesteps, (len(x0),), generator=generator)
            eps = torch.randn(x0.shape, generator=generator)
            logits = model(noised(x0.to(device), t.to(device), eps.to(device), alphas_cumprod), t.to(device))
            right += int(((logits > 0) == (latents is real)).sum())
        scores.append(right / max(1, len(latents)))
    return (scores[0] + scores[1]) / 2


def make_optimizer(model: nn.Module, c: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)


class RunChanged(UsageError):
    """A discriminator run that cannot be resumed as it is (other settings or inputs, no
    readable record or state): exit 2 for the verb; `expand` trains afresh instead."""


def save_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
               history: dict[str, list[float]]) -> None:
    """state.safetensors (dlcr_cli.state: tensors and JSON, no pickle), atomically."""
    from dlcr_cli.state import write_state

    write_state(folder / STATE_FILE, {"model": model, "optimizer": optimizer}, {"epoch": epoch, "history": history})


def load_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict[str, list[float]]]:
    from dlcr_cli.state import read_state, restore_state

    path = folder / STATE_FILE
    try:
        meta, tensors = read_state(path)
        restore_state({"model": model, "optimizer": optimizer}, meta, tensors)
        return int(meta["epoch"]), {k: list(v) for k, v in meta["history"].items()}
    except (OSError, RuntimeError, LookupError, TypeError, ValueError) as err:
        # a torn or foreign file: nothing to resume from
        raise RunChanged(f"--resume: cannot read the training state {path} ({type(err).__name__}); "
                         f"start a new run with another --out") from None


def write_products(folder: Path, model: Discriminator, config: dict) -> None:
    """discriminator.safetensors, then discriminator.json (each atomically)."""
    from dlcr_cli.reid.model import write_safetensors

    write_safetensors(folder / WEIGHTS_FILE, model.state_dict(), metadata={"format": FORMAT})
    write_json(folder / CONFIG_FILE, config)
