"""Token Coordinated Prompt Attention (TCPA; Liu et al., ICML 2025, arXiv 2505.02406): per-token prompts as extra
keys and values of a frozen ViT's attention.

Each layer l owns a class pool (keys K^C_l (M, D), prompts P^C_l (M, Lp, D)) and an image pool (K^I_l, P^I_l, same
shapes). For the layer's input tokens X = [x_0 (class); x_1..x_P (patches)] (the residual stream, before norm1):

    s^C_m = cos(x_0, K^C_{l,m}),  s^n_m = cos(x_n, K^I_{l,m})             (n = 1..P, m = 1..M)
    S_0 = top-k_m s^C,  S_n = top-k_m s^n                                   (a random k-subset while ``random``)
    d_l = mean_{m in S_0}(1 - s^C_m) + mean_{n, m in S_n}(1 - s^n_m)       (the matching loss)

The layer's prompt tokens are Z = [P^C_l; P^I_l] flattened to (2 M Lp, D), with prompt dropout, and (VFPT)
Z <- Re(FFT_seq(FFT_dim(Z))). They enter attention as keys and values only:

    A = softmax(s q K^T) over all keys [X; Z],   O_i = sum_{j in S(i)} A_ij v_j   (no renormalisation)

where query i attends to every token and to the Lp prompts of each pool entry it selected: the class query to
its CLS-pool entries S_0, patch n to its image-pool entries S_n. Role-wise matching (R-TCPA) skips the pools'
keys: the class query sees all CLS prompts, every patch all image prompts, and there is no matching loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ..ops.sparse_attention import sparse_attention

__all__ = ["MATCHING_MODES", "PromptedAttention", "TokenCoordinatedPrompts"]

MATCHING_MODES = ("token", "role")


@register_notrace_module
class TokenCoordinatedPrompts(nn.Module):
    """The CLS and image prompt pools of every layer, their matching and the prompt keys each query attends.

    Args:
        dim: token width D; depth: layers L.
        pool_size: M entries per pool; prompt_len: Lp prompt tokens per entry; top_k: k entries per query, k <= M.
        matching: ``"token"`` (T-TCPA: per-token top-k and the matching loss) or ``"role"`` (R-TCPA).
        fourier: transform the prompts as Re(FFT_seq(FFT_dim(Z))) (VFPT-TCPA, the released model).
        prompt_drop: dropout on the prompt tokens.

    Parameters: ``cls_keys``, ``image_keys`` (L, M, D); ``cls_prompts``, ``image_prompts`` (L, M, Lp, D); all
    initialised U(-1, 1). ``random`` (attribute): in training, random k-subsets replace the top-k.
    """

    def __init__(self, dim: int, depth: int, pool_size: int = 18, prompt_len: int = 1, top_k: int = 10,
                 matching: str = "token", fourier: bool = True, prompt_drop: float = 0.1, device=None, dtype=None):
        super().__init__()
        if pool_size < 1 or prompt_len < 1 or depth < 1:
            raise ValueError(f"TCPA needs pool_size, prompt_len and depth >= 1, got {pool_size}, {prompt_len}, {depth}")
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"top_k={top_k} must lie between 1 and pool_size={pool_size}")
        if matching not in MATCHING_MODES:
            raise ValueError(f"matching={matching!r}; use 'token' (T-TCPA) or 'role' (R-TCPA)")
        dd = dict(device=device, dtype=dtype)
        self.pool_size, self.prompt_len, self.top_k = pool_size, prompt_len, top_k
        self.matching, self.fourier = matching, fourier
        self.random = False
        self.cls_keys = nn.Parameter(torch.empty(depth, pool_size, dim, **dd))
        self.cls_prompts = nn.Parameter(torch.empty(depth, pool_size, prompt_len, dim, **dd))
        self.image_keys = nn.Parameter(torch.empty(depth, pool_size, dim, **dd))
        self.image_prompts = nn.Parameter(torch.empty(depth, pool_size, prompt_len, dim, **dd))
        self.prompt_drop = nn.Dropout(prompt_drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for param in self.parameters():
            nn.init.uniform_(param, -1.0, 1.0)

    @property
    def num_prompts(self) -> int:
        """Prompt tokens per layer, 2 M Lp (both pools)."""
        return 2 * self.pool_size * self.prompt_len

    @property
    def keys_per_query(self) -> int:
        """Prompt keys each query attends: k Lp (token matching) or M Lp (role-wise)."""
        return (self.top_k if self.matching == "token" else self.pool_size) * self.prompt_len

    def prompt_tokens(self, layer: int, batch: int) -> torch.Tensor:
        """Z of ``layer``: (batch, 2 M Lp, D) while prompt dropout is active on a non-empty batch, else
        (1, 2 M Lp, D)."""
        d = self.cls_prompts.shape[-1]
        z = torch.cat([self.cls_prompts[layer].reshape(-1, d), self.image_prompts[layer].reshape(-1, d)])
        dropping = self.training and self.prompt_drop.p > 0 and batch > 0
        z = self.prompt_drop(z.expand(batch, -1, -1)) if dropping else z.unsqueeze(0)
        if self.fourier:
            spectrum = torch.fft.fft(torch.fft.fft(z.to(torch.promote_types(z.dtype, torch.float32)), dim=-1), dim=-2)
            z = spectrum.real.to(z.dtype)
        return z

    def _select(self, x: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool entries (B, T, k) of tokens x (B, T, D) against keys (M, D), and their mean 1 - cos (0 for no
        tokens)."""
        sim = F.normalize(x, dim=-1) @ F.normalize(keys, dim=-1).t()
        if self.random and self.training:
            chosen = torch.rand(sim.shape, device=sim.device).argsort(dim=-1)[..., : self.top_k]
        else:
            chosen = sim.topk(self.top_k, dim=-1).indices
        dist = 1 - sim.gather(-1, chosen)
        return chosen, dist.mean() if dist.numel() else dist.sum()

    def match(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Key indices of the prompts each query attends, and the matching loss d_l (None for R-TCPA).

        x: (B, N, D) layer input, class token first (N = 1 + P). Returns ``indices`` (B, 1, N, keys_per_query)
        into the keys [X; Z] (the prompts start at N; shared by the heads), and a scalar d_l.
        """
        b, n, _ = x.shape
        m, lp = self.pool_size, self.prompt_len
        if self.matching == "token":
            cls_sel, cls_dist = self._select(x[:, :1], self.cls_keys[layer])
            img_sel, img_dist = self._select(x[:, 1:], self.image_keys[layer])
            entries, loss = torch.cat([cls_sel, img_sel + m], dim=1), cls_dist + img_dist
        else:
            entries = torch.arange(m, device=x.device).expand(b, n, m)
            entries, loss = torch.cat([entries[:, :1], entries[:, 1:] + m], dim=1), None
        offsets = torch.arange(lp, device=x.device)
        indices = (n + entries.unsqueeze(-1) * lp + offsets).flatten(-2)
        return indices.unsqueeze(1), loss

    def forward(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(Z, indices, d_l)`` of ``layer`` for its input tokens x (B, N, D): see :meth:`prompt_tokens` and
        :meth:`match`."""
        indices, loss = self.match(layer, x)
        return self.prompt_tokens(layer, x.shape[0]), indices, loss


@register_notrace_module
class PromptedAttention(nn.Module):
    """Multi-head attention of tokens over [tokens; prompts], timm ``Attention``'s parameters (``qkv``, ``proj``).

    Prompts are keys and values only (no query rows, no outputs). Each query attends every token plus its own
    prompt keys, with the softmax taken over all keys and no renormalisation (official TCPA), through
    :func:`visattn.ops.sparse_attention.sparse_attention` (no N x (N + prompts) mask is formed).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 proj_drop: float = 0.0, device=None, dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        dd = dict(device=device, dtype=dtype)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, prompts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) normed tokens; prompts: (B or 1, Z, C) normed prompt tokens; indices: (B, 1, N, K) key
        indices (>= N) of each query's prompts in [tokens; prompts]. Returns (B, N, C)."""
        b, n, c = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        bias = None if self.qkv.bias is None else self.qkv.bias[c:]
        pk, pv = F.linear(prompts, self.qkv.weight[c:], bias).reshape(prompts.shape[0], -1, 2, h, c // h) \
            .permute(2, 0, 3, 1, 4).expand(-1, b, -1, -1, -1)
        out = sparse_attention(q, torch.cat([k, pk], dim=2), torch.cat([v, pv], dim=2), indices, dense_keys=n,
                               normalize="all", scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))
