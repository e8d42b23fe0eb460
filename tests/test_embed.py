"""dlcr embed: a dataset's features evaluate as `evaluate -c` does, the .npz / .safetensors files,
--jsonl records, resume and its refusal to reuse parts of other inputs, and every bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from dlcr_cli.cli import app
from dlcr_cli.reid import features as features_module
from dlcr_cli.reid.embed import load, record_arrays
from dlcr_cli.records import Record

CPU = ("--device", "cpu")
REAL_EMBED_IMAGES = features_module.embed_images


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from dlcr_cli.synth import synthesize

    root = tmp_path_factory.mktemp("embed-data") / "synth"
    synthesize(root, ids=8, cameras=2, per=2, height=64, width=32, seed=0)
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A builtin:small run trained for one epoch (evaluated after it, so it keeps best/)."""
    out = tmp_path_factory.mktemp("embed-run") / "run"
    result = CliRunner().invoke(app, [*CPU, "train", str(data), "--out", str(out), "--backbone", "builtin:small",
                                      "--image-size", "64x32", "--batch", "2x4", "--workers", "0", "--epochs", "1"])
    assert result.exit_code == 0, result.stderr
    assert (out / "best" / "model.json").is_file()
    return out


@pytest.fixture(scope="module")
def embedded(data, run, tmp_path_factory):
    """The dataset's features by dlcr embed (one part), and the stderr of that run."""
    out = tmp_path_factory.mktemp("embed-out") / "feats.npz"
    result = CliRunner().invoke(app, [*CPU, "embed", str(data), "-c", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    return out, result.stderr


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("dlcr: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_a_datasets_features_evaluate_as_evaluate_does(dlcr, data, run, embedded, tmp_path):
    feats, log = embedded
    assert "run/best: the model of epoch 1" in log and "written to" in log
    direct = dlcr(*CPU, "evaluate", data, "-c", run, "--json", "--save-features", tmp_path / "saved.npz")
    assert direct.code == 0, direct.stderr
    again = dlcr("evaluate", "--features", feats, "--json")
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(direct.stdout)
    mine, saved = load(feats), load(tmp_path / "saved.npz")
    # every array evaluate --save-features writes, identical: features, labels, paths, settings
    assert all(np.array_equal(mine[k], saved[k]) for k in saved), [k for k in saved if not np.array_equal(mine[k], saved[k])]
    # and one row per record of the dataset, in input order, the query rows among them
    from dlcr_cli.inputs import read_records

    records = list(read_records(str(data)))
    assert list(mine["paths"]) == [r.image for r in records]
    assert mine["feats"].shape == (len(records), 512) and mine["feats"].dtype == np.float32
    assert np.allclose(np.linalg.norm(mine["feats"], axis=1), 1, atol=1e-5)
    row = {p: i for i, p in enumerate(mine["paths"])}
    assert np.array_equal(mine["feats"][[row[p] for p in mine["query_paths"]]], mine["query_feats"])
    assert list(mine["splits"]) == [r.split for r in records] and mine["pids"].dtype == np.int64
    assert list(mine["clothes"]) == [r.clothes for r in records]
    assert not (feats.parent / "feats.npz.parts").exists()


def test_safetensors_holds_the_same_arrays(dlcr, data, run, embedded, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "feats.safetensors"
    result = dlcr(*CPU, "embed", data, "-c", run, "--out", out)
    assert result.code == 0, result.stderr
    got, want = load(out), load(embedded[0])
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype.kind == want[key].dtype.kind and np.array_equal(got[key], want[key]), key
    with safe_open(str(out), "np") as f:  # numbers as tensors, strings as JSON metadata
        assert "feats" in f.keys() and "paths" not in f.keys()
        assert json.loads(f.metadata()["dlcr"])["protocol"] == "ltcc"
    scored = dlcr("evaluate", "--features", out, "--json")  # evaluate reads it as the .npz
    assert scored.code == 0, scored.stderr
    assert json.loads(scored.stdout) == json.loads(dlcr("evaluate", "--features", embedded[0], "--json").stdout)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    bad = dlcr("evaluate", "--features", broken)
    assert bad.code == 65 and "broken.safetensors: not a readable .safetensors file" in one_error_line(bad.stderr)


def test_jsonl_records_carry_unit_vectors_and_pipe_back_in(dlcr, data, run, embedded, tmp_path):
    result = dlcr(*CPU, "embed", data / "train", "-c", run, "--jsonl")  # a folder of images, no file
    assert result.code == 0, result.stderr
    records = result.records
    assert len(records) == len(list((data / "train").glob("*.png")))
    want = load(embedded[0])
    row = {p: i for i, p in enumerate(want["paths"])}
    for record in records:
        vector = np.array(record["embedding"], dtype=np.float32)
        assert vector.shape == (512,) and abs(np.linalg.norm(vector) - 1) < 1e-5
        assert np.allclose(vector, want["feats"][row[record["image"]]], atol=1e-5)
    # the dataset's records (split query/gallery) on stdin: the evaluation arrays come along
    listed = dlcr(*CPU, "embed", data, "-c", run, "--jsonl")
    assert listed.code == 0 and len(listed.records) == len(want["paths"])
    piped = dlcr(*CPU, "embed", "-", "-c", run, "--out", tmp_path / "piped.npz", input=listed.stdout)
    assert piped.code == 0, piped.stderr
    got = load(tmp_path / "piped.npz")
    assert all(np.array_equal(got[k], want[k]) for k in want if k.startswith(("query_", "gallery_", "setting")))


def test_label_arrays_where_records_have_them():
    feats = np.zeros((3, 2), np.float32)
    bare = record_arrays([Record(image=f"{i}.png") for i in range(3)], feats)
    assert sorted(bare) == ["feats", "paths"]
    mixed = record_arrays([Record(image="a.png", pid=3, camid=1, clothes="3_1", split="query"),
                           Record(image="b.png"), Record(image="c.png", pid=4)], feats)
    assert mixed["pids"].tolist() == [3, -1, 4] and mixed["camids"].tolist() == [1, -1, -1]
    assert mixed["clothes"].tolist() == ["3_1", "", ""] and mixed["splits"].tolist() == ["query", "", ""]
    named = record_arrays([Record(image="a.png", pid="alice"), Record(image="b.png", pid=7),
                           Record(image="c.png")], feats)
    assert named["pids"].tolist() == ["alice", "7", ""]


def interrupted_after(monkeypatch, parts: int) -> list[int]:
    """embed_images raises KeyboardInterrupt once `parts` calls are done (as a kill would stop
    the run); returns the list its calls are counted in."""
    real, calls = REAL_EMBED_IMAGES, []

    def counted(*args, **kwargs):
        if len(calls) >= parts:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(features_module, "embed_images", counted)
    return calls


def test_an_interrupted_run_resumes_from_its_parts(dlcr, data, run, monkeypatch, tmp_path):
    out = tmp_path / "f.npz"
    base = (*CPU, "embed", data, "-c", run, "--out", out, "--chunk-size", "16")
    interrupted_after(monkeypatch, 2)
    first = dlcr(*base)
    assert first.code == 130 and not out.exists()
    parts = tmp_path / "f.npz.parts"
    assert len(list(parts.glob("part-*.npy"))) == 2 and (parts / "key.json").is_file()
    calls = interrupted_after(monkeypatch, 1000)
    again = dlcr(*base, "--batch-size", "5", "--workers", "1")  # speed settings: the parts still count
    assert again.code == 0, again.stderr
    assert "resuming: 2 of 7 parts done in an earlier run, reused" in again.stderr
    assert len(calls) == 5  # 56 query and gallery images in 4 parts, 44 train images in 3, less the 2 kept
    assert not parts.exists()
    fresh = dlcr(*CPU, "embed", data, "-c", run, "--out", tmp_path / "fresh.npz", "--chunk-size", "16")
    assert fresh.code == 0 and "reused" not in fresh.stderr
    got, want = load(out), load(tmp_path / "fresh.npz")
    assert sorted(got) == sorted(want)
    for key in want:
        assert np.allclose(got[key], want[key], atol=1e-6) if "feats" in key else np.array_equal(got[key], want[key])


def test_parts_of_other_inputs_or_settings_are_not_reused(dlcr, data, run, monkeypatch, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    out = tmp_path / "f.npz"
    base = (*CPU, "embed", copy, "-c", run, "--out", out, "--chunk-size", "16")
    interrupted_after(monkeypatch, 2)
    assert dlcr(*base).code == 130
    victim = sorted((copy / "train").glob("*.png"))[0]
    shutil.copy(sorted((copy / "train").glob("*.png"))[-1], victim)  # another picture at the same path
    interrupted_after(monkeypatch, 2)
    changed = dlcr(*base)
    assert changed.code == 130
    assert "holds 2 parts made from other inputs: starting over" in changed.stderr and "reused" not in changed.stderr
    calls = interrupted_after(monkeypatch, 1000)
    other = dlcr(*base, "--no-flip")
    assert other.code == 0 and "made from other settings: starting over" in other.stderr and len(calls) == 7
    # a folder of the parts' name that is not ours is refused, not emptied
    foreign = tmp_path / "g.npz.parts"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    refused = dlcr(*CPU, "embed", copy, "-c", run, "--out", tmp_path / "g.npz")
    assert refused.code == 2 and "no dlcr embed work folder" in one_error_line(refused.stderr)
    assert (foreign / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_a_finished_file_is_kept_while_what_made_it_is_unchanged(dlcr, data, run, monkeypatch, tmp_path, suffix):
    out = tmp_path / f"f{suffix}"
    listed = tmp_path / "records.jsonl"
    from dlcr_cli.inputs import read_records
    from dlcr_cli.records import record_json

    records = list(read_records(str(data)))
    listed.write_text("".join(record_json(r) + "\n" for r in records))
    base = (*CPU, "embed", listed, "-c", run, "--out", out, "--chunk-size", "64")
    assert dlcr(*base).code == 0
    first = load(out)
    calls = interrupted_after(monkeypatch, 1000)
    again = dlcr(*base, "--batch-size", "7")  # a speed setting changes nothing
    assert again.code == 0 and "is finished for this model" in again.stderr and not calls
    assert not (tmp_path / f"f{suffix}.parts").exists()
    assert all(np.array_equal(first[k], v) for k, v in load(out).items())
    assert dlcr(*base, "--no-flip").code == 0 and len(calls) == 2  # other settings: embedded again
    records[0] = records[0].model_copy(update={"pid": 999})  # a label only: no part holds it, the file does
    listed.write_text("".join(record_json(r) + "\n" for r in records))
    relabelled = dlcr(*base, "--no-flip")
    assert relabelled.code == 0 and len(calls) == 4 and load(out)["pids"][0] == 999
    out.write_bytes(b"broken")  # not a file of ours any more: made again, not an error
    assert dlcr(*base, "--no-flip").code == 0 and len(calls) == 6


def test_a_video_datasets_tracklets_evaluate_as_evaluate_does(dlcr, tmp_path):
    import torch

    from conftest import synth_as_ccvid
    from dlcr_cli.reid.model import build_model, save_checkpoint

    root = synth_as_ccvid(tmp_path / "ccvid", ids=4, cameras=2, per=4)
    torch.manual_seed(0)
    model = save_checkpoint(build_model("builtin:small", head="video"), tmp_path / "video",
                            {"image_size": [64, 32], "clip": [4, 2]})
    result = dlcr(*CPU, "embed", root, "-c", model, "--out", tmp_path / "v.npz", "--chunk-size", "5")
    assert result.code == 0, result.stderr
    assert "tracklets" in result.stderr
    direct = dlcr(*CPU, "evaluate", root, "-c", model, "--json", "--save-features", tmp_path / "saved.npz")
    again = dlcr("evaluate", "--features", tmp_path / "v.npz", "--json")
    assert direct.code == 0 and again.code == 0 and json.loads(again.stdout) == json.loads(direct.stdout)
    mine, saved = load(tmp_path / "v.npz"), load(tmp_path / "saved.npz")
    for key in saved:
        assert np.allclose(mine[key], saved[key], atol=1e-6) if key.endswith("_feats") else np.array_equal(
            mine[key], saved[key]), key


# --- bad input ------------------------------------------------------------------------------------


def test_a_run_folder_without_a_model(dlcr, data, tmp_path):
    (tmp_path / "empty").mkdir()
    result = dlcr(*CPU, "embed", data / "train", "-c", tmp_path / "empty", "--out", tmp_path / "f.npz")
    assert result.code == 66 and "no re-id model" in one_error_line(result.stderr)


def test_an_unreadable_image_names_it(dlcr, data, run, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(data / "query", folder)
    victim = sorted(folder.glob("*.png"))[2]
    victim.write_bytes(b"not a png")
    result = dlcr(*CPU, "embed", folder, "-c", run, "--out", tmp_path / "f.npz")
    line = one_error_line(result.stderr)
    assert result.code == 65 and str(victim) in line and "unreadable image" in line
    assert not (tmp_path / "f.npz").exists()


def test_malformed_jsonl_names_the_line(dlcr, data, run, tmp_path):
    image = sorted((data / "query").glob("*.png"))[0]
    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"image": str(image)}) + "\n{not json\n")
    result = dlcr(*CPU, "embed", records, "-c", run, "--out", tmp_path / "f.npz")
    assert result.code == 65 and f"{records}:2: not valid JSON" in one_error_line(result.stderr)
    result = dlcr(*CPU, "embed", "-", "-c", run, "--jsonl", input='{"pid": 3}\n')
    assert result.code == 65 and "<stdin>:1: image" in one_error_line(result.stderr)


def test_usage_errors(dlcr, data, run, tmp_path):
    result = dlcr(*CPU, "embed", data, "-c", run, "--out", tmp_path / "f.txt")
    assert result.code == 2 and ".npz or .safetensors" in one_error_line(result.stderr)
    result = dlcr(*CPU, "embed", data, "-c", run)
    assert result.code == 2 and "--out FEATS" in one_error_line(result.stderr)
    result = dlcr(*CPU, "embed", tmp_path / "nowhere", "-c", run, "--out", tmp_path / "f.npz")
    assert result.code == 66 and "input not found" in one_error_line(result.stderr)
