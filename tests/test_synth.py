"""The procedural CC-ReID dataset: layout, determinism, exact label maps, the protocol
properties the evaluation relies on (disjoint ids, cross-camera same/different-clothes matches)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlcr_cli import synth as synth_module
from dlcr_cli.errors import UsageError
from dlcr_cli.synth import (
    LABEL,
    PALETTE,
    PLAIN,
    SPLITS,
    Garment,
    RealOutfit,
    SynthSummary,
    Texture,
    synthesize,
)

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


# ---------------------------------------------------------------- style="realistic"

TINY = {"ids": 4, "cameras": 2, "per": 1, "seed": 5}
# Decoded pixels + json/README of synthesize(ids=4, cameras=2, per=1, seed=5) before the
# realistic style existed: the flat (default) output must never change.
FLAT_DIGEST = "4bc2fd41866c24a1fd15a79ce64e201e9ab9830e73bd7986feebb513fce9338f"


def pixel_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(np.asarray(Image.open(p)).tobytes() if p.suffix == ".png" else p.read_bytes())
    return h.hexdigest()


def test_flat_style_is_the_default_and_unchanged(tmp_path):
    default, flat = tmp_path / "default", tmp_path / "flat"
    synthesize(default, **TINY)
    synthesize(flat, style="flat", **TINY)
    assert tree(default) == tree(flat)
    assert pixel_digest(default) == FLAT_DIGEST
    assert not (default / "cameras.json").exists()


@pytest.fixture(scope="module")
def realistic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real") / "data"
    synthesize(out, ids=8, cameras=3, per=1, seed=2, style="realistic")
    return out


def test_realistic_is_deterministic_and_not_flat(tmp_path, realistic):
    again, flat = tmp_path / "again", tmp_path / "flat"
    synthesize(again, ids=8, cameras=3, per=1, seed=2, style="realistic")
    assert tree(again) == tree(realistic)
    synthesize(flat, ids=8, cameras=3, per=1, seed=2)
    a, f = tree(realistic), tree(flat)
    # identity is the same person in both styles, the clothes are not
    assert a["people.json"] == f["people.json"]
    assert a["outfits.json"] != f["outfits.json"]
    assert "realistic" in (realistic / "README.txt").read_text()


def test_realistic_outfits_json(realistic):
    outfits = json.loads((realistic / "outfits.json").read_text())
    kinds, coats, rgbs = set(), 0, []
    for wardrobe in outfits.values():
        assert 2 <= len(wardrobe) <= 4
        for o in wardrobe.values():
            assert o["upper"][0] in ("upper-clothes", "dress") and o["upper"][1] in PALETTE
            assert (o["lower"] is None) == (o["upper"][0] == "dress")
            assert (o["coat"] is None) == (o["garments"]["coat"] is None)
            coats += o["coat"] is not None
            for g in o["garments"].values():
                if g is None:
                    continue
                assert g["colour"] in PALETTE and len(g["rgb"]) == 3
                assert g["texture"]["kind"] in synth_module.TEXTURES
                kinds.add(g["texture"]["kind"])
                if g["texture"]["kind"] != "plain":
                    assert {"rgb", "colour", "scale", "phase", "duty", "seed"} <= set(g["texture"])
                rgbs.append(tuple(g["rgb"]))
            assert o["pattern"] == o["garments"]["upper"]["texture"]["kind"]
    assert coats and len(kinds) >= 4
    # colours are not restricted to the named palette: most are far from every named colour
    palette = np.array(list(PALETTE.values()), float)
    distance = np.abs(np.array(rgbs, float)[:, None] - palette[None]).sum(-1).min(1)
    assert len(set(rgbs)) > len(PALETTE) and (distance > 40).mean() > 0.4
    cams = json.loads((realistic / "cameras.json").read_text())
    gains = [tuple(c["white_balance"]) for c in cams.values()]
    assert len(gains) == 3 and len(set(gains)) == 3


def test_realistic_label_maps_are_exact(realistic):
    outfits = json.loads((realistic / "outfits.json").read_text())
    with_coat = without_coat = 0
    for split in SPLITS:
        for path in images(realistic, split):
            pid, clothes = path.stem.split("_")[:2]
            o = outfits[pid][clothes]
            labels = np.asarray(Image.open(realistic / "parsing" / split / path.name))
            present = set(np.unique(labels).tolist())
            assert LABEL[o["upper"][0]] in present and LABEL["face"] in present
            if o["coat"]:
                assert {LABEL["coat"], LABEL["upper-clothes"]} <= present  # the top between open fronts
                with_coat += 1
            else:
                assert LABEL["coat"] not in present
                without_coat += 1
            if o["lower"]:
                assert LABEL[o["lower"][0]] in present
    assert with_coat and without_coat
    # the saved maps are what the renderer drew
    person, (outfit, *_) = synth_module.make_person(2, 1), synth_module.make_real_outfits(2, 1, 2, 4)
    camera = synth_module.make_camera(2, 1, 128, 64)
    rng = synth_module._rng(2, synth_module._FRAME, 1, 1, 1, 0)
    _, labels = synth_module.render(person, outfit, camera, rng, 128, 64)
    split = next(s for s in SPLITS if (realistic / "parsing" / s / "001_1_c1_000.png").exists())
    assert (labels == np.asarray(Image.open(realistic / "parsing" / split / "001_1_c1_000.png"))).all()


def quiet_camera(seed: int = 0, cam: int = 1, white=None):
    camera = synth_module.make_camera(seed, cam, 128, 64)
    return replace(camera, noise=0.0, white=white)


def frame(outfit, camera, pid: int = 1):
    person = synth_module.make_person(0, pid)
    return synth_module.render(person, outfit, camera, np.random.default_rng(7), 128, 64)


def outfit_with(top: Texture, lower: Texture = PLAIN, coat: Texture | None = None) -> RealOutfit:
    return RealOutfit(
        top=Garment("upper-clothes", (200, 60, 50), top), lower=Garment("pants", (60, 80, 160), lower),
        coat=Garment("coat", (90, 90, 60), coat) if coat else None, shoes=Garment("left-shoe", (20, 20, 20)),
        sleeves="long",
    )  # fmt: skip


def stripes(kind: str) -> Texture:
    return Texture(kind, rgb=(240, 240, 240), scale=0.05, phase=(0.2, 0.3), duty=0.4, seed=1)


def test_textures_stay_inside_their_garment():
    camera = quiet_camera()
    _, plain_labels = frame(outfit_with(PLAIN), camera)
    for kind in synth_module.TEXTURES[1:]:
        outfit = outfit_with(stripes(kind), stripes(kind), coat=stripes(kind))
        image, labels = frame(outfit, camera)
        assert (labels == frame(outfit_with(PLAIN, coat=PLAIN), camera)[1]).all()
        changed = (image != frame(outfit_with(PLAIN, coat=PLAIN), camera)[0]).any(-1)
        garments = np.isin(labels, [LABEL["upper-clothes"], LABEL["pants"], LABEL["coat"]])
        assert changed.any() and not (changed & ~garments).any(), kind
    assert (plain_labels != LABEL["coat"]).all()


def row_variance(image: np.ndarray, mask: np.ndarray) -> float:
    luminance = image.astype(float) @ [0.299, 0.587, 0.114]
    rows = [luminance[y][mask[y]].mean() for y in range(mask.shape[0]) if mask[y].sum() >= 4]
    return float(np.var(rows))


def column_variance(image: np.ndarray, mask: np.ndarray) -> float:
    return row_variance(image.transpose(1, 0, 2), mask.T)


def test_a_striped_top_is_measurably_striped():
    camera = quiet_camera()
    measured = {}
    for kind in ("plain", "h-stripes", "v-stripes"):
        image, labels = frame(outfit_with(PLAIN if kind == "plain" else stripes(kind)), camera)
        top = labels == LABEL["upper-clothes"]
        measured[kind] = (row_variance(image, top), column_variance(image, top))
    assert measured["h-stripes"][0] > 20 * max(measured["plain"][0], 1.0)
    assert measured["h-stripes"][0] > 5 * measured["v-stripes"][0]
    assert measured["v-stripes"][1] > 3 * measured["plain"][1]


def test_an_outfit_looks_the_same_in_its_images(realistic):
    """Texture parameters are per outfit: two cameras' images of one outfit have the same
    share of pattern pixels in the top, up to pose and framing."""
    outfits = json.loads((realistic / "outfits.json").read_text())
    pid, k = next((p, k) for p, w in outfits.items() for k, o in w.items()
                  if o["pattern"] != "plain" and not o["coat"])  # fmt: skip
    texture = outfits[pid][k]["garments"]["upper"]["texture"]
    shares = []
    for path in sorted(realistic.glob(f"*/{pid}_{k}_c*_000.png")):
        labels = np.asarray(Image.open(realistic / "parsing" / path.parent.name / path.name))
        image = np.asarray(Image.open(path), float)
        top = image[labels == LABEL[outfits[pid][k]["upper"][0]]]
        rgb = np.asarray(outfits[pid][k]["garments"]["upper"]["rgb"], float)
        near_pattern = np.abs(top - texture["rgb"]).sum(1) < np.abs(top - rgb).sum(1)
        shares.append(near_pattern.mean())
    assert len(shares) == 3 and max(shares) - min(shares) < 0.25, shares


def test_white_balance_differs_per_camera_and_scales_the_image():
    gains = [synth_module.white_balance(0, c) for c in (1, 2, 3)]
    assert all(np.abs(a - b).max() > 0.01 for i, a in enumerate(gains) for b in gains[i + 1:])
    outfit = outfit_with(PLAIN)
    neutral, _ = frame(outfit, quiet_camera())
    balanced, _ = frame(outfit, quiet_camera(white=gains[0]))
    ok = (neutral > 20) & (neutral < 200)  # away from clipping
    ratio = balanced.astype(float)[ok].reshape(-1) / neutral[ok].reshape(-1)
    channel = np.broadcast_to(np.arange(3), neutral.shape)[ok]
    for c in range(3):
        assert abs(np.median(ratio[channel == c]) - gains[0][c]) < 0.02


def test_style_option_on_the_command_line(tmp_path, dlcr):
    run = dlcr("synth", tmp_path / "d", "--ids", "4", "--cameras", "2", "--per", "1", "--style", "realistic", "--json")
    assert run.code == 0, run.stderr
    assert (tmp_path / "d" / "cameras.json").is_file() and json.loads(run.stdout)["images"] > 0
    assert dlcr("synth", tmp_path / "e", "--style", "cartoon").code != 0
    with pytest.raises(UsageError):
        synthesize(tmp_path / "x", style="cartoon")
