import math

import pytest
import torch
from timm.layers import resample_abs_pos_embed

import visattn.blocks.sparse_attention as sparse_attention_block
from tests.fused import run_both_backends
from visattn.blocks import ConnectivityPredictor, SparsifinerAttention
from visattn.blocks.sparse_attention import outside_topk


def _token_rows(param, grid, size):
    if tuple(size) == tuple(grid):
        return param
    return resample_abs_pos_embed(param[None], new_size=size, old_size=grid, num_prefix_tokens=1)[0]


def official_approx(predictor, q, k, size, reconstruct=False):
    """The paper's predictor written out: (B, H, N-1, N) approximate attention of the patch queries."""
    heads = q.shape[1]
    proj_n = _token_rows(predictor.proj_n, predictor.grid, size)
    proj_back_n = _token_rows(predictor.proj_back_n, predictor.grid, size)
    logits = predictor.proj_c_q(q) @ (predictor.proj_c_k(k).transpose(-2, -1) @ proj_n) * heads ** -0.5
    coef = logits.softmax(-1)[:, :, 1:]  # class row dropped
    if reconstruct:
        return coef @ proj_back_n.t()
    kth = coef.sort(-1, descending=True).values[..., predictor.coef_topk - 1:predictor.coef_topk]
    coef = torch.where(coef >= kth, coef, 0.0)  # the top-kappa coefficients
    basis = proj_back_n.t().abs()
    return coef @ torch.where(basis > predictor.basis_threshold, basis, 0.0)


def official_mask(predictor, approx):
    """Dense (B, H, N, N) boolean connectivity: the class row attends to all, each patch row to its budget."""
    n = approx.shape[-1]
    budget = math.ceil(predictor.keep_rate * n)
    kth = approx.sort(-1, descending=True).values[..., budget - 1:budget]
    mask = approx >= kth
    assert (mask.sum(-1) == budget).all(), "tied scores at the budget: the test data must avoid them"
    return torch.cat([torch.ones_like(mask[:, :, :1]), mask], dim=2)


def official_attention(attn, x, size):
    """Sparsifiner attention in eval mode as the official code computes it: dense scores masked with -inf."""
    b, n, c = x.shape
    heads = attn.num_heads
    q, k, v = attn.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    mask = official_mask(attn.mask_predictor, official_approx(attn.mask_predictor, q, k, size))
    scores = q @ k.transpose(-2, -1) * (c // heads) ** -0.5
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return attn.proj((probs @ v).transpose(1, 2).reshape(b, n, c))


def _qk(batch, heads, n, dim, dtype=torch.float64):
    return torch.randn(batch, heads, n, dim, dtype=dtype), torch.randn(batch, heads, n, dim, dtype=dtype)


@pytest.mark.parametrize("size", [(4, 4), (3, 5)])  # the training grid, and a resampled one
def test_predictor_matches_the_formula(size):
    predictor = ConnectivityPredictor(16, 2, grid=(4, 4), reduce_n_factor=2, coef_topk=3).double()
    assert predictor.proj_n.shape == predictor.proj_back_n.shape == (17, 8)  # K = 17 // 2
    n = 1 + size[0] * size[1]
    q, k = _qk(2, 2, n, 16)
    approx = predictor(q, k, size)
    torch.testing.assert_close(approx, official_approx(predictor, q, k, size))
    indices = predictor.connectivity(approx)
    budget = math.ceil(0.25 * n)
    assert indices.shape == (2, 2, n - 1, budget) and indices.dtype == torch.int64
    assert (indices.sort(-1).values.diff(dim=-1) > 0).all()  # distinct keys
    dense = torch.zeros_like(approx, dtype=torch.bool).scatter(-1, indices, True)
    torch.testing.assert_close(dense, official_mask(predictor, approx)[:, :, 1:])


def test_the_basis_threshold_acts_on_the_absolute_basis():
    predictor = ConnectivityPredictor(8, 2, grid=(3, 3), reduce_n_factor=2, coef_topk=3).double()
    q, k = _qk(1, 2, 10, 8)
    approx, recon = predictor(q, k, (3, 3)), predictor(q, k, (3, 3), reconstruct=True)
    with torch.no_grad():
        predictor.proj_back_n.neg_()
    torch.testing.assert_close(predictor(q, k, (3, 3)), approx)  # |P_b| thresholded: signs do not matter
    torch.testing.assert_close(predictor(q, k, (3, 3), reconstruct=True), -recon)  # raw basis while reconstructing
    with torch.no_grad():
        predictor.proj_back_n.fill_(0.02)  # |u| <= tau is zeroed
    assert not predictor(q, k, (3, 3)).any()


@pytest.mark.parametrize("size", [(4, 4), (2, 6)])
def test_eval_attention_matches_the_dense_masked_form(size):
    attn = SparsifinerAttention(32, 2, qkv_bias=True, grid=(4, 4), reduce_n_factor=3, coef_topk=3,
                                basis_threshold=0.005).double().eval()
    x = torch.randn(2, 1 + size[0] * size[1], 32, dtype=torch.float64)
    torch.testing.assert_close(attn(x, size), official_attention(attn, x, size))


def test_keep_rate_one_is_dense_attention():
    attn = SparsifinerAttention(32, 4, grid=(3, 3), keep_rate=1.0, reduce_n_factor=2, coef_topk=2).double().eval()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    q, k, v = attn.qkv(x).reshape(2, 10, 3, 4, 8).permute(2, 0, 3, 1, 4)
    dense = ((q @ k.transpose(-2, -1) * 8 ** -0.5).softmax(-1) @ v).transpose(1, 2).reshape(2, 10, 32)
    torch.testing.assert_close(attn(x, (3, 3)), attn.proj(dense))


def test_reconstruction_in_training_is_dense_with_the_full_basis():
    attn = SparsifinerAttention(32, 2, grid=(3, 3), reduce_n_factor=2, coef_topk=3, basis_threshold=0.005).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    q, k, v = attn.qkv(x).reshape(2, 10, 3, 2, 16).permute(2, 0, 3, 1, 4)
    probs = (q @ k.transpose(-2, -1) * 16 ** -0.5).softmax(-1)
    dense = attn.proj((probs @ v).transpose(1, 2).reshape(2, 10, 32))
    attn.reconstruct = True
    out, approx, maps = attn.train()(x, (3, 3), return_maps=True)
    torch.testing.assert_close(out, dense)
    torch.testing.assert_close(attn(x, (3, 3)), dense)  # the same through SDPA when the maps are not asked for
    torch.testing.assert_close(maps, probs)
    torch.testing.assert_close(approx, official_approx(attn.mask_predictor, q, k, (3, 3), reconstruct=True))
    out, approx, maps = attn.eval()(x, (3, 3), return_maps=True)  # reconstruction is a training mode only
    assert maps is None
    torch.testing.assert_close(out, official_attention(attn, x, (3, 3)))
    torch.testing.assert_close(approx, official_approx(attn.mask_predictor, q, k, (3, 3)))


def test_fused_backend_matches_the_reference_forward_and_backward(monkeypatch):
    attn = SparsifinerAttention(32, 2, grid=(3, 4), reduce_n_factor=2, coef_topk=3).eval()
    x = torch.randn(2, 13, 32, requires_grad=True)

    def run():
        out = attn(x, (3, 4))
        (gx,) = torch.autograd.grad(out.square().sum(), x)
        return out.detach(), gx

    results = run_both_backends(run, monkeypatch)
    for fused, ref in zip(results["triton"], results["torch"], strict=True):
        torch.testing.assert_close(fused, ref, atol=1e-4, rtol=1e-4)


def _topk_complement(x, k):
    return torch.ones_like(x, dtype=torch.bool).scatter_(-1, x.topk(k, dim=-1, sorted=False).indices, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, k", [(197, 50), (32, 8), (17, 5), (10, 1), (10, 9), (10, 10)])
def test_outside_topk_is_torch_topk_ties_included(dtype, n, k):
    torch.manual_seed(0)
    distinct = torch.rand(40, 3, n, dtype=dtype)
    tied = torch.randint(0, 3, (40, 3, n)).to(dtype) / 7  # three values: ties at the k-th in most rows
    tied[0, 0, :3] = float("inf")
    tied[1, 0, :5] = -0.0  # equal to +0
    tied[2, 0, :7] = float("nan")  # the largest, as torch.topk takes them
    tied[2, 1, :2] = -float("nan")
    tied[3, 0] = float("nan")
    tied[4, 0] = -tied[4, 0]
    for x in (distinct, tied, distinct.flip(-1)):
        outside = outside_topk(x, k)
        assert outside is not None and outside.shape == x.shape and outside.dtype == torch.bool
        assert torch.equal(outside, _topk_complement(x, k))
    assert (outside_topk(distinct, k).sum(-1) == n - k).all()


def test_outside_topk_leaves_other_tensors_to_torch_topk():
    x = torch.rand(2, 3, 10)
    assert outside_topk(x.half(), 3) is None
    assert outside_topk(x.to("meta"), 3) is None
    assert torch.compile(lambda t: outside_topk(t, 3) is None, backend="eager", fullgraph=True)(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_host_mask_is_the_scattered_topk(dtype):
    predictor = ConnectivityPredictor(16, 2, grid=(4, 4), reduce_n_factor=2, coef_topk=3).to(dtype)
    torch.manual_seed(0)
    approx = torch.randint(0, 4, (2, 2, 16, 17)).to(dtype)  # ties at the budget in most rows
    approx[:, 1] = torch.rand(2, 16, 17, dtype=dtype)
    mask = predictor.attention_mask(approx, host=True)
    assert mask.shape == (2, 2, 17, 17) and mask.dtype == dtype
    assert not mask[:, :, 0].any()  # the class query attends every key
    attended = torch.zeros_like(approx, dtype=torch.bool).scatter_(-1, approx.topk(5, sorted=False).indices, True)
    assert torch.equal(mask[:, :, 1:] == 0, attended) and (mask[:, :, 1:][~attended] == float("-inf")).all()
    assert torch.equal(predictor.attention_mask(approx), mask)  # the torch path (CUDA's)


def test_host_and_torch_selections_give_the_same_attention(monkeypatch):
    attn = SparsifinerAttention(32, 2, grid=(4, 4), reduce_n_factor=2, coef_topk=3).eval()
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        host, host_approx, _ = attn(x, (4, 4), return_maps=True)
        monkeypatch.setattr(sparse_attention_block, "outside_topk", lambda x, k: None)
        torch_out, torch_approx, _ = attn(x, (4, 4), return_maps=True)
    assert torch.equal(host_approx, torch_approx) and torch.equal(host, torch_out)
    monkeypatch.undo()
    x.requires_grad_()  # evaluation with gradients (saliency): the host selection keeps the graph
    out, approx, _ = attn(x, (4, 4), return_maps=True)
    assert torch.equal(approx.detach(), host_approx) and torch.equal(out.detach(), host)
    (grad,) = torch.autograd.grad(approx.sum(), x)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(keep_rate=0.0), r"keep_rate=0.0 must lie in \(0, 1\]"),
    (dict(keep_rate=1.5), r"keep_rate=1.5 must lie in \(0, 1\]"),
    (dict(coef_topk=33), "coef_topk=33 must lie between 1 and the 32 basis vectors"),
    (dict(coef_topk=0), "coef_topk=0 must lie between 1 and the 32 basis vectors"),
    (dict(basis_threshold=-0.1), "basis_threshold=-0.1 must be >= 0"),
    (dict(reduce_n_factor=0), "reduce_n_factor=0 leaves no basis vectors for 197 tokens"),
    (dict(reduce_c_factor=128), "reduce_c_factor=128 leaves no channels of head_dim=64"),
])
def test_bad_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        SparsifinerAttention(384, 6, **kwargs)
    assert "\n" not in str(err.value)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="dim=10 must be divisible by num_heads=3"):
        SparsifinerAttention(10, 3)
    attn = SparsifinerAttention(16, 2, grid=(2, 2), reduce_n_factor=1, coef_topk=2)
    with pytest.raises(ValueError, match="5 tokens are not a class token and a 3x3 grid"):
        attn(torch.randn(1, 5, 16), (3, 3))
