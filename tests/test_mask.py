"""`dlcr mask`: exact masks from known label maps, the SegFormer backend through the real
loading code, resumability, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import out_of_memory_above, save_labels, save_rgb
from PIL import Image

from dlcr_cli.labels import ATR, LIP

H, W = 40, 20


def lip_person() -> np.ndarray:
    """A label map with a hat, hair, face, upper clothes, arms, pants, both legs and shoes (LIP ids)."""
    m = np.zeros((H, W), np.uint8)
    m[0:2, 6:14] = LIP.index("hat")
    m[2:6, 6:14] = LIP.index("hair")
    m[6:10, 7:13] = LIP.index("face")
    m[10:22, 5:15] = LIP.index("upper-clothes")
    m[10:20, 2:5] = LIP.index("left-arm")
    m[10:20, 15:18] = LIP.index("right-arm")
    m[22:32, 6:14] = LIP.index("pants")
    m[32:36, 6:9] = LIP.index("left-leg")
    m[32:36, 11:14] = LIP.index("right-leg")
    m[36:39, 6:9] = LIP.index("left-shoe")
    m[36:39, 11:14] = LIP.index("right-shoe")
    return m


CLOTHING_LIP = [LIP.index(n) for n in ("upper-clothes", "pants", "left-shoe", "right-shoe")]


@pytest.mark.parametrize("labels", ["lip", "atr"])
def test_the_default_policy_keeps_identity_and_background_and_repaints_every_other_label(labels):
    """Every label of the set, one band each: hat, hair, face, both arms, both legs and the
    background are kept (0), everything else is repainted (255)."""
    from dlcr_cli.labels import DEFAULT_KEEP, LABEL_SETS
    from dlcr_cli.stages.mask import clothing_mask

    names = LABEL_SETS[labels]
    label_map = np.repeat(np.arange(len(names), dtype=np.uint8), 2)[:, None].repeat(4, axis=1)
    mask = clothing_mask(label_map, labels, list(DEFAULT_KEEP))
    kept = {names[i] for i in range(len(names)) if (mask[label_map == i] == 0).all()}
    assert kept == {"background", "hat", "hair", "face", "left-arm", "right-arm", "left-leg", "right-leg"}
    assert set(np.unique(mask)) == {0, 255}


@pytest.fixture
def tree(tmp_path) -> tuple[Path, Path]:
    """An LTCC-layout dataset of three images and their LIP label maps."""
    data, parsing = tmp_path / "data", tmp_path / "parsing"
    for i, name in enumerate(["train/001_1_c1_000.png", "train/001_2_c2_000.png", "query/002_1_c1_000.png"]):
        save_rgb(data / name, W, H, seed=i)
        save_labels(parsing / name, lip_person())
    (data / "test").mkdir()
    return data, parsing


def mask_args(data: Path, parsing: Path, out: Path, *extra: str) -> list:
    return ["mask", data, "--backend", "parsing", "--parsing-dir", parsing, "--out", out, *extra]


def test_parsing_backend_writes_exact_masks(dlcr, tree, tmp_path):
    data, parsing = tree
    run = dlcr(*mask_args(data, parsing, tmp_path / "out"))
    assert run.code == 0, run.stderr
    records = run.records
    assert [r["rel"] for r in records] == ["train/001_1_c1_000.png", "train/001_2_c2_000.png", "query/002_1_c1_000.png"]
    expected = np.where(np.isin(lip_person(), CLOTHING_LIP), 255, 0)
    for r in records:
        assert r["parsing_labels"] == "lip"
        mask = np.asarray(Image.open(r["mask"]))
        assert mask.dtype == np.uint8 and mask.shape == (H, W)
        np.testing.assert_array_equal(mask, expected)
        np.testing.assert_array_equal(np.asarray(Image.open(r["parsing"])), lip_person())
        assert Path(r["mask"]) == tmp_path / "out" / "masks" / r["rel"]
        assert Path(r["parsing"]) == tmp_path / "out" / "parsing" / r["rel"]
        assert (r["pid"], r["dataset"]) == (1 if r["split"] == "train" else 2, "ltcc")


def test_atr_maps_and_keep_policy(dlcr, tmp_path):
    atr = np.zeros((H, W), np.uint8)
    atr[5:10] = ATR.index("face")
    atr[10:20] = ATR.index("upper-clothes")
    atr[20:30] = ATR.index("belt")
    atr[30:40] = ATR.index("bag")
    save_rgb(tmp_path / "imgs" / "a.jpg", W, H)
    save_labels(tmp_path / "maps" / "a.png", atr)
    args = ["mask", tmp_path / "imgs", "--backend", "parsing", "--parsing-dir", tmp_path / "maps", "--labels", "atr"]
    run = dlcr(*args, "--out", tmp_path / "o1")
    assert run.code == 0, run.stderr
    mask = np.asarray(Image.open(run.records[0]["mask"]))
    assert (mask[:10] == 0).all() and (mask[10:] == 255).all()
    # a custom policy keeps the bag too
    run = dlcr(*args, "--keep", "background,face,bag", "--out", tmp_path / "o2")
    mask = np.asarray(Image.open(run.records[0]["mask"]))
    assert (mask[:10] == 0).all() and (mask[10:30] == 255).all() and (mask[30:] == 0).all()


def test_dilation_grows_the_mask(dlcr, tree, tmp_path):
    data, parsing = tree
    plain = dlcr(*mask_args(data, parsing, tmp_path / "a")).records[0]
    grown = dlcr(*mask_args(data, parsing, tmp_path / "b", "--dilation", "2")).records[0]
    a, b = (np.asarray(Image.open(r["mask"])) > 0 for r in (plain, grown))
    assert b[a].all() and b.sum() > a.sum()
    assert b[8, 10]  # face pixel two rows above the shirt
    assert not b[6, 10]  # three rows above stays kept


def test_outputs_are_reused_only_with_their_mark_and_overwritten_on_request(dlcr, tree, tmp_path):
    from dlcr_cli.fingerprint import MARK

    data, parsing = tree
    out = tmp_path / "out"
    first = dlcr(*mask_args(data, parsing, out))
    again = dlcr(*mask_args(data, parsing, out))
    assert again.code == 0 and again.records == first.records and "3 skipped" in again.stderr
    mask_file = Path(first.records[0]["mask"])
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(mask_file)  # someone else's file: no mark
    third = dlcr(*mask_args(data, parsing, out))
    assert "1 done, 2 skipped" in third.stderr
    with Image.open(mask_file) as image:
        assert np.asarray(image).max() == 255 and MARK in image.text
    dlcr(*mask_args(data, parsing, out, "--overwrite"))
    assert "3 done" in dlcr(*mask_args(data, parsing, out, "--overwrite")).stderr
    assert not list(out.rglob("*.tmp"))


def test_masks_made_another_way_are_made_again(dlcr, tree, tmp_path):
    """Another keep set, dilation or label map: the folder's masks are redone (each output's
    mark holds the policy and its inputs' content), never kept because they exist."""
    data, parsing = tree
    out = tmp_path / "out"
    first = dlcr(*mask_args(data, parsing, out))
    label_maps = [Path(r["parsing"]).read_bytes() for r in first.records]
    wider = dlcr(*mask_args(data, parsing, out, "--dilation", "2"))
    assert "3 done" in wider.stderr
    # the masks are drawn again from the label maps, which stay as they were (what reads them is current)
    assert [Path(r["parsing"]).read_bytes() for r in wider.records] == label_maps
    mask_file = Path(first.records[0]["mask"])
    dilated = np.asarray(Image.open(mask_file)).copy()
    kept = dlcr(*mask_args(data, parsing, out, "--dilation", "2", "--keep", "face"))
    assert "3 done" in kept.stderr and not np.array_equal(np.asarray(Image.open(mask_file)), dilated)
    same = dlcr(*mask_args(data, parsing, out, "--dilation", "2", "--keep", "face", "--workers", "1"))
    assert "3 skipped" in same.stderr  # workers change how fast, not what
    source = sorted(parsing.rglob("*.png"))[0]
    label_map = np.asarray(Image.open(source)).copy()
    label_map[0, 0] = (label_map[0, 0] + 1) % 5
    Image.fromarray(label_map).save(source)
    changed = dlcr(*mask_args(data, parsing, out, "--dilation", "2", "--keep", "face"))
    assert "1 done, 2 skipped" in changed.stderr


def test_unknown_fields_pass_through_and_order_is_kept(dlcr, tree, tmp_path):
    data, parsing = tree
    lines = [json.dumps({"image": str(p), "rel": p.name, "note": {"k": [1, None]}, "n": i})
             for i, p in enumerate(sorted(data.rglob("*.png")))]
    run = dlcr("mask", "-", "--backend", "parsing", "--parsing-dir", parsing / "train", "--out", tmp_path / "o",
               "--labels", "lip", input="\n".join(lines) + "\n")
    # query/002 has no map under parsing/train: an item error, the others are done
    assert run.code == 1
    assert "002_1_c1_000.png" in run.stderr and "label map not found" in run.stderr
    assert [r["n"] for r in run.records] == [1, 2]
    assert all(r["note"] == {"k": [1, None]} for r in run.records)


@pytest.mark.parametrize("damage, message", [
    ("missing", "image not found"),
    ("corrupt", "cannot read image"),
    ("truncated", "cannot read image"),
    ("wrong_size", "label map is 10x40 but the image is 20x40"),
    ("rgb_map", "expected one channel"),
    ("bad_label", "label 23, outside LIP"),
])
def test_bad_items_are_logged_and_the_rest_done(dlcr, tree, tmp_path, damage, message):
    data, parsing = tree
    victim = "train/001_2_c2_000.png"
    if damage == "missing":
        (data / victim).unlink()
        records = "\n".join(json.dumps({"image": str(data / n), "rel": n}) for n in
                            ["train/001_1_c1_000.png", victim, "query/002_1_c1_000.png"])
        source, stdin = "-", records
    else:
        source, stdin = str(data), None
        if damage == "corrupt":
            (data / victim).write_bytes(b"\x89PNG\r\n\x1a\n not really")
        elif damage == "truncated":
            (data / victim).write_bytes((data / victim).read_bytes()[:200])
        elif damage == "wrong_size":
            save_labels(parsing / victim, lip_person()[:, :10])
        elif damage == "rgb_map":
            Image.new("RGB", (W, H)).save(parsing / victim)
        elif damage == "bad_label":
            bad = lip_person()
            bad[0, 0] = 23
            save_labels(parsing / victim, bad)
    run = dlcr("mask", source, "--backend", "parsing", "--parsing-dir", parsing, "--out", tmp_path / "o", input=stdin)
    assert run.code == 1
    assert victim in run.stderr and message in run.stderr
    assert [r["rel"] for r in run.records] == ["train/001_1_c1_000.png", "query/002_1_c1_000.png"]
    assert "1 of 3 items failed" in run.stderr
    assert not (tmp_path / "o" / "masks" / victim).exists()


def test_fail_fast_stops_at_the_first_failure(dlcr, tree, tmp_path):
    data, parsing = tree
    (parsing / "train/001_1_c1_000.png").unlink()
    run = dlcr(*mask_args(data, parsing, tmp_path / "o", "--fail-fast"))
    assert run.code == 1 and run.records == []
    assert "--fail-fast" in run.stderr


def test_ambiguous_label_maps_ask_for_labels(dlcr, tmp_path):
    save_rgb(tmp_path / "imgs" / "a.png", W, H)
    save_labels(tmp_path / "maps" / "a.png", np.full((H, W), 5, np.uint8))
    run = dlcr("mask", tmp_path / "imgs", "--backend", "parsing", "--parsing-dir", tmp_path / "maps", "--out", tmp_path / "o")
    assert run.code == 2 and "--labels lip" in run.stderr


def test_parsing_backend_needs_its_folder(dlcr, tree, tmp_path):
    data, _ = tree
    run = dlcr("mask", data, "--backend", "parsing", "--out", tmp_path / "o")
    assert run.code == 2 and "--parsing-dir" in run.stderr
    run = dlcr("mask", data, "--backend", "parsing", "--parsing-dir", tmp_path / "nope", "--out", tmp_path / "o")
    assert run.code == 2 and "not found" in run.stderr


def test_unknown_keep_label_is_a_usage_error(dlcr, tree, tmp_path):
    data, parsing = tree
    run = dlcr(*mask_args(data, parsing, tmp_path / "o", "--keep", "hat,elbow"))
    assert run.code == 2 and "elbow" in run.stderr


# --- the SegFormer backend, on a tiny random model through the real loading code -------------


def test_segformer_backend_loads_a_saved_model(dlcr, tree, tiny_segformer, tmp_path):
    data, _ = tree
    save_rgb(data / "test" / "002_1_c2_001.png", 33, 71, seed=9)  # another size in the batch
    run = dlcr("mask", data, "--model", tiny_segformer, "--batch-size", "2", "--out", tmp_path / "o")
    assert run.code == 0, run.stderr
    assert len(run.records) == 4
    for r in run.records:
        size = Image.open(r["image"]).size
        mask, labels = Image.open(r["mask"]), np.asarray(Image.open(r["parsing"]))
        assert mask.size == size and mask.mode == "L"
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert labels.shape == size[::-1] and labels.max() < len(ATR)
        assert r["parsing_labels"] == "atr"


def test_segformer_batching_equals_one_by_one(dlcr, tree, tiny_segformer, tmp_path):
    data, _ = tree
    outs = {}
    for batch in ("1", "3"):
        run = dlcr("mask", data, "--model", tiny_segformer, "--batch-size", batch, "--out", tmp_path / batch)
        assert run.code == 0, run.stderr
        outs[batch] = [np.asarray(Image.open(r["parsing"])) for r in run.records]
    for a, b in zip(outs["1"], outs["3"]):
        assert (a == b).mean() > 0.999  # float reductions may differ in the last bit


def test_unavailable_model_is_one_line_exit_69(dlcr, tree, tmp_path):
    data, _ = tree
    for model in (str(tmp_path / "no-such-model"), "nobody/no-such-model"):
        run = dlcr("mask", data, "--model", model, "--out", tmp_path / "o")
        assert run.code == 69
        assert model in run.stderr and "mask.model" in run.stderr
        assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_letterbox_keeps_proportions_and_maps_back_exactly():
    """A fake model that labels every non-padding pixel 1: the map must be 1 everywhere, so
    the crop of the letterboxed logits lines up with the image."""
    import torch
    import torch.nn.functional as F

    from dlcr_cli.records import Record
    from dlcr_cli.runtime import OomSplitter
    from dlcr_cli.stages.mask import Item, SegformerParser, fit

    img = Image.new("RGB", (40, 100), (250, 250, 250))
    pixels, box = fit(img, (64, 64), letterbox=True)
    assert box == (0, 19, 64, 26) and pixels.shape == (64, 64, 3)
    assert tuple(pixels[0, 0]) == (124, 116, 104) and tuple(pixels[32, 32]) == (250, 250, 250)

    class Fake(torch.nn.Module):
        def forward(self, pixel_values):
            content = (pixel_values.abs().sum(1, keepdim=True) > 1e-3).float()
            small = F.avg_pool2d(content, 4)
            return type("Out", (), {"logits": torch.cat([1 - small, small], 1) * 10})()

    parser = SegformerParser.__new__(SegformerParser)
    parser.device, parser.dtype, parser.input_size, parser.letterbox = "cpu", torch.float32, (64, 64), True
    parser.model, parser.batch_size, parser.batches = Fake(), 2, OomSplitter("mask")
    items = []
    for size in ((40, 100), (30, 31)):
        item = Item(Record(image="x"), Path("m"), Path("p"), size=size)
        item.payload = fit(Image.new("RGB", size, (250, 250, 250)), (64, 64), True)
        items.append(item)
    for item, label_map in zip(items, parser.parse(items)):
        assert label_map.shape == item.size[::-1] and (label_map == 1).all()


def test_an_out_of_memory_split_is_kept_for_later_batches(tree, tiny_segformer):
    import torch

    from dlcr_cli.records import Record
    from dlcr_cli.stages.mask import Item, SegformerParser

    data, _ = tree
    parser = SegformerParser(str(tiny_segformer), device=torch.device("cpu"), dtype=torch.float32, batch_size=8,
                             input_size=(64, 32))
    items = [Item(Record(image=str(path)), Path(), Path()) for path in sorted(data.rglob("*.png"))]
    for item in items:
        parser.read(item)
    whole = parser.parse(items)
    calls: list[int] = []
    parser._parse = out_of_memory_above(1, parser._parse, calls)
    split = parser.parse(items)
    assert calls[0] == 3 and all((a == b).mean() > 0.999 for a, b in zip(whole, split))
    calls.clear()
    split = parser.parse(items)
    assert calls == [1, 1, 1]  # one by one from the start: no second out-of-memory
    assert all((a == b).mean() > 0.999 for a, b in zip(whole, split))


def test_a_current_label_map_whose_label_set_is_unknown_is_an_item_error(dlcr, tree, tmp_path):
    """A mask to redraw from a label map that carries its mark but no known label set (edited
    by hand): that item fails with its path, the others are done."""
    from dlcr_cli.fingerprint import MARK, png_info
    from dlcr_cli.io import LABELS_KEY

    data, parsing = tree
    out = tmp_path / "out"
    first = dlcr(*mask_args(data, parsing, out))
    label_map = Path(first.records[0]["parsing"])
    with Image.open(label_map) as image:
        mark, pixels = image.text[MARK], image.copy()
    pixels.save(label_map, pnginfo=png_info(mark, **{LABELS_KEY: "neither"}))
    run = dlcr(*mask_args(data, parsing, out, "--dilation", "1"))
    assert run.code == 1 and "cannot tell the label set" in run.stderr and "2 done" in run.stderr, run.stderr
