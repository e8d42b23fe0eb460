"""dlcr expand: all of stage 1 in one process, resumable from its work folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlcr_cli.cache import CACHE


def weight_free(dlcr, data: Path, out: Path, *args, parsing: Path | None = None):
    parsing = parsing or data / "parsing"
    return dlcr("expand", data, "--out", out, "--weight-free", "--parsing-dir", parsing, "-k", "3", *args)


def test_weight_free_expand_writes_every_stage_and_the_generated_records(dlcr, synth_data, tmp_path):
    run = weight_free(dlcr, synth_data, tmp_path / "w")
    assert run.code == 0, run.stderr
    train = [p for p in (synth_data / "train").rglob("*.png")]
    assert len(run.records) == 3 * len(train)
    assert all(Path(r["image"]).is_file() and r["target_clothes"] != r["clothes"] for r in run.records)
    assert {r["split"] for r in run.records} == {"train"}  # query and gallery images are no sources
    for stage in ("mask", "describe", "summarize", "inpaint"):
        assert len((tmp_path / "w/records" / f"{stage}.jsonl").read_text().splitlines()) == len(
            train) * (3 if stage == "inpaint" else 1)
    prompts = json.loads((tmp_path / "w/prompts.json").read_text())
    assert set(prompts) == {r["clothes"] for r in run.records}
    assert (tmp_path / "w/preview.png").is_file() and (tmp_path / "w/masks").is_dir()

    again = weight_free(dlcr, synth_data, tmp_path / "w")
    assert again.code == 0
    assert again.stderr.count("finished in an earlier run") == 4
    assert again.stdout == run.stdout


def test_a_changed_setting_redoes_only_the_stages_it_affects(dlcr, synth_data, tmp_path):
    first = weight_free(dlcr, synth_data, tmp_path / "w")
    assert first.code == 0
    run = dlcr("expand", synth_data, "--out", tmp_path / "w", "--weight-free", "--parsing-dir",
               synth_data / "parsing", "-k", "2")
    assert run.code == 0, run.stderr
    assert run.stderr.count("finished in an earlier run") == 3
    train = len(list((synth_data / "train").rglob("*.png")))
    # K = 2 draws the first two of the three targets: those images exist and are kept.
    assert f"inpaint: 0 done, {2 * train} skipped" in run.stderr and len(run.records) == 2 * train

    run = dlcr("expand", synth_data, "--out", tmp_path / "w", "--weight-free", "--parsing-dir",
               synth_data / "parsing", "-k", "2", "--set", "inpaint.seed=7", "--set", "describe.workers=1")
    assert run.stderr.count("finished in an earlier run") == 3  # workers change no output
    assert f"inpaint: {2 * train} done, 0 skipped" in run.stderr
    assert {r["seed"] for r in run.records}.isdisjoint(r["seed"] for r in first.records)


def test_an_interrupted_stage_carries_its_finished_records_over(dlcr, synth_data, tmp_path):
    assert weight_free(dlcr, synth_data, tmp_path / "w").code == 0
    records = tmp_path / "w/records"
    lines = (records / "describe.jsonl").read_text().splitlines()
    (records / "describe.jsonl.part").write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])  # cut mid-line
    for name in ("describe.jsonl", "summarize.jsonl", "inpaint.jsonl"):
        (records / name).unlink()
    run = weight_free(dlcr, synth_data, tmp_path / "w")
    assert run.code == 0, run.stderr
    assert "describe: 5 records carried over" in run.stderr
    assert f"describe: {len(lines) - 5} done, 5 skipped" in run.stderr
    assert "inpaint: 0 done" in run.stderr  # the images exist: skipped, not painted again
    assert len((records / "describe.jsonl").read_text().splitlines()) == len(lines)


def test_a_failed_item_is_retried_by_the_next_run(dlcr, synth_data, tmp_path):
    from dlcr_cli.inputs import read_records
    from dlcr_cli.records import record_json

    records = list(read_records(str(synth_data)))
    late = next(r for r in records if r.split == "train")
    original, late.image = late.image, str(tmp_path / "not-yet.png")  # rel still finds its parsing map
    data = tmp_path / "data.jsonl"
    data.write_text("".join(record_json(r) + "\n" for r in records))
    first = weight_free(dlcr, data, tmp_path / "w", parsing=synth_data / "parsing")
    assert first.code == 1 and "not-yet.png" in first.stderr
    assert (tmp_path / "w/records/mask.jsonl.part").is_file() and not (tmp_path / "w/records/mask.jsonl").exists()
    (tmp_path / "not-yet.png").write_bytes(Path(original).read_bytes())
    second = weight_free(dlcr, data, tmp_path / "w", parsing=synth_data / "parsing")
    assert second.code == 0, second.stderr
    assert "mask: 1 done" in second.stderr
    assert len(second.records) == len(first.records) + 3


def test_prompts_file_skips_describe_and_summarize(dlcr, synth_data, tmp_path):
    table = tmp_path / "prompts.json"
    table.write_text(json.dumps({"x_1": "red shirt blue pants", "x_2": "green dress"}))
    run = weight_free(dlcr, synth_data, tmp_path / "w", "--prompts", table, "--set", 'inpaint.splits=["query"]')
    assert run.code == 0, run.stderr
    assert "describe" not in run.stderr and "summarize" not in run.stderr
    assert {r["split"] for r in run.records} == {"query"}
    assert {r["prompt"] for r in run.records} == set(json.loads(table.read_text()).values())


@pytest.mark.parametrize("assignment, code, message", [
    ("inpaint.steps", 2, "SECTION.KEY=VALUE"),
    ("steps=3", 2, "SECTION.KEY=VALUE"),
    ("inpaint.stepz=3", 2, "inpaint.stepz: no such setting"),
    ("inpaint.steps=-1", 2, "inpaint.steps"),
])
def test_bad_set_options(dlcr, synth_data, tmp_path, assignment, code, message):
    run = weight_free(dlcr, synth_data, tmp_path / "w", "--set", assignment)
    assert run.code == code and message in run.stderr, run.stderr
    assert not (tmp_path / "w").exists()


def test_model_backends_each_load_once(dlcr, synth_data, tiny_segformer, tiny_llama, tiny_inpaint, tmp_path):
    # Random weights answer noise: colours describe (from the random parsing maps), the
    # random LLM's answers fall back to a vote over them, so every clothing id gets a prompt.
    CACHE.clear()
    args = ["--set", f'mask.model="{tiny_segformer}"', "--set", "describe.backend=colors",
            "--set", f'summarize.model="{tiny_llama}"', "--set", "summarize.max_new_tokens=8",
            "--set", f'inpaint.model="{tiny_inpaint}"', "--set", "inpaint.size=[64, 32]", "--set", "inpaint.steps=2",
            "-k", "2"]
    run = dlcr("--device", "cpu", "expand", synth_data, "--out", tmp_path / "w", *args)
    assert run.code == 0, run.stderr
    assert CACHE.loads == 3
    assert len(run.records) == 2 * len(list((synth_data / "train").rglob("*.png")))


def _copy(data: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(data, to)
    return to


def test_another_mask_policy_repaints_and_keeps_descriptions_and_prompts(dlcr, synth_data, tmp_path):
    """mask.dilation changes the masks, not what describe and summarize read: they stay
    finished, and every variant is painted again with the new masks."""
    first = weight_free(dlcr, synth_data, tmp_path / "w")
    assert first.code == 0, first.stderr
    before = {r["image"]: Path(r["image"]).read_bytes() for r in first.records}
    wider = weight_free(dlcr, synth_data, tmp_path / "w", "--set", "mask.dilation=3")
    assert wider.code == 0, wider.stderr
    n = len(first.records)
    assert "describe: finished in an earlier run" in wider.stderr
    assert "summarize: finished in an earlier run" in wider.stderr
    assert f"inpaint: {n} done, 0 skipped" in wider.stderr, wider.stderr
    assert sum(Path(r["image"]).read_bytes() != before[r["image"]] for r in wider.records) > n // 2
    same = weight_free(dlcr, synth_data, tmp_path / "w", "--set", "mask.dilation=3", "--set", "mask.workers=1",
                       "--set", "inpaint.batch_size=3")
    assert same.stderr.count("finished in an earlier run") == 4, same.stderr  # speed settings redo nothing


@pytest.mark.parametrize("backend", ["recolor", "transfer"])
def test_a_changed_source_image_repaints_its_own_variants_only(dlcr, synth_data, tmp_path, backend):
    """With transfer, also the variants that took their garments from it (test_transfer.py)."""
    import re

    import numpy as np
    from PIL import Image

    data = _copy(synth_data, tmp_path / "data")
    first = weight_free(dlcr, data, tmp_path / "w", "--set", f"inpaint.backend={backend}")
    assert first.code == 0, first.stderr
    source = first.records[0]["source"]
    own = [Path(r["image"]) for r in first.records if r["source"] == source]
    before = {p: p.stat().st_mtime_ns for p in own}
    pixels = np.asarray(Image.open(source).convert("RGB")).copy()
    pixels[:4] = 255 - pixels[:4]
    Image.fromarray(pixels).save(source)
    again = weight_free(dlcr, data, tmp_path / "w", "--set", f"inpaint.backend={backend}")
    assert again.code == 0, again.stderr
    done = int(re.search(r"inpaint: (\d+) done", again.stderr).group(1))
    assert len(own) == 3 and all(p.stat().st_mtime_ns != before[p] for p in own)  # K = 3 variants of that image
    assert done == 3 if backend == "recolor" else 3 <= done < len(first.records)
    assert [r["image"] for r in again.records] == [r["image"] for r in first.records]


def test_another_prompt_table_gives_images_and_records_of_that_table(dlcr, synth_data, tmp_path):
    first = weight_free(dlcr, synth_data, tmp_path / "w")
    table = json.loads((tmp_path / "w/prompts.json").read_text())
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(table))
    b.write_text(json.dumps({k: "white shirt| white pants" for k in table}))
    with_a = weight_free(dlcr, synth_data, tmp_path / "w", "--prompts", a)
    assert with_a.code == 0 and {r["prompt"] for r in with_a.records} == {r["prompt"] for r in first.records}
    with_b = weight_free(dlcr, synth_data, tmp_path / "w", "--prompts", b)
    assert with_b.code == 0, with_b.stderr
    assert {r["prompt"] for r in with_b.records} == {"white shirt| white pants"}
    assert json.loads((tmp_path / "w/prompts.json").read_text()) == json.loads(b.read_text())
    assert f"inpaint: {len(first.records)} done" in with_b.stderr


def test_discriminator_guidance_runs_the_authors_two_passes_and_resumes(dlcr, synth_data, tiny_inpaint, tmp_path):
    """Unguided pass, a discriminator trained on it, the guided pass into its own folder (its
    records on stdout); run again, every part is reused; another guidance weight repaints the
    guided pass only."""
    args = ["--device", "cpu", "expand", synth_data, "--out", tmp_path / "w", "--weight-free", "--parsing-dir",
            synth_data / "parsing", "-k", "2", "--discriminator-guidance",
            "--set", "inpaint.backend=diffusion", "--set", f'inpaint.model="{tiny_inpaint}"',
            "--set", "inpaint.size=[64, 32]", "--set", "inpaint.steps=3", "--set", "inpaint.dg_min_t=0",
            "--set", "discriminator.width=8", "--set", "discriminator.levels=2", "--set", "discriminator.epochs=2"]
    run = dlcr(*args)
    assert run.code == 0, run.stderr
    images = [Path(r["image"]) for r in run.records]
    assert images and all("generated-guided" in p.parts and p.is_file() for p in images)
    unguided = [json.loads(line.split("\t", 1)[1])  # checkpoint lines: input hash, tab, record
                for line in (tmp_path / "w/records/inpaint.jsonl").read_text().splitlines()]
    assert len(unguided) == len(images) and all("generated-guided" not in r["image"] for r in unguided)
    assert (tmp_path / "w/discriminator/discriminator.json").is_file()
    pairs = {r["rel"]: r["image"] for r in unguided}
    differ = sum(Path(pairs[r["rel"]]).read_bytes() != Path(r["image"]).read_bytes() for r in run.records)
    assert differ == len(images)  # guidance changed every image

    guided_bytes = [p.read_bytes() for p in images]
    again = dlcr(*args)
    assert again.code == 0, again.stderr
    assert again.stdout == run.stdout and "inpaint-guided: finished in an earlier run" in again.stderr
    assert "nothing to do" in again.stderr  # the discriminator's epochs are done

    weaker = dlcr(*args, "--set", "inpaint.dg_weight=0.5")
    assert weaker.code == 0, weaker.stderr
    assert "inpaint: finished in an earlier run" in weaker.stderr
    assert "inpaint-guided: finished in an earlier run" not in weaker.stderr
    assert all(Path(r["image"]).read_bytes() != old for r, old in zip(weaker.records, guided_bytes))

    # another discriminator setting: the run in discriminator/ cannot be resumed, so it is
    # trained afresh (not refused, nothing else lost) and the guided pass repaints
    retrained = dlcr(*args, "--set", "discriminator.lr=1e-3")
    assert retrained.code == 0, retrained.stderr
    assert "training it again" in retrained.stderr and "inpaint: finished in an earlier run" in retrained.stderr
    config = json.loads((tmp_path / "w/discriminator/discriminator.json").read_text())
    assert config["training"]["lr"] == 1e-3


def test_discriminator_guidance_needs_the_diffusion_backend(dlcr, synth_data, tmp_path):
    run = weight_free(dlcr, synth_data, tmp_path / "w", "--discriminator-guidance")
    assert run.code == 2 and "diffusion backend" in run.stderr


def test_weight_free_expand_with_the_transfer_backend_finds_the_targets_images(dlcr, synth_data, tmp_path):
    """expand hands the painter every record, so transfer paints from the target ids' images
    (it once got none, and recoloured every variant from its prompt with a warning)."""
    run = dlcr("expand", synth_data, "--out", tmp_path / "w", "--weight-free", "--parsing-dir",
               synth_data / "parsing", "-k", "2", "--set", "inpaint.backend=transfer")
    assert run.code == 0, run.stderr
    assert "no usable target image" not in run.stderr and len(run.records) > 0


def test_transfer_paints_queries_from_the_training_images_of_their_targets(dlcr, synth_data, tmp_path):
    """Queries are painted in training outfits (--prompts of the training table): their target
    images are training records, masked for the purpose; a changed one repaints its variants."""
    import shutil

    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    common = ("--weight-free", "--parsing-dir", data / "parsing", "--set", "inpaint.backend=transfer")
    train = dlcr("expand", data, "--out", tmp_path / "train", "-k", "1", *common)
    assert train.code == 0, train.stderr
    query = ("expand", data, "--out", tmp_path / "query", "-k", "2", "--prompts", tmp_path / "train" / "prompts.json",
             *common, "--set", "inpaint.splits=[\"query\"]")
    first = dlcr(*query)
    assert first.code == 0, first.stderr
    assert "no usable target image" not in first.stderr and "mask-targets" in first.stderr
    assert first.records and {r["target_clothes"] for r in first.records} <= set(
        json.loads((tmp_path / "train" / "prompts.json").read_text()))
    again = dlcr(*query)
    assert again.code == 0 and "inpaint: finished in an earlier run" in again.stderr
    variant = first.records[0]
    before = np.asarray(Image.open(variant["image"])).copy()
    from dlcr_cli.inputs import read_records

    donors = [r for r in read_records(str(data)) if r.clothes == variant["target_clothes"] and r.split == "train"]
    for donor in donors:  # the target's every training image in other colours
        Image.fromarray(np.asarray(Image.open(donor.image).convert("RGB"))[..., ::-1].copy()).save(donor.image)
    third = dlcr(*query)
    assert third.code == 0, third.stderr
    assert donors and not (np.asarray(Image.open(variant["image"])) == before).all()
