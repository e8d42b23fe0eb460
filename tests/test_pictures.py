"""Pictures drawn with pillow: contact sheets, CMC plots and retrieval strips, checked pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dlcr_cli.pictures import (
    BACKGROUND,
    BORDER,
    PAD,
    PALETTE,
    QUERY_COLOUR,
    QUERY_GAP,
    STATUS_COLOURS,
    RetrievalRow,
    SheetRow,
    cmc_plot,
    contact_sheet,
    ellipsis,
    font,
    line_height,
    retrieval_strip,
    text_width,
    wrap,
)

LONG_PROMPT = ("a person wearing a dark blue denim jacket over a striped white shirt, black slim trousers, "
               "white canvas sneakers, a red baseball cap and a grey backpack with orange straps")  # fmt: skip


def solid(rgb, height: int = 100, width: int = 50) -> np.ndarray:
    return np.tile(np.array(rgb, np.uint8), (height, width, 1))


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def where(img: Image.Image, rgb) -> np.ndarray:
    """Boolean map of the pixels of exactly this colour."""
    return (pixels(img) == np.array(rgb, np.uint8)).all(axis=2)


def bbox(hits: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), exclusive, of the True pixels."""
    ys, xs = np.nonzero(hits)
    assert ys.size, "colour not found"
    return ys.min(), xs.min(), ys.max() + 1, xs.max() + 1


def ink(region: np.ndarray) -> np.ndarray:
    """Dark (text) pixels."""
    return (region < 128).all(axis=-1)


def row(title="a/b.jpg", variants=(), mask_value=True) -> SheetRow:
    mask = np.full((100, 50), mask_value, bool)
    return SheetRow(title, solid((10, 200, 90)), mask, list(variants))


# ---------------------------------------------------------------- text helper


def test_wrap_keeps_lines_within_width_and_marks_the_cut():
    fnt = font()
    lines = wrap(LONG_PROMPT, 90, fnt, max_lines=3)
    assert len(lines) == 3
    assert all(text_width(line, fnt) <= 90 for line in lines)
    assert lines[-1].endswith(ellipsis(fnt))
    assert wrap("short", 90, fnt, max_lines=3) == ["short"]
    # a word wider than the line is broken, not dropped or left overflowing
    broken = wrap("x" * 80, 40, fnt)
    assert "".join(broken) == "x" * 80 and all(text_width(p, fnt) <= 40 for p in broken)


# ---------------------------------------------------------------- contact sheet


def test_source_tile_is_scaled_to_tile_height_and_placed_first():
    sheet = contact_sheet([row()], tile_height=64)
    top, left, bottom, right = bbox(where(sheet, (10, 200, 90)))
    assert (bottom - top, right - left) == (64, 32)  # 100 x 50 scaled to 64 rows, aspect kept
    assert left == PAD
    assert where(sheet, (10, 200, 90))[top:bottom, left:right].all()  # a solid block of exactly that colour


def test_mask_tile_tints_only_the_masked_region():
    mask = np.zeros((100, 50), np.uint8)
    mask[:50] = 255
    sheet = contact_sheet([SheetRow("t", solid((10, 200, 90)), mask, [])], tile_height=100)
    tile_left = PAD + 50 + PAD
    top, _, _, _ = bbox(where(sheet, (10, 200, 90)))
    tile = pixels(sheet)[top : top + 100, tile_left : tile_left + 50]
    assert (tile[50:] == (10, 200, 90)).all()
    assert (tile[:50] != (10, 200, 90)).any(axis=2).all()


def test_sheet_grows_with_rows_and_with_the_widest_row():
    one = contact_sheet([row()], tile_height=64)
    two = contact_sheet([row(), row()], tile_height=64)
    assert two.width == one.width and two.height == 2 * one.height
    assert one.width == PAD + 2 * (32 + PAD)  # zero variants: source and mask only
    variants = [(solid((250, 200, 0), 60, 60), "p")] * 3
    for rows in ([row(variants=variants), row()], [row(), row(variants=variants)]):
        wide = contact_sheet(rows, tile_height=64)
        assert wide.width == one.width + 3 * (64 + PAD)
        assert wide.height == 2 * one.height


def test_variant_tiles_share_the_tile_height_whatever_their_aspect():
    variants = [(solid((250, 200, 0), 30, 90), "wide"), (Image.new("RGB", (20, 200), (0, 0, 250)), "tall")]
    sheet = contact_sheet([row(variants=variants)], tile_height=80)
    for rgb, width in (((250, 200, 0), 240), ((0, 0, 250), 8)):
        top, left, bottom, right = bbox(where(sheet, rgb))
        assert (bottom - top, right - left) == (80, width)


def test_long_prompt_wraps_under_its_tile_and_stops_after_caption_lines():
    lines = 3
    variant = (solid((250, 200, 0), 100, 100), LONG_PROMPT)
    sheet = contact_sheet([row(variants=[variant])], tile_height=100, caption_lines=lines)
    top, left, bottom, right = bbox(where(sheet, (250, 200, 0)))
    assert right + PAD == sheet.width  # the variant is the last tile
    lh = line_height(font())
    caption = pixels(sheet)[bottom + PAD :, :]
    for i in range(lines):  # every allowed line is written under the variant...
        assert ink(caption[i * lh : (i + 1) * lh, left:right]).any(), f"caption line {i + 1} is empty"
    assert not ink(caption[lines * lh :]).any()  # ...and nothing below them
    assert not ink(caption[:, right:]).any()  # nor right of the tile: the text stayed within its width


def test_short_prompt_takes_one_caption_line():
    sheet = contact_sheet([row(variants=[(solid((250, 200, 0), 100, 100), "red cap")])], tile_height=100)
    _, left, bottom, right = bbox(where(sheet, (250, 200, 0)))
    lh = line_height(font())
    caption = pixels(sheet)[bottom + PAD :, left:right]
    assert ink(caption[:lh]).any() and not ink(caption[lh:]).any()


def test_sheet_has_white_background_and_a_title_above_the_row():
    sheet = contact_sheet([row(title="market/0001_c1s1.jpg")], tile_height=64)
    assert tuple(pixels(sheet)[-1, -1]) == BACKGROUND
    top, _, _, _ = bbox(where(sheet, (10, 200, 90)))
    assert ink(pixels(sheet)[:top]).any()


def test_empty_sheet_is_an_error():
    with pytest.raises(ValueError):
        contact_sheet([])


# ---------------------------------------------------------------- CMC plot


def test_cmc_plot_has_the_requested_size_and_a_colour_per_curve():
    curves = {"standard": np.linspace(0.6, 1, 20), "cc": np.linspace(0.3, 0.8, 20), "sc": np.linspace(0.7, 1, 20)}
    img = cmc_plot(curves, size=(500, 320))
    assert img.size == (500, 320)
    for colour in PALETTE[:3]:
        assert where(img, colour).sum() > 50
    assert len(set(PALETTE[:3])) == 3


def curve_rows(values: float, other: float) -> np.ndarray:
    """Image rows of the pixels that a flat curve at `values` draws and one at `other` does not."""
    a = cmc_plot({"x": np.full(10, values)}, size=(400, 300))
    b = cmc_plot({"x": np.full(10, other)}, size=(400, 300))
    ys, _ = np.nonzero(where(a, PALETTE[0]) & ~where(b, PALETTE[0]))
    assert ys.size > 100
    return ys


def test_cmc_values_map_to_height_linearly():
    top, middle, bottom = (np.median(curve_rows(v, o)) for v, o in ((1.0, 0.0), (0.5, 0.0), (0.0, 1.0)))
    assert top < 0.15 * 300 and bottom > 0.65 * 300
    assert abs(middle - (top + bottom) / 2) <= 2


def test_max_rank_cuts_the_curves():
    cut = cmc_plot({"x": np.array([1.0] * 5 + [0.0] * 5)}, max_rank=5)
    assert np.array_equal(pixels(cut), pixels(cmc_plot({"x": np.ones(5)})))


@pytest.mark.parametrize("curves", [{}, {"x": np.array([50.0, 80.0])}, {"x": np.array([])}])
def test_cmc_plot_rejects_what_it_cannot_draw(curves):
    with pytest.raises(ValueError):
        cmc_plot(curves)


# ---------------------------------------------------------------- retrieval strip


def test_status_colours_read_as_their_meaning():
    (r, g, b), (wr, wg, wb), junk = STATUS_COLOURS["good"], STATUS_COLOURS["wrong"], STATUS_COLOURS["junk"]
    assert g > max(r, b) and wr > max(wg, wb) and len(set(junk)) == 1


def test_retrieval_strip_frames_each_tile_by_status():
    face = solid((120, 60, 160), 64, 32)
    results = [(face, "#1", "good"), (face, "#2", "wrong"), (face, "#3", "junk")]
    strip = retrieval_strip([RetrievalRow(face, "query", results)], tile_height=64)
    tile_w, tile_h = 32 + 2 * BORDER, 64 + 2 * BORDER
    assert strip.width == PAD + 4 * (tile_w + PAD) + QUERY_GAP
    px = pixels(strip)
    expected = [QUERY_COLOUR, STATUS_COLOURS["good"], STATUS_COLOURS["wrong"], STATUS_COLOURS["junk"]]
    for i, colour in enumerate(expected):
        x0 = PAD + i * (tile_w + PAD) + (QUERY_GAP if i else 0)
        mid = PAD + tile_h // 2
        assert tuple(px[mid, x0]) == colour and tuple(px[mid, x0 + BORDER - 1]) == colour  # border, full thickness
        assert tuple(px[PAD, x0 + tile_w // 2]) == colour  # top edge too
        assert tuple(px[mid, x0 + BORDER]) == (120, 60, 160)  # the picture right inside it
        assert ink(px[PAD + tile_h + PAD :, x0 : x0 + tile_w]).any()  # its label under it


def count_tiles(line: np.ndarray) -> int:
    """Runs of non-background pixels along one image row."""
    filled = (line != BACKGROUND).any(axis=1).astype(int)
    return int((np.diff(np.concatenate([[0], filled])) == 1).sum())


def test_retrieval_rows_show_their_own_number_of_results():
    face = solid((120, 60, 160), 64, 32)
    rows = [RetrievalRow(face, "q1", [(face, "a", "good")] * 5), RetrievalRow(face, "q2", [])]
    strip = retrieval_strip(rows, tile_height=64)
    row_h = strip.height // 2
    assert count_tiles(pixels(strip)[PAD + 36]) == 6
    assert count_tiles(pixels(strip)[row_h + PAD + 36]) == 1


def test_retrieval_strip_rejects_unknown_status_and_no_rows():
    face = solid((120, 60, 160), 64, 32)
    with pytest.raises(ValueError, match="status"):
        retrieval_strip([RetrievalRow(face, "q", [(face, "a", "maybe")])])
    with pytest.raises(ValueError):
        retrieval_strip([])
