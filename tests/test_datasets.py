"""Dataset layouts: detection, record fields, order, and errors, on tiny fake trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlcr_cli.errors import InputMissing, MalformedInput
from dlcr_cli.reid.datasets import (
    LAYOUTS,
    ccvid,
    deepchange,
    detect_layout,
    known_layouts_text,
    last,
    looks_like_dataset,
    ltcc,
    prcc,
    vcclothes,
)


def touch(base: Path, *rels: str) -> None:
    """Empty files are enough: scanning must never decode an image."""
    for rel in rels:
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def fields(records, *names):
    return [tuple(getattr(r, n) for n in names) for r in records]


def by_rel(records):
    return {r.rel: r for r in records}


# --- PRCC -------------------------------------------------------------------------------

PRCC_FILES = (
    "rgb/train/001/A_cropped_rgb001.jpg",
    "rgb/train/001/C_cropped_rgb010.jpg",
    "rgb/train/001/B_cropped_rgb005.jpg",
    "rgb/val/002/B_x.jpg",
    "rgb/test/A/003/a.jpg",
    "rgb/test/B/003/b.jpg",
    "rgb/test/C/003/c.jpg",
    "rgb/train/001/notes.txt",
    "sketch/train/001/A_x.jpg",
)


def test_prcc_detects_rgb_and_its_parent(tmp_path):
    touch(tmp_path, *PRCC_FILES)
    assert detect_layout(tmp_path) == (prcc, tmp_path / "rgb")
    assert detect_layout(tmp_path / "rgb") == (prcc, tmp_path / "rgb")


def test_prcc_records(tmp_path):
    touch(tmp_path, *PRCC_FILES)
    records = list(prcc.scan(tmp_path / "rgb"))
    assert fields(records, "rel", "pid", "camid", "clothes", "split") == [
        ("train/001/A_cropped_rgb001.jpg", 1, 0, "001_AB", "train"),
        ("train/001/B_cropped_rgb005.jpg", 1, 1, "001_AB", "train"),
        ("train/001/C_cropped_rgb010.jpg", 1, 2, "001_C", "train"),
        ("val/002/B_x.jpg", 2, 1, "002_AB", "val"),
        ("test/A/003/a.jpg", 3, 0, "003_AB", "gallery"),
        ("test/B/003/b.jpg", 3, 1, "003_AB", "query"),
        ("test/C/003/c.jpg", 3, 2, "003_C", "query"),
    ]
    first = records[0]
    assert first.dataset == "prcc"
    assert Path(first.image).is_absolute()
    assert first.image == str(tmp_path / "rgb/train/001/A_cropped_rgb001.jpg")


def test_prcc_malformed_camera_letter(tmp_path):
    touch(tmp_path, *PRCC_FILES, "rgb/train/001/D_bad.jpg")
    with pytest.raises(MalformedInput, match="D_bad.jpg"):
        list(prcc.scan(tmp_path / "rgb"))


def test_prcc_non_numeric_person_folder(tmp_path):
    touch(tmp_path, *PRCC_FILES, "rgb/test/B/bob/b.jpg")
    with pytest.raises(MalformedInput, match="bob"):
        list(prcc.scan(tmp_path / "rgb"))


# --- LTCC -------------------------------------------------------------------------------

LTCC_FILES = (
    "LTCC_ReID/train/001_1_c11_015.png",
    "LTCC_ReID/train/001_2_c3_020.png",
    "LTCC_ReID/query/002_1_c1_001.png",
    "LTCC_ReID/test/002_3_c5_007.png",
    "LTCC_ReID/info/cloth-change_id_test.txt",
)


def test_ltcc_detects_wrapper_and_itself(tmp_path):
    touch(tmp_path, *LTCC_FILES)
    assert detect_layout(tmp_path) == (ltcc, tmp_path / "LTCC_ReID")
    assert detect_layout(tmp_path / "LTCC_ReID") == (ltcc, tmp_path / "LTCC_ReID")


def test_ltcc_records(tmp_path):
    touch(tmp_path, *LTCC_FILES)
    records = list(ltcc.scan(tmp_path / "LTCC_ReID"))
    assert fields(records, "rel", "pid", "camid", "clothes", "split") == [
        ("train/001_1_c11_015.png", 1, 11, "001_1", "train"),
        ("train/001_2_c3_020.png", 1, 3, "001_2", "train"),
        ("query/002_1_c1_001.png", 2, 1, "002_1", "query"),
        ("test/002_3_c5_007.png", 2, 5, "002_3", "gallery"),
    ]


def test_ltcc_parent_folder_named_like_a_file_does_not_change_parsing(tmp_path):
    # The reference code ran its regex on the whole path and would have read 001_2_c3 here.
    root = tmp_path / "001_2_c3_dir"
    touch(root, *LTCC_FILES)
    found = detect_layout(root)
    assert found == (ltcc, root / "LTCC_ReID")
    rec = by_rel(ltcc.scan(found[1]))["query/002_1_c1_001.png"]
    assert (rec.pid, rec.camid, rec.clothes) == (2, 1, "002_1")


def test_ltcc_malformed_name_raises_naming_the_file(tmp_path):
    touch(tmp_path, *LTCC_FILES, "LTCC_ReID/test/oops.png")
    with pytest.raises(MalformedInput, match=r"oops\.png.*<pid>_<clothes>_c<cam>"):
        list(ltcc.scan(tmp_path / "LTCC_ReID"))


def test_ltcc_accepts_upper_case_extensions_and_skips_hidden_files(tmp_path):
    touch(tmp_path, *LTCC_FILES, "LTCC_ReID/query/003_1_c2_9.PNG", "LTCC_ReID/query/._003_1_c2_9.png")
    rels = [r.rel for r in ltcc.scan(tmp_path / "LTCC_ReID")]
    assert "query/003_1_c2_9.PNG" in rels
    assert not any("._" in rel for rel in rels)


# --- VC-Clothes -------------------------------------------------------------------------

VC_FILES = (
    "train/0001-01-02-01.jpg",
    "train/0001-03-01-05.jpg",
    "query/0100-02-01-01.jpg",
    "gallery/0100-04-03-02.jpg",
)


def test_vcclothes_records(tmp_path):
    touch(tmp_path, *VC_FILES)
    assert detect_layout(tmp_path) == (vcclothes, tmp_path)
    records = list(vcclothes.scan(tmp_path))
    assert fields(records, "rel", "pid", "camid", "clothes", "split") == [
        ("train/0001-01-02-01.jpg", 1, 1, "0001_02", "train"),
        ("train/0001-03-01-05.jpg", 1, 3, "0001_01", "train"),
        ("query/0100-02-01-01.jpg", 100, 2, "0100_01", "query"),
        ("gallery/0100-04-03-02.jpg", 100, 4, "0100_03", "gallery"),
    ]


def test_vcclothes_malformed_name(tmp_path):
    touch(tmp_path, *VC_FILES, "train/0001_01.jpg")
    with pytest.raises(MalformedInput, match="0001_01.jpg"):
        list(vcclothes.scan(tmp_path))


# --- LaST -------------------------------------------------------------------------------

LAST_FILES = (
    "train/000001/000001_0_0_000010_1.jpg",
    "train/000001/000001_0_0_000020_2.jpg",
    "val/query/000500_0_0_1_0.jpg",
    "val/gallery/000500/000500_0_0_2_0.jpg",
    "test/query/000900_1_7_0.jpg",
    "test/query/000901_1_7_0.jpg",
    "test/gallery/000900/000900_2_8_0.jpg",
)


def test_last_records(tmp_path):
    touch(tmp_path, *LAST_FILES)
    assert detect_layout(tmp_path) == (last, tmp_path)
    records = list(last.scan(tmp_path))
    assert fields(records, "rel", "pid", "camid", "clothes", "split") == [
        ("train/000001/000001_0_0_000010_1.jpg", 1, 0, "000001_1", "train"),
        ("train/000001/000001_0_0_000020_2.jpg", 1, 1, "000001_2", "train"),
        ("val/query/000500_0_0_1_0.jpg", 500, 0, "000500_0", "val"),
        ("val/gallery/000500/000500_0_0_2_0.jpg", 500, 1, "000500_0", "val"),
        ("test/query/000900_1_7_0.jpg", 900, 0, "000900_0", "query"),
        ("test/query/000901_1_7_0.jpg", 901, 1, "000901_0", "query"),
        ("test/gallery/000900/000900_2_8_0.jpg", 900, 2, "000900_0", "gallery"),
    ]
    assert [getattr(r, "subset", None) for r in records[2:4]] == ["query", "gallery"]
    assert records[0].model_dump().get("subset") is None


def test_last_is_not_mistaken_for_prcc(tmp_path):
    touch(tmp_path, *LAST_FILES)
    assert detect_layout(tmp_path)[0] is last


def test_last_malformed_name(tmp_path):
    touch(tmp_path, *LAST_FILES, "test/query/nounderscore.jpg")
    with pytest.raises(MalformedInput, match="nounderscore.jpg"):
        list(last.scan(tmp_path))


# --- DeepChange -------------------------------------------------------------------------

def make_deepchange(root: Path) -> None:
    names = {
        "train-set": ["P0002_C03_D20200102_T1_F2_S3.jpg,7", "P0001_C01_D20200101_T1_F2_S3.jpg,5"],
        "val-set-query": ["P0100_C02_D20200301_T1_F1_S1.jpg,11"],
        "val-set-gallery": ["P0100_C04_D20200302_T1_F1_S1.jpg,12"],
        "test-set-query": ["P0200_C05_D20200401_T1_F1_S1.jpg,20"],
        "test-set-gallery": ["P0200_C05_D20200402_T1_F1_S1.jpg,21", ""],
    }
    for folder, lines in names.items():
        touch(root, *(f"{folder}/{line.split(',')[0]}" for line in lines if line))
        (root / f"{folder}-bbox.txt").write_text("\n".join(lines) + "\n")


def test_deepchange_records(tmp_path):
    make_deepchange(tmp_path)
    assert detect_layout(tmp_path) == (deepchange, tmp_path)
    records = list(deepchange.scan(tmp_path))
    assert fields(records, "rel", "pid", "camid", "clothes", "split") == [
        ("train-set/P0001_C01_D20200101_T1_F2_S3.jpg", 1, 5, "P0001_D20200101", "train"),
        ("train-set/P0002_C03_D20200102_T1_F2_S3.jpg", 2, 7, "P0002_D20200102", "train"),
        ("val-set-query/P0100_C02_D20200301_T1_F1_S1.jpg", 100, 11, "P0100_D20200301", "val"),
        ("val-set-gallery/P0100_C04_D20200302_T1_F1_S1.jpg", 100, 12, "P0100_D20200302", "val"),
        ("test-set-query/P0200_C05_D20200401_T1_F1_S1.jpg", 200, 20, "P0200_D20200401", "query"),
        ("test-set-gallery/P0200_C05_D20200402_T1_F1_S1.jpg", 200, 21, "P0200_D20200402", "gallery"),
    ]
    assert [r.camera for r in records] == [1, 3, 2, 4, 5, 5]
    assert [getattr(r, "subset", None) for r in records] == [None, None, "query", "gallery", None, None]


def test_deepchange_missing_list_and_missing_image(tmp_path):
    make_deepchange(tmp_path)
    (tmp_path / "test-set-query-bbox.txt").unlink()
    with pytest.raises(InputMissing, match="test-set-query-bbox.txt"):
        list(deepchange.scan(tmp_path))
    make_deepchange(tmp_path)
    (tmp_path / "train-set/P0001_C01_D20200101_T1_F2_S3.jpg").unlink()
    with pytest.raises(InputMissing, match="P0001_C01_D20200101_T1_F2_S3.jpg"):
        list(deepchange.scan(tmp_path))


def test_deepchange_malformed_line_and_name(tmp_path):
    make_deepchange(tmp_path)
    (tmp_path / "train-set-bbox.txt").write_text("P0001_C01_D20200101_T1_F2_S3.jpg\n")
    with pytest.raises(MalformedInput, match=r"train-set-bbox.txt:1"):
        list(deepchange.scan(tmp_path))
    touch(tmp_path, "train-set/person1.jpg")
    (tmp_path / "train-set-bbox.txt").write_text("person1.jpg,3\n")
    with pytest.raises(MalformedInput, match="person1.jpg"):
        list(deepchange.scan(tmp_path))


# --- CCVID ------------------------------------------------------------------------------

CCVID_LISTS = {
    "train.txt": "session1/001_01\t001\tu1_l1_s1_c1_b1\nsession3/002_05 002 u2_l1_s1_c1_b1\n",
    "query.txt": "session2/010_03 010 u1_l1_s1_c1_b1\n\n",
    "gallery.txt": "session1/010_07 010 u3_l2_s1_c1_b1\n",
}


def make_ccvid(root: Path, lists: dict | None = None) -> None:
    lists = lists or CCVID_LISTS
    for name, text in lists.items():
        root.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
        for line in filter(str.strip, text.splitlines()):
            touch(root, *(f"{line.split()[0]}/{frame:05d}.jpg" for frame in (2, 1)))


def test_ccvid_records_one_per_frame_with_tracklet(tmp_path):
    make_ccvid(tmp_path / "CCVID")
    assert detect_layout(tmp_path) == (ccvid, tmp_path / "CCVID")
    records = list(ccvid.scan(tmp_path / "CCVID"))
    assert fields(records, "rel", "pid", "camid", "clothes", "split", "tracklet") == [
        ("session1/001_01/00001.jpg", 1, 1, "001_u1_l1_s1_c1_b1", "train", "session1/001_01"),
        ("session1/001_01/00002.jpg", 1, 1, "001_u1_l1_s1_c1_b1", "train", "session1/001_01"),
        ("session3/002_05/00001.jpg", 2, 17, "002_u2_l1_s1_c1_b1", "train", "session3/002_05"),  # session 3: +12
        ("session3/002_05/00002.jpg", 2, 17, "002_u2_l1_s1_c1_b1", "train", "session3/002_05"),
        ("session2/010_03/00001.jpg", 10, 3, "010_u1_l1_s1_c1_b1", "query", "session2/010_03"),
        ("session2/010_03/00002.jpg", 10, 3, "010_u1_l1_s1_c1_b1", "query", "session2/010_03"),
        ("session1/010_07/00001.jpg", 10, 7, "010_u3_l2_s1_c1_b1", "gallery", "session1/010_07"),
        ("session1/010_07/00002.jpg", 10, 7, "010_u3_l2_s1_c1_b1", "gallery", "session1/010_07"),
    ]
    assert records[0].dataset == "ccvid"


@pytest.mark.parametrize("line, complaint", [
    ("session1/001_01 001", "expected"),
    ("session1/001_01 abc u1", "expected"),
    ("session1/001 001 u1", "does not fit"),
    ("../001_01 001 u1", "does not fit"),
])
def test_ccvid_malformed_line_names_list_and_line(tmp_path, line, complaint):
    make_ccvid(tmp_path)
    (tmp_path / "query.txt").write_text("session2/010_03 010 u1\n" + line + "\n")
    with pytest.raises(MalformedInput, match=rf"query\.txt:2: .*{complaint}"):
        list(ccvid.scan(tmp_path))


def test_ccvid_missing_or_empty_tracklet_folder(tmp_path):
    make_ccvid(tmp_path)
    (tmp_path / "gallery.txt").write_text("session1/010_07 010 u3\nsession1/099_01 099 u1\n")
    with pytest.raises(InputMissing, match=r"gallery\.txt:2: .*099_01 not found"):
        list(ccvid.scan(tmp_path))
    (tmp_path / "session1/099_01").mkdir()
    with pytest.raises(InputMissing, match="no frames"):
        list(ccvid.scan(tmp_path))


# --- names come from base names, never from parent folders ------------------------------

@pytest.mark.parametrize("make, parent, rel, expected", [
    (lambda root: touch(root, *VC_FILES), "0009-04-09-09", "query/0100-02-01-01.jpg", (100, 2, "0100_01")),
    (lambda root: touch(root, *LAST_FILES), "000777_1_1_9", "test/query/000900_1_7_0.jpg", (900, 0, "000900_0")),
    (lambda root: touch(root, *(f[4:] for f in PRCC_FILES if f.startswith("rgb/"))), "C_042",
     "train/001/A_cropped_rgb001.jpg", (1, 0, "001_AB")),
    (make_ccvid, "session3_005_09", "session2/010_03/00001.jpg", (10, 3, "010_u1_l1_s1_c1_b1")),
])
def test_parent_folders_named_like_files_do_not_change_parsing(tmp_path, make, parent, rel, expected):
    root = tmp_path / parent
    make(root)
    layout, base = detect_layout(root)
    rec = by_rel(layout.scan(base))[rel]
    assert (rec.pid, rec.camid, rec.clothes) == expected


# --- registry ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "files, base",
    [(PRCC_FILES, "rgb"), (LTCC_FILES, "LTCC_ReID"), (VC_FILES, "."), (LAST_FILES, ".")],
)
def test_scan_order_is_deterministic_and_sorted_within_each_split(tmp_path, files, base):
    touch(tmp_path, *reversed(files))
    layout, found = detect_layout(tmp_path)
    assert found == tmp_path / base
    first = [r.rel for r in layout.scan(found)]
    assert first == [r.rel for r in layout.scan(found)]
    groups: dict = {}
    for r in layout.scan(found):
        groups.setdefault((r.split, getattr(r, "subset", None)), []).append(r.rel)
    for rels in groups.values():
        assert rels == sorted(rels)


def test_unknown_tree_is_not_a_layout(tmp_path):
    touch(tmp_path, "photos/a.jpg", "b.png")
    assert detect_layout(tmp_path) is None
    assert not looks_like_dataset(tmp_path)
    assert detect_layout(tmp_path / "missing") is None
    assert detect_layout(tmp_path / "b.png") is None


def test_split_folders_with_unparseable_names_look_like_a_dataset(tmp_path):
    touch(tmp_path, "train/cat.jpg", "query/dog.jpg")
    assert detect_layout(tmp_path) is None
    assert looks_like_dataset(tmp_path)


def test_other_dataset_with_query_and_gallery_is_not_vcclothes(tmp_path):
    # Celeb-reID shares VC-Clothes' folders; the first file name tells them apart.
    touch(tmp_path, "train/1_1_0.jpg", "query/2_1_0.jpg", "gallery/2_2_0.jpg")
    assert detect_layout(tmp_path) is None
    assert looks_like_dataset(tmp_path)


def test_looks_like_dataset_wrapper_folders(tmp_path):
    touch(tmp_path, "LTCC_ReID/readme.txt")
    assert looks_like_dataset(tmp_path)
    touch(tmp_path / "one", "test/a.jpg")
    assert not looks_like_dataset(tmp_path / "one")


def test_known_layouts_text_lists_every_layout_on_one_line():
    text = known_layouts_text()
    assert "\n" not in text
    for layout in LAYOUTS:
        assert layout.DESCRIPTION in text
    assert [layout.NAME for layout in LAYOUTS] == ["prcc", "ltcc", "vcclothes", "last", "deepchange", "ccvid"]
