"""The reuse rule's mechanism: content digests cached by size and mtime, fingerprints of parts."""

from __future__ import annotations

import json
import os

import pytest

from dlcr_cli.fingerprint import MISSING, Digests, file_digest, fingerprint, forget, model_revision, record_files


@pytest.fixture(autouse=True)
def new_process():
    forget()  # each test starts as a new process would: only cache files know digests
    yield
    forget()


def test_fingerprints_are_stable_and_order_free_for_dict_keys():
    assert fingerprint({"a": 1, "b": [1, 2]}, "x") == fingerprint({"b": [1, 2], "a": 1}, "x")
    assert fingerprint({"a": 1}) != fingerprint({"a": 2}) != fingerprint({"a": 1}, "")
    assert len(fingerprint()) == 64


def test_the_cache_answers_for_unchanged_files_and_reads_changed_ones(tmp_path):
    files = [tmp_path / f"{i}.bin" for i in range(5)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 100)
    cache = tmp_path / "cache.json"
    first = Digests(cache)
    digests = first.many(files)
    first.save()
    assert first.read == 5 and digests == [file_digest(f) for f in files] and len(set(digests)) == 5
    forget()
    again = Digests(cache)
    assert again.many(files) == digests and again.read == 0
    # same size, new content and mtime: read again, new digest
    files[2].write_bytes(b"\xff" * 100)
    os.utime(files[2], ns=(1, 1))
    forget()
    third = Digests(cache)
    changed = third.many(files)
    assert third.read == 1 and changed[2] != digests[2] and changed[:2] == digests[:2]


def test_a_cache_that_lies_about_a_file_is_not_believed_after_a_change(tmp_path):
    f = tmp_path / "img.png"
    f.write_bytes(b"one")
    cache = tmp_path / "cache.json"
    d = Digests(cache)
    d.of(f)
    d.save()
    known = json.loads(cache.read_text())
    f.write_bytes(b"two!")  # another size
    forget()
    assert Digests(cache).of(f) == file_digest(f) != known[str(f)][2]


def test_missing_files_and_a_corrupt_cache(tmp_path):
    cache = tmp_path / "cache.json"
    cache.write_text("{not json")
    d = Digests(cache)
    assert d.of(tmp_path / "nope.png") == MISSING
    (tmp_path / "a").write_bytes(b"a")
    assert d.of(tmp_path / "a") == file_digest(tmp_path / "a")
    d.save()
    assert str(tmp_path / "a") in json.loads(cache.read_text())


def test_record_files_names_the_set_fields_in_order():
    from dlcr_cli.records import Record

    record = Record(image="/d/a.png", mask="/w/masks/a.png")
    assert record_files("image", "mask", "parsing")(record) == ["/d/a.png", "/w/masks/a.png"]
    assert record_files("mask", "image")(record) == ["/w/masks/a.png", "/d/a.png"]


def test_a_local_model_folder_changes_its_revision_when_a_file_changes(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    before = model_revision(str(tmp_path / "m"))
    assert before == model_revision(str(tmp_path / "m"))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"weights")
    assert model_revision(str(tmp_path / "m")) != before
    assert model_revision("no-such-org/no-such-model") == ""


def test_digests_are_shared_within_a_process_and_each_cache_file_keeps_its_own(tmp_path):
    a = tmp_path / "a"
    a.write_bytes(b"a")
    one, two = Digests(tmp_path / "one.json"), Digests(tmp_path / "two.json")
    one.of(a)
    assert two.of(a) == one.of(a) and (one.read, two.read) == (1, 0)
    one.save()
    two.save()  # it was asked about `a`: its file holds it too
    assert str(a) in json.loads((tmp_path / "two.json").read_text())
