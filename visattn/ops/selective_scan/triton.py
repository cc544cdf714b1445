"""Fused selective scan in Triton: chunked associative-scan forward, and a reverse-scan backward.

Each program owns one batch element and a block of ``BLOCK_D`` channels of one group, so the group's B and C
rows are shared by the whole block; it keeps the (BLOCK_D x n) state in registers and walks L in chunks of
``BLOCK_L`` positions. Inside a chunk the recurrence h_t = a_t h_{t-1} + b_t is one ``tl.associative_scan``
over the (a, b) pairs of the affine maps h -> a h + b; the state at the chunk's end is carried to the next.
The forward writes the state at the start of every chunk (nothing else of size n x L). Backward walks the
chunks last to first: it recomputes the chunk's states from its saved start state, runs the adjoint
recurrence g_t = a_{t+1} g_{t+1} + dy_t C_t as a reverse scan carried across chunks, and reads every gradient
off h and g. dB and dC are summed over the group's channel blocks with atomic adds into float32 buffers;
dA, dD and d(delta_bias) are written per batch element and summed afterwards.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import WARP_STAGE_CONFIGS, autotune, cdiv, next_power_of_2, on_tensor_device

# Elements of one (BLOCK_D, n, BLOCK_L) tile: sets BLOCK_D so a tile's live tensors stay in registers. BLOCK_L,
# the chunk length, comes from the caller (:mod:`.fused` owns it: it sets the shape of the saved states).
TILE = 4096


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    """Compose h -> a1 h + b1 followed by h -> a2 h + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _dt(DELTA, off, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(delta + bias, dt): dt = softplus(delta + bias) if SOFTPLUS, zero where masked."""
    raw = tl.load(DELTA + off, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += bias[:, None]
    dt = raw
    if SOFTPLUS:
        dt = tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(raw)))
    return raw, tl.where(mask, dt, 0.0)


@triton.jit
def _channel_block(A, D, BIAS, n, dg, n_dblocks, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's batch element, group and channel block, with their A rows, delta bias and D (masked)."""
    b = tl.program_id(0).to(tl.int64)
    grp = tl.program_id(1) // n_dblocks
    offs_c = (tl.program_id(1) % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    c_mask = offs_c < dg
    ch = grp * dg + offs_c
    offs_n = tl.arange(0, BLOCK_N)
    n_mask = offs_n < n
    cn = c_mask[:, None] & n_mask[None, :]
    A_ = tl.load(A + ch[:, None] * n + offs_n[None, :], mask=cn, other=0.0)
    bias = tl.zeros([BLOCK_D], tl.float32)
    if HAS_BIAS:
        bias = tl.load(BIAS + ch, mask=c_mask, other=0.0)
    Dv = tl.zeros([BLOCK_D], tl.float32)
    if HAS_D:
        Dv = tl.load(D + ch, mask=c_mask, other=0.0)
    return b, grp, ch, c_mask, offs_n, n_mask, cn, A_, bias, Dv


@triton.jit
def _chunk(U, DELTA, B, C, A_, bias, b, grp, ch, c_mask, offs_n, n_mask, l0, L,
           su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l,
           HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_L: tl.constexpr):
    """Inputs of the chunk at l0 and its affine maps a = exp(dt A), b = dt u B, each (BLOCK_D, BLOCK_N, BLOCK_L).

    Masked positions get a = 1, b = 0 (the identity), so the state passes through them unchanged.
    """
    offs_l = l0 + tl.arange(0, BLOCK_L)
    l_mask = offs_l < L
    cl = c_mask[:, None] & l_mask[None, :]
    nl = n_mask[:, None] & l_mask[None, :]
    u = tl.load(U + b * su_b + ch[:, None] * su_d + offs_l[None, :] * su_l, mask=cl, other=0.0).to(tl.float32)
    raw, dt = _dt(DELTA, b * sdt_b + ch[:, None] * sdt_d + offs_l[None, :] * sdt_l, cl, bias, HAS_BIAS, SOFTPLUS)
    Bt = tl.load(B + b * sb_b + grp * sb_g + offs_n[:, None] * sb_n + offs_l[None, :] * sb_l,
                 mask=nl, other=0.0).to(tl.float32)
    Ct = tl.load(C + b * sc_b + grp * sc_g + offs_n[:, None] * sc_n + offs_l[None, :] * sc_l,
                 mask=nl, other=0.0).to(tl.float32)
    a = tl.exp(dt[:, None, :] * A_[:, :, None])
    bb = (dt * u)[:, None, :] * Bt[None, :, :]
    return offs_l, l_mask, cl, u, raw, dt, Bt, Ct, a, bb


@autotune(WARP_STAGE_CONFIGS, ["dg", "BLOCK_D", "BLOCK_N", "BLOCK_L", "HAS_D", "HAS_Z", "HAS_BIAS",
                               "SOFTPLUS"])
@triton.jit
def _fwd_kernel(
    U, DELTA, A, B, C, D, Z, BIAS, Y, STATES,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l, sz_b, sz_d, sz_l,
    dim, L, n, dg, n_dblocks, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    b, grp, ch, c_mask, offs_n, n_mask, cn, A_, bias, Dv = _channel_block(
        A, D, BIAS, n, dg, n_dblocks, HAS_D, HAS_BIAS, BLOCK_D, BLOCK_N)
    last = tl.arange(0, BLOCK_L) == BLOCK_L - 1
    state_ptr = STATES + ((b * dim + ch[:, None]) * n_chunks) * n + offs_n[None, :]
    h = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    for k in range(0, n_chunks):
        tl.store(state_ptr + k * n, h, mask=cn)
        offs_l, l_mask, cl, u, raw, dt, Bt, Ct, a, bb = _chunk(
            U, DELTA, B, C, A_, bias, b, grp, ch, c_mask, offs_n, n_mask, k * BLOCK_L, L,
            su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l,
            HAS_BIAS, SOFTPLUS, BLOCK_L)
        a_cum, b_cum = tl.associative_scan((a, bb), 2, _affine_combine)
        hs = a_cum * h[:, :, None] + b_cum
        y = tl.sum(hs * Ct[None, :, :], axis=1)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            z = tl.load(Z + b * sz_b + ch[:, None] * sz_d + offs_l[None, :] * sz_l, mask=cl, other=0.0)
            z = z.to(tl.float32)
            y *= z * tl.sigmoid(z)
        tl.store(Y + (b * dim + ch[:, None]) * L + offs_l[None, :], y.to(Y.dtype.element_ty), mask=cl)
        h = tl.sum(tl.where(last[None, None, :], hs, 0.0), axis=2)


@triton.jit
def _bwd_kernel(
    U, DELTA, A, B, C, D, Z, BIAS, DY, STATES, DU, DDELTA, DZ, DB, DC, DA, DD, DBIAS,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l, sz_b, sz_d, sz_l,
    sdy_b, sdy_d, sdy_l,
    dim, L, n, dg, n_dblocks, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    b, grp, ch, c_mask, offs_n, n_mask, cn, A_, bias, Dv = _channel_block(
        A, D, BIAS, n, dg, n_dblocks, HAS_D, HAS_BIAS, BLOCK_D, BLOCK_N)
    first = tl.arange(0, BLOCK_L) == 0
    state_ptr = STATES + ((b * dim + ch[:, None]) * n_chunks) * n + offs_n[None, :]
    group_ptr = ((b * (dim // dg) + grp) * n + offs_n[:, None]) * L
    g_next = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)  # adjoint state at the first position of the next chunk
    dA = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dD = tl.zeros([BLOCK_D], tl.float32)
    dbias = tl.zeros([BLOCK_D], tl.float32)
    for i in range(0, n_chunks):
        k = n_chunks - 1 - i
        offs_l, l_mask, cl, u, raw, dt, Bt, Ct, a, bb = _chunk(
            U, DELTA, B, C, A_, bias, b, grp, ch, c_mask, offs_n, n_mask, k * BLOCK_L, L,
            su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l,
            HAS_BIAS, SOFTPLUS, BLOCK_L)
        h0 = tl.load(state_ptr + k * n, mask=cn, other=0.0)
        a_cum, b_cum = tl.associative_scan((a, bb), 2, _affine_combine)
        hs = a_cum * h0[:, :, None] + b_cum
        dy = tl.load(DY + b * sdy_b + ch[:, None] * sdy_d + offs_l[None, :] * sdy_l, mask=cl, other=0.0)
        dy = dy.to(tl.float32)
        io = (b * dim + ch[:, None]) * L + offs_l[None, :]
        if HAS_Z:
            z = tl.load(Z + b * sz_b + ch[:, None] * sz_d + offs_l[None, :] * sz_l, mask=cl, other=0.0)
            z = z.to(tl.float32)
            y = tl.sum(hs * Ct[None, :, :], axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            sz = tl.sigmoid(z)
            tl.store(DZ + io, (dy * y * sz * (1.0 + z * (1.0 - sz))).to(DZ.dtype.element_ty), mask=cl)
            dy = dy * z * sz  # from here on: the gradient of the ungated output
        # adjoint g_t = dL/dh_t = a_{t+1} g_{t+1} + dy_t C_t, a reverse scan with a_{t+1} read one step ahead;
        # dy, C and a_{t+1} are zero at masked positions, so g and every gradient below are zero there too
        next_mask = c_mask[:, None] & (offs_l[None, :] + 1 < L)
        _, dt_next = _dt(DELTA, b * sdt_b + ch[:, None] * sdt_d + (offs_l[None, :] + 1) * sdt_l, next_mask, bias,
                         HAS_BIAS, SOFTPLUS)
        a_next = tl.where(next_mask[:, None, :], tl.exp(dt_next[:, None, :] * A_[:, :, None]), 0.0)
        g_cum, c_cum = tl.associative_scan((a_next, dy[:, None, :] * Ct[None, :, :]), 2, _affine_combine,
                                           reverse=True)
        g = g_cum * g_next[:, :, None] + c_cum
        g_next = tl.sum(tl.where(first[None, None, :], g, 0.0), axis=2)
        nl = n_mask[:, None] & l_mask[None, :]
        tl.atomic_add(DC + group_ptr + offs_l[None, :], tl.sum(dy[:, None, :] * hs, axis=0), mask=nl)
        tl.atomic_add(DB + group_ptr + offs_l[None, :], tl.sum(g * (dt * u)[:, None, :], axis=0), mask=nl)
        gB = tl.sum(g * Bt[None, :, :], axis=1)
        du = dt * gB
        if HAS_D:
            du += Dv[:, None] * dy
            dD += tl.sum(dy * u, axis=1)
        tl.store(DU + io, du.to(DU.dtype.element_ty), mask=cl)
        g_decay = g * (hs - bb)  # g_t a_t h_{t-1}: the adjoint times the decayed previous state
        dA += tl.sum(g_decay * dt[:, None, :], axis=2)
        ddt = u * gB + tl.sum(g_decay * A_[:, :, None], axis=1)
        if SOFTPLUS:
            ddt *= tl.sigmoid(raw)
        dbias += tl.sum(ddt, axis=1)
        tl.store(DDELTA + io, ddt.to(DDELTA.dtype.element_ty), mask=cl)
    tl.store(DA + (b * dim + ch[:, None]) * n + offs_n[None, :], dA, mask=cn)
    if HAS_D:
        tl.store(DD + b * dim + ch, dD, mask=c_mask)
    if HAS_BIAS:
        tl.store(DBIAS + b * dim + ch, dbias, mask=c_mask)


class Tiling:
    """Tiling of one call: channel blocks per group, padded state width, chunks of ``block_l`` positions."""

    def __init__(self, u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, block_l: int):
        self.batch, self.dim, self.L = u.shape
        self.n = A.shape[1]
        self.groups = B.shape[1]
        self.dg = self.dim // self.groups
        self.block_l = block_l
        self.block_n = next_power_of_2(max(self.n, 1))
        self.block_d = min(next_power_of_2(self.dg), max(1, TILE // (self.block_n * block_l)))
        self.n_dblocks = cdiv(self.dg, self.block_d)
        self.n_chunks = cdiv(self.L, block_l)

    def grid(self) -> tuple[int, int]:
        return (self.batch, self.groups * self.n_dblocks)

    def sizes(self) -> tuple:
        return (self.dim, self.L, self.n, self.dg, self.n_dblocks, self.n_chunks)

    def meta(self, D, z, delta_bias, delta_softplus: bool) -> dict:
        return dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                    SOFTPLUS=delta_softplus, BLOCK_D=self.block_d, BLOCK_N=self.block_n, BLOCK_L=self.block_l)


def _params(A, D, delta_bias, fallback):
    """A, D and delta_bias as contiguous buffers; ``fallback`` stands in for an absent one (never read)."""
    return [fallback if t is None else t.contiguous() for t in (A, D, delta_bias)]


@on_tensor_device
def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_l):
    """Launch the forward kernel over chunks of ``block_l`` positions. Returns (y (batch, d, L) in u's dtype,
    chunk-start states fp32 (batch, d, cdiv(L, block_l), n))."""
    tiling = Tiling(u, A, B, block_l)
    A, D_, bias = _params(A, D, delta_bias, u)
    zz = u if z is None else z
    y = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    states = torch.empty(tiling.batch, tiling.dim, tiling.n_chunks, tiling.n, dtype=torch.float32, device=u.device)
    _fwd_kernel[tiling.grid()](
        u, delta, A, B, C, D_, zz, bias, y, states,
        *u.stride(), *delta.stride(), *B.stride(), *C.stride(), *zz.stride(),
        *tiling.sizes(), **tiling.meta(D, z, delta_bias, delta_softplus),
    )
    return y, states


@on_tensor_device
def backward(grad_y, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus, block_l):
    """Launch the backward kernel over the forward's chunks. Returns (du, ddelta, dA, dB, dC, dD, dz,
    d(delta_bias)), each shaped and typed like its input (dA, dD, d(delta_bias) float32), None for an absent
    input."""
    tiling = Tiling(u, A, B, block_l)
    A, D_, bias = _params(A, D, delta_bias, u)
    zz = u if z is None else z
    dev = u.device
    du = torch.empty(u.shape, dtype=u.dtype, device=dev)
    ddelta = torch.empty(delta.shape, dtype=delta.dtype, device=dev)
    dz = du if z is None else torch.empty(z.shape, dtype=z.dtype, device=dev)
    dB = torch.zeros(B.shape, dtype=torch.float32, device=dev)
    dC = torch.zeros(C.shape, dtype=torch.float32, device=dev)
    dA = torch.empty(tiling.batch, tiling.dim, tiling.n, dtype=torch.float32, device=dev)
    dD = torch.empty(tiling.batch, tiling.dim, dtype=torch.float32, device=dev)
    dbias = torch.empty(tiling.batch, tiling.dim, dtype=torch.float32, device=dev)
    _bwd_kernel[tiling.grid()](
        u, delta, A, B, C, D_, zz, bias, grad_y, states, du, ddelta, dz, dB, dC, dA, dD, dbias,
        *u.stride(), *delta.stride(), *B.stride(), *C.stride(), *zz.stride(), *grad_y.stride(),
        *tiling.sizes(), **tiling.meta(D, z, delta_bias, delta_softplus), num_warps=8,
    )
    return (du, ddelta, dA.sum(0), dB.to(B.dtype), dC.to(C.dtype), None if D is None else dD.sum(0),
            None if z is None else dz, None if delta_bias is None else dbias.sum(0))
