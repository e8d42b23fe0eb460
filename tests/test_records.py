"""Records and the INPUT argument: JSONL (file, stdin), datasets, folders, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import save_rgb

from dlcr_cli.errors import InputMissing, MalformedInput
from dlcr_cli.inputs import read_records
from dlcr_cli.records import Record, record_json, rel_path


def records_of(source) -> list[Record]:
    return list(read_records(str(source)))


def test_jsonl_file_resolves_relative_paths_against_its_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "r.jsonl"
    f.write_text('{"image": "img/a.png", "pid": 3, "extra": [1, {"x": null}]}\n\n{"image": "/abs/b.png"}\n')
    a, b = records_of(f)
    assert a.image == str(tmp_path / "sub" / "img" / "a.png") and b.image == "/abs/b.png"
    assert json.loads(record_json(a)) == {"image": a.image, "pid": 3, "extra": [1, {"x": None}]}


def test_unknown_fields_and_explicit_nulls_round_trip(tmp_path):
    line = {"image": "/x.png", "camid": None, "zeta": {"nested": [1, 2]}, "alpha": "é"}
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps(line) + "\n")
    (record,) = records_of(f)
    assert json.loads(record_json(record)) == line
    record.mask = "/m.png"
    assert json.loads(record_json(record)) == {**line, "mask": "/m.png"}


@pytest.mark.parametrize("content, line, words", [
    ('{"image": "/a.png"}\n{"image": "/b.png"\n', 2, "not valid JSON"),
    ('{"image": "/a.png"}\n[1, 2]\n', 2, "must be a JSON object"),
    ('\n{"pid": 1}\n', 2, "image: field required"),
    ('{"image": "/a.png", "camid": "north"}\n', 1, "camid"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, content, line, words):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(MalformedInput) as err:
        records_of(f)
    assert f"{f}:{line}:" in str(err.value) and words in str(err.value)
    assert err.value.exit_code == 65


def test_malformed_stdin_exit_65_via_cli(dlcr, tmp_path):
    run = dlcr("mask", "-", "--backend", "parsing", "--parsing-dir", tmp_path, "--out", tmp_path / "o",
               input='{"image": "/a.png"}\nnot json\n')
    assert run.code == 65 and "<stdin>:2:" in run.stderr


def test_binary_file_is_malformed_not_a_crash(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MalformedInput, match="UTF-8"):
        records_of(f)


def test_empty_inputs_are_errors(dlcr, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "emptydir").mkdir()
    for source in (tmp_path / "empty.jsonl", tmp_path / "emptydir"):
        with pytest.raises(InputMissing):
            records_of(source)
    run = dlcr("mask", "-", "--out", tmp_path / "o", input="")
    assert run.code == 66 and "no records in <stdin>" in run.stderr


def test_folder_of_images_recursive_sorted_with_rel(tmp_path):
    for name in ("b/2.png", "a/1.jpg", "c.JPG", ".hidden/x.png"):
        save_rgb(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    records = records_of(tmp_path)
    assert [r.rel for r in records] == ["a/1.jpg", "b/2.png", "c.JPG"]
    assert all(Path(r.image).is_absolute() and r.pid is None for r in records)


def test_single_image(tmp_path):
    (record,) = records_of(save_rgb(tmp_path / "one.png"))
    assert record.rel == "one.png"


def test_dataset_root_is_detected(tmp_path):
    for name in ("train/001_1_c1_000.png", "query/002_1_c2_000.png", "test/002_2_c1_003.png"):
        save_rgb(tmp_path / "LTCC_ReID" / name)
    records = records_of(tmp_path)
    assert {(r.rel, r.split, r.clothes) for r in records} == {
        ("train/001_1_c1_000.png", "train", "001_1"), ("query/002_1_c2_000.png", "query", "002_1"),
        ("test/002_2_c1_003.png", "gallery", "002_2")}


def test_unknown_layout_lists_the_known_ones(dlcr, tmp_path):
    save_rgb(tmp_path / "train" / "whatever.png")
    save_rgb(tmp_path / "query" / "whatever.png")
    run = dlcr("mask", tmp_path, "--out", tmp_path / "o")
    assert run.code == 65
    for name in ("PRCC", "LTCC", "VC-Clothes", "LaST", "DeepChange"):
        assert name in run.stderr


def test_rel_path_fallbacks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert rel_path(Record(image=str(tmp_path / "x" / "a.png"))) == "x/a.png"
    assert rel_path(Record(image="/elsewhere/b.png")) == "elsewhere/b.png"
    assert rel_path(Record(image="/elsewhere/b.png", rel="mine/b.png")) == "mine/b.png"


def test_the_record_model_depends_on_nothing_of_the_project_but_its_errors():
    """The floor of the layering: dataset layouts build records and dlcr_cli.inputs reads an
    INPUT through both, so records must not import them back (it once imported the layouts)."""
    import subprocess
    import sys

    code = "import sys, dlcr_cli.records; print(sorted(m for m in sys.modules if m.startswith('dlcr_cli.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['dlcr_cli.errors', 'dlcr_cli.records']"
