"""Forward kernel: flash-style online softmax with the relative terms fused on both sides.

Per program: BLOCK_M query rows of one (b, h). For each key tile of BLOCK_N keys:
- a tile beyond the band (every pair has |j - p| >= R) adds the per-row scalar q_i . T[0] or q_i . T[2R]
  to the scores and only accumulates the probability mass on that side (rescaled like the accumulator);
  the output gets mass_left * T[0] + mass_right * T[2R] once at the end;
- a band tile, block-band mode (BAND_P > 0, 2R - 1 <= BAND_P): the program computed
  QTb = Q_blk @ Tb^T [BLOCK_M, BAND_P] once (Tb = T[1 .. 2R-1]) and wrote it to its rows of the fp32
  scratch WS; the tile reads its key-side bias from there (a gather through memory: no registers
  held across the loop, no shuffles) and writes each in-band pair's final score back in place
  (each (i, j - p_i) slot belongs to exactly one pair). After the loop the weights exp(s - m_final)
  are read back and the value side is one dot [BLOCK_M, BAND_P] @ Tb: the positional floor, paid once
  per query block instead of twice a [BLOCK_M, BLOCK_P] slice per band tile. Scores are stored instead
  of weights so no online-softmax rescaling of the scratch is needed;
- a band tile, per-tile mode (BAND_P == 0, large R): loads T_slice (see band.py) and pays two
  [BLOCK_M, BLOCK_P] dots: key side bias = gather(Q @ T_slice^T), value side acc += bucket(W) @ T_slice.
Outputs: o [B, H, Lq, D] and per row the running max m and log of the softmax sum (kept apart, not
m + log l, so a fully masked row whose max is finfo.min keeps its exact 1/Lk weights in the backward).
"""

import triton
import triton.language as tl

from .band import band_bucket, band_gather, load_band_table, load_table_slice, mask_scores
from .dot import dot, dot_nt
from .philox import philox_uniform
from .sequence import sequence_window


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "Q_OFFSET"])
def _relattn_fwd_kernel(
    Q,
    K,
    V,
    T,
    OUT,
    ROW_MAX,
    ROW_LOGSUM,
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
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
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
    tl.static_assert(BLOCK_P >= BLOCK_M + BLOCK_N - 1)
    BAND_CHUNK: tl.constexpr = 32 if BAND_P > 32 else BAND_P
    # fp32 FMA dots: chunk the head dim (see dot.dot_nt); tensor-core dots stay whole.
    K_CHUNKS: tl.constexpr = min(4, BLOCK_D // 16) if DOT_PRECISION == "ieee" else 1
    pid_m = tl.program_id(1)
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    # lq, lk, q_offset: this sequence's (see sequence.py); LQ / LK are the tensors' row counts.
    q_start, k_start, lq, lk, q_offset, stat_row0 = sequence_window(CU_Q, CU_K, b, h, bh, LQ, LK, Q_OFFSET, VARLEN)
    if VARLEN:
        if pid_m * BLOCK_M >= lq:
            return  # the grid covers the longest sequence: no pad tile of a shorter one is computed
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < lq
    d_valid = offs_d < HEAD_DIM
    pos0 = q_offset + pid_m * BLOCK_M
    pos = q_offset + offs_m

    q_ptrs = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + q_start.to(tl.int64) * stride_qm
    q_ptrs = q_ptrs + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=m_valid[:, None] & d_valid[None, :], other=0.0)
    t_left = tl.load(T + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
    t_right = tl.load(T + 2 * R * stride_tr + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
    qt_left = tl.sum(q.to(tl.float32) * t_left[None, :], axis=1)
    qt_right = tl.sum(q.to(tl.float32) * t_right[None, :], axis=1)

    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + k_start.to(tl.int64) * stride_kn
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh + k_start.to(tl.int64) * stride_vn

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    mass_left = tl.zeros([BLOCK_M], tl.float32)
    mass_right = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # This block's scratch rows; in-block offsets stay int32 (64-bit pointer tiles cost registers).
    ws = WS + (stat_row0 + pid_m * BLOCK_M) * BAND_P
    ws_row = tl.arange(0, BLOCK_M)[:, None] * BAND_P
    if BAND_P > 0:
        # Column chunks in a runtime loop, not static_range: unrolled, the compiler loads q's FMA (fp32)
        # dot operand once for every chunk and keeps it live (see benchmarks/NOTES.md, Triton section).
        for c in range(0, BAND_P // BAND_CHUNK):
            tb = load_band_table(T, stride_tr, stride_td, R, c * BAND_CHUNK, offs_d, HEAD_DIM, BAND_CHUNK)
            qtb = dot_nt(q, tb, DOT_PRECISION, K_CHUNKS)
            tl.store(ws + ws_row + (c * BAND_CHUNK + tl.arange(0, BAND_CHUNK))[None, :], qtb, mask=m_valid[:, None])
        tl.debug_barrier()  # band tiles read slots other threads wrote

    hi = lk
    if CAUSAL_SKIP:
        # Without padding or additive masks no row at a position >= 0 is fully masked, so keys past the
        # block's last position carry exactly zero weight and are skipped (see sequence.py for pos0 < 0).
        hi = tl.where(pos0 >= 0, tl.minimum(lk, pos0 + BLOCK_M), lk)
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
        s = dot_nt(q, k, DOT_PRECISION, K_CHUNKS)
        rel = offs_n[None, :] - pos[:, None]
        rel_min = j0 - (pos0 + BLOCK_M - 1)
        rel_max = j0 + BLOCK_N - 1 - pos0
        in_band = (rel_min < R) & (rel_max > -R)
        near = (rel > -R) & (rel < R)
        slot_ptrs = ws + (ws_row + (rel + (R - 1)))
        slot_mask = near & m_valid[:, None] & n_valid[None, :]
        if in_band:
            if BAND_P > 0:
                bias = tl.load(slot_ptrs, mask=slot_mask, other=0.0)
                s += tl.where(near, bias, tl.where(rel < 0, qt_left[:, None], qt_right[:, None]))
            else:
                ts = load_table_slice(T, stride_tr, stride_td, rel_min + R, R, offs_d, HEAD_DIM, BLOCK_P)
                s += band_gather(dot(q, tl.trans(ts), None, DOT_PRECISION), BLOCK_M, BLOCK_N)
        else:
            s += tl.where(rel_min >= R, qt_right, qt_left)[:, None]
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
        s = tl.where(n_valid[None, :], s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
        if HAS_DROPOUT:
            u = philox_uniform(
                seed_lo, seed_hi, offs_n[None, :] + 0 * offs_m[:, None], offs_m[:, None] + 0 * offs_n[None, :], bh
            )
            # The keep factor is built as fp32 in u's layout: an i1 tensor crossing layouts fails to
            # compile (fp32 32x32 tiles, "shared-memory element type bit width ... got 1").
            drop = tl.where(u >= dropout_p, dropout_scale, 0.0)
            p = p * drop
            if BAND_P > 0:
                s = tl.where(drop > 0.0, s, float("-inf"))  # a dropped pair leaves no value-side weight
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, None, DOT_PRECISION)
        mass_left = mass_left * alpha
        mass_right = mass_right * alpha
        if in_band:
            if BAND_P > 0:
                tl.store(slot_ptrs, s, mask=slot_mask)
                far = tl.where(near, 0.0, p)
                mass_left += tl.sum(tl.where(rel < 0, far, 0.0), axis=1)
                mass_right += tl.sum(tl.where(rel > 0, far, 0.0), axis=1)
            else:
                ts = load_table_slice(T, stride_tr, stride_td, rel_min + R, R, offs_d, HEAD_DIM, BLOCK_P)
                acc += dot(band_bucket(p, BLOCK_M, BLOCK_N, BLOCK_P).to(ts.dtype), ts, None, DOT_PRECISION)
        else:
            if rel_min >= R:
                mass_right += tl.sum(p, axis=1)
            else:
                mass_left += tl.sum(p, axis=1)

    if BAND_P > 0:
        tl.debug_barrier()  # the slots were written by other threads' layouts
        # In column chunks (a runtime loop, like the prologue): bounds the live [BLOCK_M, chunk] tile.
        hi_tiles = tl.cdiv(hi, BLOCK_N) * BLOCK_N
        m_band = m_i
        if VARLEN:
            m_band = tl.where(m_i > float("-inf"), m_i, 0.0)  # a row without keys: exp(-inf - -inf) would be NaN
        for c in range(0, BAND_P // BAND_CHUNK):
            offs_r = c * BAND_CHUNK + tl.arange(0, BAND_CHUNK)
            j = pos[:, None] + offs_r[None, :] - (R - 1)
            # Slots of keys the loop never visited still hold QTb: mask them out.
            seen = m_valid[:, None] & (offs_r[None, :] < 2 * R - 1) & (j >= 0) & (j < lk) & (j < hi_tiles)
            w_band = tl.exp(tl.load(ws + ws_row + offs_r[None, :], mask=seen, other=float("-inf")) - m_band[:, None])
            if HAS_DROPOUT:
                w_band = w_band * dropout_scale
            tb = load_band_table(T, stride_tr, stride_td, R, c * BAND_CHUNK, offs_d, HEAD_DIM, BAND_CHUNK)
            acc += dot(w_band.to(tb.dtype), tb, None, DOT_PRECISION)
    acc += mass_left[:, None] * t_left[None, :] + mass_right[:, None] * t_right[None, :]
    if VARLEN:
        l_i = tl.where(l_i > 0.0, l_i, 1.0)  # a query row of a sequence without keys outputs 0
    out = acc / l_i[:, None]
    if HAS_HMASK:
        out = out * tl.load(HMASK + b * stride_hb + h * stride_hh).to(tl.float32)
    o_ptrs = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + q_start.to(tl.int64) * stride_om
    o_ptrs = o_ptrs + offs_m[:, None].to(tl.int64) * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=m_valid[:, None] & d_valid[None, :])
    row = stat_row0 + offs_m
    tl.store(ROW_MAX + row, m_i, mask=m_valid)
    tl.store(ROW_LOGSUM + row, tl.log(l_i), mask=m_valid)
