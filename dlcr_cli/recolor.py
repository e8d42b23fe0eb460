"""Weight-free recolouring: the `inpaint --backend recolor` stand-in for diffusion.

Given a person image, its human-parsing label map and a target clothing id's prompt
("black shirt orange skirt brown shoes"), each garment region takes the prompt's colour
for its slot while keeping its own shading, folds and stripes; identity and background
pixels are never touched. This is the DLCR paper's Figure 1 baseline: new clothes
colours, same person.
"""

from __future__ import annotations

import numpy as np

from dlcr_cli.clothing import COLOURS, GARMENT_SLOTS, garment_label_ids, parse_items
from dlcr_cli.labels import LABEL_SETS

RGB = tuple[int, int, int]

# COLOUR_WORDS hues that are not COLOURS names, so an LLM's "beige chinos" recolours.
EXTRA_COLOURS: dict[str, RGB] = {
    "beige": (220, 200, 160), "tan": (200, 160, 110), "khaki": (190, 175, 120),
    "maroon": (120, 25, 40), "burgundy": (128, 20, 50), "olive": (110, 115, 40),
    "teal": (20, 128, 128), "cyan": (40, 200, 220), "turquoise": (50, 200, 190),
    "gold": (215, 170, 40), "golden": (215, 170, 40), "silver": (192, 192, 196),
    "cream": (245, 235, 205), "ivory": (245, 240, 220), "violet": (140, 80, 200),
    "lavender": (190, 165, 225), "magenta": (210, 40, 160), "indigo": (60, 40, 130),
    "charcoal": (55, 58, 62), "coral": (245, 120, 100), "peach": (250, 190, 150),
    "mint": (160, 225, 180), "mustard": (205, 160, 30), "camel": (190, 145, 90),
    "crimson": (185, 20, 50), "lilac": (200, 160, 210), "rust": (170, 75, 30),
    "gray": COLOURS["grey"],
}  # fmt: skip
_HUES: dict[str, RGB] = {**COLOURS, **EXTRA_COLOURS}

# Modifier -> blend weight: "light blue" is blue a little nearer white.
_LIGHTER = {"light": 0.3, "pale": 0.35, "pastel": 0.4, "baby": 0.3, "sky": 0.25}
_DARKER = {"dark": 0.4, "deep": 0.3}
_DULLER = {"faded": 0.3, "muted": 0.3, "dusty": 0.3}

FALLBACKS: dict[str, tuple[str, ...]] = {
    "upper": ("upper", "outer", "full"),
    "outer": ("outer", "upper", "full"),
    "full": ("full", "upper", "outer"),
    "lower": ("lower", "full"),
    "shoes": ("shoes",),
    "hat": ("hat",),
    "scarf": ("scarf",),
}
"""Source garment slot -> the prompt slots its colour may come from, in order of
preference: a top, coat or dress stands in for another torso garment; a bottom only for
a dress."""

PEDESTAL = 40.0
"""Added to luminance before shading ratios are taken (0..255 scale). Small against a
light garment, so its shading transfers almost exactly; on a black one it damps the
sensor noise that a bare ratio would blow up, and keeps the ratio defined at 0."""

_LUMA = np.array([0.299, 0.587, 0.114])


def phrase_rgb(phrase: str) -> RGB | None:
    """RGB of a colour phrase ("light blue", "navy blue"); None without a known hue.

    The hue is the last known colour word ("navy" wins, as "navy blue" is navy); light,
    pale and similar modifiers blend it towards white, dark and deep towards black,
    faded and muted towards grey.
    """
    words = phrase.lower().replace("-", " ").split()
    hues = [w for w in words if w in _HUES]
    if not hues:
        return None
    rgb = np.asarray(_HUES["navy" if "navy" in hues else hues[-1]], float)
    for word in words:
        if word in _LIGHTER:
            rgb += (255 - rgb) * _LIGHTER[word]
        elif word in _DARKER:
            rgb *= 1 - _DARKER[word]
        elif word in _DULLER:
            rgb += (rgb @ _LUMA - rgb) * _DULLER[word]
    return tuple(int(round(v)) for v in np.clip(rgb, 0, 255))


def target_colours(prompt: str) -> dict[str, RGB]:
    """Slot -> RGB of the prompt's coloured items; the first item of a slot wins, items
    whose colour is missing or unknown ("multicoloured", "denim jacket") are skipped."""
    colours: dict[str, RGB] = {}
    for item in parse_items(prompt):
        rgb = phrase_rgb(item.colour) if item.colour else None
        if rgb is not None and item.slot not in colours:
            colours[item.slot] = rgb
    return colours


def recolour(
    image: np.ndarray,
    label_map: np.ndarray,
    labels: str,
    prompt: str,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """The image with each garment region in the prompt's colour for it (see FALLBACKS).

    mask (H x W uint8): 255 where pixels may be repainted, 0 where they must stay
    (values between blend); None lets every garment label be repainted. Pixels outside
    the mask, outside garment regions, or in a garment the prompt gives no colour stay
    byte-identical.
    """
    image, label_map = _check(image, label_map, labels, mask)
    weight = np.ones(label_map.shape) if mask is None else _weights(np.asarray(mask))
    targets = target_colours(prompt)
    out = image.copy()
    for garment, ids in garment_label_ids(labels).items():
        rgb = _target_for(GARMENT_SLOTS[garment], targets)
        region = np.isin(label_map, ids)
        repaint = region & (weight > 0)
        if rgb is None or not repaint.any():
            continue
        # The reference luminance is the whole garment's, masked or not; the repainted
        # pixels are a subset of the region's, in the same (row-major) order.
        painted = shade_transfer(image[region], rgb)[weight[region] > 0]
        out[repaint] = _blend(image[repaint], painted, weight[repaint])
    return out


def shade_transfer(pixels: np.ndarray, rgb: RGB) -> np.ndarray:
    """Pixels ((N, 3) uint8, one garment) recoloured to `rgb`, keeping relative shading.

    Shading, folds, stripes and lighting multiply a garment's colour, so each pixel gets
    the luminance of `rgb` x (its luminance / the region's median luminance): the median
    pixel becomes exactly `rgb` (so the garment is named as the prompt says) and every
    other one keeps its brightness relative to it. PEDESTAL keeps the ratio robust on
    black garments; highlights beyond the target's headroom roll off towards white.
    """
    luma = pixels.astype(float) @ _LUMA
    ratio = (luma + PEDESTAL) / (np.median(luma) + PEDESTAL)
    target = np.maximum(np.asarray(rgb, float), 1.0)  # a hue even for pure black
    base = float(target @ _LUMA)
    return _with_luma(target, _roll_off(base * ratio, base))


def _target_for(slot: str, targets: dict[str, RGB]) -> RGB | None:
    return next((targets[s] for s in FALLBACKS[slot] if s in targets), None)


def _roll_off(luma: np.ndarray, base: float) -> np.ndarray:
    """Luma above the target's own rises ever slower towards 255 (slope 1 at `base`),
    so a light stripe on a black shirt still shows on a white one instead of clipping
    flat."""
    room = max(255.0 - base, 1e-6)
    out = luma.copy()
    high = luma > base
    out[high] = 255.0 - room * np.exp(-(luma[high] - base) / room)
    return out


def _with_luma(target: np.ndarray, luma: np.ndarray) -> np.ndarray:
    """Colours of the target's hue with the given luma: the target scaled while no
    channel clips, beyond that its brightest version mixed towards white (as highlights
    go), so the hue never shifts the way per-channel clipping shifts it."""
    base = float(target @ _LUMA)
    peak = target * (255.0 / target.max())
    peak_luma = float(peak @ _LUMA)
    out = target * (luma / base)[:, None]
    over = luma > peak_luma
    whiteness = (luma[over] - peak_luma) / max(255.0 - peak_luma, 1e-6)
    out[over] = peak + (255.0 - peak) * whiteness[:, None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _weights(mask: np.ndarray) -> np.ndarray:
    """Repaint weight 0..1 per pixel: a bool mask as is, a uint8 one over 255."""
    if mask.dtype == bool:
        return mask.astype(float)
    return np.clip(mask.astype(float) / 255.0, 0.0, 1.0)


def _blend(source: np.ndarray, painted: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Soft-mask blend of (N, 3) pixels; weight 1 gives the painted bytes exactly."""
    mixed = source + (painted.astype(float) - source) * weight[:, None]
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def _check(
    image: np.ndarray, label_map: np.ndarray, labels: str, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    if labels not in LABEL_SETS:
        raise ValueError(
            f"unknown label set {labels!r}; expected one of {', '.join(LABEL_SETS)}"
        )
    image, label_map = np.asarray(image), np.asarray(label_map)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be H x W x 3 uint8 (RGB), got {image.dtype} {image.shape}"
        )
    size = image.shape[:2]
    for name, array in (("label map", label_map), ("mask", mask)):
        if array is not None and np.shape(array) != size:
            raise ValueError(
                f"image is {size[1]}x{size[0]} (width x height) but its {name} has "
                f"shape {np.shape(array)}; it must be ({size[0]}, {size[1]})"
            )
    return image, label_map
