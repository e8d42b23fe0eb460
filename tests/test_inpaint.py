"""dlcr inpaint: target sampling, a tiny random inpainting pipeline, paste-back, formats, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlcr_cli.stages.inpaint import draw_targets, stable_int, variant_seed

TINY = ("--size", "64x32", "--steps", "2")


def test_targets_are_distinct_never_own_and_reproducible():
    pool = [f"{i:03d}_1" for i in range(20)]
    for rel in ("train/a.png", "train/b.png"):
        targets = draw_targets(7, rel, "003_1", pool, 10)
        assert len(set(targets)) == 10 and "003_1" not in targets
        assert targets == draw_targets(7, rel, "003_1", pool, 10)
    assert draw_targets(7, "train/a.png", "003_1", pool, 10) != draw_targets(7, "train/b.png", "003_1", pool, 10)
    assert draw_targets(7, "train/a.png", "003_1", pool, 10) != draw_targets(8, "train/a.png", "003_1", pool, 10)
    assert draw_targets(0, "x", "000_1", pool[:3], 10) == draw_targets(0, "x", "000_1", pool[:3], 5)  # K lowered
    assert len(draw_targets(0, "x", "000_1", pool[:3], 10)) == 2
    assert draw_targets(7, "train/a.png", "003_1", pool, 4) == draw_targets(7, "train/a.png", "003_1", pool, 10)[:4]
    assert draw_targets(7, "train/a.png", "003_1", pool, 3) == ["012_1", "016_1", "008_1"]  # fixed, as the seeds


def test_seeds_are_stable_across_processes():
    # fixed values: a change here changes every generated image of every user
    assert stable_int("variant", 0, "train/a.png", 0) == variant_seed(0, "train/a.png", 0)
    assert variant_seed(0, "train/a.png", 0) == 2116956165255782959
    assert len({variant_seed(0, "train/a.png", k) for k in range(10)}) == 10


@pytest.fixture
def small_prompted(synth_prompted, tmp_path) -> Path:
    """Six training records of the synthetic data, one per clothing id, then the other splits'
    records; prompts.json beside it holds the prompts of all training ids."""
    records = [json.loads(line) for line in synth_prompted.read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    firsts = list({r["clothes"]: r for r in reversed(train)}.values())[::-1][:6]
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in firsts) + "".join(
        json.dumps(r) + "\n" for r in records if r["split"] != "train"))
    table = {r["clothes"]: r["prompt"] for r in train}
    (tmp_path / "prompts.json").write_text(json.dumps(table))
    return path


def inpaint(dlcr, source, out, model, *args):
    return dlcr("inpaint", source, "--out", out, "--model", model, *TINY, *args)


def test_diffusion_writes_k_variants_pasted_back_exactly(dlcr, small_prompted, tiny_inpaint, tmp_path):
    run = inpaint(dlcr, small_prompted, tmp_path / "gen", tiny_inpaint, "-k", "3", "--prompts", tmp_path / "prompts.json")
    assert run.code == 0, run.stderr
    assert len(run.records) == 18
    sources = [json.loads(line) for line in small_prompted.read_text().splitlines()][:6]
    table = json.loads((tmp_path / "prompts.json").read_text())
    for i, record in enumerate(run.records):
        src = sources[i // 3]
        assert record["variant"] == i % 3 and record["source"] == src["image"]
        assert record["clothes"] == src["clothes"] and record["pid"] == src["pid"] and record["camid"] == src["camid"]
        assert record["target_clothes"] != src["clothes"] and record["prompt"] == table[record["target_clothes"]]
        assert "description" not in record
        assert Path(record["image"]).name == Path(src["image"]).stem + f"_v{i % 3}.png"
        out, image = np.asarray(Image.open(record["image"])), np.asarray(Image.open(src["image"]))
        mask = np.asarray(Image.open(src["mask"])) > 127
        assert out.shape == image.shape
        assert (out[~mask] == image[~mask]).all()  # exactly the source outside the mask
        assert (out[mask] != image[mask]).any()
    targets = [r["target_clothes"] for r in run.records[:3]]
    assert len(set(targets)) == 3
    assert "records of other splits than train are not sources" in run.stderr


def test_batch_size_changes_no_image_beyond_rounding(dlcr, small_prompted, tiny_inpaint, tmp_path):
    one = inpaint(dlcr, small_prompted, tmp_path / "a", tiny_inpaint, "-k", "2", "--batch-size", "1")
    four = inpaint(dlcr, small_prompted, tmp_path / "b", tiny_inpaint, "-k", "2", "--batch-size", "5")
    assert one.code == four.code == 0
    for a, b in zip(one.records, four.records):
        assert (a["target_clothes"], a["seed"]) == (b["target_clothes"], b["seed"])
        diff = np.abs(np.asarray(Image.open(a["image"]), int) - np.asarray(Image.open(b["image"]), int))
        assert diff.max() <= 2


def test_existing_outputs_are_skipped(dlcr, small_prompted, tiny_inpaint, tmp_path):
    first = inpaint(dlcr, small_prompted, tmp_path / "gen", tiny_inpaint, "-k", "2")
    (tmp_path / "gen").joinpath(Path(first.records[3]["rel"])).unlink()
    again = inpaint(dlcr, small_prompted, tmp_path / "gen", tiny_inpaint, "-k", "2")
    assert again.code == 0
    assert "1 done, 11 skipped" in again.stderr
    assert [r["image"] for r in again.records] == [r["image"] for r in first.records]


def test_strip_format_round_trip(dlcr, small_prompted, tiny_inpaint, tmp_path):
    files = inpaint(dlcr, small_prompted, tmp_path / "files", tiny_inpaint, "-k", "3", "--batch-size", "2")
    strip = inpaint(dlcr, small_prompted, tmp_path / "strip", tiny_inpaint, "-k", "3", "--batch-size", "2",
                    "--format", "strip")
    assert files.code == strip.code == 0, strip.stderr
    assert len(strip.records) == 18
    for a, b in zip(files.records, strip.records):
        sheet = np.asarray(Image.open(b["image"]))
        tile = np.asarray(Image.open(a["image"]))
        w = tile.shape[1]
        assert sheet.shape == (tile.shape[0], 3 * w, 3)
        assert (sheet[:, b["variant"] * w:(b["variant"] + 1) * w] == tile).all()
        lines = Path(b["image"]).with_suffix(".txt").read_text().splitlines()
        assert lines[b["variant"]] == b["prompt"]
    again = inpaint(dlcr, small_prompted, tmp_path / "strip", tiny_inpaint, "-k", "3", "--format", "strip")
    assert "0 done, 18 skipped" in again.stderr


def test_bad_sources_fail_alone(dlcr, small_prompted, tiny_inpaint, tmp_path):
    records = [json.loads(line) for line in small_prompted.read_text().splitlines()][:4]
    del records[0]["mask"]
    small = np.zeros((5, 5), np.uint8)
    Image.fromarray(small).save(tmp_path / "small_mask.png")
    records[1]["mask"] = str(tmp_path / "small_mask.png")
    records[2]["image"] = str(tmp_path / "missing.png")
    text = "".join(json.dumps(r) + "\n" for r in records)
    run = dlcr("inpaint", "-", "--out", tmp_path / "gen", "--model", tiny_inpaint, *TINY, "-k", "2", input=text)
    assert run.code == 1
    assert len(run.records) == 2 and {r["source"] for r in run.records} == {records[3]["image"]}
    assert "no mask in the record" in run.stderr
    assert "mask is 5x5 but the image is" in run.stderr
    assert "image not found" in run.stderr


def test_no_prompts_or_no_sources(dlcr, small_prompted, tmp_path):
    records = [json.loads(line) for line in small_prompted.read_text().splitlines()][:3]
    for r in records:
        del r["prompt"]
    text = "".join(json.dumps(r) + "\n" for r in records)
    run = dlcr("inpaint", "-", "--out", tmp_path / "gen", "--backend", "recolor", input=text)
    assert run.code == 66 and "no clothing id has a prompt" in run.stderr
    query = dlcr("inpaint", small_prompted, "--out", tmp_path / "g", "--backend", "recolor", "--splits", "nothing")
    assert query.code == 66 and "no source records of split nothing" in query.stderr
    bad = dlcr("inpaint", small_prompted, "--out", tmp_path / "g", "--backend", "recolor", "--prompts", tmp_path / "none.json")
    assert bad.code == 66
    (tmp_path / "bad.json").write_text("[1, 2]")
    bad = dlcr("inpaint", small_prompted, "--out", tmp_path / "g", "--backend", "recolor", "--prompts", tmp_path / "bad.json")
    assert bad.code == 65 and "bad.json" in bad.stderr


def test_fewer_targets_than_k_lower_k_with_a_warning(dlcr, small_prompted, tmp_path):
    records = [json.loads(line) for line in small_prompted.read_text().splitlines()][:6]
    table = {r["clothes"]: r["prompt"] for r in records}
    (tmp_path / "few.json").write_text(json.dumps(table))
    run = dlcr("inpaint", small_prompted, "--out", tmp_path / "g", "--backend", "recolor", "-k", "10",
               "--prompts", tmp_path / "few.json")
    assert run.code == 0, run.stderr
    assert f"only {len(table)} clothing ids have a prompt" in run.stderr
    per_source: dict[str, int] = {}
    for r in run.records:
        per_source[r["source"]] = per_source.get(r["source"], 0) + 1
    assert max(per_source.values()) <= len(table)


def test_an_unavailable_pipeline_is_one_line(dlcr, small_prompted, tmp_path):
    run = dlcr("inpaint", small_prompted, "--out", tmp_path / "g", "--model", "nobody/no-such-inpainting", "-k", "2")
    assert run.code == 69 and "inpaint.model" in run.stderr
    assert len(run.stderr.strip().splitlines()) <= 2  # the splits note, then the error


def test_a_killed_run_resumes_to_byte_identical_files(small_prompted, tiny_inpaint, tmp_path):
    def start(out: Path) -> subprocess.Popen:
        args = ["dlcr", "-q", "inpaint", str(small_prompted), "--out", str(out), "--model", str(tiny_inpaint),
                "--size", "64x32", "--steps", "12", "-k", "4", "--batch-size", "3", "--workers", "1",
                "--prompts", str(small_prompted.parent / "prompts.json")]
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})

    whole = start(tmp_path / "whole")
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    expected = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*.png"))
    assert len(expected) == 24

    killed = start(tmp_path / "resumed")
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "resumed").rglob("*.png"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    partial = len(list((tmp_path / "resumed").rglob("*.png")))
    assert 0 < partial < 24, partial
    resumed = start(tmp_path / "resumed")
    assert resumed.wait(timeout=300) == 0
    for rel in expected:
        assert (tmp_path / "resumed" / rel).read_bytes() == (tmp_path / "whole" / rel).read_bytes(), rel
    assert not list((tmp_path / "resumed").rglob(".*.tmp"))


def test_recolor_paints_the_target_outfits_colours(dlcr, synth_prompted, tmp_path):
    from dlcr_cli.clothing import COLOURS, describe_regions

    run = dlcr("inpaint", synth_prompted, "--out", tmp_path / "gen", "--backend", "recolor", "-k", "3")
    assert run.code == 0, run.stderr
    assert len(run.records) == 3 * sum(1 for line in synth_prompted.read_text().splitlines() if '"train"' in line)
    for record in run.records[::7]:
        out = np.asarray(Image.open(record["image"]))
        source = np.asarray(Image.open(record["source"]))
        parsing = np.asarray(Image.open(record["parsing"]))
        mask = np.asarray(Image.open(record["mask"])) > 127
        assert (out[~mask] == source[~mask]).all()
        wanted = {word for word in record["prompt"].split() if word in COLOURS}
        for item in describe_regions(out, parsing, "lip"):
            if item.slot in ("full", "outer", "upper", "lower", "shoes"):
                assert item.colour in wanted, (record["image"], item, record["prompt"])


def test_recolor_needs_to_know_the_label_set(dlcr, small_prompted, tmp_path):
    records = [json.loads(line) for line in small_prompted.read_text().splitlines()][:6]
    noted = dict(records[0], parsing_labels=None)  # dlcr mask noted the set in the PNG
    del noted["parsing_labels"]
    plain = np.asarray(Image.open(records[1]["parsing"]))
    plain = np.where(plain > 0, 5, 0).astype(np.uint8)  # upper-clothes only: LIP or ATR?
    Image.fromarray(plain).save(tmp_path / "plain.png")
    unknown = dict(records[1], parsing=str(tmp_path / "plain.png"))
    del unknown["parsing_labels"]
    text = "".join(json.dumps(r) + "\n" for r in [noted, unknown, *records[2:]])
    run = dlcr("inpaint", "-", "--out", tmp_path / "gen", "--backend", "recolor", "-k", "2", input=text)
    assert run.code == 1
    assert {r["source"] for r in run.records} == {r["image"] for r in [noted, *records[2:]]}
    assert "plain.png holds LIP or ATR labels" in run.stderr


@pytest.mark.parametrize("fmt", ["files", "strip"])
def test_preview_shows_sources_masks_and_variants(dlcr, small_prompted, tmp_path, fmt):
    sheet = tmp_path / "sheet.png"
    run = dlcr("inpaint", small_prompted, "--out", tmp_path / "gen", "--backend", "recolor", "-k", "3",
               "--format", fmt, "--preview", sheet)
    assert run.code == 0, run.stderr
    assert "contact sheet of 6 source images" in run.stderr
    image = np.asarray(Image.open(sheet).convert("RGB"))
    # 6 rows of 192-pixel tiles; 5 tiles (source, mask, 3 variants) of a 1:2 image side by side.
    assert image.shape[0] > 6 * 192 and 5 * 96 <= image.shape[1] < 6 * 96 + 60
    first = json.loads(small_prompted.read_text().splitlines()[0])
    source = np.asarray(Image.open(first["image"]).convert("RGB").resize((96, 192)))
    assert (np.abs(image[:, :96].astype(int) - source[None, :1, 48]).sum(-1) < 30).any()


def test_preview_of_a_run_where_everything_failed(dlcr, small_prompted, tmp_path):
    records = [json.loads(line) for line in small_prompted.read_text().splitlines()]
    for record in records:
        record["mask"] = str(tmp_path / "gone.png")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = dlcr("inpaint", bad, "--out", tmp_path / "gen", "--backend", "recolor", "-k", "2",
               "--prompts", tmp_path / "prompts.json", "--preview", tmp_path / "sheet.png")
    assert run.code == 1
    assert "no contact sheet written" in run.stderr
    assert not (tmp_path / "sheet.png").exists()


def test_outputs_of_other_settings_are_painted_again_not_skipped(dlcr, small_prompted, tmp_path):
    def run(*args):
        return dlcr("inpaint", small_prompted, "--out", tmp_path / "gen", "--backend", "recolor", "-k", "2",
                    "--prompts", tmp_path / "prompts.json", *args)

    first = run()
    assert "12 done, 0 skipped" in first.stderr
    assert "0 done, 12 skipped" in run().stderr
    assert "12 done, 0 skipped" in run("--seed", "5").stderr  # other targets, same file names
    assert "0 done, 12 skipped" in run("--seed", "5").stderr
    broken = Path(first.records[0]["image"])
    broken.write_bytes(broken.read_bytes()[:100])  # a file cut short counts as not done
    assert "1 done, 11 skipped" in run("--seed", "5").stderr
    assert "6 done, 12 skipped" in run("--seed", "5", "-k", "3").stderr  # a larger K keeps the first K's images


def test_outputs_painted_with_other_masks_are_painted_again(dlcr, small_prompted, synth_data, tmp_path):
    """The mark holds the content of the source's image and mask: masks redone with another
    keep set (same paths) repaint their variants instead of passing the old ones off."""
    def masked(*args):
        run = dlcr("mask", small_prompted, "--backend", "parsing", "--parsing-dir", synth_data / "parsing",
                   "--out", tmp_path / "m", *args)
        assert run.code == 0, run.stderr
        (tmp_path / "masked.jsonl").write_text(run.stdout)
        return tmp_path / "masked.jsonl"

    def painted(source):
        return dlcr("inpaint", source, "--out", tmp_path / "gen", "--backend", "recolor", "-k", "2",
                    "--prompts", tmp_path / "prompts.json")

    first = painted(masked())
    assert "12 done, 0 skipped" in first.stderr, first.stderr
    assert "0 done, 12 skipped" in painted(masked()).stderr
    before = [Path(r["image"]).read_bytes() for r in first.records]
    again = painted(masked("--overwrite", "--keep", "face"))
    assert "12 done, 0 skipped" in again.stderr, again.stderr
    assert [r["image"] for r in again.records] == [r["image"] for r in first.records]
    assert any(Path(r["image"]).read_bytes() != b for r, b in zip(again.records, before))


# --- the diffusion painter: its own view of the shared pipeline, dtypes, weights, memory ----


def painter_of(model, **options):
    import torch

    from dlcr_cli.stages.inpaint import DiffusionPainter

    settings = {"device": torch.device("cpu"), "dtype": torch.float32, "batch_size": 8, "size": (64, 32), "steps": 2,
                "guidance": 7.5, "strength": 1.0, "scheduler": "default", "compile": False, **options}
    return DiffusionPainter(str(model), **settings)


def sources(n: int):
    from dlcr_cli.stages.inpaint import Source

    rng = np.random.default_rng(0)
    mask = np.zeros((40, 20), bool)
    mask[10:30] = True
    return [Source(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8), mask) for _ in range(n)]


def paint(painter, n: int = 1):
    return painter.paint(sources(n), [f"red shirt {i}" for i in range(n)], list(range(100, 100 + n)))


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch.compile's imports
def test_a_painters_scheduler_and_compiled_unet_are_its_own(tiny_inpaint):
    """The model cache shares one pipeline: a dpm or compiled painter must not change it for the
    painters after it (whose fingerprints say default scheduler, no compile)."""
    from diffusers import DPMSolverMultistepScheduler, PNDMScheduler, UNet2DConditionModel

    default_before = paint(painter_of(tiny_inpaint))
    dpm = painter_of(tiny_inpaint, scheduler="dpm", compile=True)
    compiled = dpm.pipe.unet
    later = painter_of(tiny_inpaint)
    cached = later.pipe
    assert type(cached.scheduler) is PNDMScheduler and type(cached.unet) is UNet2DConditionModel
    assert type(dpm.pipe.scheduler) is DPMSolverMultistepScheduler
    assert compiled is not cached.unet and compiled._orig_mod is cached.unet  # the weights are shared
    assert dpm.pipe.vae is cached.vae and dpm.pipe.text_encoder is cached.text_encoder
    assert painter_of(tiny_inpaint, compile=True).pipe.unet is compiled  # compiled once per model
    assert "default" in later.fingerprint and "dpm" in dpm.fingerprint
    only_dpm = painter_of(tiny_inpaint, scheduler="dpm")
    assert type(only_dpm.pipe.scheduler) is DPMSolverMultistepScheduler and only_dpm.pipe.unet is cached.unet
    assert (paint(only_dpm)[0] != default_before[0]).any()
    assert (paint(painter_of(tiny_inpaint))[0] == default_before[0]).all()


def test_a_batch_split_on_out_of_memory_keeps_its_images_and_stays_split(tiny_inpaint):
    import torch

    whole = paint(painter_of(tiny_inpaint), 5)
    painter = painter_of(tiny_inpaint)
    calls: list[int] = []
    real = painter._paint

    def tight(triples):
        calls.append(len(triples))
        if len(triples) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")  # as at the VAE decode, after every step
        return real(triples)

    painter._paint = tight
    split = paint(painter, 5)
    assert 5 in calls  # it did run out of memory
    for a, b in zip(whole, split):  # one generator per output: the same noise however it is cut
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    calls.clear()
    paint(painter, 5)
    assert calls == [2, 2, 1]  # no second out-of-memory


def test_a_diffusers_that_ignores_dtype_is_refused(tiny_inpaint, monkeypatch):
    """diffusers before 0.40 drops `dtype=` (it knew only `torch_dtype=`), logging under our level."""
    import torch
    from diffusers import AutoPipelineForInpainting

    from dlcr_cli.errors import Unavailable
    from dlcr_cli.stages.inpaint import _load_pipeline

    real = AutoPipelineForInpainting.from_pretrained

    def old(cls, path, dtype=None, **options):
        return real(path, **options)

    monkeypatch.setattr(AutoPipelineForInpainting, "from_pretrained", classmethod(old))
    with pytest.raises(Unavailable, match=r"loaded the unet of .* in float32, not the requested float16; upgrade diffusers"):
        _load_pipeline(str(tiny_inpaint), "cpu", torch.float16)
    assert _load_pipeline(str(tiny_inpaint), "cpu", torch.float32).unet.dtype == torch.float32


def test_float16_loads_the_checkpoints_fp16_files_where_it_has_them(tiny_inpaint, tmp_path, dlcr_log):
    import shutil

    import torch

    from dlcr_cli.stages.inpaint import _load_pipeline

    both = tmp_path / "with-fp16"
    shutil.copytree(tiny_inpaint, both)
    pipe = _load_pipeline(str(both), "cpu", torch.float16)
    with torch.no_grad():
        pipe.unet.conv_in.weight.fill_(0.5)  # tells the fp16 files from the default ones
    pipe.save_pretrained(both, variant="fp16")
    assert (both / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()

    half = _load_pipeline(str(both), "cpu", torch.float16)
    assert half.unet.dtype == torch.float16 and (half.unet.conv_in.weight == 0.5).all()
    assert not (_load_pipeline(str(both), "cpu", torch.float32).unet.conv_in.weight == 0.5).all()
    plain = _load_pipeline(str(tiny_inpaint), "cpu", torch.float16)  # no fp16 files: the default ones
    assert plain.unet.dtype == torch.float16 and not (plain.unet.conv_in.weight == 0.5).all()
    assert any("has no fp16 weight files: loading its default weights in float16" in m for m in dlcr_log)


def test_fp16_files_not_in_an_offline_hub_cache_fall_back_to_the_default_ones(tiny_inpaint, monkeypatch):
    import torch
    from diffusers import AutoPipelineForInpainting

    from dlcr_cli.stages.inpaint import _load_pipeline

    real, asked = AutoPipelineForInpainting.from_pretrained, []

    def offline(cls, path, variant=None, **options):
        asked.append(variant)
        if variant is not None:
            raise OSError("Cannot find the requested files in the disk cache and outgoing traffic has been disabled")
        return real(path, **options)

    monkeypatch.setattr(AutoPipelineForInpainting, "from_pretrained", classmethod(offline))
    assert _load_pipeline(str(tiny_inpaint), "cpu", torch.float16).unet.dtype == torch.float16
    assert asked == ["fp16", None]


def test_the_unet_is_channels_last_on_cuda_only(tiny_inpaint, monkeypatch):
    import torch

    from dlcr_cli.stages.inpaint import _load_pipeline, _place

    pipe = _load_pipeline(str(tiny_inpaint), "cpu", torch.float32)
    weight = pipe.unet.conv_in.weight
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(type(pipe), "to", lambda self, *args, **kwargs: self)  # no GPU here
    _place(pipe, torch.device("cuda"))
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
