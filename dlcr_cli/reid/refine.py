"""Test-time prediction refinement (docs/method.md, "Refinement"): each query's ranking revised with the
rankings of K clothes-changed variants of the query.

With s_k = 1 + cos(q_k, g) for the original query (k = 0) and its variants (k = 1..K):
T_k = the top-`top` gallery entries by s_k once the query's junk is removed; d_k[p] = the
best s_k of person p in T_k; m_k = max s_k over T_k. Every person p of the original top
gets R(p) = d_0[p] + sum_{k=0..K} [p in T_k] d_k[p]^2 / m_k (the original counts twice, as
in the reference), and each original top entry j the score s'_j = max(R(pid_j), s_0(j));
every other entry keeps s_0. Top-1 is then argmax_p R(p), and CMC / mAP are those of s'.

`refine_similarities` does it for a chunk of queries at once in torch; `refine_reference`
is the formula written out per query, which the tests hold the fast one to.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from dlcr_cli.reid.metrics import Labels

if TYPE_CHECKING:
    import torch

TOP = 5
VARIANTS = 4
_CHUNK_BYTES = 256 << 20


def junk_mask(query: Labels, gallery: Labels, rows: slice, mode: str, device: Any = "cpu") -> torch.Tensor:
    """rows x G bool: the gallery entries each query's protocol removes (same pid, not good)."""
    import torch

    from dlcr_cli.reid.metrics import good_and_junk

    t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    same = [t(getattr(query, key)[rows])[:, None] == t(getattr(gallery, key))[None, :]
            for key in ("pids", "camids", "clothes")]
    return good_and_junk(mode, *same)[1]


def refine_similarities(s0: torch.Tensor, sk: torch.Tensor, variant_ok: torch.Tensor, junk: torch.Tensor,
                        gallery_pids: torch.Tensor, top: int = TOP) -> torch.Tensor:
    """Refined similarities s' (c x G) from s0 (c x G), the variants' sk (c x K x G), which
    variants exist (c x K bool: a query without any keeps s0), and the junk mask (c x G)."""
    import torch

    c, g = s0.shape
    if g == 0 or c == 0:
        return s0.clone()
    scores = torch.cat([s0[:, None], sk], 1).masked_fill(junk[:, None], float("-inf"))  # c x (K+1) x G
    t = min(top, g)
    values, index = scores.topk(t, dim=2)  # sorted, best first
    present = torch.isfinite(values) & torch.cat([variant_ok.new_ones(c, 1), variant_ok], 1)[:, :, None]
    pids = gallery_pids[index]  # c x (K+1) x t
    person = pids[:, 0]  # the persons of the original top entries: c x t
    same = (pids[:, :, None, :] == person[:, None, :, None]) & present[:, :, None, :]  # c x (K+1) x a x b
    best = torch.where(same, values[:, :, None, :], values.new_tensor(float("-inf"))).amax(3)  # d_k[p_a]
    found = same.any(3)  # [p_a in T_k]
    m = values[:, :, :1].clamp_min(1e-12)  # m_k, c x (K+1) x 1
    d = torch.where(found, best, values.new_zeros(()))  # 0 where p_a is not in T_k: no -inf to square
    r = d[:, 0] + (found * d**2 / m).sum(1)  # R(p_a), c x t
    refined = s0.clone()
    entry = index[:, 0]
    ok = present[:, 0] & variant_ok.any(1, keepdim=True)
    new = torch.maximum(r, s0.gather(1, entry))
    refined.scatter_(1, entry, torch.where(ok, new, s0.gather(1, entry)))
    return refined


def refine_reference(s0: np.ndarray, sk: list[np.ndarray], junk: np.ndarray, gallery_pids: np.ndarray,
                     top: int = TOP) -> np.ndarray:
    """The formula for one query, plainly: s0 (G), its variants' sk (each G), junk (G)."""
    keep = np.flatnonzero(~junk)
    all_s = [s0, *sk]
    tops = [keep[np.argsort(-s[keep], kind="stable")[:top]] for s in all_s]
    d = [{} for _ in all_s]
    for k, entries in enumerate(tops):
        for j in entries:
            p = int(gallery_pids[j])
            d[k][p] = max(d[k].get(p, float("-inf")), float(all_s[k][j]))
    m = [float(all_s[k][tops[k][0]]) if len(tops[k]) else 1.0 for k in range(len(all_s))]
    refined = s0.astype(np.float64).copy()
    for j in tops[0]:
        p = int(gallery_pids[j])
        r = d[0][p] + sum(d[k][p] ** 2 / m[k] for k in range(len(all_s)) if p in d[k])
        refined[j] = max(r, float(s0[j]))
    return refined


def refined_distance_chunks(qf: np.ndarray, vf: np.ndarray, variant_ok: np.ndarray, gf: np.ndarray,
                            query: Labels, gallery: Labels, mode: str, *, device: Any = "cpu",
                            top: int = TOP) -> Iterator[torch.Tensor]:
    """-s' for consecutive chunks of queries: qf (Q x D), vf (Q x K x D), variant_ok (Q x K)."""
    import torch

    q, v, g = (torch.as_tensor(a, device=device, dtype=torch.float32) for a in (qf, vf, gf))
    ok = torch.as_tensor(variant_ok, device=device, dtype=torch.bool)
    gpids = torch.as_tensor(gallery.pids, device=device)
    k = v.shape[1]
    chunk = max(1, _CHUNK_BYTES // (4 * max(1, len(g)) * (2 * k + 3)))
    for start in range(0, len(q), chunk):
        rows = slice(start, min(start + chunk, len(q)))
        s0 = 1 + q[rows] @ g.T
        sk = 1 + torch.einsum("ckd,gd->ckg", v[rows], g)
        junk = junk_mask(query, gallery, rows, mode, device)
        yield -refine_similarities(s0, sk, ok[rows], junk, gpids, top)


# --- a model's refined evaluation ------------------------------------------------------------------


def query_variant_features(model: Any, queries: list, variants: dict[str, list], k: int, *, size: tuple[int, int],
                           batch_size: int = 128, workers: int = 4, flip: bool = True, precision: str = "fp32",
                           clip: tuple[int, int] = (8, 4)) -> tuple[np.ndarray, np.ndarray]:
    """(Q x K x D features, Q x K bool) of each query's first K variants (in variant order).
    Queries that are frames of tracklets give tracklet rows (in `tracklet_groups` order, as
    the query features): a video model embeds variant k of a tracklet as a tracklet of the
    frames' variant k (inpaint gives every frame of a tracklet the same targets), present when
    every frame has it; an image model's frame variants are averaged per tracklet."""
    from dlcr_cli.reid.features import embed_images, embed_tracklets

    tracklets = any(q.tracklet is not None for q in queries)
    if tracklets and getattr(model, "video", False):
        from dlcr_cli.reid.data import tracklet_frames

        items, where = [], []
        groups = tracklet_frames(queries)
        for t, frames in enumerate(groups):
            options = [variants.get(f.path, [])[:k] for f in frames]
            for j in range(min(len(o) for o in options)):
                items.append([o[j] for o in options])
                where.append((t, j))
        feats = embed_tracklets(model, items, size=size, batch_size=batch_size, workers=workers, precision=precision,
                                clip=clip, what="query variants") if items else None
        return _placed(feats, where, len(groups), k, model)
    items, where = [], []
    for qi, sample in enumerate(queries):
        for j, variant in enumerate(variants.get(sample.path, [])[:k]):
            items.append(variant)
            where.append((qi, j))
    feats = embed_images(model, items, size=size, batch_size=batch_size, workers=workers, flip=flip,
                         precision=precision, what="query variants") if items else None
    vf, ok = _placed(feats, where, len(queries), k, model)
    return pool_variant_tracklets(vf, ok, queries) if tracklets else (vf, ok)


def _placed(feats: np.ndarray | None, where: list[tuple[int, int]], rows: int, k: int, model: Any
            ) -> tuple[np.ndarray, np.ndarray]:
    dim = feats.shape[1] if feats is not None else getattr(model, "dim", 1)
    out, ok = np.zeros((rows, k, dim), np.float32), np.zeros((rows, k), bool)
    for (row, j), f in zip(where, feats if feats is not None else []):
        out[row, j], ok[row, j] = f, True
    return out, ok


def evaluate_refined(features: Any, vf: np.ndarray, ok: np.ndarray, settings: list, *, device: Any = "cpu",
                     top: int = TOP) -> list:
    """SettingResult of every setting with the refined similarities (queries without variants
    keep their ranking)."""
    from dlcr_cli.reid.evaluate import SettingResult
    from dlcr_cli.reid.metrics import auto_chunk, evaluate_distances

    results = []
    for s in settings:
        qf, gf, ql, gl = features.of(s)
        chunks = refined_distance_chunks(qf, vf[s.query], ok[s.query], gf, ql, gl, s.mode, device=device, top=top)
        scores = evaluate_distances(chunks, ql, gl, s.mode, device=device, chunk=auto_chunk(len(gf)))
        results.append(SettingResult(s, scores))
    return results


def pool_variant_tracklets(vf: np.ndarray, ok: np.ndarray, queries: list) -> tuple[np.ndarray, np.ndarray]:
    """Frames -> tracklets, as the query features are pooled: variant k of a tracklet is the
    L2-normalised mean of variant k of its frames that have one."""
    from dlcr_cli.reid.data import tracklet_groups
    from dlcr_cli.reid.features import l2_normalized

    groups = tracklet_groups(queries)
    out = np.zeros((len(groups), vf.shape[1], vf.shape[2]), np.float32)
    has = np.zeros((len(groups), vf.shape[1]), bool)
    for t, frames in enumerate(groups):
        for k in range(vf.shape[1]):
            chosen = frames[ok[frames, k]]
            if len(chosen):
                mean = vf[chosen, k].mean(0)
                out[t, k], has[t, k] = l2_normalized(mean), True
    return out, has
