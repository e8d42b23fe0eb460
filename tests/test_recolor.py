"""Weight-free recolouring (`inpaint --backend recolor`): prompt colours per slot, every
vocabulary colour reached from light and dark garments, shading kept, identity kept."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from PIL import Image

from dlcr_cli import clothing
from dlcr_cli.clothing import COLOURS, colour_name, describe_regions
from dlcr_cli.labels import LABEL_SETS, LIP
from dlcr_cli.recolor import phrase_rgb, recolour, target_colours
from dlcr_cli.synth import synthesize

LUMA = np.array([0.299, 0.587, 0.114])
SKIN, HAIR = (205, 150, 110), (60, 40, 26)
GARMENT_LABELS = ("upper-clothes", "coat", "dress", "jumpsuits", "pants", "skirt",
                  "left-shoe", "right-shoe", "hat", "scarf")  # fmt: skip


def luma(rgb) -> np.ndarray:
    return np.asarray(rgb, float) @ LUMA


def name_of(rgb) -> str:
    return colour_name(np.array([rgb], np.uint8))


# ---------------------------------------------------------------- target colours


def test_target_colours_of_item_format_prompts():
    got = target_colours("black shirt orange skirt brown shoes")
    assert got == {"upper": COLOURS["black"], "lower": COLOURS["orange"],
                   "shoes": COLOURS["brown"]}  # fmt: skip
    got = target_colours("Red shirt| blue pants| black shoes")
    assert got == {"upper": COLOURS["red"], "lower": COLOURS["blue"],
                   "shoes": COLOURS["black"]}  # fmt: skip
    got = target_colours("purple dress white heels")
    assert got == {"full": COLOURS["purple"], "shoes": COLOURS["white"]}


def test_target_colours_of_llm_prompts():
    got = target_colours("light blue denim jacket black pants white sneakers")
    assert set(got) == {"outer", "lower", "shoes"}
    assert name_of(got["outer"]) == "blue"
    assert luma(got["outer"]) > luma(COLOURS["blue"])  # light blue
    assert got["lower"] == COLOURS["black"] and got["shoes"] == COLOURS["white"]
    prompt = "A man in a navy blue hoodie, dark green cargo shorts and gray trainers."
    got = target_colours(prompt)
    assert got["upper"] == COLOURS["navy"] and got["shoes"] == COLOURS["grey"]
    assert name_of(got["lower"]) == "green"
    assert luma(got["lower"]) < luma(COLOURS["green"])  # dark green


def test_target_colours_skip_unknown_colours_and_keep_the_first_item_per_slot():
    prompt = "denim jacket striped shirt multicoloured skirt red shoes"
    assert target_colours(prompt) == {"shoes": COLOURS["red"]}
    assert target_colours("a person walking") == {}
    assert target_colours("red shirt and a blue t-shirt") == {"upper": COLOURS["red"]}


def test_every_hue_word_of_the_vocabulary_has_a_colour():
    hues = clothing.COLOUR_WORDS - clothing.COLOUR_MODIFIERS
    for word in sorted(hues - {"multicolored", "multicoloured"}):
        assert target_colours(f"{word} shirt") == {"upper": phrase_rgb(word)}, word
    assert phrase_rgb("maroon") != phrase_rgb("beige")
    assert phrase_rgb("light") is None and phrase_rgb("dark") is None


# ---------------------------------------------------------------- hand-made people


def person(labels: str, colours: dict[str, tuple], torso: str, lower: str, seed: int):
    """(image, label map) of a 64x32 person: every garment shaded across its columns
    (gain 0.8 at the edges to 1.0 in the middle), striped every 4th row as the renderer
    stripes (darker on light colours, lighter on dark ones), noise sigma 4; a noisy
    background."""
    ids = {name: i for i, name in enumerate(LABEL_SETS[labels])}
    layout = np.zeros((64, 32), np.uint8)
    layout[0:4, 10:22] = ids["hair"]
    layout[4:10, 11:21] = ids["face"]
    layout[10:50, 2:6] = ids["right-arm"]
    layout[10:50, 26:30] = ids["left-arm"]
    layout[34:56, 8:24] = ids[lower]
    layout[10:34, 6:26] = ids[torso]
    layout[56:60, 10:14] = ids["right-leg"]
    layout[56:60, 18:22] = ids["left-leg"]
    layout[60:64, 8:15] = ids["right-shoe"]
    layout[60:64, 17:24] = ids["left-shoe"]
    rng = np.random.default_rng(seed)
    image = rng.uniform(60, 200, (64, 32, 3))
    shade = 0.8 + 0.2 * (1 - np.linspace(-1, 1, 32) ** 2)
    skin = dict.fromkeys(("face", "left-arm", "right-arm", "left-leg", "right-leg"))
    for name, rgb in {"hair": HAIR, **skin, **colours}.items():
        region = layout == ids[name]
        base = np.asarray(rgb or SKIN, float)
        stripe = base * 0.55 if base.mean() > 80 else base + (255 - base) * 0.45
        garment = np.where(STRIPE_ROWS[..., None], stripe, base) * shade[:, None]
        image[region] = garment[region] + rng.normal(0, 4, (region.sum(), 3))
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), layout


def outfit(labels, top, bottom, shoes, torso="upper-clothes", lower="pants", seed=0):
    colours = {torso: top, lower: bottom, "left-shoe": shoes, "right-shoe": shoes}
    return person(labels, colours, torso, lower, seed)


def region_of(layout, labels, *names):
    return np.isin(layout, [LABEL_SETS[labels].index(n) for n in names])


def garments(layout, labels):
    names = [n for n in GARMENT_LABELS if n in LABEL_SETS[labels]]
    return region_of(layout, labels, *names)


STRIPE_ROWS = np.repeat(np.arange(64)[:, None] % 4 == 0, 32, axis=1)
SOURCES = ("black", "white", "red", "navy", "yellow", "grey")
PARTS = (("upper-clothes",), ("pants",), ("left-shoe", "right-shoe"))


@pytest.mark.parametrize("labels", ["lip", "atr"])
@pytest.mark.parametrize("target", list(COLOURS))
def test_every_colour_is_reached_from_dark_and_light_garments(labels, target):
    for k, source in enumerate(SOURCES):
        rgb = COLOURS[source]
        image, layout = outfit(labels, rgb, rgb, rgb, seed=k)
        prompt = f"{target} shirt {target} pants {target} shoes"
        out = recolour(image, layout, labels, prompt)
        for names in PARTS:
            got = colour_name(out[region_of(layout, labels, *names)])
            assert got == target, (source, names, got)
        kept = ~garments(layout, labels)
        assert np.array_equal(out[kept], image[kept])


@pytest.mark.parametrize("labels", ["lip", "atr"])
def test_each_slot_gets_its_own_colour(labels):
    white, black, grey = COLOURS["white"], COLOURS["black"], COLOURS["grey"]
    image, layout = outfit(labels, white, black, grey, lower="skirt")
    prompt = "A woman in a red blouse, a blue skirt and green sandals"
    out = recolour(image, layout, labels, prompt)
    assert colour_name(out[region_of(layout, labels, "upper-clothes")]) == "red"
    assert colour_name(out[region_of(layout, labels, "skirt")]) == "blue"
    shoes = region_of(layout, labels, "left-shoe", "right-shoe")
    assert colour_name(out[shoes]) == "green"


def luma_gap(out, region):
    """Mean luma of the region's stripe rows minus that of its other rows."""
    stripes, others = region & STRIPE_ROWS, region & ~STRIPE_ROWS
    return luma(out[stripes]).mean() - luma(out[others]).mean()


SHADED_PAIRS = [("black", "yellow"), ("white", "navy"), ("red", "green"),
                ("navy", "pink"), ("grey", "black"), ("yellow", "purple"),
                ("white", "white"), ("brown", "orange")]  # fmt: skip


@pytest.mark.parametrize(("source", "target"), SHADED_PAIRS)
def test_shading_and_stripes_are_kept(source, target):
    image, layout = outfit("lip", COLOURS[source], COLOURS["grey"], COLOURS["grey"])
    out = recolour(image, layout, "lip", f"{target} shirt")
    torso = region_of(layout, "lip", "upper-clothes")
    before, after = luma(image[torso]), luma(out[torso])
    assert np.corrcoef(before, after)[0, 1] > 0.9
    assert after.std() > 0.05 * after.mean()  # not a flat fill
    gap, source_gap = luma_gap(out, torso), luma_gap(image, torso)
    assert np.sign(gap) == np.sign(source_gap) and abs(gap) > 4
    middle, edge = luma(out[12:34, 14:18]), luma(out[12:34, 6:8])
    assert np.median(middle) > np.median(edge) + 1  # the cylinder shading survives


@pytest.mark.parametrize("source", ["black", "navy", "brown"])
def test_dark_garments_turned_white_keep_shading_and_light_stripes(source):
    """A white target has little headroom: light stripes on a dark garment roll off
    towards white (still visible, not linear); the shading between them stays linear."""
    image, layout = outfit("lip", COLOURS[source], COLOURS["grey"], COLOURS["grey"])
    out = recolour(image, layout, "lip", "white shirt")
    torso = region_of(layout, "lip", "upper-clothes")
    plain = torso & ~STRIPE_ROWS
    assert colour_name(out[torso]) == "white"
    assert np.corrcoef(luma(image[plain]), luma(out[plain]))[0, 1] > 0.9
    assert luma_gap(out, torso) > 8
    assert np.ptp(luma(out[plain])) > 20


def test_pixels_outside_the_mask_are_untouched_and_soft_masks_blend():
    image, layout = outfit("lip", COLOURS["white"], COLOURS["black"], COLOURS["brown"])
    prompt = "red shirt blue pants black shoes"
    mask = np.zeros(layout.shape, np.uint8)
    mask[:, :16] = 255  # the left half, identity included: identity still stays
    mask[:, 16] = 128
    out = recolour(image, layout, "lip", prompt, mask)
    garment = garments(layout, "lip")
    assert np.array_equal(out[mask == 0], image[mask == 0])
    assert np.array_equal(out[~garment], image[~garment])
    painted = garment & (mask == 255)
    assert (out[painted] != image[painted]).any(axis=1).all()
    left_shirt = region_of(layout, "lip", "upper-clothes") & (mask == 255)
    assert colour_name(out[left_shirt]) == "red"
    full = recolour(image, layout, "lip", prompt)
    column = garment[:, 16]
    half = image[:, 16][column] / 2 + full[:, 16][column] / 2
    assert np.abs(out[:, 16][column] - half).max() <= 1
    as_bool = recolour(image, layout, "lip", prompt, mask > 0)
    assert np.array_equal(as_bool[mask == 0], image[mask == 0])


def test_fallbacks_between_slots():
    image, layout = outfit("lip", COLOURS["white"], COLOURS["black"], COLOURS["brown"])
    shirt = region_of(layout, "lip", "upper-clothes")
    pants = region_of(layout, "lip", "pants")
    shoes = region_of(layout, "lip", "left-shoe", "right-shoe")
    out = recolour(image, layout, "lip", "a long green dress")  # top and bottom both
    assert colour_name(out[shirt]) == "green" and colour_name(out[pants]) == "green"
    assert np.array_equal(out[shoes], image[shoes])  # no shoes in the prompt: they stay
    out = recolour(image, layout, "lip", "orange coat")  # for a top, not for pants
    assert colour_name(out[shirt]) == "orange"
    assert np.array_equal(out[pants], image[pants])
    coat, coat_map = outfit("lip", COLOURS["navy"], COLOURS["black"], COLOURS["brown"],
                            torso="coat")  # fmt: skip
    out = recolour(coat, coat_map, "lip", "yellow shirt, pink coat")
    coat_region = region_of(coat_map, "lip", "coat")
    assert colour_name(out[coat_region]) == "pink"  # its own slot first
    red = COLOURS["red"]
    dress, dress_map = outfit("atr", red, red, red, torso="dress", lower="skirt")
    out = recolour(dress, dress_map, "atr", "grey pullover, black jeans, white boots")
    assert colour_name(out[region_of(dress_map, "atr", "dress")]) == "grey"
    assert colour_name(out[region_of(dress_map, "atr", "skirt")]) == "black"
    assert np.array_equal(recolour(image, layout, "lip", "a person walking"), image)


def test_hats_and_scarves_take_only_their_own_slot():
    image, layout = outfit("lip", COLOURS["white"], COLOURS["black"], COLOURS["brown"])
    layout[0:3, 10:22] = LIP.index("hat")
    out = recolour(image, layout, "lip", "red shirt")
    assert np.array_equal(out[0:3], image[0:3])
    out = recolour(image, layout, "lip", "red shirt yellow cap")
    assert colour_name(out[0:3, 10:22].reshape(-1, 3)) == "yellow"


def test_deterministic_and_input_untouched():
    image, layout = outfit("atr", COLOURS["green"], COLOURS["navy"], COLOURS["white"])
    copy = image.copy()
    prompt = "purple shirt orange pants black shoes"
    first = recolour(image, layout, "atr", prompt)
    assert np.array_equal(image, copy)
    assert first.dtype == np.uint8 and first.shape == image.shape
    assert np.array_equal(first, recolour(image, layout, "atr", prompt))


def test_bad_inputs_are_value_errors():
    image, layout = outfit("lip", COLOURS["white"], COLOURS["black"], COLOURS["brown"])
    with pytest.raises(ValueError, match="unknown label set 'cihp'"):
        recolour(image, layout, "cihp", "red shirt")
    with pytest.raises(ValueError, match="label map"):
        recolour(image, layout[:, :-1], "lip", "red shirt")
    with pytest.raises(ValueError, match="mask"):
        recolour(image, layout, "lip", "red shirt", np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="H x W x 3"):
        recolour(image[..., 0], layout, "lip", "red shirt")
    with pytest.raises(ValueError, match="uint8"):
        recolour(image.astype(float), layout, "lip", "red shirt")


# ---------------------------------------------------------------- the synthetic dataset

WORD = {"upper-clothes": "shirt", "coat": "coat", "dress": "dress", "pants": "pants",
        "skirt": "skirt", "shoes": "shoes"}  # fmt: skip
SLOT = {"upper-clothes": "upper", "coat": "outer", "dress": "full", "pants": "lower",
        "skirt": "lower", "shoes": "shoes"}  # fmt: skip


def garments_of(outfit_json: dict) -> list[tuple[str, str]]:
    """(label, colour) of an outfits.json entry's garments."""
    parts = ("upper", "lower", "shoes")
    return [tuple(outfit_json[k]) for k in parts if outfit_json[k]]


def test_recolouring_synthetic_people_into_their_other_outfits(tmp_path):
    synthesize(tmp_path, ids=4, cameras=2, per=1, seed=0)
    wardrobe = json.loads((tmp_path / "outfits.json").read_text())
    checked = 0
    for pid, outfits in wardrobe.items():
        for (k, source), (_, target) in itertools.permutations(outfits.items(), 2):
            path = next(tmp_path.glob(f"*/{pid}_{k}_c1_000.png"))
            image = np.asarray(Image.open(path).convert("RGB"))
            parsing = tmp_path / "parsing" / path.parent.name / path.name
            layout = np.asarray(Image.open(parsing))
            items = garments_of(target)
            prompt = " ".join(f"{colour} {WORD[label]}" for label, colour in items)
            out = recolour(image, layout, "lip", prompt)
            identity = ~garments(layout, "lip")
            identity |= layout == LIP.index("hat")  # the person's, not the outfit's
            assert np.array_equal(out[identity], image[identity])
            wanted = {SLOT[label]: colour for label, colour in items}
            present = {SLOT[label] for label, _ in garments_of(source)}
            for item in describe_regions(out, layout, "lip"):
                if item.slot in wanted and item.slot in present:
                    assert item.colour == wanted[item.slot], (pid, k, target, item)
                    checked += 1
    assert checked > 20
