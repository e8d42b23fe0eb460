"""Re-ID evaluation: CMC, mAP and mINP under the standard, clothes-changing and same-clothes protocols.

Two implementations of one protocol (docs/method.md, "Evaluation: the protocols"):

- `evaluate_reference`: the field's plain per-query NumPy loop (CAL / fast-reid `eval_func`) on a full
  distance matrix. Readable, O(Q x G) memory; it checks the fast path and is what `dlcr bench` compares to.
- `evaluate` / `evaluate_distances`: vectorised torch over chunks of queries, never holding Q x G.

The fast path does not sort rows (a full sort per query is what makes the reference slow). A good item's
rank only needs how many non-junk items precede it, and an item precedes another iff its (distance, gallery
index) is smaller: exactly the order of a stable argsort. Per chunk of queries, each row's distances are
bucketed into a uniform histogram (monotone in the distance, so bucket order is distance order); items in
lower buckets than a good item are counted from the histogram, and the few items sharing its bucket are
compared exactly. Every same-pid gallery item is good or junk in all three modes, so
non-junk items before a good = all items before it - same-pid items before it + goods before it,
the last two from a small per-query sort of the query's own pid's items.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported inside functions: `dlcr --help` must not pay for it
    import torch

    Array = np.ndarray | torch.Tensor
    Device = str | torch.device

MODES = ("standard", "cc", "sc")
RANKS = (1, 5, 10, 20)

_BINS = 8192  # histogram buckets per query row; items sharing a bucket with a good item are compared exactly
_EXACT_ITEMS = 1 << 21  # items sharing a bucket with a good, found at a time (bounds memory whatever the data)
_EXACT_PAIRS = 1 << 22  # (item, good of its bucket) pairs compared at a time
_CHUNK_BYTES = 384 << 20  # working set of one chunk of query rows
_BYTES_PER_CELL = 17  # per query x gallery cell: distance f32, bucket f32, bucket index i64, flag bool


@dataclass
class Labels:
    """Labels of one side (query or gallery): person id, camera id, clothes id per image."""

    pids: np.ndarray
    camids: np.ndarray
    clothes: np.ndarray

    def __post_init__(self) -> None:
        self.pids, self.camids, self.clothes = (np.asarray(a, dtype=np.int64).reshape(-1)
                                                for a in (self.pids, self.camids, self.clothes))
        if not len(self.pids) == len(self.camids) == len(self.clothes):
            raise ValueError("pids, camids and clothes must have the same length")

    def __len__(self) -> int:
        return len(self.pids)

    def take(self, index: np.ndarray) -> Labels:
        """The labels of the entries at `index`, in that order."""
        return Labels(self.pids[index], self.camids[index], self.clothes[index])


@dataclass
class Scores:
    """Metrics as fractions in [0, 1], over the `queries` evaluated; `skipped` queries had no good match."""

    rank1: float
    rank5: float
    rank10: float
    rank20: float
    mAP: float
    mINP: float
    queries: int
    skipped: int
    cmc: np.ndarray  # CMC(1 .. max_rank), for plots

    def as_dict(self) -> dict:
        return {"rank1": self.rank1, "rank5": self.rank5, "rank10": self.rank10, "rank20": self.rank20,
                "mAP": self.mAP, "mINP": self.mINP, "queries": self.queries, "skipped": self.skipped}


def _scores(first: np.ndarray, ap: np.ndarray, inp: np.ndarray, skipped: int, max_rank: int) -> Scores:
    """Scores from the per-query first-good rank (1-based), AP and INP of the evaluated queries."""
    n = len(first)
    if n == 0:
        return Scores(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, skipped, np.zeros(max_rank))
    cmc = np.array([(first <= r).mean() for r in range(1, max_rank + 1)])
    r1, r5, r10, r20 = (float((first <= r).mean()) for r in RANKS)
    return Scores(r1, r5, r10, r20, float(ap.mean()), float(inp.mean()), n, skipped, cmc)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")


# ----------------------------------------------------------------------------------------------------------
# Reference: the per-query loop as the field writes it.


def good_and_junk(mode: str, same_pid: np.ndarray, same_cam: np.ndarray, same_clothes: np.ndarray):
    """good and junk (removed) gallery masks, the protocol's rules written out as in CAL."""
    good = same_pid & ~same_cam
    junk = same_pid & same_cam
    if mode == "cc":
        good = good & ~same_clothes
        junk = junk | (same_pid & same_clothes)
    elif mode == "sc":
        good = good & same_clothes
        junk = junk | (same_pid & ~same_clothes)
    return good, junk


def evaluate_reference(distmat: np.ndarray, query: Labels, gallery: Labels, mode: str = "standard",
                       max_rank: int = 50) -> Scores:
    """Metrics from a full Q x G distance matrix with the plain per-query loop (ties: stable, by gallery index)."""
    _check_mode(mode)
    distmat = np.asarray(distmat)
    if distmat.shape != (len(query), len(gallery)):
        raise ValueError(f"distmat is {distmat.shape}, labels say {(len(query), len(gallery))}")
    order = np.argsort(distmat, axis=1, kind="stable")
    first, aps, inps, skipped = [], [], [], 0
    for i in range(len(query)):
        ranked = order[i]
        same_pid = gallery.pids[ranked] == query.pids[i]
        same_cam = gallery.camids[ranked] == query.camids[i]
        same_clothes = gallery.clothes[ranked] == query.clothes[i]
        good, junk = good_and_junk(mode, same_pid, same_cam, same_clothes)
        hits = good[~junk]  # junk removed before positions are counted
        if not hits.any():
            skipped += 1
            continue
        positions = np.flatnonzero(hits) + 1  # 1-based ranks of the good entries
        first.append(positions[0])
        aps.append(np.mean(np.arange(1, len(positions) + 1) / positions))
        inps.append(len(positions) / positions[-1])
    return _scores(np.array(first, dtype=np.int64), np.array(aps), np.array(inps), skipped, max_rank)


# ----------------------------------------------------------------------------------------------------------
# Fast path: chunked, vectorised torch.


def auto_chunk(n_gallery: int) -> int:
    """Query rows per chunk so that one chunk's working set stays near _CHUNK_BYTES."""
    per_row = _BYTES_PER_CELL * (max(1, n_gallery) + _BINS)  # the histograms count like cells
    return int(max(1, min(4096, _CHUNK_BYTES // per_row)))


def _good(mode: str, same_pid: torch.Tensor, same_cam: torch.Tensor, same_clothes: torch.Tensor) -> torch.Tensor:
    """good mask; in every mode junk is then exactly `same_pid & ~good`, which the fast path relies on."""
    good = same_pid & ~same_cam
    if mode == "cc":
        return good & ~same_clothes
    if mode == "sc":
        return good & same_clothes
    return good


class _Gallery:
    """Gallery labels on the device, grouped by pid so that a query finds its pid's items without a G-wide scan."""

    def __init__(self, gallery: Labels, device: Device):
        import torch

        t = {k: torch.as_tensor(getattr(gallery, k), device=device) for k in ("pids", "camids", "clothes")}
        self.size = len(gallery)
        self.camids, self.clothes = t["camids"], t["clothes"]
        self.order = torch.argsort(t["pids"], stable=True)
        self.pids, counts = torch.unique_consecutive(t["pids"][self.order], return_counts=True)
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts

    def members(self, qpids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gallery indices of each query's pid, padded: (c x P) indices and a (c x P) validity mask."""
        import torch

        pos = torch.searchsorted(self.pids, qpids).clamp(max=len(self.pids) - 1)
        counts = torch.where(self.pids[pos] == qpids, self.counts[pos], 0)
        width = int(counts.max()) if len(counts) else 0
        cols = torch.arange(width, device=qpids.device)
        valid = cols < counts[:, None]
        idx = (self.starts[pos][:, None] + cols).clamp(max=self.size - 1)
        return self.order[idx], valid


class _Workspace:
    """Per-chunk buffers, allocated once: fresh multi-MB tensors per chunk cost page faults, not arithmetic."""

    def __init__(self, rows: int, cols: int, device: Device):
        import torch

        self.bucket = torch.empty(rows, cols, dtype=torch.float32, device=device)
        self.index = torch.empty(rows, cols, dtype=torch.int64, device=device)
        self.flag = torch.empty(rows, cols, dtype=torch.bool, device=device)
        self.ones = torch.ones((), dtype=torch.float64, device=device).expand(rows, cols)
        # float64 counts: exact, and cumsum is several times faster than on int64 on CPU
        self.hist = torch.empty(rows, _BINS, dtype=torch.float64, device=device)
        self.shared = torch.empty(rows, _BINS, dtype=torch.bool, device=device)
        self.group = torch.empty(rows, _BINS, dtype=torch.int64, device=device)


def _buckets(dist: torch.Tensor, ws: _Workspace) -> torch.Tensor:
    """Per-row uniform bucket of every distance: (d - min) * (B - 1) / (max - min), truncated.

    Monotone in d (rounding included), so a lower bucket means a strictly smaller distance; and within
    [0, B - 1] because d - min <= max - min holds after rounding too.
    """
    import torch

    lo, hi = dist.amin(1, keepdim=True), dist.amax(1, keepdim=True)
    span = (hi - lo).float()
    if not torch.isfinite(span).all():
        raise ValueError("distances must be finite")
    scale = torch.where(span > 0, (_BINS - 1) / span, torch.zeros_like(span))
    scale = torch.where(torch.isfinite(scale), scale, torch.zeros_like(scale))  # span denormal: one bucket
    bucket, index = ws.bucket[: len(dist)], ws.index[: len(dist)]
    torch.sub(dist, lo, out=bucket).mul_(scale)
    return index.copy_(bucket)


def _row_blocks(counts: list[int], limit: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges whose counts sum to at most `limit` (a single row may exceed it)."""
    start, total = 0, 0
    for row, n in enumerate(counts):
        if row > start and total + n > limit:
            yield start, row
            start, total = row, 0
        total += n
    if start < len(counts):
        yield start, len(counts)


def _splits(sizes: torch.Tensor, limit: int) -> list[tuple[int, int]]:
    """Consecutive ranges of `sizes` (a 1-D tensor) summing to about `limit` each; always progresses."""
    import torch

    ends = torch.cumsum(sizes, 0)
    total = int(ends[-1]) if len(ends) else 0
    if total <= limit:
        return [(0, len(sizes))] if len(sizes) else []
    cuts = torch.searchsorted(ends, torch.arange(limit, total, limit, device=sizes.device), right=True)
    bounds = sorted({0, len(sizes), *cuts.tolist()})
    return [(a, max(b, a + 1)) for a, b in zip(bounds, bounds[1:]) if a < len(sizes)]


class _Goods:
    """The good items of a chunk, sorted by (row, bucket) so that the goods sharing a bucket are contiguous."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, value: torch.Tensor, bucket: torch.Tensor,
                 ws: _Workspace):
        import torch

        keys = rows * _BINS + bucket
        self.order = torch.argsort(keys, stable=True)
        self.value, self.col = value[self.order], cols[self.order]
        keys, self.size = torch.unique_consecutive(keys[self.order], return_counts=True)
        self.start = torch.cumsum(self.size, 0) - self.size
        # group id per shared bucket; other cells keep stale values, never read
        self.table = ws.group.view(-1)
        self.table[keys] = torch.arange(len(keys), device=keys.device)


def _count_shared(col: torch.Tensor, value: torch.Tensor, gid: torch.Tensor, goods: _Goods,
                  counts: torch.Tensor) -> None:
    """Add to counts[g] the items in good g's bucket that rank before it: smaller (value, col)."""
    import torch

    sizes = goods.size.index_select(0, gid)
    for a, b in _splits(sizes, _EXACT_PAIRS):
        n = sizes[a:b]
        local = torch.repeat_interleave(torch.arange(b - a, device=n.device), n)  # index_select: fast 1-D gathers
        item = local + a
        offset = torch.arange(len(local), device=n.device) - (torch.cumsum(n, 0) - n).index_select(0, local)
        member = goods.start.index_select(0, gid.index_select(0, item)) + offset
        mine, theirs = value.index_select(0, item), goods.value.index_select(0, member)
        before = (mine < theirs) | ((mine == theirs) & (col.index_select(0, item) < goods.col.index_select(0, member)))
        counts += torch.bincount(member.masked_select(before), minlength=len(counts))


def _positions(value: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position of each masked entry among its row's masked entries ranked by (value, column): (c x P)."""
    import torch

    value = value.masked_fill(~mask, float("inf"))
    order = torch.sort(value, dim=1, stable=True).indices  # stable: ties stay in column (gallery index) order
    ar = torch.arange(value.shape[1], device=value.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, ar), order


def _good_ranks(dist: torch.Tensor, gidx: torch.Tensor, valid: torch.Tensor, good: torch.Tensor,
                ws: _Workspace) -> torch.Tensor:
    """Ranks (1-based, junk removed) of each query's good items, ascending, padded with inf: (c x P).

    rank = items before it - same-pid items before it + goods before it + 1: every same-pid item is good or
    junk, so the non-junk items before a good are the other-pid ones and the goods.
    """
    import torch

    rows, cols = dist.shape
    index = _buckets(dist, ws)
    hist = ws.hist[:rows].zero_().scatter_add_(1, index, ws.ones[:rows])
    gr, gp = good.nonzero(as_tuple=True)
    gj = gidx[gr, gp]
    gv, gb = dist[gr, gj], index[gr, gj]
    shared = ws.shared[:rows].zero_()
    shared[gr, gb] = True
    per_row = (hist * shared).sum(1).long().tolist()  # items sharing a bucket with a good, per row
    before = (torch.cumsum(hist, 1)[gr, gb] - hist[gr, gb]).long()  # items in lower buckets

    goods = _Goods(gr, gj, gv, gb, ws)
    counts = torch.zeros(len(gr), dtype=torch.int64, device=dist.device)
    flag = torch.gather(shared, 1, index, out=ws.flag[:rows])
    for r0, r1 in _row_blocks(per_row, _EXACT_ITEMS):
        flat = flag[r0:r1].view(-1).nonzero().squeeze(1) + r0 * cols  # flat 1-D indexing: far faster on CPU
        bucket = index.view(-1).index_select(0, flat)
        gid = goods.table.index_select(0, flat // cols * _BINS + bucket)
        _count_shared(flat % cols, dist.view(-1).index_select(0, flat), gid, goods, counts)
    before[goods.order] += counts

    value = dist.gather(1, gidx)
    same, _ = _positions(value, valid)
    _, order = _positions(value, good)
    other = torch.zeros(good.shape, dtype=torch.int64, device=dist.device)
    other[gr, gp] = before - same[gr, gp]
    ranks = (other.gather(1, order) + torch.arange(1, good.shape[1] + 1, device=dist.device)).double()
    return ranks.masked_fill_(~good.gather(1, order), float("inf"))


def _chunk_metrics(dist: torch.Tensor, qlab: dict, gal: _Gallery, mode: str, ws: _Workspace) -> tuple | None:
    """First-good rank, AP and INP of the chunk's queries that have a good match, and how many they are."""
    import torch

    gidx, valid = gal.members(qlab["pids"])
    good = _good(mode, valid, gal.camids[gidx] == qlab["camids"][:, None],
                 gal.clothes[gidx] == qlab["clothes"][:, None])
    n_good = good.sum(1)
    has = n_good > 0
    if not bool(has.any()):
        return None
    ranks = _good_ranks(dist.contiguous(), gidx, valid, good, ws)[has]
    n_good = n_good[has]
    hit = torch.arange(1, ranks.shape[1] + 1, device=dist.device, dtype=torch.float64)
    ap = (hit / ranks).sum(1) / n_good
    inp = n_good / ranks.gather(1, (n_good - 1)[:, None]).squeeze(1)
    return ranks[:, 0].long(), ap, inp, int(has.sum())


def _as_tensor(x: Array, device: Device) -> torch.Tensor:
    import torch

    return x.to(device) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), device=device)


def _row_blocks_of(distances: Array | Iterable[Array], chunk: int) -> Iterator[Array]:
    """Row blocks of at most `chunk` rows, from a full matrix or from an iterable of row blocks."""
    blocks = [distances] if hasattr(distances, "shape") and len(distances.shape) == 2 else distances
    for block in blocks:
        for start in range(0, block.shape[0], chunk):
            yield block[start:start + chunk]


def evaluate_distances(distances: Array | Iterable[Array], query: Labels, gallery: Labels, mode: str = "standard",
                       *, device: Device = "cpu", chunk: int | None = None, max_rank: int = 50) -> Scores:
    """Metrics from distances: a Q x G matrix, or an iterable of consecutive row blocks (bounded memory)."""
    import torch

    _check_mode(mode)
    chunk = chunk or auto_chunk(len(gallery))
    if len(gallery) == 0:
        return _scores(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), len(query), max_rank)
    gal = _Gallery(gallery, device)
    qlab = {k: torch.as_tensor(getattr(query, k), device=device) for k in ("pids", "camids", "clothes")}
    ws = _Workspace(chunk, len(gallery), device)
    first, ap, inp, start, evaluated = [], [], [], 0, 0
    for block in _row_blocks_of(distances, chunk):
        block = _as_tensor(block, device)
        if block.ndim != 2 or block.shape[1] != len(gallery) or start + len(block) > len(query):
            raise ValueError(f"distance block {tuple(block.shape)} at row {start} does not fit "
                             f"{len(query)} queries x {len(gallery)} gallery")
        out = _chunk_metrics(block, {k: v[start:start + len(block)] for k, v in qlab.items()}, gal, mode, ws)
        if out is not None:
            first.append(out[0].cpu())
            ap.append(out[1].cpu())
            inp.append(out[2].cpu())
            evaluated += out[3]
        start += len(block)
    if start != len(query):
        raise ValueError(f"distances cover {start} query rows, labels have {len(query)}")
    cat = (lambda parts, dtype: torch.cat(parts).numpy() if parts else np.zeros(0, dtype))
    return _scores(cat(first, np.int64), cat(ap, np.float64), cat(inp, np.float64), len(query) - evaluated,
                   max_rank)


def _features(x: Array, device: Device, normalize: bool) -> torch.Tensor:
    import torch

    x = _as_tensor(x, device).float()
    return torch.nn.functional.normalize(x, dim=1) if normalize else x


def cosine_distance_chunks(query_feats: Array, gallery_feats: Array, *, device: Device = "cpu",
                           chunk: int | None = None, normalize: bool = True) -> Iterator[torch.Tensor]:
    """Negative-cosine distances, `chunk` query rows at a time, in one reused buffer (consume each in turn)."""
    import torch

    q = -_features(query_feats, device, normalize)  # (-q) . g == -(q . g) exactly: no extra pass
    g = _features(gallery_feats, device, normalize)
    chunk = chunk or auto_chunk(len(g))
    buf = torch.empty(min(chunk, len(q)), len(g), device=device)
    for start in range(0, len(q), chunk):
        rows = q[start:start + chunk]
        yield torch.mm(rows, g.T, out=buf[: len(rows)])


def cosine_distances(query_feats: Array, gallery_feats: Array, *, device: Device = "cpu",
                     normalize: bool = True) -> np.ndarray:
    """The full Q x G negative-cosine matrix (for the reference and small sets), as the fast path computes it."""
    return np.concatenate([c.cpu().numpy().copy() for c in cosine_distance_chunks(
        query_feats, gallery_feats, device=device, normalize=normalize)] or [np.zeros((0, len(gallery_feats)))])


def evaluate(query_feats: Array, gallery_feats: Array, query: Labels, gallery: Labels, mode: str = "standard", *,
             device: Device = "cpu", chunk: int | None = None, max_rank: int = 50, normalize: bool = True) -> Scores:
    """Metrics from features: L2-normalised, distance = negative cosine, chunked so memory stays bounded."""
    chunk = chunk or auto_chunk(len(gallery))
    if len(query_feats) != len(query) or len(gallery_feats) != len(gallery):
        raise ValueError("features and labels differ in length")
    dists = cosine_distance_chunks(query_feats, gallery_feats, device=device, chunk=chunk, normalize=normalize)
    return evaluate_distances(dists, query, gallery, mode, device=device, chunk=chunk, max_rank=max_rank)
