"""Reading an INPUT argument: `-` (JSONL on stdin), a JSONL file, a dataset root (layout
detected), a folder of images, or one image, as records. It sits above the record model
(dlcr_cli.records) and the dataset layouts (dlcr_cli.reid.datasets, which build records), so
that neither depends on the other's side."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

from dlcr_cli.errors import InputMissing, MalformedInput
from dlcr_cli.records import Record, parse_jsonl


class RecordStream:
    """The records of an INPUT, and how many there are when that is known up front
    (a dataset or a folder; not a JSONL stream), for progress bars with an ETA."""

    def __init__(self, records: Iterator[Record], total: int | None) -> None:
        self._records = records
        self.total = total

    def __iter__(self) -> Iterator[Record]:
        return self._records


def read_records(source: str) -> RecordStream:
    """Records from an INPUT argument: `-` (stdin JSONL), a JSONL file, a dataset root
    (layout detected), a folder of images, or one image.

    Errors in the input's form come at once; empty input is an error (exit 66), so a
    pipeline whose first command produced nothing does not end in silent success.
    """
    empty = InputMissing(f"no records in {'<stdin>' if source == '-' else source}")
    found = _records_from(source)
    if isinstance(found, list):
        if not found:
            raise empty
        return RecordStream(iter(found), len(found))
    first = next(found, None)
    if first is None:
        raise empty
    return RecordStream(itertools.chain([first], found), None)


def _records_from(source: str) -> list[Record] | Iterator[Record]:
    from dlcr_cli.io import is_image

    if source == "-":
        return parse_jsonl(sys.stdin, "<stdin>", Path.cwd())
    path = Path(source).expanduser()
    if not path.exists():
        raise InputMissing(f"input not found: {source}")
    if path.is_dir():
        return _records_from_folder(path)
    if is_image(path):
        return [Record(image=str(path.resolve()), rel=path.name)]
    return _records_from_jsonl_file(path)


def _records_from_jsonl_file(path: Path) -> Iterator[Record]:
    try:
        f = path.open(encoding="utf-8")
    except OSError as err:
        raise InputMissing(f"cannot open {path}: {err.strerror}") from None
    with f:
        yield from parse_jsonl(f, str(path), path.resolve().parent)


def _records_from_folder(root: Path) -> list[Record]:
    from dlcr_cli.io import is_image
    from dlcr_cli.reid import datasets

    found = datasets.detect_layout(root)
    if found is not None:
        layout, base = found
        return list(layout.scan(base))
    if datasets.looks_like_dataset(root):
        raise MalformedInput(
            f"{root}: looks like a dataset but matches no known layout; known layouts:\n"
            + datasets.known_layouts_text()
        )
    images = sorted(p for p in root.rglob("*") if p.is_file() and is_image(p) and not _hidden(p, root))
    if not images:
        raise InputMissing(f"no images and no known dataset layout in {root}")
    return [Record(image=str(p.resolve()), rel=p.relative_to(root).as_posix()) for p in images]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


