"""The clothing vocabulary: colour names, garment words and their slots, descriptions and prompts.

The weight-free core of `describe --backend colors` (name the dominant colour of each garment
of a human-parsing label map) and `summarize --backend vote` (the majority item per garment
slot over the descriptions of one clothing id), and the paper's prompt form.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from dlcr_cli.labels import LABEL_SETS

# ---------------------------------------------------------------- colours

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 35),
    "blue": (40, 90, 215),
    "green": (40, 150, 60),
    "yellow": (240, 220, 40),
    "black": (25, 25, 28),
    "white": (235, 235, 235),
    "grey": (128, 128, 128),
    "orange": (235, 120, 25),
    "purple": (125, 50, 160),
    "pink": (245, 150, 190),
    "brown": (115, 70, 35),
    "navy": (25, 35, 95),
}
"""The colour names `colour_name` answers with (and the synthetic dataset draws garments from)."""

COLOUR_MODIFIERS = frozenset(
    {"dark", "light", "bright", "pale", "deep", "pastel", "neon", "dusty", "royal", "sky", "baby", "hot",
     "faded", "muted", "vivid", "navy"}
)  # fmt: skip
"""Words that qualify a colour ("light blue", "navy blue"); alone they name no colour."""

COLOUR_WORDS = frozenset(COLOURS) | COLOUR_MODIFIERS | {
    "gray", "beige", "tan", "khaki", "maroon", "burgundy", "olive", "teal", "cyan", "turquoise",
    "gold", "golden", "silver", "cream", "ivory", "violet", "lavender", "magenta", "indigo",
    "charcoal", "coral", "peach", "mint", "mustard", "camel", "crimson", "lilac", "rust",
    "multicolored", "multicoloured",
}  # fmt: skip
"""Colour words recognised in free text (hues and their modifiers)."""

_COLOUR_ALIASES = {"gray": "grey", "multicolored": "multicoloured"}

# Brightness gains a vocabulary colour is matched under: shading, folds and exposure scale
# a garment's RGB without changing what it is called. Grey and white differ only in
# lightness, so the range must keep grey * max below white * min (160 < 174) with room
# for a colour cast; the boundary then falls near RGB 167.
_GAINS = np.geomspace(0.74, 1.25, 12)


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB values in 0..255, shape (..., 3)."""
    c = np.asarray(rgb, float) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _delta_e94(reference: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Squared CIE94 colour difference (textile weights) of `lab` from each reference colour.

    Lightness counts half (kL = 2) and chroma differences are forgiven in proportion to the
    reference's chroma, so a faded, real-world garment (denim, sky blue) still lands on its
    vivid vocabulary hue rather than on grey or white.
    """
    chroma_ref, chroma = np.hypot(reference[..., 1], reference[..., 2]), np.hypot(lab[1], lab[2])
    d_lightness, d_chroma = reference[..., 0] - lab[0], chroma_ref - chroma
    d_hue2 = np.maximum(((reference[..., 1:] - lab[1:]) ** 2).sum(-1) - d_chroma**2, 0)
    d_chroma /= 1 + 0.048 * chroma_ref
    return (d_lightness / 2) ** 2 + d_chroma**2 + d_hue2 / (1 + 0.014 * chroma_ref) ** 2


_NAMES = tuple(COLOURS)
# (colours, gains, 3): every vocabulary colour under every gain, clipped as a camera clips.
_REFERENCE_LAB = _srgb_to_lab(
    np.clip(np.array([COLOURS[n] for n in _NAMES], float)[:, None, :] * _GAINS[None, :, None], 0, 255)
)
# CIELAB chroma below which a colour is taken for black, grey or white: above what a few
# percent of colour cast gives a white (~12), below the palest vocabulary hue (~25).
_MIN_CHROMA = 16.0
_CHROMATIC = np.hypot(_REFERENCE_LAB[:, 0, 1], _REFERENCE_LAB[:, 0, 2]) > _MIN_CHROMA


def _dominant(rgb: np.ndarray, step: int = 16) -> np.ndarray:
    """A region's dominant colour: the median of the pixels around its densest colour.

    A mode, not a mean or per-channel median: stripes, prints, seams and stray parsing
    pixels are ignored as long as they are not the most common colour, and a mix of colours
    cannot blend into one that is in none of them. Density is counted on a coarse RGB grid
    (cells of `step` levels, each with its 26 neighbours), so the cost is linear in pixels.
    """
    bins = 256 // step
    cells = rgb.astype(int) // step
    counts = np.bincount(np.ravel_multi_index(cells.T, (bins,) * 3), minlength=bins**3).reshape((bins,) * 3)
    padded = np.pad(counts, 1)
    density = sum(
        padded[i : i + bins, j : j + bins, k : k + bins] for i in range(3) for j in range(3) for k in range(3)
    )
    peak = np.unravel_index(density.argmax(), density.shape)
    return np.median(rgb[(np.abs(cells - peak) <= 1).all(axis=1)], axis=0)


def colour_name(pixels: np.ndarray) -> str:
    """The COLOURS name of a region's dominant colour, from its pixels ((N, 3) uint8).

    The dominant colour (a mode, so stripes and prints do not count) is named by the nearest
    vocabulary colour under CIE94, each vocabulary colour taken under a range of brightness
    gains, so a shaded white is still white and a brightly lit navy still navy; a colour
    with almost no chroma can only be black, grey or white.
    """
    rgb = np.clip(np.asarray(pixels, float).reshape(-1, 3), 0, 255)
    if not len(rgb):
        raise ValueError("colour_name needs at least one pixel")
    lab = _srgb_to_lab(_dominant(rgb))
    distance = _delta_e94(_REFERENCE_LAB, lab).min(axis=1)
    if np.hypot(lab[1], lab[2]) < _MIN_CHROMA:  # a tinted white or grey, not a faded hue
        distance[_CHROMATIC] = np.inf
    return _NAMES[int(distance.argmin())]


# ---------------------------------------------------------------- garments and slots

SLOTS = ("full", "outer", "upper", "lower", "shoes", "hat", "scarf")
"""Garment slots in output order; "full" (dress, jumpsuit) is worn instead of upper + lower."""

# Count nouns get their plural added below; words that are plural already are listed as such.
_SLOT_NOUNS: dict[str, tuple[str, ...]] = {
    "full": ("dress", "gown", "jumpsuit", "romper", "playsuit", "sundress", "shirt dress", "overalls",
             "dungarees"),
    "outer": ("coat", "jacket", "blazer", "cardigan", "parka", "windbreaker", "raincoat", "overcoat",
              "trench coat", "anorak", "poncho", "suit jacket"),
    "upper": ("shirt", "t-shirt", "t shirt", "tshirt", "tee", "top", "blouse", "sweater", "hoodie",
              "sweatshirt", "jersey", "vest", "tank top", "polo", "polo shirt", "uniform", "pullover",
              "jumper", "tunic", "camisole", "crop top", "turtleneck", "dress shirt", "button-down"),
    "lower": ("pants", "jeans", "trousers", "shorts", "skirt", "leggings", "slacks", "khakis", "chinos",
              "joggers", "sweatpants", "capris", "tights"),
    "shoes": ("shoes", "shoe", "sneaker", "boot", "sandal", "heels", "slipper", "loafer", "trainer",
              "flip-flop", "flats"),
    "hat": ("hat", "cap", "beanie", "helmet", "beret", "baseball cap", "top hat"),
    "scarf": ("scarf", "scarves", "shawl"),
}  # fmt: skip
_PLURAL_ONLY = {"overalls", "dungarees", "pants", "jeans", "trousers", "shorts", "leggings", "slacks",
                "khakis", "chinos", "joggers", "sweatpants", "capris", "tights", "shoes", "heels", "flats",
                "scarves"}  # fmt: skip


def _plural(word: str) -> str:
    if word == "scarf":
        return "scarfs"
    return word + ("es" if word.endswith(("s", "sh", "ch", "x")) else "s")


GARMENT_SLOTS: dict[str, str] = {
    form: slot
    for slot, nouns in _SLOT_NOUNS.items()
    for noun in nouns
    for form in ((noun,) if noun in _PLURAL_ONLY else (noun, _plural(noun)))
}
"""Garment word (singular and plural, spaced or hyphenated as written here) -> slot."""

PARSING_GARMENTS: dict[str, str] = {
    "upper-clothes": "shirt", "coat": "coat", "dress": "dress", "jumpsuits": "jumpsuit",
    "pants": "pants", "skirt": "skirt", "left-shoe": "shoes", "right-shoe": "shoes",
    "hat": "hat", "scarf": "scarf",
}  # fmt: skip
"""Human-parsing label (LIP and ATR share names) -> garment word; other labels name nothing."""


def garment_label_ids(labels: str) -> dict[str, list[int]]:
    """Garment word -> its label ids in label set `labels`, in label order (both shoes are
    one garment)."""
    ids: dict[str, list[int]] = {}
    for i, name in enumerate(LABEL_SETS[labels]):
        if name in PARSING_GARMENTS:
            ids.setdefault(PARSING_GARMENTS[name], []).append(i)
    return ids


def _key(words: str) -> str:
    """Spacing- and hyphen-insensitive lookup key: "tank-top", "tank  top" -> "tank top"."""
    return re.sub(r"[\s-]+", " ", words.strip().lower())


_SLOT_OF = {_key(word): slot for word, slot in GARMENT_SLOTS.items()}
# Longest first, so "tank top" wins over "top" and "dress shirt" over "dress".
_GARMENT_RE = re.compile(
    r"(?<![\w-])(?:"
    + "|".join(r"[\s-]+".join(map(re.escape, k.split())) for k in sorted(_SLOT_OF, key=len, reverse=True))
    + r")(?![\w-])",
    re.IGNORECASE,
)
# What ends the phrase a garment's colour is looked for in: punctuation and linking words.
_CLAUSE_BREAK = re.compile(r"[,;:.!?()|/]|\b(?:and|or|with|but|plus|over|under)\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")
_TOP_OF = re.compile(r"\s+of\b", re.IGNORECASE)


# ---------------------------------------------------------------- items


@dataclass(frozen=True)
class ClothingItem:
    colour: str | None
    garment: str
    slot: str

    @property
    def text(self) -> str:
        return f"{self.colour} {self.garment}" if self.colour else self.garment


def _colour_before(prefix: str) -> str | None:
    """The colour phrase among the last three words of `prefix` (the words before a garment)."""
    words = _WORD.findall(_CLAUSE_BREAK.split(prefix.lower())[-1])
    is_colour = [all(p in COLOUR_WORDS for p in w.split("-")) for w in words]
    end = next((i + 1 for i in range(len(words) - 1, max(len(words) - 4, -1), -1) if is_colour[i]), None)
    if end is None:
        return None
    start = end - 1
    while start > 0 and is_colour[start - 1]:  # "dark navy blue" may reach past three words
        start -= 1
    parts = [p for w in words[start:end] for p in w.split("-")]
    while parts and parts[-1] in COLOUR_MODIFIERS - set(COLOURS):  # "blue light" -> "blue"
        parts.pop()
    if not any(p not in COLOUR_MODIFIERS or p in COLOURS for p in parts):
        return None  # "dark jacket": a modifier alone is no colour
    return " ".join(_COLOUR_ALIASES.get(p, p) for p in parts)


def _items(text: str) -> list[ClothingItem]:
    """Every garment word in free text, with the colour phrase just before it."""
    items, previous_end = [], 0
    for match in _GARMENT_RE.finditer(text):
        garment = re.sub(r"\s+", " ", match.group().lower())
        if garment == "top" and _TOP_OF.match(text, match.end()):
            continue  # "on top of", "the top of his head"
        colour = _colour_before(text[previous_end : match.start()])
        items.append(ClothingItem(colour, garment, _SLOT_OF[_key(garment)]))
        previous_end = match.end()
    return items


def parse_items(text: str) -> list[ClothingItem]:
    """Clothing items in a description: the item format "Red shirt| blue pants| black shoes"
    (one item per "|" part, the last garment word of a part its head; a part without a known
    garment is dropped) or free text ("... wearing a light blue denim jacket and black pants")."""
    if "|" not in text:
        return _items(text)
    return [found[-1] for part in text.split("|") if (found := _items(part))]


def describe_regions(
    image: np.ndarray, label_map: np.ndarray, labels: str, min_pixels: int = 16
) -> list[ClothingItem]:
    """The garments of a parsed image, each named with its colour: one item per garment label
    with at least `min_pixels` pixels (both shoes pooled), in SLOTS then label order."""
    if labels not in LABEL_SETS:
        raise ValueError(f"unknown label set {labels!r}; expected one of {', '.join(LABEL_SETS)}")
    image, label_map = np.asarray(image), np.asarray(label_map)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3 (RGB), got shape {image.shape}")
    if image.shape[:2] != label_map.shape:
        raise ValueError(
            f"image is {image.shape[1]}x{image.shape[0]} but its label map is "
            f"{label_map.shape[-1]}x{label_map.shape[0]} (width x height); they must match"
        )
    items = []
    for garment, garment_ids in garment_label_ids(labels).items():
        mask = np.isin(label_map, garment_ids)
        if mask.sum() >= min_pixels:
            item = ClothingItem(colour_name(image[mask]), garment, GARMENT_SLOTS[garment])
            items.append((garment_ids[0], item))
    items.sort(key=lambda pair: (SLOTS.index(pair[1].slot), pair[0]))
    return [item for _, item in items]


def format_description(items: list[ClothingItem]) -> str:
    """The released data's item format: "red shirt| blue pants| black shoes"."""
    return "| ".join(item.text for item in items)


def vote(descriptions: list[str]) -> list[ClothingItem]:
    """One item per slot over the descriptions of one clothing id.

    A slot is kept when at least half the descriptions mention it; its item is the most
    frequent item text (each description counted once per text). Ties go to an item with a
    colour, then to the alphabetically first text, so the order of descriptions never matters.
    A dress (slot "full") and a top or bottom that both reach half: the side with more votes
    stays (the dress on a tie).
    """
    slot_votes: Counter[str] = Counter()
    item_votes: dict[str, Counter[ClothingItem]] = {slot: Counter() for slot in SLOTS}
    for description in descriptions:
        items = set(parse_items(description))
        slot_votes.update({item.slot for item in items})
        for item in items:
            item_votes[item.slot][item] += 1
    kept = [slot for slot in SLOTS if slot_votes[slot] and 2 * slot_votes[slot] >= len(descriptions)]
    pieces = [slot for slot in ("upper", "lower") if slot in kept]
    if "full" in kept and pieces:  # a dress is worn instead of a top and a bottom: one side wins
        two_piece = max(slot_votes[slot] for slot in pieces)
        kept = [s for s in kept if s not in pieces] if slot_votes["full"] >= two_piece else [s for s in kept if s != "full"]
    return [min(item_votes[slot].items(), key=lambda kv: (-kv[1], kv[0].colour is None, kv[0].text))[0] for slot in kept]


def prompt_from_items(items: list[str]) -> str:
    """The paper's final prompt: items lower-cased, commas dropped, whitespace collapsed,
    items of two characters or fewer left out, joined by spaces."""
    cleaned = (" ".join(item.lower().replace(",", "").split()) for item in items)
    return " ".join(item for item in cleaned if len(item) > 2)
