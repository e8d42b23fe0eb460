"""`dlcr bench evaluate`: dlcr's chunked evaluation against the field's per-query NumPy loop,
side by side in one run on the same features, with their metrics compared.

The problem is MSMT17's size by default (11,659 queries x 82,161 gallery images, 3,060 test
identities, 15 cameras, D = 512): features are drawn around one centre per identity plus an
offset per outfit (so clothes are a shortcut, as in real CC-ReID features) plus noise, which
gives mid-range metrics rather than a trivial 100 %.

(a) reference, as CAL / fast-reid evaluate: the full Q x G negative-cosine matrix, a full
    argsort of every row, then a Python loop over queries;
(b) dlcr: `metrics.evaluate`, query chunks in torch on the chosen device, never Q x G.

Both rows run with float32 at full precision (TF32 off, restored after), whatever the process
set before; the report says so, and names an environment override torch cannot undo.

Peak memory is the process's resident set sampled every few milliseconds during each row,
above what it held before the row (and, on CUDA, the peak allocated GPU memory).
"""

from __future__ import annotations

import gc
import os
import resource
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dlcr_cli.bench import cuda_timer, device_label, full_float32, peak_memory_gb, reset_peak_memory
from dlcr_cli.console import log, stderr
from dlcr_cli.errors import Unavailable, UsageError

if TYPE_CHECKING:
    import torch

    from dlcr_cli.reid.metrics import Labels, Scores

METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
TOLERANCE = 1e-6
NOISE = 2.8
"""Per-image noise around the identity and outfit: standard rank-1 in the 80s, mAP in the 30s to 40s."""


@dataclass
class EvalBenchSettings:
    queries: int = 11659
    gallery: int = 82161
    dim: int = 512
    ids: int = 3060
    cameras: int = 15
    outfits: int = 3
    """Clothing ids per identity."""
    modes: tuple[str, ...] = ("standard",)
    seed: int = 0
    reference: bool = True

    def check(self) -> None:
        from dlcr_cli.reid.metrics import MODES

        if min(self.queries, self.gallery, self.dim, self.ids, self.cameras, self.outfits) < 1:
            raise UsageError("queries, gallery, dim, ids, cameras and outfits must be positive")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise UsageError(f"--modes takes a comma-separated list of {', '.join(MODES)}; got {','.join(self.modes)}")


@dataclass
class Problem:
    query: np.ndarray
    gallery: np.ndarray
    query_labels: Labels
    gallery_labels: Labels


def make_problem(s: EvalBenchSettings) -> Problem:
    """Features and labels, the same for the same settings on every machine."""
    from dlcr_cli.reid.metrics import Labels

    rng = np.random.default_rng(s.seed)
    centres = rng.standard_normal((s.ids, s.dim), dtype=np.float32)
    outfits = 0.8 * rng.standard_normal((s.ids * s.outfits, s.dim), dtype=np.float32)

    def side(n: int) -> tuple[np.ndarray, Labels]:
        pids = rng.integers(0, s.ids, n)
        clothes = pids * s.outfits + rng.integers(0, s.outfits, n)
        feats = centres[pids]
        feats += outfits[clothes]
        feats += NOISE * rng.standard_normal((n, s.dim), dtype=np.float32)
        return feats, Labels(pids, rng.integers(0, s.cameras, n), clothes)

    (q, ql), (g, gl) = side(s.queries), side(s.gallery)
    return Problem(q, g, ql, gl)


# --- memory -----------------------------------------------------------------------------------


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the high-water mark is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


@dataclass
class Peak:
    bytes: int = 0


@contextmanager
def peak_rss(interval: float = 0.005) -> Iterator[Peak]:
    """The highest resident set size during the block, above the size before it (sampled)."""
    gc.collect()
    base = _rss_bytes()
    peak, done = Peak(), threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.bytes = max(peak.bytes, _rss_bytes() - base)
            done.wait(interval)

    thread = threading.Thread(target=sample, name="dlcr-rss", daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()
        peak.bytes = max(peak.bytes, _rss_bytes() - base)


# --- the rows ---------------------------------------------------------------------------------


@dataclass
class EvalRow:
    name: str
    seconds: float
    peak_rss_gb: float
    peak_gpu_gb: float | None
    scores: dict[str, dict[str, Any]]


def reference_bytes(s: EvalBenchSettings) -> int:
    """What the reference holds at once: the float32 distance matrix and its int64 argsort."""
    return s.queries * s.gallery * (4 + 8)


def run_reference(p: Problem, modes: Sequence[str]) -> EvalRow:
    from dlcr_cli.reid.metrics import cosine_distances, evaluate_reference

    cpu = _cpu()
    with peak_rss() as peak, cuda_timer(cpu) as timing:
        distmat = cosine_distances(p.query, p.gallery)
        scores = {mode: evaluate_reference(distmat, p.query_labels, p.gallery_labels, mode) for mode in modes}
        del distmat
    return EvalRow("(a) reference (NumPy, per query)", timing.seconds, peak.bytes / 2**30, None,
                   {mode: sc.as_dict() for mode, sc in scores.items()})


def run_dlcr(p: Problem, modes: Sequence[str], device: torch.device) -> EvalRow:
    from dlcr_cli.reid.metrics import evaluate

    reset_peak_memory(device)
    with peak_rss() as peak, cuda_timer(device) as timing:
        scores: dict[str, Scores] = {
            mode: evaluate(p.query, p.gallery, p.query_labels, p.gallery_labels, mode, device=device) for mode in modes
        }
    return EvalRow(f"(b) dlcr (torch, chunked, {device.type})", timing.seconds, peak.bytes / 2**30,
                   peak_memory_gb(device), {mode: sc.as_dict() for mode, sc in scores.items()})


def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")


def max_difference(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> tuple[float, bool]:
    """The largest metric difference between two rows' scores, and whether they agree (every
    metric within TOLERANCE, the same queries and skipped counts)."""
    diff, same_counts = 0.0, True
    for mode in a:
        diff = max(diff, *(abs(a[mode][k] - b[mode][k]) for k in METRICS))
        same_counts &= all(a[mode][k] == b[mode][k] for k in ("queries", "skipped"))
    return diff, same_counts and diff <= TOLERANCE


def run_evaluate_bench(s: EvalBenchSettings, device: torch.device) -> dict[str, Any]:
    s.check()
    if s.reference:
        need, free = reference_bytes(s), available_bytes()
        if free is not None and need > 0.9 * free:
            raise Unavailable(f"the reference needs about {need / 2**30:.1f} GiB for a {s.queries} x {s.gallery} "
                              f"matrix and its argsort, {free / 2**30:.1f} GiB is available: use fewer --queries "
                              "or --gallery, or --no-reference")
    log.info("bench: drawing %d query and %d gallery features (D = %d)", s.queries, s.gallery, s.dim)
    problem = make_problem(s)
    rows = []
    # Both rows at full float32 precision: TF32 (on by a flag or a library default elsewhere in
    # the process) rounds the distances to ~1e-3 and reorders near-ties, so the metrics differ.
    with full_float32() as precision:
        _warn_env_override(precision["env_override"])
        if s.reference:
            log.info("bench: (a) reference")
            rows.append(run_reference(problem, s.modes))
            _log_row(rows[-1])
        log.info("bench: (b) dlcr")
        rows.append(run_dlcr(problem, s.modes, device))
        _log_row(rows[-1])
    report: dict[str, Any] = {"device": device_label(device), "settings": {**asdict(s), "modes": list(s.modes)},
                              "precision": precision, "rows": [asdict(r) for r in rows], "speedup": None,
                              "max_abs_diff": None, "agree": None}
    if s.reference:
        report["speedup"] = round(rows[0].seconds / rows[1].seconds, 2) if rows[1].seconds else None
        report["max_abs_diff"], report["agree"] = max_difference(rows[0].scores, rows[1].scores)
    return report


def _warn_env_override(override: str | None) -> None:
    if override:
        log.warning("bench: %s is set: it is read once, when the CUDA libraries load, and nothing a running "
                    "process sets undoes it, so float32 matmuls may run in TF32 and the metrics disagree; unset it "
                    "to compare at full precision", override)


def _log_row(row: EvalRow) -> None:
    log.info("bench: %s: %.2f s, peak %.2f GiB above the start", row.name, row.seconds, row.peak_rss_gb)


def print_report(report: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    s = report["settings"]
    stderr.print(f"dlcr bench evaluate on {report['device']}: {s['queries']} queries x {s['gallery']} gallery, "
                 f"D = {s['dim']}, {s['ids']} ids; modes {', '.join(s['modes'])}", highlight=False, soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("", "seconds", "peak RSS GiB", "peak GPU GiB"):
        table.add_column(column, justify="right" if column else "left")
    for row in report["rows"]:
        gpu = row["peak_gpu_gb"]
        table.add_row(row["name"], f"{row['seconds']:.2f}", f"{row['peak_rss_gb']:.2f}", "-" if gpu is None else f"{gpu:.2f}")
    stderr.print(table)
    scores = report["rows"][-1]["scores"]
    for mode in s["modes"]:
        values = ", ".join(f"{k} {100 * scores[mode][k]:.2f}" for k in METRICS)
        stderr.print(f"{mode}: {values} ({scores[mode]['queries']} queries, {scores[mode]['skipped']} skipped)",
                     highlight=False, soft_wrap=True)
    precision = report["precision"]
    override = f", but {precision['env_override']} is set" if precision["env_override"] else ""
    stderr.print(f"float32 at full precision (TF32 off for both rows{override})", highlight=False)
    if report["speedup"] is not None:
        verdict = "agree" if report["agree"] else "DISAGREE"
        stderr.print(f"reference / dlcr: {report['speedup']:.1f}x the time; metrics {verdict} "
                     f"(largest difference {report['max_abs_diff']:.2e}, tolerance {TOLERANCE:g})", highlight=False)


__all__ = ["EvalBenchSettings", "make_problem", "max_difference", "peak_rss", "print_report", "run_evaluate_bench"]
