"""Bi-level routing attention on torch's FlexAttention: the comparator a user would try first (benchmarks only).

Same inputs, result and padding semantics as :func:`attend_routed_regions`. FlexAttention attends over a 1-D
token sequence in blocks, so the map (zero-padded to a multiple of S = n_win per side, as in the reference) is
permuted to region-major order and each region of R tokens is padded to Rp tokens:

* R >= 16: Rp = R rounded up to a multiple of 16, one region per block (BLOCK_SIZE = Rp), and the BlockMask's kv
  block lists are ``region_idx`` itself (``BlockMask.from_kv_blocks``). When Rp == R (R = 16, 64, 256, ...) the
  routed blocks are full blocks: the kernel runs no mask_mod in them.
* R < 16: Rp = the next power of two, G = 16 // Rp regions per 16-token block (the region count padded to a
  multiple of G). A query block visits every kv block that holds a region routed from any of its G regions.

The mask_mod, which flex needs to be the whole mask (the eager path reads nothing else, the kernel reads it in
partial blocks), looks up (query region, key region) in a dense (B, S*S, S*S) route table and drops padding keys.

Both are exact: each query attends to precisely the R * topk tokens of its routed regions. Padding queries are
computed and dropped (padding regions of the R < 16 layout attend to nothing; flex returns 0 for such rows).
The Triton template needs tiles that divide the block sizes, so when a block is not a multiple of 128 the tiles
are pinned to the largest of 64, 32, 16 that divides it.

On CUDA the kernel is ``torch.compile(flex_attention)``, created on first use (one compilation per shape; raise
``torch._dynamo.config.recompile_limit`` when timing many shapes); elsewhere plain ``flex_attention`` (an unfused
fallback that materialises the scores, forward only: for tests).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from visattn.ops.routed_attention.reference import from_regions, to_regions

__all__ = ["RegionLayout", "region_layout", "routed_block_mask", "routed_flex_kernel", "routed_attention_flex",
           "to_flex", "from_flex"]

_compiled_flex = None


class RegionLayout(NamedTuple):
    """Where the tokens of an (H, W) map with S x S regions sit in the flex sequence."""

    height: int  # map side after zero-padding to a multiple of n_win
    width: int
    tokens: int  # R: tokens per region
    padded: int  # Rp: tokens per region in the sequence
    group: int  # G: regions per BlockMask block
    regions: int  # S * S
    padded_regions: int  # S * S rounded up to a multiple of G

    @property
    def block(self) -> int:
        return self.group * self.padded

    @property
    def length(self) -> int:
        return self.padded_regions * self.padded


def region_layout(h: int, w: int, n_win: int) -> RegionLayout:
    """The flex layout of an (h, w) map split into n_win x n_win regions (see the module docstring)."""
    hp, wp = h + -h % n_win, w + -w % n_win
    r = (hp // n_win) * (wp // n_win)
    rp = max(1, 1 << (r - 1).bit_length()) if r < 16 else r + -r % 16
    g = max(1, 16 // rp)
    regions = n_win * n_win
    return RegionLayout(hp, wp, r, rp, g, regions, regions + -regions % g)


def to_flex(x: torch.Tensor, n_win: int, num_heads: int) -> torch.Tensor:
    """(B, H, W, C) map -> (B, heads, L, C / heads) region-major padded sequence, L = ``region_layout(...).length``."""
    b, h, w, c = x.shape
    lay = region_layout(h, w, n_win)
    if (lay.height, lay.width) != (h, w):
        x = F.pad(x, (0, 0, 0, lay.width - w, 0, lay.height - h))
    x = to_regions(x, n_win)
    if (lay.padded, lay.padded_regions) != (lay.tokens, lay.regions):
        x = F.pad(x, (0, 0, 0, lay.padded - lay.tokens, 0, lay.padded_regions - lay.regions))
    return x.reshape(b, lay.length, num_heads, c // num_heads).transpose(1, 2)


def from_flex(out: torch.Tensor, n_win: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_flex` for an (h, w) map: (B, heads, L, d) -> (B, h, w, heads * d)."""
    b, heads, _, d = out.shape
    lay = region_layout(h, w, n_win)
    out = out.transpose(1, 2).reshape(b, lay.padded_regions, lay.padded, heads * d)
    out = from_regions(out[:, :lay.regions, :lay.tokens], n_win, lay.height, lay.width)
    return out[:, :h, :w].contiguous() if (lay.height, lay.width) != (h, w) else out


def routed_block_mask(region_idx: torch.Tensor, n_win: int, h: int, w: int) -> BlockMask:
    """The BlockMask of routed attention on an (h, w) map: region_idx (B, n_win**2, topk) int64 from
    :func:`route_regions`; broadcast over heads; on region_idx's device.

    The block lists skip unrouted blocks; the mask_mod (which flex requires to define the whole mask: its eager path
    reads only the mask_mod, its kernel reads it inside partial blocks) looks up (query region, key region) in a
    dense route table and drops padding keys.
    """
    lay = region_layout(h, w, n_win)
    b, regions, topk = region_idx.shape
    n, nb, g = lay.padded_regions, lay.padded_regions // lay.group, lay.group
    route = torch.zeros(b, n, n, dtype=torch.bool, device=region_idx.device)
    route[:, :regions].scatter_(2, region_idx, True)  # padding regions route nowhere
    padded, tokens = lay.padded, lay.tokens

    def mask_mod(b, h, q_idx, kv_idx):
        keep = route[b, q_idx // padded, kv_idx // padded]
        return keep & (kv_idx % padded < tokens) if padded != tokens else keep

    if g == 1:  # one region per block: the routes are the kv block lists
        idx = region_idx.to(torch.int32)
        if topk < regions:  # rows are read up to their count; one column per kv block, as flex builds them
            idx = F.pad(idx, (0, regions - topk))
        idx = idx[:, None].contiguous()
        count = torch.full((b, 1, regions), topk, dtype=torch.int32, device=region_idx.device)
        if padded == tokens:  # whole routed regions are full blocks: the kernel skips the mask_mod there
            return BlockMask.from_kv_blocks(torch.zeros_like(count), idx, count, idx, BLOCK_SIZE=lay.block,
                                            mask_mod=mask_mod)
        return BlockMask.from_kv_blocks(count, idx, BLOCK_SIZE=lay.block, mask_mod=mask_mod)
    # several regions per block: a query block visits the union of its regions' routes
    blocks = route.view(b, nb, g, nb, g).any(4).any(2)
    count = blocks.sum(-1, dtype=torch.int32)[:, None]
    idx = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)[:, None]
    return BlockMask.from_kv_blocks(count, idx.contiguous(), BLOCK_SIZE=lay.block, mask_mod=mask_mod)


def _kernel_options(block: int) -> dict | None:
    """Tiles pinned to divide the block (the template asserts it), unless the default tiles already do."""
    if block % 128 == 0:
        return None
    tile = next(t for t in (64, 32, 16) if block % t == 0)
    return {key: tile for key in ("BLOCK_M", "BLOCK_N", "BLOCK_M1", "BLOCK_N1", "BLOCK_M2", "BLOCK_N2")}


def routed_flex_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask,
                       scale: float) -> torch.Tensor:
    """flex_attention on :func:`to_flex` sequences (B, heads, L, d) with a :func:`routed_block_mask`: compiled on
    CUDA (created on the first CUDA call), eager elsewhere. Returns (B, heads, L, d_v)."""
    global _compiled_flex
    if q.device.type != "cuda":  # eager flex refuses inputs that require grad, even under no_grad (e.g. views)
        if not torch.is_grad_enabled():
            q, k, v = q.detach(), k.detach(), v.detach()
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    block = block_mask.BLOCK_SIZE[1]
    return _compiled_flex(q, k, v, block_mask=block_mask, scale=scale, kernel_options=_kernel_options(block))


def routed_attention_flex(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, region_idx: torch.Tensor, num_heads: int, n_win: int,
    scale: float,
) -> torch.Tensor:
    """:func:`attend_routed_regions` computed by FlexAttention.

    q, k: (B, H, W, C_qk); v: (B, H, W, C_v); region_idx: (B, n_win**2, topk) int64. Any H, W (zero-padded at the
    bottom/right; padded keys take part with zero k and v; the output is cropped back). Returns (B, H, W, C_v);
    differentiable in q, k, v on CUDA (torch's flex_attention has no backward on CPU).
    """
    h, w = q.shape[1:3]
    block_mask = routed_block_mask(region_idx, n_win, h, w)
    out = routed_flex_kernel(*(to_flex(t, n_win, num_heads) for t in (q, k, v)), block_mask, scale)
    return from_flex(out, n_win, h, w)
