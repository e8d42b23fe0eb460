"""dlcr describe: the vlm backend on a tiny random LLaVA, the colors backend on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import out_of_memory_above, save_labels, save_rgb

from dlcr_cli.cache import CACHE


@pytest.fixture
def images(tmp_path) -> Path:
    """Five images of different sizes, as records in a JSONL file."""
    sizes = [(20, 40), (64, 128), (33, 17), (48, 96), (25, 60)]
    lines = [json.dumps({"image": str(save_rgb(tmp_path / f"img{i}.png", w, h, seed=i)), "pid": i})
             for i, (w, h) in enumerate(sizes)]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def vlm(dlcr, source, model, *args, input=None):
    return dlcr("describe", source, "--model", model, "--max-new-tokens", "6", *args, input=input)


def test_vlm_adds_a_description_to_every_record_in_order(dlcr, images, tiny_llava):
    run = vlm(dlcr, images, tiny_llava, "--batch-size", "2")
    assert run.code == 0, run.stderr
    assert [r["pid"] for r in run.records] == [0, 1, 2, 3, 4]
    assert all(isinstance(r["description"], str) and r["description"] for r in run.records)
    assert "describe: 5 done, 0 skipped" in run.stderr


def test_vlm_batches_give_the_answers_of_one_by_one(dlcr, images, tiny_llava):
    greedy = ("--temperature", "0")
    one = vlm(dlcr, images, tiny_llava, "--batch-size", "1", *greedy)
    batched = vlm(dlcr, images, tiny_llava, "--batch-size", "3", *greedy)
    assert one.code == batched.code == 0
    assert [r["description"] for r in one.records] == [r["description"] for r in batched.records]
    assert len({r["description"] for r in one.records}) > 1  # the image reaches the answer


def test_vlm_sampling_is_seeded(dlcr, images, tiny_llava):
    sample = ("--temperature", "1.5", "--batch-size", "2")
    first = vlm(dlcr, images, tiny_llava, *sample, "--seed", "3")
    again = vlm(dlcr, images, tiny_llava, *sample, "--seed", "3")
    other = vlm(dlcr, images, tiny_llava, *sample, "--seed", "4")
    texts = [[r["description"] for r in run.records] for run in (first, again, other)]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_vlm_prompt_changes_the_answer(dlcr, images, tiny_llava):
    greedy = ("--temperature", "0")
    default = vlm(dlcr, images, tiny_llava, *greedy)
    asked = vlm(dlcr, images, tiny_llava, *greedy, "--prompt", "Describe the shoes in detail, please.")
    assert [r["description"] for r in default.records] != [r["description"] for r in asked.records]


def test_the_model_is_loaded_once_per_process(dlcr, images, tiny_llava):
    vlm(dlcr, images, tiny_llava)
    loads = CACHE.loads
    assert vlm(dlcr, images, tiny_llava, "--seed", "9").code == 0
    assert CACHE.loads == loads


def test_described_records_are_passed_on_unless_overwrite(dlcr, tmp_path, tiny_llava):
    image = save_rgb(tmp_path / "a.png")
    lines = [{"image": str(image), "description": "kept as it was"}, {"image": str(image)}]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    run = vlm(dlcr, "-", tiny_llava, input=text)
    assert run.code == 0, run.stderr
    assert run.records[0]["description"] == "kept as it was"
    assert run.records[1]["description"] != "kept as it was"
    assert "1 done, 1 skipped (described already)" in run.stderr
    again = vlm(dlcr, "-", tiny_llava, "--overwrite", input=text)
    assert again.records[0]["description"] != "kept as it was"


def test_unreadable_images_fail_alone(dlcr, tmp_path, tiny_llava):
    good = save_rgb(tmp_path / "good.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    text = "".join(json.dumps({"image": str(p)}) + "\n" for p in (good, broken, tmp_path / "missing.png"))
    run = vlm(dlcr, "-", tiny_llava, input=text)
    assert run.code == 1
    assert [r["image"] for r in run.records] == [str(good)]
    assert "broken.png: cannot read image" in run.stderr
    assert "missing.png: image not found" in run.stderr


def test_an_unavailable_model_is_one_line_naming_the_setting(dlcr, images, tmp_path):
    run = dlcr("describe", images, "--model", str(tmp_path / "no-such-model"))
    assert run.code == 69
    assert "no-such-model" in run.stderr and "describe.model" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    offline = dlcr("describe", images, "--model", "nobody/no-such-vlm")
    assert offline.code == 69 and "DLCR_DESCRIBE__MODEL" in offline.stderr


def test_a_model_without_chat_template_is_refused(dlcr, images, tiny_llava, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_llava, bare)
    (bare / "chat_template.jinja").unlink()
    for name in ("processor_config.json", "tokenizer_config.json"):
        config = json.loads((bare / name).read_text())
        config.pop("chat_template", None)
        (bare / name).write_text(json.dumps(config))
    run = dlcr("describe", images, "--model", bare)
    assert run.code == 78
    assert "no chat template" in run.stderr and "describe.model" in run.stderr


# --- colors ----------------------------------------------------------------------------------


def test_colors_name_the_colours_drawn(synth_data, synth_described):
    outfits = json.loads((synth_data / "outfits.json").read_text())
    records = [json.loads(line) for line in synth_described.read_text().splitlines()]
    assert len(records) == len(list(synth_data.glob("*/*.png")))  # train, query, test
    for record in records:
        pid, outfit = record["clothes"].split("_")
        drawn = outfits[pid][outfit]
        garments = [drawn["upper"]] + ([drawn["lower"]] if drawn["lower"] else []) + [drawn["shoes"]]
        named = record["description"].split("| ")
        for label, colour in garments:
            word = {"upper-clothes": "shirt"}.get(label, label)
            assert f"{colour} {word}" in named, (record["image"], record["description"])


def test_colors_format_and_label_sets(dlcr, tmp_path):
    label_map = np.zeros((40, 20), np.uint8)
    label_map[8:20, 4:16] = 4  # ATR upper-clothes
    label_map[20:34, 5:15] = 6  # ATR pants
    label_map[34:38, 5:9] = 9  # ATR left shoe
    label_map[34:38, 11:15] = 10  # ATR right shoe
    image = np.zeros((40, 20, 3), np.uint8)
    image[label_map == 4] = (200, 30, 35)
    image[label_map == 6] = (40, 90, 215)
    image[label_map >= 9] = (25, 25, 28)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "p.png")
    save_labels(tmp_path / "p_atr.png", label_map)
    record = {"image": str(tmp_path / "p.png"), "parsing": str(tmp_path / "p_atr.png"), "parsing_labels": "atr"}
    run = dlcr("describe", "-", "--backend", "colors", input=json.dumps(record) + "\n")
    assert run.code == 0, run.stderr
    assert run.records[0]["description"] == "red shirt| blue pants| black shoes"


def test_colors_need_a_parsing_map(dlcr, tmp_path):
    image = save_rgb(tmp_path / "a.png")
    lines = [{"image": str(image)}, {"image": str(image), "parsing": str(tmp_path / "gone.png")}]
    run = dlcr("describe", "-", "--backend", "colors", input="".join(json.dumps(r) + "\n" for r in lines))
    assert run.code == 1 and run.records == []
    assert "no parsing map in the record (run dlcr mask first)" in run.stderr
    assert "label map not found" in run.stderr


def test_colors_warn_when_no_garment_is_seen(dlcr, tmp_path):
    image = save_rgb(tmp_path / "a.png")
    save_labels(tmp_path / "bg.png", np.zeros((40, 20), np.uint8))
    record = {"image": str(image), "parsing": str(tmp_path / "bg.png"), "parsing_labels": "lip"}
    run = dlcr("describe", "-", "--backend", "colors", input=json.dumps(record) + "\n")
    assert run.code == 0
    assert run.records[0]["description"] == ""
    assert "empty description (no garment in the parsing map)" in run.stderr


def test_colors_size_mismatch_is_an_item_error(dlcr, tmp_path):
    image = save_rgb(tmp_path / "a.png", 20, 40)
    save_labels(tmp_path / "small.png", np.full((10, 5), 5, np.uint8))
    record = {"image": str(image), "parsing": str(tmp_path / "small.png"), "parsing_labels": "lip"}
    run = dlcr("describe", "-", "--backend", "colors", input=json.dumps(record) + "\n")
    assert run.code == 1
    assert "a.png:" in run.stderr


def test_an_out_of_memory_split_is_kept_for_later_batches(images, tiny_llava):
    import torch

    from dlcr_cli.records import Record
    from dlcr_cli.stages.describe import VlmDescriber

    describer = VlmDescriber(str(tiny_llava), device=torch.device("cpu"), dtype=torch.float32, batch_size=8,
                             prompt="What clothes is the person wearing?", max_new_tokens=4, temperature=0, seed=0)
    payloads = [describer.read(Record.model_validate(json.loads(line))) for line in images.read_text().splitlines()]
    whole = describer.describe(payloads)
    calls: list[int] = []
    describer._describe = out_of_memory_above(2, describer._describe, calls)
    assert describer.describe(payloads) == whole  # greedy: the same answers however it is cut
    assert 5 in calls  # it did run out of memory
    calls.clear()
    assert describer.describe(payloads) == whole
    assert calls == [2, 2, 1]
