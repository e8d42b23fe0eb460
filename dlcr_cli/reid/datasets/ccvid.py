"""CCVID (video): `{train,query,gallery}.txt` listing tracklet folders of frames.

Each list line is `<tracklet dir> <pid> <clothes label>` (whitespace-separated), e.g.
`session1/001_01 001 u1_l1_s1_c1_b1`; the tracklet folder, relative to the dataset root,
holds the tracklet's frames. Following the reference code (CAL, data/datasets/ccvid.py):

- pid is the integer of the pid token; clothes is `<pid token>_<clothes label>` (the label
  alone is only unique per person).
- camid is the number after the first `_` of the tracklet folder's name (`001_05` -> 5),
  plus 12 in `session3` (other cameras than sessions 1 and 2). The reference splits the
  whole path at `_`; here the folder's own name is parsed, so a parent folder with `_` in
  its name cannot change the camera.

One record per frame (sorted by name) with the extra field `tracklet` (the tracklet dir as
listed), so that evaluation can average frame features per tracklet. A list line that does
not fit raises MalformedInput naming list and line; a listed folder that is missing or has
no frames raises InputMissing naming them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from dlcr_cli.errors import InputMissing, MalformedInput
from dlcr_cli.records import Record
from dlcr_cli.reid.datasets.common import make_record, sorted_images

NAME = "ccvid"
DESCRIPTION = "CCVID: [CCVID/]{train,query,gallery}.txt with lines '<tracklet dir> <pid> <clothes>'"

WRAPPER = "CCVID"
LISTS = (("train.txt", "train"), ("query.txt", "query"), ("gallery.txt", "gallery"))
EXPECTED = "'<session>/<pid>_<cam> <pid> <clothes label>', e.g. 'session1/001_01 001 u1_l1_s1_c1_b1'"
SESSION3_CAMERA_OFFSET = 12


def detect(root: Path) -> Path | None:
    for base in (root, root / WRAPPER):
        # Lists, not folders, define CCVID; put last in LAYOUTS so folder layouts win.
        if (base / "query.txt").is_file() and (base / "gallery.txt").is_file():
            return base
    return None


def parse_line(line: str, where: str) -> tuple[str, int, int, str]:
    """(tracklet dir, pid, camid, clothes) of one list line."""
    fields = line.split()
    if len(fields) != 3 or not fields[1].isdigit():
        raise MalformedInput(f"{where}: expected {EXPECTED}, got {line.strip()!r}")
    tracklet, pid, label = fields
    path = PurePosixPath(tracklet.replace("\\", "/"))
    cam = path.name.split("_")[1] if "_" in path.name else ""
    if not cam.isdigit() or ".." in path.parts or path.is_absolute():
        raise MalformedInput(f"{where}: tracklet folder {tracklet!r} does not fit (expected {EXPECTED})")
    offset = SESSION3_CAMERA_OFFSET if path.parts[0] == "session3" else 0
    return path.as_posix(), int(pid), int(cam) + offset, f"{pid}_{label}"


def read_list(list_path: Path) -> Iterator[tuple[str, tuple[str, int, int, str]]]:
    """('<list>:<line>', parsed line) for each non-blank line."""
    try:
        text = list_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise MalformedInput(f"{list_path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            where = f"{list_path}:{number}"
            yield where, parse_line(line, where)


def scan_list(base: Path, list_name: str, split: str) -> Iterator[Record]:
    for where, (tracklet, pid, camid, clothes) in read_list(base / list_name):
        folder = base / tracklet
        if not folder.is_dir():
            raise InputMissing(f"{where}: tracklet folder {folder} not found")
        frames = sorted_images(folder)
        if not frames:
            raise InputMissing(f"{where}: tracklet folder {folder} has no frames")
        for path in frames:
            yield make_record(path, base, NAME, pid=pid, camid=camid, clothes=clothes, split=split, tracklet=tracklet)


def scan(base: Path) -> Iterator[Record]:
    for list_name, split in LISTS:
        if (base / list_name).is_file():
            yield from scan_list(base, list_name, split)
