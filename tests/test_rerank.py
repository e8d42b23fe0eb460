"""k-reciprocal re-ranking: the bounded version against the classic dense one, and what it does to a ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlcr_cli.reid.metrics import Labels, evaluate_distances, evaluate_reference
from dlcr_cli.reid.rerank import rerank, rerank_reference


def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0))


def reference(q, g, *args, normalize=True):
    if normalize:
        q, g = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, g))
    return rerank_reference(euclidean(q, g), euclidean(q, q), euclidean(g, g), *args)


def bounded(q, g, *args, **kw) -> np.ndarray:
    return torch.cat(list(rerank(q, g, *args, **kw))).numpy()


@pytest.mark.parametrize(
    "n_query, n_gallery, dim, k1, k2, lam, chunk",
    [
        (3, 5, 4, 20, 6, 0.3, None),  # k1 + 1 and k2 larger than all 8 items
        (1, 1, 2, 3, 2, 0.5, None),
        (10, 30, 8, 5, 3, 0.3, 4),
        (20, 60, 16, 20, 6, 0.3, 7),  # k1 larger than a third of the items
        (7, 40, 3, 4, 1, 0.0, 1),  # no query expansion, pure Jaccard
        (15, 50, 5, 10, 20, 1.0, 3),  # pure original distance; k2 > k1
        (12, 25, 6, 2, 2, 0.3, 5),  # odd rounding of k1 / 2
    ],
)
def test_bounded_rerank_equals_the_dense_reference(n_query, n_gallery, dim, k1, k2, lam, chunk):
    rng = np.random.default_rng(n_query * 100 + n_gallery)
    q = rng.standard_normal((n_query, dim)).astype(np.float32)
    g = rng.standard_normal((n_gallery, dim)).astype(np.float32)
    np.testing.assert_allclose(bounded(q, g, k1, k2, lam, chunk=chunk), reference(q, g, k1, k2, lam), atol=1e-5)


def test_unnormalised_features_use_plain_euclidean_distance():
    rng = np.random.default_rng(3)
    q, g = rng.standard_normal((6, 4)) * 3, rng.standard_normal((20, 4)) * 3
    np.testing.assert_allclose(bounded(q, g, 5, 3, 0.3, normalize=False), reference(q, g, 5, 3, 0.3, normalize=False),
                               atol=1e-5)


def test_chunks_cover_the_queries_in_order():
    rng = np.random.default_rng(4)
    q, g = rng.standard_normal((11, 8)), rng.standard_normal((17, 8))
    chunks = list(rerank(q, g, 4, 2, chunk=4))
    assert [tuple(c.shape) for c in chunks] == [(4, 17), (4, 17), (3, 17)]
    assert all(c.dtype == torch.float32 for c in chunks)
    np.testing.assert_allclose(torch.cat(chunks).numpy(), bounded(q, g, 4, 2, chunk=100), atol=1e-6)


def test_reciprocal_neighbours_overtake_a_closer_distractor():
    # query at the origin; its true match t (0.65 away) shares neighbours a1, a2 with it; the distractor d
    # (0.5 away, closer) sits in its own tight cluster b1..b3, which does not have the query among its nearest.
    q = np.array([[0.0, 0.0]])
    g = np.array([[0.65, 0], [0.3, 0.2], [0.3, -0.2], [-0.5, 0], [-0.9, 0.05], [-0.9, -0.05], [-0.95, 0]])
    t, d = 0, 3
    before = euclidean(q, g)[0]
    assert before[d] < before[t]
    for k2 in (1, 6):
        after = bounded(q, g, 3, k2, 0.3, normalize=False)[0]
        assert after[t] < after[d]
        assert after[4:].min() > max(after[:3])  # the distractor's cluster stays behind the true identity


def test_reranked_distances_evaluate_like_the_reference():
    rng = np.random.default_rng(5)
    q, g = rng.standard_normal((9, 6)), rng.standard_normal((40, 6))
    query = Labels(rng.integers(0, 5, 9), rng.integers(0, 3, 9), rng.integers(0, 2, 9))
    gallery = Labels(rng.integers(0, 5, 40), rng.integers(0, 3, 40), rng.integers(0, 2, 40))
    want = evaluate_reference(reference(q, g, 6, 3, 0.3), query, gallery, "cc")
    got = evaluate_distances(rerank(q, g, 6, 3, 0.3, chunk=4), query, gallery, "cc", chunk=3)
    assert got.as_dict() == pytest.approx(want.as_dict())


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        rerank(np.ones((1, 2)), np.ones((2, 2)), k1=0)
    with pytest.raises(ValueError):
        rerank(np.ones((1, 2)), np.ones((2, 2)), lambda_value=1.5)
