"""mask: human parsing -> the ID-preserving clothing mask (docs/method.md, stage 1).

A parser gives each image a label map (LIP or ATR ids); the policy keeps identity and
background (hat, hair, face, arms, legs) and marks every other label for repainting (255).
Both the mask and the label map are written, mirroring the input's relative paths:
`OUT/masks/<rel>.png` and `OUT/parsing/<rel>.png` (the latter is what the weight-free
backends of later stages read, and can itself be fed back with `--backend parsing`).

Both files carry a mark (dlcr_cli.fingerprint). The label map's: the fingerprint of the
parser (backend, model and revision, input size, dtype) and of the content of the files it
read (the image, and the given label map with `--backend parsing`); the mask's: that and the
policy (keep set, dilation). An existing file is reused only with the mark its record would
give it now: another policy redraws the masks from the label maps already there (which stay
as they are, so what reads them need not be done again); another parser or input parses again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageFilter

from dlcr_cli import labels as label_sets
from dlcr_cli.errors import ConfigError, ItemError, UsageError
from dlcr_cli.io import (
    label_set_of,
    load_label_map,
    load_rgb,
    mirrored,
    prefetch,
    save_atomic,
    save_label_map,
)
from dlcr_cli.records import Record, rel_path
from dlcr_cli.stages import Outcome, in_batches


@dataclass
class MaskJob:
    out: Path
    keep: list[str]
    dilation: int = 0
    overwrite: bool = False
    workers: int = 4
    digests: Any = None
    """dlcr_cli.fingerprint.Digests of the inputs (default: cached in `out`)."""

    def __post_init__(self) -> None:
        from dlcr_cli.fingerprint import CACHE_NAME, Digests

        if self.digests is None:
            self.digests = Digests(self.out / CACHE_NAME)


@dataclass
class Item:
    record: Record
    mask_path: Path
    parsing_path: Path
    size: tuple[int, int] = (0, 0)
    """(width, height) of the image."""
    payload: Any = None
    """What the parser read in a worker thread (SegFormer: the fitted pixels and where the
    image lies in them; parsing: the existing label map)."""
    error: str | None = None
    skipped: bool = False
    parsing_mark: str | None = None
    """The fingerprint of all that makes this item's label map."""
    mark: str | None = None
    """The fingerprint of all that makes its mask (the label map's and the policy)."""
    redraw: bool = False
    """The label map on disk is current, only the mask is to be drawn again (payload: the map)."""


class Parser(Protocol):
    labels: str | None
    """"lip" or "atr" (None until a parser that guesses has seen its first maps)."""
    batch_size: int
    fingerprint: str
    """Everything of the parser that changes its label maps."""

    def inputs(self, record: Record) -> list[Path | str]:
        """The files it reads for `record` (their content enters the item's mark)."""

    def read(self, item: Item) -> None:
        """Read what `parse` needs into item.payload and item.size (worker thread)."""

    def parse(self, items: list[Item]) -> list[np.ndarray]:
        """One uint8 label map per item, at the item's image size."""


def run_mask(records: Iterable[Record], parser: Parser, job: MaskJob) -> Iterator[Outcome]:
    """Mask every record, in input order; failures are outcomes, not exceptions."""
    items = prefetch(partial(_prepare, parser=parser, job=job), records, job.workers,
                     depth=2 * parser.batch_size + job.workers)
    try:
        with ThreadPoolExecutor(job.workers, thread_name_prefix="dlcr-write") as writers:
            for batch in in_batches((f.result() for f in items), parser.batch_size, _needs_parsing):
                yield from _finish_batch(batch, parser, job, writers)
    finally:
        job.digests.save()


def item_marks(record: Record, parser: Parser, job: MaskJob) -> tuple[str, str]:
    """(the label map's mark, the mask's mark) of a record."""
    from dlcr_cli.fingerprint import fingerprint

    parsing = fingerprint("parsing", parser.fingerprint, job.digests.many(parser.inputs(record)))
    return parsing, fingerprint("mask", parsing, sorted(job.keep), job.dilation)


def _prepare(record: Record, parser: Parser, job: MaskJob) -> Item:
    from dlcr_cli.fingerprint import has_mark

    rel = rel_path(record)
    item = Item(record, mirrored(job.out / "masks", rel), mirrored(job.out / "parsing", rel))
    item.parsing_mark, item.mark = item_marks(record, parser, job)
    try:
        if not job.overwrite and has_mark(item.parsing_path, item.parsing_mark):
            if has_mark(item.mask_path, item.mark):
                item.skipped = True
            else:
                item.redraw, item.payload = True, load_label_map(item.parsing_path)
                item.size = item.payload.shape[::-1]
            return item
        parser.read(item)
    except ItemError as err:
        item.error = str(err)
    return item


def _needs_parsing(item: Item) -> bool:
    return not (item.skipped or item.redraw) and item.error is None


def _finish_batch(batch: list[Item], parser: Parser, job: MaskJob, writers: ThreadPoolExecutor) -> Iterator[Outcome]:
    todo = [it for it in batch if _needs_parsing(it)]
    maps = parser.parse(todo) if todo else []
    written = {id(it): writers.submit(_write, it, m, parser.labels, job) for it, m in zip(todo, maps)}
    written.update({id(it): writers.submit(_write_mask, it, it.payload, _written_labels(it.parsing_path), job)
                    for it in batch if it.redraw and it.error is None})
    for item in batch:
        if id(item) in written:
            try:
                written[id(item)].result()
            except ItemError as err:
                item.error = str(err)
        if item.error is None:
            _annotate(item, parser.labels)
        yield Outcome(item.record, item.error, item.skipped)


def _write(item: Item, label_map: np.ndarray, labels: str, job: MaskJob) -> None:
    height, width = label_map.shape
    if (width, height) != item.size:
        raise ItemError(f"label map is {width}x{height} but the image is {item.size[0]}x{item.size[1]}")
    top = int(label_map.max())
    if top >= len(label_sets.LABEL_SETS[labels]):
        raise ItemError(f"label map has label {top}, outside {labels.upper()} (0-{len(label_sets.LABEL_SETS[labels]) - 1})")
    save_label_map(label_map, item.parsing_path, labels, item.parsing_mark)
    _write_mask(item, label_map, labels, job)  # last: a mask with its mark has its label map


def _write_mask(item: Item, label_map: np.ndarray, labels: str | None, job: MaskJob) -> None:
    from dlcr_cli.fingerprint import png_info

    if labels is None:
        raise ItemError(f"cannot tell the label set of {item.parsing_path} (LIP or ATR); pass --overwrite")
    save_atomic(Image.fromarray(clothing_mask(label_map, labels, job.keep, job.dilation)), item.mask_path,
                pnginfo=png_info(item.mark))


def clothing_mask(label_map: np.ndarray, labels: str, keep: list[str], dilation: int = 0) -> np.ndarray:
    """255 where the label is repainted (clothing), 0 where it is kept; optionally dilated."""
    mask = np.where(np.isin(label_map, label_sets.label_ids(labels, keep)), 0, 255).astype(np.uint8)
    if dilation > 0:
        mask = np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(2 * dilation + 1)))
    return mask


def _annotate(item: Item, labels: str | None) -> None:
    item.record.mask = str(item.mask_path.resolve())
    item.record.parsing = str(item.parsing_path.resolve())
    item.record.parsing_labels = _written_labels(item.parsing_path) if item.skipped or item.redraw else labels


def _written_labels(path: Path) -> str | None:
    value = label_set_of(path)
    return value if value in label_sets.LABEL_SETS else None


# --- parsers --------------------------------------------------------------------------------


@dataclass
class ParsingDirParser:
    """Existing label maps (e.g. SCHP's): the map of ROOT/a/b/name.jpg is DIR/a/b/name.png."""

    directory: Path
    labels: str | None = None
    batch_size: int = 32
    _seen: list[set[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.directory.is_dir():
            raise UsageError(f"parsing directory not found: {self.directory} (--parsing-dir)")
        self.fingerprint = f"parsing {self.labels or 'auto'}"

    def inputs(self, record: Record) -> list[Path | str]:
        return [record.image, self._map_of(record)]

    def _map_of(self, record: Record) -> Path:
        return mirrored(self.directory, rel_path(record))

    def read(self, item: Item) -> None:
        item.size = load_rgb(item.record.image).size
        item.payload = load_label_map(self._map_of(item.record))

    def parse(self, items: list[Item]) -> list[np.ndarray]:
        maps = [it.payload for it in items]
        if self.labels is None:
            self._guess([set(np.unique(m).tolist()) for m in maps])
        return maps

    def _guess(self, present: list[set[int]]) -> None:
        self._seen.extend(present)
        self.labels = label_sets.guess_label_set(self._seen)
        if self.labels is None:
            raise UsageError(
                f"cannot tell whether the label maps in {self.directory} use LIP or ATR labels; pass --labels lip or --labels atr"
            )


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SegformerParser:
    """A transformers semantic-segmentation model (SegFormer "clothes" fine-tunes: ATR).

    Our own pre-processing (resize to `input_size`, ImageNet normalisation) and
    post-processing (logits upsampled to each image's size, argmax): no torchvision.
    """

    def __init__(self, model_id: str, *, device: Any, dtype: Any, batch_size: int,
                 input_size: tuple[int, int], letterbox: bool = True, trust_remote_code: bool = False,
                 offload_idle: bool = True) -> None:
        from dlcr_cli.cache import CACHE
        from dlcr_cli.runtime import OomSplitter

        self.device, self.dtype = device, dtype
        self.batch_size = batch_size
        self.batches = OomSplitter("mask")
        self.input_size = input_size
        self.letterbox = letterbox
        from dlcr_cli.fingerprint import fingerprint, model_revision

        self.fingerprint = fingerprint("segformer", model_id, model_revision(model_id), input_size, letterbox, str(dtype))
        self.model = CACHE.get(
            "semantic-segmentation", model_id, dtype=dtype, device=device, setting="mask.model",
            offload_idle=offload_idle,
            load=partial(_load_segmentation_model, model_id, device, dtype, trust_remote_code),
        )
        self.labels = label_sets.identify_label_set(self.model.config.id2label)
        if self.labels is None:
            names = ", ".join(str(v) for v in list(self.model.config.id2label.values())[:6])
            raise ConfigError(f"model {model_id!r} predicts labels ({names}, ...) that are neither LIP nor ATR; set mask.model")

    def inputs(self, record: Record) -> list[Path | str]:
        return [record.image]

    def read(self, item: Item) -> None:
        img = load_rgb(item.record.image)
        item.size = img.size
        item.payload = fit(img, self.input_size, self.letterbox)

    def parse(self, items: list[Item]) -> list[np.ndarray]:
        return self.batches.run(self._parse, items)

    def _parse(self, items: list[Item]) -> list[np.ndarray]:
        import torch
        import torch.nn.functional as F

        pixels = torch.from_numpy(np.stack([it.payload[0] for it in items])).to(self.device)
        x = pixels.permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.dtype)
        with torch.inference_mode():
            logits = self.model(pixel_values=x).logits
            maps = []
            for item, lg in zip(items, logits):
                top, left, inner_h, inner_w = item.payload[1]
                width, height = item.size
                lg = F.interpolate(lg[None].float(), size=self.input_size, mode="bilinear", align_corners=False)
                lg = lg[:, :, top:top + inner_h, left:left + inner_w]
                up = F.interpolate(lg, size=(height, width), mode="bilinear", align_corners=False)
                maps.append(up.argmax(1)[0].to(torch.uint8).cpu().numpy())
        return maps


def fit(img: Image.Image, size: tuple[int, int], letterbox: bool) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The image at the model's input size, and where it lies there (top, left, h, w).

    Letterboxing keeps a tall crop's proportions, centred on ImageNet-mean padding (zero
    after normalisation), as SCHP's affine warp does.
    """
    height, width = size
    if not letterbox:
        return np.asarray(img.resize((width, height), Image.BILINEAR)), (0, 0, height, width)
    scale = min(height / img.height, width / img.width)
    inner_h, inner_w = max(1, round(img.height * scale)), max(1, round(img.width * scale))
    top, left = (height - inner_h) // 2, (width - inner_w) // 2
    canvas = Image.new("RGB", (width, height), tuple(round(255 * m) for m in IMAGENET_MEAN))
    canvas.paste(img.resize((inner_w, inner_h), Image.BILINEAR), (left, top))
    return np.asarray(canvas), (top, left, inner_h, inner_w)


def _load_segmentation_model(model_id: str, device: Any, dtype: Any, trust_remote_code: bool) -> Any:
    from transformers import AutoModelForSemanticSegmentation

    model = AutoModelForSemanticSegmentation.from_pretrained(
        model_id, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model.eval().to(device)


def make_parser(settings: Any) -> Parser:
    """The parser the settings ask for (`settings`: dlcr_cli.settings.Settings)."""
    m = settings.mask
    if m.backend == "parsing":
        if m.parsing_dir is None:
            raise UsageError("--backend parsing needs --parsing-dir DIR (or the mask.parsing_dir setting)")
        return ParsingDirParser(m.parsing_dir, None if m.labels == "auto" else m.labels, batch_size=m.batch_size)
    from dlcr_cli.runtime import resolve_device, resolve_dtype

    device = resolve_device(settings.device)
    return SegformerParser(
        m.model, device=device, dtype=resolve_dtype(m.dtype, device), batch_size=m.batch_size,
        input_size=m.input_size, letterbox=m.resize == "letterbox",
        trust_remote_code=settings.models.trust_remote_code,
        offload_idle=settings.models.offload_idle,
    )
