"""summarize: one inpainting prompt per clothing id (docs/method.md, stage 1).

All records are read first and grouped by clothing id. A summarizer turns each id's
descriptions into clothing items: an LLM asked the paper's instruction about the first 200
words of the joined descriptions (`llm`), or a majority vote per garment slot (`vote`,
weight-free). The prompt is the items in the paper's final form ("blue jacket black pants
white sneakers"), added to every record of the id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from dlcr_cli.console import log, progress
from dlcr_cli.records import Record
from dlcr_cli.stages import Outcome


@dataclass
class Summary:
    items: list[str]
    """The clothing items, as found (not yet in prompt form)."""
    note: str | None = None
    """How the items were found when not the expected way (a fallback), for a warning."""
    answer: str | None = None
    """The model's raw answer (logged with -v)."""


class Summarizer(Protocol):
    batch_size: int

    def summarize(self, groups: list[list[str]]) -> list[Summary]:
        """One summary per clothing id, from that id's descriptions."""


@dataclass
class PromptTable:
    """What summarizing gave each clothing id."""

    prompts: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    kept: set[str] = field(default_factory=set)
    """Ids whose records all had one prompt already (not redone without overwrite)."""


def run_summarize(records: list[Record], summarizer: Summarizer, *, overwrite: bool = False) -> tuple[PromptTable, Iterator[Outcome]]:
    """Summarize every clothing id, then give each record (in input order) its id's prompt."""
    table = summarize_ids(records, summarizer, overwrite=overwrite)
    return table, _outcomes(records, table)


def summarize_ids(records: list[Record], summarizer: Summarizer, *, overwrite: bool = False) -> PromptTable:
    groups: dict[str, list[Record]] = {}
    for record in records:
        if record.clothes:
            groups.setdefault(record.clothes, []).append(record)
    table = PromptTable()
    todo: list[tuple[str, list[str]]] = []
    for clothes, members in groups.items():
        existing = {r.prompt for r in members}
        if not overwrite and len(existing) == 1 and (prompt := existing.pop()):
            table.prompts[clothes] = prompt
            table.kept.add(clothes)
            continue
        descriptions = [r.description for r in members if r.description]
        if descriptions:
            todo.append((clothes, descriptions))
        else:
            table.failures[clothes] = f"no record of clothing id {clothes} has a description (run dlcr describe first)"
    with progress("summarize", len(todo), unit="ids") as bar:
        for start in range(0, len(todo), summarizer.batch_size):
            chunk = todo[start:start + summarizer.batch_size]
            for (clothes, _), summary in zip(chunk, summarizer.summarize([d for _, d in chunk])):
                _settle(table, clothes, summary)
            bar.advance(len(chunk))
    return table


def _settle(table: PromptTable, clothes: str, summary: Summary) -> None:
    from dlcr_cli.clothing import prompt_from_items

    if summary.answer is not None:
        log.debug("clothing id %s: the model answered %s", clothes, json.dumps(summary.answer))
    if summary.note:
        log.warning("clothing id %s: %s", clothes, summary.note)
    prompt = prompt_from_items(summary.items)
    if prompt:
        table.prompts[clothes] = prompt
    else:
        table.failures[clothes] = f"no clothing items found for clothing id {clothes}"


def _outcomes(records: list[Record], table: PromptTable) -> Iterator[Outcome]:
    for record in records:
        if not record.clothes:
            yield Outcome(record, "no clothing id (field clothes) in the record")
        elif record.clothes in table.failures:
            yield Outcome(record, table.failures[record.clothes])
        else:
            record.prompt = table.prompts[record.clothes]
            yield Outcome(record, skipped=record.clothes in table.kept)


def source_text(descriptions: list[str], words: int) -> str:
    """The id's descriptions joined with spaces, cut to the first `words` words (the paper)."""
    return " ".join(" ".join(descriptions).split()[:words])


# --- reading an LLM's answer ------------------------------------------------------------------

_NUMBERED = re.compile(r"^\s*(?:\*\*)?\d{1,3}\s*[.)]\s*(.+)$")
_BULLET = re.compile(r"^\s*[-*\u2022+]\s+(.+)$")


def parse_answer(answer: str) -> tuple[list[str], str]:
    """The items of an answer and the form they came in: "numbered" (the expected list),
    "bulleted", or "text" (garment phrases found in prose); ([], "empty") if none."""
    from dlcr_cli.clothing import parse_items

    lines = answer.splitlines()
    for form, pattern in (("numbered", _NUMBERED), ("bulleted", _BULLET)):
        items = [_clean(m.group(1)) for m in map(pattern.match, lines) if m]
        items = [item for item in items if item]
        if items:
            return items, form
    found = [item.text for item in parse_items(answer)]
    return (found, "text") if found else ([], "empty")


def _clean(item: str) -> str:
    """Markdown emphasis and a closing full stop are formatting, not part of the item."""
    return item.replace("**", "").replace("__", "").strip().rstrip(".").strip()


def summary_from_answer(answer: str, descriptions: list[str]) -> Summary:
    """The paper's numbered list; otherwise the best fallback, named in the summary's note."""
    from dlcr_cli.clothing import vote

    items, form = parse_answer(answer)
    if form == "numbered":
        return Summary(items, answer=answer)
    if items:
        what = "a bulleted list" if form == "bulleted" else "the garments named in its text"
        return Summary(items, f"the answer has no numbered list; used {what}", answer)
    why = "the model's answer is empty" if not answer.strip() else "the model's answer names no clothing items"
    return Summary([i.text for i in vote(descriptions)], f"{why}; used a majority vote over the descriptions", answer)


# --- summarizers -----------------------------------------------------------------------------


class VoteSummarizer:
    """Weight-free: per garment slot, the item most of the id's descriptions name."""

    batch_size = 256

    def summarize(self, groups: list[list[str]]) -> list[Summary]:
        from dlcr_cli.clothing import vote

        return [Summary([item.text for item in vote(descriptions)]) for descriptions in groups]


class LlmSummarizer:
    """A transformers causal LM asked the paper's instruction through its chat template, one
    user turn per clothing id, batched with left padding, sampling seeded once per run."""

    def __init__(self, model_id: str, *, device: Any, dtype: Any, batch_size: int, instruction: str,
                 words: int, max_new_tokens: int, temperature: float, top_p: float, seed: int,
                 trust_remote_code: bool = False, offload_idle: bool = True) -> None:
        from dlcr_cli.runtime import OomSplitter
        from dlcr_cli.textgen import Generator

        self.batch_size = batch_size
        self.batches = OomSplitter("summarize")
        self.instruction, self.words = instruction, words
        self.llm = Generator.load(
            "text-generation", ("AutoModelForCausalLM", "AutoTokenizer"), model_id, setting="summarize.model",
            device=device, dtype=dtype, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            seed=seed, trust_remote_code=trust_remote_code, offload_idle=offload_idle,
        )

    def summarize(self, groups: list[list[str]]) -> list[Summary]:
        chats = [self.chat(source_text(descriptions, self.words)) for descriptions in groups]
        answers = self.batches.run(self.answer, chats)
        return [summary_from_answer(a, d) for a, d in zip(answers, groups)]

    def chat(self, text: str) -> str:
        return self.llm.chat([{"role": "user", "content": self.instruction.format(text=text)}])

    def answer(self, chats: list[str]) -> list[str]:
        # The chat template already holds the special tokens (BOS and the like).
        return self.llm.generate(self.llm.processor(chats, padding=True, return_tensors="pt", add_special_tokens=False))


def make_summarizer(settings: Any) -> Summarizer:
    """The summarizer the settings ask for (`settings`: dlcr_cli.settings.Settings)."""
    s = settings.summarize
    if s.backend == "vote":
        return VoteSummarizer()
    from dlcr_cli.runtime import resolve_device, resolve_dtype

    device = resolve_device(settings.device)
    return LlmSummarizer(
        s.model, device=device, dtype=resolve_dtype(s.dtype, device, language_model=True), batch_size=s.batch_size,
        instruction=s.instruction, words=s.words, max_new_tokens=s.max_new_tokens,
        temperature=s.temperature, top_p=s.top_p, seed=s.seed,
        trust_remote_code=settings.models.trust_remote_code, offload_idle=settings.models.offload_idle,
    )
