"""Temporal sampling (dense pieces, training clip, test clips) and clip transforms of CAL's video
pipeline, against hand-computed cases and a plain transcription of the test recombination."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlcr_cli.reid.transforms import normalize, resize
from dlcr_cli.reid.video import (
    ClipTrainTransform,
    clip_test_transform,
    dense_pieces,
    train_clip,
)
from dlcr_cli.reid.video import test_clips as make_test_clips

# -- dense_pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, [(0, 1)]),
        (10, [(0, 10)]),
        (63, [(0, 63)]),
        (64, [(0, 64)]),
        (127, [(0, 127)]),
        (128, [(0, 64), (64, 128)]),
        (130, [(0, 64), (64, 130)]),
        (200, [(0, 64), (64, 128), (128, 200)]),
    ],
)
def test_dense_pieces(n, expected):
    pieces = dense_pieces(n)
    assert [(p.start, p.stop) for p in pieces] == expected
    assert all(p.step == 1 for p in pieces)
    assert [i for p in pieces for i in p] == list(range(n))  # a partition, in order


def test_dense_pieces_step_zero_and_custom_step():
    assert dense_pieces(500, step=0) == [range(500)]
    assert [(p.start, p.stop) for p in dense_pieces(10, step=3)] == [(0, 3), (3, 6), (6, 10)]


# -- test_clips ---------------------------------------------------------------------------------


def _oracle(n, L, S):
    """CAL's recombination written out step by step, on a list of frame indices."""
    frames = list(range(n))
    clips = []
    for i in range(n // (L * S)):
        for j in range(S):
            clips.append(frames[i * L * S + j:(i + 1) * L * S:S])
    if n % (L * S) != 0:
        new_stride = (n % (L * S)) // L
        base = n // (L * S) * (L * S)
        for i in range(new_stride):
            clips.append(frames[base + i:base + L * new_stride:new_stride])
        if n % L != 0:
            clip = frames[n // L * L:]
            original = list(clip)
            k = 0
            while len(clip) < L:
                clip.append(original[k % len(original)])
                k += 1
            clips.append(clip)
    return clips


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, [[0, 0, 0, 0]]),
        (3, [[0, 1, 2, 0]]),
        (4, [[0, 1, 2, 3]]),
        (6, [[0, 1, 2, 3], [4, 5, 4, 5]]),
        (7, [[0, 1, 2, 3], [4, 5, 6, 4]]),
        (8, [[0, 2, 4, 6], [1, 3, 5, 7]]),
        # one full block, then a reduced-stride (1) clip of 8..11, then 12 padded
        (13, [[0, 2, 4, 6], [1, 3, 5, 7], [8, 9, 10, 11], [12, 12, 12, 12]]),
        # two full blocks exactly
        (16, [[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, 12, 14], [9, 11, 13, 15]]),
        # one block, a 4-frame reduced clip, then 12, 13 padded in order
        (14, [[0, 2, 4, 6], [1, 3, 5, 7], [8, 9, 10, 11], [12, 13, 12, 13]]),
    ],
)
def test_test_clips_small_cases(n, expected):
    assert make_test_clips(n, seq_len=4, stride=2) == expected


def test_test_clips_reduced_stride_interleaves():
    # L=4, S=3: block of 12; n=20 leaves 8 frames -> reduced stride 2 over 12..19
    assert make_test_clips(20, seq_len=4, stride=3) == [
        [0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11],
        [12, 14, 16, 18], [13, 15, 17, 19],
    ]


@pytest.mark.parametrize(("L", "S"), [(8, 4), (4, 2), (3, 5), (1, 1)])
def test_test_clips_match_oracle(L, S):
    for n in range(1, 301):
        clips = make_test_clips(n, seq_len=L, stride=S)
        assert clips == _oracle(n, L, S), n
        assert len(clips) == math.ceil(n / L)
        assert all(len(c) == L for c in clips)
        assert {i for c in clips for i in c} == set(range(n))  # every frame is used


def test_test_clips_defaults_are_cal_ones():
    assert make_test_clips(45) == make_test_clips(45, seq_len=8, stride=4) == _oracle(45, 8, 4)


# -- train_clip ---------------------------------------------------------------------------------


def test_train_clip_strided_branch_structure_and_begin_range():
    size, stride, n = 8, 4, 40  # n >= 32: begins 0..40-28-1 = 0..11
    rng = np.random.default_rng(0)
    begins = set()
    for _ in range(2000):
        clip = train_clip(n, rng, size, stride)
        assert len(clip) == size
        assert np.all(np.diff(clip) == stride)
        assert 0 <= clip[0] and clip[-1] < n
        begins.add(clip[0])
    assert begins == set(range(n - (size - 1) * stride))  # both ends reached, nothing beyond


def test_train_clip_strided_branch_at_threshold():
    # n == size * stride: begins 0..stride-1
    rng = np.random.default_rng(1)
    begins = {train_clip(32, rng)[0] for _ in range(500)}
    assert begins == {0, 1, 2, 3}


def test_train_clip_segment_branch():
    size, stride, n = 8, 4, 27  # 8 <= 27 < 32: segments of 27 // 8 = 3 frames, 24..26 unused
    rng = np.random.default_rng(2)
    seen = [set() for _ in range(size)]
    for _ in range(1000):
        clip = train_clip(n, rng, size, stride)
        assert len(clip) == size
        for i, frame in enumerate(clip):
            assert 3 * i <= frame < 3 * (i + 1)
            seen[i].add(frame)
    assert seen == [set(range(3 * i, 3 * (i + 1))) for i in range(size)]


def test_train_clip_segment_branch_at_lower_threshold():
    rng = np.random.default_rng(3)
    assert all(train_clip(8, rng) == list(range(8)) for _ in range(50))


def test_train_clip_short_branch_sorted_with_replacement():
    n, size = 5, 8
    rng = np.random.default_rng(4)
    seen = set()
    for _ in range(500):
        clip = train_clip(n, rng, size)
        assert len(clip) == size
        assert clip == sorted(clip)
        assert all(0 <= f < n for f in clip)
        assert len(set(clip)) < size  # 8 draws from 5 frames must repeat
        seen.update(clip)
    assert seen == set(range(n))
    assert train_clip(1, rng) == [0] * 8


def test_train_clip_deterministic_for_seeded_rng():
    for n in (3, 20, 200):
        a = [train_clip(n, np.random.default_rng(7)) for _ in range(3)]
        b = [train_clip(n, np.random.default_rng(7)) for _ in range(3)]
        assert a == b
        rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
        assert [train_clip(n, rng_a) for _ in range(10)] == [train_clip(n, rng_b) for _ in range(10)]
    rng = np.random.default_rng(11)
    assert len({tuple(train_clip(200, rng)) for _ in range(20)}) > 1  # not constant


def test_train_clip_returns_python_ints():
    rng = np.random.default_rng(0)
    for n in (3, 20, 200):
        assert all(type(f) is int for f in train_clip(n, rng))


# -- argument validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: dense_pieces(0),
        lambda: dense_pieces(10, step=-1),
        lambda: train_clip(0, np.random.default_rng(0)),
        lambda: train_clip(10, np.random.default_rng(0), size=0),
        lambda: train_clip(10, np.random.default_rng(0), stride=0),
        lambda: make_test_clips(0),
        lambda: make_test_clips(10, seq_len=0),
        lambda: make_test_clips(10, stride=0),
    ],
)
def test_invalid_arguments(call):
    with pytest.raises(ValueError):
        call()


# -- clip transforms ----------------------------------------------------------------------------


def _asymmetric_frame(h: int = 40, w: int = 20) -> torch.Tensor:
    frame = torch.zeros(3, h, w, dtype=torch.uint8)
    frame[:, :, : w // 4] = 255  # bright strip on the left only
    frame[0, : h // 2] = 120
    return frame


def test_clip_train_transform_one_flip_for_the_whole_clip():
    size = (32, 16)
    frame = _asymmetric_frame()
    transform = ClipTrainTransform(size)
    plain = normalize(resize(frame, size, "bicubic"))
    flipped_seen = unflipped_seen = False
    for seed in range(40):
        clip = transform([frame.clone() for _ in range(6)], torch.Generator().manual_seed(seed))
        assert clip.shape == (6, 3, *size) and clip.dtype == torch.float32
        assert all(torch.equal(clip[0], clip[t]) for t in range(1, 6))
        if torch.allclose(clip[0], plain):
            unflipped_seen = True
        else:
            assert torch.allclose(clip[0], plain.flip(-1))
            flipped_seen = True
    assert flipped_seen and unflipped_seen


def test_clip_train_transform_values_for_unflipped_draw():
    size = (24, 12)
    rng = np.random.default_rng(0)
    frames = [torch.from_numpy(rng.integers(0, 256, (3, 50, 25), dtype=np.uint8)) for _ in range(4)]
    expected = torch.stack([normalize(resize(f, size, "bicubic")) for f in frames])
    transform = ClipTrainTransform(size)
    results = {}
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        draw = torch.rand((), generator=torch.Generator().manual_seed(seed)).item()
        results[draw < 0.5] = transform(frames, generator)
    assert set(results) == {True, False}
    assert torch.allclose(results[False], expected, atol=1e-6)
    assert torch.allclose(results[True], expected.flip(-1), atol=1e-6)


def test_clip_train_transform_same_generator_state_same_clip():
    frames = [_asymmetric_frame() for _ in range(3)]
    transform = ClipTrainTransform((32, 16))
    a = transform(frames, torch.Generator().manual_seed(5))
    b = transform(frames, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_clip_test_transform_is_per_frame_resize_normalize():
    size = (24, 12)
    rng = np.random.default_rng(1)
    frames = [torch.from_numpy(rng.integers(0, 256, (3, 50, 25), dtype=np.uint8)) for _ in range(5)]
    clip = clip_test_transform(size)(frames)
    assert clip.shape == (5, 3, *size)
    expected = torch.stack([normalize(resize(f, size, "bicubic")) for f in frames])
    assert torch.allclose(clip, expected, atol=1e-6)
    # deterministic: no flip ever
    assert torch.equal(clip, clip_test_transform(size)(frames))
