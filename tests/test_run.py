"""dlcr run: the paper's experiment on a dataset in one resumable command (weight-free, on a
small synthetic dataset): the rows and the report, reuse and resume of every part, refusal of
runs made otherwise, several seeds sharing stage 1, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

SMALL = ["--weight-free", "--set", "train.image_size=[64,32]", "--set", "train.epochs=3", "--set", "train.eval_every=1",
         "--set", "train.ids_per_batch=4", "--set", "train.images_per_id=4", "--set", "train.workers=0",
         "--set", "train.clothes_start=1", "--set", "train.milestones=[2]", "--set", "train.progressive_epochs=[1,2,3]",
         "--set", "evaluate.workers=1", "-k", "4", "--query-variants", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from dlcr_cli.synth import synthesize

    root = tmp_path_factory.mktemp("run-data") / "synth"
    synthesize(root, ids=12, cameras=3, per=2, height=64, width=32, seed=3)
    return root


@pytest.fixture(scope="module")
def first(data, tmp_path_factory):
    from typer.testing import CliRunner

    from dlcr_cli.cli import app

    out = tmp_path_factory.mktemp("run") / "exp"
    result = CliRunner().invoke(app, ["--device", "cpu", "run", str(data), "--out", str(out), *SMALL, "--json"])
    assert result.exit_code == 0, result.stderr
    return out, result


@pytest.fixture
def copy(first, tmp_path):
    """The first experiment's folder, to change in place: it is put back as it was after the
    test (its runs record the absolute paths of their inputs, so a copy elsewhere would be
    another experiment)."""
    out = first[0]
    pristine = tmp_path / "pristine"
    shutil.copytree(out, pristine)
    yield out
    shutil.rmtree(out)
    shutil.copytree(pristine, out)


def test_it_reports_the_papers_rows_on_the_datasets_settings(first):
    out, result = first
    got = json.loads(result.stdout)
    assert list(got) == ["baseline", "dlcr", "dlcr_refined"]  # no ablation row unless asked
    for row in got.values():
        assert set(row) == {"standard", "sc", "cc", "train_seconds"}
        assert 0 <= row["cc"]["rank1"] <= row["cc"]["rank20"] <= 1 and row["cc"]["queries"] > 0
    table = (out / "report" / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("|  |"))
    assert header.split("|")[2:-2] == [" standard R1 ", " standard mAP ", " SC R1 ", " SC mAP ", " CC R1 ", " CC mAP "]
    assert "| +DLCR +refine |" in table and "CAL's reporting protocol" in table
    assert "+DLCR over the baseline on CC rank-1" in result.stderr


def test_each_row_is_its_runs_best_evaluated_epoch(first):
    """CAL's protocol: the numbers are those of best/, which training selected on cc rank-1."""
    out, _ = first
    saved = json.loads((out / "report" / "results.json").read_text())
    run = saved["per_seed"]["0"]
    for row in ("baseline", "dlcr"):
        best = json.loads((out / "seed-0" / row / "best" / "metrics.json").read_text())
        assert run["models"][row]["best"] and run["models"][row]["epoch"] == best["epoch"]
        for setting in ("standard", "sc", "cc"):
            assert run["results"][row][setting]["rank1"] == pytest.approx(best["evaluation"][setting]["rank1"])
    assert run["models"]["dlcr_refined"] == run["models"]["dlcr"]


def test_the_report_folder(first):
    out, result = first
    report = out / "report"
    saved = json.loads((report / "results.json").read_text())
    assert saved["seeds"] == [0] and saved["setting"] == "cc" and saved["settings"] == ["standard", "sc", "cc"]
    assert saved["per_seed"]["0"]["results"] == json.loads(result.stdout)
    assert set(saved["per_seed"]["0"]["cmc"]) == {"baseline", "dlcr", "dlcr_refined"}
    for picture in ("contact-sheet.png", "cmc.png"):
        with Image.open(report / picture) as img:
            assert img.width > 300 and img.height > 200
    shown = saved["per_seed"]["0"]["retrieval"]
    assert shown["setting"] == "cc" and len(shown["shown"]) == min(6, shown["baseline_wrong_dlcr_right"])
    if shown["shown"]:
        with Image.open(report / "retrieval.png") as img:
            assert img.height > 2 * len(shown["shown"]) * 64  # a baseline and a +DLCR row per query
    assert {p.name for p in (out / "stage1").iterdir()} >= {"train", "query", "generated.jsonl", "query-variants.jsonl"}
    generated = [json.loads(line) for line in (out / "stage1" / "generated.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (out / "stage1" / "query-variants.jsonl").read_text().splitlines()]
    assert {r["split"] for r in generated} == {"train"} and {r["split"] for r in queries} == {"query"}
    per_query = {}
    for r in queries:
        per_query.setdefault(r["source"], []).append(r)
    assert set(map(len, per_query.values())) == {2}  # refine.variants from --query-variants


def test_started_again_it_reuses_every_part_and_says_so(first, dlcr):
    out, result = first
    again = dlcr("--device", "cpu", "run", _dataset(out), "--out", out, *SMALL, "--json")
    assert again.code == 0, again.stderr
    assert again.stderr.count("finished in an earlier run, reused") == 2
    assert "training 3 epochs" not in again.stderr and "epoch 1/3" not in again.stderr
    assert "inpaint: finished in an earlier run" in again.stderr
    assert json.loads(again.stdout) == json.loads(result.stdout)


def _dataset(out):
    return json.loads((out / "seed-0" / "baseline" / "settings.json").read_text())["dataset"]


def test_more_epochs_resume_the_runs_and_fewer_are_refused(copy, dlcr):
    more = [a if a != "train.epochs=3" else "train.epochs=4" for a in SMALL]
    run = dlcr("--device", "cpu", "run", _dataset(copy), "--out", copy, *more)
    assert run.code == 0, run.stderr
    assert run.stderr.count("resuming after epoch 3 of 4") == 2 and "epoch 1/4" not in run.stderr
    assert [json.loads(line)["epoch"] for line in (copy / "seed-0" / "dlcr" / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2, 3, 4]
    fewer = [a if a != "train.epochs=3" else "train.epochs=2" for a in SMALL]
    refused = dlcr("--device", "cpu", "run", _dataset(copy), "--out", copy, *fewer)
    assert refused.code == 2 and "epochs (4 trained, 2 asked)" in refused.stderr and "--retrain" in refused.stderr
    assert len(refused.stderr.strip().splitlines()[-1]) > 0 and "Traceback" not in refused.stderr


def test_a_run_of_other_settings_is_refused_then_retrained_with_retrain(copy, dlcr):
    other = [*SMALL, "--set", "train.lr=0.0007"]
    refused = dlcr("--device", "cpu", "run", _dataset(copy), "--out", copy, *other)
    assert refused.code == 2 and "train.lr" in refused.stderr and "--retrain" in refused.stderr
    before = (copy / "seed-0" / "dlcr" / "model.safetensors").read_bytes()
    retrained = dlcr("--device", "cpu", "run", _dataset(copy), "--out", copy, *other, "--retrain", "--json")
    assert retrained.code == 0, retrained.stderr
    assert retrained.stderr.count("training it again") == 2 and "inpaint: finished in an earlier run" in retrained.stderr
    assert (copy / "seed-0" / "dlcr" / "model.safetensors").read_bytes() != before
    assert json.loads((copy / "seed-0" / "dlcr" / "settings.json").read_text())["train"]["lr"] == 0.0007


def test_other_generated_images_are_another_input(copy, dlcr):
    """Stage 1 redone with another K gives +DLCR other variants: its run is refused, not
    reused; the baseline, trained on real images only, is reused."""
    other = [a if a != "4" else "3" for a in SMALL]
    refused = dlcr("--device", "cpu", "run", _dataset(copy), "--out", copy, *other)
    assert refused.code == 2 and "generated images" in refused.stderr and "dlcr" in refused.stderr
    assert "baseline (real images): finished in an earlier run, reused" in refused.stderr


def test_several_seeds_share_stage_1_and_report_the_spread(copy, dlcr):
    run = dlcr("--device", "cpu", "run", _dataset(copy), "--out", copy, *SMALL, "--seeds", "0,1", "--without-progressive",
               "--json")
    assert run.code == 0, run.stderr
    assert {p.name for p in copy.iterdir()} == {"stage1", "seed-0", "seed-1", "report"}
    assert {p.name for p in (copy / "seed-1").iterdir()} >= {"baseline", "dlcr", "dlcr_no_progressive"}
    assert run.stderr.count("inpaint: finished in an earlier run") == 4  # train and query, both seeds
    saved = json.loads((copy / "report" / "results.json").read_text())
    assert saved["seeds"] == [0, 1]
    cc = [saved["per_seed"][s]["results"]["dlcr"]["cc"]["rank1"] for s in ("0", "1")]
    assert saved["summary"]["dlcr"]["cc.rank1"] == pytest.approx({"mean": np.mean(cc), "min": min(cc), "max": max(cc)})
    assert json.loads(run.stdout)["dlcr"]["cc"]["rank1"] == pytest.approx(np.mean(cc))
    assert "(mean, min-max over seeds)" in (copy / "report" / "results.md").read_text()
    assert "| +DLCR without progressive |" in (copy / "report" / "results.md").read_text()


def test_weight_free_without_label_maps_is_one_line(dlcr, tmp_path, data):
    bare = tmp_path / "bare"
    shutil.copytree(data, bare, ignore=shutil.ignore_patterns("parsing"))
    run = dlcr("run", bare, "--out", tmp_path / "exp", *SMALL)
    assert run.code == 2 and "--parsing-dir" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("args, code, says", [
    (["/nowhere/dataset"], 66, "/nowhere/dataset"),
    (["DATA", "--seeds", "1,1"], 2, "--seeds"),
    (["DATA", "--set", "train.epochs=0"], 2, "train.epochs"),
])
def test_bad_input(dlcr, tmp_path, data, args, code, says):
    args = [str(data) if a == "DATA" else a for a in args]
    run = dlcr("run", *args, "--out", tmp_path / "exp", "--weight-free")
    assert run.code == code and says in run.stderr and "Traceback" not in run.stderr


def test_pick_queries_takes_baseline_wrong_dlcr_right_spread_over_the_list():
    from dlcr_cli.experiment import pick_queries

    pids = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    gallery = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9])
    baseline = np.array([[8], [1], [8], [8], [8], [5], [8], [8]])  # wrong for 0, 2, 3, 4, 6, 7
    dlcr = np.array([[0], [1], [8], [3], [4], [5], [6], [7]])  # right except for 2
    picked, wins = pick_queries(pids, gallery, baseline, dlcr, count=2)
    assert wins == 5 and picked == [0, 4]
    assert pick_queries(pids, gallery, baseline, dlcr, count=10) == ([0, 3, 4, 6, 7], 5)
