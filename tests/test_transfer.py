"""dlcr inpaint --backend transfer: garments carried over from an image of the target clothing id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from test_inpaint import small_prompted  # noqa: F401  (a fixture)

from dlcr_cli.clothing import colour_name
from dlcr_cli.recolor import recolour
from dlcr_cli.transfer import transfer

H, W = 64, 32
FACE, UPPER, PANTS, LSHOE, RSHOE = 13, 5, 9, 18, 19


def person_labels(top: int = 10, shoes: bool = True) -> np.ndarray:
    labels = np.zeros((H, W), np.uint8)
    labels[top - 6:top, 10:22] = FACE
    labels[top:34, 6:26] = UPPER
    labels[34:56, 8:24] = PANTS
    if shoes:
        labels[56:60, 8:15], labels[56:60, 17:24] = LSHOE, RSHOE
    return labels


def plain_person(labels: np.ndarray, shirt=(128, 128, 128), pants=(40, 40, 40), shoes=(235, 235, 235)) -> np.ndarray:
    image = np.full((H, W, 3), 200, np.uint8)
    image[labels == FACE] = (225, 180, 150)
    image[labels == UPPER], image[labels == PANTS] = shirt, pants
    image[np.isin(labels, [LSHOE, RSHOE])] = shoes
    return image


def striped_person(labels: np.ndarray, period: int = 6) -> np.ndarray:
    """Red and white horizontal stripes (`period` rows) on the shirt, blue pants."""
    image = plain_person(labels, pants=(40, 90, 215))
    red = (np.arange(H) // (period // 2)) % 2 == 0
    shirt = labels == UPPER
    image[shirt & red[:, None]] = (200, 30, 35)
    image[shirt & ~red[:, None]] = (235, 235, 235)
    return image


def stripedness(image: np.ndarray, region: np.ndarray) -> float:
    """Spread of the row means of luminance inside the region (0 for a plain garment)."""
    luma = image.astype(float) @ np.array([0.299, 0.587, 0.114])
    rows = [luma[y][region[y]].mean() for y in range(H) if region[y].sum() >= 4]
    return float(np.std(rows))


# --- the pure function -----------------------------------------------------------------------


def test_a_striped_target_makes_a_striped_garment_in_the_sources_shape():
    source_labels, target_labels = person_labels(), person_labels(top=16, shoes=False)
    source, target = plain_person(source_labels), striped_person(target_labels)
    out = transfer(source, source_labels, "lip", target, target_labels, "lip", "red shirt blue pants black shoes")
    shirt, pants, shoes = source_labels == UPPER, source_labels == PANTS, np.isin(source_labels, [LSHOE, RSHOE])
    assert stripedness(source, shirt) < 1e-6 and stripedness(out, shirt) > 30
    assert colour_name(out[pants]) == "blue"
    assert colour_name(out[shoes]) == "black"  # the target has none: recoloured from the prompt
    garments = shirt | pants | shoes
    assert (out[~garments] == source[~garments]).all()
    reds = (out[shirt][:, 0] > 150) & (out[shirt][:, 1] < 90)
    whites = out[shirt].min(axis=1) > 180
    assert 0.3 < reds.mean() < 0.7 and 0.3 < whites.mean() < 0.7


def test_a_plain_target_over_a_striped_source_is_plain():
    source_labels, target_labels = person_labels(), person_labels(top=16)
    source, target = striped_person(source_labels), plain_person(target_labels, shirt=(40, 150, 60))
    out = transfer(source, source_labels, "lip", target, target_labels, "lip", "")
    shirt = source_labels == UPPER
    assert stripedness(out, shirt) < 0.2 * stripedness(source, shirt)
    assert colour_name(out[shirt]) == "green"


def test_without_a_target_image_it_is_recolour():
    labels = person_labels()
    source = plain_person(labels)
    prompt = "red shirt blue pants black shoes"
    mask = np.isin(labels, [UPPER, PANTS])
    assert (transfer(source, labels, "lip", None, None, None, prompt, mask)
            == recolour(source, labels, "lip", prompt, mask)).all()
    bare = np.zeros((H, W), np.uint8)  # a target image without a garment: the same
    assert (transfer(source, labels, "lip", source, bare, "lip", prompt) == recolour(source, labels, "lip", prompt)).all()


def test_a_dress_stands_in_for_a_missing_top_and_the_mask_is_kept():
    source_labels = person_labels()
    target_labels = person_labels(top=16, shoes=False)
    target_labels[target_labels == UPPER] = 6  # dress
    target = striped_person(person_labels(top=16, shoes=False))
    mask = np.zeros((H, W), bool)
    mask[:30] = True
    source = plain_person(source_labels)
    out = transfer(source, source_labels, "lip", target, target_labels, "lip", "", mask)
    assert (out[~mask] == source[~mask]).all()
    assert stripedness(out, (source_labels == UPPER) & mask) > 30


# --- the command -----------------------------------------------------------------------------


def write_dataset(folder: Path, people: dict[str, tuple[np.ndarray, np.ndarray]], prompts: dict[str, str]) -> Path:
    """One training record per clothing id: image, mask (every garment), LIP parsing map, prompt."""
    lines = []
    for i, (clothes, (image, labels)) in enumerate(people.items()):
        stem = folder / "train" / clothes
        stem.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(f"{stem}.png")
        Image.fromarray(labels).save(f"{stem}_parsing.png")
        mask = np.isin(labels, [UPPER, PANTS, LSHOE, RSHOE, 6]) * np.uint8(255)
        Image.fromarray(mask.astype(np.uint8)).save(f"{stem}_mask.png")
        lines.append({"image": f"{stem}.png", "mask": f"{stem}_mask.png", "parsing": f"{stem}_parsing.png",
                      "parsing_labels": "lip", "clothes": clothes, "pid": str(i), "camid": 0, "split": "train",
                      "rel": f"train/{clothes}.png", "prompt": prompts[clothes]})
    path = folder / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_the_command_carries_the_targets_stripes(dlcr, tmp_path):
    plain, striped = person_labels(), person_labels(top=16, shoes=False)
    records = write_dataset(tmp_path / "data", {"001_1": (plain_person(plain), plain),
                                                "002_1": (striped_person(striped), striped)},
                            {"001_1": "grey shirt black pants white shoes", "002_1": "red shirt blue pants"})
    run = dlcr("inpaint", records, "--out", tmp_path / "gen", "--backend", "transfer", "-k", "1")
    assert run.code == 0, run.stderr
    by_target = {r["target_clothes"]: r for r in run.records}
    out = np.asarray(Image.open(by_target["002_1"]["image"]))
    assert stripedness(out, plain == UPPER) > 30 and colour_name(out[plain == PANTS]) == "blue"
    back = np.asarray(Image.open(by_target["001_1"]["image"]))  # the striped one in plain grey
    assert stripedness(back, striped == UPPER) < 10 and colour_name(back[striped == UPPER]) == "grey"


def test_a_target_without_a_usable_garment_is_recoloured_from_its_prompt(dlcr, tmp_path):
    plain = person_labels()
    bare = np.where(plain == FACE, FACE, 0).astype(np.uint8)  # parsed, but no garment
    people = {"001_1": (plain_person(plain), plain), "002_1": (plain_person(plain, shirt=(40, 150, 60)), bare)}
    records = write_dataset(tmp_path / "data", people, {"001_1": "grey shirt", "002_1": "red shirt blue pants"})
    table = tmp_path / "prompts.json"
    table.write_text(json.dumps({"001_1": "grey shirt", "002_1": "red shirt blue pants", "003_1": "pink shirt"}))
    args = ("--prompts", table, "-k", "2")
    transfer_run = dlcr("inpaint", records, "--out", tmp_path / "t", "--backend", "transfer", *args)
    recolor_run = dlcr("inpaint", records, "--out", tmp_path / "r", "--backend", "recolor", *args)
    assert transfer_run.code == recolor_run.code == 0, transfer_run.stderr
    for t, r in zip(transfer_run.records, recolor_run.records):
        if t["source"].endswith("001_1.png") and t["target_clothes"] in ("002_1", "003_1"):
            assert (np.asarray(Image.open(t["image"])) == np.asarray(Image.open(r["image"]))).all()
    assert "clothing id 003_1 has no usable target image" in transfer_run.stderr  # no record at all


def test_bad_sources_fail_alone_and_bad_targets_give_way(dlcr, small_prompted, tmp_path):  # noqa: F811
    records = [json.loads(line) for line in small_prompted.read_text().splitlines()][:6]
    del records[0]["parsing"]
    (tmp_path / "junk.png").write_bytes(b"not a png")
    records[1]["parsing"] = str(tmp_path / "junk.png")
    text = "".join(json.dumps(r) + "\n" for r in records)
    run = dlcr("inpaint", "-", "--out", tmp_path / "gen", "--backend", "transfer", "-k", "2", input=text)
    assert run.code == 1
    assert {r["source"] for r in run.records} == {r["image"] for r in records[2:]}
    assert "no parsing map in the record" in run.stderr
    assert "junk.png" in run.stderr
    assert "has no usable target image" in run.stderr  # both ids' only images cannot be targets


def test_pasted_back_reproducible_resumable_and_in_both_formats(dlcr, small_prompted, tmp_path):  # noqa: F811
    def run(out, *args):
        return dlcr("inpaint", small_prompted, "--out", tmp_path / out, "--backend", "transfer", "-k", "3", *args)

    first = run("a", "--preview", tmp_path / "sheet.png")
    assert first.code == 0, first.stderr
    assert len(first.records) == 18 and (tmp_path / "sheet.png").is_file()
    for record in first.records:
        out, source = np.asarray(Image.open(record["image"])), np.asarray(Image.open(record["source"]))
        mask = np.asarray(Image.open(record["mask"])) > 127
        assert (out[~mask] == source[~mask]).all() and (out[mask] != source[mask]).any()
    second = run("b")
    for a, b in zip(first.records, second.records):
        assert Path(a["image"]).read_bytes() == Path(b["image"]).read_bytes()
    (tmp_path / "a" / first.records[4]["rel"]).unlink()
    again = run("a")
    assert "1 done, 17 skipped" in again.stderr
    assert Path(first.records[4]["image"]).read_bytes() == Path(second.records[4]["image"]).read_bytes()
    recolored = dlcr("inpaint", small_prompted, "--out", tmp_path / "c", "--backend", "recolor", "-k", "3")
    over = run("c")
    assert recolored.code == over.code == 0 and "18 done, 0 skipped" in over.stderr  # another fingerprint
    strip = run("s", "--format", "strip", "--preview", tmp_path / "strip.png")
    assert strip.code == 0 and (tmp_path / "strip.png").is_file()
    for a, b in zip(first.records, strip.records):
        sheet, tile = np.asarray(Image.open(b["image"])), np.asarray(Image.open(a["image"]))
        w = tile.shape[1]
        assert (sheet[:, b["variant"] * w:(b["variant"] + 1) * w] == tile).all()


def test_a_changed_target_image_paints_its_variants_again(dlcr, tmp_path):
    """The variant paints from the target's image: its mark covers the target's files, so an
    output is not reused once the target image changed (the source alone unchanged)."""
    plain, striped = person_labels(), person_labels(top=16, shoes=False)
    records = write_dataset(tmp_path / "data", {"001_1": (plain_person(plain), plain),
                                                "002_1": (striped_person(striped), striped)},
                            {"001_1": "grey shirt black pants white shoes", "002_1": "red shirt blue pants"})
    args = ("inpaint", records, "--out", tmp_path / "gen", "--backend", "transfer", "-k", "1")
    first = dlcr(*args)
    assert first.code == 0 and "2 done, 0 skipped" in first.stderr, first.stderr
    assert "0 done, 2 skipped" in dlcr(*args).stderr
    Image.fromarray(plain_person(striped, shirt=(40, 150, 60))).save(tmp_path / "data" / "train" / "002_1.png")
    again = dlcr(*args)
    # 001_1's variant (target 002_1) and 002_1's own (its source changed) are painted again
    assert again.code == 0 and "2 done, 0 skipped" in again.stderr, again.stderr
    by_target = {r["target_clothes"]: r for r in again.records}
    out = np.asarray(Image.open(by_target["002_1"]["image"]))
    assert stripedness(out, plain == UPPER) < 10  # the new, plain green target


def test_every_frame_of_a_tracklet_takes_its_outfit_from_one_target_image(tmp_path):
    """Video: variant k of a clip is one outfit, so its frames paint from one image of the
    target id (chosen per frame they would mix images, and the clip would flicker)."""
    from dlcr_cli.records import Record
    from dlcr_cli.stages.inpaint import TransferPainter, make_plan

    frames = [Record(image=f"/v/a/{i}.png", rel=f"a/{i}.png", clothes="001_1", mask="/m.png", tracklet="a")
              for i in range(12)]
    donors = [Record(image=f"/v/b/{i}.png", rel=f"b/{i}.png", clothes="002_1", parsing=f"/p/{i}.png")
              for i in range(20)]
    jobs, failed = make_plan(frames, {"001_1": "x", "002_1": "y"}, variants=1, seed=3, out=tmp_path, fmt="files")
    assert not failed and len({job.seed for job in jobs}) == 12  # the noise stays per frame
    painter = TransferPainter(donors)
    painter._load = lambda record: (record.image, None, "lip")  # which image, without reading one
    chosen = {painter.target_image("002_1", job.target_seed)[0] for job in jobs}
    assert len(chosen) == 1  # one target image for the clip
    images = make_plan([r.model_copy(update={"tracklet": None}) for r in frames], {"001_1": "x", "002_1": "y"},
                       variants=1, seed=3, out=tmp_path, fmt="files")[0]
    assert len({painter.target_image("002_1", job.target_seed)[0] for job in images}) > 1  # images draw apart
    assert all(job.target_seed == job.seed for job in images)  # and as before the change, byte for byte


def line_contrast(image: np.ndarray, region: np.ndarray, along_columns: bool) -> float:
    """How much the mean luminance jumps from one row (column) of the region to the next:
    high across stripes, near 0 on a plain garment with smooth shading."""
    luma = image.astype(float) @ np.array([0.299, 0.587, 0.114])
    if along_columns:
        luma, region = luma.T, region.T
    means = [luma[i][region[i]].mean() for i in range(len(luma)) if region[i].sum() >= 4]
    return float(np.std(np.diff(means)))


def test_on_synthetic_people_of_known_outfits_the_target_tops_pattern_is_carried(dlcr, tmp_path):
    """Realistic synth (outfits.json knows every garment's texture): a variant painted for a
    target whose top has horizontal stripes has a top striped across its rows, vertical stripes
    across its columns, a plain target a plain top, whatever the source wore. Recolour, which
    keeps the source's pattern, does not do this (the reason transfer exists)."""
    from dlcr_cli.synth import synthesize

    synthesize(tmp_path / "data", ids=8, cameras=3, per=1, seed=2, style="realistic")
    outfits = json.loads((tmp_path / "data" / "outfits.json").read_text())

    def top(clothes: str, garment: str = "upper") -> str | None:
        pid, outfit = clothes.split("_")
        worn = outfits[pid][outfit]["garments"][garment]
        return worn and worn["texture"]["kind"]

    def contrasts(backend: str) -> dict[str, list[tuple[float, float]]]:
        run = dlcr("expand", tmp_path / "data", "--out", tmp_path / backend, "--weight-free", "--parsing-dir",
                   tmp_path / "data" / "parsing", "-k", "3", "--set", f"inpaint.backend={backend}")
        assert run.code == 0, run.stderr
        by_texture: dict[str, list[tuple[float, float]]] = {}
        for r in run.records:
            region = np.asarray(Image.open(r["parsing"])) == UPPER  # the source's top, where the variant's is
            if region.sum() < 150 or top(r["target_clothes"], "coat"):  # a target's open coat hides its top
                continue
            image = np.asarray(Image.open(r["image"]).convert("RGB"))
            by_texture.setdefault(top(r["target_clothes"]), []).append(
                (line_contrast(image, region, False), line_contrast(image, region, True)))
        return by_texture

    got = contrasts("transfer")
    assert len(got["h-stripes"]) >= 5 and len(got["v-stripes"]) >= 5 and len(got["plain"]) >= 5
    assert all(rows > 15 and rows > 2 * columns for rows, columns in got["h-stripes"])
    assert all(columns > 15 and columns > 2 * rows for rows, columns in got["v-stripes"])
    assert all(rows < 8 and columns < 8 for rows, columns in got["plain"])
    recoloured = contrasts("recolor")
    assert np.median([rows for rows, _ in recoloured["h-stripes"]]) < 8
