"""Helpers shared by the dataset layouts: listing images, naming errors, building records.

Every layout parses ids from an image's base name only (never the whole path, so a parent
folder that happens to look like a file name cannot change the result), lists folders in
sorted order (so records come out the same on every machine), skips hidden entries
(`.DS_Store`, macOS `._*` resource forks) and ignores files that are not images.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from dlcr_cli.errors import MalformedInput
from dlcr_cli.io import is_image
from dlcr_cli.records import Record


def sorted_dirs(folder: Path) -> list[Path]:
    """The visible subfolders of `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def sorted_images(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if is_image(p) and p.is_file())


def images_upto_one_level(folder: Path) -> list[Path]:
    """Images in `folder` and in its immediate subfolders, sorted by path."""
    found = sorted_images(folder)
    for sub in sorted_dirs(folder):
        found.extend(sorted_images(sub))
    return sorted(found)


def has_dirs(base: Path, *names: str) -> bool:
    return all((base / name).is_dir() for name in names)


def first_image_name(folder: Path) -> str | None:
    """The name of some image directly in `folder` (the first the OS lists), for cheap detection."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if is_image(Path(entry.name)) and entry.is_file():
                    return entry.name
    except OSError:
        return None
    return None


def name_fits(folder: Path, pattern: re.Pattern[str]) -> bool:
    """True when `folder` has no image yet, or its first-listed image matches `pattern`."""
    name = first_image_name(folder)
    return name is None or pattern.match(Path(name).stem) is not None


def match_name(path: Path, pattern: re.Pattern[str], layout: str, expected: str) -> re.Match[str]:
    """Match the file's stem (base name without extension) or raise MalformedInput."""
    found = pattern.match(path.stem)
    if found is None:
        raise malformed(path, layout, expected)
    return found


def malformed(path: Path, layout: str, expected: str) -> MalformedInput:
    return MalformedInput(f"{path}: name does not fit the {layout} layout (expected {expected})")


def make_record(path: Path, base: Path, dataset: str, **fields: object) -> Record:
    return Record(
        image=str(path.absolute()),
        rel=path.relative_to(base).as_posix(),
        dataset=dataset,
        **fields,
    )


def flat_split_records(
    base: Path, splits: Iterable[tuple[str, str]], parse, dataset: str
) -> Iterator[Record]:
    """Records for layouts whose split folders hold images directly (LTCC, VC-Clothes).

    `splits` pairs a folder name with the record split; `parse(path)` returns the id fields.
    Missing split folders are skipped, so a partial copy of a dataset still scans.
    """
    for folder, split in splits:
        if not (base / folder).is_dir():
            continue
        for path in sorted_images(base / folder):
            yield make_record(path, base, dataset, split=split, **parse(path))
