"""Temporal sampling and clip transforms of CAL's video pipeline (CCVID), as frame indices.

The reference (Simple-CCReID, configs/default_vid.py: SAMPLING_STEP 64, SEQ_LEN 8,
SAMPLING_STRIDE 4, RE_PROB 0):

- `dense_pieces`: `CCVID._densesampling_for_trainingset` (data/datasets/ccvid.py), which cuts
  each training tracklet into pieces of `step` frames, the last piece keeping the remainder.
- `train_clip`: `TemporalRandomCrop(size, stride)` (data/temporal_transforms.py), one clip per
  piece per epoch.
- `test_clips`: `CCVID._recombination_for_testset(seq_len, stride)`, which covers a test tracklet
  with ceil(n / seq_len) clips of seq_len frames; a tracklet's feature is then the mean of its
  clips' features, L2-normalised (done by the caller, not here).
- `ClipTrainTransform` / `clip_test_transform`: `build_vid_transforms` (data/__init__.py) with
  data/spatial_transforms.py: resize, one horizontal-flip draw for the whole clip, normalise
  (random erasing is configured with probability 0, so it is left out).

Everything here works on frame indices 0..n-1 of a tracklet; the caller maps them to paths.
Randomness comes from the generator passed in (numpy for indices, torch for the flip), never
from global state. Frames are resized bicubic, as the reference's `Scale(..., interpolation=3)`
(PIL bicubic), with torch's antialiased bicubic on float pixels, clamped to 0..1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dlcr_cli.reid.transforms import Size, normalize, random_flip, resize

VIDEO_RESIZE = "bicubic"
"""CAL's video transforms resize with PIL bicubic (its image transforms: bilinear)."""


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def dense_pieces(n: int, step: int = 64) -> list[range]:
    """Frame ranges of the training pieces of an n-frame tracklet (step 0: the whole tracklet).

    n // step pieces of `step` frames, the last one running to the end of the tracklet; a
    tracklet shorter than `step` is one piece.
    """
    _check_positive(n=n)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    count = n // step if step else 0
    if count == 0:
        return [range(n)]
    return [range(i * step, (i + 1) * step if i < count - 1 else n) for i in range(count)]


def train_clip(n: int, rng: np.random.Generator, size: int = 8, stride: int = 4) -> list[int]:
    """`size` frame indices of a random training clip from an n-frame piece.

    n >= size * stride: `size` frames `stride` apart from a random begin (every begin whose clip
    fits); size <= n < size * stride: one random frame from each of `size` equal segments of
    n // size frames (the n % size frames at the end are never drawn); n < size: `size` frames
    drawn with replacement, sorted.
    """
    _check_positive(n=n, size=size, stride=stride)
    if n >= size * stride:
        begin = int(rng.integers(0, n - (size - 1) * stride))  # upper bound excluded
        return list(range(begin, begin + size * stride, stride))
    if n >= size:
        seg = n // size
        return [int(rng.integers(seg * i, seg * (i + 1))) for i in range(size)]
    return sorted(int(i) for i in rng.integers(0, n, size=size))


def test_clips(n: int, seq_len: int = 8, stride: int = 4) -> list[list[int]]:
    """The test clips (frame indices) of an n-frame tracklet: ceil(n / seq_len) clips of seq_len.

    Each full block of seq_len * stride frames gives `stride` interleaved clips (offsets
    0..stride-1, step `stride`); the rest r = n % (seq_len * stride) gives r // seq_len
    interleaved clips of step r // seq_len; the last n % seq_len frames, if any, make one more
    clip, loop-padded (its frames repeated in order) to seq_len.
    """
    _check_positive(n=n, seq_len=seq_len, stride=stride)
    block = seq_len * stride
    clips: list[list[int]] = []
    for start in range(0, n // block * block, block):
        clips.extend(list(range(start + j, start + block, stride)) for j in range(stride))
    base, rest = n // block * block, n % block
    reduced = rest // seq_len
    clips.extend(list(range(base + j, base + seq_len * reduced, reduced)) for j in range(reduced))
    if n % seq_len:
        tail = list(range(n // seq_len * seq_len, n))
        clips.append([tail[k % len(tail)] for k in range(seq_len)])
    assert len(clips) == -(-n // seq_len) and all(len(c) == seq_len for c in clips)
    return clips


test_clips.__test__ = False  # a test module importing it must not collect it as a test


def _stack(frames: list[torch.Tensor], size: Size) -> torch.Tensor:
    if not frames:
        raise ValueError("a clip needs at least one frame")
    return torch.stack([resize(frame, size, VIDEO_RESIZE) for frame in frames])


class ClipTrainTransform:
    """resize -> one flip draw for the whole clip -> normalise, on a list of 3 x H x W frames."""

    def __init__(self, size: tuple[int, int], flip_p: float = 0.5) -> None:
        self.size = tuple(size)
        self.flip_p = flip_p

    def __call__(self, frames: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """T x 3 x H x W float clip at `size`."""
        clip = random_flip(_stack(frames, self.size), generator, self.flip_p)  # one draw, all frames
        return normalize(clip)


def clip_test_transform(size: tuple[int, int]) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """resize -> normalise per frame: a list of 3 x H x W frames -> T x 3 x H x W float clip."""
    size = tuple(size)

    def transform(frames: list[torch.Tensor]) -> torch.Tensor:
        return normalize(_stack(frames, size))

    return transform

