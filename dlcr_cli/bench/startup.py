"""`dlcr bench startup` and `dlcr bench describe`: the measurements that need no model.

startup: wall time of whole `dlcr --help` and TAB-completion processes next to `python -c
"import torch"` in the same run (the ratio is the figure: machines differ, ratios less), and
which heavy modules the CLI import pulled in (none, by design).

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
TARGET_RATIO = 0.2
"""What `dlcr --help` and a TAB completion may cost, as a share of `import torch`."""


def _dlcr_command() -> list[str]:
    """The installed `dlcr` console script beside this Python (what a user runs), else the module."""
    import shutil

    script = Path(sys.executable).with_name("dlcr")
    found = str(script) if script.is_file() else shutil.which("dlcr")
    return [found] if found else [sys.executable, "-m", "dlcr_cli"]


def _timed(command: list[str], runs: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    import os

    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, env={**os.environ, **(env or {})})
        seconds.append(time.perf_counter() - start)
    return {"median": round(statistics.median(seconds), 4), "min": round(min(seconds), 4),
            "max": round(max(seconds), 4), "runs": runs}


def run_startup_bench(runs: int = 10) -> dict[str, Any]:
    """Median, min and max seconds of whole processes, side by side in one run, interleaved
    rounds: `dlcr --help`, a TAB completion (`dlcr tr<TAB>`), and `python -c "import torch"`
    (the yardstick: what any torch tool pays to start); their ratios to it; and the CLI
    module's own import time with the heavy modules it pulled in (none, by design)."""
    dlcr = _dlcr_command()
    completion = {"_DLCR_COMPLETE": "complete_bash", "COMP_WORDS": "dlcr tr", "COMP_CWORD": "1"}
    rows: dict[str, list[dict[str, Any]]] = {"help": [], "completion": [], "import_torch": []}
    for _ in range(runs):  # one process of each per round: drifts of a shared machine hit all three
        rows["help"].append(_timed([*dlcr, "--help"], 1))
        rows["completion"].append(_timed(dlcr, 1, completion))
        rows["import_torch"].append(_timed([sys.executable, "-c", "import torch"], 1))
    timed = {name: _merge(parts) for name, parts in rows.items()}
    probe = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY)], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    torch_s = timed["import_torch"]["median"]
    return {
        "command": " ".join(dlcr),
        "help_seconds": timed["help"],
        "completion_seconds": timed["completion"],
        "import_torch_seconds": timed["import_torch"],
        "help_vs_import_torch": round(timed["help"]["median"] / torch_s, 3) if torch_s else None,
        "completion_vs_import_torch": round(timed["completion"]["median"] / torch_s, 3) if torch_s else None,
        "target_ratio": TARGET_RATIO,
        "import_seconds": round(float(probe[0]), 4),
        "heavy_modules_imported": [m for m in (probe[1] if len(probe) > 1 else "").split(",") if m],
    }


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    values = [p["median"] for p in parts]
    return {"median": round(statistics.median(values), 4), "min": min(values), "max": max(values), "runs": len(values)}


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
