"""Fused non-causal linear attention in Triton: a state reduction, then a per-token read-out; backward alike.

Forward: ``_state_kernel`` walks the tokens of one (batch, head) and accumulates in float32 registers the
sums S = sum_j k_j^T v_j (D x E), sum_j kn_j and sum_j v_j, written packed per head: (D E + D + E) floats,
all that backward keeps besides the inputs. When B * H programs cannot fill the GPU the token axis is split
over several programs per head, each writing partial sums that one torch sum folds (deterministic, no
atomics). ``_readout_kernel`` is parallel over (token block, batch * head): O_i = scale q_i S' (+ mean v, or
/ (qn_i . mean kn + eps)), S' = S, or for the injective mode the centred S - N mean(k)^T mean(v).

Backward: ``_query_grad_kernel`` (split like the state pass) writes dq (and d norm_q) token by token, since
they need only the forward sums, and accumulates dS = scale sum_i q_i^T r_i, r_i = g_i (/ z_i), with
dm = sum_i dz_i qn_i (normalize) and sum g (injective). ``_key_grad_kernel`` is parallel over token blocks:
dk_j = v_j dS^T, dv_j = k_j dS (centred k, v and + sum g / N when injective), d kn_j = dm / N.

Every (B, H, N, C) tensor is read and written through its four strides, so transposed views need no copy.
Heads narrower than 16 channels, or not a power of two, are padded to one with masks (tl.dot needs 16).
The feature map phi (ELU + 1) and the rotary embedding R of q and k are applied to the tiles as they are loaded,
and their gradients (phi', R^T) to the gradient tiles before they are stored: neither phi(q) nor R phi(q) is ever
written to memory.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._triton import cdiv, dot_precision, head_tile, on_tensor_device

# Token rows per tile when the state tile holds at most 64 x 64 channels; half as many above that.
BLOCK_N = 64
# Fewest token blocks one program of a split reduction walks, so the partial states stay small beside the tokens.
SPLIT_MIN_BLOCKS = 4
# Programs per SM the split reductions aim for (2, 4 and 8 timed on an H200: 4 was fastest overall).
PROGRAMS_PER_SM = 4
# SMs assumed for CPU tensors (Triton's interpreter), so that CPU tests take the split path too.
INTERPRETER_SMS = 4


@triton.jit
def _tile(X, bh, H, s_b, s_h, s_n, s_c, rows, N, C: tl.constexpr, BC: tl.constexpr):
    """Pointers and mask of the (rows x BC channels) tile of head ``bh`` of a (B, H, N, C) tensor."""
    cols = tl.arange(0, BC)
    base = X + (bh // H).to(tl.int64) * s_b + (bh % H).to(tl.int64) * s_h
    return base + rows[:, None] * s_n + cols[None, :] * s_c, (rows[:, None] < N) & (cols[None, :] < C)


@triton.jit
def _load(X, bh, H, s_b, s_h, s_n, s_c, rows, N, C: tl.constexpr, BC: tl.constexpr):
    """The tile of :func:`_tile` in float32, zero outside the tensor."""
    ptrs, mask = _tile(X, bh, H, s_b, s_h, s_n, s_c, rows, N, C, BC)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_features(X, bh, H, s_b, s_h, s_n, s_c, rows, N, C: tl.constexpr, BC: tl.constexpr, ELU: tl.constexpr):
    """(raw tile, phi(raw tile)) in float32, both zero outside the tensor; phi = ELU + 1 when ``ELU``, else the
    identity."""
    ptrs, mask = _tile(X, bh, H, s_b, s_h, s_n, s_c, rows, N, C, BC)
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    features = x
    if ELU:
        features = tl.where(mask, tl.where(x > 0, x + 1.0, tl.exp(x)), 0.0)
    return x, features


@triton.jit
def _feature_grad(grad, x, ELU: tl.constexpr):
    """The gradient with respect to the raw tile ``x`` of ``grad`` with respect to phi(x): phi' = 1 (x > 0) or
    exp(x) for ELU + 1."""
    if ELU:
        grad = grad * tl.where(x > 0, 1.0, tl.exp(x))
    return grad


@triton.jit
def _rotate(x, COS, SIN, bh, H, rows, N, D: tl.constexpr, BD: tl.constexpr, ROPE: tl.constexpr,
            INVERSE: tl.constexpr):
    """Channel pairs (a, b) = (x_2j, x_2j+1) of a (rows x BD) tile of head ``bh % H`` rotated to
    (a c - b s, a s + b c), with c, s = COS, SIN[row, h D / 2 + j] of contiguous (N, H D / 2) tables; by minus the
    angles (R^T) when ``INVERSE``; ``x`` itself unless ``ROPE``."""
    if ROPE:
        pairs = tl.arange(0, BD // 2)
        offsets = rows[:, None] * (H * (D // 2)) + (bh % H) * (D // 2) + pairs[None, :]
        mask = (rows[:, None] < N) & (pairs[None, :] < D // 2)
        cos = tl.load(COS + offsets, mask=mask, other=0.0)
        sin = tl.load(SIN + offsets, mask=mask, other=0.0)
        if INVERSE:
            sin = -sin
        a, b = tl.split(tl.reshape(x, (x.shape[0], BD // 2, 2)))
        x = tl.reshape(tl.join(a * cos - b * sin, a * sin + b * cos), (x.shape[0], BD))
    return x


@triton.jit
def _store(X, value, bh, H, s_b, s_h, s_n, s_c, rows, N, C: tl.constexpr, BC: tl.constexpr):
    ptrs, mask = _tile(X, bh, H, s_b, s_h, s_n, s_c, rows, N, C, BC)
    tl.store(ptrs, value.to(X.dtype.element_ty), mask=mask)


@triton.jit
def _packed_ptrs(X, slot, D: tl.constexpr, E: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr):
    """Pointers and masks of the (D x E) matrix, the D-vector and the E-vector packed, in that order, in entry
    ``slot`` of a contiguous float32 (..., D E + D + E) buffer, padded to BD and BE."""
    d = tl.arange(0, BD)
    e = tl.arange(0, BE)
    base = X + slot.to(tl.int64) * (D * E + D + E)
    return (base + d[:, None] * E + e[None, :], (d[:, None] < D) & (e[None, :] < E),
            base + D * E + d, d < D, base + D * E + D + e, e < E)


@triton.jit
def _load_packed(X, slot, D: tl.constexpr, E: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr):
    m_ptrs, m_mask, d_ptrs, d_mask, e_ptrs, e_mask = _packed_ptrs(X, slot, D, E, BD, BE)
    return (tl.load(m_ptrs, mask=m_mask, other=0.0), tl.load(d_ptrs, mask=d_mask, other=0.0),
            tl.load(e_ptrs, mask=e_mask, other=0.0))


@triton.jit
def _store_packed(X, slot, matrix, d_vector, e_vector, D: tl.constexpr, E: tl.constexpr, BD: tl.constexpr,
                  BE: tl.constexpr):
    m_ptrs, m_mask, d_ptrs, d_mask, e_ptrs, e_mask = _packed_ptrs(X, slot, D, E, BD, BE)
    tl.store(m_ptrs, matrix, mask=m_mask)
    tl.store(d_ptrs, d_vector, mask=d_mask)
    tl.store(e_ptrs, e_vector, mask=e_mask)


@triton.jit
def _split_blocks(blocks_per_split, n_blocks):
    """First and end (exclusive) token block of split ``program_id(0)`` of a split reduction."""
    first = tl.program_id(0) * blocks_per_split
    return first, tl.minimum(first + blocks_per_split, n_blocks)


@triton.jit
def _zero_sums(BD: tl.constexpr, BE: tl.constexpr):
    """Float32 accumulators of one head's packed sums: (D x E) matrix, D-vector, E-vector, padded to BD, BE."""
    return tl.zeros([BD, BE], tl.float32), tl.zeros([BD], tl.float32), tl.zeros([BE], tl.float32)


@triton.jit
def _readout_state(STATE, bh, N, D: tl.constexpr, E: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
                   INJECTIVE: tl.constexpr):
    """(S', mean kn, mean v) of head ``bh`` from its packed sums; S' = S, or S - N mean(k)^T mean(v) if injective."""
    state, key_sum, value_sum = _load_packed(STATE, bh, D, E, BD, BE)
    if INJECTIVE:
        state -= key_sum[:, None] * value_sum[None, :] / N
    return state, key_sum / N, value_sum / N


@triton.jit
def _normalizer(qn, key_mean, eps, rows, N):
    """z_i = qn_i . mean_j kn_j + eps for the tile's rows; 1 past the last token, so nothing divides by zero."""
    return tl.where(rows < N, tl.sum(qn * key_mean[None, :], 1) + eps, 1.0)


@triton.jit
def _state_kernel(
    K, V, KN, COS, SIN, STATE,
    sk_b, sk_h, sk_n, sk_c, sv_b, sv_h, sv_n, sv_c, skn_b, skn_h, skn_n, skn_c,
    N, H, n_blocks, blocks_per_split,
    D: tl.constexpr, E: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr, BLOCK_N: tl.constexpr,
    NORMALIZE: tl.constexpr, SEPARATE_KN: tl.constexpr, ELU: tl.constexpr, ROPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Sums over split ``program_id(0)``'s token blocks, packed: S = sum k~^T v (D x E), sum of kn (D; kn = norm_k,
    k' = phi(k) when normalizing, else k~ = R k', whose mean injective attention subtracts), sum of v (E)."""
    bh = tl.program_id(1)
    state, key_sum, value_sum = _zero_sums(BD, BE)
    first, end = _split_blocks(blocks_per_split, n_blocks)
    for blk in range(first, end):
        rows = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        _, k = _load_features(K, bh, H, sk_b, sk_h, sk_n, sk_c, rows, N, D, BD, ELU)
        k_rot = _rotate(k, COS, SIN, bh, H, rows, N, D, BD, ROPE, False)
        v = _load(V, bh, H, sv_b, sv_h, sv_n, sv_c, rows, N, E, BE)
        state = tl.dot(tl.trans(k_rot), v, state, input_precision=PRECISION)
        if SEPARATE_KN:
            key_sum += tl.sum(_load(KN, bh, H, skn_b, skn_h, skn_n, skn_c, rows, N, D, BD), 0)
        elif NORMALIZE:
            key_sum += tl.sum(k, 0)
        else:
            key_sum += tl.sum(k_rot, 0)
        value_sum += tl.sum(v, 0)
    _store_packed(STATE, tl.program_id(0) * tl.num_programs(1) + bh, state, key_sum, value_sum, D, E, BD, BE)


@triton.jit
def _readout_kernel(
    Q, QN, COS, SIN, STATE, O, N, H, scale, eps,
    sq_b, sq_h, sq_n, sq_c, sqn_b, sqn_h, sqn_n, sqn_c, so_b, so_h, so_n, so_c,
    D: tl.constexpr, E: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr, BLOCK_N: tl.constexpr,
    INJECTIVE: tl.constexpr, NORMALIZE: tl.constexpr, SEPARATE_QN: tl.constexpr, ELU: tl.constexpr,
    ROPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """O_i = scale q~_i S' (+ mean v when injective, / z_i when normalizing) for one block of tokens."""
    bh = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    state, key_mean, value_mean = _readout_state(STATE, bh, N, D, E, BD, BE, INJECTIVE)
    _, q = _load_features(Q, bh, H, sq_b, sq_h, sq_n, sq_c, rows, N, D, BD, ELU)
    q_rot = _rotate(q, COS, SIN, bh, H, rows, N, D, BD, ROPE, False)
    out = tl.dot(q_rot, state, input_precision=PRECISION) * scale
    if INJECTIVE:
        out += value_mean[None, :]
    if NORMALIZE:
        qn = q
        if SEPARATE_QN:
            qn = _load(QN, bh, H, sqn_b, sqn_h, sqn_n, sqn_c, rows, N, D, BD)
        out = out / _normalizer(qn, key_mean, eps, rows, N)[:, None]
    _store(O, out, bh, H, so_b, so_h, so_n, so_c, rows, N, E, BE)


@triton.jit
def _query_grad_kernel(
    Q, QN, DO, COS, SIN, STATE, DQ, DQN, DSTATE,
    sq_b, sq_h, sq_n, sq_c, sqn_b, sqn_h, sqn_n, sqn_c, sdo_b, sdo_h, sdo_n, sdo_c,
    sdq_b, sdq_h, sdq_n, sdq_c, sdqn_b, sdqn_h, sdqn_n, sdqn_c,
    N, H, n_blocks, blocks_per_split, scale, eps,
    D: tl.constexpr, E: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr, BLOCK_N: tl.constexpr,
    INJECTIVE: tl.constexpr, NORMALIZE: tl.constexpr, SEPARATE_QN: tl.constexpr, ELU: tl.constexpr,
    ROPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """dq (and d norm_q) of split ``program_id(0)``'s tokens, and its sums packed: dS (D x E), dm (D), sum g (E).

    With r_i = g_i / z_i (g_i unless normalizing): dq'_i = scale R^T (r_i S'^T) (+ dz_i m when qn = q'),
    dS = scale sum_i q~_i^T r_i; normalizing, dz_i = -(g_i . O_i) / z_i, d qn_i = dz_i m and dm = sum_i dz_i qn_i;
    dq_i = phi'(q_i) dq'_i.
    """
    bh = tl.program_id(1)
    first, end = _split_blocks(blocks_per_split, n_blocks)
    state, key_mean, _ = _readout_state(STATE, bh, N, D, E, BD, BE, INJECTIVE)
    dstate, dkey_mean, grad_sum = _zero_sums(BD, BE)
    for blk in range(first, end):
        rows = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        q_raw, q = _load_features(Q, bh, H, sq_b, sq_h, sq_n, sq_c, rows, N, D, BD, ELU)
        q_rot = _rotate(q, COS, SIN, bh, H, rows, N, D, BD, ROPE, False)
        g = _load(DO, bh, H, sdo_b, sdo_h, sdo_n, sdo_c, rows, N, E, BE)
        r = g
        if NORMALIZE:
            qn = q
            if SEPARATE_QN:
                qn = _load(QN, bh, H, sqn_b, sqn_h, sqn_n, sqn_c, rows, N, D, BD)
            z = _normalizer(qn, key_mean, eps, rows, N)
            r = g / z[:, None]
            out = tl.dot(q_rot, state, input_precision=PRECISION) * scale / z[:, None]
            dz = -tl.sum(r * out, 1)
            dqn = dz[:, None] * key_mean[None, :]
            dkey_mean += tl.sum(dz[:, None] * qn, 0)
        dq = tl.dot(r, tl.trans(state), input_precision=PRECISION) * scale
        dq = _rotate(dq, COS, SIN, bh, H, rows, N, D, BD, ROPE, True)
        if NORMALIZE:
            if SEPARATE_QN:
                _store(DQN, dqn, bh, H, sdqn_b, sdqn_h, sdqn_n, sdqn_c, rows, N, D, BD)
            else:
                dq += dqn
        dq = _feature_grad(dq, q_raw, ELU)
        _store(DQ, dq, bh, H, sdq_b, sdq_h, sdq_n, sdq_c, rows, N, D, BD)
        dstate = tl.dot(tl.trans(q_rot), r, dstate, input_precision=PRECISION)
        grad_sum += tl.sum(g, 0)
    _store_packed(DSTATE, tl.program_id(0) * tl.num_programs(1) + bh, dstate * scale, dkey_mean, grad_sum, D, E,
                  BD, BE)


@triton.jit
def _key_grad_kernel(
    K, V, COS, SIN, STATE, DSTATE, DK, DV, DKN,
    sk_b, sk_h, sk_n, sk_c, sv_b, sv_h, sv_n, sv_c, sdk_b, sdk_h, sdk_n, sdk_c, sdv_b, sdv_h, sdv_n, sdv_c,
    sdkn_b, sdkn_h, sdkn_n, sdkn_c,
    N, H,
    D: tl.constexpr, E: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr, BLOCK_N: tl.constexpr,
    INJECTIVE: tl.constexpr, NORMALIZE: tl.constexpr, SEPARATE_KN: tl.constexpr, ELU: tl.constexpr,
    ROPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """dk'_j = R^T (v_j dS^T), dv_j = k~_j dS (k~, v centred and dv_j + sum g / N when injective), d kn_j = dm / N;
    dk_j = phi'(k_j) dk'_j."""
    bh = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dstate, dkey_mean, grad_sum = _load_packed(DSTATE, bh, D, E, BD, BE)
    k_raw, k = _load_features(K, bh, H, sk_b, sk_h, sk_n, sk_c, rows, N, D, BD, ELU)
    k_rot = _rotate(k, COS, SIN, bh, H, rows, N, D, BD, ROPE, False)
    v = _load(V, bh, H, sv_b, sv_h, sv_n, sv_c, rows, N, E, BE)
    if INJECTIVE:
        _, key_mean, value_mean = _readout_state(STATE, bh, N, D, E, BD, BE, False)
        k_rot -= key_mean[None, :]
        v -= value_mean[None, :]
    dk = tl.dot(v, tl.trans(dstate), input_precision=PRECISION)
    dk = _rotate(dk, COS, SIN, bh, H, rows, N, D, BD, ROPE, True)
    dv = tl.dot(k_rot, dstate, input_precision=PRECISION)
    if INJECTIVE:
        dv += grad_sum[None, :] / N
    if NORMALIZE:
        dkn = tl.zeros([BLOCK_N, BD], tl.float32) + dkey_mean[None, :] / N
        if SEPARATE_KN:
            _store(DKN, dkn, bh, H, sdkn_b, sdkn_h, sdkn_n, sdkn_c, rows, N, D, BD)
        else:
            dk += dkn
    dk = _feature_grad(dk, k_raw, ELU)
    _store(DK, dk, bh, H, sdk_b, sdk_h, sdk_n, sdk_c, rows, N, D, BD)
    _store(DV, dv, bh, H, sdv_b, sdv_h, sdv_n, sdv_c, rows, N, E, BE)


@functools.lru_cache
def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a GPU; ``INTERPRETER_SMS`` for CPU tensors."""
    if device.type != "cuda":
        return INTERPRETER_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


class Tiling:
    """Tiling of one call: padded channel widths, token blocks, and the split of the token reductions."""

    def __init__(self, q: torch.Tensor, v: torch.Tensor):
        self.B, self.H, self.N, self.D = q.shape
        self.E = v.shape[-1]
        self.bd, self.be = head_tile(self.D), head_tile(self.E)
        self.block_n = BLOCK_N // 2 if self.bd * self.be > 64 * 64 else BLOCK_N
        # float32 registers of a program's token tiles and state: 4 warps up to the 64 x 64 case's 3 * 64 * 64
        self.num_warps = 4 if self.block_n * (self.bd + self.be) + self.bd * self.be <= 3 * 64 * 64 else 8
        self.n_blocks = cdiv(self.N, self.block_n)
        heads, target = self.B * self.H, PROGRAMS_PER_SM * _sm_count(q.device)
        wanted = cdiv(target, heads) if heads < target else 1
        splits = max(1, min(wanted, self.n_blocks // SPLIT_MIN_BLOCKS))
        self.blocks_per_split = cdiv(self.n_blocks, splits)
        self.splits = cdiv(self.n_blocks, self.blocks_per_split)
        # tiles are upcast to float32 (the float32 state would overflow half); half values are exact in tf32
        self.precision = dot_precision(q.dtype)

    def packed_sums(self, q: torch.Tensor) -> torch.Tensor:
        """An empty float32 buffer for packed per-head sums: (B, H, D E + D + E), with a leading split axis
        when the token axis is split."""
        split = (self.splits,) if self.splits > 1 else ()
        return q.new_empty(*split, self.B, self.H, self.D * self.E + self.D + self.E, dtype=torch.float32)

    def fold(self, sums: torch.Tensor) -> torch.Tensor:
        """The packed sums of every split added up: (B, H, D E + D + E)."""
        return sums.sum(0) if self.splits > 1 else sums

    def meta(self, **flags) -> dict:
        return dict(D=self.D, E=self.E, BD=self.bd, BE=self.be, BLOCK_N=self.block_n, PRECISION=self.precision,
                    num_warps=self.num_warps, **flags)


def _feature_args(q: torch.Tensor, rope_cos: torch.Tensor | None, rope_sin: torch.Tensor | None,
                  feature_map: str | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The kernels' COS and SIN pointers (the tables, or q, never read, without a rotary embedding) and their ELU
    and ROPE flags."""
    cos, sin = (q, q) if rope_cos is None else (rope_cos, rope_sin)
    return cos, sin, dict(ELU=feature_map == "elu+1", ROPE=rope_cos is not None)


@on_tensor_device
def forward(q, k, v, norm_q, norm_k, rope_cos, rope_sin, scale, injective, normalize, feature_map, eps, out):
    """Launch the state and read-out kernels, writing the output into ``out`` (B, H, N, E), q's dtype, any
    strides. Returns the float32 sums S = sum_j k~_j^T v_j, sum_j kn_j (kn = norm_k, k' when normalizing, else
    k~), sum_j v_j, packed per head: (B, H, D E + D + E)."""
    tiling = Tiling(q, v)
    cos, sin, features = _feature_args(q, rope_cos, rope_sin, feature_map)
    key_like = k if norm_k is None else norm_k
    sums = tiling.packed_sums(q)
    _state_kernel[(tiling.splits, tiling.B * tiling.H)](
        k, v, key_like, cos, sin, sums,
        *k.stride(), *v.stride(), *key_like.stride(),
        tiling.N, tiling.H, tiling.n_blocks, tiling.blocks_per_split,
        **tiling.meta(NORMALIZE=normalize, SEPARATE_KN=norm_k is not None, **features),
    )
    state = tiling.fold(sums)
    query_like = q if norm_q is None else norm_q
    _readout_kernel[(tiling.n_blocks, tiling.B * tiling.H)](
        q, query_like, cos, sin, state, out, tiling.N, tiling.H, scale, eps,
        *q.stride(), *query_like.stride(), *out.stride(),
        **tiling.meta(INJECTIVE=injective, NORMALIZE=normalize, SEPARATE_QN=norm_q is not None, **features),
    )
    return state


@on_tensor_device
def backward(grad_out, q, k, v, norm_q, rope_cos, rope_sin, state, scale, injective, normalize, separate_norms,
             feature_map, eps):
    """Launch the query- and key-side gradient kernels. Returns (dq, dk, dv, d norm_q, d norm_k), the last two
    None unless ``separate_norms``; dq, dk, dv laid out like q, k, v."""
    tiling = Tiling(q, v)
    cos, sin, features = _feature_args(q, rope_cos, rope_sin, feature_map)
    query_like = norm_q if separate_norms else q
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dnorm_q, dnorm_k = (torch.empty_like(q), torch.empty_like(k)) if separate_norms else (dq, dk)
    dsums = tiling.packed_sums(q)
    _query_grad_kernel[(tiling.splits, tiling.B * tiling.H)](
        q, query_like, grad_out, cos, sin, state, dq, dnorm_q, dsums,
        *q.stride(), *query_like.stride(), *grad_out.stride(), *dq.stride(), *dnorm_q.stride(),
        tiling.N, tiling.H, tiling.n_blocks, tiling.blocks_per_split, scale, eps,
        **tiling.meta(INJECTIVE=injective, NORMALIZE=normalize, SEPARATE_QN=separate_norms, **features),
    )
    _key_grad_kernel[(tiling.n_blocks, tiling.B * tiling.H)](
        k, v, cos, sin, state, tiling.fold(dsums), dk, dv, dnorm_k,
        *k.stride(), *v.stride(), *dk.stride(), *dv.stride(), *dnorm_k.stride(),
        tiling.N, tiling.H,
        **tiling.meta(INJECTIVE=injective, NORMALIZE=normalize, SEPARATE_KN=separate_norms, **features),
    )
    if not separate_norms:
        return dq, dk, dv, None, None
    return dq, dk, dv, dnorm_q, dnorm_k
