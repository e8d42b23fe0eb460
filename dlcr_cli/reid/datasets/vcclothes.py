"""VC-Clothes: `{train,query,gallery}/<pid>-<cam>-<clothes>-<n>.jpg`.

- pid is the integer of the first token; clothes is `<pid token>_<clothes token>` (the
  reference code glues the two tokens without a separator, which could collide).
- camid is the camera number as written (1..4); the reference code subtracts 1, and its
  'sc'/'cc' protocols name cameras 2&3 and 3&4 in this raw numbering.
- An image whose name does not fit the pattern raises MalformedInput naming it, rather than
  being dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from dlcr_cli.records import Record
from dlcr_cli.reid.datasets.common import (
    flat_split_records,
    has_dirs,
    match_name,
    name_fits,
)

NAME = "vcclothes"
DESCRIPTION = "VC-Clothes: {train,query,gallery}/<pid>-<cam>-<clothes>-<n>.jpg"

SPLITS = (("train", "train"), ("query", "query"), ("gallery", "gallery"))
PATTERN = re.compile(r"(\d+)-(\d+)-(\d+)-(\d+)$")
EXPECTED = "<pid>-<cam>-<clothes>-<n>.jpg, e.g. 0001-01-01-01.jpg"


def detect(root: Path) -> Path | None:
    # Other datasets share train/query/gallery (Celeb-reID...): the file name decides.
    if has_dirs(root, "query", "gallery") and name_fits(root / "query", PATTERN):
        return root
    return None


def parse(path: Path) -> dict:
    pid, cam, clothes, _ = match_name(path, PATTERN, "VC-Clothes", EXPECTED).groups()
    return {"pid": int(pid), "camid": int(cam), "clothes": f"{pid}_{clothes}"}


def scan(base: Path) -> Iterator[Record]:
    return flat_split_records(base, SPLITS, parse, NAME)
