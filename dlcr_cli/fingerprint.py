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
from collections.abc import Iterable, Sequence
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


class Digests:
    """Content digests of files, cached by (size, mtime) in `cache` (a JSON file; None: no cache)."""

    def __init__(self, cache: Path | None = None, workers: int = 8) -> None:
        self.cache, self.workers = cache, workers
        self._known: dict[str, list] = self._load()
        self._dirty = False
        self.read = 0
        """Files read (not answered by the cache) so far: what the tests and the bench count."""

    def _load(self) -> dict[str, list]:
        if self.cache is None:
            return {}
        try:
            known = json.loads(self.cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return known if isinstance(known, dict) else {}

    def of(self, path: str | Path) -> str:
        return self.many([path])[0]

    def many(self, paths: Sequence[str | Path]) -> list[str]:
        """The digest of each path, in order (files the cache cannot vouch for read in threads)."""
        keys = [os.path.abspath(p) for p in paths]
        stats = [_stat(key) for key in keys]
        out: list[str | None] = [None] * len(keys)
        todo = []
        for i, (key, stat) in enumerate(zip(keys, stats)):
            if stat is None:
                out[i] = MISSING
                continue
            known = self._known.get(key)
            if known is not None and known[0] == stat[0] and known[1] == stat[1]:
                out[i] = known[2]
            else:
                todo.append(i)
        if todo:
            with ThreadPoolExecutor(min(self.workers, len(todo))) as pool:
                for i, digest in zip(todo, pool.map(_digest_or_missing, [keys[i] for i in todo])):
                    out[i] = digest
                    if digest != MISSING:
                        self._known[keys[i]] = [*stats[i], digest]
            self.read += len(todo)
            self._dirty = True
        return [d or MISSING for d in out]

    def save(self) -> None:
        """Write the cache (atomically) when new digests were computed."""
        if self.cache is None or not self._dirty:
            return
        from dlcr_cli.io import write_text_atomic

        self.cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(json.dumps(self._known, separators=(",", ":")), self.cache)
        self._dirty = False


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


def files_fingerprint(paths: Iterable[str | Path], digests: Digests) -> str:
    """One fingerprint of many files: their paths (as given) and contents, in order."""
    paths = [str(p) for p in paths]
    return fingerprint(list(zip(paths, digests.many(paths))))


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
