"""LaST: `train/<pid>/*.jpg`, `{val,test}/query/*.jpg`, `{val,test}/gallery/<pid>/*.jpg`.

File names are `<pid>_..._<clothes>.jpg`: pid is the integer of the first token and clothes
is `<first token>_<last token>`, as in the reference code (CAL). LaST labels clothes in
train only; in val/test the last token is kept as found and is not a verified outfit
label (CAL uses the pid as the clothes label there).

LaST has no camera ids, so, like the reference code, every image is its own camera: camid
counts images in sorted order, within train, and within each of val and test with the
gallery numbered after the query (query 0..n-1, gallery n..), so no query shares a camid
with a gallery image.

Splits: train; test/query -> query; test/gallery -> gallery; val/query and val/gallery ->
split "val" with an extra field `subset` = "query" / "gallery" (val is a second, smaller
query/gallery protocol for model selection, not part of the test).

Query folders are flat and other folders hold person folders, but images directly in or
one folder below any split folder are all taken (some copies flatten the gallery). An
image whose name does not fit raises MalformedInput naming it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from dlcr_cli.records import Record
from dlcr_cli.reid.datasets.common import (
    has_dirs,
    images_upto_one_level,
    make_record,
    match_name,
    name_fits,
)

NAME = "last"
DESCRIPTION = (
    "LaST: train/<pid>/*.jpg, {val,test}/query/*.jpg, {val,test}/gallery/<pid>/*.jpg"
    " (<pid>_..._<clothes>.jpg)"
)

PATTERN = re.compile(r"(\d+)(?:_[^_]*)*_([^_]+)$")
EXPECTED = "<pid>_..._<clothes>.jpg, e.g. 000001_0_0_000123_1.jpg"


def detect(root: Path) -> Path | None:
    for part in ("test", "val"):
        # {val,test}/{query,gallery} tells LaST from PRCC; a name check tells it from others.
        query = root / part / "query"
        if has_dirs(root, f"{part}/gallery") and query.is_dir() and name_fits(query, PATTERN):
            return root
    return None


def parse(path: Path) -> dict:
    pid, clothes = match_name(path, PATTERN, "LaST", EXPECTED).groups()
    return {"pid": int(pid), "clothes": f"{pid}_{clothes}"}


def images(folder: Path) -> list[Path]:
    return images_upto_one_level(folder) if folder.is_dir() else []


def records(base: Path, paths: list[Path], first_camid: int, **fields: object) -> Iterator[Record]:
    for camid, path in enumerate(paths, start=first_camid):
        yield make_record(path, base, NAME, camid=camid, **parse(path), **fields)


def scan(base: Path) -> Iterator[Record]:
    yield from records(base, images(base / "train"), 0, split="train")
    for part in ("val", "test"):
        query, gallery = images(base / part / "query"), images(base / part / "gallery")
        if part == "val":
            yield from records(base, query, 0, split="val", subset="query")
            yield from records(base, gallery, len(query), split="val", subset="gallery")
        else:
            yield from records(base, query, 0, split="query")
            yield from records(base, gallery, len(query), split="gallery")
