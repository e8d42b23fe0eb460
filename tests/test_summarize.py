"""dlcr summarize: vote on synthetic data, a tiny random Llama, and a canned-answer LLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import out_of_memory_above

from dlcr_cli.stages.summarize import parse_answer, source_text, summary_from_answer


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def expected_prompt(outfit: dict, person: dict) -> str:
    word = {"upper-clothes": "shirt"}
    items = [f"{outfit['upper'][1]} {word.get(outfit['upper'][0], outfit['upper'][0])}"]
    if outfit["lower"]:
        items.append(f"{outfit['lower'][1]} {outfit['lower'][0]}")
    items.append(f"{outfit['shoes'][1]} shoes")
    if person.get("hat"):
        items.append(f"{person['hat'][1]} hat")
    return " ".join(items)


def test_vote_gives_each_clothing_id_the_outfit_drawn(dlcr, synth_data, synth_described, tmp_path):
    table = tmp_path / "prompts.json"
    run = dlcr("summarize", synth_described, "--backend", "vote", "--prompts-out", table)
    assert run.code == 0, run.stderr
    outfits = json.loads((synth_data / "outfits.json").read_text())
    people = json.loads((synth_data / "people.json").read_text())
    prompts = json.loads(table.read_text())
    assert set(prompts) == {r["clothes"] for r in run.records}
    for clothes, prompt in prompts.items():
        pid, outfit = clothes.split("_")
        assert prompt == expected_prompt(outfits[pid][outfit], people[pid]), clothes
    for record in run.records:
        assert record["prompt"] == prompts[record["clothes"]]
    source = [json.loads(line) for line in synth_described.read_text().splitlines()]
    assert [r["image"] for r in run.records] == [r["image"] for r in source]  # input order


def test_vote_takes_the_majority_and_drops_rare_slots(dlcr, tmp_path):
    descriptions = ["red shirt| blue pants| black shoes", "red shirt| blue pants| white shoes",
                    "orange shirt| blue pants| black shoes| green scarf", "A red shirt and blue jeans."]
    records = [{"image": f"/x/{i}.png", "clothes": "7_1", "description": d} for i, d in enumerate(descriptions)]
    run = dlcr("summarize", "-", "--backend", "vote", input=jsonl(records))
    assert run.code == 0
    assert {r["prompt"] for r in run.records} == {"red shirt blue pants black shoes"}


def test_records_without_clothes_or_descriptions_fail_alone(dlcr):
    records = [
        {"image": "/x/a.png", "clothes": "1_1", "description": "red shirt"},
        {"image": "/x/b.png", "description": "blue shirt"},
        {"image": "/x/c.png", "clothes": "2_1"},
        {"image": "/x/d.png", "clothes": "1_1"},
    ]
    run = dlcr("summarize", "-", "--backend", "vote", input=jsonl(records))
    assert run.code == 1
    assert [(r["image"], r["prompt"]) for r in run.records] == [("/x/a.png", "red shirt"), ("/x/d.png", "red shirt")]
    assert "/x/b.png: no clothing id (field clothes) in the record" in run.stderr
    assert "/x/c.png: no record of clothing id 2_1 has a description" in run.stderr


def test_existing_prompts_are_kept_unless_overwrite(dlcr):
    records = [{"image": "/x/a.png", "clothes": "1_1", "description": "red shirt", "prompt": "mine"},
               {"image": "/x/b.png", "clothes": "2_1", "description": "blue coat"}]
    run = dlcr("summarize", "-", "--backend", "vote", input=jsonl(records))
    assert [r["prompt"] for r in run.records] == ["mine", "blue coat"]
    assert "1 done, 1 skipped (prompt kept)" in run.stderr
    again = dlcr("summarize", "-", "--backend", "vote", "--overwrite", input=jsonl(records))
    assert [r["prompt"] for r in again.records] == ["red shirt", "blue coat"]


def test_empty_input_and_a_bad_instruction(dlcr, tmp_path):
    assert dlcr("summarize", "-", "--backend", "vote", input="").code == 66
    bad = dlcr("summarize", "-", "--backend", "vote", input=jsonl([{"image": "/x", "clothes": "1"}]),
               env={"DLCR_SUMMARIZE__INSTRUCTION": "Extract the clothes."})
    assert bad.code == 78 and "summarize.instruction" in bad.stderr and "{text}" in bad.stderr


# --- answers of a language model -------------------------------------------------------------

NUMBERED = "Sure! Here are the clothing items mentioned in the text:\n\n1. Blue jacket\n2. **Black pants,**\n3. White sneakers.\n4. OK"


@pytest.mark.parametrize(("answer", "items", "form"), [
    (NUMBERED, ["Blue jacket", "Black pants,", "White sneakers", "OK"], "numbered"),
    ("1) red shirt\n2) grey jeans", ["red shirt", "grey jeans"], "numbered"),
    ("Items:\n* Red shirt\n- Grey jeans\n\u2022 Brown boots", ["Red shirt", "Grey jeans", "Brown boots"], "bulleted"),
    ("The person wears a green coat and brown boots.", ["green coat", "brown boots"], "text"),
    ("Sure! Here are the clothing items mentioned in the text:", [], "empty"),
    ("", [], "empty"),
])
def test_parse_answer(answer, items, form):
    assert parse_answer(answer) == (items, form)


def test_fallbacks_say_what_they_did():
    descriptions = ["navy coat| grey pants", "navy coat| grey pants"]
    assert summary_from_answer(NUMBERED, descriptions).note is None
    bulleted = summary_from_answer("* red shirt", descriptions)
    assert bulleted.items == ["red shirt"] and "bulleted" in bulleted.note
    empty = summary_from_answer("  ", descriptions)
    assert empty.items == ["navy coat", "grey pants"] and "empty" in empty.note and "vote" in empty.note
    preamble = summary_from_answer("Here are the items:", descriptions)
    assert preamble.items == ["navy coat", "grey pants"] and "names no clothing items" in preamble.note


def test_source_text_keeps_the_first_words():
    assert source_text(["a b  c", "d\ne"], 4) == "a b c d"
    assert source_text(["one"], 200) == "one"


class CannedModel:
    """A causal LM stand-in answering each prompt with the canned text of the case it names."""

    def __init__(self, tokenizer, answers: dict[str, str]) -> None:
        self.tokenizer, self.answers = tokenizer, answers
        self.prompts: list[str] = []

    def eval(self):
        return self

    def to(self, device):
        return self

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, **options):
        import torch

        rows = []
        for ids in input_ids:
            prompt = self.tokenizer.decode(ids, skip_special_tokens=True)
            self.prompts.append(prompt)
            case = next(key for key in self.answers if key in prompt)
            rows.append(self.tokenizer(self.answers[case], add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id])
        width = max(map(len, rows))
        new = torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows])
        return torch.cat([input_ids, new], dim=1)


@pytest.fixture
def canned_llm(tiny_llama):
    """Model id `canned/llm`, already in the model cache: the real tiny tokenizer and chat
    template around a model that answers as told."""
    import torch
    from transformers import AutoTokenizer

    from dlcr_cli.cache import CACHE, WithProcessor

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.padding_side = "left"
    model = CannedModel(tokenizer, {
        "casenumbered": NUMBERED,
        "casebulleted": "Here you go:\n- Red shirt\n- Grey jeans",
        "casepreamble": "Sure! Here are the clothing items mentioned in the text:",
        "caseempty": "",
        "caseprose": "The person wears a green coat and brown boots.",
    })
    CACHE.get("text-generation", "canned/llm", dtype=torch.float32, device=torch.device("cpu"),
              load=lambda: WithProcessor(model, tokenizer), setting="summarize.model")
    yield model
    CACHE._entries.pop(("text-generation", "canned/llm", str(torch.float32), "cpu"))


def test_canned_answers_become_prompts_or_fallbacks(dlcr, canned_llm):
    cases = {"casenumbered": "blue jacket black pants white sneakers", "casebulleted": "red shirt grey jeans",
             "casepreamble": "yellow dress", "caseempty": "yellow dress", "caseprose": "green coat brown boots"}
    records = [{"image": f"/x/{case}.png", "clothes": case, "description": f"{case} yellow dress"} for case in cases]
    run = dlcr("--device", "cpu", "summarize", "-", "--model", "canned/llm", "--batch-size", "2", input=jsonl(records))
    assert run.code == 0, run.stderr
    assert {r["clothes"]: r["prompt"] for r in run.records} == cases
    assert "casenumbered" not in run.stderr  # the expected form: no warning
    assert "clothing id casebulleted: the answer has no numbered list; used a bulleted list" in run.stderr
    assert "clothing id caseprose: the answer has no numbered list; used the garments named in its text" in run.stderr
    assert "clothing id caseempty: the model's answer is empty; used a majority vote" in run.stderr
    assert "clothing id casepreamble: the model's answer names no clothing items" in run.stderr


def test_the_llm_sees_the_papers_instruction_on_200_words(dlcr, canned_llm):
    words = [f"w{i}" for i in range(300)]
    records = [{"image": "/x/a.png", "clothes": "1", "description": "casenumbered " + " ".join(words[:150])},
               {"image": "/x/b.png", "clothes": "1", "description": " ".join(words[150:])}]
    run = dlcr("--device", "cpu", "summarize", "-", "--model", "canned/llm", input=jsonl(records))
    assert run.code == 0, run.stderr
    text = " ".join(["casenumbered", *words[:199]])
    assert canned_llm.prompts == [f"[INST] Extract the clothing items from the following text: {text} [/INST]"]


# --- a tiny random Llama through the real loading code ---------------------------------------


@pytest.fixture
def described(tmp_path) -> Path:
    colours = ["red", "blue", "green", "black", "white"]
    records = [{"image": f"/x/{i}.png", "clothes": f"{i % 5}_1", "description": f"{colours[i % 5]} shirt| grey pants"}
               for i in range(10)]
    path = tmp_path / "described.jsonl"
    path.write_text(jsonl(records))
    return path


def llm(dlcr, source, model, *args):
    return dlcr("summarize", source, "--model", model, "--max-new-tokens", "8", *args)


def test_tiny_llm_gives_every_record_its_ids_prompt(dlcr, described, tiny_llama):
    run = llm(dlcr, described, tiny_llama, "--batch-size", "2")
    assert run.code == 0, run.stderr  # random answers name no garment: the vote fallback answers
    assert [r["image"] for r in run.records] == [f"/x/{i}.png" for i in range(10)]
    by_id: dict[str, set[str]] = {}
    for record in run.records:
        by_id.setdefault(record["clothes"], set()).add(record["prompt"])
    assert all(len(prompts) == 1 for prompts in by_id.values())


def test_tiny_llm_batches_equal_one_by_one_and_sampling_is_seeded(dlcr, described, tiny_llama):
    def answers(*args: str) -> list[str]:
        """The model's raw answers, as -v logs them."""
        run = dlcr("-v", "summarize", described, "--model", tiny_llama, "--max-new-tokens", "8", *args)
        lines = [line for line in run.stderr.splitlines() if "the model answered" in line]
        assert len(lines) == 5, run.stderr
        return lines

    greedy = answers("--temperature", "0", "--batch-size", "1")
    assert greedy == answers("--temperature", "0", "--batch-size", "4")
    assert len(set(line.split("answered")[1] for line in greedy)) > 1  # the text reaches the answer
    assert answers("--seed", "5") == answers("--seed", "5")
    assert answers("--seed", "5") != answers("--seed", "6")


def test_an_unavailable_llm_is_one_line_naming_the_setting(dlcr, described, tmp_path):
    run = dlcr("summarize", described, "--model", "nobody/no-such-llm")
    assert run.code == 69
    assert "nobody/no-such-llm" in run.stderr and "summarize.model" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_an_out_of_memory_split_is_kept_for_later_batches(canned_llm):
    import torch

    from dlcr_cli.stages.summarize import LlmSummarizer

    summarizer = LlmSummarizer("canned/llm", device=torch.device("cpu"), dtype=torch.float32, batch_size=8,
                               instruction="Extract the clothing items from the following text: {text}", words=200,
                               max_new_tokens=8, temperature=0, top_p=0.9, seed=0)
    calls: list[int] = []
    summarizer.answer = out_of_memory_above(2, summarizer.answer, calls)
    groups = [["casenumbered red shirt"], ["casebulleted"], ["caseprose"], ["casenumbered"], ["caseprose"]]
    first = summarizer.summarize(groups)
    assert [s.items for s in first][1:3] == [["Red shirt", "Grey jeans"], ["green coat", "brown boots"]]  # in order
    assert 5 in calls  # it did run out of memory
    calls.clear()
    assert [s.items for s in summarizer.summarize(groups)] == [s.items for s in first]
    assert calls == [2, 2, 1]
