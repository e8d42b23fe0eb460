"""The paper's experiment (`dlcr run`; `dlcr demo` is it on the embedded synthetic data).

For every case (a dataset and the seed trained on it):
1. stage 1 (dlcr_cli.stages.expand) on the training set, `inpaint.variants` (K = 10) per
   image, and on the queries, `refine.variants` (K = 4) per query with targets drawn from the
   training set's prompts; the cases of one dataset share one stage 1;
2. CAL trained with the case's seed and one schedule on the real images (baseline), on real +
   generated ones (+DLCR) and, optionally, without progressive learning;
3. each run's reported model (CAL's protocol: its best evaluated epoch, `evaluate.epoch`)
   evaluated with the dataset's protocol, and +DLCR refined with the query variants.

Started again, each part is reused where it is provably the same: stage 1 by its records'
fingerprints, a finished run when its settings and inputs are those asked (an interrupted one
is resumed). A run made of other settings or inputs is refused in one line, or trained again
with `retrain`. The report (results.md, results.json, cmc.png, retrieval.png,
contact-sheet.png) summarises the seeds: mean and min-max.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlcr_cli.console import log, stderr

ROWS = ("baseline", "dlcr", "dlcr_no_progressive", "dlcr_refined")
LABELS = {"baseline": "baseline (real images)", "dlcr": "+DLCR", "dlcr_no_progressive": "+DLCR without progressive",
          "dlcr_refined": "+DLCR +refine"}
SHORT = {"baseline": "baseline", "dlcr": "+DLCR", "dlcr_no_progressive": "+DLCR no prog.",
         "dlcr_refined": "+DLCR +refine"}
METRICS = (("rank1", "R1"), ("mAP", "mAP"))
STRIP_QUERIES = 6
"""Queries in retrieval.png, each with the baseline's and +DLCR's first results."""
STRIP_RESULTS = 5
CMC_RANKS = 20


@dataclass(frozen=True)
class Plan:
    """What every case runs. `settings`: all sections (stage 1's backends and numbers, train,
    evaluate, refine); train.seed is each case's. `no_progressive`: also train +DLCR without
    progressive learning. `retrain`: train again the runs made of other settings or inputs
    (else they are refused). `title`: the report's heading."""

    settings: Any
    title: str
    no_progressive: bool = False
    retrain: bool = False

    def rows(self) -> tuple[str, ...]:
        return tuple(row for row in ROWS if row != "dlcr_no_progressive" or self.no_progressive)


@dataclass(frozen=True)
class Case:
    """One dataset (root, folder or records) trained with one seed: its stage 1 in `stage1`
    (shared by the seeds of a dataset), its runs in `runs`/<row>."""

    seed: int
    data: Path
    stage1: Path
    runs: Path


# --- one case ------------------------------------------------------------------------------------


def run_case(case: Case, plan: Plan, device: Any) -> dict[str, Any]:
    """{"results": row -> the evaluate JSON of every setting plus train_seconds, "models": row
    -> the model evaluated, "setting": the headline setting, "cmc": row -> its CMC at ranks
    1..20, "retrieval": the queries of retrieval.png} of one case."""
    from dlcr_cli.reid.data import load_reid_data
    from dlcr_cli.reid.evaluate import evaluate_settings, extract_from_run
    from dlcr_cli.reid.generated import read_generated
    from dlcr_cli.reid.refine import evaluate_refined, query_variant_features

    data = load_reid_data(case.data)  # input errors before any model is loaded
    data.require("train", "query", "gallery")
    log.info("run: seed %d: %s", case.seed, data.summary())
    settings = settings_for(case, plan.settings)
    generated, query_variants = stage_one(case, settings)
    variants = read_generated(generated, data.train)
    found = read_generated(query_variants, data.query, what="query")
    e, r = settings.evaluate, settings.refine
    out: dict[str, Any] = {"results": {}, "models": {}, "cmc": {}}
    firsts: dict[str, np.ndarray] = {}
    for row in (row for row in plan.rows() if row != "dlcr_refined"):
        folder, seconds = train_row(case, plan, row, data, None if row == "baseline" else variants, device)
        ex = extract_from_run(data, folder, e, device, what=f"run: seed {case.seed}: {LABELS[row]}")
        headline = headline_setting(ex.features.settings)
        out["setting"] = headline.name
        evaluated = {row: evaluate_settings(ex.features, ex.features.settings, device=device)}
        if row == "dlcr":
            vf, ok = query_variant_features(ex.model, data.query, found, r.variants, size=ex.size,
                                            batch_size=e.batch_size, workers=e.workers, flip=e.flip,
                                            precision=ex.precision, clip=ex.clip)
            evaluated["dlcr_refined"] = evaluate_refined(ex.features, vf, ok, ex.features.settings, device=device,
                                                         top=r.top)
        for name, results in evaluated.items():
            out["results"][name] = {**{x.setting.name: x.scores.as_dict() for x in results},
                                    "train_seconds": round(seconds, 2)}
            out["models"][name] = model_record(folder, e.epoch)
            out["cmc"][name] = [float(v) for v in next(x for x in results if x.setting.name == headline.name).scores.cmc[:CMC_RANKS]]
        if row in ("baseline", "dlcr"):
            firsts[row] = first_results(ex.features, headline, device)
            if row == "dlcr":
                out["retrieval"] = write_retrieval(ex.features, headline, firsts, case.runs / "retrieval.png")
    order = plan.rows()
    return {**out, **{key: {row: out[key][row] for row in order} for key in ("results", "models", "cmc")}}


def settings_for(case: Case, settings: Any) -> Any:
    """The plan's settings for this dataset: with the parsing mask backend and no
    mask.parsing_dir, the dataset's own parsing/ folder (as `dlcr synth` writes it)."""
    from dlcr_cli.errors import UsageError

    m = settings.mask
    if m.backend != "parsing" or m.parsing_dir is not None:
        return settings
    maps = case.data / "parsing"
    if not maps.is_dir():
        raise UsageError(f"the parsing mask backend (--weight-free) needs label maps of {case.data}: "
                         f"--parsing-dir DIR (setting mask.parsing_dir)")
    return settings.model_copy(update={"mask": m.model_copy(update={"parsing_dir": maps})})


def stage_one(case: Case, settings: Any) -> tuple[Path, Path]:
    """Stage 1 on the training set and on the queries (targets from the training prompts):
    the files of their generated records."""
    from dlcr_cli.stages.expand import expand_to_file

    def on(splits: list[str], k: int) -> Any:
        return settings.model_copy(update={"inpaint": settings.inpaint.model_copy(update={"splits": splits,
                                                                                         "variants": k})})

    folder = case.stage1
    log.info("run: stage 1: %d variants of every training image in %s", settings.inpaint.variants, folder / "train")
    generated = expand_to_file(str(case.data), folder / "train", on(["train"], settings.inpaint.variants),
                               folder / "generated.jsonl", prompts_file=None)
    log.info("run: stage 1: %d variants of every query in %s", settings.refine.variants, folder / "query")
    queries = expand_to_file(str(case.data), folder / "query", on(["query"], settings.refine.variants),
                             folder / "query-variants.jsonl", prompts_file=folder / "train" / "prompts.json")
    return generated, queries


def train_row(case: Case, plan: Plan, row: str, data: Any, variants: Any, device: Any) -> tuple[Path, float]:
    """The run folder of `row` and its training seconds: a finished run of these settings and
    inputs is reused, an interrupted one resumed; one of other settings or inputs is refused
    (UsageError) or, with plan.retrain, trained again."""
    from dlcr_cli.errors import UsageError
    from dlcr_cli.reid.train import METRICS as METRICS_FILE
    from dlcr_cli.reid.train import STATE_FILE, iter_metrics, resolve_for_data, run_inputs
    from dlcr_cli.stages.train import earlier_run, train_run

    out = case.runs / row
    train = plan.settings.train.model_copy(update={"seed": case.seed, "progressive": row != "dlcr_no_progressive"})
    s = resolve_for_data(train, data, device)
    label = f"run: seed {case.seed}: {LABELS[row]}"
    has_run = (out / STATE_FILE).is_file()
    earlier = earlier_run(out, s, run_inputs(data, variants, s.backbone, out)) if has_run else None
    if earlier is not None and earlier.changes:
        if not plan.retrain:
            raise UsageError(f"{out} was trained on other settings or inputs ({'; '.join(earlier.changes)}): "
                             f"--retrain trains it again, or use another --out")
        log.warning("%s: trained on other settings or inputs (%s): training it again", label, "; ".join(earlier.changes))
        earlier = None
    if earlier is None and out.exists():
        shutil.rmtree(out)  # nothing in it to keep: no training state, or one of other settings
    done = earlier.epochs if earlier is not None else 0
    if done == s.epochs:
        log.info("%s: finished in an earlier run, reused (%s)", label, out)
    else:
        log.info("%s: %s %d epochs in %s", label, f"resuming after epoch {done} of" if done else "training",
                 s.epochs, out)
    out.mkdir(parents=True, exist_ok=True)
    generated = None if variants is None else str(case.stage1 / "generated.jsonl")
    # a finished run too: its state is loaded (which rewrites best/ if the run stopped before it) and no epoch runs
    train_run(data, s, out, device, variants, resume=done > 0, dataset=str(case.data), generated=generated)
    return out, sum(m["seconds"] for m in iter_metrics(out / METRICS_FILE))


def model_record(folder: Path, which: str) -> dict[str, Any]:
    """Which model of a run the row's numbers are of: its folder, epoch and how it was chosen."""
    from dlcr_cli.reid.evaluate import run_model

    from dlcr_cli.reid.train import BEST_DIR

    chosen, config, named = run_model(folder, which)
    return {"folder": str(chosen), "epoch": config.get("epoch"), "best": chosen.name == BEST_DIR, "model": named}


def headline_setting(settings: list) -> Any:
    """The setting the paper reports first and selects on: cc where the protocol has it."""
    return next((s for s in settings if s.name == "cc"), settings[0])


# --- retrieval.png: the paper's Figure A4 ------------------------------------------------------------


def first_results(features: Any, setting: Any, device: Any, top: int = STRIP_RESULTS) -> np.ndarray:
    """Q x `top` gallery indices (within the setting) of each query's first results as the
    protocol ranks them (its junk entries removed; ties in gallery order)."""
    import torch

    from dlcr_cli.reid.metrics import auto_chunk, cosine_distance_chunks
    from dlcr_cli.reid.refine import junk_mask

    qf, gf, ql, gl = features.of(setting)
    rows, start = [], 0
    for block in cosine_distance_chunks(qf, gf, device=device, chunk=auto_chunk(len(gf))):
        n = len(block)
        ranked = block.masked_fill(junk_mask(ql, gl, slice(start, start + n), setting.mode, block.device), float("inf"))
        rows.append(torch.argsort(ranked, dim=1, stable=True)[:, :top].cpu().numpy())
        start += n
    return np.concatenate(rows) if rows else np.zeros((0, top), np.int64)


def pick_queries(pids: np.ndarray, gallery_pids: np.ndarray, baseline: np.ndarray, dlcr: np.ndarray,
                 count: int = STRIP_QUERIES) -> tuple[list[int], int]:
    """Up to `count` queries, spread over the list, whose first baseline result is another
    person and whose first +DLCR result the same one; (them, how many queries are such)."""
    wins = [i for i in range(len(pids)) if gallery_pids[baseline[i, 0]] != pids[i] == gallery_pids[dlcr[i, 0]]]
    step = max(1, len(wins) // count)
    return wins[::step][:count], len(wins)


def write_retrieval(features: Any, setting: Any, firsts: dict[str, np.ndarray], path: Path) -> dict[str, Any]:
    """retrieval.png: for the picked queries, the baseline's first results above +DLCR's
    (green the same person, red another); returns what it shows."""
    from dlcr_cli.io import save_atomic
    from dlcr_cli.pictures import RetrievalRow, retrieval_strip
    from dlcr_cli.reid.evaluate import _picture

    _, _, ql, gl = features.of(setting)
    picked, wins = pick_queries(ql.pids, gl.pids, firsts["baseline"], firsts["dlcr"])
    shown = {"setting": setting.name, "queries": len(ql), "baseline_wrong_dlcr_right": wins, "shown": []}
    qpaths, gpaths = features.query_paths, features.gallery_paths
    if not picked or qpaths is None or gpaths is None:
        return shown
    rows = []
    for i in picked:
        query = _picture(qpaths[setting.query[i]])
        shown["shown"].append(qpaths[setting.query[i]])
        for row in ("baseline", "dlcr"):
            results = [(_picture(gpaths[setting.gallery[j]]), f"#{rank} pid {gl.pids[j]}",
                        "good" if gl.pids[j] == ql.pids[i] else "wrong") for rank, j in enumerate(firsts[row][i], 1)]
            rows.append(RetrievalRow(query, f"{SHORT[row]}: pid {ql.pids[i]} cam {ql.camids[i]}", results))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(retrieval_strip(rows), path)
    return shown


# --- the experiment and its report -------------------------------------------------------------------


def run_experiment(cases: list[Case], plan: Plan, report: Path, device: Any) -> tuple[dict[int, dict[str, Any]], Path]:
    """Every case, then the report; (per seed results, the report folder)."""
    start = time.perf_counter()
    per_seed = {case.seed: run_case(case, plan, device) for case in cases}
    write_report(report, per_seed, plan, cases)
    print_table(per_seed, plan)
    log.info("run: report in %s (%.0f s)", report, time.perf_counter() - start)
    return per_seed, report


def setting_names(per_seed: dict[int, dict[str, Any]]) -> list[str]:
    first = next(iter(per_seed.values()))["results"]["baseline"]
    return [name for name in first if name != "train_seconds"]


def summarize_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per row and setting.metric (rank1, mAP) and train_seconds: mean, min and max over the seeds."""
    rows = list(next(iter(per_seed.values()))["results"])
    keys = [(s, m) for s in setting_names(per_seed) for m, _ in METRICS]

    def stats(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}

    return {row: {**{f"{s}.{m}": stats([run["results"][row][s][m] for run in per_seed.values()]) for s, m in keys},
                  "train_seconds": stats([run["results"][row]["train_seconds"] for run in per_seed.values()])}
            for row in rows}


def mean_results(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The rows' numbers averaged over the seeds, in the one-seed shape (counts from the first)."""
    runs = [run["results"] for run in per_seed.values()]
    out: dict[str, Any] = {}
    for row, settings in runs[0].items():
        out[row] = {}
        for name, value in settings.items():
            if isinstance(value, dict):
                out[row][name] = {k: (statistics.fmean(r[row][name][k] for r in runs)
                                      if k not in ("queries", "skipped") else v) for k, v in value.items()}
            else:
                out[row][name] = statistics.fmean(r[row][name] for r in runs)
    return out


def gain(summary: dict[str, Any], setting: str) -> float:
    """+DLCR's mean rank-1 over the baseline's in `setting`, in points."""
    return 100 * (summary["dlcr"][f"{setting}.rank1"]["mean"] - summary["baseline"][f"{setting}.rank1"]["mean"])


def column_label(setting: str, metric: str, short: bool = False) -> str:
    """"CC R1", "standard mAP" (short, for a terminal: "std mAP")."""
    name = setting.upper() if len(setting) <= 3 else setting[:3] if short else setting
    return f"{name} {metric}"


def table_rows(summary: dict[str, Any], settings: list[str], seeds: int) -> list[list[str]]:
    def cell(stat: dict[str, float], scale: float = 100, fmt: str = "{:.1f}") -> str:
        text = fmt.format(stat["mean"] * scale)
        return text if seeds == 1 else f"{text} ({fmt.format(stat['min'] * scale)}-{fmt.format(stat['max'] * scale)})"

    return [[LABELS[row], *(cell(summary[row][f"{s}.{m}"]) for s in settings for m, _ in METRICS),
             cell(summary[row]["train_seconds"], 1, "{:.0f}")] for row in summary]


def write_report(report: Path, per_seed: dict[int, dict[str, Any]], plan: Plan, cases: list[Case]) -> Path:
    from dlcr_cli.io import save_atomic, write_text_atomic
    from dlcr_cli.pictures import cmc_plot

    report.mkdir(parents=True, exist_ok=True)
    summary, settings, seeds = summarize_seeds(per_seed), setting_names(per_seed), sorted(per_seed)
    first = per_seed[seeds[0]]
    headline = first["setting"]
    header = ["", *(column_label(s, label) for s in settings for _, label in METRICS), "train s"]
    spread = " (mean, min-max over seeds)" if len(seeds) > 1 else ""
    lines = [f"# {plan.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             *("| " + " | ".join(row) + " |" for row in table_rows(summary, settings, len(seeds))), "",
             f"Metrics in percent{spread}, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}. +DLCR over the baseline on "
             f"{column_label(headline, 'rank-1')}: {gain(summary, headline):+.1f} points.", models_line(first, seeds[0]), ""]
    shown = first.get("retrieval") or {}
    if shown.get("queries"):
        lines += [f"retrieval.png: {len(shown['shown'])} of the {shown['baseline_wrong_dlcr_right']} {headline} "
                  f"queries (of {shown['queries']}) whose first baseline result is another person and whose first "
                  f"+DLCR result is the same person (seed {seeds[0]}).", ""]
    write_text_atomic("\n".join(lines), report / "results.md")
    write_text_atomic(json.dumps({"title": plan.title, "seeds": seeds, "settings": settings, "setting": headline,
                                  "per_seed": {str(s): per_seed[s] for s in seeds}, "summary": summary},
                                 indent=2) + "\n", report / "results.json")
    by_seed = {case.seed: case for case in cases}
    for name, source in (("contact-sheet.png", by_seed[seeds[0]].stage1 / "train" / "preview.png"),
                         ("retrieval.png", by_seed[seeds[0]].runs / "retrieval.png")):
        if source.is_file():
            shutil.copyfile(source, report / name)
    save_atomic(cmc_plot(mean_curves(per_seed, seeds), title=cmc_title(headline, seeds), max_rank=CMC_RANKS),
                report / "cmc.png")
    return report


def models_line(run: dict[str, Any], seed: int) -> str:
    """Which epoch's model each row is (seed `seed`), and by which rule."""
    models = run["models"]
    epochs = ", ".join(f"{LABELS[row]} epoch {m['epoch']}" for row, m in models.items() if row != "dlcr_refined")
    if all(m["best"] for m in models.values()):
        return (f"Each row is its run's best evaluated epoch by {run['setting']} rank-1 (CAL's reporting protocol: "
                f"selected on the test set; evaluate.epoch=last reports the last epoch): {epochs} (seed {seed}).")
    return f"Each row is its run's last epoch ({epochs}, seed {seed})" + \
        ("" if not any(m["best"] for m in models.values()) else "; where the run kept one, its best (best/)") + "."


def mean_curves(per_seed: dict[int, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Every row's headline CMC curve, averaged over the seeds (the table's means are too)."""
    rows = per_seed[seeds[0]]["cmc"]
    return {LABELS[row]: np.mean([per_seed[s]["cmc"][row] for s in seeds], axis=0) for row in rows}


def cmc_title(setting: str, seeds: list[int]) -> str:
    name = setting.upper() if len(setting) <= 3 else setting
    return f"{name} CMC, seed {seeds[0]}" if len(seeds) == 1 else \
        f"{name} CMC, mean of seeds {', '.join(map(str, seeds))}"


def print_table(per_seed: dict[int, dict[str, Any]], plan: Plan) -> None:
    """The means on stderr; with several seeds also the headline rank-1's range (the rest of
    the spread is in report/results.md: it would not fit a terminal)."""
    from rich import box
    from rich.table import Table

    summary, settings, seeds = summarize_seeds(per_seed), setting_names(per_seed), len(per_seed)
    headline = next(iter(per_seed.values()))["setting"]
    table = Table(box=box.SIMPLE_HEAD, title=plan.title + (f": means of {seeds} seeds" if seeds > 1 else ""),
                  title_justify="left")
    columns = [column_label(s, label, short=True) for s in settings for _, label in METRICS]
    at = columns.index(column_label(headline, "R1", short=True)) + 1
    if seeds > 1:
        columns.insert(at, "range")
    for label in ("", *columns, "train s"):
        table.add_column(label, justify="right" if label else "left", no_wrap=True)
    for row, stats in summary.items():
        cells = [f"{100 * stats[f'{s}.{m}']['mean']:.1f}" for s in settings for m, _ in METRICS]
        if seeds > 1:
            low, high = stats[f"{headline}.rank1"]["min"], stats[f"{headline}.rank1"]["max"]
            cells.insert(at - 1, f"{100 * low:.1f}-{100 * high:.1f}")
        table.add_row(SHORT[row], *cells, f"{stats['train_seconds']['mean']:.0f}")
    stderr.print(table)
    stderr.print(f"+DLCR over the baseline on {column_label(headline, 'rank-1')}: {gain(summary, headline):+.1f} points",
                 highlight=False)
