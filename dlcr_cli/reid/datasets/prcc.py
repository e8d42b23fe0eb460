"""PRCC: `rgb/{train,val}/<pid>/<A|B|C>*.jpg` and `rgb/test/{A,B,C}/<pid>/*.jpg`.

- pid is the integer of the person folder's name; camid is A=0, B=1, C=2, taken from the
  first letter of the file name in train/val and from the camera folder in test.
- Cameras A and B see the same outfit and C another, so clothes is `<pid folder>_AB` or
  `<pid folder>_C` (as in the reference code).
- Splits: train, val (rgb/val), gallery (test/A), query (test/B: same clothes, and
  test/C: changed clothes).
- A person folder that is not a number, an image outside a person folder, or a train/val
  image whose name does not start with A, B or C raises MalformedInput naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dlcr_cli.records import Record
from dlcr_cli.reid.datasets.common import (
    has_dirs,
    make_record,
    malformed,
    sorted_dirs,
    sorted_images,
)

NAME = "prcc"
DESCRIPTION = "PRCC: [rgb/]{train,val}/<pid>/<A|B|C>*.jpg, [rgb/]test/{A,B,C}/<pid>/*.jpg"

WRAPPER = "rgb"
CAMERAS = {"A": 0, "B": 1, "C": 2}
TEST_SPLITS = (("A", "gallery"), ("B", "query"), ("C", "query"))
TRAIN_EXPECTED = "{train,val}/<pid>/<A|B|C>*.jpg, e.g. train/001/A_cropped_rgb001.jpg"
TEST_EXPECTED = "test/{A,B,C}/<pid>/*.jpg"


def detect(root: Path) -> Path | None:
    for base in (root, root / WRAPPER):
        # test/A (camera folders) is what tells PRCC from LaST, which also has train/val/test.
        if has_dirs(base, "train", "test/A"):
            return base
    return None


def clothes_of(pid_token: str, camera: str) -> str:
    return f"{pid_token}_{'C' if camera == 'C' else 'AB'}"


def person_folders(split_dir: Path, expected: str) -> Iterator[tuple[Path, int]]:
    """(folder, pid) for each person folder; a stray image or a non-numeric folder is malformed."""
    strays = sorted_images(split_dir)
    if strays:
        raise malformed(strays[0], "PRCC", expected)
    for folder in sorted_dirs(split_dir):
        if not folder.name.isdigit():
            raise malformed(folder, "PRCC", expected)
        yield folder, int(folder.name)


def scan_train(base: Path, split: str) -> Iterator[Record]:
    for folder, pid in person_folders(base / split, TRAIN_EXPECTED):
        for path in sorted_images(folder):
            camera = path.name[0]
            if camera not in CAMERAS:
                raise malformed(path, "PRCC", TRAIN_EXPECTED)
            yield make_record(path, base, NAME, pid=pid, camid=CAMERAS[camera],
                              clothes=clothes_of(folder.name, camera), split=split)


def scan_test(base: Path) -> Iterator[Record]:
    for camera, split in TEST_SPLITS:
        cam_dir = base / "test" / camera
        if not cam_dir.is_dir():
            continue
        for folder, pid in person_folders(cam_dir, TEST_EXPECTED):
            for path in sorted_images(folder):
                yield make_record(path, base, NAME, pid=pid, camid=CAMERAS[camera],
                                  clothes=clothes_of(folder.name, camera), split=split)


def scan(base: Path) -> Iterator[Record]:
    for split in ("train", "val"):
        if (base / split).is_dir():
            yield from scan_train(base, split)
    yield from scan_test(base)
