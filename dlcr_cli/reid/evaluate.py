"""The work of `dlcr evaluate`: every setting of a feature set scored (optionally re-ranked),
and the results as a table, as JSON, and as pictures (CMC curves, retrieval strips)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlcr_cli.errors import UsageError
from dlcr_cli.reid.data import EvalSetting
from dlcr_cli.reid.features import FeatureSet
from dlcr_cli.reid.metrics import Labels, Scores, good_and_junk

if TYPE_CHECKING:
    import torch

TOP = 10
"""Results per query in a retrieval strip."""
CMC_RANKS = 20
"""Ranks on the CMC plot's axis."""


@dataclass(frozen=True)
class Rerank:
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3


@dataclass
class SettingResult:
    setting: EvalSetting
    scores: Scores
    shown: dict[int, np.ndarray] = field(default_factory=dict)
    """Query index (within the setting) -> its first TOP gallery indices (within the setting), for strips."""


@dataclass
class Extracted:
    """A dataset's features under a checkpoint, with what made them (refine needs the model)."""

    data: Any
    model: Any
    size: tuple[int, int]
    features: FeatureSet
    precision: str = "fp32"
    clip: tuple[int, int] = (8, 4)
    """A video model's test clips: length and stride."""


def run_model(checkpoint: str | Path, which: str = "best", *, revision: str | None = None
              ) -> tuple[Path, dict[str, Any], str]:
    """The model folder of a checkpoint, the "config" of its model.json, and how to name it: a
    run folder's best/ (with `which` best, when the run kept one) or the run's last epoch;
    any other model folder as is. A checkpoint that is no local path but a hub id (owner/name)
    is its snapshot at `revision` in huggingface_hub's cache (dlcr_cli.hub.resolve_checkpoint)."""
    from dlcr_cli.hub import resolve_checkpoint
    from dlcr_cli.reid.model import CONFIG_FILE, read_model_json
    from dlcr_cli.reid.train import BEST_DIR

    folder = resolve_checkpoint(str(checkpoint), revision)
    hub = "" if folder == Path(str(checkpoint)) else f"{checkpoint} ({revision or 'main'}) "
    best = folder / BEST_DIR
    if which == "best" and (best / CONFIG_FILE).is_file():
        folder, last = best, "--epoch last for the last epoch's"
    else:
        last = "the model kept in best/ of its run"
    config = read_model_json(folder).get("config", {})
    chosen = config.get("selection")
    if isinstance(chosen, dict):
        return folder, config, (f"{hub}{folder}: the model of epoch {chosen.get('epoch')}, the best "
                                f"{chosen.get('setting')} rank-1 of the run's evaluations (CAL's reporting protocol: "
                                f"selected on the test set; {last})")
    epoch = config.get("epoch")
    return folder, config, f"{hub}{folder}: the model of its last epoch" + (f" ({epoch})" if epoch else "")


def extract_with_checkpoint(dataset: str, checkpoint: str | Path, s: Any, device: Any, *, variant: str | None = None,
                            protocol: str | None = None, revision: str | None = None) -> Extracted:
    """Load the dataset (its errors come before the model's), the checkpoint (its best/ or last
    epoch, `s.epoch`), and extract the query and gallery features at `s.image_size`, else the
    checkpoint's, else 384x192, in `s.precision`, else the one the model was trained with."""
    from dlcr_cli.console import log
    from dlcr_cli.reid.data import load_reid_data

    data = load_reid_data(dataset, variant=variant, protocol=protocol)
    data.require("query", "gallery")
    log.info("evaluate: %s", data.summary())
    return extract_from_run(data, checkpoint, s, device, revision=revision)


def extract_from_run(data: Any, checkpoint: str | Path, s: Any, device: Any, what: str = "evaluate", *,
                     revision: str | None = None) -> Extracted:
    """The query and gallery features of `data` under a checkpoint (extract_with_checkpoint)."""
    from dlcr_cli.console import log
    from dlcr_cli.reid.features import extract_features

    m = load_run_model(checkpoint, s, device, what, revision=revision)
    model, size, precision, clip = m.model, m.size, m.precision, m.clip
    log.info("%s: features of %d images at %dx%d on %s (%s)", what, len(data.query) + len(data.gallery), *size,
             device, precision)
    features = extract_features(model, data, size=size, batch_size=s.batch_size, workers=s.workers, flip=s.flip,
                                precision=precision, clip=clip)
    return Extracted(data, model, size, features, precision, clip)


@dataclass
class RunModel:
    """A checkpoint's model, loaded on the device, with how its features are extracted."""

    folder: Path
    """The model folder run_model chose (a run's best/ or the run itself)."""
    model: Any
    size: tuple[int, int]
    precision: str
    clip: tuple[int, int]


def load_run_model(checkpoint: str | Path, s: Any, device: Any, what: str = "evaluate", **where: Any) -> RunModel:
    """The model of a checkpoint (run_model: its best/ or last epoch, `s.epoch`; `where`: more
    of run_model's arguments) on `device`, at `s.image_size`, else the checkpoint's, else
    384x192, in `s.precision`, else the one the model was trained with, with its test clips."""
    from dlcr_cli.console import log
    from dlcr_cli.reid.features import DEFAULT_IMAGE_SIZE
    from dlcr_cli.reid.model import load_checkpoint

    folder, saved, named = run_model(checkpoint, s.epoch, **where)
    log.info("%s: %s", what, named)
    height, width = s.image_size or saved.get("image_size") or DEFAULT_IMAGE_SIZE
    precision = (saved.get("precision") or "fp32") if s.precision == "auto" else s.precision
    clip = tuple(int(v) for v in saved.get("clip") or (8, 4))
    model = load_checkpoint(folder, device)
    return RunModel(Path(folder), model, (int(height), int(width)), precision, (int(clip[0]), int(clip[1])))


def select_settings(features: FeatureSet, wanted: Sequence[str] | None) -> list[EvalSetting]:
    """The settings named in `wanted` (None or "all": every one), in the protocol's order."""
    if not wanted or "all" in wanted:
        return list(features.settings)
    known = {s.name: s for s in features.settings}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise UsageError(f"{features.protocol} has no setting {unknown[0]!r}; it has "
                         f"{', '.join(known)} (or all)")
    return [s for s in features.settings if s.name in wanted]


def evaluate_settings(features: FeatureSet, settings: Iterable[EvalSetting], *, device: Any = "cpu",
                      rerank: Rerank | None = None, show: int = 0) -> list[SettingResult]:
    """Scores of each setting: its queries against its gallery by negative cosine (or the
    re-ranked distance), chunked so memory stays bounded; the top results of `show` queries
    that have a good match are kept for retrieval strips."""
    results = []
    for setting in settings:
        qf, gf, ql, gl = features.of(setting)
        rows = _queries_to_show(ql, gl, setting.mode, show)
        shown: dict[int, np.ndarray] = {}
        scores = _score(qf, gf, ql, gl, setting.mode, device, rerank, rows, shown)
        results.append(SettingResult(setting, scores, shown))
    return results


def _score(qf: np.ndarray, gf: np.ndarray, ql: Labels, gl: Labels, mode: str, device: Any, rerank: Rerank | None,
           rows: list[int], shown: dict[int, np.ndarray]) -> Scores:
    from dlcr_cli.reid.metrics import auto_chunk, cosine_distance_chunks, evaluate_distances
    from dlcr_cli.reid.rerank import rerank as reranked

    chunk = auto_chunk(len(gf))
    if rerank is None:
        chunks = cosine_distance_chunks(qf, gf, device=device, chunk=chunk)
    else:
        chunks = reranked(qf, gf, rerank.k1, rerank.k2, rerank.lambda_value, device=device, chunk=chunk)
    return evaluate_distances(_keeping_top(chunks, rows, shown), ql, gl, mode, device=device, chunk=chunk)


def _queries_to_show(query: Labels, gallery: Labels, mode: str, count: int) -> list[int]:
    """Up to `count` queries spread over the query list, each with a good match in `mode`."""
    if count <= 0 or not len(query) or not len(gallery):
        return []
    rows: list[int] = []
    step = max(1, len(query) // count)
    for i in [*range(0, len(query), step), *range(len(query))]:
        if len(rows) == count:
            break
        if i not in rows and _statuses(query, gallery, i, mode)[0].any():
            rows.append(i)
    return sorted(rows)


def _statuses(query: Labels, gallery: Labels, i: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """good and junk masks over the gallery for query i (the protocol's rules)."""
    same_pid = gallery.pids == query.pids[i]
    return good_and_junk(mode, same_pid, gallery.camids == query.camids[i], gallery.clothes == query.clothes[i])


def _keeping_top(chunks: Iterator[torch.Tensor], rows: list[int], shown: dict[int, np.ndarray]
                 ) -> Iterator[torch.Tensor]:
    """The chunks unchanged, noting the TOP nearest gallery entries of `rows` (ties in gallery
    order, as the metrics rank them) before each chunk's buffer is reused."""
    import torch

    start = 0
    for block in chunks:
        for row in (r for r in rows if start <= r < start + len(block)):
            order = torch.argsort(block[row - start], stable=True)[:TOP]
            shown[row] = order.cpu().numpy()
        start += len(block)
        yield block


# --- reporting ------------------------------------------------------------------------------


def as_json(results: Sequence[SettingResult]) -> dict[str, dict[str, Any]]:
    return {r.setting.name: r.scores.as_dict() for r in results}


def print_table(results: Sequence[SettingResult], title: str) -> None:
    """The metrics in percent (one decimal, as papers print them; --json has them all), one row per setting, on stderr (stdout stays for --json). The
    mode column shows only where a setting's name is not its mode (PRCC's sc and cc are
    camera subsets under the standard rule)."""
    from rich import box
    from rich.table import Table

    from dlcr_cli.console import stderr

    with_mode = any(r.setting.name != r.setting.mode for r in results)
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("setting", no_wrap=True)
    if with_mode:
        table.add_column("mode", no_wrap=True)
    for column in ("R1", "R5", "R10", "R20", "mAP", "mINP", "queries", "skipped"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in results:
        s = r.scores
        percents = [f"{100 * v:.1f}" for v in (s.rank1, s.rank5, s.rank10, s.rank20, s.mAP, s.mINP)]
        mode = [r.setting.mode] if with_mode else []
        table.add_row(r.setting.name, *mode, *percents, str(s.queries), str(s.skipped))
    stderr.print(table)


def write_plots(features: FeatureSet, results: Sequence[SettingResult], folder: Path) -> list[Path]:
    """folder/cmc.png (a curve per setting) and, where the images are known,
    folder/retrieval-<setting>.png (queries and their top results: green good, red wrong,
    grey junk). Returns the files written."""
    from dlcr_cli.io import save_atomic
    from dlcr_cli.pictures import cmc_plot

    folder.mkdir(parents=True, exist_ok=True)
    curves = {r.setting.name: r.scores.cmc[:CMC_RANKS] for r in results if r.scores.queries}
    written = []
    if curves:
        save_atomic(cmc_plot(curves, title=f"CMC: {features.protocol}", max_rank=CMC_RANKS), folder / "cmc.png")
        written.append(folder / "cmc.png")
    for r in results:
        strip = _retrieval_strip(features, r)
        if strip is not None:
            path = folder / f"retrieval-{r.setting.name}.png"
            save_atomic(strip, path)
            written.append(path)
    return written


def _retrieval_strip(features: FeatureSet, result: SettingResult) -> Any:
    from dlcr_cli.pictures import RetrievalRow, retrieval_strip

    qpaths, gpaths = features.query_paths, features.gallery_paths
    if not result.shown or qpaths is None or gpaths is None:
        return None
    s = result.setting
    _, _, ql, gl = features.of(s)
    rows = []
    for i, top in sorted(result.shown.items()):
        good, junk = _statuses(ql, gl, i, s.mode)
        results = [(_picture(gpaths[s.gallery[j]]), f"#{rank} pid {gl.pids[j]} cam {gl.camids[j]}",
                    "good" if good[j] else "junk" if junk[j] else "wrong") for rank, j in enumerate(top, 1)]
        rows.append(RetrievalRow(_picture(qpaths[s.query[i]]), f"pid {ql.pids[i]} cam {ql.camids[i]}", results))
    return retrieval_strip(rows)


def _picture(path: str) -> Any:
    """The image, or a grey tile when it cannot be read (a picture is no reason to fail)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError:
        return Image.new("RGB", (64, 128), (128, 128, 128))
