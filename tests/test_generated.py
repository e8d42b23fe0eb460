"""Generated training data: records, files and strip forms, matched to the training images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlcr_cli.errors import InputMissing, MalformedInput
from dlcr_cli.reid.data import load_reid_data
from dlcr_cli.reid.generated import Variant, read_generated

TRAIN = ("train/001_1_c1_000.png", "train/001_2_c2_000.png", "train/002_1_c1_000.png")
W, H = 4, 6


def save_png(path: Path, width: int, height: int = H, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((height, width, 3), value, dtype=np.uint8)
    pixels[:, :, 1] = np.arange(width, dtype=np.uint8)[None, :]  # column index: tiles are told apart
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A tiny LTCC-layout dataset with readable 4x6 images."""
    root = tmp_path / "ltcc"
    for rel in TRAIN + ("query/003_1_c1_000.png", "test/003_1_c2_000.png"):
        save_png(root / rel, W)
    return root


@pytest.fixture
def messages():
    """What dlcr logs (the CLI may have turned propagation to pytest's caplog off)."""
    found: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda rec: found.append(rec.getMessage())
    logger = logging.getLogger("dlcr")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield found
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def make_strip(out: Path, rel: str, prompts: list[str], tile_width: int = W) -> Path:
    png = (out / rel).with_suffix(".png")
    save_png(png, tile_width * len(prompts))
    png.with_suffix(".txt").write_text("".join(p + "\n" for p in prompts))
    return png


def test_files_form_orders_variants_numerically_and_counts_strangers(dataset, tmp_path, messages):
    gen = tmp_path / "gen"
    for k in (10, 2, 0):
        save_png(gen / f"train/001_1_c1_000_v{k}.png", W)
    save_png(gen / "train/002_1_c1_000_v0.png", W)
    save_png(gen / "train/999_1_c1_000_v0.png", W)  # no such training image
    save_png(gen / "train/notes.png", W)  # neither form: ignored
    data = load_reid_data(dataset)
    found = read_generated(gen, data.train)
    assert set(found) == {s.path for s in data.train}
    first, second, third = (str(dataset / rel) for rel in TRAIN)
    assert [Path(v.path).name for v in found[first]] == [f"001_1_c1_000_v{k}.png" for k in (0, 2, 10)]
    assert all(v.tile is None for v in found[first])
    assert found[second] == []
    assert [Path(v.path).name for v in found[third]] == ["002_1_c1_000_v0.png"]
    assert any("1 generated images belong to no training image" in m for m in messages)


def test_strip_form_reads_tiles_from_the_txt_and_crops(dataset, tmp_path, messages):
    gen = tmp_path / "released"
    make_strip(gen, TRAIN[0], ["red shirt", "blue jeans", "green coat"])
    make_strip(gen, TRAIN[2], ["a", "b"])
    make_strip(gen, "train/999_1_c1_000.png", ["a"])  # no such training image
    data = load_reid_data(dataset)
    found = read_generated(gen, data.train)
    variants = found[str(dataset / TRAIN[0])]
    png = str(gen / TRAIN[0])
    prompts = ["red shirt", "blue jeans", "green coat"]
    assert variants == [Variant(png, k, 3, prompt) for k, prompt in enumerate(prompts)]
    tile = np.asarray(variants[1].crop(Image.open(png)))
    assert tile.shape == (H, W, 3)
    assert tile[0, :, 1].tolist() == [4, 5, 6, 7]  # the second tile's columns
    assert len(found[str(dataset / TRAIN[2])]) == 2
    assert any("1 generated strips belong to no training image" in m for m in messages)
    assert any("generated data (strip): 2 of 3 training images have 2-3 variants" in m for m in messages)


def test_strip_under_an_extra_top_folder_is_aligned(dataset, tmp_path):
    gen = tmp_path / "released"
    make_strip(gen / "LTCC_ReID", TRAIN[0], ["a", "b"])
    found = read_generated(gen, load_reid_data(dataset).train)
    assert len(found[str(dataset / TRAIN[0])]) == 2
    only_train = tmp_path / "train-only"
    make_strip(only_train, Path(TRAIN[0]).name, ["a", "b"])  # pointed at the train split itself
    found = read_generated(only_train, load_reid_data(dataset).train)
    assert len(found[str(dataset / TRAIN[0])]) == 2


@pytest.mark.parametrize("prompts, width, complaint", [
    (["a", "b", "c"], 2 * W, r"001_1_c1_000\.png: 8 px wide, not 3 equal tiles"),
    (["a", "b"], 3 * W, r"001_1_c1_000\.png: 12 px wide, but 001_1_c1_000\.txt lists 2 variants of a 4 px"),
    ([], W, r"001_1_c1_000\.txt: empty"),
])
def test_strip_whose_txt_and_width_disagree_is_malformed(dataset, tmp_path, prompts, width, complaint):
    gen = tmp_path / "gen"
    png = save_png(gen / TRAIN[0], width)
    png.with_suffix(".txt").write_text("".join(p + "\n" for p in prompts) + "\n")
    with pytest.raises(MalformedInput, match=complaint):
        read_generated(gen, load_reid_data(dataset).train)


def test_strip_txt_not_utf8_or_png_unreadable(dataset, tmp_path):
    gen = tmp_path / "gen"
    png = make_strip(gen, TRAIN[0], ["a"])
    png.with_suffix(".txt").write_bytes(b"\xff\xfe\x00bad\n")
    with pytest.raises(MalformedInput, match=r"001_1_c1_000\.txt: not UTF-8"):
        read_generated(gen, load_reid_data(dataset).train)
    png.with_suffix(".txt").write_text("a\n")
    png.write_bytes(b"not a png")
    with pytest.raises(MalformedInput, match=r"001_1_c1_000\.png: not a readable PNG"):
        read_generated(gen, load_reid_data(dataset).train)


def test_folder_with_both_forms_or_none(dataset, tmp_path):
    gen = tmp_path / "gen"
    make_strip(gen, TRAIN[0], ["a"])
    save_png(gen / "train/002_1_c1_000_v0.png", W)
    train = load_reid_data(dataset).train
    with pytest.raises(MalformedInput, match="both strips"):
        read_generated(gen, train)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputMissing, match="no generated images"):
        read_generated(tmp_path / "empty", train)
    with pytest.raises(InputMissing, match="not found"):
        read_generated(tmp_path / "missing", train)


def test_records_form_matches_by_source_and_orders_by_variant(dataset, tmp_path, messages):
    first = str(dataset / TRAIN[0])
    rows = [
        {"image": "g/a_v1.png", "source": first, "variant": 1, "prompt": "p1"},
        {"image": "g/a_v0.png", "source": first, "variant": 0, "prompt": "p0"},
        {"image": "g/x_v0.png", "source": str(tmp_path / "elsewhere.png"), "variant": 0},
    ]
    path = tmp_path / "gen.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = read_generated(path, load_reid_data(dataset).train)
    assert found[first] == [Variant(str(tmp_path / "g/a_v0.png"), prompt="p0"),
                            Variant(str(tmp_path / "g/a_v1.png"), prompt="p1")]
    assert any("1 generated records belong to no training image" in m for m in messages)
    path.write_text(json.dumps({"image": "g/a_v0.png"}) + "\n")
    with pytest.raises(MalformedInput, match="no source field"):
        read_generated(path, load_reid_data(dataset).train)


# --- round trip with what dlcr inpaint writes ------------------------------------------------


@pytest.fixture
def inpainted(dlcr, synth_prompted, tmp_path):
    """dlcr inpaint (recolor) of four training images of the synthetic data, in both formats:
    {format: (output folder, records JSONL)}."""
    rows = [json.loads(line) for line in synth_prompted.read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    prompts = {r["clothes"]: r["prompt"] for r in train}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    sources = tmp_path / "sources.jsonl"
    sources.write_text("".join(json.dumps(r) + "\n" for r in train[:4]))
    out = {}
    for fmt in ("files", "strip"):
        run = dlcr("inpaint", sources, "--out", tmp_path / fmt, "--backend", "recolor", "-k", "3",
                   "--prompts", tmp_path / "prompts.json", "--format", fmt)
        assert run.code == 0, run.stderr
        records = tmp_path / f"{fmt}.jsonl"
        records.write_text(run.stdout)
        out[fmt] = (tmp_path / fmt, records)
    return out


def test_round_trip_with_dlcr_inpaint_in_every_form(inpainted, synth_data):
    data = load_reid_data(synth_data)
    got = {name: read_generated(source, data.train) for name, source in (
        ("files", inpainted["files"][0]), ("files records", inpainted["files"][1]),
        ("strip", inpainted["strip"][0]), ("strip records", inpainted["strip"][1]))}
    with_variants = [path for path, variants in got["strip"].items() if variants]
    assert len(with_variants) == 4
    for path in with_variants:
        files, strip = got["files"][path], got["strip"][path]
        assert [v.path for v in got["files records"][path]] == [v.path for v in files]
        tiles = [(v.path, v.tile, v.tiles) for v in strip]
        assert [(v.path, v.tile, v.tiles) for v in got["strip records"][path]] == tiles
        assert [v.tile for v in strip] == [0, 1, 2] and {v.tiles for v in strip} == {3}
        assert [v.prompt for v in got["strip records"][path]] == [v.prompt for v in strip]
        for file_variant, tile in zip(files, strip):
            from_file = np.asarray(Image.open(file_variant.path))
            assert (np.asarray(tile.crop(Image.open(tile.path).convert("RGB"))) == from_file).all()
    assert sum(bool(v) for v in got["files"].values()) == 4
