"""Image files: reading with per-item errors, atomic writes, mirrored output paths, prefetch."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, TypeVar

from PIL import Image, UnidentifiedImageError

from dlcr_cli.errors import ItemError

if TYPE_CHECKING:
    import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

T = TypeVar("T")
R = TypeVar("R")


def is_image(path: Path) -> bool:
    """An image file name (by extension); hidden files (`.DS_Store`, `._x.jpg`) are not."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


@contextmanager
def _opened(path: str | Path, what: str, say_path: bool) -> Iterator[Image.Image]:
    """Image.open whose failures, while opening or decoding, are one ItemError for this item.

    The item's own image needs no path in the message (the log line starts with it); a
    companion file (a label map) does.
    """
    where = f": {path}" if say_path else ""
    try:
        with Image.open(path) as img:
            yield img
    except FileNotFoundError:
        raise ItemError(f"{what} not found{where}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ItemError(f"cannot read {what}{where} ({err})") from None


def load_rgb(path: str | Path) -> Image.Image:
    """The decoded RGB image, or ItemError naming what is wrong with the file."""
    with _opened(path, "image", say_path=False) as img:
        return img.convert("RGB")


def load_label_map(path: str | Path) -> "np.ndarray":
    """A single-channel label map as uint8 ids (palette or grey PNG, as SCHP writes them)."""
    import numpy as np

    with _opened(path, "label map", say_path=True) as img:
        if img.mode not in ("P", "L"):
            raise ItemError(f"label map {path} has mode {img.mode}; expected one channel of label ids")
        return np.asarray(img, dtype=np.uint8).copy()


LABELS_KEY = "dlcr:labels"
"""PNG text chunk naming the label set ("lip"/"atr") of a label map dlcr wrote."""


def save_label_map(label_map: "np.ndarray", path: Path, labels: str, mark: str | None = None) -> None:
    """A palette PNG of label ids (viewable, and read back as ids), its label set noted, and
    `mark` (dlcr_cli.fingerprint) when given."""
    import numpy as np

    from dlcr_cli.fingerprint import png_info
    from dlcr_cli.labels import voc_palette

    height, width = label_map.shape
    img = Image.frombytes("P", (width, height), np.ascontiguousarray(label_map, dtype=np.uint8).tobytes())
    img.putpalette(voc_palette())
    save_atomic(img, path, pnginfo=png_info(mark, **{LABELS_KEY: labels}))


def label_set_of(path: Path) -> str | None:
    """The label set a label map dlcr wrote notes (None for others' maps)."""
    with Image.open(path) as img:
        return getattr(img, "text", {}).get(LABELS_KEY)


def parsing_labels_of(declared: str | None, path: str | Path, label_map: "np.ndarray") -> str:
    """The label set of a parsing map: as the record declares it, else as dlcr noted it in
    the PNG, else guessed from its ids; an item error when there is no telling."""
    import numpy as np

    from dlcr_cli.labels import guess_label_set

    labels = declared or label_set_of(path) or guess_label_set([set(np.unique(label_map).tolist())])
    if labels not in ("lip", "atr"):
        raise ItemError(f"cannot tell whether {path} holds LIP or ATR labels; set parsing_labels in the record")
    return labels


def save_atomic(img: Image.Image, path: Path, **params) -> None:
    """Write next to the target, then rename: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        img.save(tmp, format=_format_of(path), **params)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(text: str, path: Path) -> None:
    """A text file written whole or not at all (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _format_of(path: Path) -> str:
    return {".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), path.suffix[1:].upper())


def mirrored(out_dir: Path, rel: str, suffix: str = ".png") -> Path:
    """out_dir/rel with the suffix replaced; `..` and anchors cannot escape out_dir."""
    parts = [p for p in PurePosixPath(rel.replace("\\", "/")).parts if p not in ("/", "..", ".")]
    return out_dir.joinpath(*parts).with_suffix(suffix)


def prefetch(fn: Callable[[T], R], items: Iterable[T], workers: int, depth: int) -> Iterator[Future]:
    """fn over items in threads, at most `depth` ahead, futures yielded in input order.

    Unlike Executor.map this does not drain `items` first, so a stream (stdin) flows.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dlcr-io") as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= depth:
                yield pending.popleft()
        while pending:
            yield pending.popleft()
