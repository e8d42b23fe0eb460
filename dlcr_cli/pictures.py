"""Every picture dlcr draws, with pillow only: contact sheets, CMC plots, retrieval strips.

All three share one text helper (font, measuring, wrapping with an ellipsis) and one way of
placing a captioned tile, so a caption looks the same wherever it appears.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Picture = np.ndarray | Image.Image
RGB = tuple[int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

BACKGROUND: RGB = (255, 255, 255)
INK: RGB = (30, 30, 30)
GRID: RGB = (225, 225, 225)
PAD = 4
FONT_SIZE = 12
TITLE_SIZE = 14

MASK_TINT: RGB = (255, 0, 200)
MASK_ALPHA = 0.55
"""How strongly the repainted region is tinted on the mask tile (1.0 hides the source)."""

PALETTE: tuple[RGB, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
"""Curve colours in order (matplotlib's tab10, so plots look familiar); cycled past ten curves."""

QUERY_COLOUR: RGB = (40, 90, 230)
STATUS_COLOURS: dict[str, RGB] = {"good": (20, 170, 40), "wrong": (220, 30, 30), "junk": (150, 150, 150)}
BORDER = 4
QUERY_GAP = 16
LABEL_LINES = 2


# ---------------------------------------------------------------- text


@lru_cache(maxsize=8)
def font(size: int = FONT_SIZE) -> Font:
    """Pillow's bundled font at `size`; the fixed-size bitmap font where pillow is older than 10.1."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


_SCRATCH = ImageDraw.Draw(Image.new("L", (1, 1)))
"""Measuring needs a draw object but no real canvas."""


def ellipsis(fnt: Font) -> str:
    # The bitmap fallback font is latin-1 only.
    return "…" if isinstance(fnt, ImageFont.FreeTypeFont) else "..."


def text_width(text: str, fnt: Font) -> float:
    return _SCRATCH.textlength(text, font=fnt)


def line_height(fnt: Font) -> int:
    """Distance between baselines: the bottom of an accented capital and a descender, plus a gap."""
    return _SCRATCH.textbbox((0, 0), "Ág", font=fnt)[3] + 2


def wrap(text: str, width: float, fnt: Font, max_lines: int | None = None) -> list[str]:
    """`text` broken into lines no wider than `width` (words, else characters); "…" ends a cut.

    A line always holds at least one character, so a tile narrower than one glyph still
    shows something rather than looping or dropping text.
    """
    if max_lines is not None and max_lines <= 0:
        return []
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and text_width(candidate, fnt) <= width:
            lines[-1] = candidate
        else:
            lines.extend(_break_word(word, width, fnt))
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _with_ellipsis(lines[-1], width, fnt)
    return lines


def _break_word(word: str, width: float, fnt: Font) -> list[str]:
    pieces = [""]
    for char in word:
        if pieces[-1] and text_width(pieces[-1] + char, fnt) > width:
            pieces.append("")
        pieces[-1] += char
    return pieces


def _with_ellipsis(line: str, width: float, fnt: Font) -> str:
    mark = ellipsis(fnt)
    while line and text_width(line + mark, fnt) > width:
        line = line[:-1]
    return line.rstrip() + mark


def _draw_lines(draw: ImageDraw.ImageDraw, xy: tuple[int, int], lines: list[str], fnt: Font) -> None:
    x, y = xy
    for i, line in enumerate(lines):
        draw.text((x, y + i * line_height(fnt)), line, font=fnt, fill=INK)


# ---------------------------------------------------------------- tiles


def as_image(picture: Picture) -> Image.Image:
    """An RGB pillow image from a pillow image or an H x W (x 3) array (bool, or uint8)."""
    if isinstance(picture, Image.Image):
        return picture.convert("RGB")
    array = np.asarray(picture)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(array.astype(np.uint8, copy=False)).convert("RGB")


def fit_height(img: Image.Image, height: int) -> Image.Image:
    """`img` scaled to `height` rows, aspect ratio kept (at least one column)."""
    if img.height == height:
        return img
    width = max(1, round(img.width * height / img.height))
    return img.resize((width, height), Image.LANCZOS)


def framed(img: Image.Image, colour: RGB, thickness: int = BORDER) -> Image.Image:
    """`img` inside a solid border `thickness` pixels wide (the border adds to the size)."""
    out = Image.new("RGB", (img.width + 2 * thickness, img.height + 2 * thickness), colour)
    out.paste(img, (thickness, thickness))
    return out


def tinted(source: Picture, mask: np.ndarray) -> Image.Image:
    """The source with its masked (repainted) region tinted; soft masks tint in proportion."""
    img = as_image(source)
    weight = np.asarray(mask)
    weight = weight.astype(np.float32) if weight.dtype == bool else weight.astype(np.float32) / 255.0
    if weight.ndim == 3:
        weight = weight.max(axis=2)
    if weight.shape != (img.height, img.width):
        resized = Image.fromarray((weight * 255).astype(np.uint8)).resize(img.size, Image.NEAREST)
        weight = np.asarray(resized, np.float32) / 255.0
    alpha = (MASK_ALPHA * weight)[..., None]
    pixels = np.asarray(img, np.float32) * (1 - alpha) + np.array(MASK_TINT, np.float32) * alpha
    return Image.fromarray(np.rint(pixels).astype(np.uint8))


@dataclass
class _Tile:
    """One picture of a row with the caption under it."""

    image: Image.Image
    caption: str


def _row_width(tiles: Sequence[_Tile], gap_after_first: int = 0) -> int:
    gap = gap_after_first if len(tiles) > 1 else 0
    return PAD + sum(t.image.width + PAD for t in tiles) + gap


def _draw_row(sheet: Image.Image, tiles: Sequence[_Tile], top: int, lines: int, gap_after_first: int = 0) -> None:
    """Tiles left to right from `top`, each caption wrapped to its tile's width under it."""
    draw = ImageDraw.Draw(sheet)
    fnt = font()
    x = PAD
    for i, tile in enumerate(tiles):
        sheet.paste(tile.image, (x, top))
        caption = wrap(tile.caption, tile.image.width, fnt, lines)
        _draw_lines(draw, (x, top + tile.image.height + PAD), caption, fnt)
        x += tile.image.width + PAD + (gap_after_first if i == 0 else 0)


# ---------------------------------------------------------------- contact sheet


@dataclass
class SheetRow:
    """One source image, its clothing mask (255 or True = repainted) and its generated variants."""

    title: str
    source: Picture
    mask: np.ndarray
    variants: list[tuple[Picture, str]] = field(default_factory=list)


def contact_sheet(rows: list[SheetRow], *, tile_height: int = 192, caption_lines: int = 4) -> Image.Image:
    """One row per source: source, mask, variants, each captioned; the row's title above it.

    The mask tile is the source with the repainted region tinted magenta, so one sees which
    pixels the inpainting was allowed to change. Captions are the variants' prompts, wrapped
    to the tile width and cut with "…" after `caption_lines` lines.
    """
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    if tile_height < 1 or caption_lines < 0:
        raise ValueError("tile_height must be positive and caption_lines not negative")
    tiled = [_sheet_tiles(row, tile_height) for row in rows]
    title_font = font(TITLE_SIZE)
    title_h = PAD + line_height(title_font)
    row_h = title_h + tile_height + PAD + caption_lines * line_height(font()) + PAD
    width = max(_row_width(tiles) for tiles in tiled)
    sheet = Image.new("RGB", (width, row_h * len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, (row, tiles) in enumerate(zip(rows, tiled)):
        top = i * row_h
        _draw_lines(draw, (PAD, top + PAD), wrap(row.title, width - 2 * PAD, title_font, 1), title_font)
        _draw_row(sheet, tiles, top + title_h, caption_lines)
    return sheet


def _sheet_tiles(row: SheetRow, tile_height: int) -> list[_Tile]:
    tiles = [_Tile(as_image(row.source), "source"), _Tile(tinted(row.source, row.mask), "mask")]
    tiles += [_Tile(as_image(image), prompt) for image, prompt in row.variants]
    return [_Tile(fit_height(t.image, tile_height), t.caption) for t in tiles]


# ---------------------------------------------------------------- CMC plot


def cmc_plot(
    curves: dict[str, np.ndarray],
    *,
    title: str = "CMC",
    max_rank: int | None = None,
    size: tuple[int, int] = (640, 420),
) -> Image.Image:
    """One line per named CMC curve (index 0 = rank 1, values in [0, 1]) on gridded axes.

    The legend sits under the axes rather than inside them, so it never hides a curve.
    """
    ranks = _check_curves(curves, max_rank)
    img = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(img)
    fnt = font()
    legend = _legend_lines(list(curves), size[0] - _plot_left(fnt) - PAD, fnt)
    box = _plot_box(size, len(legend), fnt)
    _draw_axes(img, box, ranks, fnt)
    for i, values in enumerate(curves.values()):
        _draw_curve(draw, box, ranks, np.asarray(values, float)[:ranks], PALETTE[i % len(PALETTE)])
    _draw_legend(draw, legend, (box[0], box[3] + 2 * line_height(fnt) + 3 * PAD), fnt)
    title_font = font(TITLE_SIZE)
    tx = (size[0] - text_width(title, title_font)) / 2
    draw.text((max(PAD, tx), PAD), title, font=title_font, fill=INK)
    return img


def _check_curves(curves: dict[str, np.ndarray], max_rank: int | None) -> int:
    """The number of ranks to plot; ValueError for what would silently draw nonsense."""
    if not curves:
        raise ValueError("cmc_plot needs at least one curve")
    for name, values in curves.items():
        array = np.asarray(values, float)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"CMC curve {name!r} must be a non-empty 1-D array")
        finite = array[np.isfinite(array)]
        if finite.size and (finite.min() < -1e-6 or finite.max() > 1 + 1e-6):
            raise ValueError(f"CMC curve {name!r} has values outside [0, 1] (percentages?)")
    longest = max(np.asarray(v).size for v in curves.values())
    if max_rank is not None and max_rank < 1:
        raise ValueError("max_rank must be at least 1")
    return longest if max_rank is None else min(max_rank, longest)


def _plot_box(size: tuple[int, int], legend_lines: int, fnt: Font) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the plot area: room for title, tick labels, axis labels, legend."""
    lh = line_height(fnt)
    left = _plot_left(fnt)
    top = PAD + line_height(font(TITLE_SIZE)) + PAD
    right = size[0] - 3 * PAD
    bottom = size[1] - (2 * lh + 3 * PAD) - legend_lines * lh - PAD
    if right - left < 20 or bottom - top < 20:
        raise ValueError(f"plot size {size} leaves no room for the axes")
    return left, top, right, bottom


def _plot_left(fnt: Font) -> int:
    """Where the axes start: after the vertical axis label and the tick labels."""
    return PAD + line_height(fnt) + PAD + round(text_width("0.0", fnt)) + 2 * PAD


def _x(box: tuple[int, int, int, int], ranks: int, rank: float) -> float:
    left, _, right, _ = box
    return (left + right) / 2 if ranks == 1 else left + (rank - 1) / (ranks - 1) * (right - left)


def _y(box: tuple[int, int, int, int], value: float) -> float:
    _, top, _, bottom = box
    return bottom - float(np.clip(value, 0.0, 1.0)) * (bottom - top)


def _rank_ticks(ranks: int) -> list[int]:
    """Rank 1 and multiples of a 1-2-5 step giving at most ten ticks."""
    step = next(s * 10**e for e in range(8) for s in (1, 2, 5) if ranks / (s * 10**e) <= 10)
    return sorted({1, *range(step, ranks + 1, step)})


def _draw_axes(img: Image.Image, box: tuple[int, int, int, int], ranks: int, fnt: Font) -> None:
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = box
    for value in np.linspace(0.0, 1.0, 6):
        y = _y(box, value)
        draw.line([(left, y), (right, y)], fill=GRID)
        label = f"{value:.1f}"
        draw.text((left - PAD - text_width(label, fnt), y - line_height(fnt) / 2), label, font=fnt, fill=INK)
    for rank in _rank_ticks(ranks):
        x = _x(box, ranks, rank)
        draw.line([(x, top), (x, bottom)], fill=GRID)
        draw.line([(x, bottom), (x, bottom + PAD)], fill=INK)
        draw.text((x - text_width(str(rank), fnt) / 2, bottom + PAD), str(rank), font=fnt, fill=INK)
    draw.rectangle(box, outline=INK)
    xlabel_y = bottom + PAD + line_height(fnt) + PAD
    draw.text(((left + right - text_width("rank", fnt)) / 2, xlabel_y), "rank", font=fnt, fill=INK)
    _vertical_text(img, "matching rate", (PAD, (top + bottom) // 2), fnt)


def _vertical_text(img: Image.Image, text: str, left_middle: tuple[int, int], fnt: Font) -> None:
    """`text` read bottom to top, its left edge at x and centred on y (pillow cannot rotate text)."""
    stencil = Image.new("L", (round(text_width(text, fnt)) + 2, line_height(fnt)), 0)
    ImageDraw.Draw(stencil).text((1, 0), text, font=fnt, fill=255)
    stencil = stencil.rotate(90, expand=True)
    x, y = left_middle
    img.paste(INK, (x, y - stencil.height // 2), stencil)


def _draw_curve(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], ranks: int, values: np.ndarray, colour: RGB
) -> None:
    """Line through the finite points; dots on them too while there are few enough to tell apart."""
    points = [(_x(box, ranks, r + 1), _y(box, v)) for r, v in enumerate(values) if np.isfinite(v)]
    if len(points) > 1:
        draw.line(points, fill=colour, width=2, joint="curve")
    if len(points) <= 30:
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)


def _legend_lines(names: list[str], width: int, fnt: Font) -> list[list[tuple[int, str]]]:
    """Legend entries (curve index, name) packed into lines no wider than `width`."""
    lines: list[list[tuple[int, str]]] = [[]]
    used = 0.0
    for i, name in enumerate(names):
        entry = _legend_entry_width(name, fnt)
        if lines[-1] and used + entry > width:
            lines.append([])
            used = 0.0
        lines[-1].append((i, name))
        used += entry
    return lines


def _legend_entry_width(name: str, fnt: Font) -> float:
    return 20 + PAD + text_width(name, fnt) + 4 * PAD


def _draw_legend(draw: ImageDraw.ImageDraw, lines: list[list[tuple[int, str]]], xy: tuple[int, int], fnt: Font) -> None:
    lh = line_height(fnt)
    for row, entries in enumerate(lines):
        x, y = float(xy[0]), xy[1] + row * lh
        for i, name in entries:
            colour = PALETTE[i % len(PALETTE)]
            draw.line([(x, y + lh / 2), (x + 20, y + lh / 2)], fill=colour, width=3)
            draw.text((x + 20 + PAD, y), name, font=fnt, fill=INK)
            x += _legend_entry_width(name, fnt)


# ---------------------------------------------------------------- retrieval strip


@dataclass
class RetrievalRow:
    """One query and its ranked results: (image, label, status), status "good", "wrong" or "junk"."""

    query: Picture
    query_label: str
    results: list[tuple[Picture, str, str]] = field(default_factory=list)


def retrieval_strip(rows: list[RetrievalRow], *, tile_height: int = 128) -> Image.Image:
    """One row per query: the query framed in blue, a gap, then its results framed by status.

    `tile_height` is the picture's height; each frame adds `BORDER` pixels on every side.
    Labels are wrapped to the tile width, at most `LABEL_LINES` lines.
    """
    if not rows:
        raise ValueError("retrieval_strip needs at least one row")
    if tile_height < 1:
        raise ValueError("tile_height must be positive")
    tiled = [_retrieval_tiles(row, tile_height) for row in rows]
    row_h = PAD + tile_height + 2 * BORDER + PAD + LABEL_LINES * line_height(font()) + PAD
    width = max(_row_width(tiles, QUERY_GAP) for tiles in tiled)
    sheet = Image.new("RGB", (width, row_h * len(rows)), BACKGROUND)
    for i, tiles in enumerate(tiled):
        _draw_row(sheet, tiles, i * row_h + PAD, LABEL_LINES, QUERY_GAP)
    return sheet


def _retrieval_tiles(row: RetrievalRow, tile_height: int) -> list[_Tile]:
    tiles = [_Tile(framed(fit_height(as_image(row.query), tile_height), QUERY_COLOUR), row.query_label)]
    for image, label, status in row.results:
        if status not in STATUS_COLOURS:
            raise ValueError(f"unknown result status {status!r}; expected one of {', '.join(STATUS_COLOURS)}")
        tiles.append(_Tile(framed(fit_height(as_image(image), tile_height), STATUS_COLOURS[status]), label))
    return tiles
