"""A procedural clothes-changing re-id dataset in the LTCC layout, for the demo and the tests.

`synthesize(out)` draws little front-facing people: identity lives in small cues outside the
clothes (skin tone, hair colour and style, height and build, face detail, a hat or sunglasses
for some), while each person wears 2-4 outfits whose garments and colours come from one
palette shared by everyone, so clothes are a large, tempting but useless shortcut - as in
real CC-ReID data. Every (person, outfit) is seen by every camera; cameras differ in
background, lighting and where the person stands in the frame.

Each image's LIP label map is drawn first and the image is coloured from it, so
`out/parsing/<split>/<stem>.png` is exact. Every random draw comes from a generator seeded by
(seed, what it is for, ids...), so the output is byte-identical for a seed, independent of
drawing order, and growing `ids`/`cameras`/`per` keeps the people already drawn unchanged.

`style="realistic"` (opt-in; the default "flat" output is unchanged) draws outfits as real
clothes are: garment colours from a continuous range (some near the named ones), a texture
per top and bottom (plain, horizontal or vertical stripes, checks, dots, a seeded print)
drawn inside the garment's own label region in body coordinates (so an outfit looks the
same in all its images up to pose and camera, and the label maps stay exact), an open coat
over the top for some outfits (LIP 'coat', the top showing between its fronts as
'upper-clothes'), and a per-camera white balance gain on the whole image. outfits.json then
also records every garment's RGB, nearest named colour and texture parameters, and
cameras.json each camera's white balance.
"""

from __future__ import annotations

import colorsys
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dlcr_cli.clothing import COLOURS as PALETTE
from dlcr_cli.clothing import colour_name
from dlcr_cli.errors import UsageError
from dlcr_cli.io import save_label_map
from dlcr_cli.labels import LIP

LABEL = {name: i for i, name in enumerate(LIP)}

SPLITS = ("train", "query", "test")
NAME_PATTERN = re.compile(r"^\d{3}_\d+_c\d+_\d{3}\.png$")

# Identity cues: (light .. dark) skin tones and natural hair colours, jittered per person.
SKIN_TONES = (
    (241, 206, 180), (224, 172, 138), (198, 140, 100), (160, 105, 70), (110, 72, 48), (80, 52, 36),
)
HAIR_COLOURS = (
    (28, 24, 22), (62, 40, 26), (105, 68, 38), (205, 172, 105), (150, 62, 32), (182, 182, 176),
)
HAIR_STYLES = ("short", "long", "bald", "bun")
HAT_STYLES = ("cap", "beanie")
STYLES = ("flat", "realistic")
TEXTURES = ("plain", "h-stripes", "v-stripes", "checks", "dots", "print")

# Seed-stream tags, so that e.g. person 3 and camera 3 never share random numbers.
_PERSON, _OUTFITS, _CAMERA, _FRAME, _QUERY, _REAL_OUTFITS, _WHITE = range(7)


@dataclass(frozen=True)
class Person:
    pid: int
    skin: tuple[int, int, int]
    hair_colour: tuple[int, int, int]
    hair_style: str
    hat: tuple[str, str] | None  # (style, palette colour): part of the identity, not of an outfit
    sunglasses: bool
    beard: bool
    height: float  # of the camera's reference height
    shoulders: float  # build multipliers
    hips: float
    head: float


@dataclass(frozen=True)
class Outfit:
    upper: tuple[str, str]  # (LIP garment, palette colour); a dress replaces upper + lower
    lower: tuple[str, str] | None
    shoes: str
    pattern: str  # "plain" | "stripes"
    sleeves: str  # "short" | "long" | "none"

    def as_json(self) -> dict:
        return {
            "upper": list(self.upper),
            "lower": list(self.lower) if self.lower else None,
            "shoes": ["shoes", self.shoes],
            "pattern": self.pattern,
        }


def _name(rgb) -> str:
    """The named colour (clothing.COLOURS) nearest to an RGB triple."""
    return colour_name(np.asarray([rgb], np.uint8))


@dataclass(frozen=True)
class Texture:
    """A garment's pattern (realistic style), in body coordinates: x from the body's centre
    line and y from its shoulders, both in units of the body height."""

    kind: str  # one of TEXTURES
    rgb: tuple[int, int, int] = (0, 0, 0)  # the pattern's colour
    scale: float = 0.0  # the pattern's period, of the body height
    phase: tuple[float, float] = (0.0, 0.0)  # (x, y) offsets, of the period
    duty: float = 0.0  # stripes: share of the period in the pattern colour; dots: diameter
    seed: int = 0  # print: the motif's seed

    def as_json(self) -> dict:
        if self.kind == "plain":
            return {"kind": "plain"}
        return {
            "kind": self.kind, "rgb": list(self.rgb), "colour": _name(self.rgb), "scale": round(self.scale, 4),
            "phase": [round(v, 4) for v in self.phase], "duty": round(self.duty, 4), "seed": self.seed,
        }  # fmt: skip


PLAIN = Texture("plain")


@dataclass(frozen=True)
class Garment:
    label: str  # LIP name
    rgb: tuple[int, int, int]
    texture: Texture = PLAIN

    def as_json(self) -> dict:
        return {"garment": self.label, "rgb": list(self.rgb), "colour": _name(self.rgb),
                "texture": self.texture.as_json()}  # fmt: skip


@dataclass(frozen=True)
class RealOutfit:
    """A realistic-style outfit: a top (upper-clothes or dress), maybe an open coat over it."""

    top: Garment
    lower: Garment | None
    coat: Garment | None
    shoes: Garment
    sleeves: str  # "short" | "long" | "none"; a coat's sleeves are long

    def garments(self) -> list[Garment]:
        return [g for g in (self.top, self.lower, self.coat, self.shoes) if g]

    def as_json(self) -> dict:
        def pair(g: Garment | None):
            return [g.label, _name(g.rgb)] if g else None

        return {
            "upper": pair(self.top), "lower": pair(self.lower), "coat": pair(self.coat),
            "shoes": ["shoes", _name(self.shoes.rgb)], "pattern": self.top.texture.kind,
            "sleeves": self.sleeves,
            "garments": {
                "upper": self.top.as_json(), "lower": self.lower.as_json() if self.lower else None,
                "coat": self.coat.as_json() if self.coat else None, "shoes": {**self.shoes.as_json(), "garment": "shoes"},
            },
        }  # fmt: skip


@dataclass(frozen=True)
class Camera:
    background: np.ndarray  # (H, W, 3) float
    light: np.ndarray  # (3,) multiplier: brightness times colour cast
    scale: float  # person height / image height for a person of height 1
    x_offset: float  # of the image width
    feet: float  # feet row, of the image height
    noise: float  # pixel noise sigma
    white: np.ndarray | None = None  # (3,) white balance gain on the whole image (realistic style)


@dataclass(frozen=True)
class Body:
    """Where the parts of one person fall in one frame (pixels)."""

    cx: float
    top: float
    h: float
    head_w: float
    head_h: float
    shoulder_y: float
    shoulder_w: float  # half widths
    hip_y: float
    hip_w: float
    arm_angles: tuple[float, float]  # radians outward from vertical: (image left, image right)
    stride: float


@dataclass
class SynthSummary:
    path: Path
    ids: int
    train_ids: int
    test_ids: int
    outfits: int  # (person, outfit) pairs over all ids
    cameras: int
    counts: dict[str, int] = field(default_factory=dict)  # images per split

    @property
    def images(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {
            "path": str(self.path), "ids": self.ids, "train_ids": self.train_ids,
            "test_ids": self.test_ids, "outfits": self.outfits, "cameras": self.cameras,
            "counts": dict(self.counts), "images": self.images,
        }  # fmt: skip

    def __str__(self) -> str:
        per_split = ", ".join(f"{s} {n}" for s, n in self.counts.items())
        return (
            f"{self.images} images ({per_split}) of {self.ids} ids "
            f"({self.train_ids} train, {self.test_ids} test), {self.outfits} outfits, "
            f"{self.cameras} cameras in {self.path}"
        )


def synthesize(
    out: Path,
    *,
    ids: int = 24,
    outfits: tuple[int, int] | int = (2, 4),
    cameras: int = 4,
    per: int = 2,
    height: int = 128,
    width: int = 64,
    seed: int = 0,
    query_fraction: float = 0.25,
    style: str = "flat",
) -> SynthSummary:
    """Write the dataset under `out` and return what was written.

    ids: people; the first ids//2 are train, the rest give query and gallery.
    outfits: (min, max) outfits per person, drawn per person; an int means exactly that many.
    per: frames per (person, outfit, camera).
    query_fraction: share of the cameras whose frame 0 of each test (person, outfit) goes to
      query/ (at least 1, at most cameras-1, the same cameras for all of a person's outfits);
      the default gives exactly one query per test (person, outfit) for up to 7 cameras.
    Existing files are overwritten; stale `<pid>_<clothes>_c<cam>_<frame>.png` files in the
    split folders (from an earlier, larger run) are removed so the folder holds this dataset only.
    style: "flat" (named palette colours, plain or thinly striped garments) or "realistic"
      (continuous colours, textures, open coats over tops, per-camera white balance).
    """
    lo, hi = _check(ids, outfits, cameras, per, height, width, seed, query_fraction)
    if style not in STYLES:
        raise UsageError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    realistic = style == "realistic"
    out = Path(out)
    people = [make_person(seed, pid) for pid in range(1, ids + 1)]
    dress = make_real_outfits if realistic else make_outfits
    wardrobe = {p.pid: dress(seed, p.pid, lo, hi) for p in people}
    cams = [make_camera(seed, c, height, width) for c in range(1, cameras + 1)]
    if realistic:
        cams = [replace(cam, white=white_balance(seed, c)) for c, cam in enumerate(cams, start=1)]
    n_train = ids // 2
    counts = dict.fromkeys(SPLITS, 0)
    written: set[Path] = set()
    for person in people:
        queries = query_cameras(seed, person.pid, cameras, query_fraction)
        for k, outfit in enumerate(wardrobe[person.pid], start=1):
            for c, camera in enumerate(cams, start=1):
                for frame in range(per):
                    split = _split(person.pid, n_train, c, frame, queries)
                    stem = f"{person.pid:03d}_{k}_c{c}_{frame:03d}"
                    rng = _rng(seed, _FRAME, person.pid, k, c, frame)
                    image, labels = render(person, outfit, camera, rng, height, width)
                    written |= _save(out, split, stem, image, labels)
                    counts[split] += 1
    _remove_stale(out, written)
    _write_json(out / "outfits.json", {f"{pid:03d}": _wardrobe_json(w) for pid, w in wardrobe.items()})
    _write_json(out / "people.json", {f"{p.pid:03d}": _person_json(p, p.pid <= n_train) for p in people})
    if realistic:
        white = {str(c): {"white_balance": [round(float(g), 4) for g in cam.white]} for c, cam in enumerate(cams, 1)}
        _write_json(out / "cameras.json", white)
    else:
        (out / "cameras.json").unlink(missing_ok=True)  # from an earlier realistic run
    options = (ids, lo, hi, cameras, per, height, width, seed, query_fraction)
    (out / "README.txt").write_text(_readme(*options) + (_REALISTIC_README if realistic else ""))
    n_outfits = sum(map(len, wardrobe.values()))
    return SynthSummary(out, ids, n_train, ids - n_train, n_outfits, cameras, counts)


def _check(ids, outfits, cameras, per, height, width, seed, query_fraction) -> tuple[int, int]:
    bounds = (outfits, outfits) if isinstance(outfits, int) else tuple(outfits)
    if len(bounds) != 2:
        raise UsageError(f"outfits must be a number or (min, max), got {outfits!r}")
    lo, hi = bounds
    problems = [
        (ids < 2, f"ids must be at least 2 (train and test), got {ids}"),
        (not 2 <= lo <= hi <= 50, f"outfits must be 2 <= min <= max <= 50, got {lo}..{hi}"),
        (not 2 <= cameras <= 99, f"cameras must be 2..99 (a query needs another camera), got {cameras}"),
        (not 1 <= per <= 1000, f"per must be 1..1000 (3-digit frame numbers), got {per}"),
        (ids > 999, f"ids must be at most 999 (3-digit person ids), got {ids}"),
        (height < 48 or width < 24, f"image size must be at least 48x24, got {height}x{width}"),
        (seed < 0, f"seed must be >= 0, got {seed}"),
        (not 0.0 <= query_fraction <= 1.0, f"query_fraction must be in [0, 1], got {query_fraction}"),
    ]  # fmt: skip
    for bad, message in problems:
        if bad:
            raise UsageError(message)
    return lo, hi


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _split(pid: int, n_train: int, cam: int, frame: int, queries: tuple[int, ...]) -> str:
    if pid <= n_train:
        return "train"
    return "query" if frame == 0 and cam in queries else "test"


def query_cameras(seed: int, pid: int, cameras: int, query_fraction: float) -> tuple[int, ...]:
    """The cameras whose frame 0 is a query. Same for all of a person's outfits, so that with
    per=1 every query still has same- and different-clothes gallery images in other cameras."""
    n = min(cameras - 1, max(1, math.floor(query_fraction * cameras)))
    chosen = _rng(seed, _QUERY, pid).permutation(cameras)[:n] + 1
    return tuple(sorted(int(c) for c in chosen))


# ---------------------------------------------------------------- people, outfits, cameras


def _jitter(rng: np.random.Generator, rgb, spread: float) -> tuple[int, int, int]:
    values = np.asarray(rgb, float) * (1 + rng.uniform(-spread, spread)) + rng.normal(0, 6, 3)
    return tuple(int(v) for v in np.clip(values, 0, 255))


def make_person(seed: int, pid: int) -> Person:
    rng = _rng(seed, _PERSON, pid)
    has_hat = rng.random() < 0.25
    return Person(
        pid=pid,
        skin=_jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 0.06),
        hair_colour=_jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 0.1),
        hair_style=str(rng.choice(HAIR_STYLES, p=[0.4, 0.3, 0.15, 0.15])),
        hat=(str(rng.choice(HAT_STYLES)), str(rng.choice(list(PALETTE)))) if has_hat else None,
        sunglasses=bool(rng.random() < 0.2),
        beard=bool(rng.random() < 0.2),
        height=float(rng.uniform(0.86, 1.0)),
        shoulders=float(rng.uniform(0.82, 1.2)),
        hips=float(rng.uniform(0.85, 1.15)),
        head=float(rng.uniform(0.9, 1.12)),
    )


def make_outfits(seed: int, pid: int, lo: int, hi: int) -> list[Outfit]:
    """A person's outfits; each has an upper colour the person's other outfits do not."""
    rng = _rng(seed, _OUTFITS, pid)
    count = int(rng.integers(lo, hi + 1))
    colours = list(PALETTE)
    uppers = [colours[i] for i in rng.permutation(len(colours))]
    uppers = (uppers * (count // len(colours) + 1))[:count]  # repeats only past 12 outfits
    return [_outfit(rng, upper_colour, colours) for upper_colour in uppers]


def _outfit(rng: np.random.Generator, upper_colour: str, colours: list[str]) -> Outfit:
    kind = str(rng.choice(["upper-clothes", "coat", "dress"], p=[0.55, 0.27, 0.18]))
    others = [c for c in colours if c != upper_colour]
    lower = None
    if kind != "dress":
        lower = (str(rng.choice(["pants", "skirt"], p=[0.72, 0.28])), str(rng.choice(others)))
    sleeves = {"coat": "long", "dress": "none"}.get(kind) or str(rng.choice(["short", "long"]))
    return Outfit(
        upper=(kind, upper_colour),
        lower=lower,
        shoes=str(rng.choice(colours)),
        pattern="stripes" if kind != "coat" and rng.random() < 0.25 else "plain",
        sleeves=sleeves,
    )


def make_camera(seed: int, cam: int, height: int, width: int) -> Camera:
    rng = _rng(seed, _CAMERA, cam)
    cast = 1 + rng.uniform(-0.04, 0.04, 3)
    return Camera(
        background=_background(rng, height, width),
        light=rng.uniform(0.84, 1.1) * cast / cast.mean(),
        scale=float(rng.uniform(0.8, 0.93)),
        x_offset=float(rng.uniform(-0.07, 0.07)),
        feet=float(rng.uniform(0.95, 0.985)),
        noise=float(rng.uniform(2.0, 5.0)),
    )


def white_balance(seed: int, cam: int) -> np.ndarray:
    """A camera's white balance (realistic style): an RGB gain, warm or cool (red against
    blue) with a little green/magenta tint, mean 1. Its own seed stream, so the camera's
    other properties are those of the flat style."""
    rng = _rng(seed, _WHITE, cam)
    warmth, tint = rng.uniform(-0.14, 0.14), rng.uniform(-0.05, 0.05)
    gain = np.array([1 + warmth, 1 + tint, 1 - warmth])
    return gain / gain.mean()


def make_real_outfits(seed: int, pid: int, lo: int, hi: int) -> list[RealOutfit]:
    """A person's realistic-style outfits; each top's colour is far from the person's other tops."""
    rng = _rng(seed, _REAL_OUTFITS, pid)
    count = int(rng.integers(lo, hi + 1))
    tops: list[np.ndarray] = []
    outfits = []
    for _ in range(count):
        for _attempt in range(30):  # rejection: another outfit of the same person looks different
            rgb = _garment_colour(rng)
            if all(np.abs(np.subtract(rgb, t)).sum() > 90 for t in tops):
                break
        tops.append(np.asarray(rgb))
        outfits.append(_real_outfit(rng, rgb))
    return outfits


_TOP_TEXTURES = (0.34, 0.17, 0.1, 0.13, 0.11, 0.15)  # probabilities over TEXTURES
_LOWER_TEXTURES = (0.62, 0.04, 0.1, 0.14, 0.03, 0.07)
_COAT_TEXTURES = (0.75, 0.0, 0.0, 0.25, 0.0, 0.0)


def _real_outfit(rng: np.random.Generator, top_rgb: tuple[int, int, int]) -> RealOutfit:
    kind = "dress" if rng.random() < 0.18 else "upper-clothes"
    top = Garment(kind, top_rgb, _texture(rng, top_rgb, _TOP_TEXTURES))
    lower = coat = None
    if kind != "dress":
        rgb = _garment_colour(rng)
        lower = Garment(str(rng.choice(["pants", "skirt"], p=[0.72, 0.28])), rgb, _texture(rng, rgb, _LOWER_TEXTURES))
        if rng.random() < 0.35:
            rgb = _garment_colour(rng)
            coat = Garment("coat", rgb, _texture(rng, rgb, _COAT_TEXTURES))
    shoes = Garment("left-shoe", _garment_colour(rng, dark=True))
    sleeves = "none" if kind == "dress" else "long" if coat else str(rng.choice(["short", "long"]))
    return RealOutfit(top=top, lower=lower, coat=coat, shoes=shoes, sleeves=sleeves)


def _garment_colour(rng: np.random.Generator, dark: bool = False) -> tuple[int, int, int]:
    """A colour from a continuous range: near a named colour (30%), a neutral grey/black/white
    with a slight tint (20%), or any hue with moderate to full saturation (50%); `dark` pulls
    towards shoe colours."""
    r = rng.random()
    if r < 0.3:
        rgb = _jitter(rng, PALETTE[str(rng.choice(list(PALETTE)))], 0.08)
    elif r < 0.5:
        level = rng.uniform(18, 240)
        rgb = tuple(int(v) for v in np.clip(level * (1 + rng.normal(0, 0.04, 3)), 0, 255))
    else:
        hue, sat, val = rng.random(), rng.uniform(0.25, 0.95), rng.uniform(0.2, 0.95)
        rgb = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val))
    if dark:
        rgb = tuple(int(v * 0.6) for v in rgb)
    return rgb


def _texture(rng: np.random.Generator, base, probabilities) -> Texture:
    kind = str(rng.choice(TEXTURES, p=probabilities))
    if kind == "plain":
        return PLAIN
    if rng.random() < 0.5:  # a darker or lighter shade of the garment, or another colour
        b = np.asarray(base, float)
        shade = b * 0.45 if b.mean() > 90 else b + (255 - b) * 0.5
        rgb = tuple(int(v) for v in shade)
    else:
        rgb = _garment_colour(rng)
    low, high = {"h-stripes": (0.025, 0.06), "v-stripes": (0.025, 0.06), "checks": (0.04, 0.09),
                 "dots": (0.045, 0.08), "print": (0.03, 0.06)}[kind]  # fmt: skip
    return Texture(
        kind=kind, rgb=rgb, scale=float(rng.uniform(low, high)),
        phase=(float(rng.random()), float(rng.random())), duty=float(rng.uniform(0.3, 0.5)),
        seed=int(rng.integers(2**31)),
    )  # fmt: skip


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A wall with a vertical gradient over a floor, blotchy noise, and one of: floor tiles,
    wall bricks, wall panels, or nothing."""
    wall_top, wall_low, floor = (_muted(rng) for _ in range(3))
    ys = np.linspace(0, 1, height)[:, None, None]
    image = wall_top * (1 - ys) + wall_low * ys + np.zeros((1, width, 3))
    horizon = int(height * rng.uniform(0.5, 0.72))
    image[horizon:] = floor * (1 - 0.25 * ys[horizon:])
    coarse = rng.uniform(-1, 1, (height // 10 + 2, width // 10 + 2)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    image *= 1 + 0.12 * blotches[..., None]
    yy, xx = np.mgrid[0:height, 0:width]
    step = int(rng.integers(6, 14))
    texture = rng.choice(["tiles", "bricks", "panels", "plain"])
    if texture == "tiles":
        lines = ((yy % step == 0) | (xx % step == 0)) & (yy >= horizon)
    elif texture == "bricks":
        lines = ((yy % step == 0) | ((xx + (yy // step % 2) * step) % (2 * step) == 0)) & (yy < horizon)
    elif texture == "panels":
        lines = (xx % (2 * step) < 2) & (yy < horizon)
    else:
        lines = yy == horizon
    image[lines] *= 0.78
    return image


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A background colour: random hue pulled towards grey so people stand out a little."""
    return 0.6 * rng.uniform(30, 230, 3) + 0.4 * rng.uniform(60, 200)


# ---------------------------------------------------------------- one frame


def render(
    person: Person, outfit: Outfit, camera: Camera, rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, LIP label map uint8) for one frame."""
    body = pose(person, camera, rng, height, width)
    labels = draw_labels(body, person, outfit, height, width)
    return colour(labels, body, person, outfit, camera, rng), labels


def pose(person: Person, camera: Camera, rng: np.random.Generator, height: int, width: int) -> Body:
    """Body geometry: camera placement times the person's build, with per-frame jitter."""
    h = height * camera.scale * person.height * rng.uniform(0.975, 1.025)
    feet = height * camera.feet + rng.uniform(-1.5, 1.5)
    top = feet - h
    head_h = 0.135 * h * person.head
    return Body(
        cx=width * (0.5 + camera.x_offset + rng.uniform(-0.03, 0.03)),
        top=top,
        h=h,
        head_w=head_h * 0.78,
        head_h=head_h,
        shoulder_y=top + 0.175 * h,
        shoulder_w=0.105 * h * person.shoulders,
        hip_y=top + 0.53 * h,
        hip_w=0.082 * h * person.hips,
        arm_angles=(float(rng.uniform(0.05, 0.3)), float(rng.uniform(0.05, 0.3))),
        stride=float(rng.uniform(-0.02, 0.04) * h),
    )


def draw_labels(body: Body, person: Person, outfit: Outfit | RealOutfit, height: int, width: int) -> np.ndarray:
    """The LIP label map, painted back to front."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    real = isinstance(outfit, RealOutfit)
    lower = (outfit.lower.label if outfit.lower else None) if real else (outfit.lower[0] if outfit.lower else None)
    _draw_legs(draw, body)
    if lower:
        _draw_lower(draw, body, lower)
    _draw_shoes(draw, body)
    if real:
        _draw_torso(draw, body, outfit.top.label)
        if outfit.coat:
            _draw_torso(draw, body, "coat")
            _draw_coat_opening(draw, body)
        _draw_arms(draw, body, outfit.sleeves, "coat" if outfit.coat else outfit.top.label)
    else:
        _draw_torso(draw, body, outfit.upper[0])
        _draw_arms(draw, body, outfit.sleeves, outfit.upper[0])
    _draw_head(draw, body, person)
    return np.asarray(canvas, dtype=np.uint8).copy()


def _leg_quads(body: Body, bottom: float = 0.955, widen: float = 0.0) -> list[tuple[int, list]]:
    """(label, polygon) of each leg down to `bottom` (of the body height), `widen` pixels wider
    on each side; the person's left is the image right (facing the camera)."""
    b, quads = body, []
    top_y, bottom_y = b.hip_y - 0.02 * b.h, b.top + bottom * b.h
    reach = (bottom_y - top_y) / (b.top + 0.955 * b.h - top_y)  # how far down the full leg
    for side, label in ((-1, LABEL["right-leg"]), (1, LABEL["left-leg"])):
        x_top = b.cx + side * b.hip_w * 0.5
        x_bot = x_top + side * b.stride * reach
        top_w, bot_w = b.hip_w * 0.55 + widen, 0.03 * b.h + widen
        quads.append((label, [(x_top - top_w, top_y), (x_top + top_w, top_y),
                              (x_bot + bot_w, bottom_y), (x_bot - bot_w, bottom_y)]))  # fmt: skip
    return quads


def _draw_legs(draw: ImageDraw.ImageDraw, body: Body) -> None:
    for label, quad in _leg_quads(body):
        draw.polygon(quad, fill=label)


def _draw_lower(draw: ImageDraw.ImageDraw, body: Body, garment: str) -> None:
    b = body
    waist = b.hip_y - 0.04 * b.h
    if garment == "skirt":
        hem, flare = b.top + 0.72 * b.h, b.hip_w * 1.45
        corners = [(b.cx - b.hip_w, waist), (b.cx + b.hip_w, waist), (b.cx + flare, hem), (b.cx - flare, hem)]
        draw.polygon(corners, fill=LABEL["skirt"])
        return
    for _, quad in _leg_quads(b, bottom=0.935, widen=0.5):  # pants stop just above the ankle
        draw.polygon(quad, fill=LABEL["pants"])
    draw.rectangle([b.cx - b.hip_w, waist, b.cx + b.hip_w, b.hip_y + 0.06 * b.h], fill=LABEL["pants"])


def _draw_shoes(draw: ImageDraw.ImageDraw, body: Body) -> None:
    b = body
    for (_, quad), label in zip(_leg_quads(b), (LABEL["right-shoe"], LABEL["left-shoe"])):
        x = (quad[2][0] + quad[3][0]) / 2
        half = 0.045 * b.h
        draw.ellipse([x - half, b.top + 0.935 * b.h, x + half, b.top + 1.0 * b.h], fill=label)


def _draw_torso(draw: ImageDraw.ImageDraw, body: Body, garment: str) -> None:
    b = body
    hem, flare = {
        "upper-clothes": (b.hip_y + 0.02 * b.h, 1.0),
        "coat": (b.top + 0.7 * b.h, 1.2),
        "dress": (b.top + 0.76 * b.h, 1.6),
    }[garment]
    shoulder_drop = b.shoulder_y + 0.035 * b.h
    draw.polygon(
        [
            (b.cx - b.shoulder_w * 0.8, b.shoulder_y), (b.cx + b.shoulder_w * 0.8, b.shoulder_y),
            (b.cx + b.shoulder_w, shoulder_drop), (b.cx + b.hip_w * 0.95, b.hip_y - 0.04 * b.h),
            (b.cx + b.hip_w * flare, hem), (b.cx - b.hip_w * flare, hem),
            (b.cx - b.hip_w * 0.95, b.hip_y - 0.04 * b.h), (b.cx - b.shoulder_w, shoulder_drop),
        ],
        fill=LABEL[garment],
    )  # fmt: skip


def _draw_coat_opening(draw: ImageDraw.ImageDraw, body: Body) -> None:
    """The open front of a coat: the top shows between its fronts, from the collar down to
    the top's hem (the coat is buttoned below)."""
    b = body
    collar, hem = b.shoulder_y - 0.005 * b.h, b.hip_y + 0.02 * b.h
    top_w, hem_w = b.shoulder_w * 0.34, b.shoulder_w * 0.16
    draw.polygon([(b.cx - top_w, collar), (b.cx + top_w, collar), (b.cx + hem_w, hem), (b.cx - hem_w, hem)],
                 fill=LABEL["upper-clothes"])  # fmt: skip


def _draw_arms(draw: ImageDraw.ImageDraw, body: Body, sleeves: str, garment_name: str) -> None:
    b = body
    length, w = 0.37 * b.h, 0.055 * b.h
    sleeve = {"short": 0.35, "long": 0.88, "none": 0.0}[sleeves]
    sides = ((-1, b.arm_angles[0], LABEL["right-arm"]), (1, b.arm_angles[1], LABEL["left-arm"]))
    garment = LABEL[garment_name]
    for side, angle, label in sides:
        joint = (b.cx + side * (b.shoulder_w - w * 0.5), b.shoulder_y + 0.03 * b.h)
        direction = (side * math.sin(angle), math.cos(angle))
        cap = [joint[0] - w * 0.6, joint[1] - w * 0.6, joint[0] + w * 0.6, joint[1] + w * 0.6]
        draw.polygon(_limb(joint, direction, length, w, w * 0.8), fill=label)
        draw.ellipse(cap, fill=label)  # a round shoulder, no gap between torso and arm
        if sleeve:
            draw.polygon(_limb(joint, direction, length * sleeve, w * 1.2, w * 1.05), fill=garment)
            draw.ellipse(cap, fill=garment)


def _limb(joint, direction, length, w0, w1) -> list[tuple[float, float]]:
    (x, y), (dx, dy) = joint, direction
    nx, ny = dy, -dx  # perpendicular
    ex, ey = x + dx * length, y + dy * length
    return [(x + nx * w0 / 2, y + ny * w0 / 2), (ex + nx * w1 / 2, ey + ny * w1 / 2),
            (ex - nx * w1 / 2, ey - ny * w1 / 2), (x - nx * w0 / 2, y - ny * w0 / 2)]  # fmt: skip


def _draw_head(draw: ImageDraw.ImageDraw, body: Body, person: Person) -> None:
    b, hair, face = body, LABEL["hair"], LABEL["face"]
    left, right, top, bottom = b.cx - b.head_w / 2, b.cx + b.head_w / 2, b.top, b.top + b.head_h
    w, h = b.head_w, b.head_h
    volume = w * 0.12
    if person.hair_style == "long":  # falls to below the shoulders, framing the neck
        draw.rectangle([left - volume, top + h * 0.3, right + volume, b.shoulder_y + 0.09 * b.h], fill=hair)
    draw.rectangle([b.cx - w * 0.22, bottom - 2, b.cx + w * 0.22, b.shoulder_y + 1], fill=face)  # neck
    if person.hair_style == "bun":
        draw.ellipse([b.cx - w * 0.25, top - h * 0.22, b.cx + w * 0.25, top + h * 0.2], fill=hair)
    draw.ellipse([left - volume, top - volume, right + volume, top + h * 0.75], fill=hair)
    hairline = {"short": 0.3, "long": 0.32, "bun": 0.28, "bald": 0.06}[person.hair_style]
    draw.ellipse([left, top + h * hairline, right, bottom], fill=face)
    if person.sunglasses:
        eyes = top + h * 0.52
        lenses = [left + w * 0.1, eyes - h * 0.07, right - w * 0.1, eyes + h * 0.07]
        draw.rectangle(lenses, fill=LABEL["sunglasses"])
    if person.hat:
        _draw_hat(draw, b, person.hat[0], volume)


def _draw_hat(draw: ImageDraw.ImageDraw, b: Body, style: str, volume: float) -> None:
    left, right, top, h = b.cx - b.head_w / 2 - volume, b.cx + b.head_w / 2 + volume, b.top - volume, b.head_h
    if style == "cap":  # crown and a peak to the side
        draw.pieslice([left, top, right, top + h * 0.7], 180, 360, fill=LABEL["hat"])
        draw.rectangle([left, top + h * 0.3, right + b.head_w * 0.25, top + h * 0.38], fill=LABEL["hat"])
    else:  # beanie: a rounder, deeper crown
        draw.ellipse([left, top - h * 0.12, right, top + h * 0.62], fill=LABEL["hat"])
        draw.rectangle([left, top + h * 0.2, right, top + h * 0.36], fill=LABEL["hat"])


def colour(
    labels: np.ndarray, body: Body, person: Person, outfit: Outfit | RealOutfit, camera: Camera,
    rng: np.random.Generator,
) -> np.ndarray:
    """Colour the image from its label map: flat region colours, cylinder shading, details,
    the camera's light and noise."""
    if isinstance(outfit, RealOutfit):
        return _colour_realistic(labels, body, person, outfit, camera, rng)
    height, width = labels.shape
    lut = _label_colours(person, outfit)
    image = lut[labels]
    person_mask = labels > 0
    yy, xx = np.mgrid[0:height, 0:width]
    shade = 1 - 0.2 * np.clip(((xx - body.cx) / (body.shoulder_w * 1.3)) ** 2, 0, 1)
    image[person_mask] *= shade[person_mask][:, None]
    if outfit.pattern == "stripes":
        _stripe(image, labels == LABEL[outfit.upper[0]], yy, body, PALETTE[outfit.upper[1]])
    if outfit.upper[0] == "coat":  # the open front tells a coat from a dress
        below_collar = yy > body.shoulder_y + 0.05 * body.h
        image[(labels == LABEL["coat"]) & (xx == round(body.cx)) & below_collar] *= 0.6
    _face_details(image, labels, yy, xx, body, person)
    image[~person_mask] = camera.background[~person_mask]
    image *= camera.light * rng.uniform(0.97, 1.03)
    image += rng.normal(0, camera.noise, image.shape)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _colour_realistic(
    labels: np.ndarray, body: Body, person: Person, outfit: RealOutfit, camera: Camera, rng: np.random.Generator
) -> np.ndarray:
    """Realistic style: garment colours and textures (each inside its garment's own label
    region), cylinder shading, details, the camera's light and noise, then its white balance."""
    height, width = labels.shape
    lut = _person_colours(person)
    for garment in outfit.garments():
        lut[LABEL[garment.label]] = garment.rgb
    lut[LABEL["left-shoe"]] = lut[LABEL["right-shoe"]] = outfit.shoes.rgb
    image = lut[labels]
    person_mask = labels > 0
    yy, xx = np.mgrid[0:height, 0:width]
    u, v = (xx - body.cx) / body.h, (yy - body.shoulder_y) / body.h  # body coordinates
    for garment in (outfit.top, outfit.lower, outfit.coat):
        if garment and garment.texture.kind != "plain":
            region = labels == LABEL[garment.label]
            image[region & texture_mask(garment.texture, u, v, body.h)] = garment.texture.rgb
    shade = 1 - 0.2 * np.clip(((xx - body.cx) / (body.shoulder_w * 1.3)) ** 2, 0, 1)
    image[person_mask] *= shade[person_mask][:, None]
    _face_details(image, labels, yy, xx, body, person)
    image[~person_mask] = camera.background[~person_mask]
    image *= camera.light * rng.uniform(0.97, 1.03)
    image += rng.normal(0, camera.noise, image.shape)
    if camera.white is not None:
        image *= camera.white
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def texture_mask(texture: Texture, u: np.ndarray, v: np.ndarray, body_h: float) -> np.ndarray:
    """Where a texture takes its pattern colour, at body coordinates (u, v) (units of the body
    height, from the centre line and the shoulders). The period is at least 3 pixels."""
    period = max(texture.scale, 3.0 / body_h)
    a, b = u / period + texture.phase[0], v / period + texture.phase[1]
    kind = texture.kind
    if kind == "h-stripes":
        return b % 1 < texture.duty
    if kind == "v-stripes":
        return a % 1 < texture.duty
    if kind == "checks":
        return (a % 1 < 0.5) ^ (b % 1 < 0.5)
    if kind == "dots":  # a staggered grid of round dots
        a = a + 0.5 * (np.floor(b) % 2)
        return (a % 1 - 0.5) ** 2 + (b % 1 - 0.5) ** 2 < (texture.duty / 2 + 0.1) ** 2
    if kind == "print":  # seeded random blobs: the same motif in every image of the outfit
        motif = np.random.default_rng(texture.seed)
        n = 40
        cu, cv = motif.uniform(-0.22, 0.22, n), motif.uniform(-0.05, 0.85, n)
        ru = period * motif.uniform(0.35, 0.8, n)
        rv = ru * motif.uniform(0.5, 1.6, n)
        hit = np.zeros(u.shape, bool)
        for i in range(n):
            hit |= ((u - cu[i]) / ru[i]) ** 2 + ((v - cv[i]) / rv[i]) ** 2 < 1
        return hit
    return np.zeros(u.shape, bool)


def _person_colours(person: Person) -> np.ndarray:
    lut = np.zeros((len(LIP), 3))
    for name in ("face", "left-arm", "right-arm", "left-leg", "right-leg"):
        lut[LABEL[name]] = person.skin
    lut[LABEL["hair"]] = person.hair_colour
    lut[LABEL["sunglasses"]] = (20, 20, 24)
    if person.hat:
        lut[LABEL["hat"]] = PALETTE[person.hat[1]]
    return lut


def _label_colours(person: Person, outfit: Outfit) -> np.ndarray:
    lut = _person_colours(person)
    lut[LABEL[outfit.upper[0]]] = PALETTE[outfit.upper[1]]
    if outfit.lower:
        lut[LABEL[outfit.lower[0]]] = PALETTE[outfit.lower[1]]
    lut[LABEL["left-shoe"]] = lut[LABEL["right-shoe"]] = PALETTE[outfit.shoes]
    return lut


def _stripe(image: np.ndarray, region: np.ndarray, yy: np.ndarray, body: Body, rgb) -> None:
    """Thin horizontal stripes (a quarter of the rows, so the garment keeps its colour):
    darker on light colours, lighter on dark ones."""
    period = max(4, round(body.h * 0.045))
    rows = region & ((yy - round(body.shoulder_y)) % period == 0)
    base = np.asarray(rgb, float)
    stripe = base * 0.55 if base.mean() > 80 else base + (255 - base) * 0.45
    image[rows] = stripe


def _face_details(image, labels, yy, xx, body: Body, person: Person) -> None:
    """Eyes, mouth and beard: small identity cues inside the face region."""
    b, face = body, labels == LABEL["face"]
    head_bottom = b.top + b.head_h
    if person.beard:
        chin = face & (yy >= b.top + b.head_h * 0.68) & (yy <= head_bottom)
        image[chin] = np.asarray(person.hair_colour, float) * 0.9
    eye_row = round(b.top + b.head_h * 0.52)
    mouth_row = round(b.top + b.head_h * 0.8)
    for dx in (-0.2, 0.2):
        _dot(image, face, eye_row, round(b.cx + dx * b.head_w), (35, 28, 26))
    for dx in (-0.1, 0.0, 0.1):
        _dot(image, face, mouth_row, round(b.cx + dx * b.head_w), np.asarray(person.skin) * 0.62)


def _dot(image, allowed, y, x, rgb) -> None:
    height, width = allowed.shape
    if 0 <= y < height and 0 <= x < width and allowed[y, x]:
        image[y, x] = rgb


# ---------------------------------------------------------------- files


def _save(out: Path, split: str, stem: str, image: np.ndarray, labels: np.ndarray) -> set[Path]:
    image_path = out / split / f"{stem}.png"
    map_path = out / "parsing" / split / f"{stem}.png"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(image_path)
    save_label_map(labels, map_path, "lip")
    return {image_path, map_path}


def _remove_stale(out: Path, written: set[Path]) -> None:
    """Drop dataset-named PNGs an earlier run left in our split folders (nothing else)."""
    for folder in [out / s for s in SPLITS] + [out / "parsing" / s for s in SPLITS]:
        if folder.is_dir():
            for path in folder.iterdir():
                if NAME_PATTERN.match(path.name) and path not in written and path.is_file():
                    path.unlink()


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _wardrobe_json(wardrobe: list[Outfit] | list[RealOutfit]) -> dict:
    return {str(k): outfit.as_json() for k, outfit in enumerate(wardrobe, start=1)}


def _person_json(p: Person, train: bool) -> dict:
    return {
        "split": "train" if train else "test", "skin": list(p.skin), "hair_colour": list(p.hair_colour),
        "hair_style": p.hair_style, "hat": list(p.hat) if p.hat else None, "sunglasses": p.sunglasses,
        "beard": p.beard, "height": round(p.height, 3), "shoulders": round(p.shoulders, 3),
        "hips": round(p.hips, 3), "head": round(p.head, 3),
    }  # fmt: skip


_REALISTIC_README = (
    "Style: realistic - garment colours from a continuous range, textures (stripes, checks, "
    "dots, prints) on tops and bottoms, open coats over some tops (LIP coat, the top between "
    "its fronts as upper-clothes), per-camera white balance; outfits.json records every "
    "garment's RGB, nearest named colour and texture, cameras.json each camera's white balance.\n"
)


def _readme(ids, lo, hi, cameras, per, height, width, seed, query_fraction) -> str:
    return (
        f"Synthetic clothes-changing re-id data made by `dlcr` (seed {seed}), in the LTCC layout: "
        f"{ids} procedurally drawn people ({ids // 2} in train/, the rest split into query/ and the "
        f"gallery test/), each wearing {lo} to {hi} outfits coloured from one palette shared by "
        f"everyone, seen by {cameras} cameras (own background, lighting and framing), {per} frame(s) "
        f"per person, outfit and camera, {height}x{width} pixels. Names are "
        f"<pid>_<clothes>_c<cam>_<frame>.png; the frame 0 of {query_fraction:g} of the cameras "
        f"(at least one) of each test person and outfit is a query. parsing/<split>/ holds the "
        f"exact LIP label map of every image (palette PNG, pixel value = LIP label id), "
        f"outfits.json the garment and colour names of every outfit, people.json the identity "
        f"cues (skin, hair, hat, sunglasses, beard, build). Options: ids, outfits (min, max), "
        f"cameras, per, height, width, seed, query_fraction.\n"
    )
