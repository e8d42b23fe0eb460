"""Tiny random-weight transformers backbones with parameters their forward never uses (DINOv2's
mask_token, Swin's final layernorm), built offline: DDP's unused-parameter cases."""

from __future__ import annotations

from pathlib import Path


def build_tiny_dinov2(path: Path) -> Path:
    import torch
    from transformers import Dinov2Backbone, Dinov2Config

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                          patch_size=8, image_size=64, out_features=["stage2"])
    Dinov2Backbone(config).save_pretrained(path)
    return path


def build_tiny_swin(path: Path) -> Path:
    import torch
    from transformers import SwinBackbone, SwinConfig

    torch.manual_seed(0)
    config = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2,
                        out_features=["stage2"])
    SwinBackbone(config).save_pretrained(path)
    return path
