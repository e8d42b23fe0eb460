"""The training engine of `dlcr train`: CAL on real + generated images or clips (docs/method.md, stage 2).

One step, with the real items of CAL's batch (images, or clips of tracklets for the video
model) and, when generated data is given, one variant of each (the same source image; for a
clip, the same frames' variant k) independently augmented; items without variants bring none:

    features = model(real + generated)
    identity loss (+ triplet) on all of them;
    from `clothes_start`: the clothes classifier learns on the DETACHED real features with its
    own optimizer, then the CAL loss of the real features joins the backbone's loss.

`loss = "ce"` trains the identity baseline alone. The wiring, optimizers and schedule are
those of losses.py's docstring; unset settings take CAL's image or video recipe
(`resolve_for_data`).

Determinism: the model's init comes from `seed`; the batches from (seed, epoch); each item's
clip, augmentation and variant draw from (seed, epoch, index, view). Nothing depends on the
worker count, the process count or on where a run was interrupted, so `--resume` from the
state of the last finished epoch gives what an uninterrupted run gives (bit for bit on CPU).

Progressive learning: with e completed epochs, item i of K variants draws uniformly from its
first max(1, floor(K p(e))) variants, p(e) the fraction of the first threshold e does not
exceed (0.25 up to 5 epochs, 0.5 up to 10, 0.75 up to 15, then 1).

Run folder: model.safetensors + model.json (the last epoch's model, written after every
epoch), best/ (with keep best: the model of the evaluated epoch with the best rank-1 of the
selected setting, and metrics.json: CAL's reporting protocol), settings.json, metrics.jsonl
(one line per epoch, plus evaluations and their selection), and state/training.safetensors
(weights, both optimizers' tensors, the loss scaler, with the epoch, the schedule, the
optimizers' settings and the best epoch as JSON in its metadata: one atomic file for
`--resume`, no pickle). Several processes (`accelerate launch -m dlcr_cli train`): each takes
its chunks of every global batch, gradients are averaged (DDP); only the main process logs,
evaluates and writes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dlcr_cli.console import log, progress
from dlcr_cli.errors import InputMissing, MalformedInput
from dlcr_cli.reid.data import ReidData, Sample
from dlcr_cli.reid.generated import Variant
from dlcr_cli.reid.losses import (
    ClothesClassifier,
    IdentityClassifier,
    cal_loss,
    clothes_loss,
    identity_loss,
    positive_mask,
    triplet_loss,
)
from dlcr_cli.reid.model import ReidModel, save_checkpoint

if TYPE_CHECKING:
    from dlcr_cli.settings import TrainSettings

STATE = "state"
STATE_FILE = f"{STATE}/training.safetensors"
INPUTS_FILE = f"{STATE}/inputs.json"
METRICS = "metrics.jsonl"
SETTINGS = "settings.json"

# CAL's defaults (configs/default_img.py, default_vid.py and the per-dataset configs of its
# script.sh) for the settings left unset. Batches are global: P x K over all processes.
IMAGE_DEFAULTS: dict[str, Any] = {
    "image_size": (384, 192), "epochs": 60, "milestones": [20, 40], "clothes_start": 25, "label_smoothing": 0.1,
    "triplet_weight": 0.0, "ids_per_batch": 8, "images_per_id": 8, "eval_every": 5,
}
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "last": {"triplet_weight": 1.0, "ids_per_batch": 16, "images_per_id": 4},
    "deepchange": {"ids_per_batch": 16, "images_per_id": 4},
}
VIDEO_DEFAULTS: dict[str, Any] = {
    "image_size": (256, 128), "epochs": 150, "milestones": [40, 80, 120], "clothes_start": 50,
    "label_smoothing": 0.0, "triplet_weight": 0.0, "ids_per_batch": 16, "images_per_id": 4, "eval_every": 10,
}
FP16_DATASETS = frozenset({"last", "deepchange"})
"""CAL's script.sh trains these with --amp (fp16 autocast, loss scaling); the others in float32."""
BEST_DIR = "best"
BEST_METRICS = f"{BEST_DIR}/metrics.json"
PROTOCOL_NOTE = "CAL's reporting protocol: the best rank-1 over the evaluated epochs, selected on the test set"


def resolve_for_data(settings: TrainSettings, data: ReidData, device: torch.device) -> TrainSettings:
    """The settings with every unset value filled in from CAL's defaults for this data: video
    when its training records are tracklets (or `video` says so), else image, with the
    dataset's own values; precision auto is CAL's (fp16 for LaST and DeepChange on CUDA)."""
    from dlcr_cli.errors import UsageError

    video = data.train_video if settings.video is None else settings.video
    if video and not data.train_video:
        raise UsageError("train.video needs training records of tracklets (a tracklet field, as CCVID's); "
                         f"{data.name} has images")
    defaults = VIDEO_DEFAULTS if video else {**IMAGE_DEFAULTS, **DATASET_DEFAULTS.get(data.name, {})}
    update: dict[str, Any] = {k: v for k, v in defaults.items() if getattr(settings, k) is None}
    update["video"] = video
    if settings.precision == "auto":
        update["precision"] = "fp16" if device.type == "cuda" and not video and data.name in FP16_DATASETS else "fp32"
    if settings.select is None and data.settings:
        names = [x.name for x in data.settings]
        update["select"] = "cc" if "cc" in names else names[0]
    elif settings.select is not None and data.settings and settings.select not in {x.name for x in data.settings}:
        raise UsageError(f"train.select: {data.name} has no setting {settings.select!r}; it has "
                         f"{', '.join(x.name for x in data.settings)}")
    return settings.model_copy(update=update)


def visible_fraction(completed_epochs: int, thresholds: Sequence[int], fractions: Sequence[float]) -> float:
    """p(e): the fraction of the first threshold that e does not exceed; the last after them all."""
    for threshold, fraction in zip(thresholds, fractions):
        if completed_epochs <= threshold:
            return fraction
    return fractions[-1]


def visible_variants(k: int, fraction: float) -> int:
    """How many of an image's K variants may be drawn: max(1, floor(K p)), at most K."""
    return min(k, max(1, math.floor(k * fraction + 1e-9)))


# --- data -------------------------------------------------------------------------------------


class TrainSet(torch.utils.data.Dataset):
    """Training samples, each as (real image, pid, clothes, generated variant or None)."""

    def __init__(self, samples: Sequence[Sample], variants: dict[str, list[Variant]] | None, size: tuple[int, int],
                 seed: int, fraction_of: Any) -> None:
        self.samples, self.variants, self.size, self.seed = list(samples), variants, size, seed
        self.fraction_of = fraction_of
        """epoch -> the visible fraction of the variants (1 without progressive learning)."""
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def pids(self) -> list[int]:
        """The identity of every item, for the sampler."""
        return [x.pid for x in self.samples]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def visible_fraction(self) -> float | None:
        """The fraction of the variants this epoch's draws use (None without variants): what
        the log reports, read from the data set itself rather than from the schedule."""
        return self.fraction_of(self.epoch) if self.variants else None

    def variant_index(self, index: int, k: int) -> int:
        n = visible_variants(k, self.fraction_of(self.epoch))
        return int(np.random.default_rng([self.seed, self.epoch, index, 7]).integers(n))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, torch.Tensor | None]:
        from dlcr_cli.reid.features import read_image
        from dlcr_cli.reid.transforms import sample_generator, train_transform

        sample = self.samples[index]
        transform = train_transform(self.size)
        real = transform(read_image(sample.path), sample_generator(self.seed, self.epoch, index, 0))
        generated = None
        options = self.variants.get(sample.path) if self.variants else None
        if options:
            variant = options[self.variant_index(index, len(options))]
            generated = transform(read_image(variant), sample_generator(self.seed, self.epoch, index, 1))
        return real, sample.pid, sample.clothes, generated


@dataclass(frozen=True)
class Piece:
    """A stretch of one training tracklet's frames (CAL's dense sampling): one clip per epoch."""

    frames: tuple[Sample, ...]
    pid: int
    clothes: int


def tracklet_pieces(samples: Sequence[Sample], step: int) -> list[Piece]:
    """The training tracklets (frames in name order, as CAL globs them) cut into pieces of
    `step` frames, the last taking the rest (CAL's _densesampling_for_trainingset)."""
    from dlcr_cli.reid.data import tracklet_frames
    from dlcr_cli.reid.video import dense_pieces

    pieces = []
    for frames in tracklet_frames(samples):
        for part in dense_pieces(len(frames), step):
            pieces.append(Piece(tuple(frames[part.start:part.stop]), frames[0].pid, frames[0].clothes))
    return pieces


class ClipTrainSet(TrainSet):
    """Video training items, one per tracklet piece: (real clip, pid, clothes, generated clip
    or None). The clip's frames are CAL's TemporalRandomCrop of the piece; the generated clip
    is the same frames' variant k, k drawn once per clip: inpaint gives every frame of a
    tracklet the same targets, so variant k is one outfit across the clip. Frames are
    augmented together (one flip per clip), the generated clip independently of the real one."""

    def __init__(self, pieces: Sequence[Piece], variants: dict[str, list[Variant]] | None, size: tuple[int, int],
                 seed: int, fraction_of: Any, length: int, stride: int) -> None:
        super().__init__([], variants, size, seed, fraction_of)
        self.pieces, self.length, self.stride = list(pieces), length, stride

    def __len__(self) -> int:
        return len(self.pieces)

    def pids(self) -> list[int]:
        return [piece.pid for piece in self.pieces]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, torch.Tensor | None]:
        from dlcr_cli.reid.features import read_image
        from dlcr_cli.reid.transforms import sample_generator
        from dlcr_cli.reid.video import ClipTrainTransform, train_clip

        piece = self.pieces[index]
        rng = np.random.default_rng([self.seed, self.epoch, index, 3])
        frames = [piece.frames[i] for i in train_clip(len(piece.frames), rng, self.length, self.stride)]
        transform = ClipTrainTransform(self.size)
        real = transform([read_image(f.path) for f in frames], sample_generator(self.seed, self.epoch, index, 0))
        generated = None
        options = [self.variants.get(f.path) or [] for f in frames] if self.variants else []
        k = min((len(o) for o in options), default=0)  # the variants every frame of the clip has
        if k:
            chosen = self.variant_index(index, k)
            generated = transform([read_image(o[chosen]) for o in options],
                                  sample_generator(self.seed, self.epoch, index, 1))
        return real, piece.pid, piece.clothes, generated


@dataclass
class Batch:
    images: torch.Tensor
    """The real images (B x 3 x H x W; video: clips, B x T x 3 x H x W), then the variants of
    those that have one (in batch order): one tensor,
    so the device copy reads the page-locked memory the loader pinned, with no host-side
    concatenation (a pageable copy, which makes the non_blocking copy synchronous)."""
    pids: torch.Tensor
    """One per image."""
    clothes: torch.Tensor
    """One per real image."""

    @property
    def real(self) -> int:
        """How many of `images` are real (the first ones)."""
        return len(self.clothes)

    @property
    def generated(self) -> int:
        return len(self.images) - self.real

    def pin_memory(self) -> Batch:
        """What the DataLoader calls with pin_memory=True: page-locked tensors copy to the GPU
        asynchronously (non_blocking) while the previous step runs."""
        return Batch(self.images.pin_memory(), self.pids.pin_memory(), self.clothes.pin_memory())


def collate(items: list[tuple[torch.Tensor, int, int, torch.Tensor | None]]) -> Batch:
    with_gen = [item for item in items if item[3] is not None]
    images = torch.stack([item[0] for item in items] + [item[3] for item in with_gen])
    pids = torch.tensor([item[1] for item in items] + [item[1] for item in with_gen], dtype=torch.long)
    return Batch(images, pids, torch.tensor([item[2] for item in items], dtype=torch.long))


# --- the trainer ------------------------------------------------------------------------------


@dataclass
class EpochStats:
    epoch: int
    """1-based: the epoch just finished."""
    loss: float
    id_loss: float
    clothes_loss: float | None
    cal_loss: float | None
    triplet_loss: float | None
    accuracy: float
    """Identity accuracy over the batch's real and generated images."""
    lr: float
    images: int
    """Training samples seen: images, or clips for a video model (each clip one sample)."""
    images_per_s: float
    seconds: float
    generated: int
    """Generated images seen this epoch."""
    visible_fraction: float | None
    evaluation: dict[str, dict[str, Any]] | None = field(default=None)
    selection: dict[str, Any] | None = field(default=None)
    """Evaluated epochs: the setting whose rank-1 selects the best epoch, this epoch's rank-1
    and the best epoch so far (CAL's reporting protocol; its model is in best/)."""


@dataclass
class Stepper:
    """One optimisation step of CAL (or of the identity baseline) on given modules: what the
    trainer runs per batch and what `dlcr bench train` times."""

    modules: dict[str, nn.Module]
    """model, id, clothes: the re-id model and the two classifiers (DDP-wrapped under a launcher)."""
    opt: torch.optim.Optimizer
    opt_cc: torch.optim.Optimizer
    pid2clothes: torch.Tensor
    s: Any
    """The train settings (loss weights, scale, epsilon, margin)."""
    device: torch.device
    precision: str = "fp32"
    """fp32, or fp16 / bf16 autocast; fp16 scales the losses (a GradScaler, as CAL's apex O1)."""
    channels_last: bool = False
    scaler: Any = None

    def __post_init__(self) -> None:
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _autocast(self) -> Any:
        from dlcr_cli.runtime import autocast

        return autocast(self.device, self.precision)

    def step(self, batch: Batch, clothes_on: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
        """Returns the losses and the correct identity predictions as detached device tensors
        (read once per epoch: a .item() per step would stall the GPU) and the images seen."""
        s, m = self.s, self.modules
        images = batch.images.to(self.device, non_blocking=True)
        if self.channels_last:  # on the device: a host-side conversion would be a pageable copy
            images = to_channels_last(images)
        pids = batch.pids.to(self.device, non_blocking=True)
        real_pids, clothes = pids[: batch.real], batch.clothes.to(self.device, non_blocking=True)
        losses: dict[str, torch.Tensor] = {}
        with self._autocast():
            features = m["model"](images)
            logits = m["id"](features)
        loss = losses["id"] = identity_loss(logits, pids, s.label_smoothing)
        if s.triplet_weight:
            losses["triplet"] = triplet_loss(features, pids, s.triplet_margin)
            loss = loss + s.triplet_weight * losses["triplet"]
        if clothes_on:
            real_features = features[: batch.real]
            with self._autocast():
                cc_logits = m["clothes"](real_features.detach())
            losses["clothes"] = clothes_loss(cc_logits, clothes, s.cal_scale)
            self.opt_cc.zero_grad(set_to_none=True)
            self.scaler.scale(losses["clothes"]).backward()
            self.scaler.step(self.opt_cc)
            with self._autocast():
                adv_logits = m["clothes"](real_features)
            losses["cal"] = cal_loss(adv_logits, clothes, positive_mask(self.pid2clothes, real_pids), s.cal_scale,
                                     s.cal_epsilon)
            loss = loss + losses["cal"]
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()  # once per step, after both optimizers (a no-op unless fp16)
        losses["loss"] = loss
        correct = (logits.detach().argmax(1) == pids).sum()
        return {k: v.detach().float() for k, v in losses.items()}, correct, len(images)


def to_channels_last(images: torch.Tensor) -> torch.Tensor:
    """channels_last images; clips (B x T x C x H x W) with every frame channels_last, so the
    model's flattening to B*T frames keeps the layout."""
    if images.dim() == 5:
        return images.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(images.shape)
    return images.contiguous(memory_format=torch.channels_last)


class Trainer:
    def __init__(self, data: ReidData, settings: TrainSettings, out: Path, *, device: torch.device,
                 variants: dict[str, list[Variant]] | None = None) -> None:
        from dlcr_cli.distributed import current_shard
        from dlcr_cli.reid.model import build_model
        from dlcr_cli.reid.sampler import IdentitySampler

        s = self.s = resolve_for_data(settings, data, device)  # a no-op on resolved settings
        self.data, self.out, self.device, self.shard = data, out, device, current_shard()
        self.cuda = device.type == "cuda"
        if self.cuda:  # fixed image sizes: cuDNN's measured choice of kernels pays for itself
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(s.seed)
        self.model: ReidModel = build_model(s.backbone, device=device, head="video" if s.video else "image")
        if self.cuda and s.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.id_clf = IdentityClassifier(self.model.dim, data.num_pids).to(device)
        self.clothes_clf = ClothesClassifier(self.model.dim, data.num_clothes).to(device)
        self.opt = torch.optim.Adam([*self.model.parameters(), *self.id_clf.parameters()], lr=s.lr,
                                    weight_decay=s.weight_decay)
        self.opt_cc = torch.optim.Adam(self.clothes_clf.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.opt, milestones=s.milestones, gamma=s.gamma)
        self.pid2clothes = torch.as_tensor(data.pid2clothes, device=device)
        fractions = (lambda e: visible_fraction(e, s.progressive_epochs, s.progressive_fractions)) if s.progressive \
            else (lambda e: 1.0)
        self.trainset = ClipTrainSet(tracklet_pieces(data.train, s.dense_step), variants, s.image_size, s.seed,
                                     fractions, s.clip_length, s.clip_stride) if s.video else \
            TrainSet(data.train, variants, s.image_size, s.seed, fractions)
        self.sampler = IdentitySampler(self.trainset.pids(), s.ids_per_batch, s.images_per_id, seed=s.seed,
                                       rank=self.shard.rank, world=self.shard.world)
        self.parallel = self._wrap_for_processes()
        self.stepper = Stepper(self.parallel, self.opt, self.opt_cc, self.pid2clothes, s, device,
                               precision=s.precision, channels_last=self.cuda and s.channels_last)
        self.start_epoch = 0
        self.best: dict[str, Any] | None = None
        """The best evaluated epoch so far (keep best): its epoch, setting and rank-1."""

    def _wrap_for_processes(self) -> dict[str, nn.Module]:
        """The modules a step calls: DDP-wrapped under a launcher (gradients averaged), else themselves."""
        modules = {"model": self.model, "id": self.id_clf, "clothes": self.clothes_clf}
        if not self.shard.active:
            return modules
        from torch.nn.parallel import DistributedDataParallel

        from dlcr_cli.distributed import join_processes

        join_processes(self.device)
        unused = freeze_unused_parameters(self.model, self.s.image_size, self.device)
        if unused:
            log.debug("train: %d backbone parameters the forward never uses are frozen: %s", len(unused),
                      ", ".join(unused))
        ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] if self.cuda \
            else None
        return {name: DistributedDataParallel(module, device_ids=ids) for name, module in modules.items()}

    # --- state ---

    def modules_and_optimizers(self) -> dict[str, Any]:
        return {"model": self.model, "id_classifier": self.id_clf, "clothes_classifier": self.clothes_clf,
                "optimizer": self.opt, "clothes_optimizer": self.opt_cc}

    def save_state(self, epoch: int) -> None:
        """out/state: every tensor in one safetensors file, the rest in JSON (dlcr_cli.state)."""
        from dlcr_cli.state import write_state

        # The scheduler's own state holds a Counter of milestones that JSON cannot round-trip;
        # its milestones come from the settings, so its position is all there is to keep.
        schedule = {"last_epoch": self.scheduler.last_epoch, "last_lr": self.scheduler.get_last_lr()}
        write_state(self.out / STATE_FILE, self.modules_and_optimizers(),
                    {"epoch": epoch, "scheduler": schedule, "scaler": self.stepper.scaler.state_dict(),
                     "best": self.best})

    def load_state(self) -> int:
        """Restore out/state; returns the epochs it had finished. A state that does not fit
        this model (another backbone, other classes) is one line, not a traceback."""
        meta, tensors = read_state(self.out)
        try:
            self._restore(meta, tensors)
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            # load_state_dict says "Error(s) in loading state_dict for X:", then what differs
            lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
            detail = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]
            raise MalformedInput(f"{self.out / STATE_FILE}: the training state does not fit this model "
                                 f"({detail[:200]})") from None
        self.start_epoch = int(meta["epoch"])
        if self.best is not None and self.best["epoch"] == self.start_epoch and self._best_on_disk() != self.start_epoch:
            self._save_best()  # the run stopped between its state and best/: the restored model is the best
        return self.start_epoch

    def _best_on_disk(self) -> int | None:
        kept = read_best(self.out)
        return kept.get("epoch") if kept else None

    def _restore(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        from dlcr_cli.state import restore_state

        objects = self.modules_and_optimizers()
        restore_state(objects, meta, tensors)
        for obj in objects.values():
            if isinstance(obj, torch.optim.Optimizer):
                match_parameter_layouts(obj)
        self.scheduler.last_epoch = int(meta["scheduler"]["last_epoch"])
        self.scheduler._last_lr = list(meta["scheduler"]["last_lr"])
        if meta.get("scaler"):
            self.stepper.scaler.load_state_dict(meta["scaler"])
        self.best = meta.get("best")

    # --- the loop ---

    def fit(self, epochs: int, eval_every: int = 0, evaluate_last: bool = True) -> list[EpochStats]:
        """Train to `epochs`, evaluating every `eval_every` epochs and after the last (CAL's
        schedule); with keep best, each evaluation that beats the best rank-1 of the selected
        setting so far (strictly, as CAL: the earlier of equal epochs stays) saves best/."""
        stats = []
        for epoch in range(self.start_epoch, epochs):
            result = self.train_epoch(epoch, epochs)
            last = evaluate_last and epoch + 1 == epochs
            if (last or (eval_every and (epoch + 1) % eval_every == 0)) and self._can_evaluate():
                result.evaluation = self.evaluate()
            if self.shard.is_main:  # the state last: it is what --resume trusts
                improved = result.evaluation is not None and self._select(result)
                _append_metrics(self.out / METRICS, result)
                save_checkpoint(self.model, self.out, self.checkpoint_config(epoch + 1))
                self.save_state(epoch + 1)
                if improved:  # after the state: a resumed run rewrites it (see load_state)
                    self._save_best()
            self._barrier()
            stats.append(result)
        return stats

    def _select(self, result: EpochStats) -> bool:
        """Label the evaluation with CAL's model selection; True when it is the best so far."""
        setting = self.s.select
        if self.s.keep != "best" or setting is None or setting not in (result.evaluation or {}):
            return False
        rank1 = float(result.evaluation[setting]["rank1"])
        improved = self.best is None or rank1 > self.best["rank1"]
        if improved:
            self.best = {"epoch": result.epoch, "setting": setting, "rank1": rank1, "evaluation": result.evaluation}
        result.selection = {"setting": setting, "rank1": rank1, "best_epoch": (self.best or {}).get("epoch")}
        return improved

    def _save_best(self) -> None:
        """best/: the current model (that of the best epoch) and its metrics."""
        from dlcr_cli.io import write_text_atomic

        assert self.best is not None
        selection = {k: v for k, v in self.best.items() if k != "evaluation"}
        config = {**self.checkpoint_config(self.best["epoch"]), "selection": {**selection, "protocol": PROTOCOL_NOTE}}
        save_checkpoint(self.model, self.out / BEST_DIR, config)
        write_text_atomic(json.dumps({**config["selection"], "evaluation": self.best["evaluation"]}, indent=2) + "\n",
                          self.out / BEST_METRICS)
        log.info("train: epoch %d is the best so far (%s rank-1 %.1f): its model is in %s", self.best["epoch"],
                 self.best["setting"], 100 * self.best["rank1"], self.out / BEST_DIR)

    def checkpoint_config(self, epoch: int | None = None) -> dict[str, Any]:
        return {"image_size": list(self.s.image_size), "dataset": self.data.name, "loss": self.s.loss,
                "precision": self.s.precision, "epoch": epoch,
                **({"clip": [self.s.clip_length, self.s.clip_stride]} if self.s.video else {})}

    def train_epoch(self, epoch: int, epochs: int) -> EpochStats:
        s = self.s
        self.sampler.set_epoch(epoch)
        self.trainset.set_epoch(epoch)
        for module in self.parallel.values():
            module.train()
        # Workers are forked afresh each epoch (not persistent): they must see this epoch's
        # set_epoch, which decides every augmentation and variant draw.
        loader = torch.utils.data.DataLoader(self.trainset, batch_sampler=self.sampler, num_workers=s.workers,
                                             collate_fn=collate, pin_memory=self.cuda,
                                             persistent_workers=False)
        sums: dict[str, torch.Tensor] = {}
        counts = {"batches": 0, "images": 0, "generated": 0}
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        clothes_on = s.loss == "cal" and epoch >= s.clothes_start
        unit = "clips" if s.video else "images"  # a video batch holds clips, each one sample
        start = time.perf_counter()
        with progress(f"epoch {epoch + 1}/{epochs}", len(self.sampler), unit="batches") as bar:
            for batch in loader:
                losses, right, seen = self.stepper.step(batch, clothes_on)
                for key, value in losses.items():
                    sums[key] = sums[key] + value if key in sums else value
                correct += right
                counts["batches"] += 1
                counts["images"] += seen
                counts["generated"] += batch.generated
                bar.advance()
                if counts["batches"] % 20 == 0:  # reading the loss waits for the GPU: not every step
                    rate = counts["images"] / (time.perf_counter() - start)
                    bar.describe(f"epoch {epoch + 1}/{epochs} loss {float(sums['loss']) / counts['batches']:.3f} "
                                 f"{rate:.0f} {unit}/s")
        seconds = time.perf_counter() - start
        lr = self.opt.param_groups[0]["lr"]
        self.scheduler.step()
        sums, correct, counts = self._over_processes(sums, correct, counts)
        n = max(1, counts["batches"])
        mean = {key: float(value) / n for key, value in sums.items()}
        result = EpochStats(
            epoch + 1, mean.get("loss", 0.0), mean.get("id", 0.0), mean.get("clothes"), mean.get("cal"),
            mean.get("triplet"), int(correct) / max(1, counts["images"]), lr, counts["images"],
            counts["images"] / seconds if seconds else 0.0, seconds, counts["generated"],
            self.trainset.visible_fraction(),
        )
        log.info("epoch %d/%d: loss %.4f, accuracy %.3f, lr %.2e, %.1f %s/s", epoch + 1, epochs, result.loss,
                 result.accuracy, lr, result.images_per_s, unit)
        return result

    def _over_processes(self, sums: dict[str, torch.Tensor], correct: torch.Tensor, counts: dict[str, int]
                        ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, int]]:
        """The epoch's sums and counts over every process (summed), so the log and metrics.jsonl
        describe the whole epoch, not the main process's share."""
        if not self.shard.active:
            return sums, correct, counts
        import torch.distributed as dist

        packed = pack_totals(sums, correct, counts, self.device)
        dist.all_reduce(packed)
        return unpack_totals(packed, sorted(sums), sorted(counts))

    # --- evaluation ---

    def _can_evaluate(self) -> bool:
        return bool(self.data.query and self.data.gallery)

    def evaluate(self) -> dict[str, dict[str, Any]] | None:
        """The dataset's protocol on the current model (main process; the others wait)."""
        if not self.shard.is_main:
            return None
        from dlcr_cli.reid.evaluate import as_json, evaluate_settings
        from dlcr_cli.reid.features import extract_features

        features = extract_features(self.model, self.data, size=tuple(self.s.image_size),  # gives back train mode
                                    workers=max(1, self.s.workers), precision=self.s.precision,
                                    clip=(self.s.clip_length, self.s.clip_stride))
        results = evaluate_settings(features, features.settings, device=self.device)
        scores = as_json(results)
        log.info("evaluation: %s", ", ".join(f"{name} rank-1 {100 * v['rank1']:.1f} mAP {100 * v['mAP']:.1f}"
                                             for name, v in scores.items()))
        return scores

    def _barrier(self) -> None:
        if self.shard.active:
            from dlcr_cli.distributed import barrier

            barrier()


# --- what a run was trained on ---------------------------------------------------------------


def run_inputs(data: ReidData, variants: dict[str, list[Variant]] | None, backbone: str, out: Path) -> dict[str, Any]:
    """What a run's epochs are made of besides its settings (see `dlcr_cli.fingerprint`): every
    training image with its labels and content digest, every generated variant with its
    digest, and the backbone's revision. Digests are cached in the run's state folder."""
    from dlcr_cli.fingerprint import CACHE_NAME, Digests, model_revision

    digests = Digests(out / STATE / CACHE_NAME)
    sources = [x.path for x in data.train]
    tiles = [(path, v) for path in sorted(variants or {}) for v in variants[path]]
    files = sorted({*sources, *(v.path for _, v in tiles)})
    if len(files) > 5000:
        log.info("train: reading the digests of %d input files (cached for --resume)", len(files))
    digest = dict(zip(files, digests.many(files)))
    digests.save()
    return {
        "dataset": data.name,
        "train": [[x.path, x.pid, x.clothes, x.camid, digest[x.path]] for x in data.train],
        "generated": None if variants is None else [[path, v.path, v.tile, digest[v.path]] for path, v in tiles],
        "backbone": backbone,
        "backbone_revision": "" if backbone.startswith("builtin:") else model_revision(backbone),
    }


def changed_inputs(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two `run_inputs`, in words (empty: the same inputs)."""
    changes = []
    if before.get("dataset") != now["dataset"]:
        changes.append(f"the dataset ({before.get('dataset')} then, {now['dataset']} now)")
    if before.get("train") != now["train"]:
        changes.append(f"the training images ({_differing(before.get('train') or [], now['train'])})")
    if (before.get("generated") is None) != (now["generated"] is None):
        changes.append("--generated (given then, not now)" if now["generated"] is None else
                       "--generated (not given then, given now)")
    elif before.get("generated") != now["generated"]:
        changes.append(f"the generated images ({_differing(before['generated'], now['generated'])})")
    if before.get("backbone_revision") != now["backbone_revision"]:
        changes.append(f"the weights of backbone {now['backbone']}")
    return changes


def _differing(before: list, now: list) -> str:
    old, new = {tuple(x) for x in before}, {tuple(x) for x in now}
    return f"{len(new - old)} of {len(new)} differ in path, labels or content" if new - old else \
        f"{len(old - new)} of {len(old)} are gone"


def pack_totals(sums: dict[str, torch.Tensor], correct: torch.Tensor, counts: dict[str, int],
                device: torch.device) -> torch.Tensor:
    """The epoch's loss sums, correct predictions and counts as one float64 tensor on `device`
    (the collective's): every part is moved there, the counts made on the host included."""
    parts = [*(sums[k] for k in sorted(sums)), correct, *(torch.tensor(float(counts[k])) for k in sorted(counts))]
    return torch.stack([part.to(device=device, dtype=torch.float64) for part in parts])


def unpack_totals(packed: torch.Tensor, sum_keys: list[str], count_keys: list[str]
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, int]]:
    values = packed.cpu().tolist()
    sums = {k: torch.tensor(v) for k, v in zip(sum_keys, values)}
    rest = values[len(sum_keys):]
    return sums, torch.tensor(rest[0]), {k: int(v) for k, v in zip(count_keys, rest[1:])}


def freeze_unused_parameters(model: nn.Module, size: Sequence[int], device: torch.device) -> list[str]:
    """Freeze the parameters one forward never reaches (DINOv2's `mask_token`, used only with
    masked inputs; Swin's final norms): DDP would stop at the first step waiting for their
    gradients. Found by one backward of two random images in eval mode (no running statistic
    moves, no global random stream is drawn from); a parameter that never gets a gradient stays
    as it is under Adam either way, so a run in one process is unchanged by this. Returns
    their names."""
    was_training = model.training
    model.eval()
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    model(images).float().sum().backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in model.named_parameters():
        p.grad = None
        if name in unused:
            p.requires_grad_(False)
    model.train(was_training)
    return unused


def match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor of `optimizer` its parameter's memory layout.
    A restored state comes in the saved (contiguous, NCHW) layout, while channels_last
    parameters are NHWC: the update would then mix layouts, off the fused fast path."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def read_state(out: Path, tensors: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The training state of the run in `out`: (its JSON part, its tensors, unless `tensors`
    is false). Safetensors only: nothing is unpickled."""
    from dlcr_cli import state

    path = out / STATE_FILE
    if not path.is_file():
        raise InputMissing(f"nothing to resume in {out}: no {STATE_FILE} (start without --resume)")
    try:
        return state.read_state(path, tensors)
    except (ValueError, OSError) as err:
        raise MalformedInput(f"{path}: unreadable training state ({err})") from None


def read_best(out: Path) -> dict[str, Any] | None:
    """best/metrics.json of the run in `out` (epoch, setting, rank1, protocol, evaluation), or
    None when it kept none (or the file is unreadable: a run stopped while writing it)."""
    try:
        return json.loads((out / BEST_METRICS).read_text())
    except (OSError, ValueError):
        return None


def saved_epoch(out: Path) -> int | None:
    """Epochs finished by the run in `out` (its metadata only), None when it has no state."""
    return int(read_state(out, tensors=False)[0]["epoch"]) if (out / STATE_FILE).is_file() else None


def _append_metrics(path: Path, stats: EpochStats) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(stats)) + "\n")


def truncate_metrics(path: Path, epochs: int) -> None:
    """Keep the lines of the first `epochs` epochs (a resumed run writes the later ones again)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if _epoch_of(line) is not None and _epoch_of(line) <= epochs]
    path.write_text("".join(line + "\n" for line in kept))


def _epoch_of(line: str) -> int | None:
    """The line's epoch; None for a blank or torn line (a run killed while writing it)."""
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


def iter_metrics(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text().splitlines():
        if line.strip():
            yield json.loads(line)
