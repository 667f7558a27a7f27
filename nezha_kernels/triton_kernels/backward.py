"""Backward kernels (FA2 style, P recomputed from the saved row max and log-sum).

With w_ij = p_ij * drop_ij * hm (the weights the output was built from):
    dW_ij = dO_i . (v_j + a_ij)            key-side gather of dO @ T_slice^T in band tiles
    delta_i = sum_j w_ij dW_ij = dO_i . O_i  (_relattn_bwd_delta_kernel)
    dS_ij = p_ij (dW_ij drop_ij hm - delta_i)  at every pair, masked ones included
    dQ_i = scale (sum_j dS_ij k_j + sum_j dS_ij a_ij)   (_relattn_bwd_dq_kernel in backward_dq.py, per query block)
    dK_j = scale sum_i dS_ij q_i,  dV_j = sum_i w_ij dO_i  (_relattn_bwd_dkdv_kernel in backward_dkdv.py, per key block)
"""

import triton
import triton.language as tl

from .band import band_tile_terms, mask_scores
from .dot import dot_nt
from .philox import philox_uniform
from .rotation import load_positional, load_rotation_rows, rotate_rows_at, rotate_swapped
from .softmax import LOG2E

# The delta kernel's per-row statistics: planes of a [STAT_PLANES, rows] fp32 buffer, rows as ROW_MAX's (dense
# b*H*Lq + i, varlen h*Tq + token). Plane 0 is delta (the dQ kernel reads it as DELTA); the dK/dV kernel reads them
# all (backward_dkdv.py). Edge terms with T[0] (left: keys left of the query) then T[2R] (right).
PLANE_DELTA = tl.constexpr(0)
PLANE_QE_LEFT = tl.constexpr(1)  # q . T[0], q . T[2R]
PLANE_DE_LEFT = tl.constexpr(3)  # dO . T[0], dO . T[2R]
# ((m + log l) - scale q . T[edge]) * log2 e: a far pair's p = exp2(qk scale log2 e - this)
PLANE_LSE_LEFT = tl.constexpr(5)
PLANE_DLT_LEFT = tl.constexpr(7)  # delta - hm dO . T[edge]: a far pair's dS = p (dO.v hm - this)
STAT_PLANES = 9
# Row maxima below this clamp are finfo.min (fully masked rows): their lse planes are never read (such rows meet only
# masked tiles, which rebuild p from m and log l), the clamp keeps them finite.
_LSE_MAX_FLOOR = tl.constexpr(-1.0e30)


@triton.jit
def _relattn_bwd_delta_kernel(
    OUT,
    DOUT,
    Q,
    T,
    ROW_MAX,
    ROW_LOGSUM,
    HMASK,
    STATS,
    ROT,
    QROT,
    GROT,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_gb,
    stride_gh,
    stride_gm,
    stride_gd,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_tr,
    stride_td,
    stride_hb,
    stride_hh,
    H,
    LQ,
    R,
    STAT_ROWS,
    scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    RELATIVE: tl.constexpr,
    HAS_HMASK: tl.constexpr,
    ROT_BLOCK_M: tl.constexpr,
):
    """STATS [STAT_PLANES, STAT_ROWS] fp32 (see PLANE_*): delta = rowsum(dO * O) and the rows' edge terms.

    One program per BLOCK_M rows of one [*, H, LQ, D] (b, h) (varlen: the [1, H, Tq, D] view, every sequence's rows).
    ROT_BLOCK_M > 0 (dense only; dK/dV's rotation band loop, and dQ where its BLOCK_M is ROT_BLOCK_M): also QROT,
    GROT [B*H, LQ, BLOCK_D] contiguous in q's dtype, q and dO rotated by the angles of their rows in the forward's
    ROT_BLOCK_M-row query blocks (rotation.rotate_rows_at: the forward's q_rot bit for bit; ROT the launcher's rotation
    table).
    """
    pid_m = tl.program_id(1)
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < LQ
    d_valid = offs_d < HEAD_DIM
    mask = m_valid[:, None] & d_valid[None, :]
    rows = offs_m[:, None].to(tl.int64)
    o = tl.load(
        OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + rows * stride_om + offs_d[None, :] * stride_od,
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    g = tl.load(
        DOUT + b.to(tl.int64) * stride_gb + h.to(tl.int64) * stride_gh + rows * stride_gm + offs_d[None, :] * stride_gd,
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    delta = tl.sum(o * g, axis=1)
    if ROT_BLOCK_M > 0:
        # Each row's angle from the start of its forward block: row m = i % ROT_BLOCK_M of the rotation planes.
        m = offs_m % ROT_BLOCK_M
        cos, sin_signed = load_rotation_rows(ROT, m, BLOCK_D)
        q_rows = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + rows * stride_qm
        g_rows = DOUT + b.to(tl.int64) * stride_gb + h.to(tl.int64) * stride_gh + rows * stride_gm
        x = tl.load(q_rows + offs_d[None, :] * stride_qd, mask=mask, other=0.0)
        x_swapped = tl.load(q_rows + (offs_d ^ 1)[None, :] * stride_qd, mask=mask, other=0.0)
        rot_off = (bh.to(tl.int64) * LQ + rows) * BLOCK_D + offs_d[None, :]
        tl.store(QROT + rot_off, rotate_swapped(x, x_swapped, cos, sin_signed), mask=mask)
        x = tl.load(g_rows + offs_d[None, :] * stride_gd, mask=mask, other=0.0)
        x_swapped = tl.load(g_rows + (offs_d ^ 1)[None, :] * stride_gd, mask=mask, other=0.0)
        tl.store(GROT + rot_off, rotate_swapped(x, x_swapped, cos, sin_signed), mask=mask)
    out = STATS + bh.to(tl.int64) * LQ + offs_m
    STAT_ROWS = STAT_ROWS + bh.to(tl.int64) * 0  # int64: plane * rows passes 2**31 at 2**28 rows
    tl.store(out + PLANE_DELTA * STAT_ROWS, delta, mask=m_valid)
    if RELATIVE:
        q_rows = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + rows * stride_qm
        q = tl.load(
            q_rows + offs_d[None, :] * stride_qd,
            mask=mask,
            other=0.0,
        ).to(tl.float32)
        t_left = tl.load(T + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
        t_right = tl.load(T + 2 * R * stride_tr + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
        q_left = tl.sum(q * t_left[None, :], axis=1)
        q_right = tl.sum(q * t_right[None, :], axis=1)
        do_left = tl.sum(g * t_left[None, :], axis=1)
        do_right = tl.sum(g * t_right[None, :], axis=1)
    else:
        q_left = tl.zeros([BLOCK_M], tl.float32)
        q_right = q_left
        do_left = q_left
        do_right = q_left
    hm = 1.0
    if HAS_HMASK:
        hm = tl.load(HMASK + b * stride_hb + h * stride_hh).to(tl.float32)
    stat = bh.to(tl.int64) * LQ + offs_m
    lse = tl.maximum(tl.load(ROW_MAX + stat, mask=m_valid, other=0.0), _LSE_MAX_FLOOR)
    lse += tl.load(ROW_LOGSUM + stat, mask=m_valid, other=0.0)
    tl.store(out + PLANE_QE_LEFT * STAT_ROWS, q_left, mask=m_valid)
    tl.store(out + (PLANE_QE_LEFT + 1) * STAT_ROWS, q_right, mask=m_valid)
    tl.store(out + PLANE_DE_LEFT * STAT_ROWS, do_left, mask=m_valid)
    tl.store(out + (PLANE_DE_LEFT + 1) * STAT_ROWS, do_right, mask=m_valid)
    tl.store(out + PLANE_LSE_LEFT * STAT_ROWS, (lse - scale * q_left) * LOG2E, mask=m_valid)
    tl.store(out + (PLANE_LSE_LEFT + 1) * STAT_ROWS, (lse - scale * q_right) * LOG2E, mask=m_valid)
    tl.store(out + PLANE_DLT_LEFT * STAT_ROWS, delta - hm * do_left, mask=m_valid)
    tl.store(out + (PLANE_DLT_LEFT + 1) * STAT_ROWS, delta - hm * do_right, mask=m_valid)


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
    rot,
    HEAD_DIM: tl.constexpr,
    RELATIVE: tl.constexpr,
    SINUSOID: tl.constexpr,
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
    SINUSOID (rotation.py): rot = (ROT, m0, rot_pos0, q_rows, g_rows, stride_qd, stride_gd, qd_mask), in-band biases
    Q_rot @ S_tile^T and dO_rot @ S_tile^T with the rows' angles m0 .. m0 + BLOCK_M - 1 and S rows measured from
    position rot_pos0 (the forward's block start); q / dO pair-swapped (rotation.rotate_rows_at) loaded from their
    rows' pointers q_rows / g_rows [BLOCK_M, 1].
    """
    # fp32 FMA dots: chunk the head dim (see dot.dot_nt); tensor-core dots stay whole.
    K_CHUNKS: tl.constexpr = min(4, q.shape[1] // 16) if FMA_DOTS else 1
    s = dot_nt(q, k, FMA_DOTS, K_CHUNKS)
    dw = tl.zeros_like(s)
    if not SINUSOID:
        dw = dot_nt(do, v, FMA_DOTS, K_CHUNKS)
    rel = offs_n[None, :] - pos[:, None]
    rel_min = j0 - (pos0 + BLOCK_M - 1)
    rel_max = j0 + BLOCK_N - 1 - pos0
    in_band = (rel_min < R) & (rel_max > -R)
    if RELATIVE:
        if in_band:
            if SINUSOID:
                # The key side here, the value side (dW) once p is built: fewer tiles live at once.
                ROT, m0, rot_pos0, q_rows, _, stride_qd, _, qd_mask = rot
                s_tile = load_positional(ROT, j0, rot_pos0, R, BLOCK_N, q.shape[1]).to(q.dtype)
                # q reloaded (cache hits): rotating the loaded q keeps its blocked copy live next to the dot operand.
                q_again = tl.load(q_rows + offs_d[None, :] * stride_qd, mask=qd_mask, other=0.0)
                q_rot = rotate_rows_at(q_again, q_rows + (offs_d ^ 1)[None, :] * stride_qd, qd_mask, ROT, m0)
                q_edge = tl.where(rel < 0, q_left[:, None], q_right[:, None])
                s += tl.where((rel > -R) & (rel < R), dot_nt(q_rot, s_tile, FMA_DOTS, K_CHUNKS), q_edge)
            else:
                s, dw = band_tile_terms(
                    s, dw, q, do, (T, stride_tr, stride_td, R), (q_left, q_right, do_left, do_right), offs_d,
                    m_valid, n_valid, rel, rel_min, ws, ws_row, HEAD_DIM, FMA_DOTS, BLOCK_M, BLOCK_N, BLOCK_P, BAND_P,
                )  # fmt: skip
        else:
            right = rel_min >= R
            s += tl.where(right, q_right, q_left)[:, None]
            if not SINUSOID:
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
    if SINUSOID:
        dw = dot_nt(do, v, FMA_DOTS, K_CHUNKS)
        if in_band:
            ROT, m0, rot_pos0, _, g_rows, _, stride_gd, qd_mask = rot
            s_tile = load_positional(ROT, j0, rot_pos0, R, BLOCK_N, q.shape[1]).to(do.dtype)
            do_again = tl.load(g_rows + offs_d[None, :] * stride_gd, mask=qd_mask, other=0.0)
            do_rot = rotate_rows_at(do_again, g_rows + (offs_d ^ 1)[None, :] * stride_gd, qd_mask, ROT, m0)
            do_edge = tl.where(rel < 0, do_left[:, None], do_right[:, None])
            dw += tl.where((rel > -R) & (rel < R), dot_nt(do_rot, s_tile, FMA_DOTS, K_CHUNKS), do_edge)
        else:
            dw += tl.where(rel_min >= R, do_right, do_left)[:, None]
    ds = p * (dw * coef - delta[:, None])
    return p * coef, ds
