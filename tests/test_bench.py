"""dlcr bench inpaint: the tiny run end to end on CPU, the SD-1.5 configs on the meta device,
the FLOP counting, and the no-GPU error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlcr_cli.bench import (
    count_flops,
    cuda_timer,
    float32_precision,
    full_float32,
    matmul_peak_flops,
    peak_memory_gb,
    repeat_for,
)
from dlcr_cli.bench.inpaint import (
    NEEDS_CUDA,
    SD15,
    TINY,
    clip_tokenizer,
    unet_calls,
    unet_flops,
)

SMALL = ("--arch", "tiny", "--images", "5", "--batch-size", "5", "--steps", "1", "--size", "16x8")


@pytest.fixture
def run_bench(dlcr):
    """`dlcr bench ...` through the real app (its registration, error handling and state)."""
    return lambda *args: dlcr("bench", *args)


def test_tiny_run_end_to_end(run_bench, tmp_path):
    result = run_bench("inpaint", *SMALL, "--dpm", "--json", "--work-dir", tmp_path)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"device", "arch", "settings", "rows", "speedup"}
    assert report["arch"] == "tiny" and report["device"].startswith("cpu")
    assert report["settings"]["size"] == [16, 8] and report["settings"]["scheduler"] == "PNDMScheduler"
    names = [row["name"] for row in report["rows"]]
    assert names[0].startswith("(a) reference") and names[1].startswith("(b) dlcr") and "other quality" in names[2]
    for row in report["rows"]:
        assert set(row) == {"name", "images", "seconds", "images_per_s", "peak_mem_gb", "unet_share_of_peak"}
        assert row["images"] == 5 and row["seconds"] > 0 and row["images_per_s"] > 0
        assert row["peak_mem_gb"] is None and row["unet_share_of_peak"] is None  # no GPU: no invented numbers
    assert report["speedup"] > 0 and report["peak_bf16_tflops"] is None and report["unet_gflop_per_forward"] > 0
    assert "no GPU" in result.stderr and "dlcr / reference" in result.stderr
    for row in ("reference", "dlcr", "dlcr-dpm"):  # every row wrote its images, pasted back
        written = sorted((tmp_path / "out" / row).rglob("*.png"))
        assert len(written) == 5
        image = np.asarray(Image.open(written[0]))
        assert image.shape == (128, 64, 3)
    # the dpm row's scheduler was put back on the pipeline the model cache shares
    from dlcr_cli.cache import CACHE

    pipe = CACHE.get("inpainting", str(tmp_path / "model-tiny"), dtype=torch.float32, device=torch.device("cpu"),
                     load=lambda: pytest.fail("the pipeline should be cached"), setting="inpaint.model")
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"


def test_tiny_run_with_discriminator_guidance(run_bench, tmp_path):
    """(e): (b)'s painter guided by a random-init discriminator of the default architecture, its
    seconds per image next to (b)'s and their ratio."""
    result = run_bench("inpaint", "--arch", "tiny", "--images", "5", "--batch-size", "5", "--steps", "2",
                       "--size", "16x8", "--discriminator", "--json", "--work-dir", tmp_path)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    names = [row["name"] for row in report["rows"]]
    assert len(names) == 3 and names[1].startswith("(b) dlcr")
    assert names[2] == "(e) dlcr + discriminator guidance, batch 5"
    guided = report["guidance"]
    assert guided["discriminator"] == "dlcr_cli.discriminator.Discriminator(width=128, levels=4), random init"
    assert (guided["dg_weight"], guided["dg_min_t"]) == (1.0, 200)
    assert guided["unet_calls_per_image"] == 3 and guided["guided_unet_calls_per_image"] == 1  # PNDM: 501, 1, 1
    plain, steered = report["rows"][1], report["rows"][2]
    assert guided["unguided_s_per_image"] == pytest.approx(plain["seconds"] / plain["images"], rel=1e-2)
    assert guided["guided_s_per_image"] == pytest.approx(steered["seconds"] / steered["images"], rel=1e-2)
    assert guided["ratio"] == pytest.approx(guided["guided_s_per_image"] / guided["unguided_s_per_image"], rel=1e-2)
    assert "discriminator guidance (weight 1, t > 200)" in result.stderr and "s/image guided" in result.stderr
    assert len(sorted((tmp_path / "out" / "dlcr-dg").rglob("*.png"))) == 5
    no_dg = run_bench("inpaint", *SMALL, "--json", "--work-dir", tmp_path)
    assert no_dg.code == 0 and "guidance" not in json.loads(no_dg.stdout)


def test_sd15_without_a_gpu_is_unavailable(run_bench, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = run_bench("inpaint", "--work-dir", tmp_path)
    assert result.code == 69
    assert NEEDS_CUDA in result.stderr
    assert not any(tmp_path.iterdir())  # refused before building anything


def test_bad_size_is_a_usage_error(run_bench, tmp_path):
    result = run_bench("inpaint", "--arch", "tiny", "--size", "30x16", "--work-dir", tmp_path)
    assert result.code == 2
    assert "multiples of 8" in result.stderr


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sd15_architecture_is_sd15_inpainting():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):  # shapes only: no 4 GB of weights
        unet = UNet2DConditionModel(**SD15.unet)
        vae = AutoencoderKL(**SD15.vae)
        text = CLIPTextModel(CLIPTextConfig(**SD15.text))
    assert _params(unet) == pytest.approx(859.54e6, rel=0.005)
    assert _params(vae) == pytest.approx(83.65e6, rel=0.005)
    assert _params(text) == pytest.approx(123.06e6, rel=0.005)
    assert unet.config.in_channels == 9 and unet.config.cross_attention_dim == 768
    assert vae.config.scaling_factor == 0.18215 and 2 ** (len(vae.config.block_out_channels) - 1) == 8
    assert text.config.hidden_act == "quick_gelu" and text.config.vocab_size == 49408
    assert len(clip_tokenizer()) <= text.config.vocab_size  # every token id has an embedding row
    assert SD15.scheduler["beta_schedule"] == "scaled_linear" and SD15.scheduler["skip_prk_steps"]


def test_sd15_unet_flops_at_the_paper_size():
    # NOTES.md: about 600 GFLOP per forward at 96x32 latents (768x256 images); guidance doubles it
    one = unet_flops(SD15.unet, (96, 32), batch=1)
    assert 550e9 < one < 650e9
    assert unet_flops(SD15.unet, (96, 32), batch=2) == 2 * one


def test_flop_counter_counts_and_doubles_with_the_batch():
    x, w = torch.zeros(8, 16), torch.zeros(32, 16)
    assert count_flops(lambda: torch.nn.functional.linear(x, w)) == 2 * 8 * 16 * 32
    one = unet_flops(TINY.unet, (16, 8), batch=1, text_len=77)
    assert one > 0 and unet_flops(TINY.unet, (16, 8), batch=2) == 2 * one


def test_unet_calls_per_image():
    from diffusers import DPMSolverMultistepScheduler, PNDMScheduler

    pndm = PNDMScheduler(**SD15.scheduler)
    assert unet_calls(pndm, 50, 1.0) == 51  # PNDM without PRK repeats its first step
    assert unet_calls(pndm, 50, 0.5) == 26
    assert unet_calls(DPMSolverMultistepScheduler.from_config(pndm.config), 25, 1.0) == 25


def test_gpu_numbers_are_none_on_cpu():
    cpu = torch.device("cpu")
    assert matmul_peak_flops(cpu) is None and peak_memory_gb(cpu) is None
    with cuda_timer(cpu) as timing:
        sum(range(1000))
    assert timing.seconds > 0


class FakeClock:
    """A clock that only moves when the timed function runs: `cost` seconds per call."""

    def __init__(self, cost: float) -> None:
        self.now, self.cost, self.calls, self.syncs = 0.0, cost, 0, 0

    def __call__(self) -> float:
        return self.now

    def run(self) -> None:
        self.now += self.cost
        self.calls += 1


@pytest.mark.parametrize("cost", [0.1, 0.0007, 3.0])
def test_repeat_for_times_one_round_of_at_least_the_minimum(cost):
    clock = FakeClock(cost)
    runs, seconds = repeat_for(clock.run, 0.5, clock=clock)
    assert seconds >= 0.5 and seconds == pytest.approx(runs * cost)  # the last round, timed alone
    assert clock.calls < 2 * runs + 20  # the earlier rounds were short warm-ups, not as long again
    assert runs == 1 if cost >= 0.5 else runs > 1


def test_repeat_for_synchronises_around_each_round_and_stops_at_max_runs():
    clock = FakeClock(0.0)  # a function that takes no time at all
    syncs = []
    runs, seconds = repeat_for(clock.run, 0.5, clock=clock, sync=lambda: syncs.append(clock.calls), max_runs=64)
    assert runs == 64 and seconds == 0.0
    assert len(syncs) % 2 == 0 and syncs[-1] - syncs[-2] == 64  # the last round's calls between its two syncs


def test_full_float32_sets_ieee_and_restores_whatever_was_set():
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # as a user's script might, before the bench
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        with full_float32() as report:
            inside = float32_precision()
        assert inside["cuda.matmul"] == inside["cudnn.conv"] == inside["mkldnn.matmul"] == "ieee"
        assert report["float32"] == "ieee" and report["before"]["cuda.matmul"] == "tf32"
        after = float32_precision()
        assert after["cuda.matmul"] == "tf32" and after["mkldnn.matmul"] == "bf16"
    finally:
        torch.backends.cuda.matmul.fp32_precision = "none"
        torch.backends.mkldnn.matmul.fp32_precision = "none"


def test_help_imports_no_heavy_modules():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from dlcr_cli.cli import app\n"
        "result = CliRunner().invoke(app, ['bench', 'inpaint', '--help'])\n"
        "assert result.exit_code == 0 and '--batch-size' in result.stdout, result.output\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr


# --- dlcr bench evaluate ------------------------------------------------------------------------

EVAL_SMALL = ("--queries", "60", "--gallery", "900", "--dim", "16", "--ids", "30")


def test_evaluate_bench_runs_both_side_by_side_and_they_agree(run_bench):
    result = run_bench("evaluate", *EVAL_SMALL, "--modes", "standard,cc,sc", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    names = [row["name"] for row in report["rows"]]
    assert names[0].startswith("(a) reference") and names[1].startswith("(b) dlcr")
    assert report["agree"] is True and report["max_abs_diff"] <= 1e-6 and report["speedup"] > 0
    assert report["settings"]["queries"] == 60 and report["settings"]["modes"] == ["standard", "cc", "sc"]
    for row in report["rows"]:
        assert row["seconds"] > 0 and row["peak_rss_gb"] >= 0 and row["peak_gpu_gb"] is None
        assert set(row["scores"]) == {"standard", "cc", "sc"}
        assert 0 < row["scores"]["standard"]["mAP"] < 1  # neither trivial nor hopeless
    assert report["rows"][0]["scores"] == report["rows"][1]["scores"]
    assert "metrics agree" in result.stderr


def test_evaluate_bench_reports_its_precision_and_an_env_override(run_bench, monkeypatch):
    result = run_bench("evaluate", *EVAL_SMALL, "--json")
    precision = json.loads(result.stdout)["precision"]
    assert precision["float32"] == "ieee" and precision["env_override"] is None
    assert "full precision" in result.stderr and "NVIDIA_TF32_OVERRIDE" not in result.stderr

    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "1")  # cuBLAS reads it at load: torch cannot undo it
    result = run_bench("evaluate", *EVAL_SMALL, "--json")
    assert result.code == 0, result.stderr
    precision = json.loads(result.stdout)["precision"]
    assert precision["env_override"] == "NVIDIA_TF32_OVERRIDE=1"
    assert precision["before"]["env"] == {"NVIDIA_TF32_OVERRIDE": "1"}
    assert "warning: bench: NVIDIA_TF32_OVERRIDE=1 is set" in result.stderr

    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")  # only ever disables TF32: nothing to warn about
    result = run_bench("evaluate", *EVAL_SMALL, "--json")
    assert json.loads(result.stdout)["precision"]["env_override"] is None and "warning" not in result.stderr


def test_evaluate_bench_without_the_reference(run_bench):
    result = run_bench("evaluate", *EVAL_SMALL, "--no-reference", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["rows"]) == 1 and report["speedup"] is None and report["agree"] is None


def test_evaluate_bench_refuses_a_reference_that_cannot_fit(run_bench, monkeypatch):
    from dlcr_cli.bench import evaluate as bench_evaluate

    monkeypatch.setattr(bench_evaluate, "available_bytes", lambda: 2**30)
    result = run_bench("evaluate", "--json")  # MSMT17's size needs ~10.7 GiB for the matrix and argsort
    assert result.code == 69 and "--no-reference" in result.stderr and result.stdout == ""


def test_evaluate_bench_bad_modes(run_bench):
    result = run_bench("evaluate", *EVAL_SMALL, "--modes", "standard,bogus")
    assert result.code == 2 and "--modes" in result.stderr


def test_peak_rss_sees_an_allocation_inside_the_block():
    from dlcr_cli.bench.evaluate import peak_rss

    with peak_rss() as peak:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del block
    assert peak.bytes >= 48 * 2**20


# --- dlcr bench train ---------------------------------------------------------------------------


TINY_TRAIN = ("--arch", "small", "--batch", "2x2", "--size", "32x16", "--steps", "2", "--warmup", "1", "--json")
ROW_FIELDS = {"name", "precision", "channels_last", "seconds", "peak_mem_gb", "vs_reference"}


def test_train_bench_rows_on_cpu_are_the_reference_and_fp32(run_bench):
    result = run_bench("train", *TINY_TRAIN)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [row["name"] for row in report["rows"]] == ["reference", "fp32"]
    assert set(report["skipped"]) == {"fp16", "bf16"} and "CUDA-only" in report["skipped"]["fp16"]
    for row in report["rows"]:
        assert set(row) == ROW_FIELDS | {"images", "images_per_s"}
        assert row["images"] == 2 * 4 and row["seconds"] > 0 and row["peak_mem_gb"] is None
        assert row["images_per_s"] == pytest.approx(row["images"] / row["seconds"], abs=1e-3)
        assert (row["precision"], row["channels_last"]) == ("fp32", False)  # channels_last is CUDA-only
    reference, fp32 = report["rows"]
    assert reference["vs_reference"] == 1.0
    assert fp32["vs_reference"] == pytest.approx(fp32["images_per_s"] / reference["images_per_s"], rel=1e-2)
    assert report["speedup"] == fp32["vs_reference"] and report["fastest"] == "fp32"
    assert report["unit"] == "images" and report["settings"]["size"] == [32, 16] and not report["settings"]["video"]
    assert report["model"]["head"] == "image" and report["model"]["dim"] == 2 * 256  # max + average pool
    assert report["model"]["label_smoothing"] == 0.1 and "cudnn.conv" in report["float32"]
    assert "dlcr / reference" in result.stderr and "skipped fp16, bf16: autocast rows are CUDA-only" in result.stderr


def test_train_bench_video_times_clips_through_the_video_head(run_bench, monkeypatch):
    from dlcr_cli.reid.model import SmallNet

    seen: list[tuple[int, ...]] = []
    forward = SmallNet.forward
    monkeypatch.setattr(SmallNet, "forward", lambda self, x: seen.append(tuple(x.shape)) or forward(self, x))
    result = run_bench("train", "--video", "--frames", "2", *TINY_TRAIN)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["unit"] == "clips" and report["settings"]["video"] is True and report["settings"]["frames"] == 2
    assert [row["name"] for row in report["rows"]] == ["reference", "fp32"]
    for row in report["rows"]:
        assert set(row) == ROW_FIELDS | {"clips", "frames", "clips_per_s", "frames_per_s"}
        assert row["clips"] == 2 * 4 and row["frames"] == 2 * row["clips"]  # 2 steps of 2x2 clips, 2 frames each
        assert row["clips_per_s"] == pytest.approx(row["clips"] / row["seconds"], abs=1e-3)
        assert row["frames_per_s"] == pytest.approx(row["frames"] / row["seconds"], abs=1e-3)
    # CAL's c2dres50: C-d (no 2C concatenation), no label smoothing; every frame through the backbone
    assert report["model"]["head"] == "video" and report["model"]["dim"] == 256
    assert report["model"]["label_smoothing"] == 0.0
    assert seen and set(seen) == {(4 * 2, 3, 32, 16)}
    assert "clips/s" in result.stderr and "frames/s" in result.stderr and "clips of 2 frames" in result.stderr


def test_train_bench_video_defaults_are_cals_video_recipe_and_explicit_values_win(run_bench, monkeypatch):
    from dlcr_cli.bench import train as bench_train

    settings = []
    monkeypatch.setattr(bench_train, "run_train_bench", lambda s, device: settings.append(s) or {})
    monkeypatch.setattr(bench_train, "print_report", lambda report: None)
    for args in (("--video",), ("--video", "--size", "64x32", "--batch", "4x2", "--frames", "3"), ()):
        result = run_bench("train", "--arch", "small", *args)
        assert result.code == 0, result.stderr
    video, explicit, image = settings
    assert (video.size, video.ids, video.images_per_id, video.frames, video.video) == ((256, 128), 16, 4, 8, True)
    assert (explicit.size, explicit.ids, explicit.images_per_id, explicit.frames) == ((64, 32), 4, 2, 3)
    assert (image.size, image.ids, image.images_per_id, image.frames, image.video) == ((384, 192), 8, 8, None, False)


def test_train_bench_video_batches_are_clips_and_rows_share_them():
    from dlcr_cli.bench.train import TrainBenchSettings, make_batches

    s = TrainBenchSettings(arch="small", video=True, frames=3, ids=2, images_per_id=2, size=(32, 16))
    batches = make_batches(s, 6, pin=False)
    assert len(batches) == 6 and all(tuple(b.images.shape) == (4, 3, 3, 32, 16) for b in batches)
    assert all(len(b.pids) == len(b.clothes) == 4 for b in batches)  # one label per clip, not per frame
    again = make_batches(s, 6, pin=False)
    assert all(torch.equal(a.images, b.images) for a, b in zip(batches, again))  # seeded: every row the same


@pytest.mark.parametrize(("args", "message"), [
    (("--video", "--frames", "0"), "--frames must be positive"),
    (("--frames", "4"), "add --video"),
])
def test_train_bench_bad_frames_is_a_one_line_usage_error(run_bench, args, message):
    result = run_bench("train", "--arch", "small", *args)
    assert result.code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_train_bench_bad_batch(run_bench):
    result = run_bench("train", "--batch", "8by8")
    assert result.code == 2 and "--batch takes PxK" in result.stderr


def test_train_bench_model_is_resnet50_with_last_stride_1():
    from dlcr_cli.bench.train import build_resnet50_reid

    meta = torch.device("meta")
    with meta:
        model = build_resnet50_reid(meta)
        fmap = model.feature_map(torch.zeros(2, 3, 384, 192))
        embedding = model(torch.zeros(2, 3, 384, 192))
    backbone_params = sum(p.numel() for p in model.backbone.parameters())
    assert backbone_params == pytest.approx(23.5e6, rel=0.01)  # ResNet-50 without its classifier
    assert tuple(fmap.shape) == (2, 2048, 24, 12)  # output stride 16: the last stage keeps its size
    assert tuple(embedding.shape) == (2, 4096) and model.spec["last_stride_1"] is True
    with meta:
        video = build_resnet50_reid(meta, head="video")
        clips = video(torch.zeros(2, 3, 3, 256, 128))
    assert tuple(clips.shape) == (2, 2048) and video.spec["head"] == "video" and video.dim == 2048


# --- dlcr bench startup, describe, all ----------------------------------------------------------


def test_startup_bench_times_whole_processes_and_sees_no_heavy_import(run_bench):
    result = run_bench("startup", "--runs", "2", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("help_seconds", "completion_seconds", "import_torch_seconds"):
        assert report[key]["runs"] == 2 and 0 < report[key]["min"] <= report[key]["median"] <= report[key]["max"]
    assert report["help_vs_import_torch"] == pytest.approx(
        report["help_seconds"]["median"] / report["import_torch_seconds"]["median"], abs=1e-3)
    assert report["completion_vs_import_torch"] > 0 and report["target_ratio"] == 0.2
    assert report["command"].endswith("dlcr") or report["command"].endswith("-m dlcr_cli")
    assert report["heavy_modules_imported"] == [] and report["import_seconds"] > 0
    assert "heavy modules imported: none" in result.stderr and "x import torch" in result.stderr


def test_describe_bench_counts_every_image(run_bench):
    result = run_bench("describe", "--ids", "4", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == "colors" and report["images"] > 20 and report["images_per_s"] > 0


def test_all_runs_what_a_cpu_can_and_says_what_it_skipped(run_bench, monkeypatch):
    from functools import partial

    from dlcr_cli.bench import digests as bench_digests
    from dlcr_cli.bench import evaluate as bench_evaluate
    from dlcr_cli.bench import inpaint as bench_inpaint
    from dlcr_cli.bench import train as bench_train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench_evaluate, "EvalBenchSettings",
                        partial(bench_evaluate.EvalBenchSettings, queries=40, gallery=300, dim=8, ids=20))
    small_inpaint = bench_inpaint.BenchSettings.for_arch
    monkeypatch.setattr(bench_inpaint.BenchSettings, "for_arch", staticmethod(
        lambda arch, **_: small_inpaint(arch, images=5, batch_size=5, steps=1, size=(16, 8))))
    train_settings = bench_train.TrainBenchSettings
    monkeypatch.setattr(bench_train, "TrainBenchSettings", lambda **kw: train_settings(
        **{**kw, "size": (32, 16), "ids": 2, "images_per_id": 2, "steps": 1, "warmup": 0,
           **({"frames": 2} if kw.get("video") else {})}))
    digests_bench = bench_digests.run_digests_bench
    monkeypatch.setattr(bench_digests, "run_digests_bench", lambda files, **kw: digests_bench(50, 10))
    result = run_bench("all", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["ran"]) == {"startup", "describe colors", "digests", "evaluate", "inpaint tiny", "train small",
                                  "train video small"}
    assert set(report["skipped"]) == {"describe vlm", "inpaint sd15", "train resnet50", "train video resnet50"}
    image, video = report["ran"]["train small"], report["ran"]["train video small"]
    assert (image["unit"], image["model"]["head"]) == ("images", "image")
    assert (video["unit"], video["model"]["head"], video["settings"]["frames"]) == ("clips", "video", 2)
    assert video["rows"][0]["frames"] == 2 * video["rows"][0]["clips"]
    assert "needs CUDA" in report["skipped"]["inpaint sd15"] and report["ran"]["evaluate"]["agree"] is True


def test_digests_bench_reads_every_file_once_then_none(run_bench):
    result = run_bench("digests", "--files", "300", "--size", "100", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    first, resume = report["rows"]
    assert (first["read"], resume["read"]) == (300, 0) and report["cache_mb"] > 0


# --- dlcr bench embed ---------------------------------------------------------------------------


def test_embed_bench_times_torch_and_the_exported_graph_on_the_same_features(run_bench):
    result = run_bench("embed", "--arch", "small", "--size", "64x32", "--batch-sizes", "4,6", "--steps", "1", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["provider"] == "CPUExecutionProvider" and report["onnx_skipped"] is None
    assert report["export_seconds"] > 0 and [row["batch"] for row in report["rows"]] == [4, 6]
    for row in report["rows"]:
        torch_row, ort_row = row["torch"], row["onnxruntime"]
        assert torch_row["images"] == ort_row["images"] == row["batch"]  # one timed batch after the warm-up
        assert row["ratio"] == pytest.approx(ort_row["images_per_s"] / torch_row["images_per_s"], rel=1e-2)
        assert row["max_abs_diff"] <= 1e-4  # the same L2-normalised mirror-sum features
    assert "onnxruntime images/s" in result.stderr


def test_embed_bench_without_the_extra_times_torch_and_says_why(monkeypatch):
    import torch

    from dlcr_cli.bench import embed as bench_embed
    from dlcr_cli.errors import Unavailable
    from dlcr_cli.reid import export

    def missing():
        raise Unavailable(f"ONNX export needs onnx, onnxscript and onnxruntime: {export.EXTRA}")

    monkeypatch.setattr(export, "require_extra", missing)
    report = bench_embed.run_embed_bench(bench_embed.EmbedBenchSettings(arch="small", size=(32, 16), batch_sizes=(2,),
                                                                        steps=1), torch.device("cpu"))
    assert "dlcr[export]" in report["onnx_skipped"] and report["rows"][0]["onnxruntime"] is None
    assert report["rows"][0]["torch"]["images_per_s"] > 0


@pytest.mark.parametrize("args, says", [(["--batch-sizes", "64,x"], "--batch-sizes"), (["--batch-sizes", "0"], "positive"),
                                        (["--size", "0x10"], "--size")])
def test_embed_bench_bad_options(run_bench, args, says):
    result = run_bench("embed", "--arch", "small", *args)
    assert result.code == 2 and says in result.stderr and "Traceback" not in result.stderr
