"""Instance-dependent sparse attention with a learned connectivity predictor (Sparsifiner; Wei et al., CVPR 2023)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, resample_abs_pos_embed, trunc_normal_

from ..contract import InspectionMap, query_cell
from ..ops._backend import resolve_backend
from ..ops.sparse_attention import sparse_attention

__all__ = ["ConnectivityPredictor", "SparsifinerAttention", "outside_topk"]

# -inf's bits as the unsigned integer of its float's width, for the dtypes selected on the host
_NEG_INF_BITS = {torch.float32: np.uint32(0xFF800000), torch.float64: np.uint64(0xFFF0000000000000)}


def outside_topk(x: torch.Tensor, k: int) -> torch.Tensor | None:
    """Boolean (..., n), True at the entries of each row of ``x`` (..., n) outside its top k: the complement of
    ``x.topk(k, dim=-1).indices``, ties included. None where it is not computed here (a CUDA tensor, a dtype other
    than float32/float64, inside torch.compile, export or torch.jit.trace): the caller runs ``torch.topk``. No
    gradient.

    Computed on the host with NumPy: each row sorted (``np.sort``, a SIMD sort several times faster than torch's CPU
    top-k), its k-th largest entry t, the entries below t outside. That is the top k exactly when the next entry below
    t in the sorted row is smaller than t (NaN sorts last, the largest, as ``torch.topk`` takes it); a row where it is
    not (a tie at t) takes its top k from ``torch.topk``, as the official code does, whose choice among tied entries
    is its own.
    """
    # first: traced code never reads the table, and a graph would record neither the host's writes nor its result
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return None
    if x.device.type != "cpu" or x.dtype not in _NEG_INF_BITS:
        return None
    n = x.shape[-1]
    if k >= n:
        return torch.zeros(x.shape, dtype=torch.bool)
    rows = x.detach().numpy().reshape(-1, n)
    ordered = np.sort(rows, axis=-1)
    kth = ordered[:, n - k:n - k + 1]
    outside = rows < kth
    tied = np.flatnonzero(~(ordered[:, n - k - 1] < kth[:, 0]))
    if tied.size:
        top = torch.from_numpy(rows[tied]).topk(k, dim=-1, sorted=False).indices.numpy()
        decided = np.ones((tied.size, n), dtype=bool)
        np.put_along_axis(decided, top, False, axis=-1)
        outside[tied] = decided
    return torch.from_numpy(outside).view(x.shape)


class ConnectivityPredictor(nn.Module):
    """Sparsifiner's low-rank connectivity predictor: the keys each patch query attends to.

    Over N = 1 + H*W tokens (class token first), per head with queries and keys q, k (N, d), c = d // 2 reduced
    channels, K basis vectors (``num_basis``; by default N_0 // 6, N_0 the token count of the training ``grid``),
    the official logit scale s = num_heads ** -0.5 (not the head dim's), and P_n, P_b (N, K) (``proj_n``,
    ``proj_back_n``, their patch rows resampled to the current grid like an absolute position embedding):

        C   = softmax_K( s (q W_q + b_q) ((k W_k + b_k)^T P_n) )[1:]     (N-1, K)  coefficients, class row dropped
        U   = Threshold_tau(|P_b|^T)                                    (K, N)    sparse basis, |u| <= tau -> 0
        A'  = TopK_kappa(C) U                                           (N-1, N)  approximate attention
        S_i = the ceil(rho N) columns of A'_i with the largest values   keys patch query i attends to

    TopK_kappa keeps the kappa largest coefficients of a row and zeroes the rest. In the reconstruction phase the
    predictor learns A' = C P_b^T (every coefficient, the raw basis) from the dense attention.
    """

    def __init__(self, head_dim: int, num_heads: int, grid: tuple[int, int] = (14, 14), keep_rate: float = 0.25,
                 basis_threshold: float = 0.02, coef_topk: int = 8, reduce_n_factor: int = 6,
                 reduce_c_factor: int = 2, num_basis: int | None = None, device=None, dtype=None):
        super().__init__()
        num_tokens = 1 + grid[0] * grid[1]
        basis = num_tokens // max(reduce_n_factor, 1) if num_basis is None else num_basis
        channels = head_dim // max(reduce_c_factor, 1)
        if not 0 < keep_rate <= 1:
            raise ValueError(f"keep_rate={keep_rate} must lie in (0, 1]")
        if basis_threshold < 0:
            raise ValueError(f"basis_threshold={basis_threshold} must be >= 0")
        if num_basis is not None and num_basis < 1:
            raise ValueError(f"num_basis={num_basis} must be >= 1")
        if reduce_n_factor < 1 or basis < 1:
            raise ValueError(f"reduce_n_factor={reduce_n_factor} leaves no basis vectors for {num_tokens} tokens")
        if reduce_c_factor < 1 or channels < 1:
            raise ValueError(f"reduce_c_factor={reduce_c_factor} leaves no channels of head_dim={head_dim}")
        if not 1 <= coef_topk <= basis:
            raise ValueError(f"coef_topk={coef_topk} must lie between 1 and the {basis} basis vectors")
        dd = dict(device=device, dtype=dtype)
        self.grid, self.keep_rate, self.scale = tuple(grid), keep_rate, num_heads ** -0.5
        self.basis_threshold, self.coef_topk = basis_threshold, coef_topk
        self.proj_c_q = nn.Linear(head_dim, channels, **dd)
        self.proj_c_k = nn.Linear(head_dim, channels, **dd)
        self.proj_n = nn.Parameter(torch.empty(num_tokens, basis, **dd))
        self.proj_back_n = nn.Parameter(torch.empty(num_tokens, basis, **dd))
        self.init_weights()

    def init_weights(self) -> None:
        """The official initialisation: truncated-normal (std 0.02) projections, zero biases."""
        for weight in (self.proj_c_q.weight, self.proj_c_k.weight, self.proj_n, self.proj_back_n):
            trunc_normal_(weight, std=0.02)
        nn.init.zeros_(self.proj_c_q.bias)
        nn.init.zeros_(self.proj_c_k.bias)

    def _resampled(self, param: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``param`` (1 + H0*W0, K) with its patch rows resampled to an H x W grid: (1 + H*W, K)."""
        if not torch.compiler.is_exporting() and tuple(size) == self.grid:  # exported: resampled (an identity here)
            return param
        return resample_abs_pos_embed(param[None], new_size=size, old_size=self.grid, num_prefix_tokens=1)[0]

    def budget(self, num_tokens: int) -> int:
        """Keys per patch query: ceil(rho N)."""
        return math.ceil(self.keep_rate * num_tokens)

    def forward(self, q: torch.Tensor, k: torch.Tensor, size: tuple[int, int], reconstruct: bool = False,
                host: bool = False) -> torch.Tensor:
        """q, k (B, H, 1 + h*w, d) on an h x w grid -> approximate attention A' (B, H, h*w, 1 + h*w) of the patch
        queries; ``reconstruct``: every coefficient and the raw basis, as trained in the reconstruction phase;
        ``host``: the top coefficients selected on the host where :func:`outside_topk` can (the same ones)."""
        proj_n, proj_back_n = self._resampled(self.proj_n, size), self._resampled(self.proj_back_n, size)
        keys = self.proj_c_k(k).transpose(-2, -1) @ proj_n  # (B, H, c, K)
        # the class row is computed and dropped, as the official code does: the same rounding, the same top-k
        coef = (self.proj_c_q(q) @ keys * self.scale)[:, :, 1:].softmax(dim=-1)  # (B, H, N-1, K)
        if reconstruct:
            return coef @ proj_back_n.t()
        outside = outside_topk(coef, self.coef_topk) if host else None
        if outside is None:
            top, slots = coef.topk(self.coef_topk, dim=-1, sorted=False)
            coef = torch.zeros_like(coef).scatter_(-1, slots, top)
        elif coef.requires_grad:
            coef = torch.where(outside, 0.0, coef)
        else:  # softmax's own output, zeroed in place on the host: several times faster than torch.where on the CPU
            np.multiply(coef.numpy(), np.logical_not(outside.numpy()), out=coef.numpy())
        basis = proj_back_n.t().abs()
        basis = torch.where(basis > self.basis_threshold, basis, 0.0)
        return coef @ basis

    def connectivity(self, approx: torch.Tensor) -> torch.Tensor:
        """Approximate attention (B, H, N-1, N) -> int64 key indices (B, H, N-1, ceil(rho N)), in no order: those
        of ``torch.topk``, as the official code selects them."""
        return approx.detach().topk(self.budget(approx.shape[-1]), dim=-1, sorted=False).indices

    def attention_mask(self, approx: torch.Tensor, host: bool = False) -> torch.Tensor:
        """Approximate attention (B, H, N-1, N) -> the connectivity as an additive attention mask (B, H, N, N) of
        approx's dtype: 0 where a query attends a key (the class row: every key), -inf elsewhere; ``host``: the keys
        selected on the host where :func:`outside_topk` can (the same ones). No gradient."""
        b, h, n = *approx.shape[:2], approx.shape[-1]
        mask = approx.new_empty((b, h, n, n))
        mask[:, :, 0] = 0.0
        outside = outside_topk(approx, self.budget(n)) if host else None
        if outside is not None:  # -inf's bits times the booleans: several times faster than masked_fill on the CPU
            neg_inf = _NEG_INF_BITS[mask.dtype]
            np.multiply(outside.numpy(), neg_inf, out=mask.numpy().view(neg_inf.dtype)[:, :, 1:], casting="unsafe")
        else:
            mask[:, :, 1:].fill_(float("-inf")).scatter_(-1, self.connectivity(approx), 0.0)
        return mask


@register_notrace_module
class SparsifinerAttention(nn.Module):
    """Multi-head self-attention whose patch queries attend only to the keys the connectivity predictor selects.

    Over X (B, N = 1 + H*W, C), heads of d = C / heads channels, s = d ** -0.5, with S_i the key set of patch
    query i from :class:`ConnectivityPredictor` (``mask_predictor``; no gradient reaches it through S_i):

        O_0 = sum_j softmax_j(s q_0 . k_j) v_j                       (class query: all N keys)
        O_i = sum_{j in S_i} softmax_{j in S_i}(s q_i . k_j) v_j     (patch queries: |S_i| = ceil(rho N) keys)
        Y   = W_o concat_heads(O)

    On the Triton backend the patch queries run through :func:`~visattn.ops.sparse_attention.sparse_attention` with
    the predictor's indices, the one class query through SDPA over the N keys (an index set holds the same count for
    every query, so covering the class row there would widen all of them to N). On the torch backend all N queries
    run through one SDPA under the predictor's -inf mask (:meth:`ConnectivityPredictor.attention_mask`): on a CPU
    that costs about what dense attention does, where gathering each query's keys costs more; in evaluation both
    top-k selections run on the host there (:func:`outside_topk`, the same keys as ``torch.topk``).

    When ``reconstruct`` is set and the module trains (the predictor's training phase), every query attends
    densely and the predictor's approximation uses the full basis. Shapes: (B, 1 + H*W, C) with ``size=(H, W)``
    -> (B, 1 + H*W, C); with ``return_maps`` also the approximate attention (B, heads, H*W, 1 + H*W) and the
    dense attention probabilities (B, heads, N, N) while reconstructing in training (else None).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, proj_bias: bool = True,
                 proj_drop: float = 0.0, grid: tuple[int, int] = (14, 14), keep_rate: float = 0.25,
                 basis_threshold: float = 0.02, coef_topk: int = 8, reduce_n_factor: int = 6,
                 reduce_c_factor: int = 2, num_basis: int | None = None, backend: str | None = None, device=None,
                 dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        dd = dict(device=device, dtype=dtype)
        self.num_heads, self.backend, self.reconstruct = num_heads, backend, False
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.mask_predictor = ConnectivityPredictor(dim // num_heads, num_heads, grid, keep_rate, basis_threshold,
                                                    coef_topk, reduce_n_factor, reduce_c_factor, num_basis, **dd)
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, size: tuple[int, int], return_maps: bool = False):
        b, n, c = x.shape
        if n != 1 + size[0] * size[1]:
            raise ValueError(f"{n} tokens are not a class token and a {size[0]}x{size[1]} grid")
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        dense = self.reconstruct and self.training
        triton = resolve_backend(self.backend, q) == "triton"
        host = not self.training and not triton  # evaluation on the torch backend: the selections on the host
        approx = self.mask_predictor(q, k, size, reconstruct=dense, host=host)
        probs = None
        if dense and return_maps:
            probs = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
            out = probs @ v
        elif dense:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        elif triton:
            indices = self.mask_predictor.connectivity(approx)
            patches = sparse_attention(q[:, :, 1:], k, v, indices, scale=self.scale, backend=self.backend)
            out = torch.cat([F.scaled_dot_product_attention(q[:, :, :1], k, v, scale=self.scale), patches], dim=2)
        else:
            mask = self.mask_predictor.attention_mask(approx, host=host)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))
        return (out, approx, probs) if return_maps else out

    def keep_ratio(self, num_tokens: int) -> float:
        """The fraction of the N x N query-key pairs :meth:`forward` attends over N tokens: 1 while it attends
        densely (reconstructing in training), else (N + (N - 1) ceil(rho N)) / N^2."""
        if self.reconstruct and self.training:
            return 1.0
        return (num_tokens + (num_tokens - 1) * self.mask_predictor.budget(num_tokens)) / num_tokens**2

    def inspect_forward(self, x: torch.Tensor, size: tuple[int, int], return_maps: bool = False, *,
                        query: tuple[float, float]) -> InspectionMap:
        """The contract's ``kept_keys`` map: the keys the query's patch token attends in each head in
        :meth:`forward` on ``x`` (the predictor's same top-k; every key while attending densely), and the layer's
        keep ratio."""
        b, n, c = x.shape
        q, k, _ = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        cell = query_cell(query, size)
        if self.reconstruct and self.training:
            keys = torch.arange(n, device=x.device).expand(b, self.num_heads, n)
        else:
            approx = self.mask_predictor(q, k, size)
            keys = self.mask_predictor.connectivity(approx)[:, :, cell[0] * size[1] + cell[1]].sort(dim=-1).values
        return InspectionMap("kept_keys", {"keys": keys, "prefix": 1, "keep_ratio": self.keep_ratio(n)},
                             tuple(size), cell)
