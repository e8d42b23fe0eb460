"""dlcr train: the progressive schedule, per-dataset defaults, CAL steps, generated data,
resume (also after a kill) equal to an uninterrupted run, the run folder, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dlcr_cli.reid.train import (
    DATASET_DEFAULTS,
    TrainSet,
    resolve_for_data,
    saved_epoch,
    visible_fraction,
    visible_variants,
)
from dlcr_cli.settings import DEFAULTS

THRESHOLDS, FRACTIONS = [5, 10, 15], [0.25, 0.5, 0.75, 1.0]
# 3 training ids in the small synthetic set: 2 ids x 4 images per batch, 64x32, no worker processes
SMALL = ("--backbone", "builtin:small", "--image-size", "64x32", "--batch", "2x4", "--workers", "0")


def test_progressive_fraction_per_completed_epochs():
    got = [visible_fraction(e, THRESHOLDS, FRACTIONS) for e in range(0, 21)]
    assert got == [0.25] * 6 + [0.5] * 5 + [0.75] * 5 + [1.0] * 5


@pytest.mark.parametrize("k, fraction, n", [(10, 0.25, 2), (10, 0.5, 5), (10, 0.75, 7), (10, 1.0, 10),
                                            (4, 0.25, 1), (1, 0.25, 1), (3, 0.25, 1), (3, 0.75, 2)])
def test_visible_variants_is_floor_with_at_least_one(k, fraction, n):
    assert visible_variants(k, fraction) == n


def test_variant_draws_stay_in_the_visible_range_and_repeat():
    train = TrainSet([], {}, (64, 32), seed=3, fraction_of=lambda e: visible_fraction(e, THRESHOLDS, FRACTIONS))
    for epoch, top in ((0, 2), (7, 5), (12, 7), (30, 10)):
        train.set_epoch(epoch)
        draws = [train.variant_index(i, 10) for i in range(400)]
        assert set(draws) == set(range(top))  # uniform over the first `top`, all of them seen
        assert draws == [train.variant_index(i, 10) for i in range(400)]


def _data(name: str, video: bool = False, settings: tuple[str, ...] = ("standard", "sc", "cc")):
    from types import SimpleNamespace

    return SimpleNamespace(name=name, train_video=video, settings=[SimpleNamespace(name=n) for n in settings])


CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)  # resolve_for_data only reads the type


def test_per_dataset_defaults_fill_only_unset_values():
    base = DEFAULTS.train
    last = resolve_for_data(base, _data("last", settings=("standard",)), CUDA)
    assert (last.triplet_weight, last.ids_per_batch, last.images_per_id, last.precision) == (1.0, 16, 4, "fp16")
    assert last.select == "standard" and last.eval_every == 5 and last.epochs == 60
    deep = resolve_for_data(base, _data("deepchange", settings=("standard",)), CPU)
    assert (deep.triplet_weight, deep.ids_per_batch, deep.images_per_id, deep.precision) == (0.0, 16, 4, "fp32")
    prcc = resolve_for_data(base, _data("prcc", settings=("sc", "cc")), CUDA)
    assert (prcc.triplet_weight, prcc.ids_per_batch, prcc.images_per_id, prcc.precision) == (0.0, 8, 8, "fp32")
    assert (prcc.select, prcc.video, prcc.image_size, prcc.label_smoothing) == ("cc", False, (384, 192), 0.1)
    mine = resolve_for_data(base.model_copy(update={"ids_per_batch": 4, "triplet_weight": 0.5, "precision": "bf16"}),
                            _data("last"), CUDA)
    assert (mine.triplet_weight, mine.ids_per_batch, mine.images_per_id, mine.precision) == (0.5, 4, 4, "bf16")
    assert set(DATASET_DEFAULTS) == {"last", "deepchange"}
    assert resolve_for_data(last, _data("last"), CPU) == last  # resolving twice changes nothing


def test_tracklets_take_cals_video_recipe():
    video = resolve_for_data(DEFAULTS.train, _data("ccvid", video=True), CUDA)
    assert video.video and video.image_size == (256, 128) and video.epochs == 150
    assert (video.milestones, video.clothes_start, video.label_smoothing) == ([40, 80, 120], 50, 0.0)
    assert (video.ids_per_batch, video.images_per_id, video.eval_every, video.precision) == (16, 4, 10, "fp32")
    assert (video.clip_length, video.clip_stride, video.dense_step, video.select) == (8, 4, 64, "cc")
    frames = resolve_for_data(DEFAULTS.train.model_copy(update={"video": False}), _data("ccvid", video=True), CUDA)
    assert not frames.video and frames.image_size == (384, 192)


def test_bad_video_and_selection_settings_are_one_line():
    from dlcr_cli.errors import UsageError

    with pytest.raises(UsageError, match="tracklets"):
        resolve_for_data(DEFAULTS.train.model_copy(update={"video": True}), _data("prcc"), CPU)
    with pytest.raises(UsageError, match="no setting 'cc'"):
        resolve_for_data(DEFAULTS.train.model_copy(update={"select": "cc"}), _data("last", settings=("standard",)), CPU)


# --- runs on the small synthetic dataset ------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(synth_prompted, tmp_path_factory):
    """3 recoloured variants of every training image, as dlcr inpaint records."""
    from typer.testing import CliRunner

    from dlcr_cli.cli import app

    out = tmp_path_factory.mktemp("gen")
    result = CliRunner().invoke(app, ["inpaint", str(synth_prompted), "--backend", "recolor", "-k", "3",
                                      "--out", str(out / "images")])
    assert result.exit_code == 0, result.stderr
    (out / "gen.jsonl").write_text(result.stdout)
    return out / "gen.jsonl"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_model_settings_and_metrics_that_evaluate_loads(dlcr, synth_data, tmp_path):
    run = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--epochs", "2", "--json")
    assert run.code == 0, run.stderr
    rows = metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["images"] > 0 and row["images_per_s"] > 0 and row["lr"] == pytest.approx(3.5e-4)
        assert row["clothes_loss"] is None and row["generated"] == 0  # clothes losses start at epoch 25
    assert set(rows[-1]["evaluation"]) == {"standard", "sc", "cc"} and rows[0]["evaluation"] is None
    assert json.loads(run.stdout)["epoch"] == 2
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings["train"]["ids_per_batch"] == 2 and settings["train"]["triplet_weight"] == 0.0
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    assert model["config"]["image_size"] == [64, 32] and model["backbone"] == "builtin:small"
    evaluated = dlcr("--device", "cpu", "evaluate", synth_data, "-c", tmp_path / "run", "--json")
    assert evaluated.code == 0 and "at 64x32" in evaluated.stderr
    got = json.loads(evaluated.stdout)
    assert got.keys() == rows[-1]["evaluation"].keys()
    for name, scores in got.items():
        assert scores == pytest.approx(rows[-1]["evaluation"][name])


def test_cal_trains_the_clothes_classifier_and_ce_does_not(dlcr, synth_data, tmp_path):
    env = {"DLCR_TRAIN__CLOTHES_START": "1"}
    for loss in ("cal", "ce"):
        run = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / loss, *SMALL, "--epochs", "2",
                   "--loss", loss, "--eval-every", "0", env=env)
        assert run.code == 0, run.stderr
    cal, ce = metrics(tmp_path / "cal"), metrics(tmp_path / "ce")
    assert cal[0]["clothes_loss"] is None and cal[1]["clothes_loss"] > 0 and cal[1]["cal_loss"] is not None
    assert ce[1]["clothes_loss"] is None and ce[1]["cal_loss"] is None
    from safetensors.torch import load_file

    start = load_file(tmp_path / "ce" / "state" / "training.safetensors")
    trained = load_file(tmp_path / "cal" / "state" / "training.safetensors")
    assert not torch.equal(start["clothes_classifier/weight"], trained["clothes_classifier/weight"])
    assert "clothes_optimizer/0/exp_avg" in trained and "clothes_optimizer/0/exp_avg" not in start


def test_generated_variants_join_every_batch(dlcr, synth_data, generated, tmp_path):
    run = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--epochs", "1",
               "--generated", generated)
    assert run.code == 0, run.stderr
    row = metrics(tmp_path / "run")[0]
    assert row["generated"] == row["images"] // 2  # one variant per real image
    assert row["visible_fraction"] == 0.25
    assert "3 variants" in run.stderr


def _same_files(a: Path, b: Path, *names: str) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_resume_gives_what_an_uninterrupted_run_gives(dlcr, synth_data, generated, tmp_path):
    # keep last: the first part's final evaluation (epoch 1) would be a candidate for best/ that the
    # uninterrupted run never evaluates (see test_keep_best_resumes_to_the_same_selection)
    common = ("--device", "cpu", "train", synth_data, *SMALL, "--generated", generated, "--eval-every", "0",
              "--keep", "last")
    env = {"DLCR_TRAIN__CLOTHES_START": "1", "DLCR_TRAIN__MILESTONES": "[1]"}  # every loss and the lr step
    whole = dlcr(*common, "--out", tmp_path / "whole", "--epochs", "3", env=env)
    assert whole.code == 0, whole.stderr
    first = dlcr(*common, "--out", tmp_path / "parts", "--epochs", "1", env=env)
    assert first.code == 0, first.stderr
    rest = dlcr(*common, "--out", tmp_path / "parts", "--epochs", "3", "--resume", env=env)
    assert rest.code == 0, rest.stderr
    assert "resuming" in rest.stderr
    _same_files(tmp_path / "whole", tmp_path / "parts", "model.safetensors", "state/training.safetensors")
    drop = ("seconds", "images_per_s", "evaluation")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(metrics(tmp_path / "whole")) == strip(metrics(tmp_path / "parts"))
    assert [r["lr"] for r in metrics(tmp_path / "parts")] == pytest.approx([3.5e-4, 3.5e-5, 3.5e-5])


def _same_scores(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, scores in got.items():
        assert scores == pytest.approx(want[name]), name


def test_keep_best_selects_cals_best_epoch_and_evaluate_loads_it(dlcr, synth_data, tmp_path):
    run = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--epochs", "4",
               "--eval-every", "1", "--lr", "3e-3")
    assert run.code == 0, run.stderr
    rows = metrics(tmp_path / "run")
    ranks = [r["evaluation"]["cc"]["rank1"] for r in rows]
    best = ranks.index(max(ranks)) + 1  # the first of equal epochs, as CAL's strict '>'
    assert best < 4  # (this seed and lr) else best/ and the last model could not be told apart
    assert [r["selection"]["best_epoch"] for r in rows] == [ranks.index(max(ranks[:e])) + 1 for e in range(1, 5)]
    kept = json.loads((tmp_path / "run" / "best" / "metrics.json").read_text())
    assert (kept["epoch"], kept["setting"]) == (best, "cc") and "selected on the test set" in kept["protocol"]
    assert f"best epoch {best}" in run.stderr
    chosen = dlcr("--device", "cpu", "evaluate", synth_data, "-c", tmp_path / "run", "--json")
    assert chosen.code == 0 and f"the model of epoch {best}" in chosen.stderr
    _same_scores(json.loads(chosen.stdout), rows[best - 1]["evaluation"])
    last = dlcr("--device", "cpu", "evaluate", synth_data, "-c", tmp_path / "run", "--epoch", "last", "--json")
    assert last.code == 0 and "its last epoch (4)" in last.stderr
    _same_scores(json.loads(last.stdout), rows[-1]["evaluation"])


def test_keep_best_resumes_to_the_same_selection(dlcr, synth_data, tmp_path):
    common = ("--device", "cpu", "train", synth_data, *SMALL, "--eval-every", "1", "--lr", "3e-3")
    whole = dlcr(*common, "--out", tmp_path / "whole", "--epochs", "3")
    first = dlcr(*common, "--out", tmp_path / "parts", "--epochs", "1")
    rest = dlcr(*common, "--out", tmp_path / "parts", "--epochs", "3", "--resume")
    assert whole.code == first.code == rest.code == 0, rest.stderr
    _same_files(tmp_path / "whole", tmp_path / "parts", "best/model.safetensors", "best/metrics.json",
                "state/training.safetensors")


def test_evaluate_uses_the_precision_the_run_trained_with(dlcr, synth_data, tmp_path):
    run = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--epochs", "1",
               "--precision", "bf16", "--keep", "last")
    assert run.code == 0, run.stderr
    trained = metrics(tmp_path / "run")[-1]["evaluation"]
    same = dlcr("--device", "cpu", "evaluate", synth_data, "-c", tmp_path / "run", "--json")
    assert same.code == 0 and "(bf16)" in same.stderr
    _same_scores(json.loads(same.stdout), trained)
    fp32 = dlcr("--device", "cpu", "evaluate", synth_data, "-c", tmp_path / "run", "--precision", "fp32", "--json")
    assert fp32.code == 0 and "(fp32)" in fp32.stderr


def test_a_killed_run_resumes_to_the_same_model(synth_data, tmp_path, dlcr):
    args = [sys.executable, "-m", "dlcr_cli", "--device", "cpu", "train", str(synth_data), *SMALL, "--epochs", "4",
            "--eval-every", "0"]
    env = {**os.environ, "DLCR_TRAIN__CLOTHES_START": "1", "HF_HUB_OFFLINE": "1"}
    whole = subprocess.run([*args, "--out", str(tmp_path / "whole")], env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    child = subprocess.Popen([*args, "--out", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "state" / "training.safetensors"
    deadline = time.monotonic() + 120
    while not state.is_file() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = saved_epoch(tmp_path / "killed")
    assert 1 <= done <= 4
    again = subprocess.run([*args, "--out", str(tmp_path / "killed"), "--resume"], env=env, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr
    _same_files(tmp_path / "whole", tmp_path / "killed", "model.safetensors")
    assert [r["epoch"] for r in metrics(tmp_path / "killed")] == [1, 2, 3, 4]


def test_a_transformers_backbone_trains(dlcr, synth_data, tiny_resnet, tmp_path):
    run = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", "--backbone", tiny_resnet,
               "--image-size", "64x32", "--batch", "2x2", "--workers", "0", "--epochs", "1")
    assert run.code == 0, run.stderr
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    assert model["kind"] == "hub" and model["dim"] == 64  # 2 x the last stage's 32 channels


@pytest.mark.parametrize("args, code, message", [
    (("--batch", "2by4"), 2, "--batch takes PxK"),
    (("--batch", "99x4"), 2, "lower P or K"),
    (("--backbone", "./no-such-folder"), 69, "cannot load backbone"),
    (("--image-size", "64"), 2, "HEIGHTxWIDTH"),
    (("--resume",), 66, "nothing to resume"),
    (("--generated", "/no/such/gen.jsonl"), 66, "generated data not found"),
])
def test_bad_options_are_one_line(dlcr, synth_data, tmp_path, args, code, message):
    # an option given twice takes its last value: `args` override SMALL's
    run = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", "--epochs", "1", *SMALL, *args)
    assert run.code == code, run.stderr
    assert message in run.stderr and len(run.stderr.strip().splitlines()) <= 3


def test_a_finished_run_is_not_overwritten_and_resume_keeps_settings(dlcr, synth_data, tmp_path):
    first = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--epochs", "1")
    assert first.code == 0, first.stderr
    again = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--epochs", "1")
    assert again.code == 2 and "--resume" in again.stderr
    other = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--epochs", "2",
                 "--lr", "1e-3", "--resume")
    assert other.code == 2 and "lr" in other.stderr
    done = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--epochs", "1", "--resume")
    assert done.code == 0 and len(metrics(tmp_path / "run")) == 1


def test_a_dataset_without_training_images(dlcr, tmp_path):
    from PIL import Image

    image = tmp_path / "q.png"
    Image.new("RGB", (32, 64)).save(image)
    (tmp_path / "r.jsonl").write_text(json.dumps({"image": str(image), "pid": 1, "camid": 0, "split": "query"}) + "\n")
    run = dlcr("train", tmp_path / "r.jsonl", "--out", tmp_path / "run", *SMALL)
    assert run.code == 66 and "no train images" in run.stderr


def test_augmentation_does_not_depend_on_worker_processes(synth_data):
    from dlcr_cli.reid.data import load_reid_data

    data = load_reid_data(synth_data)
    train = TrainSet(data.train, None, (64, 32), seed=0, fraction_of=lambda e: 1.0)
    batch0 = next(iter(torch.utils.data.DataLoader(train, batch_size=4, collate_fn=lambda x: x)))
    batch2 = next(iter(torch.utils.data.DataLoader(train, batch_size=4, num_workers=2, collate_fn=lambda x: x)))
    for a, b in zip(batch0, batch2):
        assert torch.equal(a[0], b[0]) and a[1:3] == b[1:3]


def test_two_processes_share_the_batches_and_the_main_one_writes(synth_data, tmp_path):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dlcr_cli"]
    args = ["--device", "cpu", "train", str(synth_data), *SMALL, "--epochs", "2", "--eval-every", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "dlcr_cli", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=600)
    two = subprocess.run([*launch, *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert two.stderr.count("epoch 1/2:") == 1  # only the main process logs
    solo, shared = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["epoch"] for r in shared] == [1, 2]
    # the batch is global (P x K over both processes, each takes every other chunk): the same
    # images per epoch as one process, where a per-process batch would double them
    assert [(r["images"], r["generated"]) for r in solo] == [(r["images"], r["generated"]) for r in shared]
    assert (tmp_path / "two" / "model.safetensors").is_file() and (tmp_path / "two" / "state").is_dir()


def test_a_short_run_with_generated_data_beats_chance_clearly_on_cc(dlcr, tmp_path):
    """The default synthetic set (24 ids, clothes a tempting shortcut), K = 10 weight-free
    variants, 15 epochs of builtin:small at 64x32: clothes-changing mAP far above what random
    rankings of the same queries get. mAP, not rank-1: with 33 queries a random ranking's
    rank-1 reaches 15 % one time in a hundred, its mAP never gets near 15 %."""
    from dlcr_cli.reid.data import load_reid_data
    from dlcr_cli.reid.metrics import Labels, evaluate_distances
    from dlcr_cli.synth import synthesize

    data = tmp_path / "data"
    synthesize(data, seed=0)
    gen = dlcr("expand", data, "--out", tmp_path / "work", "--weight-free", "--parsing-dir", data / "parsing", "-k", "10")
    assert gen.code == 0, gen.stderr
    (tmp_path / "gen.jsonl").write_text(gen.stdout)
    env = {"DLCR_TRAIN__CLOTHES_START": "5", "DLCR_TRAIN__MILESTONES": "[12]"}
    run = dlcr("--device", "cpu", "train", data, "--out", tmp_path / "run", "--backbone", "builtin:small",
               "--image-size", "64x32", "--batch", "4x4", "--workers", "0", "--epochs", "15", "--generated",
               tmp_path / "gen.jsonl", "--json", env=env)
    assert run.code == 0, run.stderr
    cc = json.loads(run.stdout)["evaluation"]["cc"]
    reid = load_reid_data(data)
    labels = lambda rows: Labels(*(np.array([getattr(r, k) for r in rows]) for k in ("pid", "camid", "clothes")))  # noqa: E731
    rng = np.random.default_rng(0)
    chance = [evaluate_distances(rng.random((len(reid.query), len(reid.gallery))), labels(reid.query),
                                 labels(reid.gallery), "cc").as_dict() for _ in range(200)]
    assert cc["queries"] == chance[0]["queries"]
    chance_map = [c["mAP"] for c in chance]
    assert cc["mAP"] >= max(2 * float(np.mean(chance_map)), max(chance_map)), (cc, np.mean(chance_map), max(chance_map))


def test_a_corrupt_state_is_one_line(dlcr, synth_data, tmp_path):
    first = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--epochs", "1")
    assert first.code == 0, first.stderr
    (tmp_path / "run" / "state" / "training.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    run = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--epochs", "2", "--resume")
    assert run.code == 65 and "unreadable training state" in run.stderr


def test_batches_pin_every_tensor(monkeypatch):
    from dlcr_cli.reid.train import Batch, collate

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self)
    batch = collate([(torch.zeros(3, 8, 4), 1, 2, torch.ones(3, 8, 4)), (torch.zeros(3, 8, 4), 5, 6, None)])
    assert isinstance(batch.pin_memory(), Batch) and len(pinned) == 3
    # real images first, then the variants of those that have one, with their pids
    assert batch.images.shape == (3, 3, 8, 4) and (batch.real, batch.generated) == (2, 1)
    assert batch.images[2].eq(1).all() and batch.pids.tolist() == [1, 5, 1] and batch.clothes.tolist() == [2, 6]


def test_the_device_copy_reads_the_pinned_tensors(monkeypatch):
    """The step hands the loader's pinned tensors themselves to .to(device): a host-side
    torch.cat of real and generated images would make a pageable copy, and the
    non_blocking copy would then wait for the GPU."""
    from dlcr_cli.bench.train import TrainBenchSettings, make_batches, make_stepper

    pinned: set[int] = set()
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.add(id(self)) or self)
    s = TrainBenchSettings(arch="small", ids=2, images_per_id=2, size=(32, 16))
    batch = make_batches(s, 1, pin=True)[0]
    moved: list[int] = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        if self.dim() == 4:
            moved.append(id(self))
        return real_to(self, *args, **kwargs)

    stepper = make_stepper(s, torch.device("cpu"), fast=True)
    monkeypatch.setattr(torch.Tensor, "to", spy)
    stepper.step(batch, clothes_on=True)
    assert moved and all(tensor in pinned for tensor in moved[:1]), "the images copied are the pinned tensor"
    assert id(batch.images) in pinned


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_epoch_totals_are_packed_on_the_collective_device(device):
    """meta stands in for CUDA: losses summed on the device, counts made on the host; all
    must meet on the device for the all-reduce (the first GPU run died here)."""
    from dlcr_cli.reid.train import pack_totals, unpack_totals

    sums = {"loss": torch.tensor(6.0, device=device), "id": torch.tensor(4.0, device=device)}
    packed = pack_totals(sums, torch.tensor(7, device=device), {"batches": 3, "images": 24, "generated": 0},
                         torch.device(device))
    assert packed.device.type == device and packed.dtype == torch.float64 and packed.shape == (6,)
    if device == "cpu":
        total, correct, counts = unpack_totals(packed, sorted(sums), ["batches", "generated", "images"])
        assert {k: float(v) for k, v in total.items()} == {"id": 4.0, "loss": 6.0}
        assert int(correct) == 7 and counts == {"batches": 3, "generated": 0, "images": 24}


def test_a_restored_optimizer_state_takes_its_parameters_layout():
    """channels_last parameters (CUDA training) get their Adam moments back in NHWC, not in
    the NCHW layout the state file holds."""
    from dlcr_cli.reid.train import match_parameter_layouts

    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(conv.parameters())
    conv(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    flat = {"state": {i: {k: v.contiguous() if torch.is_tensor(v) else v for k, v in st.items()}
                      for i, st in saved["state"].items()}, "param_groups": saved["param_groups"]}
    fresh = torch.optim.Adam(conv.parameters())
    fresh.load_state_dict(flat)
    weight = conv.weight
    assert fresh.state[weight]["exp_avg"].stride() != weight.stride()  # what load_state_dict gives
    match_parameter_layouts(fresh)
    for key in ("exp_avg", "exp_avg_sq"):
        moment = fresh.state[weight][key]
        assert moment.stride() == weight.stride() and torch.equal(moment, saved["state"][0][key])


@pytest.mark.parametrize("arch, unused", [
    ("dinov2", ["backbone.model.embeddings.mask_token"]),
    ("swin", ["backbone.model.swin.layernorm.weight", "backbone.model.swin.layernorm.bias"]),
])
def test_parameters_the_forward_never_uses_are_frozen(tmp_path, arch, unused):
    """DINOv2's mask_token (it serves masked inputs only) and Swin's final layernorm (the
    backbone normalises each stage itself) get no gradient: DDP would wait for them at the
    first step. The probe moves no BatchNorm statistic."""
    import tiny_models

    from dlcr_cli.reid.model import build_model
    from dlcr_cli.reid.train import freeze_unused_parameters

    model = build_model(str(getattr(tiny_models, f"build_tiny_{arch}")(tmp_path / arch)))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = freeze_unused_parameters(model, (32, 16), torch.device("cpu"))
    assert frozen == unused
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not freeze_unused_parameters(build_model("builtin:small"), (32, 16), torch.device("cpu"))


# --- reuse only on the same inputs (a changed input refuses --resume; a speed setting does not) ----


def test_the_logged_fraction_is_what_the_data_set_drew_from(dlcr, synth_data, generated, tmp_path):
    """metrics.jsonl reports the fraction the training set really used each epoch: a trainer
    that stopped telling the data set its epoch would stay at the first fraction."""
    env = {"DLCR_TRAIN__PROGRESSIVE_EPOCHS": "[0, 1]", "DLCR_TRAIN__PROGRESSIVE_FRACTIONS": "[0.25, 0.5, 1.0]"}
    run = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--epochs", "3",
               "--generated", generated, "--eval-every", "0", env=env)
    assert run.code == 0, run.stderr
    assert [row["visible_fraction"] for row in metrics(tmp_path / "run")] == [0.25, 0.5, 1.0]


@pytest.fixture()
def copied_data(synth_data, tmp_path):
    import shutil

    shutil.copytree(synth_data, tmp_path / "data")
    return tmp_path / "data"


def test_resume_refuses_other_generated_images_and_names_them(dlcr, synth_data, generated, tmp_path):
    base = ("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--eval-every", "0")
    first = dlcr(*base, "--epochs", "1", "--generated", generated)
    assert first.code == 0, first.stderr
    without = dlcr(*base, "--epochs", "2", "--resume")
    assert without.code == 2 and "--generated (given then, not now)" in without.stderr, without.stderr
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("".join(line + "\n" for line in generated.read_text().splitlines()[::2]))
    other = dlcr(*base, "--epochs", "2", "--resume", "--generated", fewer)
    assert other.code == 2 and "the generated images" in other.stderr, other.stderr
    for line in (without, other):
        assert line.stderr.strip().splitlines()[-1].startswith("dlcr: error: --resume") and "Traceback" not in line.stderr
    assert len(metrics(tmp_path / "run")) == 1  # nothing was trained on other inputs


def test_resume_refuses_changed_training_images(dlcr, copied_data, tmp_path):
    from PIL import Image

    base = ("--device", "cpu", "train", copied_data, "--out", tmp_path / "run", *SMALL, "--eval-every", "0")
    assert dlcr(*base, "--epochs", "1").code == 0
    from dlcr_cli.reid.data import load_reid_data

    image = load_reid_data(str(copied_data)).train[0].path
    pixels = np.asarray(Image.open(image).convert("RGB")).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(image)
    changed = dlcr(*base, "--epochs", "2", "--resume")
    assert changed.code == 2, changed.stderr
    assert "the training images (1 of" in changed.stderr and "content" in changed.stderr


def test_resume_with_other_speed_settings_reads_no_file_again(dlcr, synth_data, tmp_path):
    base = ("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--eval-every", "0")
    assert dlcr(*base, "--epochs", "1").code == 0
    cache = tmp_path / "run" / "state" / ".dlcr-digests.json"
    before = cache.stat().st_mtime_ns
    again = dlcr(*base, "--epochs", "2", "--resume", "--workers", "1")
    assert again.code == 0, again.stderr
    assert cache.stat().st_mtime_ns == before, "every digest came from the cache"
    assert [r["epoch"] for r in metrics(tmp_path / "run")] == [1, 2]


def test_a_state_that_does_not_fit_the_model_is_one_line(dlcr, synth_data, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    base = ("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--eval-every", "0")
    assert dlcr(*base, "--epochs", "1").code == 0
    path = tmp_path / "run" / "state" / "training.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    tensors["id_classifier/fc.weight"] = torch.zeros(99, tensors["id_classifier/fc.weight"].shape[1])
    save_file(tensors, path, metadata=meta)
    run = dlcr(*base, "--epochs", "2", "--resume")
    assert run.code == 65 and "does not fit this model (size mismatch for fc.weight" in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("dlcr: error:") and "Traceback" not in run.stderr


@pytest.mark.parametrize("args, message", [
    (("--image-size", "0x32"), "--image-size: height and width must be positive"),
    (("--batch", "0x4"), "--batch: identities and images per identity must be positive"),
    (("--epochs", "0"), "epochs"),
])
def test_out_of_range_numbers_are_usage_errors(dlcr, synth_data, tmp_path, args, message):
    run = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, *args)
    assert run.code == 2 and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "run").exists()


def test_the_cal_step_uses_every_clothes_class_of_the_identity(monkeypatch):
    """S+(i) in the CAL loss: all clothing classes of sample i's identity (CAL's pid2clothes
    row), not its own class only."""
    import dlcr_cli.reid.train as train
    from dlcr_cli.bench.train import TrainBenchSettings, make_batches, make_stepper

    s = TrainBenchSettings(arch="small", ids=2, images_per_id=2, size=(32, 16), num_pids=4, num_clothes=12)
    stepper = make_stepper(s, torch.device("cpu"), fast=False)
    batch = make_batches(s, 1, pin=False)[0]
    seen = []
    real_cal = train.cal_loss
    monkeypatch.setattr(train, "cal_loss", lambda logits, clothes, pos, *a: seen.append(pos) or real_cal(logits, clothes, pos, *a))
    stepper.step(batch, clothes_on=True)
    (mask,) = seen
    assert torch.equal(mask, stepper.pid2clothes[batch.pids[: batch.real]])
    assert mask.sum(1).tolist() == [3] * batch.real  # 12 classes over 4 identities: 3 each
    assert mask[torch.arange(batch.real), batch.clothes].all()


def test_an_unknown_device_is_a_usage_error_and_an_absent_one_unavailable(dlcr, synth_data, tmp_path):
    unknown = dlcr("--device", "tpu", "train", synth_data, "--out", tmp_path / "run", *SMALL)
    assert unknown.code == 2 and "unknown device 'tpu'" in unknown.stderr
    if not torch.cuda.is_available():
        absent = dlcr("--device", "cuda", "train", synth_data, "--out", tmp_path / "run", *SMALL)
        assert absent.code == 69 and "not available here" in absent.stderr


def test_resume_without_a_record_of_the_inputs_is_one_line(dlcr, synth_data, tmp_path):
    base = ("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *SMALL, "--eval-every", "0")
    assert dlcr(*base, "--epochs", "1").code == 0
    (tmp_path / "run" / "state" / "inputs.json").unlink()
    run = dlcr(*base, "--epochs", "2", "--resume")
    assert run.code == 2 and "no readable record of its inputs" in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("dlcr: error:") and len(metrics(tmp_path / "run")) == 1
