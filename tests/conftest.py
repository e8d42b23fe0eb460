"""Shared fixtures: an isolated environment, the CLI runner, tiny models and data built offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

# huggingface_hub reads this once, at import: set it before anything imports it, or a test of
# an unknown hub id waits minutes for network retries.
os.environ["HF_HUB_OFFLINE"] = "1"

from dlcr_cli.cli import app


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path_factory):
    """No user config, no DLCR_ variables from the caller, no network for the hub."""
    for name in list(os.environ):
        if name.startswith("DLCR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class Run:
    """The result of one in-process `dlcr` call, stdout and stderr apart."""

    def __init__(self, result):
        self.code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception

    @property
    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


@pytest.fixture
def dlcr():
    runner = CliRunner()

    def run(*args: str, input: str | None = None, env: dict | None = None) -> Run:
        return Run(runner.invoke(app, [str(a) for a in args], input=input, env=env, prog_name="dlcr"))

    return run


def save_rgb(path: Path, width: int = 20, height: int = 40, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def save_labels(path: Path, label_map: np.ndarray, mode: str = "P") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label_map.astype(np.uint8))
    (img.convert("P") if mode == "P" else img).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_segformer(tmp_path_factory) -> Path:
    """A random-weight SegFormer predicting ATR labels, saved like a hub checkpoint."""
    from tiny_models import build_tiny_segformer

    return build_tiny_segformer(tmp_path_factory.mktemp("tiny-segformer"))


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """The embedded synthetic dataset, small."""
    from dlcr_cli.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, ids=6, cameras=2, per=1, seed=0)
    return out


def synth_as_ccvid(out: Path, *, ids: int = 6, cameras: int = 2, per: int = 6, seed: int = 0) -> Path:
    """The synthetic people as a CCVID tree: every (split, person, outfit, camera) of the
    synthetic dataset is a tracklet `session<outfit>/<split>/<pid>_<cam>` of its `per` frames
    (query: frame 0 of the query cameras, gallery: the rest), with the lists and the parsing
    maps under `parsing/` at the frames' paths."""
    import re
    import shutil

    from dlcr_cli.synth import synthesize

    flat = out.parent / f"{out.name}-flat"
    synthesize(flat, ids=ids, cameras=cameras, per=per, seed=seed)
    name = re.compile(r"(\d+)_(\d+)_c(\d+)_(\d+)$")
    lines: dict[str, set[str]] = {"train.txt": set(), "query.txt": set(), "gallery.txt": set()}
    for folder, listed in (("train", "train.txt"), ("query", "query.txt"), ("test", "gallery.txt")):
        for image in sorted((flat / folder).glob("*.png")):
            pid, outfit, cam, frame = name.match(image.stem).groups()
            tracklet = f"session{outfit}/{folder}/{int(pid):03d}_{int(cam):02d}"  # no split folder on top
            lines[listed].add(f"{tracklet} {int(pid):03d} u{outfit}")
            for source, target in ((image, out / tracklet), (flat / "parsing" / folder / image.name,
                                                             out / "parsing" / tracklet)):
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target / f"{int(frame):05d}.png")
    for listed, entries in lines.items():
        (out / listed).write_text("".join(line + "\n" for line in sorted(entries)))
    return out


@pytest.fixture(scope="session")
def synth_ccvid(tmp_path_factory) -> Path:
    """The small synthetic dataset as a video (CCVID) tree, 6 frames per tracklet."""
    return synth_as_ccvid(tmp_path_factory.mktemp("ccvid") / "CCVID")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """A random-weight LLaVA-1.5-style model and processor, saved like a hub checkpoint."""
    from tiny_models import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A random-weight Llama causal LM with a Llama-2-chat tokenizer (no pad token, sampling
    generation config, as the real meta-llama/Llama-2-7b-chat-hf)."""
    from tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), like_llama2_chat=True)


@pytest.fixture(scope="session")
def synth_described(synth_data, tmp_path_factory) -> Path:
    """Records of the small synthetic dataset with masks and colour descriptions (JSONL)."""
    from typer.testing import CliRunner

    runner = CliRunner()
    work = tmp_path_factory.mktemp("synth-work")
    masked = runner.invoke(app, ["mask", str(synth_data), "--backend", "parsing", "--parsing-dir",
                                 str(synth_data / "parsing"), "--out", str(work)])
    assert masked.exit_code == 0, masked.stderr
    described = runner.invoke(app, ["describe", "-", "--backend", "colors"], input=masked.stdout)
    assert described.exit_code == 0, described.stderr
    path = work / "described.jsonl"
    path.write_text(described.stdout)
    return path


@pytest.fixture(scope="session")
def tiny_inpaint(tmp_path_factory) -> Path:
    """A random-weight Stable-Diffusion inpainting pipeline (9-channel UNet), saved like a hub one."""
    from tiny_models import build_tiny_inpaint

    return build_tiny_inpaint(tmp_path_factory.mktemp("tiny-inpaint"))


@pytest.fixture(scope="session")
def tiny_resnet(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_resnet

    return build_tiny_resnet(tmp_path_factory.mktemp("tiny-resnet"))


@pytest.fixture(scope="session")
def synth_prompted(synth_described, tmp_path_factory) -> Path:
    """The small synthetic dataset's records with masks, descriptions and vote prompts (JSONL)."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["summarize", str(synth_described), "--backend", "vote"])
    assert result.exit_code == 0, result.stderr
    path = tmp_path_factory.mktemp("synth-prompted") / "prompted.jsonl"
    path.write_text(result.stdout)
    return path


@pytest.fixture
def dlcr_log():
    """The messages dlcr's logger emits during the test (debug and up), collected by a handler
    of its own: independent of pytest's capture and of what earlier CLI runs set up."""
    import logging

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    logger, handler = logging.getLogger("dlcr"), Collect()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def out_of_memory_above(limit: int, real, calls: list[int]):
    """`real` (a batch function) as a GPU with room for `limit` items would run it: larger
    batches raise CUDA's out-of-memory error; every call's size is appended to `calls`."""
    import torch

    def tight(batch):
        calls.append(len(batch))
        if len(batch) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(batch)

    return tight
