"""`dlcr bench digests`: what the reuse rule costs (dlcr_cli.fingerprint).

Every reuse decision digests the content of the input files; resuming a finished stage must
not read them all again. This writes `files` files of `size` random bytes, then times in one
run: (a) the first pass, which reads every file; (b) a resume, as a new process does it: the
cache file loaded, every file stat'ed, no file read.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any


def run_digests_bench(files: int = 100_000, size: int = 20_000, work: Path | None = None) -> dict[str, Any]:
    from dlcr_cli.fingerprint import CACHE_NAME, Digests, forget

    with tempfile.TemporaryDirectory(prefix="dlcr-bench-digests-", dir=work) as tmp:
        root = Path(tmp)
        paths = _write_files(root, files, size)
        rows = []
        for name in ("(a) first run: every file read", "(b) resume: cache file, stat only"):
            forget()  # as a new process: only the cache file knows digests
            start = time.perf_counter()
            digests = Digests(root / CACHE_NAME)
            digests.many(paths)
            digests.save()
            seconds = time.perf_counter() - start
            rows.append({"name": name, "files": files, "read": digests.read, "seconds": round(seconds, 3),
                         "files_per_s": round(files / seconds, 1) if seconds else None})
        cache_mb = (root / CACHE_NAME).stat().st_size / 1e6
        forget()
    return {"files": files, "bytes_per_file": size, "rows": rows, "cache_mb": round(cache_mb, 2),
            "speedup": round(rows[0]["seconds"] / rows[1]["seconds"], 1) if rows[1]["seconds"] else None}


def _write_files(root: Path, files: int, size: int) -> list[Path]:
    """`files` files in folders of 1000, like a dataset's."""
    paths = []
    for i in range(files):
        folder = root / f"{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir()
        path = folder / f"{i:06d}.png"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def print_report(report: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    from dlcr_cli.console import stderr

    stderr.print(f"dlcr bench digests: {report['files']} files of {report['bytes_per_file']} bytes, "
                 f"cache file {report['cache_mb']} MB", highlight=False)
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("", "files read", "seconds", "files/s"):
        table.add_column(column, justify="right" if column else "left")
    for row in report["rows"]:
        table.add_row(row["name"], str(row["read"]), f"{row['seconds']:.2f}", f"{row['files_per_s']:.0f}")
    stderr.print(table)
