"""Re-id metrics against a literal per-query implementation of the protocol and a hand-computed case; distances
against their formulas; the re-ranking against a literal loop implementation of Zhong et al.'s algorithm."""

import numpy as np
import pytest
import torch

from visattn.tasks.reid.metrics import (
    distance_matrix,
    evaluate_ranking,
    k_reciprocal_rerank,
    rerank_features,
    tpr_at_fpr,
)


def brute_force(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """The protocol one query at a time: stable sort, same pid + camera removed, queries without a match skipped."""
    aps, inps, cmcs = [], [], []
    for i in range(len(dist)):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        matches = (g_pids[order][keep] == q_pids[i]).astype(int)
        if not matches.any():
            continue
        cmc = np.minimum(matches.cumsum(), 1)[:max_rank]
        cmcs.append(np.concatenate([cmc, np.ones(max_rank - len(cmc))]))
        hit_ranks = np.flatnonzero(matches) + 1
        aps.append(np.mean([(k + 1) / r for k, r in enumerate(hit_ranks)]))
        inps.append(matches.sum() / hit_ranks[-1])
    return np.mean(aps), np.mean(cmcs, 0), np.mean(inps), len(aps)


def random_problem(q, g, ids, cams, seed):
    """Integer distances (many ties), pid 0 distractors in the gallery, and query pid ids + 1 absent from it."""
    rng = np.random.default_rng(seed)
    dist = rng.integers(0, 5, (q, g)).astype(np.float32)
    q_pids, g_pids = rng.integers(1, ids + 2, q), rng.integers(0, ids + 1, g)
    q_pids[0] = ids + 1  # at least one query without any match
    return dist, q_pids, g_pids, rng.integers(0, cams, q), rng.integers(0, cams, g)


@pytest.mark.parametrize("q,g,ids,cams,max_rank", [(7, 30, 5, 3, 10), (20, 12, 4, 2, 50), (33, 80, 9, 6, 20),
                                                   (5, 6, 2, 2, 3), (40, 25, 6, 2, 1)])
def test_matches_a_per_query_loop_with_ties_and_distractors(q, g, ids, cams, max_rank):
    dist, *ids_ = random_problem(q, g, ids, cams, seed=q * g)
    want = brute_force(dist, *ids_, max_rank)
    assert 0 < want[3] < q  # some queries are skipped, some count
    got = evaluate_ranking(torch.from_numpy(dist), *ids_, max_rank)
    assert got["num_valid_queries"] == want[3]
    assert isinstance(got["mAP"], float) and isinstance(got["mINP"], float)
    assert got["cmc"].shape == (max_rank,) and got["cmc"].dtype == np.float64
    np.testing.assert_allclose(got["mAP"], want[0], rtol=1e-12)
    np.testing.assert_allclose(got["cmc"], want[1], rtol=1e-12)
    np.testing.assert_allclose(got["mINP"], want[2], rtol=1e-12)


def test_chunk_size_does_not_change_the_result():
    dist, *ids_ = random_problem(37, 50, 6, 3, seed=1)
    results = [evaluate_ranking(dist, *ids_, max_rank=60, chunk_rows=c) for c in (None, 1, 5, 36, 37, 1000)]
    for r in results[1:]:
        assert r["mAP"] == results[0]["mAP"] and r["mINP"] == results[0]["mINP"]
        assert (r["cmc"] == results[0]["cmc"]).all() and r["num_valid_queries"] == results[0]["num_valid_queries"]


def test_a_hand_computed_case():
    # query 0 (pid 1, cam 0): ranked gallery 0..4 = [pid 1 cam 0 (removed), pid 2, pid 1, pid 3, pid 1]
    #   remaining list: pid 2, pid 1, pid 3, pid 1 -> hits at ranks 2 and 4: AP = (1/2 + 2/4) / 2 = 0.5, INP = 2/4
    # query 1 (pid 2, cam 1): ranked gallery 1, 2, 3, 0, 4: its only match (cam 0) first: AP 1, INP 1
    # query 2 (pid 9): no match, skipped
    dist = np.array([[0, 1, 2, 3, 4], [3, 0, 1, 2, 4], [0, 1, 2, 3, 4]], dtype=np.float32)
    g_pids, g_cams = np.array([1, 2, 1, 3, 1]), np.array([0, 0, 1, 1, 1])
    got = evaluate_ranking(dist, [1, 2, 9], g_pids, [0, 1, 0], g_cams, max_rank=6)
    assert got["num_valid_queries"] == 2
    assert got["mAP"] == pytest.approx(0.75) and got["mINP"] == pytest.approx(0.75)
    np.testing.assert_allclose(got["cmc"], [0.5, 1, 1, 1, 1, 1])  # longer than the 4-item remaining list: 1s


def test_same_pid_same_camera_never_counts():
    dist = np.array([[0.0, 1.0, 2.0]])
    got = evaluate_ranking(dist, [5], [5, 7, 5], [2], [2, 0, 1], max_rank=3)
    np.testing.assert_allclose(got["cmc"], [0.0, 1.0, 1.0])  # the rank-0 same-camera item is removed
    assert got["mAP"] == pytest.approx(0.5) and got["mINP"] == pytest.approx(0.5)


def test_ties_keep_gallery_order():
    # all distances equal: the stable order is the gallery order, so the match at index 2 is at rank 3
    got = evaluate_ranking(np.zeros((1, 4)), [1], [2, 3, 1, 4], [0], [1, 1, 1, 1], max_rank=4)
    np.testing.assert_allclose(got["cmc"], [0, 0, 1, 1])
    assert got["mAP"] == pytest.approx(1 / 3)


def test_numpy_torch_and_list_inputs_agree():
    rng = np.random.default_rng(0)
    dist = rng.random((6, 15))
    ids = rng.integers(0, 3, 6), rng.integers(0, 3, 15), rng.integers(0, 2, 6), rng.integers(0, 2, 15)
    a = evaluate_ranking(dist, *ids)
    b = evaluate_ranking(torch.from_numpy(dist), *(torch.from_numpy(t) for t in ids))
    c = evaluate_ranking(dist.tolist(), *(t.tolist() for t in ids))
    for r in (b, c):
        assert r["mAP"] == a["mAP"] and (r["cmc"] == a["cmc"]).all() and r["mINP"] == a["mINP"]


BAD = {
    "no valid query": ((np.zeros((1, 2)), [1], [1, 2], [0], [0, 0]), {}, "no query has a matching gallery item"),
    "pid lengths": ((np.zeros((2, 3)), [1], [1, 2, 3], [0, 0], [0, 0, 0]), {},
                    "distmat is 2 x 3 but there are 1 query pids"),
    "camid lengths": ((np.zeros((2, 3)), [1, 1], [1, 2, 3], [0, 0], [0, 0]), {}, "and 2 gallery camids"),
    "1-D distmat": ((np.zeros(3), [1], [1], [0], [0]), {}, r"a \(queries, gallery\) matrix"),
    "2-D pids": ((np.zeros((1, 1)), [[1]], [1], [0], [1]), {}, "q_pids must be 1-D"),
    "float pids": ((np.zeros((1, 1)), [1.5], [1], [0], [1]), {}, "q_pids must hold integer ids"),
    "max_rank 0": ((np.zeros((1, 2)), [1], [1, 2], [0], [1, 0]), {"max_rank": 0}, "max_rank must be >= 1"),
    "chunk_rows 0": ((np.zeros((1, 2)), [1], [1, 2], [0], [1, 0]), {"chunk_rows": 0}, "chunk_rows must be"),
}


@pytest.mark.parametrize("args,kwargs,match", BAD.values(), ids=BAD.keys())
def test_bad_inputs_are_one_line_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        evaluate_ranking(*args, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("chunk", [None, 2])
def test_distance_matrix(chunk):
    qf, gf = torch.randn(5, 8, dtype=torch.float64), torch.randn(7, 8, dtype=torch.float64)
    want = ((qf[:, None] - gf[None]) ** 2).sum(-1)
    got = distance_matrix(qf.numpy(), gf.numpy(), chunk_rows=chunk)
    assert got.dtype == torch.float32 and got.shape == (5, 7)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
    want = 1 - (qf @ gf.T) / (qf.norm(dim=1)[:, None] * gf.norm(dim=1)[None])
    torch.testing.assert_close(distance_matrix(qf, gf, "cosine", chunk_rows=chunk).double(), want, atol=1e-5,
                               rtol=1e-5)
    assert distance_matrix(qf, qf).diagonal().abs().max() < 1e-4


def test_distance_matrix_errors():
    with pytest.raises(ValueError, match="metric='l1'"):
        distance_matrix(torch.zeros(2, 3), torch.zeros(2, 3), "l1")
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
        distance_matrix(torch.zeros(2, 3), torch.zeros(2, 4))


def rerank_loop(q_g, q_q, g_g, k1, k2, lam):
    """Zhong et al.'s algorithm written out per item, as the widely used NumPy implementation does it (float64,
    stable sorts)."""
    original = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0) ** 2
    original = np.transpose(original / np.max(original, axis=0))
    n_q, n = q_g.shape[0], original.shape[0]
    rank = np.argsort(original, kind="stable")

    def reciprocal(i, k):
        forward = rank[i, :k + 1]
        return [j for j in forward if i in rank[j, :k + 1]]

    v = np.zeros_like(original)
    for i in range(n):
        recip = reciprocal(i, k1)
        expansion = set(recip)
        for c in recip:
            c_recip = reciprocal(c, int(np.around(k1 / 2)))
            if len(set(c_recip) & set(recip)) > 2 / 3 * len(c_recip):
                expansion |= set(c_recip)
        expansion = sorted(expansion)
        weight = np.exp(-original[i, expansion])
        v[i, expansion] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jaccard = np.zeros((n_q, n))
    for i in range(n_q):
        for j in range(n):
            shared = np.minimum(v[i], v[j]).sum()  # sum max = 2 - sum min when rows sum to 1, as the reference has
            jaccard[i, j] = 1 - shared / (2 - shared)
    return (jaccard * (1 - lam) + original[:n_q] * lam)[:, n_q:]


@pytest.mark.parametrize("k1,k2", [(20, 6), (4, 3), (6, 1), (50, 60)])
def test_rerank_matches_the_loop_implementation(k1, k2):
    torch.manual_seed(k1)
    qf, gf = torch.randn(12, 6), torch.randn(30, 6)
    qg, qq, gg = (distance_matrix(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    got = k_reciprocal_rerank(qg, qq, gg, k1=k1, k2=k2, lambda_value=0.3)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == (12, 30)
    want = rerank_loop(qg.double().numpy(), qq.double().numpy(), gg.double().numpy(), k1, k2, 0.3)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    torch.testing.assert_close(rerank_features(qf, gf, k1=k1, k2=k2), got)
    torch.testing.assert_close(k_reciprocal_rerank(qg, qq, gg, k1=k1, k2=k2, chunk_rows=5), got)


def test_rerank_with_tied_and_asymmetric_distances():
    rng = np.random.default_rng(3)
    qg, qq, gg = (rng.integers(1, 6, shape).astype(np.float32) for shape in ((9, 20), (9, 9), (20, 20)))
    got = k_reciprocal_rerank(qg, qq, gg, k1=5, k2=3, lambda_value=0.4)  # many ties at the k-th neighbour
    want = rerank_loop(qg.astype(np.float64), qq.astype(np.float64), gg.astype(np.float64), 5, 3, 0.4)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_rerank_cosine_and_errors():
    qf, gf = torch.randn(4, 5), torch.randn(9, 5)
    got = rerank_features(qf, gf, k1=3, k2=2, metric="cosine")
    qg, qq, gg = (distance_matrix(a, b, "cosine") for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    torch.testing.assert_close(got, k_reciprocal_rerank(qg, qq, gg, k1=3, k2=2))
    with pytest.raises(ValueError, match="q_g"):
        k_reciprocal_rerank(qg, gg, qq)


# ------------------------------------------------------------------------------------------------------ TPR@FPR


def roc_by_thresholds(dist, q_pids, g_pids, q_cams, g_cams, fprs):
    """TPR@FPR the long way: every pair listed, the ROC point of every distinct threshold (and (0, 0)) counted."""
    pos, neg = [], []
    for i in range(len(q_pids)):
        for j in range(len(g_pids)):
            if q_pids[i] == g_pids[j]:
                if q_cams[i] != g_cams[j]:
                    pos.append(dist[i, j])
            else:
                neg.append(dist[i, j])
    pos, neg = np.array(pos), np.array(neg)
    points = [(0.0, 0.0)] + [((neg <= t).mean(), (pos <= t).mean()) for t in np.unique(np.concatenate([pos, neg]))]
    out = {}
    for f in fprs:
        nearest = min(points, key=lambda p: (abs(p[0] - f), p[0]))[0]
        out[f] = max(tpr for fpr, tpr in points if fpr == nearest)
    return out


def test_tpr_at_fpr_by_hand():
    # queries: pid 1 and pid 2, camera 0; gallery: pid 1 cam 1, pid 1 cam 0 (same camera as query 0: left out),
    # pid 2 cam 1, pid 3 cams 1 and 2
    dist = np.array([[0.45, 0.05, 0.7, 0.3, 0.9],
                     [0.4, 0.6, 0.32, 0.5, 0.8]])
    ids = dict(q_pids=[1, 2], g_pids=[1, 1, 2, 3, 3], q_camids=[0, 0], g_camids=[1, 0, 1, 1, 2])
    # positive pairs 0.45, 0.32; negatives sorted 0.3 0.4 0.5 0.6 0.7 0.8 0.9 (7): FPR steps of 1/7.
    # f = 0.05 -> 0.35 negatives: nearest count 0, threshold below 0.3 accepts no positive -> 0
    # f = 1/14 -> 0.5: counts 0 and 1 equally near, the smaller wins -> 0
    # f = 0.1 -> 0.7: count 1, threshold below 0.4 accepts 0.32 -> 1/2
    # f = 0.3 -> 2.1: count 2, threshold below 0.5 accepts 0.32 and 0.45 -> 1
    want = {0.05: 0.0, 1 / 14: 0.0, 0.1: 0.5, 0.3: 1.0}
    assert tpr_at_fpr(dist, ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"], fprs=tuple(want)) == want
    assert tpr_at_fpr(torch.tensor(dist), *(torch.tensor(v) for v in ids.values()), fprs=(1.0,)) == {1.0: 1.0}


@pytest.mark.parametrize("seed", range(4))
def test_tpr_at_fpr_against_every_threshold(seed):
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(9, 40, 6, 3, seed)
    fprs = (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.93)
    want = roc_by_thresholds(dist, q_pids, g_pids, q_cams, g_cams, fprs)
    got = tpr_at_fpr(dist, q_pids, g_pids, q_cams, g_cams, fprs)
    assert got == pytest.approx(want, abs=1e-12)
    real = dist + np.random.default_rng(seed).random(dist.shape)  # no ties
    assert tpr_at_fpr(real, q_pids, g_pids, q_cams, g_cams, fprs) == pytest.approx(
        roc_by_thresholds(real, q_pids, g_pids, q_cams, g_cams, fprs), abs=1e-12)


def test_tpr_at_fpr_errors():
    ids = ([1], [2, 3], [0], [1, 1])
    with pytest.raises(ValueError, match="needs same- and different-identity pairs, got 0 and 2"):
        tpr_at_fpr(np.zeros((1, 2)), *ids)
    with pytest.raises(ValueError, match=r"false-positive rates must be in \(0, 1\], got \(0.0,\)"):
        tpr_at_fpr(np.zeros((1, 2)), *ids, fprs=(0.0,))
    with pytest.raises(ValueError, match="distmat is 1 x 3 but there are 1 query pids"):
        tpr_at_fpr(np.zeros((1, 3)), *ids)
