"""Generated training data: every training image's ordered list of generated variants.

Three forms, told apart from the source itself:

- records: a JSONL file (or `-`) of `dlcr inpaint` records, matched to training images by
  their `source` field and ordered by `variant`. Records of a strip run all point at their
  source's strip: a record whose PNG has a `.txt` beside it is tile `variant` of that strip.
- files: a `dlcr inpaint --format files` folder, `<rel dir>/<stem>_v<k>.png`, matched to a
  training image by its path relative to its dataset root (Sample.rel), ordered by k.
- strip: the authors' released format, also `dlcr inpaint --format strip`: the dataset's tree
  with `<rel dir>/<stem>.png` holding K tiles side by side and `<stem>.txt` with one prompt
  per line. K is the .txt's line count, checked against the PNG width (K * the source's
  width) from the PNG header only: scanning never decodes an image.

A folder whose tree is rooted one level off the dataset root (the released archive's own top
folder, or a folder of the train split only) is matched after the alignment of paths that
matches most images. Training images without variants get an empty list; generated images of
no training image are counted in a warning. A strip whose .txt and width disagree, or a
record without `source`, raises MalformedInput naming the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dlcr_cli.console import log
from dlcr_cli.errors import InputMissing, MalformedInput
from dlcr_cli.inputs import read_records
from dlcr_cli.io import mirrored
from dlcr_cli.records import Record
from dlcr_cli.reid.data import Sample

VARIANT_NAME = re.compile(r"(.+)_v(\d+)$")
"""A files-format variant's stem: `<source stem>_v<k>` (the last `_v<k>` when there are several)."""


@dataclass(frozen=True)
class Variant:
    """One generated image: a whole file, or tile `tile` of `tiles` side by side in a strip."""

    path: str
    tile: int | None = None
    tiles: int | None = None
    prompt: str | None = None

    def crop(self, image: Image.Image) -> Image.Image:
        """The variant's pixels from the decoded file (the tile of a strip, else the image)."""
        if self.tile is None or self.tiles is None:
            return image
        width = image.width // self.tiles
        return image.crop((self.tile * width, 0, (self.tile + 1) * width, image.height))


def read_generated(source: str | Path, train: Sequence[Sample], what: str = "training") -> dict[str, list[Variant]]:
    """Training image path -> its variants in order, for every training sample (or of other
    samples, the queries of refinement: `what` names them in the messages)."""
    found: dict[str, list[Variant]] = {s.path: [] for s in train}
    text = str(source)
    path = Path(text).expanduser()
    if text != "-" and not path.exists():
        raise InputMissing(f"generated data not found: {source}")
    form = "records" if text == "-" or not path.is_dir() else None
    if form:
        unmatched = _from_records(text, train, found)
    else:
        form, unmatched = _from_folder(path, train, found)
    _report(form, source, found, unmatched, what)
    return found


def _report(form: str, source: str | Path, found: dict[str, list[Variant]], unmatched: int, what: str) -> None:
    counts = [len(v) for v in found.values() if v]
    if unmatched:
        unit = {"records": "records", "files": "images", "strip": "strips"}[form]
        log.warning("%s: %d generated %s belong to no %s image (left out)", source, unmatched, unit, what)
    if not counts:
        log.warning("%s: no generated images of any of the %d %s images", source, len(found), what)
        return
    each = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
    log.info("generated data (%s): %d of %d %s images have %s variants", form, len(counts), len(found), what, each)


# --- records --------------------------------------------------------------------------------


def _from_records(source: str, train: Sequence[Sample], found: dict[str, list[Variant]]) -> int:
    """Fill `found` from dlcr inpaint records; returns how many matched no training image."""
    by_source: dict[str, list[tuple[tuple, Record]]] = {}
    for order, record in enumerate(read_records(source)):
        origin = getattr(record, "source", None)
        if not origin:
            raise MalformedInput(f"{source}: {record.image}: no source field (not a dlcr inpaint record)")
        variant = getattr(record, "variant", None)
        by_source.setdefault(str(origin), []).append(((variant is None, variant or 0, order), record))
    match = _path_matcher(train)
    unmatched = 0
    strips: dict[str, tuple[int, list[str]]] = {}
    for origin, items in by_source.items():
        path = match(origin)
        if path is None:
            unmatched += len(items)
            continue
        for _, record in sorted(items, key=lambda item: item[0]):
            found[path].append(_record_variant(record, path, strips))
    return unmatched


def _path_matcher(train: Sequence[Sample]) -> Callable[[str], str | None]:
    """Source path -> training path: exactly, else both with symlinks and `..` resolved."""
    exact = {s.path for s in train}
    resolved: dict[str, str] = {}

    def match(origin: str) -> str | None:
        if origin in exact:
            return origin
        if not resolved:
            resolved.update((os.path.realpath(p), p) for p in exact)
        return resolved.get(os.path.realpath(origin))

    return match


def _record_variant(record: Record, train_path: str, strips: dict[str, tuple[int, list[str]]]) -> Variant:
    image = Path(record.image)
    prompt = getattr(record, "prompt", None)
    text = image.with_suffix(".txt")
    if image.suffix.lower() != ".png" or not text.is_file():
        return Variant(record.image, prompt=prompt)
    if record.image not in strips:
        strips[record.image] = _strip_size(image, text, train_path)
    tiles, _ = strips[record.image]
    tile = getattr(record, "variant", None)
    if not isinstance(tile, int) or not 0 <= tile < tiles:
        raise MalformedInput(f"{record.image}: variant {tile!r} of a strip of {tiles} tiles ({text.name})")
    return Variant(record.image, tile, tiles, prompt)


# --- folders --------------------------------------------------------------------------------


def _from_folder(root: Path, train: Sequence[Sample], found: dict[str, list[Variant]]) -> tuple[str, int]:
    """Fill `found` from a files or strip folder; returns the form and how many matched nothing."""
    strips, files = _scan_tree(root)
    if strips and files:
        first_strip, first_file = next(iter(strips.values())), next(iter(files.values()))[0][1]
        raise MalformedInput(f"{root}: holds both strips ({first_strip}) and per-variant files ({first_file}); "
                             "point at one form")
    if not strips and not files:
        raise InputMissing(f"{root}: no generated images (expected <stem>_v<k>.png files, or <stem>.png strips "
                           "with a <stem>.txt beside each)")
    generated = strips or files
    targets = {_key(s): s.path for s in train}
    align = _alignment(list(generated), targets, root)
    matched = {key: targets[align(key)] for key in generated if align(key) in targets}
    if strips:
        _fill_strips(strips, matched, found)
    else:
        for key, path in matched.items():
            found[path] = [Variant(str(file)) for _, file in sorted(files[key])]
    unmatched = sum(len(files[k]) if files else 1 for k in generated if k not in matched)
    return ("strip" if strips else "files"), unmatched


def _key(sample: Sample) -> str:
    """Where a training image's generated data lives, without suffix: `<rel dir>/<stem>` as
    dlcr inpaint mirrors it (`..` and anchors dropped)."""
    return mirrored(Path(), sample.rel or Path(sample.path).name, "").as_posix()


def _scan_tree(root: Path) -> tuple[dict[str, Path], dict[str, list[tuple[int, Path]]]]:
    """(strip key -> PNG, files key -> [(k, PNG)]), keys `<rel dir>/<stem>`; one walk, sorted."""
    strips: dict[str, Path] = {}
    files: dict[str, list[tuple[int, Path]]] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        texts = {name[:-4] for name in names if name.endswith(".txt")}
        for name in sorted(names):
            if name.startswith(".") or not name.lower().endswith(".png"):
                continue
            stem = name[:-4]
            if stem in texts:
                strips[prefix + stem] = Path(folder) / name
            elif found := VARIANT_NAME.match(stem):
                files.setdefault(prefix + found[1], []).append((int(found[2]), Path(folder) / name))
    return strips, files


def _alignment(keys: list[str], targets: dict[str, str], root: Path) -> Callable[[str], str]:
    """The key mapping that matches most of a sample of `keys` to `targets`: as is, without
    1-3 leading folders, or under one of the training tree's top folders."""
    candidates: list[tuple[str, Callable[[str], str]]] = [("", lambda k: k)]
    for n in (1, 2, 3):
        candidates.append((f"without {n} leading folder(s)", lambda k, n=n: _without_leading(k, n)))
    for top in sorted({t.split("/", 1)[0] for t in targets if "/" in t}):
        candidates.append((f"under {top}/", lambda k, top=top: f"{top}/{k}"))
    sample = keys[:: max(1, len(keys) // 2000)]
    scores = [sum(fn(k) in targets for k in sample) for _, fn in candidates]
    best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
    if best and scores[best]:
        log.info("%s: matched to the training images' paths %s", root, candidates[best][0])
    return candidates[best][1]


def _without_leading(key: str, n: int) -> str:
    parts = key.split("/", n)
    return parts[n] if len(parts) > n else ""


def _fill_strips(strips: dict[str, Path], matched: dict[str, str], found: dict[str, list[Variant]]) -> None:
    jobs = [(strips[key], path) for key, path in matched.items()]
    with ThreadPoolExecutor(8, thread_name_prefix="dlcr-strips") as pool:  # header reads: I/O bound
        sizes = list(pool.map(lambda job: _strip_size(job[0], job[0].with_suffix(".txt"), job[1]), jobs))
    for (png, path), (tiles, prompts) in zip(jobs, sizes):
        found[path] = [Variant(str(png), k, tiles, prompts[k]) for k in range(tiles)]


def _strip_size(png: Path, text: Path, source: str) -> tuple[int, list[str]]:
    """(tile count, prompts) of a strip: the .txt's lines, checked against the PNG's width."""
    prompts = _lines(text)
    width = _width(png)
    if width is None:
        raise MalformedInput(f"{png}: not a readable PNG (its {text.name} lists {len(prompts)} variants)")
    if width % len(prompts):
        raise MalformedInput(f"{png}: {width} px wide, not {len(prompts)} equal tiles as {text.name} has lines")
    tile = _width(Path(source))
    if tile is not None and width != len(prompts) * tile:
        raise MalformedInput(f"{png}: {width} px wide, but {text.name} lists {len(prompts)} variants of a "
                             f"{tile} px wide image ({len(prompts) * tile} px expected)")
    return len(prompts), prompts


def _lines(text: Path) -> list[str]:
    try:
        lines = text.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise MalformedInput(f"{text}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise InputMissing(f"cannot read {text}: {err.strerror}") from None
    lines = _trimmed(lines)
    if not lines:
        raise MalformedInput(f"{text}: empty; a strip's .txt has one prompt per variant")
    return lines


def _trimmed(lines: Iterable[str]) -> list[str]:
    """Lines without trailing blank ones (an editor's extra newline is not a variant)."""
    out = list(lines)
    while out and not out[-1].strip():
        out.pop()
    return out


def _width(path: Path) -> int | None:
    """The image's width from its header (PIL opens lazily: no pixel is decoded), None if unreadable."""
    try:
        with Image.open(path) as image:
            return image.width
    except (OSError, ValueError):
        return None
