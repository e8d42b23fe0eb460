"""dlcr discriminator: the time-conditioned discriminator of discriminator guidance, its latents
(the pipeline VAE's, scaled as the sampler sees them), the noise schedule (the pipeline's own),
learning, resume equal to an uninterrupted run, the folder's checks, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlcr_cli import discriminator as dm
from dlcr_cli.errors import ConfigError, InputMissing, MalformedInput

SMALL = ("--set", "inpaint.size=64x32", "--set", "discriminator.width=8", "--set", "discriminator.levels=2",
         "--batch-size", "4")


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recolored(synth_prompted, tmp_path_factory) -> Path:
    """dlcr inpaint records (recolor backend, K = 2) of six training images, one per clothing id."""
    from typer.testing import CliRunner

    from dlcr_cli.cli import app

    records = [json.loads(line) for line in synth_prompted.read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    firsts = list({r["clothes"]: r for r in reversed(train)}.values())[::-1][:6]
    work = tmp_path_factory.mktemp("disc-records")
    (work / "small.jsonl").write_text("".join(json.dumps(r) + "\n" for r in firsts))
    (work / "prompts.json").write_text(json.dumps({r["clothes"]: r["prompt"] for r in train}))
    runner = CliRunner()
    for fmt in ("files", "strip"):
        run = runner.invoke(app, ["inpaint", str(work / "small.jsonl"), "--out", str(work / fmt), "--backend",
                                  "recolor", "-k", "2", "--format", fmt, "--prompts", str(work / "prompts.json")])
        assert run.exit_code == 0, run.stderr
        (work / f"{fmt}.jsonl").write_text(run.stdout)
    return work / "files.jsonl"


def records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def train(dlcr, source, out, model, *args):
    return dlcr("discriminator", source, "--out", out, "--set", f"inpaint.model={model}", *SMALL, *args)


def tiny_pipe(tiny_inpaint):
    from functools import partial

    from dlcr_cli.cache import CACHE
    from dlcr_cli.stages.inpaint import _load_pipeline

    model = str(tiny_inpaint)
    return CACHE.get("inpainting", model, dtype=torch.float32, device=torch.device("cpu"), setting="inpaint.model",
                     load=partial(_load_pipeline, model, torch.device("cpu"), torch.float32))


def one_line_error(run, code: int, *words: str) -> None:
    assert run.code == code, (run.code, run.stderr)
    errors = [line for line in run.stderr.splitlines() if line.startswith("dlcr: error:")]
    assert len(errors) == 1 and run.stderr.rstrip().endswith(errors[0]), run.stderr
    for word in words:
        assert word in errors[0], errors[0]


# --- the architecture ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape, levels", [((4, 8, 4), 4), ((4, 32, 16), 2), ((4, 96, 32), 4), ((4, 3, 5), 6)])
def test_one_finite_logit_per_sample_that_depends_on_t(shape, levels):
    # catches: logits [B, 1] or [B, hw], a timestep the network ignores, a crash when levels
    # would downsample below 1x1 (4x8x4 at 4 levels, 3x5 at 6)
    model = dm.build({"in_channels": 4, "width": 8, "levels": levels}, seed=0)
    x = torch.randn(3, *shape)
    logits = model(x, torch.tensor([10, 500, 990]))
    assert logits.shape == (3,) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    other = model(x, torch.tensor([900, 20, 300]))
    assert not torch.allclose(logits, other)
    # any dtype of timesteps, and one timestep for the batch
    assert torch.allclose(model(x, torch.tensor([10, 500, 990], dtype=torch.int32)), logits)
    assert torch.allclose(model(x, torch.tensor([10.0, 500.0, 990.0])), logits)
    assert torch.allclose(model(x, torch.tensor(500)), model(x, torch.tensor([500, 500, 500])))


def test_the_timestep_enters_as_t_over_999_and_the_gradient_reaches_the_latents():
    # catches: raw t fed where t/999 is meant; a module that breaks the guidance's autograd
    model = dm.build({"in_channels": 4, "width": 8, "levels": 2}, seed=0)
    seen = []
    model.time_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    x = torch.randn(2, 4, 8, 4, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x, torch.tensor([999, 0])).sum(), x)
    assert torch.allclose(seen[0], torch.tensor([1.0, 0.0]))
    assert grad.shape == x.shape and grad.abs().sum() > 0
    assert dm.build({"in_channels": 4, "width": 8, "levels": 2}, seed=0).state_dict().keys() == model.state_dict().keys()


def test_the_full_working_size_at_width_8():
    model = dm.build({"in_channels": 4, "width": 8, "levels": 4}, seed=0)
    assert model(torch.randn(2, 4, 96, 32), torch.tensor([0, 999])).shape == (2,)


def test_init_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    a = dm.build({"in_channels": 4, "width": 8, "levels": 2}, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = dm.build({"in_channels": 4, "width": 8, "levels": 2}, seed=3)
    c = dm.build({"in_channels": 4, "width": 8, "levels": 2}, seed=4)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not all(torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in a.state_dict())


# --- noise and latents -------------------------------------------------------------------------


def test_noise_follows_the_pipeline_schedulers_alphas_cumprod(tiny_inpaint):
    # catches: another schedule than the pipeline's (the authors' code), t off by one, x0 and
    # eps weights swapped
    from diffusers import DDPMScheduler

    for scheduler in (tiny_pipe(tiny_inpaint).scheduler,
                      DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)):
        generator = torch.Generator().manual_seed(0)
        x0 = torch.randn(4, 4, 8, 4, generator=generator)
        eps = torch.randn(4, 4, 8, 4, generator=generator)
        t = torch.tensor([0, 1, 500, 999])
        expected = scheduler.add_noise(x0, eps, t)
        assert torch.allclose(dm.noised(x0, t, eps, scheduler.alphas_cumprod), expected, atol=1e-6)
        abar = scheduler.alphas_cumprod[500]
        assert torch.allclose(dm.noised(x0, t, eps, scheduler.alphas_cumprod)[2],
                              abar.sqrt() * x0[2] + (1 - abar).sqrt() * eps[2], atol=1e-6)


def test_latents_are_the_vae_means_scaled_as_the_sampler_sees_them(tiny_inpaint, recolored):
    # catches: unscaled latents, pixels in [0, 1] or [0, 255], a sampled (random) latent,
    # another resize than the painter's
    pipe = tiny_pipe(tiny_inpaint)
    path = records_of(recolored)[0]["source"]
    item = dm.Item(path, "x")
    pixels = dm.read_pixels(item, (64, 32))
    resized = Image.open(path).convert("RGB").resize((32, 64), Image.BICUBIC)
    reference = pipe.image_processor.preprocess(resized)  # diffusers' own [-1, 1] pixels
    assert torch.allclose(pixels[None], reference, atol=1e-6)
    latents = dm.encode_batch(pipe.vae, pixels[None])
    with torch.no_grad():
        mean = pipe.vae.encode(reference).latent_dist.mean
    assert pipe.vae.config.scaling_factor != 1
    assert torch.allclose(latents, mean * pipe.vae.config.scaling_factor, atol=1e-6)
    assert torch.equal(latents, dm.encode_batch(pipe.vae, pixels[None]))  # deterministic


def test_a_strips_tile_is_its_variants_pixels(recolored):
    strip = records_of(recolored.with_name("strip.jsonl"))
    files = records_of(recolored)
    for a, b in zip(files[:4], strip[:4]):
        tile = dm.read_pixels(dm.Item(b["image"], "x", b["variant"], 2), (64, 32))
        assert torch.equal(tile, dm.read_pixels(dm.Item(a["image"], "x"), (64, 32)))


# --- learning ----------------------------------------------------------------------------------


def test_it_learns_to_tell_shifted_latents_from_real_ones(tiny_inpaint, synth_data):
    # real: the tiny VAE's latents of the synthetic images; fake: the same, shifted by a constant.
    # SD-1.5's schedule (scaled linear): what the discriminator meets in use.
    from diffusers import DDPMScheduler

    pipe = tiny_pipe(tiny_inpaint)
    paths = sorted(str(p) for p in (synth_data / "train").glob("*.png"))[:24]
    assert len(paths) >= 12
    real = dm.encode_batch(pipe.vae, torch.stack([dm.read_pixels(dm.Item(p, "x"), (64, 32)) for p in paths]))
    fake = real + 0.5
    alphas = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    model = dm.build({"in_channels": 4, "width": 8, "levels": 2}, seed=0)
    c = dm.TrainConfig(epochs=8, lr=1e-3, weight_decay=1e-7, batch_size=4, seed=0)
    optimizer = dm.make_optimizer(model, c)
    n = len(paths) - 4
    first = dm.held_out_accuracy(model, real[n:], fake[n:], alphas, 0, "cpu")
    for epoch in range(c.epochs):
        dm.train_epoch(model, optimizer, real[:n], fake[:n], alphas, epoch, c, "cpu")
    accuracy = dm.held_out_accuracy(model, real[n:], fake[n:], alphas, 0, "cpu")
    assert accuracy >= 0.8, (first, accuracy)
    t = torch.full((4,), 100)
    with torch.no_grad():  # real means a positive logit: guidance climbs log(D / (1 - D)) towards real
        assert model(real[n:], t).mean() > 0 > model(fake[n:], t).mean()
    assert accuracy == dm.held_out_accuracy(model, real[n:], fake[n:], alphas, 0, "cpu")  # the same t each time


def test_it_learns_to_tell_recoloured_images_from_real_ones(tiny_inpaint, synth_data):
    """Real: the synthetic images' latents; generated: the same images recoloured (red and blue
    swapped). The tiny random VAE's latents are about 0.04 in spread where SD-1.5's scaling
    factor makes them about 1, so both are brought to unit spread, as SD's are: otherwise the
    noise drowns them at every t. Held-out accuracy at low noise (t = 50)."""
    from diffusers import DDPMScheduler

    pipe = tiny_pipe(tiny_inpaint)
    paths = sorted(str(p) for p in (synth_data / "train").glob("*.png"))
    pixels = torch.stack([dm.read_pixels(dm.Item(p, "x"), (64, 32)) for p in paths])
    real = dm.encode_batch(pipe.vae, pixels)
    fake = dm.encode_batch(pipe.vae, pixels[:, [2, 1, 0]])
    spread = real.std()
    real, fake = real / spread, fake / spread
    alphas = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    model = dm.build({"in_channels": 4, "width": 8, "levels": 2}, seed=0)
    c = dm.TrainConfig(epochs=12, lr=1e-3, weight_decay=1e-7, batch_size=4, seed=0)
    optimizer = dm.make_optimizer(model, c)
    n = len(paths) - 8
    for epoch in range(c.epochs):
        dm.train_epoch(model, optimizer, real[:n], fake[:n], alphas, epoch, c, "cpu")
    t = torch.full((len(paths) - n,), 50)
    eps = torch.randn(real[n:].shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        right_real = (model(dm.noised(real[n:], t, eps, alphas), t) > 0).float().mean()
        right_fake = (model(dm.noised(fake[n:], t, eps, alphas), t) < 0).float().mean()
    assert (right_real + right_fake) / 2 >= 0.75


def test_balanced_accuracy_is_one_half_for_a_constant_answer():
    # catches: a plain accuracy that rewards always saying "generated" when they outnumber the real ones
    class Always(torch.nn.Module):
        def forward(self, x, t):
            return -torch.ones(len(x))

    alphas = torch.linspace(0.999, 0.01, 1000)
    assert dm.held_out_accuracy(Always(), torch.zeros(2, 4, 8, 4), torch.zeros(20, 4, 8, 4), alphas, 0, "cpu") == 0.5


def test_the_held_out_split_is_seeded_keeps_sources_whole_and_both_sides_non_empty():
    groups = [f"s{i}" for i in range(10)]
    held = dm.split_groups(groups, 0.3, seed=1)
    assert len(held) == 3 and held == dm.split_groups(list(reversed(groups)), 0.3, seed=1)
    assert held != dm.split_groups(groups, 0.3, seed=2)
    assert len(dm.split_groups(["a", "b"], 0.1, seed=0)) == 1
    assert len(dm.split_groups(["a", "b"], 0.9, seed=0)) == 1


# --- the CLI -----------------------------------------------------------------------------------


def test_the_cli_trains_and_writes_a_loadable_folder(dlcr, recolored, tiny_inpaint, tmp_path, monkeypatch):
    out = tmp_path / "disc"
    seen = []
    real_noised = dm.noised
    monkeypatch.setattr(dm, "noised", lambda x0, t, eps, alphas: seen.append((t, alphas)) or real_noised(x0, t, eps, alphas))
    run = train(dlcr, recolored, out, tiny_inpaint, "--epochs", "2", "--json")
    assert run.code == 0, run.stderr
    # noised with the pipeline scheduler's own schedule, t in 0..999
    schedule = tiny_pipe(tiny_inpaint).scheduler.alphas_cumprod
    assert seen and all(torch.equal(alphas, schedule) for _, alphas in seen)
    ts = torch.cat([t.cpu() for t, _ in seen])
    assert 0 <= int(ts.min()) and int(ts.max()) <= 999 and len(set(ts.tolist())) > 10
    assert "epoch 1/2: loss " in run.stderr and "held-out accuracy" in run.stderr
    summary = json.loads(run.stdout)
    config = json.loads((out / dm.CONFIG_FILE).read_text())
    assert summary == config["training"]
    assert config["format"] == dm.FORMAT and config["version"] == dm.VERSION
    assert config["pipeline"] == str(tiny_inpaint)
    from dlcr_cli.fingerprint import model_revision

    assert config["pipeline_revision"] == model_revision(str(tiny_inpaint))
    assert config["image_size"] == [64, 32] and config["latent_shape"] == [4, 32, 16]  # the tiny VAE downsamples by 2
    assert config["scaling_factor"] == pytest.approx(0.18215) and config["num_train_timesteps"] == 1000
    assert {k: config["architecture"][k] for k in ("in_channels", "width", "levels")} == \
        {"in_channels": 4, "width": 8, "levels": 2}
    t = config["training"]
    assert t["epochs"] == 2 and t["lr"] == 3e-4 and t["weight_decay"] == 1e-7 and t["batch_size"] == 4
    assert t["seed"] == 0 and t["pairs"] == 12 and t["held_out"] == 0.1
    assert t["images"] == {"train": {"real": 5, "generated": 10}, "held_out": {"real": 1, "generated": 2}}
    assert len(t["held_out_accuracy"]) == 2 and all(0 <= a <= 1 for a in t["held_out_accuracy"])
    for name in (dm.WEIGHTS_FILE, dm.CONFIG_FILE, dm.LATENTS_FILE, dm.STATE_FILE, dm.RUN_FILE):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp"))

    model, loaded = dm.load_discriminator(out, "cpu")
    assert loaded == config and not model.training
    assert model(torch.randn(2, 4, 32, 16), torch.tensor([3, 900])).shape == (2,)
    dm.check_pipeline(config, model=str(tiny_inpaint), revision=model_revision(str(tiny_inpaint)),
                      latent_shape=(4, 32, 16), folder=out)

    # the cached latents are what the sampler sees: the VAE means x scaling factor
    from safetensors import safe_open

    with safe_open(str(out / dm.LATENTS_FILE), "pt") as f:
        cached = f.get_tensor("latents")
        keys = json.loads(f.metadata()["keys"])
    assert len(keys) == 6 + 12 and cached.shape == (18, 4, 32, 16)
    pipe = tiny_pipe(tiny_inpaint)
    source = records_of(recolored)[0]["source"]
    expected = dm.encode_batch(pipe.vae, dm.read_pixels(dm.Item(source, "x"), (64, 32))[None])[0]
    assert (cached[0] - expected).abs().max() < 1e-5  # encoded in a batch of others: rounding only
    unscaled = expected / pipe.vae.config.scaling_factor
    assert cached[:6].std() == pytest.approx(float(expected.std()), rel=0.5)
    assert cached[:6].std() < 0.5 * unscaled.std()  # scaled by 0.18215, as the sampler's latents


def test_resume_equals_an_uninterrupted_run_and_reuses_the_latents(dlcr, recolored, tiny_inpaint, tmp_path,
                                                                   monkeypatch):
    whole = train(dlcr, recolored, tmp_path / "whole", tiny_inpaint, "--epochs", "3")
    assert whole.code == 0, whole.stderr
    first = train(dlcr, recolored, tmp_path / "resumed", tiny_inpaint, "--epochs", "1")
    assert first.code == 0, first.stderr
    after_one = (tmp_path / "resumed" / dm.WEIGHTS_FILE).read_bytes()
    assert after_one != (tmp_path / "whole" / dm.WEIGHTS_FILE).read_bytes()  # epochs 2 and 3 change the weights
    calls = []
    real = dm.encode_batch
    monkeypatch.setattr(dm, "encode_batch", lambda vae, pixels: calls.append(len(pixels)) or real(vae, pixels))
    again = train(dlcr, recolored, tmp_path / "resumed", tiny_inpaint, "--epochs", "3", "--resume")
    assert again.code == 0, again.stderr
    assert calls == [] and "latents of 18 of 18 images from" in again.stderr and "encoding 0" in again.stderr
    assert "resuming" in again.stderr and "epoch 1/3" not in again.stderr and "epoch 3/3" in again.stderr
    assert (tmp_path / "resumed" / dm.WEIGHTS_FILE).read_bytes() == (tmp_path / "whole" / dm.WEIGHTS_FILE).read_bytes()
    a = json.loads((tmp_path / "whole" / dm.CONFIG_FILE).read_text())
    b = json.loads((tmp_path / "resumed" / dm.CONFIG_FILE).read_text())
    assert a == b and len(a["training"]["loss"]) == 3
    done = train(dlcr, recolored, tmp_path / "resumed", tiny_inpaint, "--epochs", "3", "--resume")
    assert done.code == 0 and "nothing to do" in done.stderr


def test_a_run_is_never_overwritten_and_resume_refuses_changes(dlcr, recolored, tiny_inpaint, tmp_path):
    out = tmp_path / "disc"
    assert train(dlcr, recolored, out, tiny_inpaint, "--epochs", "1").code == 0
    one_line_error(train(dlcr, recolored, out, tiny_inpaint, "--epochs", "2"), 2, "--resume")
    one_line_error(train(dlcr, recolored, out, tiny_inpaint, "--epochs", "2", "--resume", "--lr", "1e-3"), 2,
                   "discriminator.lr")
    one_line_error(dlcr("discriminator", recolored, "--out", out, "--set", f"inpaint.model={tiny_inpaint}", *SMALL,
                        "--set", "inpaint.size=64x64", "--resume"), 2, "inpaint.size")
    records = records_of(recolored)
    write_records(tmp_path / "fewer.jsonl", records[:-2])
    one_line_error(train(dlcr, tmp_path / "fewer.jsonl", out, tiny_inpaint, "--resume"), 2, "no longer given")
    (out / dm.STATE_FILE).write_bytes(b"torn")
    one_line_error(train(dlcr, recolored, out, tiny_inpaint, "--epochs", "2", "--resume"), 2, dm.STATE_FILE)


def test_a_changed_image_is_encoded_again(dlcr, recolored, tiny_inpaint, tmp_path):
    # catches: latents cached by path alone, passed off for an image that changed
    records = records_of(recolored)
    copies = []
    for i, r in enumerate(records):
        copy = tmp_path / "gen" / f"{i}.png"
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(Path(r["image"]).read_bytes())
        copies.append(dict(r, image=str(copy)))
    source = write_records(tmp_path / "copies.jsonl", copies)
    out = tmp_path / "disc"
    assert "encoding 18" in train(dlcr, source, out, tiny_inpaint, "--epochs", "1").stderr
    (out / dm.STATE_FILE).unlink()  # a new run in the same folder: the latents cache stays
    image = np.asarray(Image.open(copies[0]["image"])).copy()
    image[:8] = 255 - image[:8]
    Image.fromarray(image).save(copies[0]["image"])
    again = train(dlcr, source, out, tiny_inpaint, "--epochs", "1")
    assert again.code == 0, again.stderr
    assert "latents of 17 of 18 images from" in again.stderr and "encoding 1" in again.stderr


def test_strip_records_train_on_their_tiles(dlcr, recolored, tiny_inpaint, tmp_path):
    files = train(dlcr, recolored, tmp_path / "files", tiny_inpaint, "--epochs", "1")
    strip = train(dlcr, recolored.with_name("strip.jsonl"), tmp_path / "strip", tiny_inpaint, "--epochs", "1")
    assert files.code == strip.code == 0, strip.stderr
    # tiles are the files' pixels, so the same latents and the same training
    assert (tmp_path / "files" / dm.WEIGHTS_FILE).read_bytes() == (tmp_path / "strip" / dm.WEIGHTS_FILE).read_bytes()
    records = records_of(recolored.with_name("strip.jsonl"))
    records[1]["variant"] = 7
    write_records(tmp_path / "bad-strip.jsonl", records)
    one_line_error(train(dlcr, tmp_path / "bad-strip.jsonl", tmp_path / "x", tiny_inpaint), 65, "strip of 2 tiles")


def test_help_has_examples_and_cites_the_method(dlcr):
    run = dlcr("discriminator", "--help")
    assert run.code == 0 and "Examples" in run.stdout and "docs/method.md" in run.stdout
    assert "--resume" in run.stdout and "--out" in run.stdout


# --- the folder: loading, checking, digest ----------------------------------------------------------


@pytest.fixture
def folder(tmp_path) -> Path:
    """A discriminator folder as the CLI writes it (its products), without training."""
    model = dm.build({"in_channels": 4, "width": 8, "levels": 2}, seed=0)
    config = {"format": dm.FORMAT, "version": dm.VERSION, "pipeline": "org/inpainting", "pipeline_revision": "abc123",
              "image_size": [768, 256], "latent_shape": [4, 96, 32], "scaling_factor": 0.18215,
              "num_train_timesteps": 1000, "architecture": model.architecture, "training": {}}
    dm.write_products(tmp_path / "d", model, config)
    return tmp_path / "d"


def test_check_pipeline_names_what_differs_in_one_line(folder):
    _, config = dm.load_discriminator(folder, "cpu")
    dm.check_pipeline(config, model="org/inpainting", revision="abc123", latent_shape=(4, 96, 32), folder=folder)
    dm.check_pipeline(config, model="org/inpainting", revision="", latent_shape=(4, 96, 32), folder=folder)
    cases = [
        (dict(model="other/inpainting", revision="abc123", latent_shape=(4, 96, 32)), "org/inpainting"),
        (dict(model="org/inpainting", revision="def456", latent_shape=(4, 96, 32)), "revision"),
        (dict(model="org/inpainting", revision="abc123", latent_shape=(4, 64, 32)), "4x96x32"),
    ]
    for kwargs, word in cases:
        with pytest.raises(ConfigError) as err:
            dm.check_pipeline(config, folder=folder, **kwargs)
        message = str(err.value)
        assert err.value.exit_code == 78 and "\n" not in message and word in message
        assert "dlcr discriminator" in message and f"--set inpaint.model={kwargs['model']}" in message


def test_loading_errors_are_one_line_with_their_exit_codes(folder, tmp_path):
    with pytest.raises(InputMissing) as err:
        dm.load_discriminator(tmp_path / "nowhere", "cpu")
    assert err.value.exit_code == 66 and "nowhere" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputMissing, match="discriminator.json"):
        dm.load_discriminator(empty, "cpu")
    config = folder / dm.CONFIG_FILE
    good = config.read_text()

    config.write_text("{not json")
    with pytest.raises(MalformedInput) as err:
        dm.load_discriminator(folder, "cpu")
    assert err.value.exit_code == 65 and "\n" not in str(err.value)
    config.write_text(json.dumps({**json.loads(good), "format": "something-else"}))
    with pytest.raises(MalformedInput, match="format"):
        dm.load_discriminator(folder, "cpu")
    other = json.loads(good)
    other["architecture"]["width"] = 16
    config.write_text(json.dumps(other))
    with pytest.raises(MalformedInput, match="do not match the architecture") as err:
        dm.load_discriminator(folder, "cpu")
    assert "\n" not in str(err.value)
    config.write_text(good)
    (folder / dm.WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(MalformedInput, match="safetensors"):
        dm.load_discriminator(folder, "cpu")
    (folder / dm.WEIGHTS_FILE).unlink()
    with pytest.raises(InputMissing, match=dm.WEIGHTS_FILE):
        dm.load_discriminator(folder, "cpu")


def test_the_digest_follows_the_weights_and_the_config(folder):
    first = dm.discriminator_digest(folder)
    assert first == dm.discriminator_digest(folder)
    model, config = dm.load_discriminator(folder, "cpu")
    with torch.no_grad():
        model.head.bias.add_(1)
    dm.write_products(folder, model, config)
    second = dm.discriminator_digest(folder)
    assert second != first
    dm.write_products(folder, model, {**config, "training": {"epochs": 1}})
    assert dm.discriminator_digest(folder) != second
    (folder / dm.WEIGHTS_FILE).unlink()
    with pytest.raises(InputMissing):
        dm.discriminator_digest(folder)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated:UserWarning")  # the hub, offline
def test_bad_input_is_one_line_with_its_exit_code(dlcr, recolored, tiny_inpaint, tmp_path):
    records = records_of(recolored)
    out = tmp_path / "disc"
    one_line_error(train(dlcr, tmp_path / "none.jsonl", out, tiny_inpaint), 66, "none.jsonl")
    (tmp_path / "broken.jsonl").write_text(json.dumps(records[0]) + "\n{oops\n")
    one_line_error(train(dlcr, tmp_path / "broken.jsonl", out, tiny_inpaint), 65, "broken.jsonl:2")
    (tmp_path / "empty.jsonl").write_text("")
    one_line_error(train(dlcr, tmp_path / "empty.jsonl", out, tiny_inpaint), 66)
    sources = [{k: v for k, v in r.items() if k != "source"} for r in records]
    write_records(tmp_path / "sources.jsonl", sources)
    one_line_error(train(dlcr, tmp_path / "sources.jsonl", out, tiny_inpaint), 66, "no generated records")
    write_records(tmp_path / "mixed.jsonl", [*records[:3], sources[3], *records[4:]])
    one_line_error(train(dlcr, tmp_path / "mixed.jsonl", out, tiny_inpaint), 65, "record 4", "source")
    write_records(tmp_path / "gone.jsonl", [*records[:2], dict(records[2], image=str(tmp_path / "gone.png"))])
    one_line_error(train(dlcr, tmp_path / "gone.jsonl", out, tiny_inpaint), 66, "gone.png")
    write_records(tmp_path / "gone-source.jsonl", [dict(records[0], source=str(tmp_path / "src.png")), *records[1:]])
    one_line_error(train(dlcr, tmp_path / "gone-source.jsonl", out, tiny_inpaint), 66, "src.png")
    write_records(tmp_path / "one.jsonl", records[:2])  # one source, its two variants
    one_line_error(train(dlcr, tmp_path / "one.jsonl", out, tiny_inpaint), 65, "1 real", "at least 2")
    one_line_error(train(dlcr, recolored, out, "nobody/no-such-inpainting"), 69, "inpaint.model")
    one_line_error(train(dlcr, recolored, out, tiny_inpaint, "--epochs", "0"), 2, "discriminator.epochs")
    assert not (out / dm.STATE_FILE).exists()


def test_records_from_stdin_with_relative_sources(dlcr, recolored, tiny_inpaint, tmp_path, monkeypatch):
    records = records_of(recolored)
    base = Path(records[0]["source"]).parent.parent
    relative = [dict(r, source=str(Path(r["source"]).relative_to(base))) for r in records]
    monkeypatch.chdir(base)
    text = "".join(json.dumps(r) + "\n" for r in relative)
    run = dlcr("discriminator", "-", "--out", tmp_path / "disc", "--set", f"inpaint.model={tiny_inpaint}", *SMALL,
               "--epochs", "1", input=text)
    assert run.code == 0, run.stderr
    assert "6 real and 12 generated images" in run.stderr
