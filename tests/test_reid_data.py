"""ReidData: relabelling, joint query/gallery numbering, and each dataset's evaluation settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_datasets import (
    LAST_FILES,
    PRCC_FILES,
    VC_FILES,
    make_ccvid,
    make_deepchange,
    touch,
)

from dlcr_cli.errors import InputMissing, MalformedInput, UsageError
from dlcr_cli.reid.data import load_reid_data, tracklet_groups


def rels(samples, indices=None):
    chosen = samples if indices is None else [samples[i] for i in indices]
    return [s.rel for s in chosen]


def settings(data):
    return [(s.name, s.mode) for s in data.settings]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


LTCC_TREE = (
    "LTCC_ReID/train/009_1_c1_000.png",
    "LTCC_ReID/train/002_2_c2_000.png",
    "LTCC_ReID/train/002_1_c3_000.png",
    "LTCC_ReID/train/005_1_c1_000.png",
    "LTCC_ReID/query/020_1_c1_000.png",
    "LTCC_ReID/query/030_2_c1_000.png",
    "LTCC_ReID/test/020_1_c2_000.png",
    "LTCC_ReID/test/020_3_c3_000.png",
    "LTCC_ReID/test/030_1_c2_000.png",
)


def test_training_labels_are_relabelled_in_sorted_order_with_pid2clothes(tmp_path):
    touch(tmp_path, *LTCC_TREE)
    data = load_reid_data(tmp_path)
    assert data.name == "ltcc"
    got = {s.rel: (s.pid, s.clothes, s.camid) for s in data.train}
    # pids 2, 5, 9 -> 0, 1, 2; clothes "002_1", "002_2", "005_1", "009_1" -> 0..3
    assert got == {
        "train/002_1_c3_000.png": (0, 0, 3),
        "train/002_2_c2_000.png": (0, 1, 2),
        "train/005_1_c1_000.png": (1, 2, 1),
        "train/009_1_c1_000.png": (2, 3, 1),
    }
    assert (data.num_pids, data.num_clothes) == (3, 4)
    assert data.pid2clothes.dtype == bool
    assert data.pid2clothes.astype(int).tolist() == [[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert data.train[0].path == str(tmp_path / "LTCC_ReID/train/002_1_c3_000.png")
    assert set(data.records_by_path) == {s.path for s in data.train + data.query + data.gallery}


def test_query_and_gallery_keep_pids_and_share_one_clothes_numbering(tmp_path):
    touch(tmp_path, *LTCC_TREE)
    data = load_reid_data(tmp_path)
    q = {s.rel: s for s in data.query}
    g = {s.rel: s for s in data.gallery}
    assert [s.pid for s in data.query] == [20, 30]
    assert q["query/020_1_c1_000.png"].clothes == g["test/020_1_c2_000.png"].clothes  # same outfit, both sides
    assert g["test/020_3_c3_000.png"].clothes != q["query/020_1_c1_000.png"].clothes
    assert q["query/030_2_c1_000.png"].clothes != g["test/030_1_c2_000.png"].clothes
    numbers = sorted({s.clothes for s in data.query + data.gallery})
    assert numbers == list(range(4))  # 020_1, 020_3, 030_1, 030_2


def test_ltcc_settings_cover_everything_with_their_own_mode(tmp_path):
    touch(tmp_path, *LTCC_TREE)
    data = load_reid_data(tmp_path)
    assert settings(data) == [("standard", "standard"), ("sc", "sc"), ("cc", "cc")]
    for s in data.settings:
        assert s.query.tolist() == [0, 1] and s.gallery.tolist() == [0, 1, 2]
        assert s.query.dtype == np.int64
    assert data.setting("cc").mode == "cc"
    with pytest.raises(UsageError, match="no setting 'xx'"):
        data.setting("xx")


def test_prcc_gallery_is_camera_a_sc_is_b_cc_is_c_all_standard(tmp_path):
    touch(tmp_path, *PRCC_FILES, "rgb/test/A/004/a.jpg", "rgb/test/B/004/b.jpg", "rgb/test/C/004/c.jpg")
    data = load_reid_data(tmp_path)
    assert data.name == "prcc"
    assert settings(data) == [("sc", "standard"), ("cc", "standard")]
    assert rels(data.gallery) == ["test/A/003/a.jpg", "test/A/004/a.jpg"]
    sc, cc = data.settings
    assert rels(data.query, sc.query) == ["test/B/003/b.jpg", "test/B/004/b.jpg"]
    assert rels(data.query, cc.query) == ["test/C/003/c.jpg", "test/C/004/c.jpg"]
    assert sc.gallery.tolist() == cc.gallery.tolist() == [0, 1]
    clothes = {s.rel: s.clothes for s in data.query + data.gallery}
    assert clothes["test/B/003/b.jpg"] == clothes["test/A/003/a.jpg"] != clothes["test/C/003/c.jpg"]
    assert "val/002/B_x.jpg" not in {s.rel for s in data.train}  # val is not training data
    assert data.num_pids == 1 and data.num_clothes == 2


VC_TREE = VC_FILES + (
    "query/0100-03-01-02.jpg",
    "query/0100-04-02-03.jpg",
    "gallery/0100-02-01-04.jpg",
    "gallery/0100-03-02-05.jpg",
)


def test_vcclothes_settings_and_camera_subset_variants(tmp_path):
    touch(tmp_path, *VC_TREE)
    data = load_reid_data(tmp_path)
    assert settings(data) == [("standard", "standard"), ("sc", "sc"), ("cc", "cc")]
    assert (len(data.query), len(data.gallery)) == (3, 3)
    sc = load_reid_data(tmp_path, variant="sc")
    assert sc.name == "vcclothes_sc" and settings(sc) == [("sc", "standard")]
    assert {s.camid for s in sc.query + sc.gallery} == {2, 3}
    assert rels(sc.query) == ["query/0100-02-01-01.jpg", "query/0100-03-01-02.jpg"]
    assert rels(sc.gallery) == ["gallery/0100-02-01-04.jpg", "gallery/0100-03-02-05.jpg"]
    assert sc.settings[0].query.tolist() == [0, 1] and sc.settings[0].gallery.tolist() == [0, 1]
    cc = load_reid_data(tmp_path, variant="cc")
    assert cc.name == "vcclothes_cc" and settings(cc) == [("cc", "standard")]
    assert rels(cc.query) == ["query/0100-03-01-02.jpg", "query/0100-04-02-03.jpg"]
    assert rels(cc.gallery) == ["gallery/0100-03-02-05.jpg", "gallery/0100-04-03-02.jpg"]
    assert len(cc.train) == len(data.train) == 2  # training data is the same
    with pytest.raises(UsageError, match="variants sc, cc, not 'xx'"):
        load_reid_data(tmp_path, variant="xx")


def test_variant_of_a_dataset_without_variants_is_a_usage_error(tmp_path):
    touch(tmp_path, *LTCC_TREE)
    with pytest.raises(UsageError, match="ltcc has no variants"):
        load_reid_data(tmp_path, variant="sc")


def test_last_standard_only_clothes_are_the_pid_and_val_is_left_out(tmp_path):
    touch(tmp_path, *LAST_FILES)
    data = load_reid_data(tmp_path)
    assert settings(data) == [("standard", "standard")]
    assert rels(data.query) == ["test/query/000900_1_7_0.jpg", "test/query/000901_1_7_0.jpg"]
    assert rels(data.gallery) == ["test/gallery/000900/000900_2_8_0.jpg"]
    by_pid = {}
    for s in data.query + data.gallery:
        by_pid.setdefault(s.pid, set()).add(s.clothes)
    assert by_pid == {900: {0}, 901: {1}}  # one "outfit" per person, as CAL (no test clothes labels)
    camids = [s.camid for s in data.query + data.gallery]
    assert len(set(camids)) == 3  # every image its own camera
    assert data.num_clothes == 2  # training clothes do come from the names


def test_deepchange_standard_only(tmp_path):
    make_deepchange(tmp_path)
    data = load_reid_data(tmp_path)
    assert data.name == "deepchange" and settings(data) == [("standard", "standard")]
    assert [s.camid for s in data.query + data.gallery] == [20, 21]  # tracklet ids
    assert len(data.train) == 2


def test_ccvid_standard_sc_and_cc_over_tracklets(tmp_path):
    lists = {
        "train.txt": "session1/001_01 001 u1\n",
        "query.txt": "session1/010_03 010 u1\nsession2/011_02 011 u1\n",
        "gallery.txt": "session1/010_07 010 u2\nsession2/010_05 010 u1\n",
    }
    make_ccvid(tmp_path, lists)
    data = load_reid_data(tmp_path)
    assert data.name == "ccvid" and data.video
    assert settings(data) == [("standard", "standard"), ("sc", "sc"), ("cc", "cc")]  # CAL test(): all three
    assert len(data.query) == 4 and len(data.gallery) == 4  # two frames per tracklet
    groups = tracklet_groups(data.query)
    assert [g.tolist() for g in groups] == [[0, 1], [2, 3]]
    assert [data.query[g[0]].tracklet for g in groups] == ["session1/010_03", "session2/011_02"]
    assert [g.tolist() for g in tracklet_groups(data.gallery, [3, 0, 2])] == [[3, 2], [0]]
    g = {s.tracklet: s for s in data.gallery}
    q = {s.tracklet: s for s in data.query}
    assert q["session1/010_03"].clothes == g["session2/010_05"].clothes != g["session1/010_07"].clothes


def test_tracklet_groups_without_tracklets_are_single_images(tmp_path):
    touch(tmp_path, *LTCC_TREE)
    data = load_reid_data(tmp_path)
    assert not data.video
    assert [g.tolist() for g in tracklet_groups(data.gallery)] == [[0], [1], [2]]


# --- records ----------------------------------------------------------------------------


def record(image, split, pid, clothes=None, camid=None, **extra):
    out = {"image": image, "split": split, "pid": pid, **extra}
    if clothes is not None:
        out["clothes"] = clothes
    if camid is not None:
        out["camid"] = camid
    return out


def test_generic_records_string_pids_and_clothes(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        record("t1.jpg", "train", "bob", "bob_red", 0),
        record("t2.jpg", "train", "alice", "alice_blue", 1),
        record("q1.jpg", "query", "zed", "zed_a", 0),
        record("g1.jpg", "gallery", "carl", "carl_a", 1),
        record("g2.jpg", "gallery", "zed", "zed_a", 1),
        record("v1.jpg", "val", "x", "x_a", 1),
        {"image": "nosplit.jpg"},
    ])
    data = load_reid_data(path)
    assert data.name == "generic"
    assert settings(data) == [("standard", "standard"), ("cc", "cc")]
    assert [(s.pid, s.clothes) for s in data.train] == [(1, 1), (0, 0)]  # alice 0, bob 1
    assert [s.path for s in data.train] == [str(tmp_path / "t1.jpg"), str(tmp_path / "t2.jpg")]
    assert [s.pid for s in data.query + data.gallery] == [1, 0, 1]  # carl 0, zed 1, jointly
    assert data.query[0].clothes == data.gallery[1].clothes != data.gallery[0].clothes


def test_records_of_a_known_dataset_get_its_protocol(tmp_path):
    rows = [record(f"{s}{c}.jpg", s, 3, "003_AB" if c != 2 else "003_C", c, dataset="prcc")
            for s, c in (("train", 0), ("gallery", 0), ("query", 1), ("query", 2))]
    data = load_reid_data(write_jsonl(tmp_path / "r.jsonl", rows))
    assert data.name == "prcc" and settings(data) == [("sc", "standard"), ("cc", "standard")]
    assert data.settings[1].query.tolist() == [1]
    forced = load_reid_data(tmp_path / "r.jsonl", protocol="generic")
    assert forced.name == "generic"
    with pytest.raises(UsageError, match="unknown protocol"):
        load_reid_data(tmp_path / "r.jsonl", protocol="market")


def test_records_without_clothes_or_camid(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        record("t1.jpg", "train", 1), record("t2.jpg", "train", 2),
        record("q1.jpg", "query", 1, camid=4), record("g1.jpg", "gallery", 1), record("g2.jpg", "gallery", 2),
    ])
    data = load_reid_data(path)
    assert settings(data) == [("standard", "standard")]  # no clothes labels: no cc setting
    assert data.pid2clothes.astype(int).tolist() == [[1, 0], [0, 1]]  # one outfit per person
    assert [s.camid for s in data.query + data.gallery] == [4, 5, 6]  # unknown: each its own camera


def test_mixed_datasets_fall_back_to_generic(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        record("q.jpg", "query", 1, "a", 0, dataset="ltcc"), record("g.jpg", "gallery", 1, "b", 1, dataset="prcc"),
    ])
    assert load_reid_data(path).name == "generic"


def test_record_without_pid_is_malformed(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [record("t.jpg", "train", 1), {"image": "q.jpg", "split": "query"}])
    with pytest.raises(MalformedInput, match=r"r\.jsonl: .*q\.jpg: no pid"):
        load_reid_data(path)


def test_unknown_layout_and_plain_folders(tmp_path):
    touch(tmp_path / "odd", "train/cat.jpg", "query/dog.jpg")
    with pytest.raises(MalformedInput, match="matches no known layout"):
        load_reid_data(tmp_path / "odd")
    touch(tmp_path / "photos", "a.jpg", "b/c.jpg")
    with pytest.raises(MalformedInput, match="no train, query or gallery records.*CCVID"):
        load_reid_data(tmp_path / "photos")
    with pytest.raises(InputMissing):
        load_reid_data(tmp_path / "missing")


def test_require_names_the_empty_split(tmp_path):
    touch(tmp_path, "LTCC_ReID/query/020_1_c1_000.png", "LTCC_ReID/test/020_1_c2_000.png")
    data = load_reid_data(tmp_path)
    data.require("query", "gallery")
    assert data.pid2clothes.shape == (0, 0)
    with pytest.raises(InputMissing, match="ltcc: no train images"):
        data.require("train")
