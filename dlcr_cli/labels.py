"""Human-parsing label sets (LIP, ATR), the clothing-mask policy's vocabulary, and palettes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

LIP = (
    "background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat",
    "socks", "pants", "jumpsuits", "scarf", "skirt", "face", "left-arm", "right-arm",
    "left-leg", "right-leg", "left-shoe", "right-shoe",
)  # fmt: skip
"""LIP labels (20), as SCHP writes them."""

ATR = (
    "background", "hat", "hair", "sunglasses", "upper-clothes", "skirt", "pants", "dress",
    "belt", "left-shoe", "right-shoe", "face", "left-leg", "right-leg", "left-arm",
    "right-arm", "bag", "scarf",
)  # fmt: skip
"""ATR labels (18), as the SegFormer "clothes" fine-tunes on the hub predict them."""

LABEL_SETS: dict[str, tuple[str, ...]] = {"lip": LIP, "atr": ATR}

GROUPS: dict[str, tuple[str, ...]] = {
    "arms": ("left-arm", "right-arm"),
    "legs": ("left-leg", "right-leg"),
    "shoes": ("left-shoe", "right-shoe"),
    "gloves": ("glove",),
}
"""Names that stand for several labels in a mask policy."""

DEFAULT_KEEP = ("background", "hat", "hair", "face", "arms", "legs")
"""docs/method.md (mask): identity and background are kept; every other label is repainted."""

_ALIASES = {"upperclothes": "upper-clothes", "jumpsuit": "jumpsuits", "gloves": "glove"}


def vocabulary() -> list[str]:
    """Every name a mask policy may use: labels of both sets and the group names."""
    return sorted(set(LIP) | set(ATR) | set(GROUPS))


def unknown_names(names: Iterable[str]) -> list[str]:
    known = set(vocabulary())
    return [n for n in names if n not in known]


def label_ids(labels: str, names: Iterable[str]) -> list[int]:
    """Ids, in label set `labels`, of the labels `names` denote (groups expanded).

    A name the set lacks (ATR has no "coat") selects nothing: one policy serves both sets.
    """
    wanted: set[str] = set()
    for name in names:
        wanted.update(GROUPS.get(name, (name,)))
    return [i for i, label in enumerate(LABEL_SETS[labels]) if label in wanted]


def normalize_label_name(name: str) -> str:
    flat = name.strip().lower().replace("_", "-").replace(" ", "-")
    return _ALIASES.get(flat.replace("-", ""), _ALIASES.get(flat, flat))


def identify_label_set(id2label: Mapping[int, str]) -> str | None:
    """Which label set a segmentation model predicts, from its config's id2label."""
    names = tuple(normalize_label_name(id2label[i]) for i in sorted(id2label))
    for key, labels in LABEL_SETS.items():
        if names == labels:
            return key
    generic = all(n.startswith("label-") for n in names)  # config saved without names
    if generic:
        return {len(LIP): "lip", len(ATR): "atr"}.get(len(names))
    return None


def guess_label_set(present: Sequence[set[int]]) -> str | None:
    """Guess LIP or ATR from the label ids present in a sample of label maps.

    LIP ids reach 19 (18, 19 are shoes, in nearly every full-body crop); ATR stops at 17.
    Without 18/19, ATR is likely when most maps hold id 11 (ATR face, LIP scarf, which is
    rare). Otherwise there is no telling, and the caller asks the user.
    """
    if not present:
        return None
    if any(ids & {18, 19} for ids in present):
        return "lip"
    if sum(11 in ids for ids in present) * 2 >= len(present):
        return "atr"
    return None


def voc_palette() -> list[int]:
    """A flat 256-entry RGB palette for "P" mode label PNGs (PASCAL VOC's, as SCHP uses)."""
    flat: list[int] = []
    for i in range(256):
        r = g = b = 0
        c, bit = i, 7
        while c:
            r |= (c & 1) << bit
            g |= ((c >> 1) & 1) << bit
            b |= ((c >> 2) & 1) << bit
            c >>= 3
            bit -= 1
        flat.extend((r, g, b))
    return flat
