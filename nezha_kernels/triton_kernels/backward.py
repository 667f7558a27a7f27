"""Backward kernels (FA2 style, P recomputed from the saved row max and log-sum).

With w_ij = p_ij * drop_ij * hm (the weights the output was built from):
    dW_ij = dO_i . (v_j + a_ij)            key-side gather of dO @ T_slice^T in band tiles
    delta_i = sum_j w_ij dW_ij = dO_i . O_i  (_relattn_bwd_delta_kernel)
    dS_ij = p_ij (dW_ij drop_ij hm - delta_i)  at every pair, masked ones included
    dQ_i = scale (sum_j dS_ij k_j + sum_j dS_ij a_ij)   (_relattn_bwd_dq_kernel in backward_dq.py, per query block)
    dK_j = scale sum_i dS_ij q_i,  dV_j = sum_i w_ij dO_i  (_relattn_bwd_dkdv_kernel, per key block)
"""

import triton
import triton.language as tl

from .band import band_gather, load_table_slice, mask_scores
from .dot import dot, dot_nt
from .philox import philox_uniform
from .sequence import sequence_window


@triton.jit
def _relattn_bwd_delta_kernel(
    OUT,
    DOUT,
    DELTA,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_gb,
    stride_gh,
    stride_gm,
    stride_gd,
    H,
    LQ,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """delta [B*H, Lq] fp32 = rowsum(dO * O)."""
    pid_m = tl.program_id(1)
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < LQ)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(
        OUT
        + b.to(tl.int64) * stride_ob
        + h.to(tl.int64) * stride_oh
        + offs_m[:, None].to(tl.int64) * stride_om
        + offs_d[None, :] * stride_od,
        mask=mask,
        other=0.0,
    )
    g = tl.load(
        DOUT
        + b.to(tl.int64) * stride_gb
        + h.to(tl.int64) * stride_gh
        + offs_m[:, None].to(tl.int64) * stride_gm
        + offs_d[None, :] * stride_gd,
        mask=mask,
        other=0.0,
    )
    delta = tl.sum(o.to(tl.float32) * g.to(tl.float32), axis=1)
    tl.store(DELTA + bh.to(tl.int64) * LQ + offs_m, delta, mask=offs_m < LQ)


@triton.jit
def tile_grads(
    q,
    do,
    k,
    v,
    T,
    stride_tr,
    stride_td,
    q_left,
    q_right,
    do_left,
    do_right,
    offs_d,
    row_max,
    row_logsum,
    delta,
    hm,
    b,
    h,
    bh,
    offs_m,
    offs_n,
    m_valid,
    n_valid,
    pos,
    pos0,
    j0,
    KPAD,
    stride_pb,
    stride_pn,
    AMASK,
    stride_ab,
    stride_ah,
    stride_am,
    stride_an,
    R,
    scale,
    dropout_p,
    dropout_scale,
    seed_lo,
    seed_hi,
    ws,
    ws_row,
    HEAD_DIM: tl.constexpr,
    RELATIVE: tl.constexpr,
    HAS_KPAD: tl.constexpr,
    HAS_AMASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    FMA_DOTS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BAND_P: tl.constexpr,
):
    """One (query block, key tile) pair: returns (w, dS) fp32 [BLOCK_M, BLOCK_N].

    q_left, q_right, do_left, do_right [BLOCK_M]: the rows' edge terms q . T[0], q . T[2R], dO . T[0], dO . T[2R].

    BAND_P > 0 (dQ kernel, block-band mode): in-band biases are read from the block's scratch rows
    ws + ws_row (columns [0, BAND_P): Q @ Tb^T, [BAND_P, 2 BAND_P): dO @ Tb^T, see forward.py).
    """
    # fp32 FMA dots: chunk the head dim (see dot.dot_nt); tensor-core dots stay whole.
    K_CHUNKS: tl.constexpr = min(4, q.shape[1] // 16) if FMA_DOTS else 1
    s = dot_nt(q, k, FMA_DOTS, K_CHUNKS)
    dw = dot_nt(do, v, FMA_DOTS, K_CHUNKS)
    rel = offs_n[None, :] - pos[:, None]
    rel_min = j0 - (pos0 + BLOCK_M - 1)
    rel_max = j0 + BLOCK_N - 1 - pos0
    if RELATIVE:
        if (rel_min < R) & (rel_max > -R):
            if BAND_P > 0:
                near = (rel > -R) & (rel < R)
                slot_ptrs = ws + (ws_row + (rel + (R - 1)))
                slot_mask = near & m_valid[:, None] & n_valid[None, :]
                left = rel < 0
                q_edge = tl.where(left, q_left[:, None], q_right[:, None])
                do_edge = tl.where(left, do_left[:, None], do_right[:, None])
                s += tl.where(near, tl.load(slot_ptrs, mask=slot_mask, other=0.0), q_edge)
                dw += tl.where(near, tl.load(slot_ptrs + BAND_P, mask=slot_mask, other=0.0), do_edge)
            else:
                ts = load_table_slice(T, stride_tr, stride_td, rel_min + R, R, offs_d, HEAD_DIM, BLOCK_P)
                s += band_gather(dot(q, tl.trans(ts), None, FMA_DOTS), BLOCK_M, BLOCK_N)
                dw += band_gather(dot(do, tl.trans(ts), None, FMA_DOTS), BLOCK_M, BLOCK_N)
        else:
            right = rel_min >= R
            s += tl.where(right, q_right, q_left)[:, None]
            dw += tl.where(right, do_right, do_left)[:, None]
    s = mask_scores(
        s * scale,
        rel,
        b,
        h,
        offs_m,
        offs_n,
        m_valid,
        n_valid,
        KPAD,
        stride_pb,
        stride_pn,
        AMASK,
        stride_ab,
        stride_ah,
        stride_am,
        stride_an,
        HAS_KPAD,
        HAS_AMASK,
        CAUSAL,
    )
    # (s - max) - log(sum), not s - lse: exact for a fully masked row (max = finfo.min, p = 1/Lk).
    p = tl.exp((s - row_max[:, None]) - row_logsum[:, None])
    p = tl.where(m_valid[:, None] & n_valid[None, :], p, 0.0)
    coef = tl.zeros_like(p) + hm
    if HAS_DROPOUT:
        u = philox_uniform(
            seed_lo, seed_hi, offs_n[None, :] + 0 * offs_m[:, None], offs_m[:, None] + 0 * offs_n[None, :], bh
        )
        coef = coef * tl.where(u >= dropout_p, dropout_scale, 0.0)  # fp32 factor, see forward.py
    ds = p * (dw * coef - delta[:, None])
    return p * coef, ds


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "Q_OFFSET"])
def _relattn_bwd_dkdv_kernel(
    Q,
    K,
    V,
    T,
    DOUT,
    ROW_MAX,
    ROW_LOGSUM,
    DELTA,
    DK,
    DV,
    KPAD,
    AMASK,
    HMASK,
    CU_Q,
    CU_K,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_tr,
    stride_td,
    stride_gb,
    stride_gh,
    stride_gm,
    stride_gd,
    stride_pb,
    stride_pn,
    stride_ab,
    stride_ah,
    stride_am,
    stride_an,
    stride_hb,
    stride_hh,
    H,
    LQ,
    LK,
    R,
    Q_OFFSET,
    scale,
    dropout_p,
    dropout_scale,
    seed_lo,
    seed_hi,
    LQ_KEY,
    LK_KEY,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    RELATIVE: tl.constexpr,
    HAS_KPAD: tl.constexpr,
    HAS_AMASK: tl.constexpr,
    HAS_HMASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    CAUSAL_SKIP: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    FMA_DOTS: tl.constexpr,
    VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Per key block of one (b, h): dK, dV by a loop over query tiles.

    Contiguous outputs: [B, H, Lk, D] dense, [Tk, H, D] varlen (sequence.py).
    """
    tl.static_assert(BLOCK_P >= BLOCK_M + BLOCK_N - 1)
    pid_n = tl.program_id(1)
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    q_start, k_start, lq, lk, q_offset, stat_row0 = sequence_window(CU_Q, CU_K, b, h, bh, LQ, LK, Q_OFFSET, VARLEN)
    j0 = pid_n * BLOCK_N
    if VARLEN:
        if j0 >= lk:
            return  # past this sequence's keys (the grid covers the longest)
    offs_n = j0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = offs_n < lk
    d_valid = offs_d < HEAD_DIM
    kv_mask = n_valid[:, None] & d_valid[None, :]
    k_rows = (k_start + offs_n)[:, None].to(tl.int64)
    k = tl.load(
        K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + k_rows * stride_kn + offs_d[None, :] * stride_kd,
        mask=kv_mask,
        other=0.0,
    )
    v = tl.load(
        V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh + k_rows * stride_vn + offs_d[None, :] * stride_vd,
        mask=kv_mask,
        other=0.0,
    )
    t_left = tl.load(T + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
    t_right = tl.load(T + 2 * R * stride_tr + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
    hm = 1.0
    if HAS_HMASK:
        hm = tl.load(HMASK + b * stride_hb + h * stride_hh).to(tl.float32)
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + q_start.to(tl.int64) * stride_qm
    g_base = DOUT + b.to(tl.int64) * stride_gb + h.to(tl.int64) * stride_gh + q_start.to(tl.int64) * stride_gm

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo = 0
    if CAUSAL_SKIP:
        # Query rows at positions < j0 give these keys zero weight, unless fully masked (positions < 0,
        # only when q_offset < 0: see sequence.py).
        lo = tl.where(q_offset >= 0, (tl.maximum(j0 - q_offset, 0) // BLOCK_M) * BLOCK_M, 0)
    for i0 in range(lo, lq, BLOCK_M):
        offs_m = i0 + tl.arange(0, BLOCK_M)
        m_valid = offs_m < lq
        qd_mask = m_valid[:, None] & d_valid[None, :]
        q = tl.load(
            q_base + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :] * stride_qd, mask=qd_mask, other=0.0
        )
        do = tl.load(
            g_base + offs_m[:, None].to(tl.int64) * stride_gm + offs_d[None, :] * stride_gd, mask=qd_mask, other=0.0
        )
        row = stat_row0 + offs_m
        row_max = tl.load(ROW_MAX + row, mask=m_valid, other=0.0)
        row_logsum = tl.load(ROW_LOGSUM + row, mask=m_valid, other=0.0)
        delta = tl.load(DELTA + row, mask=m_valid, other=0.0)
        w, ds = tile_grads(
            q,
            do,
            k,
            v,
            T,
            stride_tr,
            stride_td,
            tl.sum(q.to(tl.float32) * t_left[None, :], axis=1),
            tl.sum(q.to(tl.float32) * t_right[None, :], axis=1),
            tl.sum(do.to(tl.float32) * t_left[None, :], axis=1),
            tl.sum(do.to(tl.float32) * t_right[None, :], axis=1),
            offs_d,
            row_max,
            row_logsum,
            delta,
            hm,
            b,
            h,
            bh,
            offs_m,
            offs_n,
            m_valid,
            n_valid,
            q_offset + offs_m,
            q_offset + i0,
            j0,
            KPAD,
            stride_pb,
            stride_pn,
            AMASK,
            stride_ab,
            stride_ah,
            stride_am,
            stride_an,
            R,
            scale,
            dropout_p,
            dropout_scale,
            seed_lo,
            seed_hi,
            Q,
            0,
            HEAD_DIM,
            RELATIVE,
            HAS_KPAD,
            HAS_AMASK,
            CAUSAL,
            HAS_DROPOUT,
            FMA_DOTS,
            BLOCK_M,
            BLOCK_N,
            BLOCK_P,
            0,
        )
        dv += dot(tl.trans(w).to(do.dtype), do, None, FMA_DOTS)
        dk += dot(tl.trans(ds).to(q.dtype), q, None, FMA_DOTS)

    if VARLEN:
        out_off = (k_rows * H + h) * HEAD_DIM + offs_d[None, :]
    else:
        out_off = bh.to(tl.int64) * LK * HEAD_DIM + offs_n[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
    tl.store(DK + out_off, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=kv_mask)
