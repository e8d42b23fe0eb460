"""The procedural CC-ReID dataset: layout, determinism, exact label maps, and the protocol
properties the evaluation relies on (disjoint ids, cross-camera same/different-clothes matches)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlcr_cli.errors import UsageError
from dlcr_cli.synth import LABEL, PALETTE, SPLITS, SynthSummary, synthesize

NAME = re.compile(r"^\d{3}_\d+_c\d+_\d{3}\.png$")
SMALL = {"ids": 6, "cameras": 2, "per": 1}


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> tuple[Path, SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, synthesize(out)


def images(root: Path, split: str) -> list[Path]:
    return sorted((root / split).glob("*.png"))


def parse(path: Path) -> tuple[int, int, int, int]:
    pid, clothes, cam, frame = path.stem.split("_")
    return int(pid), int(clothes), int(cam[1:]), int(frame)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_default_is_small_and_fast(default):
    out, summary = default
    assert 200 <= summary.images <= 1000
    assert summary.ids == 24 and summary.train_ids + summary.test_ids == 24
    assert summary.counts == {s: len(images(out, s)) for s in SPLITS}
    assert all(summary.counts[s] > 0 for s in SPLITS)
    assert str(out) in str(summary) and summary.as_dict()["images"] == summary.images
    assert (out / "README.txt").read_text().strip()


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path):
    first, second, other = (tmp_path / n for n in ("a", "b", "c"))
    synthesize(first, seed=3, **SMALL)
    synthesize(second, seed=3, **SMALL)
    synthesize(other, seed=4, **SMALL)
    assert tree(first) == tree(second)
    a, c = tree(first), tree(other)
    differing = [k for k in a.keys() & c.keys() if k.endswith(".png") and a[k] != c[k]]
    assert differing and (first / "outfits.json").read_text() != (other / "outfits.json").read_text()


def test_layout_and_names(default):
    out, _ = default
    for split in SPLITS:
        names = [p.name for p in (out / split).iterdir()]
        assert names and all(NAME.match(n) for n in names), names[:5]
    assert (out / "outfits.json").is_file()


def test_every_image_has_an_exact_label_map(default):
    out, _ = default
    for split in SPLITS:
        for path in images(out, split):
            image = Image.open(path)
            label_map = Image.open(out / "parsing" / split / path.name)
            assert image.mode == "RGB" and label_map.mode in ("P", "L")
            assert label_map.size == image.size == (64, 128)
            labels = np.array(label_map)
            assert labels.dtype == np.uint8 and labels.max() <= 19
            assert LABEL["face"] in labels and (labels == 0).mean() > 0.3  # a person on a background
    for split in SPLITS:  # and nothing else
        maps = sorted(p.name for p in (out / "parsing" / split).iterdir())
        assert maps == [p.name for p in images(out, split)]


def nearest_colour(rgb: np.ndarray) -> str:
    """The palette colour closest to `rgb` up to a brightness gain in [0.8, 1.2] (camera light)."""
    names = list(PALETTE)
    palette = np.array([PALETTE[n] for n in names], float)
    gain = np.clip(palette @ rgb / (palette**2).sum(1), 0.8, 1.2)
    return names[int(((palette * gain[:, None] - rgb) ** 2).sum(1).argmin())]


def test_garment_colours_match_outfits_json(default):
    out, _ = default
    outfits = json.loads((out / "outfits.json").read_text())
    checked = 0
    for split in SPLITS:
        for path in images(out, split)[::3]:
            pid, clothes = path.stem.split("_")[:2]
            outfit = outfits[pid][clothes]
            image = np.asarray(Image.open(path), float)
            labels = np.asarray(Image.open(out / "parsing" / split / path.name))
            shoes = [LABEL["left-shoe"], LABEL["right-shoe"]]
            regions = [(outfit["upper"], [LABEL[outfit["upper"][0]]]), (outfit["shoes"], shoes)]
            if outfit["lower"]:
                regions.append((outfit["lower"], [LABEL[outfit["lower"][0]]]))
            for (garment, colour), ids in regions:
                mask = np.isin(labels, ids)
                assert mask.sum() > 10, (path.name, garment)
                seen = nearest_colour(np.median(image[mask], axis=0))
                assert seen == colour, (path.name, garment, colour, seen)
                checked += 1
    assert checked > 300


def test_outfits_json_describes_two_to_four_outfits_per_person(default):
    out, _ = default
    outfits = json.loads((out / "outfits.json").read_text())
    assert sorted(outfits) == [f"{i:03d}" for i in range(1, 25)]
    on_disk = defaultdict(set)
    for split in SPLITS:
        for path in images(out, split):
            pid, clothes, _, _ = parse(path)
            on_disk[pid].add(clothes)
    for pid, wardrobe in outfits.items():
        assert 2 <= len(wardrobe) <= 4
        assert on_disk[int(pid)] == {int(k) for k in wardrobe}
        uppers = [o["upper"][1] for o in wardrobe.values()]
        assert len(set(uppers)) == len(uppers)  # outfits of a person really differ
        for o in wardrobe.values():
            assert o["upper"][0] in ("upper-clothes", "coat", "dress") and o["upper"][1] in PALETTE
            assert (o["lower"] is None) == (o["upper"][0] == "dress")
            if o["lower"]:
                assert o["lower"][0] in ("pants", "skirt") and o["lower"][1] in PALETTE
            assert o["shoes"][0] == "shoes" and o["shoes"][1] in PALETTE


def test_hat_is_identity_not_clothing(default):
    out, _ = default
    people = json.loads((out / "people.json").read_text())
    assert any(p["hat"] for p in people.values()) and not all(p["hat"] for p in people.values())
    for path in images(out, "train"):
        labels = np.asarray(Image.open(out / "parsing" / "train" / path.name))
        assert (LABEL["hat"] in labels) == bool(people[path.name[:3]]["hat"]), path.name


def protocol_checks(out: Path) -> None:
    train = {parse(p)[0] for p in images(out, "train")}
    query = [parse(p) for p in images(out, "query")]
    gallery = [parse(p) for p in images(out, "test")]
    assert train and query and gallery
    assert not train & ({q[0] for q in query} | {g[0] for g in gallery})
    assert {q[0] for q in query} == {g[0] for g in gallery}
    assert all(q[3] == 0 for q in query)
    for pid, clothes, cam, _ in query:
        others = [g for g in gallery if g[0] == pid and g[2] != cam]
        assert any(g[1] == clothes for g in others), ("no same-clothes match", pid, clothes, cam)
        assert any(g[1] != clothes for g in others), ("no different-clothes match", pid, clothes, cam)


def test_protocol_default(default):
    out, summary = default
    protocol_checks(out)
    # one query per test (person, outfit) by default
    outfits = json.loads((out / "outfits.json").read_text())
    test_pids = {f"{parse(p)[0]:03d}" for p in images(out, "test")}
    assert summary.counts["query"] == sum(len(outfits[pid]) for pid in test_pids)
    assert len(test_pids) == summary.test_ids == 12


@pytest.mark.parametrize(
    "options", [{"ids": 4, "cameras": 2, "per": 1}, {"ids": 5, "cameras": 6, "per": 1, "query_fraction": 1.0}]
)
def test_protocol_edge_cases(tmp_path, options):
    synthesize(tmp_path, **options)
    protocol_checks(tmp_path)


def test_options_grow_the_dataset_and_keep_earlier_people(tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    synthesize(small, ids=4, cameras=2, per=1)
    summary = synthesize(big, ids=8, cameras=3, per=2, height=160, width=80, outfits=(3, 3))
    assert summary.images == 8 * 3 * 3 * 2
    assert Image.open(next((big / "train").glob("*.png"))).size == (80, 160)
    people_small, people_big = (json.loads((d / "people.json").read_text()) for d in (small, big))
    assert people_big["001"] == people_small["001"]


def test_rerun_into_same_folder_removes_stale_images(tmp_path):
    reused, fresh = tmp_path / "reused", tmp_path / "fresh"
    synthesize(reused, ids=6, cameras=3, per=2)
    (reused / "train" / "notes.txt").write_text("not ours")
    synthesize(reused, **SMALL)
    synthesize(fresh, **SMALL)
    assert tree(reused) == tree(fresh) | {"train/notes.txt": b"not ours"}


@pytest.mark.parametrize(
    "options",
    [
        {"ids": 1}, {"ids": 1000}, {"cameras": 1}, {"outfits": (1, 3)}, {"outfits": (3, 2)}, {"outfits": (2, 3, 4)}, {"per": 0},
        {"seed": -1}, {"query_fraction": 1.5}, {"height": 10},
    ],  # fmt: skip
)
def test_bad_options_are_usage_errors(tmp_path, options):
    with pytest.raises(UsageError):
        synthesize(tmp_path / "x", **options)
    assert not (tmp_path / "x").exists()
