"""Image transforms in torch alone: shapes, the reference's augmentations, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dlcr_cli.reid import transforms as T


def _image(h: int = 60, w: int = 30, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_load_image_is_uint8_chw(tmp_path):
    array = np.random.default_rng(1).integers(0, 256, (20, 10, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    Image.fromarray(array[..., 0]).save(tmp_path / "grey.png")
    image = T.load_image(tmp_path / "a.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 10)
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(array))
    assert T.load_image(tmp_path / "grey.png").shape == (3, 20, 10)  # converted to RGB


def test_resize_matches_pil_bilinear():
    image = _image(200, 90)
    for size in ((128, 64), (384, 192)):
        ours = T.resize(image, size)
        assert ours.shape == (3, *size) and ours.dtype == torch.float32
        pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize(size[::-1], Image.BILINEAR)
        pil_t = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)
        assert (ours - pil_t).abs().max() < 1.5 / 255  # within PIL's rounding to uint8
    batch = torch.stack([_image(seed=1), _image(seed=2)])
    assert T.resize(batch, (16, 8)).shape == (2, 3, 16, 8)


def test_normalisation_values():
    mean = torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1).expand(3, 4, 2)
    assert torch.allclose(T.normalize(mean), torch.zeros(3, 4, 2), atol=1e-6)
    zeros = T.normalize(torch.zeros(3, 4, 2, dtype=torch.uint8))
    expected = -torch.tensor(T.IMAGENET_MEAN) / torch.tensor(T.IMAGENET_STD)
    assert torch.allclose(zeros[:, 0, 0], expected)
    white = T.normalize(torch.full((2, 3, 4, 2), 255, dtype=torch.uint8))
    assert torch.allclose(white[1, :, 0, 0], (1 - torch.tensor(T.IMAGENET_MEAN)) / torch.tensor(T.IMAGENET_STD))


def test_flip_flips():
    image = T.to_float(_image())
    assert torch.equal(T.random_flip(image, _gen(0), p=1.0), image.flip(-1))
    assert torch.equal(T.random_flip(image, _gen(0), p=0.0), image)
    assert torch.equal(T.hflip(image)[:, :, 0], image[:, :, -1])


def test_random_crop_upscales_by_1_125_and_crops_back():
    image = T.resize(_image(64, 32), (64, 32))
    assert torch.equal(T.random_crop(image, _gen(0), p=0.0), image)
    cropped = T.random_crop(image, _gen(0), p=1.0)
    assert cropped.shape == image.shape
    big = T.resize(image, (72, 36))  # round(64 * 1.125), round(32 * 1.125)
    found = any(torch.equal(cropped, big[:, y:y + 64, x:x + 32]) for y in range(9) for x in range(5))
    assert found


def test_erase_box_bounds():
    gen = _gen(0)
    height, width = 128, 64
    for _ in range(500):
        top, left, h, w = T.erase_box(height, width, gen)
        assert 0 < h < height and 0 < w < width
        assert 0 <= top <= height - h and 0 <= left <= width - w
        # area 0.02 .. 0.4 of the image before rounding the sides
        assert 0.02 * 0.8 <= h * w / (height * width) <= 0.4 * 1.2
        assert 0.3 * 0.7 <= h / w <= (1 / 0.3) * 1.4


def test_random_erase_fills_a_rectangle_with_cals_value():
    image = torch.full((3, 128, 64), 9.0)
    assert torch.equal(T.random_erase(image, _gen(0), p=0.0), image)
    erased = T.random_erase(image, _gen(1), p=1.0)
    changed = (erased != 9.0).any(0)
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    h, w = len(rows), len(cols)
    assert changed.sum() == h * w  # one rectangle
    assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
    assert torch.allclose(erased[:, changed], torch.tensor(T.ERASE_FILL).view(3, 1))
    assert torch.equal(image, torch.full((3, 128, 64), 9.0))  # the input is untouched


def test_train_transform_shape_and_determinism():
    image = _image(100, 40)
    out = T.train_transform((128, 64), _gen(7))(image)
    assert out.shape == (3, 128, 64) and out.dtype == torch.float32
    assert torch.equal(out, T.train_transform((128, 64), _gen(7))(image))
    transform = T.train_transform((128, 64))
    outputs = [transform(image, T.sample_generator(0, 1, i)) for i in range(8)]
    assert torch.equal(outputs[3], transform(image, T.sample_generator(0, 1, 3)))
    assert len({o.sum().item() for o in outputs}) > 1  # augmentations differ between samples


def test_sample_generator_is_keyed():
    a = torch.rand(3, generator=T.sample_generator(1, 2, 3))
    assert torch.equal(a, torch.rand(3, generator=T.sample_generator(1, 2, 3)))
    assert not torch.equal(a, torch.rand(3, generator=T.sample_generator(1, 3, 2)))


def test_test_transform_is_resize_and_normalise():
    image = _image(100, 40)
    out = T.test_transform((128, 64))(image)
    assert torch.equal(out, T.normalize(T.resize(image, (128, 64))))
    assert T.test_transform((128, 64))(torch.stack([image, image])).shape == (2, 3, 128, 64)


@pytest.mark.parametrize("size", [(384, 192), (256, 128)])
def test_train_transform_at_paper_sizes(size):
    assert T.train_transform(size, _gen(0))(_image(300, 120)).shape == (3, *size)
