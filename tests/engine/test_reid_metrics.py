"""Re-id metrics against a literal per-query implementation of the protocol, a hand-computed case, and the
re-ranking against a literal loop implementation of Zhong et al.'s algorithm."""

import numpy as np
import pytest
import torch

from visattn.engine import evaluate_ranking
from visattn.engine.reid_metrics import distance_matrix, k_reciprocal_rerank, rerank_features


def brute_force(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    aps, inps, cmcs = [], [], []
    for i in range(len(dist)):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        matches = (g_pids[order][keep] == q_pids[i]).astype(int)
        if not matches.any():
            continue
        cmc = np.minimum(matches.cumsum(), 1)
        cmc = np.concatenate([cmc, np.ones(max(0, max_rank - len(cmc)))])[:max_rank]
        cmcs.append(cmc)
        hit_ranks = np.flatnonzero(matches) + 1
        aps.append(np.mean([(k + 1) / r for k, r in enumerate(hit_ranks)]))
        inps.append(matches.sum() / hit_ranks[-1])
    return np.mean(aps), np.mean(cmcs, 0), np.mean(inps), len(aps)


@pytest.mark.parametrize("q,g,ids,cams,max_rank", [(7, 30, 5, 3, 10), (20, 12, 4, 2, 50), (33, 80, 9, 6, 20),
                                                   (5, 6, 2, 2, 3)])
def test_matches_a_per_query_loop_with_ties_and_distractors(q, g, ids, cams, max_rank):
    rng = np.random.default_rng(q * g)
    dist = rng.integers(0, 5, (q, g)).astype(np.float32)  # many ties: stable order decides them
    q_pids, g_pids = rng.integers(1, ids + 1, q), rng.integers(0, ids + 1, g)  # pid 0: distractors
    q_cams, g_cams = rng.integers(0, cams, q), rng.integers(0, cams, g)
    want = brute_force(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
    assert want[3] > 0
    for chunk in (None, 1, 4):
        got = evaluate_ranking(torch.from_numpy(dist), q_pids, g_pids, q_cams, g_cams, max_rank, chunk_rows=chunk)
        assert got["num_valid_queries"] == want[3]
        np.testing.assert_allclose(got["mAP"], want[0], rtol=1e-12)
        np.testing.assert_allclose(got["cmc"], want[1], rtol=1e-12)
        np.testing.assert_allclose(got["mINP"], want[2], rtol=1e-12)
        assert got["cmc"].shape == (max_rank,)


def test_a_hand_computed_case():
    # query 0 (pid 1, cam 0): ranked gallery 0..4 = [pid 1 cam 0 (removed), pid 2, pid 1, pid 3, pid 1]
    #   remaining list: pid 2, pid 1, pid 3, pid 1 -> hits at 2 and 4: AP = (1/2 + 2/4) / 2 = 0.5, INP = 2/4
    # query 1 (pid 2, cam 1): ranked gallery 1, 2, 3, 0, 4: its only match (cam 0) first: AP 1, INP 1
    # query 2 (pid 9): no match, skipped
    dist = np.array([[0, 1, 2, 3, 4], [3, 0, 1, 2, 4], [0, 1, 2, 3, 4]], dtype=np.float32)
    g_pids, g_cams = np.array([1, 2, 1, 3, 1]), np.array([0, 0, 1, 1, 1])
    got = evaluate_ranking(dist, [1, 2, 9], g_pids, [0, 1, 0], g_cams, max_rank=4)
    assert got["num_valid_queries"] == 2
    assert got["mAP"] == pytest.approx(0.75) and got["mINP"] == pytest.approx(0.75)
    np.testing.assert_allclose(got["cmc"], [0.5, 1.0, 1.0, 1.0])


def test_same_pid_same_camera_never_counts():
    dist = np.array([[0.0, 1.0, 2.0]])
    got = evaluate_ranking(dist, [5], [5, 7, 5], [2], [2, 0, 1], max_rank=3)
    np.testing.assert_allclose(got["cmc"], [0.0, 1.0, 1.0])  # the rank-0 same-camera item is removed
    assert got["mAP"] == pytest.approx(0.5)


def test_numpy_and_torch_inputs_agree():
    rng = np.random.default_rng(0)
    dist = rng.random((6, 15))
    ids = rng.integers(0, 3, 6), rng.integers(0, 3, 15), rng.integers(0, 2, 6), rng.integers(0, 2, 15)
    a = evaluate_ranking(dist, *ids)
    b = evaluate_ranking(torch.from_numpy(dist), *(torch.from_numpy(t) for t in ids))
    assert a["mAP"] == b["mAP"] and (a["cmc"] == b["cmc"]).all() and a["mINP"] == b["mINP"]


BAD = {
    "no valid query": ((np.zeros((1, 2)), [1], [1, 2], [0], [0, 0]), "no query has a matching gallery item"),
    "lengths": ((np.zeros((2, 3)), [1], [1, 2, 3], [0, 0], [0, 0, 0]), "distmat is 2 x 3 but there are 1 query pids"),
    "1-D": ((np.zeros(3), [1], [1], [0], [0]), r"a \(queries, gallery\) matrix"),
}


@pytest.mark.parametrize("args,match", BAD.values(), ids=BAD.keys())
def test_bad_inputs_are_one_line_errors(args, match):
    with pytest.raises(ValueError, match=match) as info:
        evaluate_ranking(*args)
    assert "\n" not in str(info.value)


def test_distance_matrix():
    qf, gf = torch.randn(5, 8), torch.randn(7, 8)
    torch.testing.assert_close(distance_matrix(qf, gf, chunk_rows=2), torch.cdist(qf, gf).square(), atol=1e-4,
                               rtol=1e-4)
    want = 1 - torch.nn.functional.cosine_similarity(qf[:, None], gf[None], dim=-1)
    torch.testing.assert_close(distance_matrix(qf, gf, "cosine"), want, atol=1e-5, rtol=1e-5)


def rerank_loop(q_g, q_q, g_g, k1, k2, lam):
    """Zhong et al.'s algorithm written out per item, as the widely used NumPy implementation does it."""
    original = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0) ** 2
    original = np.transpose(original / np.max(original, axis=0))
    n_q, n = q_g.shape[0], original.shape[0]
    v = np.zeros_like(original)
    rank = np.argsort(original, kind="stable").astype(np.int32)
    for i in range(n):
        forward = rank[i, :k1 + 1]
        recip = forward[np.where(rank[forward, :k1 + 1] == i)[0]]
        expansion = recip
        for c in recip:
            c_forward = rank[c, :int(np.around(k1 / 2)) + 1]
            c_recip = c_forward[np.where(rank[c_forward, :int(np.around(k1 / 2)) + 1] == c)[0]]
            if len(np.intersect1d(c_recip, recip)) > 2 / 3 * len(c_recip):
                expansion = np.append(expansion, c_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        v[i, expansion] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jaccard = np.zeros((n_q, n))
    for i in range(n_q):
        shared = np.zeros(n)
        for k in np.flatnonzero(v[i]):
            rows = np.flatnonzero(v[:, k])
            shared[rows] += np.minimum(v[i, k], v[rows, k])
        jaccard[i] = 1 - shared / (2 - shared)
    return (jaccard * (1 - lam) + original[:n_q] * lam)[:, n_q:]


@pytest.mark.parametrize("k1,k2", [(20, 6), (4, 3), (6, 1)])
def test_rerank_matches_the_loop_implementation(k1, k2):
    torch.manual_seed(k1)
    qf, gf = torch.randn(12, 6), torch.randn(30, 6)
    qg, qq, gg = (distance_matrix(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    got = k_reciprocal_rerank(qg, qq, gg, k1=k1, k2=k2, lambda_value=0.3)
    want = rerank_loop(qg.double().numpy(), qq.double().numpy(), gg.double().numpy(), k1, k2, 0.3)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    torch.testing.assert_close(rerank_features(qf, gf, k1=k1, k2=k2), got)
