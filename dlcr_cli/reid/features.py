"""Query and gallery features with their labels and settings: extracted from a model, saved to
and read from `.npz` files.

A feature file (`dlcr evaluate --save-features`, or written by any code) is an `.npz` holding

    query_feats, gallery_feats          N x D float
    query_pids, gallery_pids            N integers
    query_camids, gallery_camids        N integers
    query_clothes, gallery_clothes      N integers

and, when dlcr wrote it, also `query_paths`, `gallery_paths` (the images, for retrieval
strips), `protocol`, and the protocol's settings (`setting_names`, `setting_modes`,
`setting_<i>_query`, `setting_<i>_gallery`: indices into the arrays), so a saved file is
evaluated exactly as its dataset was (PRCC's camera subsets included). It is read with
`allow_pickle=False`: a file never runs code.

Video data (CCVID): the query and gallery entries are tracklets, labelled by their first
frame. A video model (CAL's c2dres50) embeds each tracklet as CAL's test does: the tracklet
cut into clips (`video.test_clips`), the mean of its clip features, L2-normalised; an image
model's frame features are averaged per tracklet and normalised again.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlcr_cli.errors import InputMissing, MalformedInput
from dlcr_cli.reid.data import MODES, EvalSetting, ReidData, Sample, tracklet_frames, tracklet_groups
from dlcr_cli.reid.generated import Variant
from dlcr_cli.reid.metrics import Labels

if TYPE_CHECKING:
    import torch

DEFAULT_IMAGE_SIZE = (384, 192)
"""Height and width of the reference's test transform, for checkpoints that do not say theirs."""

SIDES = ("query", "gallery")
LABEL_KEYS = ("pids", "camids", "clothes")
REQUIRED = tuple(f"{side}_{key}" for side in SIDES for key in ("feats", *LABEL_KEYS))


@dataclass
class FeatureSet:
    """Features and labels of both sides, and the settings that evaluate them."""

    query: np.ndarray
    gallery: np.ndarray
    query_labels: Labels
    gallery_labels: Labels
    settings: list[EvalSetting]
    protocol: str = "features"
    query_paths: list[str] | None = None
    gallery_paths: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.query.shape[1])

    def paths(self, side: str) -> list[str] | None:
        return self.query_paths if side == "query" else self.gallery_paths

    def of(self, setting: EvalSetting) -> tuple[np.ndarray, np.ndarray, Labels, Labels]:
        """The setting's query and gallery features and labels."""
        return (self.query[setting.query], self.gallery[setting.gallery], self.query_labels.take(setting.query),
                self.gallery_labels.take(setting.gallery))


def settings_over_all(n_query: int, n_gallery: int, modes: Sequence[str] = MODES) -> list[EvalSetting]:
    """One setting per mode over every query and gallery entry (what a bare feature file gets)."""
    q, g = np.arange(n_query, dtype=np.int64), np.arange(n_gallery, dtype=np.int64)
    return [EvalSetting(mode, mode, q, g) for mode in modes]


# --- files --------------------------------------------------------------------------------


def save_features(features: FeatureSet, path: Path) -> Path:
    """Write `features` to `path` (an .npz) atomically: a reader never sees half a file."""
    return save_npz(feature_arrays(features), path)


def feature_arrays(features: FeatureSet) -> dict[str, np.ndarray]:
    """The arrays of a feature file (the module doc) holding `features`."""
    arrays: dict[str, np.ndarray] = {"query_feats": features.query.astype(np.float32),
                                     "gallery_feats": features.gallery.astype(np.float32)}
    for side, labels in (("query", features.query_labels), ("gallery", features.gallery_labels)):
        for key in LABEL_KEYS:
            arrays[f"{side}_{key}"] = getattr(labels, key)
        paths = features.paths(side)
        if paths is not None:
            arrays[f"{side}_paths"] = np.array(paths, dtype=str)
    arrays["protocol"] = np.array(features.protocol)
    arrays["setting_names"] = np.array([s.name for s in features.settings], dtype=str)
    arrays["setting_modes"] = np.array([s.mode for s in features.settings], dtype=str)
    for i, setting in enumerate(features.settings):
        arrays[f"setting_{i}_query"], arrays[f"setting_{i}_gallery"] = setting.query, setting.gallery
    return arrays


def save_npz(arrays: dict[str, np.ndarray], path: Path) -> Path:
    """`arrays` as an .npz at `path`, written atomically (a temporary file, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_features(path: Path) -> FeatureSet:
    """The feature file at `path` (.npz, or a .safetensors file of `dlcr embed`); a missing file is exit 66, anything malformed exit 65 with
    the file and the key at fault."""
    path = Path(path)
    if not path.is_file():
        raise InputMissing(f"feature file not found: {path}")
    if path.suffix.lower() == ".safetensors":  # dlcr embed's other format
        from dlcr_cli.reid.embed import load

        arrays = load(path)
    else:
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise MalformedInput(f"{path}: not a readable .npz feature file ({_reason(err)})") from None
    missing = [key for key in REQUIRED if key not in arrays]
    if missing:
        raise MalformedInput(f"{path}: no {', '.join(missing)} (a feature file holds {', '.join(REQUIRED)})")
    sides = {side: _side(path, arrays, side) for side in SIDES}
    (qf, ql, qp), (gf, gl, gp) = sides["query"], sides["gallery"]
    if qf.shape[1] != gf.shape[1]:
        raise MalformedInput(f"{path}: query features are {qf.shape[1]}-d, gallery features {gf.shape[1]}-d")
    settings = _stored_settings(path, arrays, len(qf), len(gf))
    protocol = str(arrays["protocol"]) if "protocol" in arrays else "features"
    return FeatureSet(qf, gf, ql, gl, settings or settings_over_all(len(qf), len(gf)), protocol, qp, gp)


def _reason(err: BaseException) -> str:
    return " ".join(str(err).split())[:160] or type(err).__name__


def _side(path: Path, arrays: dict[str, np.ndarray], side: str) -> tuple[np.ndarray, Labels, list[str] | None]:
    feats = arrays[f"{side}_feats"]
    if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.number) or np.issubdtype(feats.dtype, np.complexfloating):
        raise MalformedInput(f"{path}: {side}_feats must be an N x D array of numbers, got {feats.dtype} "
                             f"of shape {feats.shape}")
    if not np.isfinite(feats).all():
        raise MalformedInput(f"{path}: {side}_feats holds NaN or infinite values")
    labels = []
    for key in LABEL_KEYS:
        values = arrays[f"{side}_{key}"]
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
            raise MalformedInput(f"{path}: {side}_{key} must be a 1-d integer array, got {values.dtype} "
                                 f"of shape {values.shape}")
        if len(values) != len(feats):
            raise MalformedInput(f"{path}: {side}_{key} has {len(values)} entries, {side}_feats {len(feats)} rows")
        labels.append(values)
    paths = arrays.get(f"{side}_paths")
    if paths is not None and len(paths) != len(feats):
        raise MalformedInput(f"{path}: {side}_paths has {len(paths)} entries, {side}_feats {len(feats)} rows")
    return feats.astype(np.float32, copy=False), Labels(*labels), None if paths is None else [str(p) for p in paths]


def _stored_settings(path: Path, arrays: dict[str, np.ndarray], n_query: int, n_gallery: int) -> list[EvalSetting]:
    if "setting_names" not in arrays:
        return []
    names, modes = arrays["setting_names"], arrays.get("setting_modes")
    if modes is None or len(modes) != len(names):
        raise MalformedInput(f"{path}: setting_modes must name one mode per entry of setting_names")
    settings = []
    for i, (name, mode) in enumerate(zip(names, modes)):
        if str(mode) not in MODES:
            raise MalformedInput(f"{path}: setting {name}: mode {str(mode)!r} is not one of {', '.join(MODES)}")
        idx = []
        for side, size in (("query", n_query), ("gallery", n_gallery)):
            key = f"setting_{i}_{side}"
            values = arrays.get(key)
            if values is None or values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
                raise MalformedInput(f"{path}: {key} must be a 1-d integer array of {side} indices")
            if len(values) and (values.min() < 0 or values.max() >= size):
                raise MalformedInput(f"{path}: {key} holds indices outside 0..{size - 1}")
            idx.append(values.astype(np.int64))
        settings.append(EvalSetting(str(name), str(mode), *idx))
    return settings


# --- extraction ---------------------------------------------------------------------------


def extract_features(model: torch.nn.Module, data: ReidData, *, size: tuple[int, int], batch_size: int = 128,
                     workers: int = 4, flip: bool = True, precision: str = "fp32",
                     clip: tuple[int, int] = (8, 4)) -> FeatureSet:
    """Features of every query and gallery image of `data` (embedding of the image plus its
    mirror image, L2-normalised), batched on the model's device while threads read and resize
    the next images; for video data, one per tracklet (see the module doc; `clip`: the video
    model's test clips, length and stride).

    An image that cannot be read ends the run with its path: metrics over part of a gallery
    are not the protocol's numbers.
    """
    if data.video and getattr(model, "video", False):
        tracklets = {side: tracklet_frames(getattr(data, side)) for side in SIDES}
        frames = [[x.path for x in frames] for side in SIDES for frames in tracklets[side]]
        feats = embed_tracklets(model, frames, size=size, batch_size=batch_size, workers=workers,
                                precision=precision, clip=clip)
        n = len(tracklets["query"])
        return tracklet_set(data.query, data.gallery, feats[:n], feats[n:], list(data.settings), data.name)
    samples = data.query + data.gallery
    feats = embed_images(model, [s.path for s in samples], size=size, batch_size=batch_size, workers=workers,
                         flip=flip, precision=precision)
    return image_feature_set(data, feats)


def image_feature_set(data: ReidData, feats: np.ndarray) -> FeatureSet:
    """The FeatureSet of `data` from the features of its query then gallery images, in that
    order: one per image, or for video data one per tracklet (its frames' mean, normalised)."""
    query, gallery = feats[: len(data.query)], feats[len(data.query):]
    features = FeatureSet(query, gallery, _labels(data.query), _labels(data.gallery), list(data.settings),
                          data.name, [s.path for s in data.query], [s.path for s in data.gallery])
    return pool_tracklets(features, data.query, data.gallery) if data.video else features


def embed_images(model: torch.nn.Module, images: Sequence[str | Variant], *, size: tuple[int, int],
                 batch_size: int = 128, workers: int = 4, flip: bool = True, precision: str = "fp32",
                 what: str = "features", bar: Any = None) -> np.ndarray:
    """N x D float32 L2-normalised features of image files or generated variants (a strip's
    tile), read and resized by threads while the model runs; progress as `what` (or on the
    caller's `bar`)."""
    from dlcr_cli.console import progress
    from dlcr_cli.reid.model import extract_features as embed

    with progress(what, len(images), enabled=bar is None) as own:
        return embed(model, _batches(images, size, batch_size, workers, bar or own, _load_batch), flip=flip,
                     precision=precision).numpy()


def embed_tracklets(model: torch.nn.Module, tracklets: Sequence[Sequence[str | Variant]], *, size: tuple[int, int],
                    batch_size: int = 128, workers: int = 4, precision: str = "fp32", clip: tuple[int, int] = (8, 4),
                    what: str = "tracklets") -> np.ndarray:
    """N x D float32 features of tracklets (each its frames in order: files or generated
    variants) under a video model, as CAL's test (extract_vid_feature): every clip of
    `video.test_clips` embedded without mirroring, the tracklet's clip features averaged and
    L2-normalised. `batch_size` counts frames: clips go batch_size // clip length at a time."""
    from dlcr_cli.console import progress
    from dlcr_cli.reid.model import extract_features as embed
    from dlcr_cli.reid.video import test_clips

    length, stride = clip
    clips, owner = [], []
    for t, frames in enumerate(tracklets):
        for indices in test_clips(len(frames), length, stride):
            clips.append([frames[i] for i in indices])
            owner.append(t)
    with progress(what, len(clips), unit="clips") as bar:
        feats = embed(model, _batches(clips, size, max(1, batch_size // length), workers, bar, _load_clips),
                      flip=False, precision=precision, normalize=False).numpy()
    dim = feats.shape[1] if len(feats) else getattr(model, "dim", 0)
    sums = np.zeros((len(tracklets), dim), np.float64)
    np.add.at(sums, np.asarray(owner, dtype=np.int64), feats.astype(np.float64))
    counts = np.bincount(np.asarray(owner, dtype=np.int64), minlength=len(tracklets))[:, None]
    return l2_normalized(sums / np.maximum(counts, 1)).astype(np.float32)


def l2_normalized(rows: np.ndarray) -> np.ndarray:
    """Each row (of the last axis) divided by its norm; zero rows stay zero."""
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def _labels(samples: Sequence[Sample]) -> Labels:
    return Labels(*(np.array([getattr(s, key) for s in samples], dtype=np.int64) for key in ("pid", "camid", "clothes")))


def _batches(items: Sequence[Any], size: tuple[int, int], batch_size: int, workers: int, bar: Any,
             load: Any) -> Iterator[torch.Tensor]:
    """`load(group, size)` of consecutive groups of `batch_size` items, read by threads ahead of use."""
    from dlcr_cli.io import prefetch

    groups = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    for future in prefetch(lambda group: load(group, size), groups, workers, depth=max(2, workers)):
        batch = future.result()
        yield batch
        bar.advance(len(batch))


def _load_batch(images: Sequence[str | Variant], size: tuple[int, int]) -> torch.Tensor:
    import torch

    from dlcr_cli.reid.transforms import test_transform

    transform = test_transform(size)
    return torch.stack([transform(read_image(image)) for image in images])


def _load_clips(clips: Sequence[Sequence[str | Variant]], size: tuple[int, int]) -> torch.Tensor:
    import torch

    from dlcr_cli.reid.video import clip_test_transform

    transform = clip_test_transform(size)
    return torch.stack([transform([read_image(frame) for frame in clip]) for clip in clips])


def read_image(image: str | Variant) -> torch.Tensor:
    """3 x H x W uint8 RGB of a file or of a generated variant (its tile of a strip); a missing
    file is exit 66, an unreadable one 65, each naming the file."""
    from PIL import Image, UnidentifiedImageError

    from dlcr_cli.reid.transforms import to_tensor

    path = image.path if isinstance(image, Variant) else image
    if not Path(path).is_file():
        raise InputMissing(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            return to_tensor(image.crop(rgb) if isinstance(image, Variant) else rgb)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise MalformedInput(f"{path}: unreadable image ({_reason(err)})") from None


def pool_tracklets(features: FeatureSet, query: Sequence[Sample], gallery: Sequence[Sample]) -> FeatureSet:
    """Frames -> tracklets: the mean of each tracklet's frame features, L2-normalised."""
    pooled = []
    for samples, feats in ((query, features.query), (gallery, features.gallery)):
        groups = tracklet_groups(samples)
        mean = np.stack([feats[g].mean(0) for g in groups]) if groups else np.zeros((0, feats.shape[1]), np.float32)
        pooled.append(l2_normalized(mean))
    return tracklet_set(query, gallery, *pooled, features.settings, features.protocol)


def tracklet_set(query: Sequence[Sample], gallery: Sequence[Sample], query_feats: np.ndarray,
                 gallery_feats: np.ndarray, settings: Sequence[EvalSetting], protocol: str) -> FeatureSet:
    """The FeatureSet of tracklet features (in `tracklet_groups` order), each tracklet labelled
    and located by its first frame; the frame-indexed settings move to tracklet indices."""
    sides = []
    for samples in (query, gallery):
        groups = tracklet_groups(samples)
        owner = np.empty(len(samples), dtype=np.int64)
        for t, group in enumerate(groups):
            owner[group] = t
        firsts = [samples[g[0]] for g in groups]
        sides.append((_labels(firsts), [s.path for s in firsts], owner))
    (ql, qp, qo), (gl, gp, go) = sides
    moved = [EvalSetting(s.name, s.mode, np.unique(qo[s.query]), np.unique(go[s.gallery])) for s in settings]
    return FeatureSet(query_feats.astype(np.float32), gallery_feats.astype(np.float32), ql, gl, moved, protocol, qp, gp)
