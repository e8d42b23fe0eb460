"""Settings: one model with a section per stage, resolved from four layers.

Precedence, highest first: command-line option > environment (`DLCR_`, nested with `__`,
e.g. `DLCR_MASK__BATCH_SIZE=4`) > config file (`--config`, else `$DLCR_CONFIG`, else
`config.toml` in the user config dir) > defaults. Each layer is read on its own with
pydantic-settings' sources so that `dlcr config` can say where every value came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from dlcr_cli import labels
from dlcr_cli.errors import ConfigError, UsageError

ENV_PREFIX = "DLCR_"
CONFIG_ENV = "DLCR_CONFIG"

DType = Literal["auto", "float32", "float16", "bfloat16"]


def _positive_size(value: tuple[int, int]) -> tuple[int, int]:
    if any(v <= 0 for v in value):
        raise ValueError(f"height and width must be positive, got {value[0]}x{value[1]}")
    return value


Size = Annotated[tuple[int, int], AfterValidator(_positive_size)]
"""(height, width), both positive."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsSettings(Section):
    """How models are loaded, for every stage."""

    trust_remote_code: bool = False
    """Run code shipped with a model repository. Off: only transformers/diffusers classes."""
    offload_idle: bool = True
    """Under GPU memory pressure, move models not in use to the CPU before loading another."""


class MaskSettings(Section):
    """`dlcr mask`: human parsing and the ID-preserving clothing mask."""

    backend: Literal["segformer", "parsing"] = "segformer"
    model: str = "mattmdjaga/segformer_b2_clothes"
    """Semantic-segmentation model (hub id or directory) predicting LIP or ATR labels."""
    batch_size: int = Field(8, gt=0)
    input_size: Size = (512, 512)
    """Height and width of the segmentation model's input."""
    resize: Literal["letterbox", "stretch"] = "letterbox"
    """letterbox: keep the aspect ratio and pad (as SCHP does for tall ReID crops);
    stretch: resize to input_size regardless."""
    dtype: DType = "auto"
    """auto: float16 on CUDA (as the reference), float32 elsewhere."""
    parsing_dir: Path | None = None
    """parsing backend: the folder of existing label maps, mirroring the dataset tree."""
    labels: Literal["auto", "lip", "atr"] = "auto"
    """parsing backend: the label set of the maps (auto: guessed from the first maps)."""
    keep: list[str] = Field(default_factory=lambda: list(labels.DEFAULT_KEEP))
    """Labels (or groups: arms, legs, shoes, gloves) never repainted; the rest is clothing."""
    dilation: int = Field(0, ge=0)
    """Grow the mask by this many pixels (the reference uses none)."""
    workers: int = Field(4, gt=0)
    """Threads that read and write images while the model runs."""

    @field_validator("keep")
    @classmethod
    def _known_labels(cls, value: list[str]) -> list[str]:
        unknown = labels.unknown_names(value)
        if unknown:
            raise ValueError(f"unknown label {unknown[0]!r}; known: {', '.join(labels.vocabulary())}")
        return value

    @field_validator("parsing_dir")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


class DescribeSettings(Section):
    """`dlcr describe`: one clothing description per image."""

    backend: Literal["vlm", "colors"] = "vlm"
    model: str = "llava-hf/llava-1.5-7b-hf"
    """vlm backend: an image-text-to-text model (hub id or directory) with a chat template."""
    prompt: str = "What clothes is the person wearing?"
    """vlm backend: the question asked about every image (the paper's)."""
    batch_size: int = Field(8, gt=0)
    max_new_tokens: int = Field(128, gt=0)
    temperature: float = Field(0.2, ge=0)
    """Sampling temperature (the paper's 0.2); 0 decodes greedily."""
    seed: int = Field(0, ge=0)
    dtype: DType = "auto"
    """auto: bfloat16 on CUDA GPUs that have it (Ampere and newer; language models can
    overflow float16), else float16 on CUDA; float32 elsewhere."""
    workers: int = Field(4, gt=0)
    """Threads that read images while the model runs."""


class SummarizeSettings(Section):
    """`dlcr summarize`: one inpainting prompt per clothing id."""

    backend: Literal["llm", "vote"] = "llm"
    model: str = "Qwen/Qwen2.5-7B-Instruct"
    """llm backend: a causal LM with a chat template (the paper: meta-llama/Llama-2-7b-chat-hf)."""
    instruction: str = "Extract the clothing items from the following text: {text}"
    """llm backend: the one user turn; {text} is the clothing id's descriptions."""
    words: int = Field(200, gt=0)
    """Keep this many words of a clothing id's joined descriptions (the paper: 200)."""
    batch_size: int = Field(8, gt=0)
    """Clothing ids per model call."""
    max_new_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.6, ge=0)
    """Sampling temperature (the paper's 0.6); 0 decodes greedily."""
    top_p: float = Field(0.9, gt=0, le=1)
    seed: int = Field(0, ge=0)
    dtype: DType = "auto"
    """auto: bfloat16 on CUDA GPUs that have it (Ampere and newer), else float16 on CUDA
    (Qwen2-family models overflow in float16: pick another model or float32 there);
    float32 elsewhere."""

    @field_validator("instruction")
    @classmethod
    def _has_text_field(cls, value: str) -> str:
        if "{text}" not in value:
            raise ValueError("must contain {text}, where the descriptions go")
        try:
            value.format(text="")
        except (IndexError, KeyError, ValueError):
            raise ValueError("may hold no braces but {text} (write {{ and }} for literal ones)") from None
        return value


class InpaintSettings(Section):
    """`dlcr inpaint`: clothes-changed images, K per training image."""

    backend: Literal["diffusion", "recolor", "transfer"] = "diffusion"
    """diffusion: a diffusers inpainting model; recolor: each garment recoloured to the target
    prompt's colour; transfer: each garment filled with the target clothing id's garment (texture
    and colours) from one of its images (both weight-free, both need parsing maps)."""
    model: str = "stable-diffusion-v1-5/stable-diffusion-inpainting"
    """diffusion backend: a diffusers inpainting pipeline (hub id or directory)."""
    variants: int = Field(10, gt=0)
    """Target clothing ids (one generated image each) per source image (the paper: 10)."""
    splits: list[str] = Field(default_factory=lambda: ["train"])
    """Records of these splits (and records without a split) are sources; others are ignored."""
    size: tuple[int, int] = (768, 256)
    """Height and width the pipeline works at (multiples of 8); results are resized back."""
    steps: int = Field(50, gt=0)
    guidance: float = Field(7.5, ge=0)
    strength: float = Field(1.0, gt=0, le=1)
    scheduler: Literal["default", "dpm"] = "default"
    """default: the checkpoint's own; dpm: DPM-Solver++ multistep, good in 20-25 steps."""
    batch_size: int = Field(8, gt=0)
    """Generated images per pipeline call."""
    seed: int = Field(0, ge=0)
    dtype: DType = "auto"
    """auto: float16 on CUDA (as the reference; the checkpoint's fp16 weight files where it
    has them), float32 elsewhere."""
    compile: bool = False
    """torch.compile the UNet (pays off on long GPU runs)."""
    format: Literal["files", "strip"] = "files"
    """files: DIR/<rel dir>/<stem>_v<k>.png; strip: the released data's one PNG of K tiles + .txt per source."""
    workers: int = Field(4, gt=0)
    """Threads that read and write images while the model runs."""
    discriminator: Path | None = None
    """Discriminator guidance: a `dlcr discriminator` folder trained for this pipeline and size (unset: none)."""
    dg_weight: float = Field(1.0, ge=0)
    """Discriminator guidance weight (the authors': 1; 0 paints as unguided)."""
    dg_min_t: int = Field(200, ge=0, le=1000)
    """Guidance acts on the denoising steps with timestep t > this (of 1000; the authors': 200)."""

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, value: tuple[int, int]) -> tuple[int, int]:
        if any(v <= 0 or v % 8 for v in value):
            raise ValueError(f"height and width must be positive multiples of 8, got {value[0]}x{value[1]}")
        return value


class DiscriminatorSettings(Section):
    """`dlcr discriminator`: the time-conditioned discriminator of discriminator guidance,
    trained on the inpainting pipeline's latents of real (source) and generated images."""

    epochs: int = Field(50, gt=0)
    """The authors sample with their epoch-50 checkpoint (of 120)."""
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-7, ge=0)
    batch_size: int = Field(8, gt=0)
    """Real and generated latents per step, each (the authors': 8 + 8)."""
    width: int = Field(128, gt=0)
    """Channels of the encoder's first level (the authors' ADM encoder: 128)."""
    levels: int = Field(4, gt=0)
    """Down-sampling levels of the encoder."""
    held_out: float = Field(0.1, gt=0, lt=1)
    """Fraction of the pairs kept out of training to measure accuracy each epoch."""
    seed: int = Field(0, ge=0)
    dtype: DType = "auto"
    """Of the VAE that encodes the images (auto: float16 on CUDA); the discriminator trains in float32."""
    batch_encode: int = Field(16, gt=0)
    """Images per VAE encoding batch."""


class EvaluateSettings(Section):
    """`dlcr evaluate`: features of a re-id model and the dataset's protocol."""

    image_size: Size | None = None
    """Height and width the model sees; unset: the checkpoint's (its training size), else 384x192."""
    batch_size: int = Field(128, gt=0)
    """Images per forward pass while extracting features."""
    workers: int = Field(4, gt=0)
    """Threads that read and resize images while the model runs."""
    flip: bool = True
    """Add the embedding of the mirrored image (the reference does)."""
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """Arithmetic of the feature extraction (auto: the precision the checkpoint was trained
    and evaluated with, fp32 for models that do not say)."""
    epoch: Literal["best", "last"] = "best"
    """Of a run folder: its best evaluated epoch's model (best/, when the run kept one; CAL's
    reporting protocol) or its last epoch's."""
    rerank: bool = False
    """k-reciprocal re-ranking (Zhong et al. 2017) of each setting's distances."""
    k1: int = Field(20, gt=0)
    k2: int = Field(6, gt=0)
    lambda_value: float = Field(0.3, ge=0, le=1)
    """Weight of the original distance in the re-ranked one."""


class TrainSettings(Section):
    """`dlcr train`: CAL on real (+ generated) images or clips (docs/method.md, stage 2). Unset
    values take CAL's defaults for the data: images (LaST: triplet weight 1, 16 x 4, fp16;
    DeepChange: 16 x 4, fp16) or video (tracklets, as CCVID: c2dres50 clips, 256x128, 150
    epochs, lr steps 40/80/120, clothes losses from 50, plain cross-entropy, 16 x 4 clips)."""

    backbone: str = "microsoft/resnet-50"
    """A transformers vision backbone (hub id or folder), or builtin:small (random init, no weights)."""
    loss: Literal["cal", "ce"] = "cal"
    """cal: identity + clothes classifier + CAL loss; ce: the plain identity baseline."""
    video: bool | None = None
    """Train the video model on clips of tracklets (unset: when the training records are tracklets)."""
    image_size: Size | None = None
    """Height and width (unset: 384x192; video 256x128)."""
    epochs: int | None = Field(None, gt=0)
    """Unset: 60; video 150."""
    ids_per_batch: int | None = Field(None, gt=0)
    """P: chunks of K per batch, so the global batch (over all processes) is P x K (unset: 8;
    LaST, DeepChange, video 16). An identity may give two chunks to a batch, as in CAL."""
    images_per_id: int | None = Field(None, gt=0)
    """K: images (video: clips) per chunk of one identity (unset: 8; LaST, DeepChange, video 4)."""
    lr: float = Field(3.5e-4, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    milestones: list[int] | None = None
    """Epochs after which the learning rate is multiplied by gamma (unset: 20, 40; video 40, 80, 120)."""
    gamma: float = Field(0.1, gt=0)
    label_smoothing: float | None = Field(None, ge=0, lt=1)
    """Of the identity loss (unset: 0.1; video 0, CAL's plain cross-entropy)."""
    clothes_start: int | None = Field(None, ge=0)
    """Epoch (0-based) from which the clothes classifier learns and the CAL loss counts (unset: 25; video 50)."""
    cal_scale: float = Field(16.0, gt=0)
    cal_epsilon: float = Field(0.1, ge=0, lt=1)
    triplet_weight: float | None = Field(None, ge=0)
    """Weight of the batch-hard triplet loss (unset: 0, LaST 1)."""
    triplet_margin: float = Field(0.3, ge=0)
    clip_length: int = Field(8, gt=0)
    """Video: frames per clip (training and test)."""
    clip_stride: int = Field(4, gt=0)
    """Video: frame step within a clip."""
    dense_step: int = Field(64, ge=0)
    """Video: training tracklets are cut into pieces of this many frames, one clip per piece and epoch (0: whole)."""
    progressive: bool = True
    """Progressive learning: only the first fraction of each image's variants is drawn from early on."""
    progressive_epochs: list[int] = Field(default_factory=lambda: [5, 10, 15])
    """Completed-epoch thresholds e: fraction i applies while e <= progressive_epochs[i]."""
    progressive_fractions: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    """Visible fraction of the variants per stage; one more than the thresholds (the last: after them)."""
    seed: int = Field(0, ge=0)
    workers: int = Field(4, ge=0)
    """DataLoader worker processes reading and augmenting images (0: in the main process)."""
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """Arithmetic of training and of its evaluations (auto: CAL's, fp16 autocast for LaST and
    DeepChange on CUDA, else fp32). A run's `dlcr evaluate` uses the same by default."""
    channels_last: bool = True
    """channels_last memory format on CUDA."""
    eval_every: int | None = Field(None, ge=0)
    """Evaluate on query/gallery every N epochs and after the last (unset: 5; video 10; 0: after the last only)."""
    keep: Literal["best", "last"] = "best"
    """best: also keep the model of the evaluated epoch with the best rank-1 of `select` in
    best/ (CAL's reporting protocol: selected on the test set); last: the last epoch only."""
    select: str | None = None
    """The setting whose rank-1 picks the best epoch (unset: CAL's, cc where the protocol has
    it, else standard)."""

    @field_validator("progressive_fractions")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < v <= 1 for v in value):
            raise ValueError("fractions must be in (0, 1]")
        return value

    @field_validator("milestones", "progressive_epochs")
    @classmethod
    def _ascending(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        if any(b <= a for a, b in zip(value, value[1:])) or any(v < 0 for v in value):
            raise ValueError("must be ascending non-negative epochs")
        return value

    @model_validator(mode="after")
    def _one_more_fraction_than_thresholds(self) -> TrainSettings:
        if len(self.progressive_fractions) != len(self.progressive_epochs) + 1:
            raise ValueError(f"progressive_fractions needs {len(self.progressive_epochs) + 1} values (one more than "
                             f"progressive_epochs), got {len(self.progressive_fractions)}")
        return self


class RefineSettings(Section):
    """`dlcr refine`: test-time prediction refinement with clothes-changed query variants."""

    variants: int = Field(4, gt=0)
    """K: generated variants per query used (the first K, in variant order; the paper: 4)."""
    top: int = Field(5, gt=0)
    """Size of each ranking's top list whose persons are re-scored (the paper: 5)."""


class Settings(BaseSettings):
    """Everything dlcr can be told, by option, environment or config file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    device: str = "auto"
    """auto (CUDA if present, else MPS, else CPU), cpu, cuda, cuda:N, mps."""
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    mask: MaskSettings = Field(default_factory=MaskSettings)
    describe: DescribeSettings = Field(default_factory=DescribeSettings)
    summarize: SummarizeSettings = Field(default_factory=SummarizeSettings)
    inpaint: InpaintSettings = Field(default_factory=InpaintSettings)
    discriminator: DiscriminatorSettings = Field(default_factory=DiscriminatorSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    refine: RefineSettings = Field(default_factory=RefineSettings)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_other):
        # Layers are merged by `resolve` so that each value's source is known; the class
        # itself only validates what it is given.
        return (init_settings,)


DEFAULTS = Settings()


@dataclass
class Resolved:
    settings: Settings
    sources: dict[str, str]
    """Dotted key -> where its value came from ("default", "env DLCR_X", "file P", "option")."""


def default_config_file() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("dlcr")) / "config.toml"


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper().replace(".", "__")


def resolve(cli: dict[str, Any] | None = None, config_file: Path | None = None) -> Resolved:
    """Merge defaults < file < environment < options, validate, and keep each value's source."""
    path, explicit = config_path(config_file)
    layers: list[tuple[str, dict[str, Any]]] = [
        (f"file {path}", _read_toml(path, explicit)),
        ("env", _read_env()),
        ("option", cli or {}),
    ]
    merged: dict[str, Any] = {}
    sources = {key: "default" for key in _flatten(DEFAULTS.model_dump())}
    for name, layer in layers:
        _deep_merge(merged, layer)
        for key in _flatten(layer):
            sources[key] = f"env {env_name(key)}" if name == "env" else name
    try:
        settings = Settings(**merged)
    except ValidationError as err:
        raise _explain(err, sources) from None
    return Resolved(settings, sources)


def config_path(explicit: Path | None) -> tuple[Path, bool]:
    if explicit is not None:
        return explicit.expanduser(), True
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser(), True
    return default_config_file(), False


def _read_toml(path: Path, explicit: bool) -> dict[str, Any]:
    import tomllib

    if not path.is_file():
        if explicit:
            raise ConfigError(f"config file not found: {path}")
        return {}
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None


def _read_env() -> dict[str, Any]:
    from pydantic_settings import SettingsError

    try:
        return EnvSettingsSource(Settings)()
    except SettingsError as err:  # e.g. a list that is not JSON
        raise ConfigError(f"environment: {err} (lists are JSON, e.g. '[\"hat\", \"hair\"]')") from None


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of the leaves; a section is a dict whose key is a settings section."""
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix and key in Settings.model_fields:
            keys.extend(_flatten(value, dotted + "."))
        else:
            keys.append(dotted)
    return keys


def _deep_merge(into: dict[str, Any], layer: dict[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _explain(err: ValidationError, sources: dict[str, str]) -> Exception:
    """One line for the first problem: the key, the offending layer, pydantic's reason."""
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join(loc[:2])  # section.key (list indices and deeper parts dropped)
    source = sources.get(key, "input")
    reason = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        reason = "no such setting"
    if source == "option":
        return UsageError(f"invalid value for {key}: {reason}")
    return ConfigError(f"invalid setting {key} (from {source}): {reason}")
