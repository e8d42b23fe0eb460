"""dlcr export: ONNX graphs of tiny models (builtin:small, a random-weight transformers ResNet,
a video head) against dlcr's own test-time features in onnxruntime at two batch sizes, the
metadata, the run folder's best/ chosen as evaluate does, and the failure paths (a failed
check, the missing extra, no model): one line and a documented exit code each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dlcr_cli.reid.model import build_model, extract_features, load_checkpoint, save_checkpoint

pytest.importorskip("onnxruntime")  # the [export] extra, part of [test]
import onnx
import onnxruntime as ort

SIZE = (64, 32)


def _bn_stats(model, shape) -> None:
    """Train-mode forwards so the BN statistics are no longer their init."""
    model.train()
    with torch.no_grad():
        model(torch.randn(4, *shape, generator=torch.Generator().manual_seed(5)))
    model.eval()


def _save(model, folder: Path, **config) -> Path:
    _bn_stats(model, (3, *SIZE) if not model.video else (2, 3, *SIZE))
    return save_checkpoint(model, folder, {"image_size": list(SIZE), **config})


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A run folder: its last epoch (3) and best/ (epoch 2), different weights."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("export") / "run"
    _save(build_model("builtin:small"), run, epoch=3)
    _save(build_model("builtin:small"), run / "best", epoch=2, selection={"epoch": 2, "setting": "cc"})
    return run


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _onnx_features(path: Path, x: torch.Tensor) -> np.ndarray:
    return _session(path).run(["features"], {"images": x.numpy()})[0]


def _inputs(batch: int, shape=(3, *SIZE), seed: int = 7) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed + batch))


def test_export_gives_evaluate_s_features_with_a_dynamic_batch_and_says_so(dlcr, run_folder, tmp_path):
    out = tmp_path / "model.onnx"
    run = dlcr("export", run_folder, "--onnx", out, "--json")
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["check"]["max_abs_diff"] <= 1e-4 and report["check"]["bound"] == 1e-4
    assert report["input"]["shape"] == ["batch", 3, *SIZE] and report["mirror_sum_and_l2"] is True
    assert "largest absolute difference" in run.stderr and "batch sizes 1 and 3" in run.stderr
    assert str(run_folder / "best") in run.stderr  # the run's best/, as evaluate chooses

    best = load_checkpoint(run_folder / "best")
    for batch in (1, 5):  # neither is the traced batch (2) nor a checked one (3)
        x = _inputs(batch)
        want = extract_features(best, [x], flip=True).numpy()
        got = _onnx_features(out, x)
        assert got.shape == (batch, best.dim)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    last = extract_features(load_checkpoint(run_folder), [_inputs(1)], flip=True).numpy()
    assert np.abs(_onnx_features(out, _inputs(1)) - last).max() > 1e-3  # not the last epoch's model

    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["mirror_sum_and_l2"] == "true" and meta["opset"] == "20" and meta["input_size"] == "64x32"
    assert meta["backbone"] == "builtin:small" and meta["epoch"] == "2" and meta["head"] == "image"
    assert "0.485,0.456,0.406" in meta["normalization"] and "0.229,0.224,0.225" in meta["normalization"]
    from dlcr_cli import __version__

    assert meta["dlcr_version"] == __version__
    assert any(o.domain in ("", "ai.onnx") and o.version == 20 for o in model.opset_import)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") and [d.dim_value for d in dims[1:]] == [3, *SIZE]
    assert not [p.name for p in tmp_path.iterdir() if p.name != "model.onnx"]  # no temporary file left


def test_a_transformers_resnet_and_the_raw_embedding(tiny_resnet, tmp_path):
    from dlcr_cli.reid.export import export_onnx

    model = build_model(str(tiny_resnet))
    folder = _save(model, tmp_path / "hub")
    out = tmp_path / "raw.onnx"
    result = export_onnx(folder, out, raw=True, opset=18)
    assert result.mirror_sum_and_l2 is False and result.opset == 18
    loaded = load_checkpoint(folder)
    for batch in (1, 5):
        x = _inputs(batch)
        want = extract_features(loaded, [x], flip=False, normalize=False).numpy()
        np.testing.assert_allclose(_onnx_features(out, x), want, atol=1e-4 * max(1, np.abs(want).max()), rtol=0)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["mirror_sum_and_l2"] == "false" and meta["backbone"] == str(tiny_resnet) and meta["opset"] == "18"


def test_half_is_fp16_inside_float32_outside_and_close_to_the_fp32_features(run_folder, tmp_path):
    from dlcr_cli.reid.export import export_onnx

    out = tmp_path / "half.onnx"
    result = export_onnx(run_folder, out, epoch="last", half=True)
    assert result.precision == "fp16" and result.bound == 1e-2 and result.max_abs_diff <= 1e-2
    graph = onnx.load(str(out)).graph
    types = {init.data_type for init in graph.initializer if len(init.dims) == 4}  # the convolutions' weights
    assert types == {onnx.TensorProto.FLOAT16}
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = _inputs(5)
    want = extract_features(load_checkpoint(run_folder), [x], flip=True).numpy()
    assert np.abs(_onnx_features(out, x) - want).max() <= 1e-2


def test_a_video_model_takes_clips_and_gives_the_raw_clip_feature(tmp_path):
    from dlcr_cli.reid.export import export_onnx

    torch.manual_seed(1)
    folder = _save(build_model("builtin:small", head="video"), tmp_path / "video", clip=[2, 4])
    out = tmp_path / "video.onnx"
    result = export_onnx(folder, out)
    assert result.input_shape == ["batch", 2, 3, *SIZE] and result.mirror_sum_and_l2 is False
    model = load_checkpoint(folder)
    for batch in (1, 5):
        clips = _inputs(batch, (2, 3, *SIZE))
        want = extract_features(model, [clips], flip=False, normalize=False).numpy()
        np.testing.assert_allclose(_onnx_features(out, clips), want, atol=1e-4 * max(1, np.abs(want).max()), rtol=0)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["head"] == "video" and meta["clip_length"] == "2" and "bicubic" in meta["normalization"]


def test_a_graph_that_fails_the_check_is_exit_65_one_line_and_not_written(dlcr, run_folder, tmp_path, monkeypatch):
    real_run = ort.InferenceSession.run

    def perturbed(self, *args, **kwargs):
        return [out + 1e-3 for out in real_run(self, *args, **kwargs)]

    monkeypatch.setattr(ort.InferenceSession, "run", perturbed)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an older export")
    run = dlcr("export", run_folder, "--onnx", out)
    assert run.code == 65, run.stderr
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "differ beyond the bound" in errors[0] and "not written" in errors[0]
    assert "Traceback" not in run.stderr
    assert out.read_bytes() == b"an older export"  # the old file stays; no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_the_missing_extra_is_exit_69_naming_it(dlcr, run_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    run = dlcr("export", run_folder, "--onnx", tmp_path / "m.onnx")
    assert run.code == 69
    assert len(run.stderr.strip().splitlines()) == 1 and "pip install 'dlcr[export]'" in run.stderr
    assert "onnxruntime" in run.stderr and not (tmp_path / "m.onnx").exists()


def test_the_missing_extra_in_a_real_process_has_no_traceback(run_folder, tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "onnx.py").write_text("raise ImportError('not installed', name='onnx')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLCR_")}
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "dlcr_cli", "export", str(run_folder), "--onnx", str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 69, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "pip install 'dlcr[export]'" in done.stderr


def test_no_model_is_exit_66_and_a_bad_opset_exit_2(dlcr, tmp_path, run_folder):
    run = dlcr("export", tmp_path / "nothing", "--onnx", tmp_path / "m.onnx")
    assert run.code == 66 and "no re-id model" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    run = dlcr("export", tmp_path / "empty", "--onnx", tmp_path / "m.onnx")
    assert run.code == 66 and "Traceback" not in run.stderr
    run = dlcr("export", run_folder, "--onnx", tmp_path / "m.onnx", "--opset", "11")
    assert run.code == 2 and "--opset" in run.stderr


def test_a_model_torch_cannot_export_is_exit_65_one_line(dlcr, run_folder, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Unsupported operator: aten::frobnicate\n(and a long story)")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    run = dlcr("export", run_folder, "--onnx", tmp_path / "m.onnx")
    assert run.code == 65, run.stderr
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert errors == [line for line in run.stderr.splitlines() if "frobnicate" in line or "error" in line]
    assert len(errors) == 1 and "cannot export" in errors[0] and "aten::frobnicate" in errors[0]
    assert "long story" not in run.stderr and not (tmp_path / "m.onnx").exists()
