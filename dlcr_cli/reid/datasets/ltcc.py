"""LTCC: `LTCC_ReID/{train,query,test}/<pid>_<clothes>_c<cam>_<frame>.png`.

- pid is the integer of the first token; clothes is `<pid token>_<clothes token>` (e.g.
  `001_1_c11_015.png` -> pid 1, clothes "001_1"), unique over the dataset because the
  clothes token is only unique per person.
- camid is the camera number as written (c11 -> 11). The reference code (CAL) subtracts 1;
  only equality of camids matters for evaluation, so the raw number is kept.
- `test/` is the gallery.
- An image whose name does not fit the pattern raises MalformedInput naming it: silently
  dropping it would change the evaluation protocol without anyone noticing.
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

NAME = "ltcc"
DESCRIPTION = "LTCC: [LTCC_ReID/]{train,query,test}/<pid>_<clothes>_c<cam>_<frame>.png"

WRAPPER = "LTCC_ReID"
SPLITS = (("train", "train"), ("query", "query"), ("test", "gallery"))
PATTERN = re.compile(r"(\d+)_(\d+)_c(\d+)(?:_.*)?$")
EXPECTED = "<pid>_<clothes>_c<cam>_<frame>.png, e.g. 001_1_c11_015.png"


def detect(root: Path) -> Path | None:
    for base in (root, root / WRAPPER):
        # query + test (not gallery) tell LTCC from VC-Clothes; a name check tells it from others.
        if has_dirs(base, "query", "test") and name_fits(base / "query", PATTERN):
            return base
    return None


def parse(path: Path) -> dict:
    pid, clothes, cam = match_name(path, PATTERN, "LTCC", EXPECTED).groups()
    return {"pid": int(pid), "camid": int(cam), "clothes": f"{pid}_{clothes}"}


def scan(base: Path) -> Iterator[Record]:
    return flat_split_records(base, SPLITS, parse, NAME)
