"""Records: one JSON object per image, the stream that flows between dlcr commands."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from dlcr_cli.errors import InputMissing, MalformedInput

Split = Literal["train", "val", "query", "gallery"]


class Record(BaseModel):
    """One image and what the stages know about it.

    Unknown fields are kept and written back unchanged, so records pass through any
    command (and jq) without losing what other tools added.
    """

    model_config = ConfigDict(extra="allow")

    image: str
    """Path of the image file (absolute when dlcr wrote it)."""
    rel: str | None = None
    """The image's path relative to its dataset root: output trees mirror it."""
    dataset: str | None = None
    pid: int | str | None = None
    camid: int | None = None
    clothes: str | None = None
    """Clothing id, unique over the whole dataset (e.g. `<pid>_<outfit>`)."""
    split: Split | None = None
    mask: str | None = None
    parsing: str | None = None
    parsing_labels: Literal["lip", "atr"] | None = None
    description: str | None = None
    """What the person wears, in words (`dlcr describe`)."""
    prompt: str | None = None
    """The inpainting prompt of the record's clothing id (`dlcr summarize`)."""


# --- reading --------------------------------------------------------------------------------

PATH_FIELDS = ("image", "mask", "parsing")
"""Fields holding file paths: relative ones in a JSONL file are resolved against its folder."""


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


def parse_jsonl(lines: Iterable[str], name: str, base: Path) -> Iterator[Record]:
    """Records from JSON lines; a bad line ends the run naming file and line (exit 65)."""
    for number, line in enumerate(_decoded(lines, name), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise MalformedInput(f"{name}:{number}: not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(data, dict):
            raise MalformedInput(f"{name}:{number}: a record must be a JSON object, got {type(data).__name__}")
        try:
            record = Record.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "record"
            raise MalformedInput(f"{name}:{number}: {field}: {first['msg'].lower()}") from None
        yield _absolute_paths(record, base)


def _decoded(lines: Iterable[str], name: str) -> Iterator[str]:
    try:
        yield from lines
    except UnicodeDecodeError as err:
        raise MalformedInput(f"{name}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _absolute_paths(record: Record, base: Path) -> Record:
    for field in PATH_FIELDS:
        value = getattr(record, field)
        if value and not Path(value).is_absolute():
            setattr(record, field, str(base / value))
    return record


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


def rel_path(record: Record) -> str:
    """Where the record's outputs go, relative to an output folder: `rel`, else the image
    path relative to the working directory, else the absolute path without its anchor."""
    if record.rel:
        return record.rel
    image = Path(record.image).resolve()
    try:
        return image.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return image.relative_to(image.anchor).as_posix()


# --- writing --------------------------------------------------------------------------------


def record_json(record: Record) -> str:
    return json.dumps(record.model_dump(mode="json", exclude_unset=True), ensure_ascii=False)


def write_record(record: Record) -> None:
    """One line on stdout, flushed, so the next command in a pipe starts at once."""
    sys.stdout.write(record_json(record) + "\n")
    sys.stdout.flush()
