"""The clothing vocabulary: colour naming under the renderer's lighting, item parsing, region
descriptions (checked against the synthetic dataset's ground truth), voting and prompts."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
from PIL import Image

from dlcr_cli import synth
from dlcr_cli.clothing import (
    COLOUR_WORDS,
    COLOURS,
    GARMENT_SLOTS,
    SLOTS,
    ClothingItem,
    colour_name,
    describe_regions,
    format_description,
    parse_items,
    prompt_from_items,
    vote,
)
from dlcr_cli.labels import ATR, LIP

# ---------------------------------------------------------------- colours


def region(rgb, gain: float, stripes: bool, cast=(1.0, 1.0, 1.0), seed: int = 0) -> np.ndarray:
    """A 48x24 garment patch as the renderer draws one: cylinder shading across the columns
    (normalised so the patch's median gain is `gain`), optional stripes on every 4th row,
    a colour cast, noise sigma 5. Returns (N, 3) uint8 pixels."""
    base = np.asarray(rgb, float)
    patch = np.tile(base, (48, 24, 1))
    if stripes:
        patch[::4] = base * 0.55 if base.mean() > 80 else base + (255 - base) * 0.45
    shade = 1 - 0.2 * np.linspace(-1, 1, 24) ** 2
    cast = np.asarray(cast, float)
    patch *= (shade / np.median(shade))[None, :, None] * gain * cast / cast.mean()
    patch += np.random.default_rng(seed).normal(0, 5, patch.shape)
    return np.clip(patch + 0.5, 0, 255).astype(np.uint8).reshape(-1, 3)


@pytest.mark.parametrize("name", list(COLOURS))
def test_colour_name_whole_vocabulary_under_gain_noise_and_stripes(name):
    for gain, stripes in itertools.product(np.linspace(0.75, 1.2, 10), (False, True)):
        got = colour_name(region(COLOURS[name], gain, stripes))
        assert got == name, (name, round(gain, 3), stripes, got)


@pytest.mark.parametrize("name", list(COLOURS))
def test_colour_name_under_camera_colour_casts(name):
    casts = [(1, 1, 1), *itertools.product((0.96, 1.04), repeat=3)]
    for gain, stripes, cast in itertools.product((0.84, 0.97, 1.1), (False, True), casts):
        got = colour_name(region(COLOURS[name], gain, stripes, cast))
        assert got == name, (name, gain, stripes, cast, got)


def test_colour_name_takes_the_majority_and_any_pixel_shape():
    red, white = np.array(COLOURS["red"], np.uint8), np.array(COLOURS["white"], np.uint8)
    pixels = np.concatenate([np.tile(red, (65, 1)), np.tile(white, (35, 1))])
    assert colour_name(pixels) == "red"
    assert colour_name(pixels.reshape(10, 10, 3)) == "red"
    # a print of two other colours: a per-channel median would blend all three into a purple
    blue = np.array(COLOURS["blue"], np.uint8)
    mixed = np.concatenate([np.tile(red, (45, 1)), np.tile(white, (30, 1)), np.tile(blue, (25, 1))])
    assert colour_name(mixed) == "red"
    assert colour_name(np.array([[0, 0, 0]], np.uint8)) == "black"
    with pytest.raises(ValueError):
        colour_name(np.zeros((0, 3), np.uint8))


@pytest.mark.parametrize(
    "rgb, name",
    [
        ((70, 95, 135), "blue"),  # faded denim: a hue, not grey
        ((40, 50, 75), "navy"),  # dark denim
        ((135, 190, 235), "blue"),  # sky blue
        ((110, 25, 35), "red"),  # maroon
        ((190, 190, 190), "white"),  # light grey is nearer white than mid grey
        ((60, 60, 65), "black"),  # charcoal
        ((225, 232, 245), "white"),  # a bluish white balance
        ((130, 125, 118), "grey"),  # a warm grey
    ],
)
def test_colour_name_is_sensible_on_real_world_colours(rgb, name):
    assert colour_name(np.tile(np.array(rgb, np.uint8), (20, 1))) == name


def test_synth_draws_from_the_vocabulary():
    assert synth.PALETTE is COLOURS and len(COLOURS) == 12
    assert COLOURS["navy"] == (25, 35, 95) and COLOURS["grey"] == (128, 128, 128)


def test_colour_words_cover_vocabulary_and_common_names():
    assert set(COLOURS) <= COLOUR_WORDS
    assert {"gray", "beige", "tan", "khaki", "maroon", "olive", "teal", "dark", "light", "pale"} <= COLOUR_WORDS


# ---------------------------------------------------------------- garments and parsing


def test_garment_slots():
    expected = {
        "full": "dress gown jumpsuit overalls romper dresses jumpsuits",
        "outer": "coat jacket blazer cardigan parka windbreaker raincoat jackets coats",
        "upper": "shirt t-shirt tshirt tee top blouse sweater hoodie sweatshirt jersey vest polo "
        "uniform pullover shirts t-shirts tees blouses hoodies",
        "lower": "pants jeans trousers shorts skirt leggings slacks skirts",
        "shoes": "shoes sneakers boots sandals heels slippers loafers trainers shoe boot",
        "hat": "hat cap beanie helmet hats caps",
        "scarf": "scarf scarves",
    }
    for slot, words in expected.items():
        for word in words.split():
            assert GARMENT_SLOTS[word] == slot, word
    assert GARMENT_SLOTS["tank top"] == GARMENT_SLOTS["tank tops"] == "upper"
    assert set(GARMENT_SLOTS.values()) == set(SLOTS)


def texts(text: str) -> list[str]:
    return [item.text for item in parse_items(text)]


def test_item_text():
    assert ClothingItem("red", "shirt", "upper").text == "red shirt"
    assert ClothingItem(None, "shirt", "upper").text == "shirt"


def test_parse_item_format():
    assert parse_items("Red shirt| blue pants| Black shoes") == [
        ClothingItem("red", "shirt", "upper"),
        ClothingItem("blue", "pants", "lower"),
        ClothingItem("black", "shoes", "shoes"),
    ]
    # unknown garments dropped, no colour kept as such, the head noun is the last garment word
    assert texts("Black hat| green bag| Brown Boots| t shirt| white shirt with logo") == [
        "black hat", "brown boots", "t shirt", "white shirt",
    ]  # fmt: skip
    assert texts("Light Gray Hoodie| dark-blue jeans|") == ["light grey hoodie", "dark blue jeans"]


@pytest.mark.parametrize(
    "sentence, expected",
    [
        (
            "The person is wearing a light blue denim jacket, black pants and white sneakers.",
            ["light blue jacket", "black pants", "white sneakers"],
        ),
        (
            "A man in a gray T-shirt, a dark grey tank top and navy blue jeans with brown leather boots.",
            ["grey t-shirt", "dark grey tank top", "navy blue jeans", "brown boots"],
        ),
        (
            "She wears a long-sleeved pink blouse over a white tank-top, khaki shorts and a red baseball cap.",
            ["pink blouse", "white tank-top", "khaki shorts", "red baseball cap"],
        ),
        ("A woman in a dress and sandals.", ["dress", "sandals"]),
        ("a blue jacket and pants", ["blue jacket", "pants"]),  # the jacket's colour stays there
        ("a dark jacket on top of a shirt dress", ["jacket", "shirt dress"]),  # no hue: no colour
        ("a man in a dress shirt and grey sweatpants", ["dress shirt", "grey sweatpants"]),
        ("A woman walking down the street with a bag.", []),
        ("", []),
    ],
)
def test_parse_free_text(sentence, expected):
    assert texts(sentence) == expected


def test_parse_free_text_slots():
    items = parse_items("A black coat over a white tee, a red dress, blue jeans, brown boots, a cap and a scarf")
    assert [i.slot for i in items] == ["outer", "upper", "full", "lower", "shoes", "hat", "scarf"]


# ---------------------------------------------------------------- describe_regions


def paint(label_map: np.ndarray, colours: dict[int, tuple[int, int, int]]) -> np.ndarray:
    image = np.full((*label_map.shape, 3), 90, np.uint8)  # a mid-grey background / skin
    for label, rgb in colours.items():
        image[label_map == label] = rgb
    return image


def lip_map() -> np.ndarray:
    ids = {name: i for i, name in enumerate(LIP)}
    m = np.zeros((40, 20), np.uint8)
    m[0:2, 8:10] = ids["hat"]  # 4 pixels: below min_pixels
    m[2:6, 6:14] = ids["face"]
    m[6:20, 2:18] = ids["upper-clothes"]
    m[6:20, 0:2] = ids["coat"]  # 28 pixels of an open coat
    m[20:34, 4:16] = ids["pants"]
    m[34:37, 4:7] = ids["right-shoe"]  # 9 + 9 pixels: each below 16, pooled 18
    m[34:37, 13:16] = ids["left-shoe"]
    m[37:40, 0:10] = ids["socks"]  # not a garment the tool names
    return m


def test_describe_regions_lip():
    m = lip_map()
    ids = {name: i for i, name in enumerate(LIP)}
    colours = {
        ids["hat"]: COLOURS["yellow"], ids["upper-clothes"]: COLOURS["red"], ids["coat"]: COLOURS["navy"],
        ids["pants"]: COLOURS["blue"], ids["right-shoe"]: COLOURS["white"], ids["left-shoe"]: COLOURS["white"],
        ids["socks"]: COLOURS["pink"],
    }  # fmt: skip
    items = describe_regions(paint(m, colours), m, "lip")
    assert [i.text for i in items] == ["navy coat", "red shirt", "blue pants", "white shoes"]
    assert [i.slot for i in items] == ["outer", "upper", "lower", "shoes"]
    assert format_description(items) == "navy coat| red shirt| blue pants| white shoes"
    assert parse_items(format_description(items)) == items
    with_hat = describe_regions(paint(m, colours), m, "lip", min_pixels=4)
    assert [i.text for i in with_hat][-1] == "yellow hat"
    assert [i.text for i in describe_regions(paint(m, colours), m, "lip", min_pixels=19)] == [
        "navy coat", "red shirt", "blue pants",
    ]  # fmt: skip


def test_describe_regions_atr():
    ids = {name: i for i, name in enumerate(ATR)}
    m = np.zeros((30, 10), np.uint8)
    m[0:3, :] = ids["hat"]
    m[3:6, :] = ids["scarf"]
    m[6:16, :] = ids["dress"]
    m[16:20, :] = ids["bag"]
    m[20:22, 0:5] = ids["left-shoe"]
    m[20:22, 5:10] = ids["right-shoe"]
    colours = {
        ids["hat"]: COLOURS["black"], ids["scarf"]: COLOURS["green"], ids["dress"]: COLOURS["purple"],
        ids["bag"]: COLOURS["orange"], ids["left-shoe"]: COLOURS["brown"], ids["right-shoe"]: COLOURS["brown"],
    }  # fmt: skip
    items = describe_regions(paint(m, colours), m, "atr")
    assert format_description(items) == "purple dress| brown shoes| black hat| green scarf"
    assert [i.slot for i in items] == ["full", "shoes", "hat", "scarf"]
    # the same ids read as LIP mean other things (ATR 7 "dress" is LIP "coat")
    assert describe_regions(paint(m, colours), m, "lip")[0].text == "purple coat"


def test_describe_regions_rejects_bad_input():
    m = lip_map()
    with pytest.raises(ValueError, match="must match"):
        describe_regions(np.zeros((40, 21, 3), np.uint8), m, "lip")
    with pytest.raises(ValueError, match="unknown label set"):
        describe_regions(np.zeros((40, 20, 3), np.uint8), m, "pascal")
    assert describe_regions(np.zeros((40, 20, 3), np.uint8), np.zeros((40, 20), np.uint8), "lip") == []


UPPER = {"upper-clothes": ("upper", "shirt"), "coat": ("outer", "coat"), "dress": ("full", "dress")}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_describe_regions_names_the_synthetic_outfits(tmp_path, seed):
    synth.synthesize(tmp_path, ids=6, cameras=2, per=1, seed=seed)
    outfits = json.loads((tmp_path / "outfits.json").read_text())
    people = json.loads((tmp_path / "people.json").read_text())
    checked = 0
    for split in synth.SPLITS:
        for path in sorted((tmp_path / split).glob("*.png")):
            pid, clothes = path.stem.split("_")[:2]
            outfit, hat = outfits[pid][clothes], people[pid]["hat"]
            upper_slot, upper_word = UPPER[outfit["upper"][0]]
            expected = {upper_slot: f"{outfit['upper'][1]} {upper_word}", "shoes": f"{outfit['shoes'][1]} shoes"}
            if outfit["lower"]:
                expected["lower"] = f"{outfit['lower'][1]} {outfit['lower'][0]}"
            if hat:
                expected["hat"] = f"{hat[1]} hat"
            image = np.asarray(Image.open(path))
            label_map = np.asarray(Image.open(tmp_path / "parsing" / split / path.name))
            items = describe_regions(image, label_map, "lip")
            assert {i.slot: i.text for i in items} == expected, path.name
            assert [i.slot for i in items] == [s for s in SLOTS if s in expected]
            checked += 1
    assert checked >= 24


# ---------------------------------------------------------------- vote and prompt


def voted(descriptions: list[str]) -> list[str]:
    return [item.text for item in vote(descriptions)]


def test_vote_majority_per_slot():
    descriptions = [
        "red shirt| blue pants| black shoes",
        "Red shirt| blue jeans| black shoes| white cap",
        "white shirt| blue pants",
        "The person wears a red shirt, blue pants and black shoes.",
    ]
    assert voted(descriptions) == ["red shirt", "blue pants", "black shoes"]  # the cap: 1 of 4


def test_vote_slot_needs_half_of_the_descriptions():
    base = ["red shirt"] * 4
    assert voted(base[:2] + ["red shirt| black hat"] * 2) == ["red shirt", "black hat"]  # 2 of 4
    assert voted(base[:3] + ["red shirt| black hat"]) == ["red shirt"]  # 1 of 4
    # a description counts once per slot, however many items of that slot it names
    assert voted(["red shirt| white tee| grey sweater", "black pants", "black pants"]) == ["black pants"]
    assert voted(["red shirt| red shirt", "blue shirt", "blue shirt"]) == ["blue shirt"]


def test_vote_ties_do_not_depend_on_order():
    cases = [
        (["red shirt", "blue shirt", "shirt", "blue jeans", "black jeans", "jeans"], ["blue shirt", "black jeans"]),
        (["shirt| pants", "red shirt| pants", "red shirt", "pants"], ["red shirt", "pants"]),
        (["shirt", "grey shirt"], ["grey shirt"]),  # a colour beats none on a tie
    ]
    rng = random.Random(0)
    for descriptions, expected in cases:
        for _ in range(10):
            shuffled = rng.sample(descriptions, len(descriptions))
            assert voted(shuffled) == expected, shuffled


def test_vote_output_in_slot_order_and_empty_cases():
    assert voted(["black shoes| red hat| white shirt| blue coat"] * 2) == [
        "blue coat", "white shirt", "black shoes", "red hat",
    ]  # fmt: skip
    assert vote([]) == []
    assert vote(["", "a person walking", "green bag"]) == []


def test_vote_a_dress_or_a_top_and_bottom_not_both():
    dress = ["green dress| black shoes"] * 2
    two_piece = ["red shirt| blue pants| black shoes"] * 3
    assert voted(dress + two_piece) == ["red shirt", "blue pants", "black shoes"]
    assert voted(dress * 2 + two_piece) == ["green dress", "black shoes"]
    assert voted(dress + two_piece[:2]) == ["green dress", "black shoes"]  # a tie: the dress


def test_prompt_from_items():
    assert prompt_from_items(["Blue jacket", "Black pants,", "ok", "White sneakers"]) == (
        "blue jacket black pants white sneakers"
    )
    assert prompt_from_items(["  Red   T-shirt ", "a,", ",,", "Grey, wool  coat"]) == "red t-shirt grey wool coat"
    assert prompt_from_items(["hat"]) == "hat"
    assert prompt_from_items([]) == ""
