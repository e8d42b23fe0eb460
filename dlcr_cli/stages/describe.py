"""describe: one clothing description per image (docs/method.md, stage 1).

Two describers: a vision-language model asked the paper's question (`vlm`), and the
weight-free `colors`, which names the dominant colour of each garment in the record's
parsing map, in the released data's item format ("red shirt| blue pants| black shoes").
Records stream through in input order; images are read in worker threads while the model
runs, and records that already have a description are passed on unless `overwrite`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from dlcr_cli.console import log
from dlcr_cli.errors import ItemError
from dlcr_cli.io import load_label_map, load_rgb, parsing_labels_of, prefetch
from dlcr_cli.records import Record
from dlcr_cli.stages import Outcome, in_batches


class Describer(Protocol):
    batch_size: int
    empty_means: str
    """Why a description can come out empty, for the warning."""

    def read(self, record: Record) -> Any:
        """What `describe` needs of one record (worker thread); ItemError if it cannot."""

    def describe(self, payloads: list[Any]) -> list[str]:
        """One description per payload."""


@dataclass
class Item:
    record: Record
    payload: Any = None
    error: str | None = None
    skipped: bool = False

    @property
    def needs_work(self) -> bool:
        return not self.skipped and self.error is None


def run_describe(records: Iterable[Record], describer: Describer, *, overwrite: bool = False,
                 workers: int = 4) -> Iterator[Outcome]:
    """Describe every record, in input order; failures are outcomes, not exceptions."""
    items = prefetch(partial(_prepare, describer=describer, overwrite=overwrite), records, workers,
                     depth=2 * describer.batch_size + workers)
    for batch in in_batches((f.result() for f in items), describer.batch_size, lambda it: it.needs_work):
        todo = [it for it in batch if it.needs_work]
        texts = describer.describe([it.payload for it in todo]) if todo else []
        for item, text in zip(todo, texts):
            item.record.description = text
            if not text:
                log.warning("%s: empty description (%s)", item.record.image, describer.empty_means)
        for item in batch:
            yield Outcome(item.record, item.error, item.skipped)


def _prepare(record: Record, describer: Describer, overwrite: bool) -> Item:
    item = Item(record)
    if record.description and not overwrite:
        item.skipped = True
        return item
    try:
        item.payload = describer.read(record)
    except ItemError as err:
        item.error = str(err)
    return item


# --- describers ----------------------------------------------------------------------------


class ColourDescriber:
    """Weight-free: the dominant colour of each garment in the record's parsing map.

    All the work happens in `read`, in worker threads.
    """

    batch_size = 64
    empty_means = "no garment in the parsing map"

    def read(self, record: Record) -> str:
        import numpy as np

        from dlcr_cli.clothing import describe_regions, format_description

        if not record.parsing:
            raise ItemError("no parsing map in the record (run dlcr mask first)")
        label_map = load_label_map(record.parsing)
        image = np.asarray(load_rgb(record.image))
        labels = parsing_labels_of(record.parsing_labels, record.parsing, label_map)
        try:
            items = describe_regions(image, label_map, labels)
        except ValueError as err:
            raise ItemError(str(err)) from None
        return format_description(items)

    def describe(self, payloads: list[str]) -> list[str]:
        return payloads


class VlmDescriber:
    """A transformers image-text-to-text model (LLaVA and kin) asked one question per image.

    The prompt goes through the processor's chat template; batches are left-padded and only
    the new tokens are decoded; sampling is seeded once per run.
    """

    empty_means = "the model answered nothing"

    def __init__(self, model_id: str, *, device: Any, dtype: Any, batch_size: int, prompt: str,
                 max_new_tokens: int, temperature: float, seed: int, trust_remote_code: bool = False,
                 offload_idle: bool = True) -> None:
        from dlcr_cli.runtime import OomSplitter
        from dlcr_cli.textgen import Generator

        self.batch_size = batch_size
        self.batches = OomSplitter("describe")
        self.vlm = Generator.load(
            "image-text-to-text", ("AutoModelForImageTextToText", "AutoProcessor"), model_id,
            setting="describe.model", device=device, dtype=dtype, max_new_tokens=max_new_tokens,
            temperature=temperature, seed=seed, trust_remote_code=trust_remote_code, offload_idle=offload_idle,
        )
        self.text = self.vlm.chat([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}])

    def read(self, record: Record) -> Any:
        return load_rgb(record.image)

    def describe(self, payloads: list[Any]) -> list[str]:
        return self.batches.run(self._describe, payloads)

    def _describe(self, images: list[Any]) -> list[str]:
        texts = [self.text] * len(images)
        return self.vlm.generate(self.vlm.processor(images=images, text=texts, padding=True, return_tensors="pt"))


def make_describer(settings: Any) -> Describer:
    """The describer the settings ask for (`settings`: dlcr_cli.settings.Settings)."""
    d = settings.describe
    if d.backend == "colors":
        return ColourDescriber()
    from dlcr_cli.runtime import resolve_device, resolve_dtype

    device = resolve_device(settings.device)
    return VlmDescriber(
        d.model, device=device, dtype=resolve_dtype(d.dtype, device, language_model=True), batch_size=d.batch_size,
        prompt=d.prompt, max_new_tokens=d.max_new_tokens, temperature=d.temperature, seed=d.seed,
        trust_remote_code=settings.models.trust_remote_code, offload_idle=settings.models.offload_idle,
    )
