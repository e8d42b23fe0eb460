"""A training run in its folder: the checks that make `--resume` trustworthy, the run itself,
and what an earlier run in the folder is to a new one (finished, resumable, or made of other
settings or inputs). `dlcr train` and `dlcr run` (dlcr_cli.experiment) both train through here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlcr_cli.console import log

RESUMABLE_CHANGES = {"epochs", "workers", "eval_every"}
"""Settings a resumed run may change: they do not alter what the finished epochs computed."""


@dataclass
class EarlierRun:
    """What a run folder holds: `epochs` finished (0: none), and what differs from the
    settings and inputs of a new run (empty: the same run, to reuse or continue)."""

    epochs: int
    changes: list[str] = field(default_factory=list)


def earlier_run(out: Path, s: Any, inputs: dict[str, Any]) -> EarlierRun:
    """The run in `out` compared with one of settings `s` on `inputs` (reid.train.run_inputs).
    A finished run with more epochs than asked is a change: its last epoch is another model."""
    from dlcr_cli.reid.train import STATE_FILE, saved_epoch

    if not (out / STATE_FILE).is_file():
        return EarlierRun(0)
    try:
        epochs = saved_epoch(out) or 0
    except Exception:  # an unreadable state (a run killed while writing it): nothing to reuse
        return EarlierRun(0, [f"its training state ({out / STATE_FILE}) is unreadable"])
    keys = settings_changes(out, s)
    changes = [f"its settings record ({out / 'settings.json'}) is missing or unreadable"] if keys is None else \
        [f"train.{key}" for key in keys]
    changes += input_changes(out, inputs)
    if epochs > s.epochs:
        changes.append(f"epochs ({epochs} trained, {s.epochs} asked)")
    return EarlierRun(epochs, changes)


def settings_changes(out: Path, s: Any) -> list[str] | None:
    """The training settings that differ from those recorded in out/settings.json, other than
    the resumable ones (None: no readable record)."""
    from dlcr_cli.reid.train import SETTINGS

    try:
        before = json.loads((out / SETTINGS).read_text())["train"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    now = s.model_dump(mode="json")
    return [key for key in sorted(now) if key not in RESUMABLE_CHANGES and before.get(key) != now[key]]


def input_changes(out: Path, inputs: dict[str, Any]) -> list[str]:
    """What differs between the inputs recorded in out/state/inputs.json and `inputs`."""
    from dlcr_cli.reid.train import INPUTS_FILE, changed_inputs

    try:
        before = json.loads((out / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return [f"its record of inputs ({out / INPUTS_FILE}) is missing or unreadable"]
    return changed_inputs(before, inputs)


def check_run_folder(out: Path, s: Any, resume: bool) -> None:
    """A finished or interrupted run is never overwritten; a resumed one must keep its settings."""
    from dlcr_cli.errors import UsageError
    from dlcr_cli.reid.train import SETTINGS, STATE_FILE

    has_run = (out / STATE_FILE).is_file()
    if has_run and not resume:
        raise UsageError(f"{out} holds a training run: --resume to continue it, or another --out")
    if not resume or not has_run:
        return
    changed = settings_changes(out, s)
    if changed:
        raise UsageError(f"--resume keeps the run's settings; these differ from {out / SETTINGS}: {', '.join(changed)}")


def check_inputs(out: Path, inputs: dict[str, Any], resume: bool) -> None:
    """A resumed run must have been trained on the same inputs."""
    from dlcr_cli.errors import UsageError
    from dlcr_cli.reid.train import INPUTS_FILE, STATE_FILE, changed_inputs

    if not resume or not (out / STATE_FILE).is_file():
        return
    try:
        before = json.loads((out / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        raise UsageError(f"--resume: {out} has no readable record of its inputs ({INPUTS_FILE}); "
                         f"start a new run with another --out") from None
    changed = changed_inputs(before, inputs)
    if changed:
        raise UsageError(f"--resume continues a run on the inputs it started with; changed since: {'; '.join(changed)}")


def train_run(data: Any, s: Any, out: Path, device: Any, variants: Any, *, resume: bool, dataset: str,
              generated: str | None) -> Any:
    """Train (or, with `resume`, continue) the run in `out` to `s.epochs`, evaluating every
    `s.eval_every` epochs and after the last; returns the Trainer. `s`: settings resolved for
    the data (reid.train.resolve_for_data). `dataset` and `generated` name the inputs in
    out/settings.json."""
    from dlcr_cli.distributed import current_shard
    from dlcr_cli.reid.train import Trainer, run_inputs, truncate_metrics

    check_run_folder(out, s, resume)
    shard = current_shard()
    inputs = run_inputs(data, variants, s.backbone, out) if shard.is_main else None
    if inputs is not None:
        check_inputs(out, inputs, resume)
    trainer = Trainer(data, s, out, device=device, variants=variants)
    if resume:
        done = trainer.load_state()
        log.info("train: resuming %s after epoch %d of %d", out, done, s.epochs)
        if shard.is_main:
            truncate_metrics(out / "metrics.jsonl", done)
    if shard.is_main:
        write_settings(out, s, dataset, generated, inputs)
    trainer.fit(s.epochs, s.eval_every)
    return trainer


def write_settings(out: Path, s: Any, dataset: str, generated: str | None, inputs: dict[str, Any] | None) -> None:
    from dlcr_cli.io import write_text_atomic
    from dlcr_cli.reid.train import INPUTS_FILE, SETTINGS

    (out / INPUTS_FILE).parent.mkdir(parents=True, exist_ok=True)
    if inputs is not None:
        write_text_atomic(json.dumps(inputs) + "\n", out / INPUTS_FILE)
    record = {"dataset": dataset, "generated": generated, "train": s.model_dump(mode="json")}
    write_text_atomic(json.dumps(record, indent=2) + "\n", out / SETTINGS)
