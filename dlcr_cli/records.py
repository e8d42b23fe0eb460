"""Records: one JSON object per image, the stream that flows between dlcr commands: the
record model and its JSON lines. Reading an INPUT argument (dataset root, folder, JSONL file,
stdin) is dlcr_cli.inputs, above both this and the dataset layouts."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from dlcr_cli.errors import MalformedInput

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
