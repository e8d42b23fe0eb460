"""Discriminator guidance in the diffusion painter (tiny random pipeline, CPU): what one guided
UNet call does to the noise prediction, weight 0 as unguided, the paste-back, the marks and
the one-line errors of `dlcr inpaint --discriminator`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlcr_cli.stages.inpaint import DiscriminatorGuidance
from test_inpaint import paint, painter_of

SIZE = (64, 32)
LATENT = (4, SIZE[0] // 2, SIZE[1] // 2)
"""The tiny pipeline's latents at SIZE: its VAE has two levels (scale 2, SD's has 8)."""
TINY = ("--size", f"{SIZE[0]}x{SIZE[1]}", "--steps", "2")


class Linear(torch.nn.Module):
    """logit = sum(a * x_t): its gradient over x_t is `a`, whatever x_t and t. Records what it
    was called with."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(a.clone())
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.dtype, bool]] = []

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        self.seen.append((latents.detach().clone(), timesteps.clone(), latents.dtype, latents.requires_grad))
        return (self.a * latents).flatten(1).sum(1)


def pattern(scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    return scale * torch.randn(LATENT, generator=torch.Generator().manual_seed(seed))


def guided(a: torch.Tensor | None = None, weight: float = 1.0, min_t: int = 200, digest: str = "test"):
    return DiscriminatorGuidance(Linear(pattern() if a is None else a), weight=weight, min_t=min_t, digest=digest)


# --- the painter ------------------------------------------------------------------------------


def test_weight_0_is_the_unguided_painter_byte_for_byte(tiny_inpaint):
    from diffusers import UNet2DConditionModel

    plain = painter_of(tiny_inpaint)
    zero = painter_of(tiny_inpaint, dg=guided(weight=0))
    assert zero.dg is None and zero.pipe is plain.pipe  # not even wrapped
    assert zero.fingerprint == plain.fingerprint  # existing outputs stay valid
    for a, b in zip(paint(plain, 2), paint(zero, 2)):
        assert a.tobytes() == b.tobytes()
    on = painter_of(tiny_inpaint, dg=guided())
    assert on.fingerprint.startswith(plain.fingerprint + " dg test 1.0 200")
    assert type(on.pipe.unet).__name__ == "GuidedUNet" and on.pipe.unet.unet is plain.pipe.unet
    assert type(painter_of(tiny_inpaint).pipe.unet) is UNet2DConditionModel  # the cached pipeline unchanged
    assert painter_of(tiny_inpaint, dg=guided(weight=0.5)).fingerprint != on.fingerprint
    assert painter_of(tiny_inpaint, dg=guided(min_t=100)).fingerprint != on.fingerprint
    assert painter_of(tiny_inpaint, dg=guided(digest="other")).fingerprint != on.fingerprint


def record_calls(painter):
    """Every UNet call of the painter's pipeline: (sample, timestep, the real UNet's eps, the
    guided eps). Hooks, removed by calling the returned `stop`."""
    calls: list[dict] = []
    wrapper = painter.pipe.unet

    def inner(module, args, kwargs, out):
        calls.append({"sample": args[0].detach().clone(), "t": int(args[1]), "raw": out[0].detach().clone()})

    def outer(module, args, kwargs, out):
        calls[-1]["guided"] = out[0].detach().clone()

    handles = [wrapper.unet.register_forward_hook(inner, with_kwargs=True),
               wrapper.register_forward_hook(outer, with_kwargs=True)]
    return calls, lambda: [h.remove() for h in handles]


def cpu_dtypes() -> list[torch.dtype]:
    """float32, and the half dtypes this CPU's torch runs the tiny UNet in."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    from dlcr_cli.bench.inpaint import TINY as ARCH

    usable = [torch.float32]
    unet = UNet2DConditionModel(**ARCH.unet)
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its notice on casting a model with `to`
    for dtype in (torch.bfloat16, torch.float16):
        try:
            with torch.no_grad():
                unet.to(dtype)(torch.zeros(1, 9, *LATENT[1:], dtype=dtype), 10,
                               encoder_hidden_states=torch.zeros(1, 3, 32, dtype=dtype))
        except RuntimeError:  # "... not implemented for 'Half'"
            continue
        usable.append(dtype)
    diffusers_logging.set_verbosity(level)
    return usable


CASES = [(scheduler, 7.5, dtype) for dtype in cpu_dtypes() for scheduler in ("default", "dpm")]
CASES.append(("default", 1.0, torch.float32))  # no CFG: one half


@pytest.mark.parametrize("scheduler,guidance,dtype", CASES, ids=lambda v: str(v).removeprefix("torch."))
def test_one_guided_unet_call_moves_eps_by_the_scaled_gradient(tiny_inpaint, scheduler, guidance, dtype):
    """logit = sum(a x_t): g = a, so each guided call's eps is the real UNet's minus
    sqrt(1 - alpha_bar_t) * w * a at t > min_t (every image, both CFG halves) and exactly the
    real UNet's at t <= min_t; the discriminator gets x_t (float32, differentiable) and t."""
    a, weight = pattern(0.5), 0.7
    probe = painter_of(tiny_inpaint, scheduler=scheduler, steps=4, dtype=dtype)
    probe.pipe.scheduler.set_timesteps(4)
    timesteps = sorted({int(t) for t in probe.pipe.scheduler.timesteps}, reverse=True)
    min_t = timesteps[1]  # the boundary itself is not guided
    dg = guided(a, weight=weight, min_t=min_t)
    painter = painter_of(tiny_inpaint, scheduler=scheduler, steps=4, dtype=dtype, guidance=guidance, dg=dg)
    assert dg.discriminator.a.dtype == torch.float32  # the pipeline's cast left it alone
    calls, stop = record_calls(painter)
    try:
        paint(painter, 2)
    finally:
        stop()
    alphas_cumprod = painter.pipe.scheduler.alphas_cumprod
    assert {c["t"] for c in calls} >= {timesteps[0], min_t, timesteps[-1]}
    seen = iter(dg.discriminator.seen)
    halves = 2 if guidance > 1 else 1
    for call in calls:
        assert call["guided"].dtype == call["raw"].dtype == dtype
        if call["t"] <= min_t:
            assert torch.equal(call["guided"], call["raw"])
            continue
        latents, t, seen_dtype, differentiable = next(seen)
        x_t = call["sample"][:, :4]
        assert x_t.shape[0] == 2 * halves and seen_dtype == torch.float32 and differentiable
        assert torch.equal(latents, x_t[:2].float()) and torch.equal(t, torch.tensor([call["t"]] * 2))
        if halves == 2:
            assert torch.equal(x_t[:2], x_t[2:])  # CFG: both halves share x_t
        expected = -(1 - alphas_cumprod[call["t"]]).sqrt() * weight * a
        moved = call["guided"].float() - call["raw"].float()
        exact = call["raw"].float() + expected  # what guidance gives before rounding to dtype once
        tolerance = 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps * exact.abs() + 1e-6
        assert (moved - expected).abs().le(tolerance).all(), (call["t"], (moved - expected).abs().max())
        assert expected.abs().max() > 0.1
    assert next(seen, None) is None  # no discriminator call at t <= min_t


def test_the_wrapper_returns_what_the_unet_returns(tiny_inpaint):
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    from dlcr_cli.stages.inpaint import GuidedUNet

    unet = painter_of(tiny_inpaint).pipe.unet
    scheduler = painter_of(tiny_inpaint).pipe.scheduler
    wrapper = GuidedUNet(unet, guided(weight=2.0, min_t=0), halves=False)
    wrapper.scheduler = scheduler
    sample = torch.randn(3, 9, *LATENT[1:])
    context = torch.randn(3, 5, unet.config.cross_attention_dim)
    t = torch.tensor(500)
    with torch.no_grad():
        out = wrapper(sample, t, encoder_hidden_states=context)
        raw = unet(sample, t, encoder_hidden_states=context).sample
        as_tuple = wrapper(sample, t, encoder_hidden_states=context, return_dict=False)
    assert isinstance(out, UNet2DConditionOutput) and isinstance(as_tuple, tuple) and len(as_tuple) == 1
    expected = raw - (1 - scheduler.alphas_cumprod[500]).sqrt() * 2.0 * pattern()
    assert torch.allclose(out.sample, expected, atol=1e-5) and torch.equal(as_tuple[0], out.sample)
    assert wrapper.config is unet.config and wrapper.dtype == unet.dtype and wrapper.device == unet.device
    with torch.inference_mode():  # also callable from an inference-mode caller
        assert torch.allclose(wrapper(sample, t, encoder_hidden_states=context).sample, out.sample)


@pytest.fixture
def small_prompted(synth_prompted, tmp_path) -> Path:
    """Three training records of the synthetic data, one per clothing id; prompts.json beside
    it holds the prompts of all training ids."""
    records = [json.loads(line) for line in synth_prompted.read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    firsts = list({r["clothes"]: r for r in reversed(train)}.values())[::-1][:3]
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in firsts))
    (tmp_path / "prompts.json").write_text(json.dumps({r["clothes"]: r["prompt"] for r in train}))
    return path


def plan_of(small_prompted: Path, out: Path):
    from dlcr_cli.inputs import read_records
    from dlcr_cli.stages.inpaint import make_plan, prompt_table

    records = list(read_records(str(small_prompted)))
    table = json.loads((small_prompted.parent / "prompts.json").read_text())
    return make_plan(records, prompt_table(records, table), variants=2, seed=0, out=out, fmt="files")[0]


def test_guidance_changes_pixels_inside_the_mask_only(tiny_inpaint, small_prompted, tmp_path):
    from dlcr_cli.stages.inpaint import run_inpaint

    outputs = {}
    for name, dg in (("plain", None), ("guided", guided(pattern(2.0)))):
        jobs = plan_of(small_prompted, tmp_path / name)
        outcomes = list(run_inpaint(jobs, painter_of(tiny_inpaint, dg=dg), workers=1))
        assert all(o.error is None for o in outcomes)
        outputs[name] = [(job, np.asarray(Image.open(job.out))) for job in jobs]
    changed = 0
    for (job, plain), (_, steered) in zip(outputs["plain"], outputs["guided"]):
        source = np.asarray(Image.open(job.source.image))
        mask = np.asarray(Image.open(job.source.mask)) > 127
        assert (steered[~mask] == source[~mask]).all() and (plain[~mask] == source[~mask]).all()
        changed += int((steered[mask] != plain[mask]).any())
    assert changed == len(outputs["plain"])  # every guided image differs from its unguided one in the mask


# --- dlcr inpaint --discriminator ------------------------------------------------------------


def discriminator_folder(path: Path, model: Path | str, *, size=SIZE, seed: int = 0, scale: int = 2) -> Path:
    """A `dlcr discriminator` folder as that verb writes one, by hand: a random-init (seed)
    small discriminator, for pipeline `model` at `size`."""
    from dlcr_cli import discriminator as disc
    from dlcr_cli.fingerprint import model_revision

    architecture = {"in_channels": 4, "width": 32, "levels": 2}
    config = {"format": disc.FORMAT, "version": 1, "architecture": architecture, "pipeline": str(model),
              "pipeline_revision": model_revision(str(model)), "image_size": list(size),
              "latent_shape": [4, size[0] // scale, size[1] // scale], "scaling_factor": 0.18215}
    disc.write_products(path, disc.build(architecture, seed=seed), config)
    return path


def run_guided(dlcr, source: Path, out: Path, model: Path, *args):
    return dlcr("inpaint", source, "--out", out, "--model", model, *TINY, "-k", "2",
                "--prompts", source.parent / "prompts.json", *args)


def test_marks_name_the_discriminator_and_weight(dlcr, small_prompted, tiny_inpaint, tmp_path):
    one = discriminator_folder(tmp_path / "d1", tiny_inpaint, seed=1)
    two = discriminator_folder(tmp_path / "d2", tiny_inpaint, seed=2)
    out = tmp_path / "gen"

    def run(*args):
        result = run_guided(dlcr, small_prompted, out, tiny_inpaint, *args)
        assert result.code == 0, result.stderr
        return result

    plain = run()
    assert "6 done, 0 skipped" in plain.stderr
    assert "0 done, 6 skipped" in run("--discriminator", one, "--dg-weight", "0").stderr  # weight 0: unguided
    guided_run = run("--discriminator", one)
    assert "6 done, 0 skipped" in guided_run.stderr
    assert "0 done, 6 skipped" in run("--discriminator", one, "--dg-weight", "1.0", "--dg-min-t", "200").stderr
    assert "6 done, 0 skipped" in run("--discriminator", one, "--dg-weight", "3").stderr
    assert "6 done, 0 skipped" in run("--discriminator", two, "--dg-weight", "3").stderr
    assert "6 done, 0 skipped" in run("--discriminator", two, "--dg-weight", "3", "--dg-min-t", "100").stderr
    assert "6 done, 0 skipped" in run().stderr  # back to unguided
    sources = {r["image"]: r for r in map(json.loads, small_prompted.read_text().splitlines())}
    for record in guided_run.records:  # pasted back as always
        source = sources[record["source"]]
        image, painted = np.asarray(Image.open(source["image"])), np.asarray(Image.open(record["image"]))
        mask = np.asarray(Image.open(source["mask"])) > 127
        assert (painted[~mask] == image[~mask]).all()


def test_bad_discriminators_and_backends_are_one_line(dlcr, small_prompted, tiny_inpaint, tmp_path):
    def refused(code: int, *args, text: str):
        result = run_guided(dlcr, small_prompted, tmp_path / "gen", tiny_inpaint, *args)
        assert result.code == code, result.stderr
        assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "gen").exists() or not list((tmp_path / "gen").rglob("*.png"))

    refused(66, "--discriminator", tmp_path / "nothing", text="discriminator folder not found")
    other = discriminator_folder(tmp_path / "other", "someone/another-inpainting")
    refused(78, "--discriminator", other, text="was trained for pipeline 'someone/another-inpainting'")
    small = discriminator_folder(tmp_path / "small", tiny_inpaint, size=(32, 32))
    refused(78, "--discriminator", small, text="trained on latents 4x16x16 (images 32x32), but this pipeline's are 4x32x16")
    refused(2, "--backend", "recolor", "--discriminator", small,
            text="discriminator guidance (--discriminator, inpaint.discriminator) needs the diffusion backend")
    for option, value in (("--dg-weight", "-1"), ("--dg-min-t", "1001")):
        bad = run_guided(dlcr, small_prompted, tmp_path / "gen", tiny_inpaint, "--discriminator", small, option, value)
        key = option.removeprefix("--").replace("-", "_")
        assert bad.code == 2 and f"invalid value for inpaint.{key}" in bad.stderr, bad.stderr


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch.compile's imports
def test_guidance_wraps_the_compiled_unet(tiny_inpaint):
    plain = painter_of(tiny_inpaint, compile=True)
    steered = painter_of(tiny_inpaint, compile=True, dg=guided())
    assert steered.pipe.unet.unet is plain.pipe.unet  # the cache's compiled UNet, inside the wrapper
    assert steered.pipe.unet.config is plain.pipe.unet.config
