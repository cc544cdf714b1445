"""Re-id retrieval metrics (the standard Market-1501 protocol), feature distances and k-reciprocal re-ranking.

Per query q, the gallery is sorted by ascending distance and the items with q's pid AND q's camera are removed. In
the remaining list, with M true matches (same pid) at 1-based ranks r_1 < ... < r_M:

    AP   = (1 / M) sum_i i / r_i            CMC@k = 1[r_1 <= k]            INP = M / r_M

mAP, CMC and mINP are their means over the valid queries (M > 0); queries without a match are skipped. These are
the numbers of torchreid's ``evaluate_py`` and fast-reid's ``evaluate_rank``, with two documented choices:

* the sort is stable, so equal distances keep gallery order (those use NumPy's default, non-stable argsort, which
  can order exact ties differently);
* the CMC curve always has ``max_rank`` entries: beyond the end of a query's remaining list it is 1 (a valid query
  has a match), where torchreid would shorten the curve to the gallery size.

TPR@FPR (fast-reid's verification numbers, :func:`tpr_at_fpr`) looks at pairs instead of rankings: every
query-gallery pair except those of the query's pid AND camera, positive when the pids are equal. A threshold t on the
distance accepts the pairs with d <= t: TPR(t) = accepted positives / positives, FPR(t) = accepted negatives /
negatives. Over the ROC points of every threshold, TPR@FPR=f is the TPR of the point whose FPR is nearest f (the
smaller FPR on a tie), and at that FPR the highest TPR, i.e. t just below the next negative distance. fast-reid
(``evaluation/roc.py``) builds the same pairs and picks the point the same way, but scores them with the labels
swapped (same-identity pairs labelled 0, issue JDAI-CV/fast-reid#168), so its number is the rate of rejected
different-identity pairs where 1 - f of the same-identity ones are rejected; visattn reports the rate it names.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch

__all__ = ["FPR_TARGETS", "distance_matrix", "evaluate_ranking", "k_reciprocal_rerank", "rerank_features",
           "tpr_at_fpr"]

FPR_TARGETS = (1e-4, 1e-3, 1e-2)  # fast-reid's

# elements of a (rows x gallery) working set per chunk: with the few int64/bool/float64 temporaries of a chunk this
# bounds the working memory to a few hundred MB
CHUNK_ELEMENTS = 1 << 22


def _chunk_rows(chunk_rows: int | None, width: int) -> int:
    if chunk_rows is None:
        return max(1, CHUNK_ELEMENTS // max(width, 1))
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer or None, got {chunk_rows!r}")
    return int(chunk_rows)


def _ids(values, name: str, device: torch.device) -> torch.Tensor:
    t = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integer ids, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.int64)


def evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                     chunk_rows: int | None = None) -> dict[str, Any]:
    """mAP, CMC and mINP of a (Q, G) distance matrix under the standard protocol (see the module docstring).

    Vectorised in torch, in chunks of queries; a CUDA ``distmat`` is evaluated on its GPU, anything else on the CPU.

    Args:
        distmat: (Q, G) distances (smaller is more similar), NumPy array or torch tensor.
        q_pids, g_pids, q_camids, g_camids: 1-D integer ids of the Q queries and the G gallery items.
        max_rank: length of the CMC curve (>= 1); entries past a query's remaining list count as 1.
        chunk_rows: queries per chunk (default: about 4M matrix elements per chunk). Results do not depend on it.

    Returns:
        ``{"mAP": float, "cmc": np.ndarray float64 (max_rank,), "mINP": float, "num_valid_queries": int}``, all
        metrics as fractions in [0, 1]; ``cmc[k]`` is the rank-(k+1) accuracy.

    Raises:
        ValueError: bad shapes or lengths, ``max_rank`` < 1, or no query with a match (one-line message).
    """
    dist = distmat if isinstance(distmat, torch.Tensor) else torch.as_tensor(np.asarray(distmat))
    if dist.dim() != 2:
        raise ValueError(f"distmat must be a (queries, gallery) matrix, got shape {tuple(dist.shape)}")
    try:
        max_rank = operator.index(max_rank)
    except TypeError:
        raise ValueError(f"max_rank must be an integer, got {max_rank!r}") from None
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    n_q, n_g = dist.shape
    device = dist.device if dist.is_cuda else torch.device("cpu")
    dist = dist.detach().to(device)
    q_pids, q_cams = _ids(q_pids, "q_pids", device), _ids(q_camids, "q_camids", device)
    g_pids, g_cams = _ids(g_pids, "g_pids", device), _ids(g_camids, "g_camids", device)
    if len(q_pids) != n_q or len(q_cams) != n_q or len(g_pids) != n_g or len(g_cams) != n_g:
        raise ValueError(f"distmat is {n_q} x {n_g} but there are {len(q_pids)} query pids, {len(q_cams)} query "
                         f"camids, {len(g_pids)} gallery pids and {len(g_cams)} gallery camids")
    rows = _chunk_rows(chunk_rows, n_g)
    aps, inps, firsts = [], [], []  # per valid query, summed once at the end: chunking cannot change the result
    for start in range(0, n_q, rows):
        stop = min(start + rows, n_q)
        order = torch.sort(dist[start:stop], dim=1, stable=True).indices
        same_pid = g_pids[order] == q_pids[start:stop, None]
        keep = ~(same_pid & (g_cams[order] == q_cams[start:stop, None]))
        match = same_pid & keep
        n_match = match.sum(1)
        ok = n_match > 0
        if not bool(ok.any()):
            continue
        keep, match, n_match = keep[ok], match[ok], n_match[ok]
        rank = keep.cumsum(1, dtype=torch.int32)  # 1-based rank in the remaining list (read at kept items only)
        hits = match.cumsum(1, dtype=torch.int32)  # matches up to and including this position
        precision = torch.where(match, hits.double() / rank.double(), 0.0)
        aps.append(precision.sum(1) / n_match)
        last = torch.where(match, rank, 0).amax(1)
        inps.append(n_match.double() / last.double())
        firsts.append(torch.where(match, rank, torch.iinfo(torch.int32).max).amin(1).long())
    if not aps:
        raise ValueError("no query has a matching gallery item from another camera; check the pids and camids "
                         "(a layout without camera ids needs distinct query and gallery camids)")
    ap, inp, first = torch.cat(aps), torch.cat(inps), torch.cat(firsts)
    valid = len(ap)
    first_hits = torch.bincount((first - 1).clamp(max=max_rank), minlength=max_rank + 1)  # last bin: past max_rank
    cmc = (first_hits[:max_rank].cumsum(0).double() / valid).cpu().numpy()
    return {"mAP": float(ap.sum()) / valid, "cmc": cmc, "mINP": float(inp.sum()) / valid, "num_valid_queries": valid}


def tpr_at_fpr(distmat, q_pids, g_pids, q_camids, g_camids, fprs=FPR_TARGETS) -> dict[float, float]:
    """TPR@FPR of a (Q, G) distance matrix over its query-gallery pairs (see the module docstring); a CUDA
    ``distmat`` is evaluated on its GPU. Returns {f: TPR} for each target f in ``fprs`` (fractions in (0, 1]).

    Exact, without sorting every pair: the targets need order statistics of the negative distances up to the
    (ceil(max f x negatives) + 1)-th (one ``kthvalue``, then a sort of those) and a few counts.

    Raises:
        ValueError: bad shapes, a target outside (0, 1], or no positive or no negative pair (one-line message).
    """
    dist = distmat if isinstance(distmat, torch.Tensor) else torch.as_tensor(np.asarray(distmat))
    if dist.dim() != 2:
        raise ValueError(f"distmat must be a (queries, gallery) matrix, got shape {tuple(dist.shape)}")
    if not all(0 < f <= 1 for f in fprs):
        raise ValueError(f"false-positive rates must be in (0, 1], got {tuple(fprs)}")
    device = dist.device if dist.is_cuda else torch.device("cpu")
    dist = dist.detach().to(device).float()
    q_pids, q_cams = _ids(q_pids, "q_pids", device), _ids(q_camids, "q_camids", device)
    g_pids, g_cams = _ids(g_pids, "g_pids", device), _ids(g_camids, "g_camids", device)
    if (len(q_pids), len(q_cams), len(g_pids), len(g_cams)) != (dist.shape[0], dist.shape[0]) + (dist.shape[1],) * 2:
        raise ValueError(f"distmat is {dist.shape[0]} x {dist.shape[1]} but there are {len(q_pids)} query pids, "
                         f"{len(q_cams)} query camids, {len(g_pids)} gallery pids and {len(g_cams)} gallery camids")
    same = q_pids[:, None] == g_pids[None, :]
    positive = dist[same & (q_cams[:, None] != g_cams[None, :])]
    negative = dist[~same]
    n_pos, n_neg = len(positive), len(negative)
    if not n_pos or not n_neg:
        raise ValueError(f"TPR@FPR needs same- and different-identity pairs, got {n_pos} and {n_neg}")
    m = min(n_neg, math.ceil(max(fprs) * n_neg) + 1)
    kth = torch.kthvalue(negative, m).values
    smallest = negative[negative <= kth].sort().values[:m]  # the m smallest negative distances, ascending

    def accepted(t: torch.Tensor, strict: bool = False) -> int:
        """Negatives with d < t (``strict``) or d <= t, for t among ``smallest``: counted within it unless t is its
        last value (then equal values may lie beyond)."""
        if strict or t < smallest[-1]:
            return int(torch.searchsorted(smallest, t, right=not strict))
        return int((negative <= t).sum())

    out = {}
    for f in fprs:
        x = f * n_neg  # the target as a count of accepted negatives; achievable counts end a run of equal distances
        counts = [0]
        if math.floor(x) >= 1:  # the largest achievable count <= x
            t = smallest[math.floor(x) - 1]
            counts.append(accepted(t) if accepted(t) <= x else accepted(t, strict=True))
        if math.ceil(x) >= 1:  # the smallest achievable count >= x
            counts.append(accepted(smallest[math.ceil(x) - 1]))
        k = min(counts, key=lambda c: (abs(c - x), c))
        if k == n_neg:
            out[f] = 1.0
            continue
        # the next negative distance after the k accepted ones: a threshold just below it accepts exactly k
        after = smallest[k] if k < len(smallest) else negative[negative > smallest[-1]].min()
        out[f] = float((positive < after).sum()) / n_pos
    return out


def distance_matrix(qf, gf, metric: str = "euclidean", chunk_rows: int | None = None) -> torch.Tensor:
    """(Q, G) float32 distances of features qf (Q, D) and gf (G, D), on the features' device, in chunks of rows.

    ``euclidean``: squared euclidean ||q||^2 + ||g||^2 - 2 q.g (as torchreid's ``euclidean_squared_distance``),
    clamped at 0 against rounding; ``cosine``: 1 - q.g / (||q|| ||g||) after L2-normalising both sides.
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric={metric!r}; use 'euclidean' or 'cosine'")
    qf, gf = torch.as_tensor(qf).float(), torch.as_tensor(gf).float()
    if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"expected features (Q, D) and (G, D), got {tuple(qf.shape)} and {tuple(gf.shape)}")
    gf = gf.to(qf.device)
    if metric == "cosine":
        qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    rows = _chunk_rows(chunk_rows, len(gf))
    g_sq = gf.square().sum(1)
    out = qf.new_empty(len(qf), len(gf))
    for start in range(0, len(qf), rows):
        q = qf[start:start + rows]
        if metric == "cosine":
            out[start:start + rows] = 1 - q @ gf.T
        else:
            out[start:start + rows] = (q.square().sum(1, keepdim=True) + g_sq - 2 * q @ gf.T).clamp_min(0)
    return out


def _nearest(d: torch.Tensor, k: int) -> torch.Tensor:
    """(B, min(k, N)) indices of the smallest entries of each row of d (B, N), in the order of a stable argsort."""
    k = min(k, d.shape[1])
    values, idx = torch.topk(d, k, dim=1, largest=False)
    idx = idx.sort(1).values  # equal values by index, then a stable sort by value
    idx = idx.gather(1, d.gather(1, idx).sort(dim=1, stable=True).indices)
    # a tie across the k-th value makes topk's choice arbitrary: those rows get the full stable sort
    tied = ((d <= values[:, -1:]).sum(1) > k).nonzero().squeeze(1)
    if len(tied):
        idx[tied] = torch.sort(d[tied], dim=1, stable=True).indices[:, :k]
    return idx


def _reciprocal_sets(rank: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k + 1) mask over ``rank[:, :k + 1]``: j among i's first k + 1 neighbours and i among j's."""
    forward = rank[:, :k + 1]
    backward = rank[forward, :k + 1]  # (N, k + 1, k + 1)
    return (backward == torch.arange(len(rank), device=rank.device)[:, None, None]).any(-1)


def k_reciprocal_rerank(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                        chunk_rows: int | None = None) -> torch.Tensor:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) of (Q, G) distances; returns a (Q, G) float32 tensor.

    Follows the widely used reference (torchreid's ``utils/rerank.py``): d is the (Q+G) x (Q+G) matrix
    [[q_q, q_g], [q_g^T, g_g]] squared and divided by its per-column maximum (then transposed); R(i, k) are the
    k-reciprocal neighbours of i within its k + 1 nearest; R(i, k1) is expanded by R(c, round(k1 / 2)) of each
    candidate c in it that shares more than 2/3 of that set with R(i, k1); V_i = exp(-d_i) on the expanded set,
    normalised to sum 1 (an empty set leaves a zero row), then averaged over i's k2 nearest (query expansion,
    skipped for k2 = 1); Jaccard distance J_ij = 1 - m_ij / (2 - m_ij) with m_ij = sum_k min(V_ik, V_jk) (the
    min/max Jaccard form when the rows sum to 1); result = (1 - lambda) J + lambda d, query rows x gallery columns.
    Neighbour ties are broken by index (stable order); a column whose distances are all 0 is left at 0 where the
    reference would divide by zero.

    Inputs are (Q, G), (Q, Q) and (G, G) distances (NumPy or torch); it runs on q_g_dist's device. Memory is a few
    dense (Q+G)^2 float32 matrices: meant for sets up to about 20,000 images.
    """
    qg = torch.as_tensor(q_g_dist)
    device = qg.device
    qg, qq, gg = (torch.as_tensor(t).to(device=device, dtype=torch.float32) for t in (q_g_dist, q_q_dist, g_g_dist))
    if qg.dim() != 2 or qq.shape != (qg.shape[0],) * 2 or gg.shape != (qg.shape[1],) * 2:
        raise ValueError(f"expected q_g (Q, G), q_q (Q, Q) and g_g (G, G) distances, got {tuple(qg.shape)}, "
                         f"{tuple(qq.shape)} and {tuple(gg.shape)}")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    n_q, n = qg.shape[0], qg.shape[0] + qg.shape[1]
    # the reference's transpose(d / d.max(axis=0)), built transposed so that it is one contiguous matrix
    dist = torch.empty(n, n, dtype=torch.float32, device=device)
    dist[:n_q, :n_q], dist[:n_q, n_q:], dist[n_q:, :n_q], dist[n_q:, n_q:] = qq.T, qg, qg.T, gg.T
    dist.square_()
    dist /= dist.amax(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    rows = _chunk_rows(chunk_rows, n)
    rank = torch.cat([_nearest(dist[s:s + rows], max(k1, k2) + 1) for s in range(0, n, rows)])
    half = int(np.around(k1 / 2.0))
    top, recip = rank[:, :k1 + 1], _reciprocal_sets(rank, k1)  # (N, K): R(i, k1) = top[i][recip[i]]
    top_h, recip_h = rank[:, :half + 1], _reciprocal_sets(rank, half)  # (N, H): R(i, half)
    size_h = recip_h.sum(1).double()
    v = torch.empty(n, n, dtype=torch.float32, device=device)
    for s in range(0, n, rows):
        t, r = top[s:s + rows], recip[s:s + rows]  # (B, K)
        cand, cand_r = top_h[t], recip_h[t]  # (B, K, H): each candidate's half-neighbour list and its mask
        in_set = ((cand[..., None] == t[:, None, None, :]) & r[:, None, None, :]).any(-1)  # in R(i, k1)?
        overlap = (in_set & cand_r).sum(-1)  # |R(c, half) & R(i, k1)|
        chosen = r & (overlap > 2.0 / 3.0 * size_h[t])  # the reference's float comparison
        add = chosen[..., None] & cand_r
        member = torch.zeros(len(t), n, dtype=torch.bool, device=device)
        member.scatter_(1, t, r)  # indices within a row are distinct: the scatter is well defined
        member[torch.arange(len(t), device=device)[:, None, None].expand_as(add)[add], cand[add]] = True
        weight = torch.where(member, torch.exp(-dist[s:s + rows]), 0.0)
        v[s:s + rows] = weight / weight.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)  # empty: 0
    base = dist[:n_q, n_q:].clone()
    del dist
    if k2 != 1:  # query expansion, in chunks: v[rank[:, :k2]] at once would be k2 times the matrix
        v_qe, qe_rows = torch.empty_like(v), max(1, rows // k2)
        for s in range(0, n, qe_rows):
            v_qe[s:s + qe_rows] = v[rank[s:s + qe_rows, :k2]].mean(1)
        v = v_qe
        del v_qe
    v_query, v_gallery = v[:n_q].clone(), v[n_q:].T.contiguous()  # (Q, N) and (N, G): row gathers below
    del v
    jaccard = torch.empty(n_q, n - n_q, dtype=torch.float32, device=device)
    for i in range(n_q):
        support = v_query[i].nonzero().squeeze(1)
        shared = torch.minimum(v_gallery[support], v_query[i, support, None]).sum(0)
        jaccard[i] = 1 - shared / (2 - shared)
    return jaccard * (1 - lambda_value) + base * lambda_value


def rerank_features(qf, gf, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                    metric: str = "euclidean") -> torch.Tensor:
    """:func:`k_reciprocal_rerank` of the :func:`distance_matrix` distances of query features qf (Q, D) and gallery
    features gf (G, D); a (Q, G) float32 tensor on the features' device."""
    return k_reciprocal_rerank(distance_matrix(qf, gf, metric), distance_matrix(qf, qf, metric),
                               distance_matrix(gf, gf, metric), k1, k2, lambda_value)
