"""`dlcr demo`: the whole method on the embedded synthetic benchmark, offline, weight-free,
measuring its central claim: training with clothes-changed images improves
clothes-changing re-identification.

Per seed (the dataset's and the training's):
1. `synth` a dataset (LTCC layout) whose identities live outside their clothes;
2. stage 1 with the weight-free backends (parsing maps, colour names, vote, recolouring):
   K = 10 variants of every training image, K = 4 of every query (targets from the
   training prompts);
3. train builtin:small three ways with the same seed and epochs: baseline (real images),
   +DLCR (real + generated, progressive learning), +DLCR without progressive learning;
   evaluate each with the LTCC protocol (standard, sc, cc) and refine +DLCR with the
   query variants.

The schedule is the paper's, scaled to the demo's epochs: clothes losses from 25/60 of the
run, lr steps at 20/60 and 40/60, progressive thresholds at 5/60, 10/60 and 15/60.
Everything lands in DIR/seed-<s>/ (resumable: finished stages and runs are reused) and the
report in DIR/report/: results.md, results.json, contact-sheet.png, cmc.png.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlcr_cli.console import log, stderr

ROWS = ("baseline", "dlcr", "dlcr_no_progressive", "dlcr_refined")
LABELS = {"baseline": "baseline (real images)", "dlcr": "+DLCR", "dlcr_no_progressive": "+DLCR without progressive",
          "dlcr_refined": "+DLCR +refine"}
SHORT = {"baseline": "baseline", "dlcr": "+DLCR", "dlcr_no_progressive": "+DLCR no prog.",
         "dlcr_refined": "+DLCR +refine"}
COLUMNS = (("cc", "rank1", "CC R1"), ("cc", "mAP", "CC mAP"), ("standard", "rank1", "std R1"),
           ("standard", "mAP", "std mAP"))


@dataclass(frozen=True)
class DemoSize:
    ids: int
    epochs: int
    cameras: int = 4
    per: int = 2
    image_size: tuple[int, int] = (64, 32)
    batch: tuple[int, int] = (8, 4)
    variants: int = 10
    query_variants: int = 4


FULL = DemoSize(ids=48, epochs=30)
QUICK = DemoSize(ids=24, epochs=12, batch=(4, 4))


def scaled(epochs: int, at: int, of: int = 60) -> int:
    """Epoch `at` of the paper's `of`-epoch schedule, on a run of `epochs`."""
    return max(1, round(epochs * at / of))


def train_settings(size: DemoSize, seed: int, progressive: bool) -> Any:
    from dlcr_cli.settings import DEFAULTS

    e = size.epochs
    return DEFAULTS.train.model_copy(update={
        "backbone": "builtin:small", "image_size": size.image_size, "epochs": e, "seed": seed,
        "ids_per_batch": size.batch[0], "images_per_id": size.batch[1], "triplet_weight": 0.0,
        "clothes_start": scaled(e, 25), "milestones": [scaled(e, 20), scaled(e, 40)],
        "progressive_epochs": [scaled(e, 5), scaled(e, 10), scaled(e, 15)], "progressive": progressive,
        "workers": 0, "eval_every": 0,
    })


def stage_settings(parsing_dir: Path, variants: int, splits: list[str]) -> Any:
    """The weight-free backends of every stage-1 verb, on the defaults (not the user's config:
    the demo's numbers must not depend on it)."""
    from dlcr_cli.settings import DEFAULTS
    from dlcr_cli.stages.expand import WEIGHT_FREE

    d = DEFAULTS
    sections = {name: getattr(d, name).model_copy(update=values) for name, values in WEIGHT_FREE.items()}
    sections["mask"] = sections["mask"].model_copy(update={"parsing_dir": parsing_dir, "labels": "lip"})
    sections["inpaint"] = sections["inpaint"].model_copy(update={"variants": variants, "splits": splits})
    return d.model_copy(update=sections)


def _expand(data: Path, work: Path, settings: Any, prompts: Path | None, name: str) -> Path:
    from dlcr_cli.stages.expand import expand_to_file

    return expand_to_file(str(data), work, settings, work / f"{name}.jsonl", prompts_file=prompts, fail_fast=True)


def run_seed(folder: Path, size: DemoSize, seed: int, device: Any) -> dict[str, Any]:
    """{"results": every row's evaluate JSON plus train_seconds, "cc_cmc": every row's CC
    CMC at ranks 1..20}, for one seed, in `folder`."""
    from dlcr_cli.reid.data import load_reid_data
    from dlcr_cli.reid.evaluate import as_json, evaluate_settings
    from dlcr_cli.reid.generated import read_generated
    from dlcr_cli.reid.refine import evaluate_refined, query_variant_features
    from dlcr_cli.synth import synthesize

    data_dir = folder / "data"
    if not (data_dir / "people.json").is_file():
        log.info("demo: seed %d: drawing the dataset", seed)
        synthesize(data_dir, ids=size.ids, cameras=size.cameras, per=size.per, seed=seed)
    parsing = data_dir / "parsing"
    log.info("demo: seed %d: stage 1 (weight-free): %d variants per training image", seed, size.variants)
    generated = _expand(data_dir, folder / "work", stage_settings(parsing, size.variants, ["train"]), None, "generated")
    log.info("demo: seed %d: %d variants per query for refinement", seed, size.query_variants)
    queries = _expand(data_dir, folder / "qwork", stage_settings(parsing, size.query_variants, ["query"]),
                      folder / "work" / "prompts.json", "query-variants")
    data = load_reid_data(data_dir)
    variants = read_generated(generated, data.train)
    results: dict[str, Any] = {}
    curves: dict[str, list[float]] = {}
    for row, with_gen, progressive in (("baseline", False, True), ("dlcr", True, True),
                                       ("dlcr_no_progressive", True, False)):
        model, seconds = _train(folder / "runs" / row, data, train_settings(size, seed, progressive),
                                variants if with_gen else None, device, row, seed)
        features = _features(model, data, size)
        if row == "dlcr":
            found = read_generated(queries, data.query, what="query")
            vf, ok = query_variant_features(model, data.query, found, size.query_variants, size=size.image_size,
                                            workers=2)
            refined = evaluate_refined(features, vf, ok, features.settings, device=device)
        for name, evaluated in ((row, evaluate_settings(features, features.settings, device=device)),
                                *((("dlcr_refined", refined),) if row == "dlcr" else ())):
            results[name] = {**as_json(evaluated), "train_seconds": round(seconds, 2)}
            curves[name] = [float(v) for v in next(r for r in evaluated if r.setting.name == "cc").scores.cmc[:20]]
    return {"results": {row: results[row] for row in ROWS}, "cc_cmc": {row: curves[row] for row in ROWS}}


def _train(out: Path, data: Any, settings: Any, variants: Any, device: Any, row: str, seed: int) -> tuple[Any, float]:
    """The trained model and its training seconds; a finished run of the same settings and
    inputs (images, labels and generated variants, by content) is reused."""
    from dlcr_cli.reid.model import load_checkpoint
    from dlcr_cli.reid.train import METRICS, Trainer, iter_metrics, run_inputs

    record = out / "demo-settings.json"
    wanted = {"settings": settings.model_dump(mode="json"),
              "inputs": run_inputs(data, variants, settings.backbone, out)}
    if record.is_file() and json.loads(record.read_text()) == wanted and (out / METRICS).is_file():
        rows = list(iter_metrics(out / METRICS))
        if rows and rows[-1]["epoch"] == settings.epochs:
            log.info("demo: seed %d: %s: finished in an earlier run, reused", seed, LABELS[row])
            return load_checkpoint(out, device), sum(r["seconds"] for r in rows)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log.info("demo: seed %d: training %s for %d epochs", seed, LABELS[row], settings.epochs)
    trainer = Trainer(data, settings, out, device=device, variants=variants)
    stats = trainer.fit(settings.epochs, evaluate_last=False)  # evaluated below, with its curves
    record.write_text(json.dumps(wanted))
    return trainer.model, sum(s.seconds for s in stats)


def _features(model: Any, data: Any, size: DemoSize) -> Any:
    from dlcr_cli.reid.features import extract_features

    return extract_features(model, data, size=size.image_size, workers=2)


# --- the report ---------------------------------------------------------------------------------


def summarize_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per row and metric: the mean over seeds, and min / max (the spread)."""
    out: dict[str, Any] = {}
    for row in ROWS:
        out[row] = {}
        for setting, metric, _ in COLUMNS:
            values = [per_seed[s]["results"][row][setting][metric] for s in per_seed]
            out[row][f"{setting}.{metric}"] = {"mean": statistics.fmean(values), "min": min(values),
                                               "max": max(values)}
        seconds = [per_seed[s]["results"][row]["train_seconds"] for s in per_seed]
        out[row]["train_seconds"] = {"mean": statistics.fmean(seconds), "min": min(seconds), "max": max(seconds)}
    return out


def table_rows(summary: dict[str, Any], seeds: int) -> list[list[str]]:
    def cell(stat: dict[str, float], scale: float = 100, fmt: str = "{:.1f}") -> str:
        text = fmt.format(stat["mean"] * scale)
        return text if seeds == 1 else f"{text} ({fmt.format(stat['min'] * scale)}-{fmt.format(stat['max'] * scale)})"

    return [[LABELS[row], *(cell(summary[row][f"{s}.{m}"]) for s, m, _ in COLUMNS),
             cell(summary[row]["train_seconds"], 1, "{:.0f}")] for row in ROWS]


def gain(summary: dict[str, Any]) -> float:
    """+DLCR's mean CC rank-1 over the baseline's, in points."""
    return 100 * (summary["dlcr"]["cc.rank1"]["mean"] - summary["baseline"]["cc.rank1"]["mean"])


def write_report(folder: Path, per_seed: dict[int, dict[str, Any]], size: DemoSize) -> Path:
    from dlcr_cli.io import save_atomic, write_text_atomic
    from dlcr_cli.pictures import cmc_plot

    report = folder / "report"
    report.mkdir(parents=True, exist_ok=True)
    summary = summarize_seeds(per_seed)
    seeds = sorted(per_seed)
    header = ["", *(label for _, _, label in COLUMNS), "train s"]
    lines = [f"# dlcr demo: {size.ids} ids, {size.epochs} epochs, seeds {', '.join(map(str, seeds))}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary, len(seeds))]
    spread = " (mean, min-max over seeds)" if len(seeds) > 1 else ""
    lines += ["", f"Metrics in percent{spread}. +DLCR over the baseline on CC rank-1: {gain(summary):+.1f} points.", ""]
    write_text_atomic("\n".join(lines), report / "results.md")
    write_text_atomic(json.dumps({"seeds": seeds, "per_seed": {str(s): per_seed[s] for s in seeds},
                                  "summary": summary}, indent=2) + "\n", report / "results.json")
    first = folder / f"seed-{seeds[0]}"
    sheet = first / "work" / "preview.png"
    if sheet.is_file():
        shutil.copyfile(sheet, report / "contact-sheet.png")
    save_atomic(cmc_plot(mean_curves(per_seed, seeds), title=cmc_title(seeds), max_rank=20), report / "cmc.png")
    return report


def mean_curves(per_seed: dict[int, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Every row's CC CMC curve, averaged over the seeds (the table's means are too)."""
    import numpy as np

    return {LABELS[row]: np.mean([per_seed[s]["cc_cmc"][row] for s in seeds], axis=0) for row in ROWS}


def cmc_title(seeds: list[int]) -> str:
    return f"CC CMC, seed {seeds[0]}" if len(seeds) == 1 else f"CC CMC, mean of seeds {', '.join(map(str, seeds))}"


def print_table(summary: dict[str, Any], seeds: int) -> None:
    """The means on stderr; with several seeds also CC rank-1's range (the rest of the spread
    is in report/results.md: it would not fit a terminal)."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, title="dlcr demo" + (f": means of {seeds} seeds" if seeds > 1 else ""),
                  title_justify="left")
    columns = [label for _, _, label in COLUMNS]
    if seeds > 1:
        columns.insert(1, "range")
    for label in ("", *columns, "train s"):
        table.add_column(label, justify="right" if label else "left", no_wrap=True)
    for row in ROWS:
        stats = summary[row]
        cells = [f"{100 * stats[f'{s}.{m}']['mean']:.1f}" for s, m, _ in COLUMNS]
        if seeds > 1:
            low, high = stats["cc.rank1"]["min"], stats["cc.rank1"]["max"]
            cells.insert(1, f"{100 * low:.1f}-{100 * high:.1f}")
        table.add_row(SHORT[row], *cells, f"{stats['train_seconds']['mean']:.0f}")
    stderr.print(table)
    stderr.print(f"+DLCR over the baseline on CC rank-1: {gain(summary):+.1f} points", highlight=False)


def run_demo(out: Path, seeds: list[int], quick: bool, device: Any) -> tuple[dict[int, dict[str, Any]], Path]:
    size = QUICK if quick else FULL
    start = time.perf_counter()
    per_seed = {seed: run_seed(out / f"seed-{seed}", size, seed, device) for seed in seeds}
    report = write_report(out, per_seed, size)
    print_table(summarize_seeds(per_seed), len(seeds))
    log.info("demo: report in %s (%.0f s)", report, time.perf_counter() - start)
    return per_seed, report
