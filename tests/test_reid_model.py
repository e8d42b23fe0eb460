"""The re-id model: backbones (tiny transformers checkpoints, builtin:small), last stride,
checkpoints without pickle, feature extraction."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from dlcr_cli.errors import EXIT_UNAVAILABLE, InputMissing, MalformedInput, Unavailable, UsageError
from dlcr_cli.reid.model import (
    ReidModel,
    build_model,
    extract_features,
    load_checkpoint,
    save_checkpoint,
    set_last_stride_1,
)


@pytest.fixture(scope="module")
def tiny_convnext(tmp_path_factory) -> Path:
    from transformers import ConvNextConfig, ConvNextModel

    config = ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])
    path = tmp_path_factory.mktemp("tiny-convnext")
    ConvNextModel(config).save_pretrained(path)
    return path


def _images(n: int = 2, size: tuple[int, int] = (128, 64), seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def _perturb_bn_stats(model: ReidModel) -> None:
    """Train-mode forwards so the BN running statistics differ from their init."""
    model.train()
    with torch.no_grad():
        model(_images(4, seed=1))
    model.eval()


# --- backbones and shapes ---------------------------------------------------------------------


def test_last_stage_stride_1_doubles_the_final_map(tiny_resnet):
    model = build_model(str(tiny_resnet), device="cpu")
    assert model.spec["last_stride_1"] is True
    assert model.feature_map(_images(1, (384, 192))).shape[-2:] == (24, 12)

    from transformers import ResNetBackbone  # the same checkpoint, strides untouched: 12 x 6

    plain = ResNetBackbone.from_pretrained(tiny_resnet, use_safetensors=True)
    assert plain(pixel_values=_images(1, (384, 192))).feature_maps[-1].shape[-2:] == (12, 6)
    first = plain.encoder.stages[-1].layers[0]
    assert set_last_stride_1(plain)
    assert first.shortcut.convolution.stride == (1, 1) and first.layer[1].convolution.stride == (1, 1)


def test_hub_backbone_gets_the_pretrained_weights(tiny_resnet):
    from transformers import ResNetForImageClassification

    reference = ResNetForImageClassification.from_pretrained(tiny_resnet, use_safetensors=True)
    model = build_model(str(tiny_resnet), device="cpu")
    ours = model.backbone.model.embedder.embedder.convolution.weight
    assert torch.equal(ours, reference.resnet.embedder.embedder.convolution.weight)


def test_embedding_is_max_and_avg_pool_then_bn(tiny_resnet):
    model = build_model(str(tiny_resnet), device="cpu").eval()
    assert model.dim == 64 and model.spec["channels"] == 32  # 2 x the last stage's channels
    x = _images(3)
    fmap = model.feature_map(x)
    expected = model.bn(torch.cat([fmap.amax(dim=(2, 3)), fmap.mean(dim=(2, 3))], dim=1))
    assert torch.allclose(model(x), expected)
    assert model(x).shape == (3, 64)
    assert torch.allclose(model.bn.bias, torch.zeros(64))


def test_builtin_small_shapes_and_size():
    model = build_model("builtin:small", device="cpu")
    params = sum(p.numel() for p in model.parameters())
    assert 300_000 <= params <= 5_000_000
    x = _images(2)
    assert model.feature_map(x).shape == (2, 256, 16, 8)  # output stride 8, last stage at stride 1
    assert model(x).shape == (2, model.dim) == (2, 512)


def test_convnext_backbone_works_at_its_own_stride(tiny_convnext):
    model = build_model(str(tiny_convnext), device="cpu")
    assert model.spec["last_stride_1"] is False  # 2x2 patch merging cannot drop its stride
    assert model.feature_map(_images(1)).shape[-2:] == (4, 2)
    assert model(_images(2)).shape == (2, 64)


def test_build_model_dtype():
    model = build_model("builtin:small", device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    features = extract_features(model, [_images(2)])  # float32 images are cast to the model's dtype
    assert features.dtype == torch.float32 and torch.isfinite(features).all()


# --- unavailable backbones -------------------------------------------------------------------


def test_unknown_hub_id_is_unavailable():
    with pytest.raises(Unavailable) as caught:
        build_model("nobody-here/no-such-backbone", device="cpu")
    message = str(caught.value)
    assert "'nobody-here/no-such-backbone'" in message and "train.backbone" in message
    assert "\n" not in message and caught.value.exit_code == EXIT_UNAVAILABLE == 69


def test_missing_folder_is_unavailable(tmp_path):
    with pytest.raises(Unavailable, match="folder not found"):
        build_model(str(tmp_path / "absent"), device="cpu")


def test_pickle_only_checkpoint_is_unavailable(tiny_resnet, tmp_path):
    """safetensors only: a folder with pytorch_model.bin and no model.safetensors is refused."""
    from safetensors.torch import load_file

    shutil.copy(tiny_resnet / "config.json", tmp_path / "config.json")
    torch.save(load_file(tiny_resnet / "model.safetensors"), tmp_path / "pytorch_model.bin")
    with pytest.raises(Unavailable, match="train.backbone"):
        build_model(str(tmp_path), device="cpu")


def test_non_backbone_architecture_is_unavailable(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                         vocab_size=16)).save_pretrained(tmp_path)
    with pytest.raises(Unavailable, match="no transformers backbone"):
        build_model(str(tmp_path), device="cpu")


def test_unknown_builtin_is_a_usage_error():
    with pytest.raises(UsageError, match="builtin:small"):
        build_model("builtin:huge", device="cpu")


# --- checkpoints ----------------------------------------------------------------------------------


def _assert_safetensors(path: Path) -> None:
    """A safetensors file: an 8-byte little-endian header length, then that much JSON. A pickle
    (torch.save) would start with a zip header (PK) or the pickle protocol byte (0x80)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    assert "__metadata__" in header and raw[:2] != b"PK" and raw[0] != 0x80
    with safe_open(path, framework="pt") as f:
        assert len(list(f.keys())) > 0


@pytest.mark.parametrize("kind", ["builtin", "hub"])
def test_checkpoint_round_trip(kind, tiny_resnet, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(tiny_resnet, source)
    model = build_model("builtin:small" if kind == "builtin" else str(source), device="cpu")
    _perturb_bn_stats(model)
    out = save_checkpoint(model, tmp_path / "ckpt", {"epochs": 3, "dataset": "ltcc"})
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]  # no temp files left
    _assert_safetensors(out / "model.safetensors")
    meta = json.loads((out / "model.json").read_text())
    assert meta["dim"] == model.dim and meta["config"] == {"epochs": 3, "dataset": "ltcc"}

    shutil.rmtree(source)  # rebuilding needs no backbone files and no network
    loaded = load_checkpoint(out, device="cpu")
    assert not loaded.training
    x = _images(3)
    assert torch.equal(loaded(x), model(x))
    if kind == "hub":
        assert meta["backbone"] == str(source) and meta["hub_config"]["model_type"] == "resnet"
        assert loaded.feature_map(_images(1, (384, 192))).shape[-2:] == (24, 12)  # last stride kept


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(InputMissing):
        load_checkpoint(tmp_path / "nothing")
    model = build_model("builtin:small", device="cpu")
    out = save_checkpoint(model, tmp_path / "ckpt", {})
    meta = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**meta, "channels": 8, "dim": 16}))
    from safetensors.torch import save_file

    save_file({"bn.weight": torch.ones(3)}, out / "model.safetensors")
    with pytest.raises(MalformedInput, match="does not match"):
        load_checkpoint(out)
    (out / "model.json").write_text("{not json")
    with pytest.raises(MalformedInput):
        load_checkpoint(out)


# --- features -------------------------------------------------------------------------------------


def test_extract_features_adds_the_flip_and_normalises():
    torch.manual_seed(0)
    model = build_model("builtin:small", device="cpu")
    _perturb_bn_stats(model)
    model.train()
    x = _images(5)
    batches = [(x[:3], torch.tensor([0, 1, 2])), (x[3:], torch.tensor([3, 4]))]  # a loader's (images, labels)
    features = extract_features(model, batches)
    assert model.training  # its mode comes back
    model.eval()
    with torch.no_grad():
        expected = F.normalize(model(x) + model(x.flip(-1)), dim=1)
        plain = F.normalize(model(x), dim=1)
    assert features.shape == (5, 512) and features.dtype == torch.float32
    assert torch.allclose(features, expected, atol=1e-5)
    assert torch.allclose(features.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(extract_features(model, [x], flip=False), plain, atol=1e-5)
    assert extract_features(model, []).shape == (0, 512)
