"""Video re-id as CAL trains and tests CCVID: the c2dres50-style model on clips of tracklets,
generated clips of one outfit, tracklet features from every test clip, per-tracklet targets
in inpaint, resume, refinement, and the global batch over processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dlcr_cli.reid.data import Sample
from dlcr_cli.reid.generated import Variant
from dlcr_cli.reid.train import ClipTrainSet, Piece, tracklet_pieces

VIDEO = ("--backbone", "builtin:small", "--image-size", "64x32", "--batch", "2x2", "--workers", "0")


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ccvid_generated(synth_ccvid, tmp_path_factory) -> Path:
    """2 recoloured variants of every training frame (dlcr expand --weight-free), as records."""
    from typer.testing import CliRunner

    from dlcr_cli.cli import app

    out = tmp_path_factory.mktemp("ccvid-gen")
    result = CliRunner().invoke(app, ["expand", str(synth_ccvid.parent), "--out", str(out / "work"), "--weight-free",
                                      "--parsing-dir", str(synth_ccvid / "parsing"), "-k", "2"])
    assert result.exit_code == 0, result.stderr
    (out / "gen.jsonl").write_text(result.stdout)
    return out / "gen.jsonl"


def test_inpaint_gives_every_frame_of_a_tracklet_the_same_targets(ccvid_generated):
    by_tracklet: dict[tuple[str, int], set[str]] = {}
    seeds = set()
    for line in ccvid_generated.read_text().splitlines():
        r = json.loads(line)
        by_tracklet.setdefault((r["tracklet"], r["variant"]), set()).add(r["target_clothes"])
        seeds.add(r["seed"])
    assert by_tracklet and all(len(targets) == 1 for targets in by_tracklet.values())
    tracklets = {t for t, _ in by_tracklet}
    assert len({frozenset(by_tracklet[t, 0] | by_tracklet[t, 1]) for t in tracklets}) > 1  # drawn per tracklet
    assert len(seeds) == len(ccvid_generated.read_text().splitlines())  # the noise still differs per frame


def test_a_ccvid_tree_trains_the_video_model_and_evaluates_tracklets(dlcr, synth_ccvid, tmp_path):
    run = dlcr("--device", "cpu", "train", synth_ccvid.parent, "--out", tmp_path / "run", *VIDEO, "--epochs", "2",
               "--eval-every", "1")
    assert run.code == 0, run.stderr
    assert "video model on clips of 8 frames at stride 4" in run.stderr
    assert "clips/s" in run.stderr and "images/s" not in run.stderr  # a sample is a clip, not an image
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    assert (model["head"], model["dim"], model["config"]["clip"]) == ("video", 256, [8, 4])  # max pool only: C
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())["train"]
    assert (settings["epochs"], settings["label_smoothing"], settings["clothes_start"]) == (2, 0.0, 50)
    rows = metrics(tmp_path / "run")
    pieces = len(tracklet_pieces_of(synth_ccvid))
    assert rows[0]["images"] == pieces // 4 * 4  # clips: every piece once, in batches of 2 x 2
    scores = rows[-1]["evaluation"]
    assert set(scores) == {"standard", "sc", "cc"}
    tracklets = len((synth_ccvid / "query.txt").read_text().splitlines())
    assert scores["standard"]["queries"] + scores["standard"]["skipped"] == tracklets  # one query per tracklet
    evaluated = dlcr("--device", "cpu", "evaluate", synth_ccvid.parent, "-c", tmp_path / "run", "--epoch", "last",
                     "--json")
    assert evaluated.code == 0, evaluated.stderr
    for name, got in json.loads(evaluated.stdout).items():
        assert got == pytest.approx(scores[name]), name


def tracklet_pieces_of(root: Path) -> list[Piece]:
    from dlcr_cli.reid.data import load_reid_data

    return tracklet_pieces(load_reid_data(root).train, 64)


def test_video_training_with_generated_clips_resumes_bit_for_bit(dlcr, synth_ccvid, ccvid_generated, tmp_path):
    common = ("--device", "cpu", "train", synth_ccvid.parent, *VIDEO, "--generated", ccvid_generated,
              "--eval-every", "0", "--keep", "last")
    env = {"DLCR_TRAIN__CLOTHES_START": "1", "DLCR_TRAIN__MILESTONES": "[1]"}
    whole = dlcr(*common, "--out", tmp_path / "whole", "--epochs", "2", env=env)
    first = dlcr(*common, "--out", tmp_path / "parts", "--epochs", "1", env=env)
    rest = dlcr(*common, "--out", tmp_path / "parts", "--epochs", "2", "--resume", env=env)
    assert whole.code == first.code == rest.code == 0, rest.stderr
    for name in ("model.safetensors", "state/training.safetensors"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "parts" / name).read_bytes(), name
    rows = metrics(tmp_path / "whole")
    assert rows[0]["generated"] == rows[0]["images"] // 2 > 0  # every clip brings a generated clip
    assert rows[1]["clothes_loss"] is not None


def _solid(path: Path, value: int) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 32), (value, value, value)).save(path)
    return str(path)


def test_a_generated_clip_is_the_same_frames_in_one_variant(tmp_path):
    """Frame f is grey 10 f, its variant k grey 10 f + k + 1: the generated clip must show the
    real clip's frames, all in the same variant."""
    frames = tuple(Sample(_solid(tmp_path / f"f{f}.png", 10 * f), 0, 0, 0, "t") for f in range(12))
    variants = {s.path: [Variant(_solid(tmp_path / f"f{f}_v{k}.png", 10 * f + k + 1)) for k in range(3)]
                for f, s in enumerate(frames)}
    data = ClipTrainSet([Piece(frames, 0, 0)], variants, (32, 16), seed=0, fraction_of=lambda e: 1.0, length=4,
                        stride=2)
    seen = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        real, _, _, gen = data[0]
        undo = lambda x: (x[:, 0, 0, 0] * 0.229 + 0.485) * 255  # noqa: E731  (normalised grey -> value)
        f = torch.round(undo(real)).long()
        g = torch.round(undo(gen)).long()
        assert (f % 10 == 0).all() and len(f) == 4
        k = g - f - 1
        assert (k == k[0]).all() and 0 <= int(k[0]) < 3  # one variant for the whole clip
        seen.add(int(k[0]))
    assert seen == {0, 1, 2}


def test_refine_on_video_uses_tracklet_variants(dlcr, synth_ccvid, ccvid_generated, tmp_path):
    train = dlcr("--device", "cpu", "train", synth_ccvid.parent, "--out", tmp_path / "run", *VIDEO, "--epochs", "1",
                 "--keep", "last")
    assert train.code == 0, train.stderr
    work = ccvid_generated.parent / "work"
    queries = dlcr("expand", synth_ccvid.parent, "--out", tmp_path / "qwork", "--weight-free", "--parsing-dir",
                   synth_ccvid / "parsing", "-k", "2", "--prompts", work / "prompts.json", "--set",
                   'inpaint.splits=["query"]')
    assert queries.code == 0, queries.stderr
    (tmp_path / "qvar.jsonl").write_text(queries.stdout)
    run = dlcr("--device", "cpu", "refine", synth_ccvid.parent, "-c", tmp_path / "run", "--variants",
               tmp_path / "qvar.jsonl", "-k", "2", "--json")
    assert run.code == 0, run.stderr
    got = json.loads(run.stdout)
    assert list(got["after"]) == ["standard", "sc", "cc"]
    assert got["before"]["standard"]["queries"] == got["after"]["standard"]["queries"]


def test_video_needs_tracklets(dlcr, synth_data, tmp_path):
    run = dlcr("--device", "cpu", "train", synth_data, "--out", tmp_path / "run", *VIDEO, "--video")
    assert run.code == 2 and "tracklets" in run.stderr and len(run.stderr.strip().splitlines()) <= 2


def test_an_old_image_checkpoint_still_loads(tmp_path):
    """model.json files written before heads existed have none: they are image models."""
    from dlcr_cli.reid.model import build_model, load_checkpoint, save_checkpoint

    folder = save_checkpoint(build_model("builtin:small"), tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    del meta["head"]
    (folder / "model.json").write_text(json.dumps(meta))
    model = load_checkpoint(folder)
    assert not model.video and model.dim == 512
    clips = torch.randn(2, 3, 3, 64, 32)
    video = build_model("builtin:small", head="video").eval()
    frames = video(clips.flatten(0, 1))  # one-frame clips
    assert video(clips).shape == (2, 256) and frames.shape == (6, 256)
    assert np.isfinite(video(clips).detach().numpy()).all()
