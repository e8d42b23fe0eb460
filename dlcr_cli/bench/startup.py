"""`dlcr bench startup` and `dlcr bench describe`: the measurements that need no model.

startup: wall time of whole `dlcr --help` processes (what every TAB press pays), the median
of several runs, and which heavy modules the CLI import pulled in (none, by design).

describe: images/s of `describe --backend colors` (the weight-free baseline) on the embedded
synthetic data, in this process.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HEAVY = ("torch", "transformers", "diffusers", "accelerate")
_PROBE = ("import sys, time; t = time.perf_counter(); import dlcr_cli.cli; "
          "print(time.perf_counter() - t); print(','.join(m for m in {heavy!r} if m in sys.modules))")


def run_startup_bench(runs: int = 10) -> dict[str, Any]:
    """Median, min and max seconds of `python -m dlcr_cli --help` as a whole process, and the
    import of the CLI module alone (with the heavy modules it imported)."""
    help_seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dlcr_cli", "--help"], capture_output=True, check=True)
        help_seconds.append(time.perf_counter() - start)
    probe = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY)], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return {
        "help_seconds": {"median": round(statistics.median(help_seconds), 4), "min": round(min(help_seconds), 4),
                         "max": round(max(help_seconds), 4), "runs": runs},
        "import_seconds": round(float(probe[0]), 4),
        "heavy_modules_imported": [m for m in (probe[1] if len(probe) > 1 else "").split(",") if m],
    }


def run_describe_bench(ids: int = 24) -> dict[str, Any]:
    """Images/s of the colours backend over the records of a synthetic dataset (masks and
    label maps made first, untimed)."""
    from dlcr_cli.inputs import read_records
    from dlcr_cli.stages.describe import ColourDescriber, run_describe
    from dlcr_cli.synth import synthesize

    with tempfile.TemporaryDirectory(prefix="dlcr-bench-") as tmp:
        data = Path(tmp) / "data"
        synthesize(data, ids=ids)
        records = [r.model_copy(update={"parsing": str(data / "parsing" / Path(r.rel).with_suffix(".png")),
                                        "parsing_labels": "lip"}) for r in read_records(str(data))]
        start = time.perf_counter()
        done = sum(o.error is None for o in run_describe(records, ColourDescriber(), overwrite=True, workers=4))
        seconds = time.perf_counter() - start
    return {"backend": "colors", "images": done, "seconds": round(seconds, 3),
            "images_per_s": round(done / seconds, 1) if seconds else None}
