"""DeepChange: `train-set/`, `{val,test}-set-{query,gallery}/`, each listed by `<folder>-bbox.txt`.

Each list line is `<image name>,<tracklet id>[,...]`; images are named
`P<pid>_C<cam>_D<day>_...jpg`. Following the reference code (CAL):

- pid is the integer after `P`; clothes is `<P token>_<D token>`: DeepChange has no outfit
  labels, and a person is taken to wear one outfit per day.
- camid is the tracklet id, not the camera: the DeepChange protocol counts a true match
  from the same camera but another tracklet, and evaluation drops same-pid, same-camid
  gallery images. The real camera is kept in the extra field `camera`.

Splits: train-set -> train; test-set-query -> query; test-set-gallery -> gallery;
val-set-{query,gallery} -> split "val" with an extra field `subset` = "query" / "gallery"
(same convention as LaST).

The lists, not the folders, say which images belong to a split (only listed images have a
tracklet id). Records come in sorted path order within each split. A split folder without
its list, or a listed image missing from disk, raises InputMissing; a list line or image
name that does not fit raises MalformedInput naming the list line or the image.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from dlcr_cli.errors import InputMissing, MalformedInput
from dlcr_cli.records import Record
from dlcr_cli.reid.datasets.common import make_record, match_name

NAME = "deepchange"
DESCRIPTION = (
    "DeepChange: train-set/, {val,test}-set-{query,gallery}/ with <folder>-bbox.txt lists"
    " (P<pid>_C<cam>_D<day>_...jpg)"
)

# (folder, record split, val subset)
SPLITS = (
    ("train-set", "train", None),
    ("val-set-query", "val", "query"),
    ("val-set-gallery", "val", "gallery"),
    ("test-set-query", "query", None),
    ("test-set-gallery", "gallery", None),
)
PATTERN = re.compile(r"(P(\d+))_C(\d+)_([^_]+)(?:_.*)?$")
EXPECTED = "P<pid>_C<cam>_D<day>_....jpg, e.g. P0001_C02_D20200101_T083000_F1_S2.jpg"


def detect(root: Path) -> Path | None:
    if any((root / folder).is_dir() for folder, _, _ in SPLITS):
        return root
    return None


def read_list(list_path: Path) -> list[tuple[str, int]]:
    """(image name, tracklet id) for each non-blank line of a `*-bbox.txt` list."""
    entries = []
    for number, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 2 or not fields[0] or not fields[1].isdigit():
            expected = "'<image name>,<tracklet id>'"
            raise MalformedInput(f"{list_path}:{number}: expected {expected}, got {line.strip()!r}")
        entries.append((fields[0], int(fields[1])))
    return entries


def parse(path: Path, tracklet: int) -> dict:
    pid_token, pid, cam, day = match_name(path, PATTERN, "DeepChange", EXPECTED).groups()
    return {"pid": int(pid), "camid": tracklet, "camera": int(cam), "clothes": f"{pid_token}_{day}"}


def scan_split(base: Path, folder: str, **fields: object) -> Iterator[Record]:
    list_path = base / f"{folder}-bbox.txt"
    if not list_path.is_file():
        raise InputMissing(f"{list_path}: missing; DeepChange lists each split's images there")
    for name, tracklet in sorted(read_list(list_path)):
        path = base / folder / name
        if not path.is_file():
            raise InputMissing(f"{path}: listed in {list_path.name} but not on disk")
        yield make_record(path, base, NAME, **parse(path, tracklet), **fields)


def scan(base: Path) -> Iterator[Record]:
    for folder, split, subset in SPLITS:
        if not (base / folder).is_dir():
            continue
        extra = {"subset": subset} if subset else {}
        yield from scan_split(base, folder, split=split, **extra)
