"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in bounded memory, and the classic dense version.

Distance, as in the reference `re_ranking(q_g_dist, q_q_dist, g_g_dist)`: the Euclidean distances it is given
are squared, and each row of the (Q+G) x (Q+G) matrix is divided by its maximum (the reference divides by
column maxima and transposes; the matrix is symmetric). `rerank` computes it from features: squared Euclidean
distance ||x - y||^2 = |x|^2 + |y|^2 - 2 x.y (clamped at 0), on L2-normalised features unless told otherwise,
i.e. 2 - 2 cos. So `rerank(q, g)` equals `rerank_reference(euclidean(q, g), euclidean(q, q), euclidean(g, g))`.

Bounded memory: the k-reciprocal sets need only each item's k1 + 1 nearest neighbours (a chunked top-k over
all Q + G items); V, the Gaussian-kernel weights over the expanded sets, is sparse (CSR); query expansion
averages sparse rows; the Jaccard distance of a query to the gallery sums min(V[q, f], V[g, f]) over the
columns f both use, through an inverted index of the gallery rows. Nothing holds (Q+G) x (Q+G) or Q x G:
distances come out as chunks of query rows.

Ties in the neighbour ranking are broken by index (a stable sort); the original's default quicksort leaves
them in an unspecified order, so exact ties are the one place the two may legitimately differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported inside functions: `dlcr --help` must not pay for it
    import torch

    from .metrics import Array, Device

_BLOCK_BYTES = 128 << 20  # working set of one block of rows in each pass
_PAIRS = 1 << 22  # (query entry, gallery posting) pairs expanded at a time for the Jaccard sums


def rerank_reference(q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray, k1: int = 20, k2: int = 6,
                     lambda_value: float = 0.3) -> np.ndarray:
    """The classic dense NumPy re-ranking, transcribed plainly (argsort made stable); Q x G distances."""
    original_dist = np.concatenate([np.concatenate([q_q_dist, q_g_dist], axis=1),
                                    np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)

    query_num = q_g_dist.shape[0]
    all_num = original_dist.shape[0]
    for i in range(all_num):
        # k-reciprocal neighbours
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            half = int(np.around(k1 / 2.0)) + 1
            candidate_forward_k_neigh_index = initial_rank[candidate, :half]
            candidate_backward_k_neigh_index = initial_rank[candidate_forward_k_neigh_index, :half]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2.0 / 3 * len(
                    candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float32)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(V[i, indNonZero[j]],
                                                                               V[indImages[j], indNonZero[j]])
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


# ----------------------------------------------------------------------------------------------------------
# Bounded version.


@dataclass
class _Csr:
    """A sparse row matrix: row r holds cols[ptr[r]:ptr[r + 1]] with vals alike."""

    ptr: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor

    @classmethod
    def from_blocks(cls, counts: list[torch.Tensor], cols: list[torch.Tensor], vals: list[torch.Tensor]) -> _Csr:
        import torch

        counts = torch.cat(counts)
        ptr = torch.zeros(len(counts) + 1, dtype=torch.int64, device=counts.device)
        torch.cumsum(counts, 0, out=ptr[1:])
        return cls(ptr, torch.cat(cols), torch.cat(vals))

    def gather_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Entries of the given rows, concatenated: (position in `rows`, col, val)."""
        import torch

        starts, lengths = self.ptr[rows], self.ptr[rows + 1] - self.ptr[rows]
        owner = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), lengths)
        first = torch.cumsum(lengths, 0) - lengths
        pos = starts[owner] + torch.arange(len(owner), device=rows.device) - first[owner]
        return owner, self.cols[pos], self.vals[pos]


def _blocks(n: int, per_row_bytes: int) -> Iterator[tuple[int, int]]:
    step = max(1, _BLOCK_BYTES // max(1, per_row_bytes))
    for start in range(0, n, step):
        yield start, min(n, start + step)


class _Space:
    """All Q + G items: features, squared norms, and each row's maximum squared distance (the normaliser)."""

    def __init__(self, feats: torch.Tensor, n_query: int):
        self.x, self.n_query = feats, n_query
        self.sq = (feats * feats).sum(1)
        self.row_max = None

    def sq_dist(self, rows: slice, cols: slice | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Squared Euclidean distances |x|^2 + |y|^2 - 2 x.y, clamped at 0."""
        import torch

        cols = cols or slice(None)
        d = torch.addmm(self.sq[cols][None, :], self.x[rows], self.x[cols].T, alpha=-2, out=out)
        return d.add_(self.sq[rows][:, None]).clamp_min_(0)

    def pair_dist(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Normalised distance of item rows[i] to item cols[i], as the reference's matrix holds it."""
        dots = (self.x[rows] * self.x[cols]).sum(1)
        return (self.sq[rows] + self.sq[cols] - 2 * dots).clamp_min_(0) / self.row_max[rows]


def _neighbours(space: _Space, k: int) -> torch.Tensor:
    """Each item's k nearest items (itself included), nearest first, ties by index; records the row maxima."""
    import torch

    n = len(space.x)
    col_bits = max(1, (n - 1).bit_length())
    cols = torch.arange(n, device=space.x.device)
    step = max(1, _BLOCK_BYTES // (12 * n))
    dist = torch.empty(min(step, n), n, device=space.x.device)  # reused: fresh big tensors cost page faults
    keys = torch.empty(min(step, n), n, dtype=torch.int64, device=space.x.device)
    ranks, maxima = [], []
    for a in range(0, n, step):
        b = min(n, a + step)
        d = space.sq_dist(slice(a, b), out=dist[: b - a])
        top = d.amax(1, keepdim=True).clamp_min_(torch.finfo(d.dtype).tiny)  # all-identical items: stay 0
        d.div_(top)
        # non-negative float32 bits sort like the values; index in the low bits: a stable, exact top-k
        key = keys[: b - a]
        key.copy_(d.view(torch.int32)).bitwise_left_shift_(col_bits).bitwise_or_(cols)
        ranks.append(torch.topk(key, k, dim=1, largest=False).values & ((1 << col_bits) - 1))
        maxima.append(top.squeeze(1))
    space.row_max = torch.cat(maxima)
    return torch.cat(ranks)


def _reciprocal(rank: torch.Tensor, k: int, rows: slice) -> torch.Tensor:
    """mask[i, a]: rank[i, a] has i among its own k nearest (i's k-reciprocal neighbours)."""
    import torch

    me = torch.arange(rows.start, rows.stop, device=rank.device)[:, None, None]
    return (rank[rank[rows, :k], :k] == me).any(-1)


def _expanded_sets(rank: torch.Tensor, k: int, half: int, half_recip: torch.Tensor, rows: slice) -> torch.Tensor:
    """Expanded k-reciprocal set of each row: (b x E) item indices, `n` (the item count) where unused."""
    import torch

    n = len(rank)
    base = rank[rows, :k]
    recip = _reciprocal(rank, k, rows)
    cand = rank[base, :half]  # b x k x half: each reciprocal neighbour's own half-size set
    cand_mask = half_recip[base] & recip[..., None]
    shared = ((cand[..., None] == base[:, None, None, :]) & recip[:, None, None, :]).any(-1) & cand_mask
    accept = recip & (shared.sum(-1).double() > 2.0 / 3 * cand_mask.sum(-1).double())
    members = torch.cat([base.masked_fill(~recip, n),
                         cand.masked_fill(~(cand_mask & accept[..., None]), n).flatten(1)], 1)
    members = torch.sort(members, 1).values
    repeat = torch.zeros_like(members, dtype=torch.bool)
    repeat[:, 1:] = members[:, 1:] == members[:, :-1]
    return members.masked_fill_(repeat, n)


def _weights(space: _Space, rank: torch.Tensor, k: int, half: int) -> _Csr:
    """V: row i = exp(-dist) over its expanded k-reciprocal set, normalised to sum 1."""
    import torch

    n = len(rank)
    half_recip = torch.cat([_reciprocal(rank, half, slice(a, b)) for a, b in _blocks(n, 8 * half * half)])
    counts, cols, vals = [], [], []
    for a, b in _blocks(n, 16 * k * k * half):
        members = _expanded_sets(rank, k, half, half_recip, slice(a, b))
        used = members < n
        row, slot = used.nonzero(as_tuple=True)
        col = members[row, slot]
        w = torch.exp(-space.pair_dist(row + a, col).double())
        total = torch.zeros(b - a, dtype=w.dtype, device=w.device).index_add_(0, row, w)
        counts.append(used.sum(1))
        cols.append(col)
        vals.append((w / total[row]).float())
    return _Csr.from_blocks(counts, cols, vals)


def _query_expansion(v: _Csr, rank: torch.Tensor, k2: int) -> _Csr:
    """Row i becomes the mean of the rows of its k2 nearest items."""
    import torch

    n, k2 = len(rank), min(k2, rank.shape[1])
    width = int((v.ptr[1:] - v.ptr[:-1]).max()) if n else 0
    counts, cols, vals = [], [], []
    for a, b in _blocks(n, 48 * k2 * max(1, width)):
        owner, col, val = v.gather_rows(rank[a:b, :k2].flatten())
        keys, inverse = torch.unique(owner // k2 * n + col, sorted=True, return_inverse=True)
        total = torch.zeros(len(keys), dtype=torch.float64, device=rank.device).index_add_(0, inverse, val.double())
        counts.append(torch.bincount(keys // n, minlength=b - a))
        cols.append(keys % n)
        vals.append((total / k2).float())
    return _Csr.from_blocks(counts, cols, vals)


def _inverted_gallery(v: _Csr, n_query: int) -> _Csr:
    """Column-wise index of the gallery rows of V: column f lists (gallery row, value)."""
    import torch

    n = len(v.ptr) - 1
    start = int(v.ptr[n_query])
    lengths = v.ptr[n_query + 1:] - v.ptr[n_query:-1]
    rows = torch.repeat_interleave(torch.arange(n - n_query, device=v.cols.device), lengths)
    cols, order = torch.sort(v.cols[start:], stable=True)
    counts = torch.bincount(cols, minlength=n)
    return _Csr.from_blocks([counts], [rows[order]], [v.vals[start:][order]])


def _jaccard_chunk(v: _Csr, inverted: _Csr, rows: torch.Tensor, n_gallery: int) -> torch.Tensor:
    """1 - sum(min) / (2 - sum(min)) between the given query rows and every gallery row: (b x G)."""
    import torch

    from .metrics import _splits

    owner, col, val = v.gather_rows(rows)
    total = torch.zeros(len(rows) * n_gallery, dtype=torch.float32, device=rows.device)
    postings = inverted.ptr[col + 1] - inverted.ptr[col]
    for a, b in _splits(postings, _PAIRS):  # bounded: (query entry, gallery row) pairs a few million at a time
        post_owner, post_row, post_val = inverted.gather_rows(col[a:b])
        total.index_add_(0, owner[a:b][post_owner] * n_gallery + post_row,
                         torch.minimum(val[a:b][post_owner], post_val))
    total = total.view(len(rows), n_gallery)
    return 1 - total / (2 - total)


def _final_chunks(space: _Space, v: _Csr, inverted: _Csr, lambda_value: float, chunk: int) -> Iterator[torch.Tensor]:
    """(1 - lambda) * Jaccard + lambda * original distance, `chunk` query rows at a time."""
    import torch

    n_query = space.n_query
    n_gallery = len(space.x) - n_query
    for a in range(0, n_query, chunk):
        b = min(n_query, a + chunk)
        rows = torch.arange(a, b, device=space.x.device)
        original = space.sq_dist(slice(a, b), slice(n_query, None)) / space.row_max[a:b, None]
        yield _jaccard_chunk(v, inverted, rows, n_gallery) * (1 - lambda_value) + original * lambda_value


def rerank(query_feats: Array, gallery_feats: Array, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,
           device: Device = "cpu", chunk: int | None = None, normalize: bool = True) -> Iterator[torch.Tensor]:
    """Re-ranked Q x G distances as consecutive chunks of `chunk` query rows (torch tensors on `device`).

    The neighbour sets and V are built when called; the chunks are computed as they are consumed, e.g. by
    `metrics.evaluate_distances(rerank(q, g), query, gallery)`.
    """
    import torch

    from .metrics import _features

    if k1 < 1 or k2 < 1 or not 0 <= lambda_value <= 1:
        raise ValueError("rerank needs k1 >= 1, k2 >= 1 and 0 <= lambda_value <= 1")
    q, g = _features(query_feats, device, normalize), _features(gallery_feats, device, normalize)
    if not len(q) or not len(g):
        return iter([torch.zeros(len(q), len(g), device=q.device)] if len(q) else [])
    space = _Space(torch.cat([q, g]), len(q))
    n = len(space.x)
    k, half = min(k1 + 1, n), min(int(np.around(k1 / 2.0)) + 1, n)
    rank = _neighbours(space, max(k, min(k2, n)))
    v = _weights(space, rank, k, half)
    if k2 != 1:
        v = _query_expansion(v, rank, k2)
    chunk = chunk or max(1, _BLOCK_BYTES // (8 * max(1, len(g))))
    return _final_chunks(space, v, _inverted_gallery(v, len(q)), lambda_value, chunk)
