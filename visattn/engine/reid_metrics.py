"""Re-id retrieval metrics (the standard Market-1501 protocol), feature distances and k-reciprocal re-ranking.

Per query q with gallery sorted by ascending distance (stable: ties keep gallery order), the gallery items of q's
pid AND camera are removed; in the remaining list, with r_i the 1-based rank of the i-th of the M true matches:

    AP   = (1 / M) sum_i i / r_i                CMC@k = 1[r_1 <= k]          INP = M / r_M

mAP, CMC and mINP are their means over the valid queries (M > 0); queries without a match are skipped, as in
torchreid's and fast-reid's evaluators, whose numbers these reproduce.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["evaluate_ranking", "distance_matrix", "k_reciprocal_rerank", "rerank_features"]

# elements of the (queries x gallery) working set per chunk: bounds the memory to a few hundred MB
CHUNK_ELEMENTS = 1 << 22


def _vector(values, name: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.int64)


def evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                     chunk_rows: int | None = None) -> dict[str, Any]:
    """mAP, CMC and mINP of a (Q, G) distance matrix under the standard protocol (module docstring).

    Args:
        distmat: (Q, G) distances, NumPy or torch (a CUDA tensor is evaluated on its GPU).
        q_pids, g_pids, q_camids, g_camids: 1-D integer ids of the Q queries and G gallery items.
        max_rank: length of the CMC curve; entries beyond the remaining gallery are 1.
        chunk_rows: queries per chunk (default: about 4M matrix elements per chunk).

    Returns:
        ``{"mAP": float, "cmc": np.ndarray (max_rank,), "mINP": float, "num_valid_queries": int}``, fractions.
    """
    dist = torch.as_tensor(distmat)
    if dist.dim() != 2:
        raise ValueError(f"distmat must be a (queries, gallery) matrix, got shape {tuple(dist.shape)}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    n_q, n_g = dist.shape
    device = dist.device
    q_pids, q_cams = _vector(q_pids, "q_pids", device), _vector(q_camids, "q_camids", device)
    g_pids, g_cams = _vector(g_pids, "g_pids", device), _vector(g_camids, "g_camids", device)
    if len(q_pids) != n_q or len(q_cams) != n_q or len(g_pids) != n_g or len(g_cams) != n_g:
        raise ValueError(f"distmat is {n_q} x {n_g} but there are {len(q_pids)} query pids, {len(q_cams)} query "
                         f"camids, {len(g_pids)} gallery pids and {len(g_cams)} gallery camids")
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // max(n_g, 1))
    ap_sum = inp_sum = 0.0
    valid = 0
    first_hits = torch.zeros(max_rank + 1, dtype=torch.int64, device=device)  # last bin: beyond max_rank
    for start in range(0, n_q, rows):
        d = dist[start:start + rows]
        order = torch.sort(d, dim=1, stable=True).indices
        same_pid = g_pids[order] == q_pids[start:start + rows, None]
        keep = ~(same_pid & (g_cams[order] == q_cams[start:start + rows, None]))
        match = same_pid & keep
        n_match = match.sum(1)
        ok = n_match > 0
        if not ok.any():
            continue
        keep, match, n_match = keep[ok], match[ok], n_match[ok]
        rank = keep.cumsum(1, dtype=torch.int32)  # 1-based rank in the remaining list
        hits = match.cumsum(1, dtype=torch.int32)
        precision = torch.where(match, hits.double() / rank.double(), 0.0)
        ap_sum += float((precision.sum(1) / n_match).sum())
        last = torch.where(match, rank, 0).amax(1)
        inp_sum += float((n_match.double() / last.double()).sum())
        first = torch.where(match, rank, torch.iinfo(torch.int32).max).amin(1).long()
        first_hits += torch.bincount((first - 1).clamp(max=max_rank), minlength=max_rank + 1)
        valid += int(ok.sum())
    if valid == 0:
        raise ValueError("no query has a matching gallery item from another camera; check the pids and camids "
                         "(a layout without camera ids needs distinct query and gallery camids)")
    cmc = (first_hits[:max_rank].cumsum(0).double() / valid).cpu().numpy()
    return {"mAP": ap_sum / valid, "cmc": cmc, "mINP": inp_sum / valid, "num_valid_queries": valid}


def distance_matrix(qf, gf, metric: str = "euclidean", chunk_rows: int | None = None) -> torch.Tensor:
    """(Q, G) float32 distances of features qf (Q, D) and gf (G, D): squared euclidean ||q||^2 + ||g||^2 - 2 q.g
    (clamped at 0), or cosine 1 - q.g / (||q|| ||g||)."""
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric={metric!r}; use euclidean or cosine")
    qf, gf = torch.as_tensor(qf).float(), torch.as_tensor(gf).float()
    if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"expected features (Q, D) and (G, D), got {tuple(qf.shape)} and {tuple(gf.shape)}")
    if metric == "cosine":
        qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // max(len(gf), 1))
    g_sq = gf.square().sum(1)
    out = []
    for start in range(0, len(qf), rows):
        q = qf[start:start + rows]
        if metric == "cosine":
            out.append(1 - q @ gf.T)
        else:
            out.append((q.square().sum(1, keepdim=True) + g_sq - 2 * q @ gf.T).clamp_min(0))
    return torch.cat(out) if out else qf.new_zeros(0, len(gf))


def _reciprocal_sets(rank: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k + 1) mask of the k-reciprocal neighbours: j in the first k + 1 of i's ranking and i in j's."""
    forward = rank[:, :k + 1]
    backward = rank[forward, :k + 1]  # (N, k + 1, k + 1)
    return (backward == torch.arange(len(rank), device=rank.device)[:, None, None]).any(-1)


def k_reciprocal_rerank(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3) -> torch.Tensor:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) of (Q, G) distances; returns (Q, G) float32.

    On the (Q+G) x (Q+G) distances d (squared, each row divided by its maximum): R(i, k1) = k-reciprocal neighbours,
    expanded by R(c, round(k1/2)) of each candidate c sharing more than 2/3 of it with R(i, k1); V_i = exp(-d_i) on
    that set, normalised; V_i averaged over i's k2 nearest (query expansion); Jaccard distance
    1 - sum min(V_i, V_j) / sum max(V_i, V_j); final = (1 - lambda) Jaccard + lambda d. Dense (Q+G)^2 matrices:
    meant for sets up to about 20,000 images.
    """
    qg, qq, gg = (torch.as_tensor(t).float() for t in (q_g_dist, q_q_dist, g_g_dist))
    n_q = qg.shape[0]
    dist = torch.cat([torch.cat([qq, qg], 1), torch.cat([qg.T, gg], 1)], 0).square()
    dist = dist / dist.amax(1, keepdim=True).clamp_min(1e-12)
    n = len(dist)
    half = int(np.around(k1 / 2.0))
    width, rows = max(k1, k2) + 1, max(1, CHUNK_ELEMENTS // n)
    rank = torch.cat([torch.sort(dist[i:i + rows], dim=1, stable=True).indices[:, :width] for i in range(0, n, rows)])
    recip = _reciprocal_sets(rank, k1)  # (N, k1 + 1)
    recip_half = _reciprocal_sets(rank, half)  # (N, half + 1)
    members = torch.zeros(n, n, dtype=torch.bool)
    rows = torch.arange(n)[:, None]
    members[rows.expand_as(recip)[recip], rank[:, :k1 + 1][recip]] = True
    expanded = members.clone()
    half_members = torch.zeros(n, n, dtype=torch.bool)
    half_members[rows.expand_as(recip_half)[recip_half], rank[:, :half + 1][recip_half]] = True
    half_size = half_members.sum(1)
    for i in range(n):
        candidates = rank[i, :k1 + 1][recip[i]]
        overlap = (half_members[candidates] & members[i]).sum(1)
        chosen = candidates[overlap > 2.0 / 3.0 * half_size[candidates]]
        if len(chosen):
            expanded[i] |= half_members[chosen].any(0)
    weights = torch.where(expanded, torch.exp(-dist), 0.0)
    v = weights / weights.sum(1, keepdim=True)
    if k2 != 1:  # query expansion, in chunks of rows: v[rank[:, :k2]] at once would be k2 times the matrix
        rows = max(1, CHUNK_ELEMENTS // (n * k2))
        v = torch.cat([v[rank[i:i + rows, :k2]].mean(1) for i in range(0, n, rows)])
    jaccard = torch.empty(n_q, n)
    for i in range(n_q):
        support = v[i].nonzero().squeeze(1)
        shared = torch.minimum(v[:, support], v[i, support]).sum(1)
        jaccard[i] = 1 - shared / (2 - shared)
    final = jaccard * (1 - lambda_value) + dist[:n_q] * lambda_value
    return final[:, n_q:]


def rerank_features(qf, gf, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                    metric: str = "euclidean") -> torch.Tensor:
    """:func:`k_reciprocal_rerank` of the distances of query features qf (Q, D) and gallery features gf (G, D)."""
    return k_reciprocal_rerank(distance_matrix(qf, gf, metric), distance_matrix(qf, qf, metric),
                               distance_matrix(gf, gf, metric), k1, k2, lambda_value)
