"""`dlcr demo`: the paper's experiment (`dlcr run`, dlcr_cli.experiment) on the embedded
synthetic benchmark, offline and weight-free, measuring its central claim: training with
clothes-changed images improves clothes-changing re-identification.

Per seed, `synth` draws a dataset (LTCC layout) whose identities live outside their clothes
into DIR/seed-<s>/data (realistic outfits, or flat ones: --style); the experiment runs on it
with the weight-free backends (parsing maps, colour names, vote, and garment transfer or
recolouring: --backend; K = 10 per training image, 4 per query) and builtin:small
trained three ways with that seed (baseline, +DLCR, +DLCR without progressive learning),
each run's last epoch evaluated with the LTCC protocol, +DLCR refined. The schedule is the
paper's, scaled to the demo's epochs: clothes losses from 25/60 of the run, lr steps at 20/60
and 40/60, progressive thresholds at 5/60, 10/60 and 15/60. Everything lands in
DIR/seed-<s>/ (stage1/ and the runs; resumable) and the report in DIR/report/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlcr_cli.console import log


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


def demo_settings(size: DemoSize, backend: str | None = None) -> Any:
    """Every section the experiment reads, on the defaults (not the user's config: the demo's
    numbers must not depend on it): the weight-free backends of stage 1, the LIP label maps
    synth draws, K per training image and per query, and the scaled schedule of builtin:small
    (train.seed and progressive are each run's)."""
    from dlcr_cli.settings import DEFAULTS
    from dlcr_cli.stages.expand import WEIGHT_FREE

    d, e = DEFAULTS, size.epochs
    sections = {name: getattr(d, name).model_copy(update=values) for name, values in WEIGHT_FREE.items()}
    sections["mask"] = sections["mask"].model_copy(update={"labels": "lip"})
    sections["inpaint"] = sections["inpaint"].model_copy(update={"variants": size.variants,
                                                                 "backend": backend or WEIGHT_FREE["inpaint"]["backend"]})
    sections["refine"] = d.refine.model_copy(update={"variants": size.query_variants})
    sections["evaluate"] = d.evaluate.model_copy(update={"workers": 2})
    sections["train"] = d.train.model_copy(update={
        "backbone": "builtin:small", "image_size": size.image_size, "epochs": e,
        "ids_per_batch": size.batch[0], "images_per_id": size.batch[1], "triplet_weight": 0.0,
        "clothes_start": scaled(e, 25), "milestones": [scaled(e, 20), scaled(e, 40)],
        "progressive_epochs": [scaled(e, 5), scaled(e, 10), scaled(e, 15)],
        "workers": 0, "eval_every": 0, "keep": "last",
    })
    return d.model_copy(update=sections)


def run_demo(out: Path, seeds: list[int], quick: bool, device: Any, *, style: str = "realistic",
             backend: str | None = None) -> tuple[dict[int, dict[str, Any]], Path]:
    """Draw each seed's dataset (kept when drawn before with the same parameters), then the
    experiment on them all."""
    from dlcr_cli.experiment import Case, Plan, run_experiment

    size = QUICK if quick else FULL
    cases = []
    for seed in seeds:
        folder = out / f"seed-{seed}"
        draw_dataset(folder / "data", size, seed, style)
        cases.append(Case(seed, folder / "data", folder / "stage1", folder))
    settings = demo_settings(size, backend)
    title = f"dlcr demo: {size.ids} ids ({style}), {size.epochs} epochs, {settings.inpaint.backend}"
    plan = Plan(settings, title, no_progressive=True,
                retrain=True)  # the demo's folder is scratch: a run of other settings is trained again
    return run_experiment(cases, plan, out / "report", device)


DRAWN = "demo-draw.json"
"""In a demo's data folder: the synth parameters it was drawn with."""


def draw_dataset(data: Path, size: DemoSize, seed: int, style: str) -> None:
    """`synth` into `data` unless it holds the dataset of these parameters already (a quick
    demo's data, or another style's, is drawn again: the runs then train again)."""
    import json

    from dlcr_cli.synth import synthesize

    drawn = {"ids": size.ids, "cameras": size.cameras, "per": size.per, "seed": seed, "style": style}
    marker = data / DRAWN
    try:
        if json.loads(marker.read_text()) == drawn and (data / "people.json").is_file():
            return
    except (OSError, ValueError):
        pass
    log.info("demo: seed %d: drawing the dataset (%d ids, %s)", seed, size.ids, style)
    marker.unlink(missing_ok=True)  # an interrupted draw leaves none
    synthesize(data, ids=size.ids, cameras=size.cameras, per=size.per, seed=seed, style=style)
    marker.write_text(json.dumps(drawn) + "\n")
