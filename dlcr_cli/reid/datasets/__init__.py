"""Clothes-changing re-id dataset layouts: detect which one a folder holds, and list its images.

Each layout module has `NAME`, `DESCRIPTION` (one line, for error messages),
`detect(root) -> base | None` (cheap: folder names and at most one file name) and
`scan(base) -> Iterator[Record]` (every image of every split, in sorted order).

Malformed names: every layout raises MalformedInput naming the file (or the list file and
line, for DeepChange and CCVID) rather than skipping it, since a silently dropped image
changes the evaluation protocol unnoticed.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from dlcr_cli.reid.datasets import ccvid, deepchange, last, ltcc, prcc, vcclothes

# PRCC before LaST: both have train/val/test, told apart by test/A vs test/query.
# CCVID last: it is told by its list files only, so folder layouts win.
LAYOUTS: tuple[ModuleType, ...] = (prcc, ltcc, vcclothes, last, deepchange, ccvid)

# A folder holding one of these is a dataset even if no layout recognises it.
_TELLING_FOLDERS = frozenset({
    "rgb", "ltcc_reid", "train-set", "val-set-query", "val-set-gallery", "test-set-query",
    "test-set-gallery", "bounding_box_train", "bounding_box_test",
})
# Generic split names: two of them make a dataset (one `test/` folder among photos does not).
_SPLIT_FOLDERS = frozenset({"train", "val", "test", "query", "gallery"})


def detect_layout(root: Path) -> tuple[ModuleType, Path] | None:
    """The layout module and the folder that holds its splits, or None (also for a non-folder)."""
    root = Path(root)
    if not root.is_dir():
        return None
    for layout in LAYOUTS:
        base = layout.detect(root)
        if base is not None:
            return layout, base
    return None


def known_layouts_text() -> str:
    """All layout descriptions on one line (errors are printed as one line)."""
    return "; ".join(layout.DESCRIPTION for layout in LAYOUTS)


def looks_like_dataset(root: Path) -> bool:
    """True when `root` has split-like subfolders: an unknown layout, not a plain image folder."""
    root = Path(root)
    if not root.is_dir():
        return False
    names = {p.name.lower() for p in root.iterdir() if p.is_dir()}
    return bool(names & _TELLING_FOLDERS) or len(names & _SPLIT_FOLDERS) >= 2
