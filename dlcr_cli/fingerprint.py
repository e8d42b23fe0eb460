"""Fingerprints: when an output may be reused, the one rule for every resumable thing in dlcr.

An output is reused only when the fingerprint of everything that made it matches the one
recorded with it: the content of the input files (images, masks, parsing maps), the settings
that change outputs, the model and its revision, the prompt table. A fingerprint is a hash of
JSON-able parts (`fingerprint`); a file enters it by its content digest (`Digests`), never by
its path alone, so a mask redone with another dilation, or a replaced image, changes the
fingerprint of everything made from it.

Reading every input file again to digest it would make resuming a finished 100k-image stage
cost a full read of the data, so digests are cached: a file whose size and modification time
(ns) are those recorded is taken to hold the recorded digest; any other file is read again.
The cache is a JSON file beside the outputs it serves (a run folder's state, an output
folder), rewritten atomically; processes writing it at once lose only each other's entries,
which costs a re-read, never a wrong digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CACHE_NAME = ".dlcr-digests.json"
"""The digest cache's file name inside the folder it serves."""

_CHUNK = 1 << 20


def fingerprint(*parts: Any) -> str:
    """A hex hash of `parts` (JSON-able: settings dicts, ids, digests), the same on every
    machine and Python run."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | Path) -> str:
    """The BLAKE2b digest (128 bits, hex) of a file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


MISSING = "missing"
"""The digest of a file that does not exist (it fingerprints as absent, not as an error: the
stage reading it reports that)."""


_KNOWN: dict[str, list] = {}
"""Every digest this process has read or loaded: path -> [size, mtime_ns, digest]. Shared by
all `Digests`, so a file two stages read (expand's keys, mask's marks) is read once."""
_LOCK = threading.Lock()


class Digests:
    """Content digests of files, cached by (size, mtime) in `cache` (a JSON file; None: in
    memory only). Safe to use from several threads."""

    def __init__(self, cache: Path | None = None, workers: int = 8) -> None:
        self.cache, self.workers = cache, workers
        self._mine: set[str] = set()
        """The paths this cache file holds and will hold."""
        self._dirty = False
        self.read = 0
        """Files read (not answered by a cache) so far: what the tests and the bench count."""
        self._load()

    def _load(self) -> None:
        if self.cache is None:
            return
        try:
            known = json.loads(self.cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(known, dict):
            with _LOCK:
                for key, value in known.items():
                    _KNOWN.setdefault(key, value)
                self._mine.update(known)

    def of(self, path: str | Path) -> str:
        return self.many([path])[0]

    def many(self, paths: Sequence[str | Path]) -> list[str]:
        """The digest of each path, in order (files no cache can vouch for read in threads)."""
        keys = [os.path.abspath(p) for p in paths]
        stats = [_stat(key) for key in keys]
        out: list[str] = [MISSING] * len(keys)
        todo = []
        with _LOCK:
            for i, (key, stat) in enumerate(zip(keys, stats)):
                known = _KNOWN.get(key)
                if stat is None:
                    continue
                if known is not None and known[0] == stat[0] and known[1] == stat[1]:
                    out[i] = known[2]
                else:
                    todo.append(i)
            self._dirty |= not self._mine.issuperset(keys)
            self._mine.update(keys)
        if todo:
            with ThreadPoolExecutor(max(1, min(self.workers, len(todo)))) as pool:
                digests = list(pool.map(_digest_or_missing, [keys[i] for i in todo]))
            with _LOCK:
                for i, digest in zip(todo, digests):
                    out[i] = digest
                    if digest != MISSING:
                        _KNOWN[keys[i]] = [*stats[i], digest]
                self.read += len(todo)
                self._dirty = True
        return out

    def save(self) -> None:
        """Write the cache file (atomically) when it has something new."""
        if self.cache is None or not self._dirty:
            return
        from dlcr_cli.io import write_text_atomic

        with _LOCK:
            known = {key: _KNOWN[key] for key in sorted(self._mine) if key in _KNOWN}
            self._dirty = False
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(json.dumps(known, separators=(",", ":")), self.cache)


def forget() -> None:
    """Drop the digests held in memory (as a new process starts; the tests use it)."""
    with _LOCK:
        _KNOWN.clear()


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _digest_or_missing(path: str) -> str:
    try:
        return file_digest(path)
    except OSError:
        return MISSING


def record_files(*fields: str) -> Callable[[Any], list[str]]:
    """record -> the paths its `fields` name (image, mask, parsing), in that order, unset ones left out."""
    return lambda record: [str(value) for value in (getattr(record, name) for name in fields) if value]


def model_revision(model_id: str) -> str:
    """What identifies a model's weights beyond its id: the commit the hub cache holds for the
    id (read offline), or, for a local folder, the names, sizes and modification times of its
    files (digesting gigabytes of weights on every run would cost more than the stage). An id
    the hub cache does not hold gives "" (the first load downloads it)."""
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        return fingerprint([(p.relative_to(folder).as_posix(), *(_stat(str(p)) or ())) for p in files])
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return ""
    refs = Path(HF_HUB_CACHE) / f"models--{model_id.replace('/', '--')}" / "refs" / "main"
    try:
        return refs.read_text().strip()
    except OSError:
        return ""


# --- marks: an output file's fingerprint, kept in the file itself ------------------------------

MARK = "dlcr"
"""The PNG text key of an output's mark: the fingerprint of all that made its pixels."""


def has_mark(path: str | Path, mark: str) -> bool:
    """The file exists and carries `mark` (its header and text chunks are read, not its pixels)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return getattr(image, "text", {}).get(MARK) == mark
    except (OSError, ValueError, AttributeError, SyntaxError):
        return False


def png_info(mark: str | None, **text: str) -> Any:
    """PNG text chunks: the mark (when given) and `text`, for PIL's save(pnginfo=...)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in {**text, **({MARK: mark} if mark else {})}.items():
        info.add_text(key, value)
    return info
