"""`dlcr summarize`: one inpainting prompt per clothing id."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from dlcr_cli.commands.common import FailFastOpt, InputArg, emit, state



class Backend(str, Enum):
    llm = "llm"
    vote = "vote"


def summarize(
    ctx: typer.Context,
    input: InputArg,
    backend: Annotated[Optional[Backend], typer.Option(help="llm: a language model extracts the items; vote: the majority item per garment (weight-free).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(help="llm: causal LM with a chat template, hub id or folder (the paper: meta-llama/Llama-2-7b-chat-hf).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="llm: clothing ids per model call.", show_default=False)] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="llm: longest answer, in tokens.", show_default=False)] = None,
    temperature: Annotated[Optional[float], typer.Option(help="llm: sampling temperature, 0 for greedy.", show_default=False)] = None,
    top_p: Annotated[Optional[float], typer.Option(help="llm: nucleus sampling mass.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="llm: random seed of the sampling.", show_default=False)] = None,
    prompts_out: Annotated[Optional[Path], typer.Option("--prompts-out", help="Also write the clothing id -> prompt table to this JSON file.", dir_okay=False, show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Summarize clothing ids whose records all have a prompt already (default: keep it).")] = False,
    fail_fast: FailFastOpt = False,
) -> None:
    """Add `prompt`, the inpainting prompt of the record's clothing id, to every record.

    Reads all records first and groups their descriptions by clothing id (`clothes`). The
    llm backend follows the paper: the id's descriptions joined, cut to 200 words, "Extract
    the clothing items from the following text: ...", the numbered answer turned into a
    prompt such as `blue jacket black pants white sneakers`.

    Examples:

        dlcr describe masks.jsonl | dlcr summarize - --prompts-out prompts.json > prompted.jsonl

        dlcr summarize described.jsonl --model meta-llama/Llama-2-7b-chat-hf > prompted.jsonl

        dlcr summarize described.jsonl --backend vote | jq -r .prompt | sort -u
    """
    from dlcr_cli.inputs import read_records
    from dlcr_cli.stages.summarize import make_summarizer, run_summarize

    settings = state(ctx).resolve(summarize=dict(
        backend=backend, model=model, batch_size=batch_size, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, seed=seed,
    )).settings
    records = list(read_records(input))  # input errors come before any model is loaded
    summarizer = make_summarizer(settings)
    table, outcomes = run_summarize(records, summarizer, overwrite=overwrite)
    if prompts_out is not None:
        _write_prompts(table.prompts, prompts_out)
    emit(outcomes, "summarize", fail_fast, total=len(records), bar=False, skipped_means="prompt kept")


def _write_prompts(prompts: dict[str, str], path: Path) -> None:
    import json

    from dlcr_cli.io import write_text_atomic

    write_text_atomic(json.dumps(prompts, indent=2, ensure_ascii=False) + "\n", path.expanduser())
