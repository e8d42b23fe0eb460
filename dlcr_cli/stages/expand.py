"""expand: all of stage 1 in one process (mask, describe, summarize, inpaint), resumable.

The stages run one after the other on the source records (those of `inpaint.splits`: the
images that get variants; other splits need no mask nor description). Models come from the
process-wide cache, so each loads once; when a later model needs GPU memory, the cache moves
the idle earlier ones to the CPU.

Every stage's records are kept in DIR/records/<stage>.jsonl, with a key beside them: the
fingerprint (dlcr_cli.fingerprint) of the stage's settings that change outputs, its model's
revision, the prompt table (inpaint), and of each input record together with the content of
the files the stage reads from it (describe: the image, or the parsing map for colours;
inpaint: image, mask and parsing map). A run started again over the same DIR takes a finished
stage's records as they are, carries a crashed stage's finished records over (so describe
does not ask the model again), and redoes, record by record, what changed: masks redone with
another dilation leave the descriptions and prompts as they were and repaint the variants of
the images whose mask changed. Masks and generated images carry marks of what made them, so
their stages also tell outputs made another way file by file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlcr_cli.console import log
from dlcr_cli.records import Record, record_json
from dlcr_cli.stages import Outcome

Consume = Callable[..., Any]
"""dlcr_cli.commands.common.consume: drains outcomes into a sink, logs, returns a Tally."""


@dataclass
class Checkpoint:
    """A stage's records in `folder/<stage>.jsonl` (a `.part` while the stage runs), each
    line with the hash of the input record it came from, and the key of the run beside them:
    the hash of the stage's settings and of all its input records."""

    folder: Path
    stage: str
    settings: str
    inputs: str

    @property
    def path(self) -> Path:
        return self.folder / f"{self.stage}.jsonl"

    @property
    def part(self) -> Path:
        return self.folder / f"{self.stage}.jsonl.part"

    @property
    def key_path(self) -> Path:
        return self.folder / f"{self.stage}.key"

    def _recorded(self) -> dict[str, str]:
        try:
            return json.loads(self.key_path.read_text())
        except (OSError, ValueError):
            return {}

    def settings_changed(self) -> bool:
        """The stage ran before with other settings: its outputs must be redone, not skipped."""
        recorded = self._recorded().get("settings")
        return recorded is not None and recorded != self.settings

    def finished(self) -> list[Record] | None:
        """The records of a finished run with the same settings and input."""
        if self._recorded() != {"settings": self.settings, "inputs": self.inputs} or not self.path.is_file():
            return None
        return [record for _, record in _read(self.path)]

    def memo(self) -> dict[str, Record]:
        """input hash -> output record, from earlier runs with the same settings (finished,
        interrupted or partly failed): items whose input is unchanged are not done again."""
        if self._recorded().get("settings") != self.settings:
            return {}
        lines = [line for path in (self.path, self.part) if path.is_file() for line in _read(path)]
        return {h: record for h, record in lines if h is not None}

    @contextmanager
    def writing(self, hash_of_image: dict[str, str]) -> Iterator[Callable[[Record], None]]:
        """A sink for the stage's records, into the part file (`finish` makes it final)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key_path.write_text(json.dumps({"settings": self.settings, "inputs": self.inputs}))
        with self.part.open("w", encoding="utf-8") as out:

            def sink(record: Record) -> None:
                out.write(json.dumps({"in": hash_of_image.get(record.image)}) + "\t" + record_json(record) + "\n")
                out.flush()

            yield sink

    def finish(self) -> None:
        os.replace(self.part, self.path)


def _read(path: Path) -> list[tuple[str | None, Record]]:
    """(input hash, record) per complete line; a crash can cut the last line, and a line that
    does not parse ends the reading there (what follows it is done again)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        head, tab, body = line.partition("\t")
        if not (tab and line.endswith("\n")):
            break
        try:
            lines.append((json.loads(head)["in"], Record.model_validate_json(body)))
        except (ValueError, KeyError, TypeError):
            break
    return lines


NOT_IN_OUTPUTS = {"workers", "batch_size", "compile"}
"""Settings that change how fast a stage runs, not what it writes: changing them redoes nothing."""


@dataclass
class StageRun:
    """One stage of expand: its records (done and skipped, in order) and its failures."""

    records: list[Record]
    failed: int


def run_stage(name: str, records: list[Record], settings: Any, folder: Path, overwrite: bool, consume: Consume,
              work: Callable[[list[Record], bool], Iterable[Outcome]], *key_extra: object,
              sink: Callable[[Record], None] | None = None, marked_outputs: bool = False,
              reads: Callable[[Record], list[str]] = lambda record: [], digests: Any = None,
              **consume_args: Any) -> StageRun:
    """Run `work(records, overwrite)`, or take its result from an earlier run's checkpoint.
    `reads`: the files of a record whose content the stage's outputs depend on (`digests`
    gives it). `marked_outputs`: the stage itself tells outputs made with other
    settings (marks), so changed settings need not redo everything."""
    from dlcr_cli.fingerprint import Digests, fingerprint, model_revision

    input_hashes = _input_hashes(records, reads, digests or Digests())
    outputs_depend_on = settings.model_dump(mode="json", exclude=NOT_IN_OUTPUTS)
    model = getattr(settings, "model", None)
    revision = model_revision(model) if isinstance(model, str) else ""
    settings_key = fingerprint(outputs_depend_on, revision, *map(str, key_extra))
    checkpoint = Checkpoint(folder, name, settings_key, fingerprint(*input_hashes))
    finished = None if overwrite else checkpoint.finished()
    if finished is not None:
        log.info("%s: finished in an earlier run: %d records from %s", name, len(finished), checkpoint.path)
        for record in finished:
            if sink is not None:
                sink(record)
        return StageRun(finished, 0)
    if checkpoint.settings_changed() and not (overwrite or marked_outputs):
        log.info("%s: settings changed since the last run: redoing its outputs", name)
        overwrite = True
    memo = {} if overwrite else checkpoint.memo()
    inputs = [memo.get(h, record) for h, record in zip(input_hashes, records)]
    if carried := sum(h in memo for h in input_hashes):
        log.info("%s: %d records carried over from an earlier run", name, carried)
    kept: list[Record] = []

    def keep(record: Record) -> None:
        kept.append(record)
        write(record)
        if sink is not None:
            sink(record)

    hash_of_image = {record.image: h for h, record in zip(input_hashes, records)}
    with checkpoint.writing(hash_of_image) as write:
        tally = consume(work(inputs, overwrite), name, sink=keep, **consume_args)
    if not tally.failed:
        checkpoint.finish()  # with failures it stays a part: the next run retries them
    return StageRun(kept, tally.failed)


def _input_hashes(records: list[Record], reads: Callable[[Record], list[str]], digests: Any) -> list[str]:
    """Per record: its JSON and the content of the files the stage reads for it."""
    from dlcr_cli.fingerprint import fingerprint

    paths = [reads(record) for record in records]
    flat = [path for row in paths for path in row]
    digest = dict(zip(flat, digests.many(flat)))
    return [fingerprint(record_json(record), *(digest[path] for path in row)) for record, row in zip(records, paths)]


WEIGHT_FREE = {"mask": {"backend": "parsing"}, "describe": {"backend": "colors"},
               "summarize": {"backend": "vote"}, "inpaint": {"backend": "transfer"}}
"""The weight-free backend of every stage (mask also needs a parsing_dir)."""


def expand_to_file(input: str, out: Path, settings: Any, path: Path, *, prompts_file: Path | None,
                   fail_fast: bool = False) -> Path:
    """run_expand with the generated records written to `path` (JSONL) rather than stdout."""
    records = run_expand(input, out, settings, prompts_file=prompts_file, overwrite=False, fail_fast=fail_fast,
                         sink=lambda record: None)
    path.write_text("".join(record_json(record) + "\n" for record in records))
    return path


def run_expand(input: str, out: Path, settings: Any, *, prompts_file: Path | None, overwrite: bool,
               fail_fast: bool, sink: Callable[[Record], Any] | None = None,
               guidance: bool = False) -> list[Record]:
    """Mask, describe, summarize and inpaint the source records of `input` into `out`, each
    generated record to `sink` (default: stdout) as it is done; returns them all. With
    `guidance`, the authors' two passes: the unguided pass into out/generated, a
    discriminator trained on it in out/discriminator, and the guided pass into
    out/generated-guided, whose records are the ones emitted. Exit 1 at the end if any item
    of any stage failed."""
    from dlcr_cli.commands.common import Tally, consume
    from dlcr_cli.errors import InputMissing
    from dlcr_cli.fingerprint import CACHE_NAME, Digests
    from dlcr_cli.inputs import read_records
    from dlcr_cli.records import write_record
    from dlcr_cli.stages.inpaint import read_prompt_file, select_sources

    records = list(read_records(input))  # input errors come before any model is loaded
    sources, others = select_sources(records, settings.inpaint.splits)
    if not sources:
        raise InputMissing(f"no source records of split {','.join(settings.inpaint.splits)} in {input}")
    if others:
        log.info("expand: %d records of other splits than %s are left alone", others, ",".join(settings.inpaint.splits))
    digests = Digests(out / CACHE_NAME)
    stage = _StageRunner(out / "records", overwrite, consume, fail_fast, digests)
    try:
        chosen = {id(record) for record in sources}
        rest = [record for record in records if id(record) not in chosen]
        generated, jobs = _stages(stage, sources, settings, out, read_prompt_file(prompts_file) if prompts_file else None,
                                  sink or write_record, digests, guidance, rest)
    finally:
        digests.save()
    _preview(jobs, settings.inpaint.format, out / "preview.png")
    Tally(failed=stage.failed, done=stage.done).raise_if_failed()
    return generated


def _stages(stage: _StageRunner, sources: list[Record], settings: Any, out: Path, table_file: dict[str, str] | None,
            sink: Callable[[Record], Any], digests: Any, guidance: bool = False,
            rest: list[Record] = ()) -> tuple[list[Record], list]:
    from dlcr_cli.errors import InputMissing
    from dlcr_cli.fingerprint import fingerprint, record_files
    from dlcr_cli.stages.inpaint import prompt_table

    masked = stage("mask", sources, settings.mask, partial_work(_mask, settings, out, digests), out,
                   reads=_mask_reads(settings.mask), marked_outputs=True)
    prompted = masked
    if table_file is None:
        reads = record_files("parsing") if settings.describe.backend == "colors" else record_files("image")
        described = stage("describe", masked, settings.describe, partial_work(_describe, settings),
                          reads=reads, skipped_means="described already")
        prompted = stage("summarize", described, settings.summarize, partial_work(_summarize, settings),
                         bar=False, skipped_means="prompt kept")
    table = prompt_table(prompted, table_file)
    _write_prompts(table, out / "prompts.json")
    if not table:
        raise InputMissing("no clothing id has a prompt (see the messages above), nothing to inpaint")
    donors, donors_key = prompted, ""
    if settings.inpaint.backend == "transfer":
        donors, donors_key = _transfer_donors(stage, prompted, rest, table, settings, out, digests)
    jobs: list = []
    reads = record_files("image", "mask", "parsing") if settings.inpaint.backend in ("recolor", "transfer") \
        else record_files("image", "mask")
    guided_settings = settings
    if guidance:  # the first pass is unguided, whatever the guidance settings: they change the second only
        defaults = type(settings.inpaint)()
        guided_settings, settings = settings, settings.model_copy(update={"inpaint": settings.inpaint.model_copy(
            update={"discriminator": None, "dg_weight": defaults.dg_weight, "dg_min_t": defaults.dg_min_t})})
    generated = stage("inpaint", prompted, settings.inpaint,
                      partial_work(_inpaint, settings, out, table, jobs, digests, donors), out, fingerprint(table),
                      donors_key,
                      sink=(lambda record: None) if guidance else sink, marked_outputs=True, reads=reads)
    if not guidance:
        return generated, jobs
    from dlcr_cli.discriminator import discriminator_digest

    folder = _train_discriminator(generated, settings, out)
    guided_settings = guided_settings.model_copy(update={"inpaint": guided_settings.inpaint.model_copy(
        update={"discriminator": folder})})
    guided_jobs: list = []
    guided = stage("inpaint-guided", prompted, guided_settings.inpaint,
                   partial_work(_inpaint, guided_settings, out, table, guided_jobs, digests, donors, GUIDED),
                   out, fingerprint(table), discriminator_digest(folder), sink=sink, marked_outputs=True, reads=reads)
    return guided, guided_jobs


def _transfer_donors(stage: _StageRunner, prompted: list[Record], rest: list[Record], table: dict[str, str],
                     settings: Any, out: Path, digests: Any) -> tuple[list[Record], str]:
    """The records transfer paints from, and what identifies those outside the sources: the
    sources, and the records of other splits of the target ids the sources lack (queries in
    training outfits: `--prompts` of the training table), masked for their parsing maps in
    a stage of their own ("mask-targets"). A changed target image then redoes the stage."""
    from dlcr_cli.fingerprint import fingerprint, record_files

    own = {record.clothes for record in prompted}
    wanted = [record for record in rest if record.clothes in table and record.clothes not in own]
    if not wanted:
        return prompted, ""
    log.info("expand: the transfer backend paints from %d images of %d target clothing ids outside the sources",
             len(wanted), len({record.clothes for record in wanted}))
    masked = stage("mask-targets", wanted, settings.mask, partial_work(_mask, settings, out, digests), out,
                   reads=_mask_reads(settings.mask), marked_outputs=True)
    return prompted + masked, fingerprint(*_input_hashes(masked, record_files("image", "parsing"), digests))


GUIDED = "generated-guided"
"""expand --discriminator-guidance: the guided pass's folder (the unguided one stays in generated/)."""


def _train_discriminator(generated: list[Record], settings: Any, out: Path) -> Path:
    """out/discriminator trained on the unguided pass (resumed where it stopped); trained
    afresh when the pass or the settings changed since, as a fresh run would."""
    import shutil

    from dlcr_cli.discriminator import RunChanged
    from dlcr_cli.errors import UsageError
    from dlcr_cli.stages.discriminator import run_discriminator

    if settings.inpaint.backend != "diffusion":
        raise UsageError("--discriminator-guidance needs the diffusion backend (inpaint.backend=diffusion)")
    folder, records = out / "discriminator", out / "records" / "unguided.jsonl"
    records.write_text("".join(record_json(record) + "\n" for record in generated))
    log.info("expand: training the discriminator on the unguided pass (%d generated images) in %s",
             len(generated), folder)
    try:
        run_discriminator(str(records), folder, settings, resume=True)
    except RunChanged as err:  # another pass or other settings since: what a fresh run would train
        log.info("expand: %s: training it again", err)
        shutil.rmtree(folder)
        run_discriminator(str(records), folder, settings, resume=True)
    return folder


def partial_work(fn: Callable[..., Iterable[Outcome]], *args: Any) -> Callable[[list[Record], bool], Iterable[Outcome]]:
    """The stage's work over its input records, built (models loaded) only when it runs."""
    return lambda records, overwrite: fn(records, overwrite, *args)


class _StageRunner:
    def __init__(self, folder: Path, overwrite: bool, consume: Consume, fail_fast: bool, digests: Any) -> None:
        self.folder, self.overwrite, self.consume, self.fail_fast = folder, overwrite, consume, fail_fast
        self.digests = digests
        self.failed = self.done = 0

    def __call__(self, name: str, records: list[Record], settings: Any, work: Callable, *key_extra: object,
                 **options: Any) -> list[Record]:
        result = run_stage(name, records, settings, self.folder, self.overwrite, self.consume, work, *key_extra,
                           fail_fast=self.fail_fast, total=len(records), digests=self.digests, **options)
        self.failed += result.failed
        self.done += len(result.records)
        return result.records


def _mask_reads(m: Any) -> Callable[[Record], list[str]]:
    """The image, and with the parsing backend the given label map of it."""
    from dlcr_cli.fingerprint import record_files

    if m.backend != "parsing" or m.parsing_dir is None:
        return record_files("image")
    from dlcr_cli.io import mirrored
    from dlcr_cli.records import rel_path

    return lambda record: [record.image, str(mirrored(Path(m.parsing_dir), rel_path(record)))]


def _mask(records: list[Record], overwrite: bool, settings: Any, out: Path, digests: Any) -> Iterable[Outcome]:
    from dlcr_cli.stages.mask import MaskJob, make_parser, run_mask

    m = settings.mask
    return run_mask(records, make_parser(settings), MaskJob(out, m.keep, m.dilation, overwrite, m.workers, digests))


def _describe(records: list[Record], overwrite: bool, settings: Any) -> Iterable[Outcome]:
    from dlcr_cli.stages.describe import make_describer, run_describe

    return run_describe(records, make_describer(settings), overwrite=overwrite, workers=settings.describe.workers)


def _summarize(records: list[Record], overwrite: bool, settings: Any) -> Iterable[Outcome]:
    from dlcr_cli.stages.summarize import make_summarizer, run_summarize

    _, outcomes = run_summarize(records, make_summarizer(settings), overwrite=overwrite)
    return outcomes


def _inpaint(records: list[Record], overwrite: bool, settings: Any, out: Path, table: dict[str, str],
             jobs: list, digests: Any, donors: list[Record], folder: str = "generated") -> Iterable[Outcome]:
    from itertools import chain

    from dlcr_cli.stages.inpaint import make_painter, make_plan, run_inpaint

    s = settings.inpaint
    planned, failed = make_plan(records, table, variants=s.variants, seed=s.seed, out=out / folder, fmt=s.format)
    jobs.extend(planned)
    return chain(failed, run_inpaint(planned, make_painter(settings, donors), fmt=s.format, overwrite=overwrite,
                                     workers=s.workers, digests=digests))


def _write_prompts(table: dict[str, str], path: Path) -> None:
    from dlcr_cli.io import write_text_atomic

    write_text_atomic(json.dumps(table, indent=2, ensure_ascii=False) + "\n", path)


def _preview(jobs: list, fmt: str, path: Path) -> None:
    from dlcr_cli.stages.inpaint import write_preview

    if jobs and write_preview(jobs, fmt, path):
        log.info("expand: contact sheet in %s", path)
