"""The dQ backward kernel, one program per query block (see backward.py for the gradient formulas):
    dQ_i = scale (sum_j dS_ij k_j + sum_j dS_ij a_ij)
dS comes from backward.tile_grads, shared with the dK/dV kernel.
"""

import triton
import triton.language as tl

from .backward import tile_grads
from .band import band_bucket, load_band_table, load_table_slice
from .dot import dot, dot_nt
from .sequence import sequence_window


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "Q_OFFSET"])
def _relattn_bwd_dq_kernel(
    Q,
    K,
    V,
    T,
    DOUT,
    ROW_MAX,
    ROW_LOGSUM,
    DELTA,
    DQ,
    WS,
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
    HAS_KPAD: tl.constexpr,
    HAS_AMASK: tl.constexpr,
    HAS_HMASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    CAUSAL_SKIP: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BAND_P: tl.constexpr,
):
    """Per query block of one (b, h): dQ by a loop over key tiles.

    Contiguous output: [B, H, Lq, D] dense, [Tq, H, D] varlen (sequence.py).

    Block-band mode (BAND_P > 0) as in forward.py, with scratch rows of 2 BAND_P fp32: Q @ Tb^T and
    dO @ Tb^T written once; each in-band pair's dS overwrites its Q @ Tb^T slot, and after the loop
    dQ += scratch[:, :BAND_P] @ Tb (the bucketed dS, one dot per query block).
    """
    tl.static_assert(BLOCK_P >= BLOCK_M + BLOCK_N - 1)
    BAND_CHUNK: tl.constexpr = 32 if BAND_P > 32 else BAND_P
    K_CHUNKS: tl.constexpr = min(4, BLOCK_D // 16) if DOT_PRECISION == "ieee" else 1  # see dot.dot_nt
    pid_m = tl.program_id(1)
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    q_start, k_start, lq, lk, q_offset, stat_row0 = sequence_window(CU_Q, CU_K, b, h, bh, LQ, LK, Q_OFFSET, VARLEN)
    i0 = pid_m * BLOCK_M
    if VARLEN:
        if i0 >= lq:
            return  # past this sequence's queries (the grid covers the longest)
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < lq
    d_valid = offs_d < HEAD_DIM
    qd_mask = m_valid[:, None] & d_valid[None, :]
    q_rows = (q_start + offs_m)[:, None].to(tl.int64)
    q = tl.load(
        Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + q_rows * stride_qm + offs_d[None, :] * stride_qd,
        mask=qd_mask,
        other=0.0,
    )
    do = tl.load(
        DOUT
        + b.to(tl.int64) * stride_gb
        + h.to(tl.int64) * stride_gh
        + q_rows * stride_gm
        + offs_d[None, :] * stride_gd,
        mask=qd_mask,
        other=0.0,
    )
    row = stat_row0 + offs_m
    row_max = tl.load(ROW_MAX + row, mask=m_valid, other=0.0)
    row_logsum = tl.load(ROW_LOGSUM + row, mask=m_valid, other=0.0)
    delta = tl.load(DELTA + row, mask=m_valid, other=0.0)
    t_left = tl.load(T + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
    t_right = tl.load(T + 2 * R * stride_tr + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
    hm = 1.0
    if HAS_HMASK:
        hm = tl.load(HMASK + b * stride_hb + h * stride_hh).to(tl.float32)
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + k_start.to(tl.int64) * stride_kn
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh + k_start.to(tl.int64) * stride_vn
    pos0 = q_offset + i0

    ws = WS + (stat_row0 + i0) * (2 * BAND_P)
    ws_row = tl.arange(0, BLOCK_M)[:, None] * (2 * BAND_P)
    if BAND_P > 0:
        # A runtime loop, not static_range: unrolled, q's and dO's FMA (fp32) dot operands are loaded
        # once for all chunks and stay live together (the old dQ fp32 spills, see benchmarks/NOTES.md, Triton section).
        for c in range(0, BAND_P // BAND_CHUNK):
            tb = load_band_table(T, stride_tr, stride_td, R, c * BAND_CHUNK, offs_d, HEAD_DIM, BAND_CHUNK)
            cols = ws_row + (c * BAND_CHUNK + tl.arange(0, BAND_CHUNK))[None, :]
            tl.store(ws + cols, dot_nt(q, tb, DOT_PRECISION, K_CHUNKS), mask=m_valid[:, None])
            tl.store(ws + BAND_P + cols, dot_nt(do, tb, DOT_PRECISION, K_CHUNKS), mask=m_valid[:, None])
        tl.debug_barrier()  # band tiles read slots other threads wrote

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    ds_left = tl.zeros([BLOCK_M], tl.float32)
    ds_right = tl.zeros([BLOCK_M], tl.float32)
    hi = lk
    if CAUSAL_SKIP:
        hi = tl.where(pos0 >= 0, tl.minimum(lk, pos0 + BLOCK_M), lk)  # as in forward.py
    for j0 in range(0, hi, BLOCK_N):
        offs_n = j0 + tl.arange(0, BLOCK_N)
        n_valid = offs_n < lk
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(
            k_base + offs_n[:, None].to(tl.int64) * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0
        )
        v = tl.load(
            v_base + offs_n[:, None].to(tl.int64) * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0
        )
        w, ds = tile_grads(
            q,
            do,
            k,
            v,
            T,
            stride_tr,
            stride_td,
            t_left,
            t_right,
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
            HEAD_DIM,
            HAS_KPAD,
            HAS_AMASK,
            CAUSAL,
            HAS_DROPOUT,
            DOT_PRECISION,
            BLOCK_M,
            BLOCK_N,
            BLOCK_P,
            BAND_P,
        )
        dq += dot(ds.to(k.dtype), k, None, DOT_PRECISION)
        rel_min = j0 - (pos0 + BLOCK_M - 1)
        rel_max = j0 + BLOCK_N - 1 - pos0
        if (rel_min < R) & (rel_max > -R):
            if BAND_P > 0:
                rel = offs_n[None, :] - (q_offset + offs_m)[:, None]
                near = (rel > -R) & (rel < R)
                tl.store(ws + (ws_row + (rel + (R - 1))), ds, mask=near & m_valid[:, None] & n_valid[None, :])
                far = tl.where(near, 0.0, ds)
                ds_left += tl.sum(tl.where(rel < 0, far, 0.0), axis=1)
                ds_right += tl.sum(tl.where(rel > 0, far, 0.0), axis=1)
            else:
                ts = load_table_slice(T, stride_tr, stride_td, rel_min + R, R, offs_d, HEAD_DIM, BLOCK_P)
                dq += dot(band_bucket(ds, BLOCK_M, BLOCK_N, BLOCK_P).to(ts.dtype), ts, None, DOT_PRECISION)
        elif rel_min >= R:
            ds_right += tl.sum(ds, axis=1)
        else:
            ds_left += tl.sum(ds, axis=1)

    if BAND_P > 0:
        tl.debug_barrier()  # the dS slots were written by other threads' layouts
        hi_tiles = tl.cdiv(hi, BLOCK_N) * BLOCK_N
        pos = q_offset + offs_m
        for c in range(0, BAND_P // BAND_CHUNK):
            offs_r = c * BAND_CHUNK + tl.arange(0, BAND_CHUNK)
            j = pos[:, None] + offs_r[None, :] - (R - 1)
            # Slots of keys the loop never visited still hold Q @ Tb^T: mask them out.
            seen = m_valid[:, None] & (offs_r[None, :] < 2 * R - 1) & (j >= 0) & (j < lk) & (j < hi_tiles)
            ds_band = tl.load(ws + ws_row + offs_r[None, :], mask=seen, other=0.0)
            tb = load_band_table(T, stride_tr, stride_td, R, c * BAND_CHUNK, offs_d, HEAD_DIM, BAND_CHUNK)
            dq += dot(ds_band.to(tb.dtype), tb, None, DOT_PRECISION)
    dq += ds_left[:, None] * t_left[None, :] + ds_right[:, None] * t_right[None, :]
    if VARLEN:
        out_off = (q_rows * H + h) * HEAD_DIM + offs_d[None, :]
    else:
        out_off = bh.to(tl.int64) * LQ * HEAD_DIM + offs_m[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
    tl.store(DQ + out_off, (dq * scale).to(DQ.dtype.element_ty), mask=qd_mask)
