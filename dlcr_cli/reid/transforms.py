"""Image transforms of CAL's training and test pipelines, in torch alone (no torchvision).

The reference (Simple-CCReID `data/__init__.py`, `data/img_transforms.py`):

    train: Resize((H, W)) -> RandomCroping(p=0.5) -> RandomHorizontalFlip(0.5) -> ToTensor
           -> Normalize(ImageNet) -> RandomErasing(probability=0.5)
    test:  Resize((H, W)) -> ToTensor -> Normalize(ImageNet)

Differences, all deliberate and small: resizing is done on float pixels (the reference resizes
PIL uint8 images and rounds after each resize), with torch's bilinear antialiased interpolation,
which matches PIL's bilinear filter to about one grey level.

Random erasing fills its rectangle with (0.4914, 0.4822, 0.4465) written into the *normalised*
tensor, exactly as CAL's RandomErasing does (those are its `mean` defaults, the CIFAR-10 means,
not the ImageNet ones, and not normalised first): keep it so for parity with the reference.

All randomness comes from a `torch.Generator`: the one given to `train_transform`, or one
passed per call (`sample_generator(seed, epoch, index)` gives one per sample, so augmentation
is the same whatever the DataLoader's worker count).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ERASE_FILL = (0.4914, 0.4822, 0.4465)
"""CAL's RandomErasing value, written as is into the normalised image."""

Size = tuple[int, int]


def load_image(path: str | Path) -> torch.Tensor:
    """The image at `path` as a 3 x H x W uint8 tensor (RGB)."""
    with Image.open(path) as img:
        return to_tensor(img)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image as a 3 x H x W uint8 tensor (RGB)."""
    array = np.array(img.convert("RGB"))  # a writable copy: from_numpy warns on read-only arrays
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float 0..1; float images are returned as they are."""
    return image.float().div_(255) if image.dtype == torch.uint8 else image


def resize(image: torch.Tensor, size: Size, mode: str = "bilinear") -> torch.Tensor:
    """Antialiased resize of a C x H x W or B x C x H x W image to `size` (H, W), as float:
    bilinear (CAL's image pipeline) or bicubic (its video pipeline), clamped to 0..1 as PIL's
    uint8 result is (bicubic overshoots at edges)."""
    image = to_float(image)
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    batch = image if image.dim() == 4 else image.unsqueeze(0)
    out = F.interpolate(batch, size=size, mode=mode, align_corners=False, antialias=True)
    if mode == "bicubic":
        out = out.clamp_(0, 1)
    return out if image.dim() == 4 else out.squeeze(0)


def normalize(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(x - mean) / std per channel, for C x H x W or B x C x H x W images (uint8, or float in 0..1)."""
    image = to_float(image)
    mean_t = torch.tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return (image - mean_t) / std_t


def hflip(image: torch.Tensor) -> torch.Tensor:
    return image.flip(-1)


def _uniform(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(generator: torch.Generator | None, low: int, high: int) -> int:
    """Uniform integer in [low, high], both included (Python's random.randint)."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def random_crop(image: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """CAL's RandomCroping: with probability p, upscale by 1.125 and crop back to the size at a random place."""
    if _uniform(generator) >= p:
        return image
    height, width = image.shape[-2:]
    big_h, big_w = int(round(height * 1.125)), int(round(width * 1.125))
    big = resize(image, (big_h, big_w))
    top = int(round(_uniform(generator, 0, big_h - height)))
    left = int(round(_uniform(generator, 0, big_w - width)))
    return big[..., top:top + height, left:left + width]


def random_flip(image: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    return hflip(image) if _uniform(generator) < p else image


def erase_box(height: int, width: int, generator: torch.Generator | None = None,
              area: tuple[float, float] = (0.02, 0.4), ratio: float = 0.3,
              attempts: int = 100) -> tuple[int, int, int, int] | None:
    """(top, left, h, w) of CAL's RandomErasing rectangle, or None when no attempt fits.

    Target area uniform in `area` x H x W, aspect h/w uniform in [ratio, 1/ratio]; a box must be
    strictly smaller than the image on both sides.
    """
    for _ in range(attempts):
        target = _uniform(generator, *area) * height * width
        aspect = _uniform(generator, ratio, 1 / ratio)
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if w < width and h < height:
            return _randint(generator, 0, height - h), _randint(generator, 0, width - w), h, w
    return None


def random_erase(image: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5,
                 fill: tuple[float, ...] = ERASE_FILL) -> torch.Tensor:
    """CAL's RandomErasing on a normalised C x H x W float image (a copy is returned when erased)."""
    if _uniform(generator) >= p:
        return image
    box = erase_box(image.shape[-2], image.shape[-1], generator)
    if box is None:
        return image
    top, left, h, w = box
    image = image.clone()
    value = torch.tensor(fill[: image.shape[0]], dtype=image.dtype, device=image.device).view(-1, 1, 1)
    image[:, top:top + h, left:left + w] = value
    return image


def sample_generator(*keys: int) -> torch.Generator:
    """A generator seeded from integers (e.g. seed, epoch, sample index, view): per-sample randomness
    that does not depend on the order samples are loaded in or on the DataLoader's workers."""
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


class TrainTransform:
    """resize -> random crop -> flip -> normalise -> random erasing, on one C x H x W image."""

    def __init__(self, size: Size, generator: torch.Generator | None = None, crop_p: float = 0.5,
                 flip_p: float = 0.5, erase_p: float = 0.5) -> None:
        self.size = tuple(size)
        self.generator = generator
        self.crop_p, self.flip_p, self.erase_p = crop_p, flip_p, erase_p

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        gen = generator if generator is not None else self.generator
        image = resize(image, self.size)
        image = random_crop(image, gen, self.crop_p)
        image = random_flip(image, gen, self.flip_p)
        return random_erase(normalize(image), gen, self.erase_p)


class TestTransform:
    """resize -> normalise, on one C x H x W image or a B x C x H x W batch."""

    __test__ = False  # not a pytest test class, whatever imports it

    def __init__(self, size: Size) -> None:
        self.size = tuple(size)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return normalize(resize(image, self.size))


def train_transform(size: Size, generator: torch.Generator | None = None) -> TrainTransform:
    """The reference's training transform at `size` (H, W); randomness from `generator` unless a
    call passes its own."""
    return TrainTransform(size, generator)


def test_transform(size: Size) -> TestTransform:
    return TestTransform(size)


test_transform.__test__ = False  # a test module importing it must not collect it as a test
