"""The CC-ReID model (CAL's ResNet50): backbone -> [global max pool, global average pool] -> BatchNorm1d.

The embedding is the BatchNorm1d output (4096-d for ResNet-50, 2 x the backbone's channels);
the identity and clothes classifiers live in `dlcr_cli.reid.losses`, so a checkpoint holds the
backbone and the BN only, which is all evaluation needs.

Backbones:
- transformers vision backbones, by hub id or local folder (safetensors only, no remote code),
  built with the architecture's backbone class (`AutoBackbone`'s mapping), whose last feature
  map is pooled. ResNet (`microsoft/resnet-50`, the default, and the other microsoft/resnet-*)
  gets the last stage's stride set to 1, as CAL does to torchvision's layer4: its first
  block's strided convolution and its shortcut. Other architectures of the mapping give their
  last feature map at their own output stride (checked on tiny configs: ConvNeXt and ConvNeXt
  V2, e.g. `facebook/convnext-tiny-224`, whose 2x2 patch-merging convolution cannot take stride
  1; Swin; DINOv2, whose maps are its patch tokens).
- `builtin:small`, a 4-stage ResNet-like CNN (~1.2 M parameters, 512-d embedding, last stage at
  stride 1 too) initialised at random, for machines without weights, the demo and the tests.

Pretrained weights are loaded directly rather than through the process-wide model cache: the
model is trained in place (and its strides changed), so a cached instance would be handed out
already modified; nothing else in the process needs the pristine backbone.

Checkpoints (`save_checkpoint` / `load_checkpoint`): `model.safetensors` (state dict) and
`model.json` (how to rebuild the architecture without network: the backbone name, the
transformers config for hub backbones, the embedding size, plus the caller's config). No pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from dlcr_cli.errors import InputMissing, MalformedInput, Unavailable, UsageError

DEFAULT_BACKBONE = "microsoft/resnet-50"
BUILTIN_PREFIX = "builtin:"
SETTING = "train.backbone"
FORMAT = "dlcr-reid-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"


HEADS = ("image", "video")


class ReidModel(nn.Module):
    """The backbone, a pooling and a BatchNorm1d neck, by `head`:

    - image (CAL's img_resnet): B x 3 x H x W -> concat(global max pool, global average pool)
      -> BatchNorm1d: B x 2C.
    - video (CAL's c2dres50, vid_resnet.C2DResNet50): clips B x T x 3 x H x W, every frame
      through the 2D backbone, global max pool per frame, mean over the T frames ->
      BatchNorm1d: B x C. A B x 3 x H x W batch is taken as one-frame clips.
    """

    def __init__(self, backbone: nn.Module, channels: int, spec: dict[str, Any]) -> None:
        super().__init__()
        head = spec.get("head", "image")
        if head not in HEADS:
            raise ValueError(f"unknown model head {head!r}")
        self.backbone = backbone
        self.video = head == "video"
        dim = channels if self.video else 2 * channels
        self.bn = nn.BatchNorm1d(dim)
        nn.init.normal_(self.bn.weight, 1.0, 0.02)
        nn.init.zeros_(self.bn.bias)
        self.spec = {**spec, "head": head, "channels": channels, "dim": dim}
        """What model.json records to rebuild this architecture."""

    @property
    def dim(self) -> int:
        return self.spec["dim"]

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.video:
            fmap = self.backbone(images)
            return self.bn(torch.cat([fmap.amax(dim=(2, 3)), fmap.mean(dim=(2, 3))], dim=1))
        clips = images if images.dim() == 5 else images.unsqueeze(1)
        b, t = clips.shape[:2]
        # reshape, not view: a channels_last batch stays channels_last when the frames are flattened
        fmap = self.backbone(clips.reshape(b * t, *clips.shape[2:]))
        return self.bn(fmap.amax(dim=(2, 3)).view(b, t, -1).mean(1))


# --- builtin:small --------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallNet(nn.Module):
    """Stem (3x3 conv, stride 2) and four one-block stages, strides 1, 2, 2, 1: output stride 8
    (128 x 64 -> 16 x 8), like ResNet-50 with last stride 1 relative to its input size."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), strides: tuple[int, ...] = (1, 2, 2, 1)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        cins = (widths[0], *widths[:-1])
        self.stages = nn.Sequential(*(BasicBlock(c, w, s) for c, w, s in zip(cins, widths, strides)))
        self.channels = widths[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(images))


BUILTINS = {"small": SmallNet}


# --- transformers backbones ---------------------------------------------------------------------


class HubBackbone(nn.Module):
    """A transformers backbone model, giving its last feature map."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).feature_maps[-1]


def _backbone_class(config: Any) -> type:
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

    try:
        return MODEL_FOR_BACKBONE_MAPPING[type(config)]
    except KeyError:
        raise ValueError(f"its architecture ({config.model_type}) has no transformers backbone class "
                         f"(ResNet, ConvNeXt, Swin and DINOv2 have one)") from None


def _load_hub(model_id: str, dtype: torch.dtype | None) -> nn.Module:
    """The pretrained backbone model. AutoBackbone.from_pretrained is avoided: it asks the hub
    whether the repository exists, which fails offline and for local folders."""
    from transformers import AutoConfig

    from dlcr_cli.cache import _quiet_libraries

    _quiet_libraries()
    config = AutoConfig.from_pretrained(model_id, trust_remote_code=False)
    model = _backbone_class(config).from_pretrained(
        model_id, config=config, use_safetensors=True, trust_remote_code=False, dtype=dtype or torch.float32
    )
    return model


def set_last_stride_1(model: nn.Module) -> bool:
    """Stride 1 in the first block of the last stage (its strided convolutions: the 3x3, or the
    first 1x1 with downsample_in_bottleneck, and the shortcut). True when done; False for an
    architecture without ResNet-style stages, or whose last stage downsamples otherwise."""
    stages = getattr(getattr(model, "encoder", None), "stages", None)
    layers = getattr(stages[-1], "layers", None) if stages else None
    if layers is None or len(layers) == 0:
        return False
    convs = [m for m in layers[0].modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    # Only odd kernels padded to keep the size ("same") can drop their stride without shifting the map.
    if not convs or any(c.kernel_size[0] % 2 == 0 or c.padding != tuple(k // 2 for k in c.kernel_size) for c in convs):
        return False
    for conv in convs:
        conv.stride = (1, 1)
    return True


def _hub_model(backbone: nn.Module, spec: dict[str, Any]) -> ReidModel:
    spec = {**spec, "hub_config": json.loads(backbone.config.to_json_string(use_diff=False))}
    if spec.get("last_stride_1"):
        spec["last_stride_1"] = set_last_stride_1(backbone)
    return ReidModel(HubBackbone(backbone), int(backbone.channels[-1]), spec)


def _builtin_model(name: str, head: str = "image") -> ReidModel:
    arch = name.removeprefix(BUILTIN_PREFIX)
    if arch not in BUILTINS:
        known = ", ".join(BUILTIN_PREFIX + n for n in BUILTINS)
        raise UsageError(f"unknown built-in backbone {name!r}; built-in ones: {known} ({SETTING} / --backbone)")
    net = BUILTINS[arch]()
    return ReidModel(net, net.channels, {"backbone": name, "kind": "builtin", "head": head})


def _unavailable(model_id: str, reason: str) -> Unavailable:
    reason = " ".join(reason.split())
    end = reason.find(". ", 20)  # the first sentence says it; the rest is advice about the hub
    reason = reason[: end + 1] if end > 0 else reason
    reason = reason if len(reason) <= 200 else reason[:197] + "..."
    return Unavailable(f"cannot load backbone {model_id!r}: {reason} (change it with the {SETTING} setting or "
                       f"--backbone, e.g. {BUILTIN_PREFIX}small to train without downloaded weights)")


def build_model(backbone: str = DEFAULT_BACKBONE, *, device: Any = "cpu",
                dtype: torch.dtype | None = None, head: str = "image") -> ReidModel:
    """The re-id model on `device` (parameters in `dtype`, default float32): `builtin:<name>` at
    random init, else the transformers backbone `backbone` (hub id or folder) with its
    pretrained weights, last stride 1 where the architecture allows (see the module doc);
    `head`: image or video (see ReidModel)."""
    if backbone.startswith(BUILTIN_PREFIX):
        model = _builtin_model(backbone, head)
    else:
        source = backbone
        if backbone.startswith(("/", "./", "../", "~")):  # a folder, never a hub id
            source = str(Path(backbone).expanduser())
            if not Path(source).is_dir():
                raise _unavailable(backbone, "folder not found")
        try:
            hub = _load_hub(source, dtype)
        except (OSError, ValueError, KeyError, ImportError) as err:
            # Not found, offline, gated, no safetensors, unknown or non-backbone architecture.
            raise _unavailable(backbone, str(err) or type(err).__name__) from err
        model = _hub_model(hub, {"backbone": backbone, "kind": "hub", "last_stride_1": True, "head": head})
    return model.to(device=device, dtype=dtype or torch.float32)


# --- checkpoints ---------------------------------------------------------------------------------


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> Path:
    """Save tensors (CPU, contiguous, unshared copies) to `path` atomically: a temporary file
    in the same folder, then renamed, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
    _atomic(path, lambda tmp: save_file(flat, tmp, metadata=metadata))
    return path


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(model: ReidModel, path_dir: str | Path, config: dict[str, Any] | None = None) -> Path:
    """`path_dir/model.safetensors` and `path_dir/model.json` (the architecture, and `config`,
    the caller's own JSON-able settings, under "config"); model.json is written last."""
    out = Path(path_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / WEIGHTS_FILE, model.state_dict(), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "version": FORMAT_VERSION, **model.spec, "config": config or {}}
    from dlcr_cli.io import write_text_atomic

    write_text_atomic(json.dumps(meta, indent=2, default=str) + "\n", out / CONFIG_FILE)
    return out


def read_model_json(path_dir: str | Path) -> dict[str, Any]:
    path = Path(path_dir) / CONFIG_FILE
    if not path.is_file():
        raise InputMissing(f"no re-id model in {path_dir} (no {CONFIG_FILE}; `dlcr train` writes one)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MalformedInput(f"{path}: not JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MalformedInput(f"{path}: not a dlcr re-id model description (format {FORMAT!r})")
    return meta


def _rebuild(meta: dict[str, Any], source: Path) -> ReidModel:
    """The architecture of model.json at random init, without network."""
    head = meta.get("head", "image")  # files written before video models are image models
    if head not in HEADS:
        raise MalformedInput(f"{source}: unknown model head {head!r} (known: {', '.join(HEADS)})")
    if meta.get("kind") == "builtin":
        return _builtin_model(meta["backbone"], head)
    if meta.get("kind") != "hub" or not isinstance(meta.get("hub_config"), dict):
        raise MalformedInput(f"{source}: unknown model kind {meta.get('kind')!r}")
    from transformers import AutoConfig

    hub_config = dict(meta["hub_config"])
    try:
        config = AutoConfig.for_model(hub_config.pop("model_type"), **hub_config)
        backbone = _backbone_class(config)(config)
    except (KeyError, ValueError) as err:
        raise MalformedInput(f"{source}: cannot rebuild backbone {meta.get('backbone')!r}: {err}") from err
    return _hub_model(backbone, {**{k: meta[k] for k in ("backbone", "kind", "last_stride_1") if k in meta},
                                 "head": head})


def load_checkpoint(path_dir: str | Path, device: Any = "cpu") -> ReidModel:
    """The model saved by `save_checkpoint` in `path_dir`, on `device`, in eval mode."""
    path_dir = Path(path_dir)
    meta = read_model_json(path_dir)
    weights = path_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise InputMissing(f"no {WEIGHTS_FILE} in {path_dir}")
    model = _rebuild(meta, path_dir / CONFIG_FILE)
    try:
        model.load_state_dict(load_file(weights, device="cpu"), strict=True)
    except (RuntimeError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MalformedInput(f"{weights}: does not match {CONFIG_FILE}: {first}") from err
    return model.to(device).eval()


# --- features ------------------------------------------------------------------------------------


def _images_of(batch: Any) -> torch.Tensor:
    """The image tensor of a loader's batch: the tensor itself, the first item of a tuple or
    list, or the "images" entry of a dict."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        return batch["images"]
    return batch[0]


def extract_features(model: nn.Module, batches: Iterable[Any], flip: bool = True, *, precision: str = "fp32",
                     normalize: bool = True) -> torch.Tensor:
    """N x D float32 CPU features: embedding(image) + embedding(its mirror image) with `flip`
    (CAL's extract_img_feature), L2-normalised with `normalize` (video clips
    are not: CAL averages a tracklet's raw clip features, then normalises). `batches`:
    normalised B x 3 x H x W images or B x T x 3 x H x W clips, or a loader whose batches hold
    them (see `_images_of`). `precision`: fp32, or fp16 / bf16 autocast. The model runs in eval
    mode and gets its training mode back afterwards."""
    from dlcr_cli.runtime import autocast

    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        with torch.inference_mode(), autocast(device, precision):
            for batch in batches:
                images = _images_of(batch).to(device, dtype, non_blocking=True)
                features = model(images).float()
                if flip:
                    features = features + model(images.flip(-1)).float()
                out.append((F.normalize(features, dim=1) if normalize else features).cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, getattr(model, "dim", 0))
    return torch.cat(out)
