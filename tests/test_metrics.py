"""Evaluation metrics: hand-computed cases for every protocol, and the fast path against the reference loop."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlcr_cli.reid import metrics
from dlcr_cli.reid.metrics import (
    MODES,
    Labels,
    auto_chunk,
    cosine_distances,
    evaluate,
    evaluate_distances,
    evaluate_reference,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds hand-offs, which cost seconds on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fast(distmat, query, gallery, mode="standard", **kw):
    return evaluate_distances(distmat, query, gallery, mode, chunk=2, **kw)


IMPLEMENTATIONS = pytest.mark.parametrize("run", [evaluate_reference, fast], ids=["reference", "fast"])


def labels(pids, camids, clothes) -> Labels:
    return Labels(np.array(pids), np.array(camids), np.array(clothes))


def check(scores, rank1, rank5, mAP, mINP, queries, skipped):
    got = scores.as_dict()
    want = {"rank1": rank1, "rank5": rank5, "mAP": mAP, "mINP": mINP, "queries": queries, "skipped": skipped}
    assert {k: got[k] for k in want} == pytest.approx(want)


# One query: pid 1, camera 0, clothes 0. Gallery already in distance order:
#   g0 pid 2            other
#   g1 pid 1 cam 0 cl 0 junk in every mode (same camera)
#   g2 pid 1 cam 1 cl 0 standard: good; cc: junk (same clothes); sc: good
#   g3 pid 3            other
#   g4 pid 1 cam 2 cl 1 standard: good; cc: good; sc: junk (other clothes)
#   g5 pid 4            other
QUERY = labels([1], [0], [0])
GALLERY = labels([2, 1, 1, 3, 1, 4], [1, 0, 1, 1, 2, 0], [5, 0, 0, 6, 1, 7])
DIST = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])


@IMPLEMENTATIONS
def test_standard_removes_same_camera_junk(run):
    # junk g1 removed: g0 g2 g3 g4 g5; goods at 2 and 4. AP = (1/2 + 2/4) / 2 = 0.5; INP = 2 / 4
    check(run(DIST, QUERY, GALLERY, "standard"), 0.0, 1.0, 0.5, 0.5, 1, 0)


@IMPLEMENTATIONS
def test_cc_treats_same_clothes_as_junk(run):
    # junk g1 g2 removed: g0 g3 g4 g5; the good g4 at 3. AP = 1/3; INP = 1/3
    check(run(DIST, QUERY, GALLERY, "cc"), 0.0, 1.0, 1 / 3, 1 / 3, 1, 0)


@IMPLEMENTATIONS
def test_sc_treats_other_clothes_as_junk(run):
    # junk g1 g4 removed: g0 g2 g3 g5; the good g2 at 2. AP = 1/2; INP = 1/2
    check(run(DIST, QUERY, GALLERY, "sc"), 0.0, 1.0, 0.5, 0.5, 1, 0)


@IMPLEMENTATIONS
def test_cmc_and_means_average_over_queries(run):
    # q0 as above (standard: first good at 2, AP 1/2, INP 1/2); q1 (pid 3, cam 0): g3 is its only good and
    # the nearest: rank 1, AP 1, INP 1. CMC(1) = 1/2, CMC(2) = 1
    query = labels([1, 3], [0, 0], [0, 0])
    dist = np.vstack([DIST, [[0.6, 0.5, 0.4, 0.05, 0.2, 0.1]]])
    scores = run(dist, query, GALLERY, "standard")
    check(scores, 0.5, 1.0, 0.75, 0.75, 2, 0)
    assert scores.cmc[:3].tolist() == [0.5, 1.0, 1.0] and len(scores.cmc) == 50


@IMPLEMENTATIONS
def test_ties_keep_gallery_order(run):
    # all distances equal: the stable order is the gallery order. Query pid 1 cam 0.
    # gallery: other, good, other, good -> goods at 2 and 4: AP = (1/2 + 2/4) / 2 = 0.5, INP = 2/4
    gallery = labels([7, 1, 8, 1], [1, 1, 1, 2], [0, 0, 0, 0])
    check(run(np.full((1, 4), 0.5), QUERY, gallery), 0.0, 1.0, 0.5, 0.5, 1, 0)
    # the same with the good first by index: rank 1; goods at 1 and 3: AP = (1 + 2/3) / 2, INP = 2/3
    gallery = labels([1, 7, 1, 8], [1, 1, 2, 1], [0, 0, 0, 0])
    check(run(np.full((1, 4), 0.5), QUERY, gallery), 1.0, 1.0, 5 / 6, 2 / 3, 1, 0)


@IMPLEMENTATIONS
def test_a_tie_between_good_and_other_breaks_by_index_only(run):
    # g0 other at 0.2, g1 good at 0.2, g2 other at 0.1: order g2 g0 g1 -> the good at 3
    gallery = labels([5, 1, 6], [1, 1, 1], [0, 0, 0])
    check(run(np.array([[0.2, 0.2, 0.1]]), QUERY, gallery), 0.0, 1.0, 1 / 3, 1 / 3, 1, 0)


@IMPLEMENTATIONS
def test_queries_without_a_good_match_are_skipped(run):
    # gallery in distance order: g0 pid 1 cam 1, g1 pid 2, g2 pid 1 cam 2. q1 (pid 9) has no match: skipped.
    query = labels([1, 9, 1], [0, 0, 1], [0, 0, 0])
    gallery = labels([1, 2, 1], [1, 0, 2], [0, 0, 0])
    dist = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    # q0 (cam 0): goods g0, g2 at 1 and 3: AP (1 + 2/3)/2, INP 2/3. q2 (cam 1): g0 junk; g1 g2: good at 2
    scores = run(dist, query, gallery)
    check(scores, 0.5, 1.0, ((1 + 2 / 3) / 2 + 1 / 2) / 2, (2 / 3 + 1 / 2) / 2, 2, 1)


@IMPLEMENTATIONS
def test_junk_only_gallery_skips_every_query_without_crashing(run):
    query = labels([1, 1], [0, 0], [0, 0])
    gallery = labels([1, 1, 1], [0, 0, 0], [0, 1, 2])
    for mode in MODES:
        scores = run(np.zeros((2, 3)), query, gallery, mode)
        check(scores, 0.0, 0.0, 0.0, 0.0, 0, 2)
        assert not scores.cmc.any()


@IMPLEMENTATIONS
def test_one_gallery_item(run):
    scores = run(np.array([[3.0]]), QUERY, labels([1], [4], [0]))
    check(scores, 1.0, 1.0, 1.0, 1.0, 1, 0)
    assert scores.rank20 == 1.0 and scores.cmc.tolist() == [1.0] * 50


def test_empty_gallery_skips_every_query():
    scores = fast(np.zeros((1, 0)), QUERY, labels([], [], []))
    check(scores, 0.0, 0.0, 0.0, 0.0, 0, 1)


def test_evaluate_ranks_by_cosine_of_normalised_features():
    # q along x; gallery: (0, 1) cos 0, (2, 0) cos 1 once normalised, (1, 1) cos 0.71 -> order g1 g2 g0
    query = labels([1], [0], [0])
    gallery = labels([1, 2, 3], [1, 1, 1], [0, 0, 0])
    feats = np.array([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    check(evaluate(np.array([[1.0, 0.0]]), feats, query, gallery), 0.0, 1.0, 1 / 3, 1 / 3, 1, 0)
    # raw dot products 0, 2, 1 give the same order
    check(evaluate(np.array([[1.0, 0.0]]), feats, query, gallery, normalize=False), 0.0, 1.0, 1 / 3, 1 / 3, 1, 0)


def test_as_dict_and_errors():
    scores = fast(DIST, QUERY, GALLERY)
    assert list(scores.as_dict()) == ["rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "queries", "skipped"]
    with pytest.raises(ValueError, match="mode"):
        fast(DIST, QUERY, GALLERY, "clothes")
    with pytest.raises(ValueError):
        Labels(np.zeros(2), np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError):
        fast(np.zeros((1, 5)), QUERY, GALLERY)
    with pytest.raises(ValueError, match="finite"):
        fast(np.array([[0.1, np.nan, 0.3, 0.4, 0.5, 0.6]]), QUERY, GALLERY)


def test_distances_can_come_as_row_blocks():
    rng = np.random.default_rng(0)
    dist = rng.random((7, 30)).astype(np.float32)
    query = Labels(rng.integers(0, 3, 7), rng.integers(0, 2, 7), rng.integers(0, 2, 7))
    gallery = Labels(rng.integers(0, 3, 30), rng.integers(0, 2, 30), rng.integers(0, 2, 30))
    want = evaluate_reference(dist, query, gallery).as_dict()
    assert evaluate_distances([dist[:4], dist[4:]], query, gallery, chunk=3).as_dict() == pytest.approx(want)
    with pytest.raises(ValueError, match="cover"):
        evaluate_distances([dist[:4]], query, gallery)


def test_features_path_matches_reference_on_float_features():
    rng = np.random.default_rng(1)
    q, g = rng.standard_normal((20, 16)), rng.standard_normal((300, 16))
    query = Labels(rng.integers(0, 10, 20), rng.integers(0, 3, 20), rng.integers(0, 3, 20))
    gallery = Labels(rng.integers(0, 10, 300), rng.integers(0, 3, 300), rng.integers(0, 3, 300))
    for mode in MODES:
        want = evaluate_reference(cosine_distances(q, g), query, gallery, mode)
        got = evaluate(q, g, query, gallery, mode, chunk=7)
        assert got.as_dict() == pytest.approx(want.as_dict(), abs=1e-9)
        np.testing.assert_allclose(got.cmc, want.cmc)


def test_auto_chunk_bounds_the_working_set():
    rows = auto_chunk(82_161)
    assert 64 <= rows and rows * 82_161 * metrics._BYTES_PER_CELL <= 512 << 20
    assert auto_chunk(0) >= 1 and auto_chunk(10**9) == 1


# --- property: the fast path equals the reference loop, ties included ------------------------------------

# Small bucket counts put many items in a good's bucket (the exact comparison); tiny limits split the work.
ENGINES = st.sampled_from([(8192, 1 << 21, 1 << 22), (2, 1, 1), (3, 5, 4)])


@st.composite
def problems(draw):
    n_query, n_gallery, dim = draw(st.integers(1, 8)), draw(st.integers(1, 24)), draw(st.integers(1, 3))
    ints = st.integers(-2, 2)
    q = np.array(draw(st.lists(st.lists(ints, min_size=dim, max_size=dim), min_size=n_query, max_size=n_query)))
    g = np.array(draw(st.lists(st.lists(ints, min_size=dim, max_size=dim), min_size=n_gallery, max_size=n_gallery)))
    copies = draw(st.lists(st.integers(0, n_gallery - 1), max_size=6))  # duplicated rows: exact ties
    g = np.concatenate([g, g[copies]]).reshape(-1, dim)

    def side(n):
        return Labels(*(np.array(draw(st.lists(st.integers(0, hi), min_size=n, max_size=n))) for hi in (3, 2, 2)))

    return q.reshape(n_query, dim).astype(np.float32), g.astype(np.float32), side(n_query), side(len(g))


@settings(max_examples=200, deadline=None)
@given(problems(), ENGINES)
def test_fast_path_equals_reference_on_integer_features(problem, engine):
    q, g, query, gallery = problem
    # small integer features: float32 dot products are exact, so both paths see identical distances
    distmat = -(q.astype(np.float64) @ g.T.astype(np.float64))
    with mock.patch.multiple(metrics, _BINS=engine[0], _EXACT_ITEMS=engine[1], _EXACT_PAIRS=engine[2]):
        for mode in MODES:
            want = evaluate_reference(distmat, query, gallery, mode, max_rank=10)
            got = evaluate(q, g, query, gallery, mode, chunk=3, normalize=False, max_rank=10)
            assert got.as_dict() == pytest.approx(want.as_dict(), abs=1e-6)
            np.testing.assert_allclose(got.cmc, want.cmc, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(problems(), ENGINES, st.integers(0, 2**32 - 1))
def test_fast_path_equals_reference_on_float_distances(problem, engine, seed):
    _, g, query, gallery = problem
    rng = np.random.default_rng(seed)
    distmat = rng.standard_normal((len(query), len(gallery))).astype(np.float32)
    distmat[:, ::3] = distmat[:, :1]  # repeated values: ties between arbitrary items
    distmat[:, 1::4] = np.round(distmat[:, 1::4], 1)
    with mock.patch.multiple(metrics, _BINS=engine[0], _EXACT_ITEMS=engine[1], _EXACT_PAIRS=engine[2]):
        for mode in MODES:
            want = evaluate_reference(distmat, query, gallery, mode)
            for dist in (distmat, distmat.astype(np.float64)):
                got = evaluate_distances(dist, query, gallery, mode, chunk=3)
                assert got.as_dict() == pytest.approx(want.as_dict(), abs=1e-6)
