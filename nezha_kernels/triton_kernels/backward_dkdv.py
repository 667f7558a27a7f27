"""dK/dV kernel on the flash skeleton: per key block, the query loop split at compile time into ranges.

For the key block [j0, j0 + BLOCK_N) the query tiles fall into four ranges (query_ranges): far right
(queries far above: every pair has j - p >= R, so every pair uses T[2R]), the band, far left (queries far below:
j - p <= -R, T[0]) and the last, partial, query tile. In a far range a query row's bias is one scalar per side,
q_i . T[edge] on the key side and dO_i . T[edge] on the value side, so the delta kernel folds them into per-row
statistics once per row (backward.STAT_PLANES): with the scores' natural-log statistics (m, log l) of the forward,

    lse_side_i   = ((m_i + log l_i) - scale q_i . T[edge]) * log2 e
    delta_side_i = delta_i - hm dO_i . T[edge]

and a far tile is exactly a plain flash backward tile, computed key-major (keys are the GEMMs' M rows, so at
BLOCK_N = 64 per warpgroup every GEMM is a wgmma on sm_90):

    P^T = exp2(K Q^T * (scale log2 e) - lse_side),   dS^T = P^T (V dO^T hm - delta_side),
    dV += P^T dO,   dK += dS^T Q   (scale applied once at the end, hm on dV once after the far loops).

Masks and dropout take the exact per-pair path (scores rebuilt from m, log l and q . T[edge]: a fully masked row,
max = finfo.min, keeps its 1/Lk weights) only where they are passed; bounds only on the partial tile. The band
and the partial tile run key-major too (dkdv_band_tile_loop: each pair's table row gathered from a per-tile table
slice product) on 16-row query tiles. FAR_LOOPS 0 runs the old general loop over every query tile instead
(dkdv_general_loop: backward.tile_grads, query-major) for the cases whose far loops spill (configs.skeleton_choice).

SINUSOID (NEZHA's own table, where the forward takes its rotation path: configs.rotation_band): band tiles compute
the key-side terms by the rotation instead of the table slice, S^T += S_tile Q_rot^T and dP^T += S_tile dO_rot^T
(rotation.py), with angles and S rows measured from the forward's ROT_BLOCK_M-row query blocks, and the out-of-band
pairs' edge terms from the statistics planes: every score is the forward's, so P rebuilt from the forward's m and
log l is the P the forward normalized. (Read from the bf16 table, p differed by the table's rounding.) Without key
padding, additive mask, dropout or the padding-free layout, and for 2R >= BLOCK_N (the launcher's ROTATION_LOOP), the
band's full query tiles run dkdv_rotation_band_loop instead: 32-query tiles, no bounds or masks, Q_rot and dO_rot read
from the delta kernel's copies (rotated once per row), the edge terms selected per query; the general loop keeps the
partial tail (benchmarks/NOTES.md "Triton dK/dV rotation band loop").
"""

import triton
import triton.language as tl

from . import configs
from .backward import (
    PLANE_DE_LEFT,
    PLANE_DELTA,
    PLANE_DLT_LEFT,
    PLANE_LSE_LEFT,
    PLANE_QE_LEFT,
    tile_grads,
)
from .band import MASKED_SCORE, load_table_slice
from .dot import dot, dot_nt
from .philox import philox_uniform
from .rotation import load_positional, rotate_rows_at
from .sequence import sequence_window
from .softmax import LOG2E, load_rows

ROTATION_LOOP_QUERIES = tl.constexpr(configs.ROTATION_LOOP_QUERIES)


@triton.jit
def query_ranges(
    j0,
    q_offset,
    lq,
    lo,
    R,
    RELATIVE: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_MB: tl.constexpr,
):
    """(band_lo, band_hi, full_end, general_end): the query loop of key block [j0, j0 + BLOCK_N) split into ranges.

    Query rows 0 .. lq - 1 at positions q_offset + i; the loop starts at lo (a multiple of BLOCK_M: causal
    skipping). [lo, band_lo) far right (every pair j - p >= R), [band_lo, band_hi) band, [band_hi, full_end) far
    left (j - p <= -R): multiples of BLOCK_M, full tiles only; [full_end, general_end) the last, partial, tile in
    BLOCK_MB steps. A tile is in the band when some pair has |j - p| < R (sequence.key_ranges, transposed). The
    plain twin (RELATIVE off) has a band only with causal: the diagonal tiles (R = 1).
    """
    full_end = tl.maximum((lq // BLOCK_M) * BLOCK_M, lo)
    general_end = tl.cdiv(lq, BLOCK_MB) * BLOCK_MB
    if RELATIVE or CAUSAL:
        r_band = R if RELATIVE else 1
        c = j0 - q_offset  # the block's first key, in query rows
        band_lo = tl.cdiv(tl.maximum(c - r_band - BLOCK_M + 2, 0), BLOCK_M) * BLOCK_M
        band_hi = tl.cdiv(tl.maximum(c + BLOCK_N - 1 + r_band, 0), BLOCK_M) * BLOCK_M
        band_lo = tl.minimum(tl.maximum(band_lo, lo), full_end)
        band_hi = tl.maximum(band_lo, tl.minimum(band_hi, full_end))
    else:
        band_lo = full_end
        band_hi = full_end
    return band_lo, band_hi, full_end, general_end


@triton.jit
def keep_factor_t(drop, offs_n, offs_m, bh):
    """fp32 [BLOCK_N, BLOCK_M]: 1 / (1 - p) where the pair (query offs_m, key offs_n) is kept, 0 where dropped.

    softmax.dropout_factor, key-major: the same Philox counters (key, query row, b*H + h), the same bits.
    """
    dropout_p, dropout_scale, seed_lo, seed_hi = drop
    cols = offs_n[:, None] + 0 * offs_m[None, :]
    rows = offs_m[None, :] + 0 * offs_n[:, None]
    u = philox_uniform(seed_lo, seed_hi, cols, rows, bh)
    return tl.where(u >= dropout_p, dropout_scale, 0.0)


@triton.jit
def mask_scores_t(
    st,
    b,
    h,
    offs_m,
    offs_n,
    n_valid,
    masks,
    HAS_KPAD: tl.constexpr,
    HAS_AMASK: tl.constexpr,
    ALL_MASKED: tl.constexpr,
):
    """band.mask_scores for a key-major far tile st [BLOCK_N, BLOCK_M] (full query tile; keys may run past lk).

    ALL_MASKED: causal on the far-right side, where every pair has j > p. Keys past lk score as masked (their
    rows are never stored; this keeps them finite).
    """
    KPAD, stride_pb, stride_pn, AMASK, stride_ab, stride_ah, stride_am, stride_an = masks
    st = tl.where(n_valid[:, None], st, MASKED_SCORE)
    if HAS_AMASK:
        ptrs = AMASK + b.to(tl.int64) * stride_ab + h.to(tl.int64) * stride_ah
        ptrs = ptrs + offs_m[None, :].to(tl.int64) * stride_am + offs_n[:, None] * stride_an
        st += tl.load(ptrs, mask=n_valid[:, None], other=0.0).to(tl.float32)
    if HAS_KPAD:
        keep = tl.load(KPAD + b.to(tl.int64) * stride_pb + offs_n * stride_pn, mask=n_valid, other=1)
        st = tl.where((keep == 0)[:, None], MASKED_SCORE, st)
    if ALL_MASKED:
        st = tl.zeros_like(st) + MASKED_SCORE
    return tl.maximum(st, MASKED_SCORE)


@triton.jit
def dkdv_far_loop(
    dk,
    dv,
    k,
    v,
    q_ptrs,
    g_ptrs,
    lo,
    hi,
    row_stats,
    hm,
    scale,
    stride_qm,
    stride_gm,
    d_valid,
    offs_n,
    n_valid,
    block,
    masks,
    drop,
    EVEN_D: tl.constexpr,
    SIDE: tl.constexpr,
    HAS_KPAD: tl.constexpr,
    HAS_AMASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    FMA_DOTS: tl.constexpr,
    K_CHUNKS: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Full query tiles [lo, hi) beyond the band on side SIDE (0: keys left of the queries, T[0]; 1: right, T[2R]).

    q_ptrs / g_ptrs: [BLOCK_M, BLOCK_D] pointers of the tile at query row lo; row_stats: (the statistics planes,
    their row count, row max, row log-sum), each at this sequence's row 0; block: (b, h, b*H + h, q_offset, j0).
    Returns (dk, dv) with dv's terms not yet multiplied by the head mask.
    """
    stats, STAT_ROWS, ROW_MAX, ROW_LOGSUM = row_stats
    b, h, bh, q_offset, j0 = block
    # Causal masks every far-right pair (j - p >= R > 0) and no far-left one.
    MASKED: tl.constexpr = HAS_KPAD or HAS_AMASK or (CAUSAL and SIDE == 1)
    EXACT: tl.constexpr = MASKED or HAS_DROPOUT
    qk_scale = scale * LOG2E
    for i0 in range(lo, hi, BLOCK_M):
        offs_m = i0 + tl.arange(0, BLOCK_M)
        q = load_rows(q_ptrs, d_valid, EVEN_D)
        do = load_rows(g_ptrs, d_valid, EVEN_D)
        st = dot_nt(k, q, FMA_DOTS, K_CHUNKS)
        if MASKED:
            row_max = tl.load(ROW_MAX + offs_m)
            row_logsum = tl.load(ROW_LOGSUM + offs_m)
            q_edge = tl.load(stats + (PLANE_QE_LEFT + SIDE) * STAT_ROWS + offs_m)
            st = mask_scores_t(
                (st + q_edge[None, :]) * scale, b, h, offs_m, offs_n, n_valid, masks, HAS_KPAD, HAS_AMASK,
                CAUSAL and SIDE == 1,
            )  # fmt: skip
            # (s - max) - log(sum), not s - lse: exact for a fully masked row (max = finfo.min, p = 1/Lk).
            pt = tl.math.exp2(((st - row_max[None, :]) - row_logsum[None, :]) * LOG2E)
        else:
            lse = tl.load(stats + (PLANE_LSE_LEFT + SIDE) * STAT_ROWS + offs_m)
            pt = tl.math.exp2(st * qk_scale - lse[None, :])
        # P^T's GEMM before dP^T's (FA2's order): S^T and dP^T are never live together.
        if HAS_DROPOUT:
            kf = keep_factor_t(drop, offs_n, offs_m, bh)
            dv = dot((pt * kf).to(do.dtype), do, dv, FMA_DOTS)
        else:
            dv = dot(pt.to(do.dtype), do, dv, FMA_DOTS)
        dpt = dot_nt(v, do, FMA_DOTS, K_CHUNKS)
        if EXACT:
            delta = tl.load(stats + PLANE_DELTA * STAT_ROWS + offs_m)
            do_edge = tl.load(stats + (PLANE_DE_LEFT + SIDE) * STAT_ROWS + offs_m)
            if HAS_DROPOUT:
                dst = pt * ((dpt + do_edge[None, :]) * (kf * hm) - delta[None, :])
            else:
                dst = pt * ((dpt + do_edge[None, :]) * hm - delta[None, :])
        else:
            dlt = tl.load(stats + (PLANE_DLT_LEFT + SIDE) * STAT_ROWS + offs_m)
            dst = pt * (dpt * hm - dlt[None, :])
        dk = dot(dst.to(q.dtype), q, dk, FMA_DOTS)
        q_ptrs += BLOCK_M * stride_qm
        g_ptrs += BLOCK_M * stride_gm
    return dk, dv


@triton.jit
def gather_rows_t(x, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """x [BLOCK_P, BLOCK_M] (x = T_slice @ rows^T) -> [BLOCK_N, BLOCK_M]: out[jj, ii] = x[jj - ii + BLOCK_M - 1, ii].

    band.band_gather, key-major: key jj's table-slice row for query ii (band.py).
    """
    jj = tl.arange(0, BLOCK_N)[:, None]
    ii = tl.arange(0, BLOCK_M)[None, :]
    return tl.gather(x, jj - ii + (BLOCK_M - 1), axis=0)


@triton.jit
def edge_pair_t(stats, STAT_ROWS, PLANE_LEFT: tl.constexpr, offs_m, m_valid, left):
    """[BLOCK_N, BLOCK_M] fp32: each pair's edge term from the delta kernel's planes PLANE_LEFT (T[0], where left)
    and PLANE_LEFT + 1 (T[2R])."""
    e_left = tl.load(stats + PLANE_LEFT * STAT_ROWS + offs_m, mask=m_valid, other=0.0)
    e_right = tl.load(stats + (PLANE_LEFT + 1) * STAT_ROWS + offs_m, mask=m_valid, other=0.0)
    return tl.where(left, e_left[None, :], e_right[None, :])


@triton.jit
def dkdv_band_tile_loop(
    dk,
    dv,
    k,
    v,
    q_base,
    g_base,
    lo,
    hi,
    lq,
    row_stats,
    hm,
    scale,
    strides,
    offs_d,
    d_valid,
    offs_n,
    n_valid,
    block,
    table,
    ROT,
    masks,
    drop,
    HEAD_DIM: tl.constexpr,
    RELATIVE: tl.constexpr,
    SINUSOID: tl.constexpr,
    ROT_BLOCK_M: tl.constexpr,
    HAS_KPAD: tl.constexpr,
    HAS_AMASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    FMA_DOTS: tl.constexpr,
    K_CHUNKS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Query tiles [lo, hi) of any kind (band, partial) next to the far loops, key-major like them.

    Each pair's table row comes from the tile's table slice (band.load_table_slice: clamped, so pairs beyond the band
    are exact too): S^T += gather(T_slice Q^T), dP^T += gather(T_slice dO^T), GEMMs with the BLOCK_N keys as rows
    (wgmma) and a [BLOCK_P, BLOCK_M] slice product; then masks, bounds and dropout per pair, the exact
    (s - max) - log(sum). dv includes the head mask.
    SINUSOID (rotation.py, the forward's scores exactly): in-band pairs S^T += S_tile Q_rot^T, dP^T += S_tile dO_rot^T
    (angles and S rows measured from the start of the forward's ROT_BLOCK_M-row query block holding the tile, as the
    forward measures them: the same rotated operands, rounded alike), the others the rows' edge terms from the
    statistics planes.
    """
    stride_qm, stride_qd, stride_gm, stride_gd = strides
    stats, STAT_ROWS, ROW_MAX, ROW_LOGSUM = row_stats
    b, h, bh, q_offset, j0 = block
    T, stride_tr, stride_td, R = table
    KPAD, stride_pb, stride_pn, AMASK, stride_ab, stride_ah, stride_am, stride_an = masks
    for i0 in range(lo, hi, BLOCK_M):
        offs_m = i0 + tl.arange(0, BLOCK_M)
        m_valid = offs_m < lq
        qd_mask = m_valid[:, None] & d_valid[None, :]
        q_rows = q_base + offs_m[:, None].to(tl.int64) * stride_qm
        g_rows = g_base + offs_m[:, None].to(tl.int64) * stride_gm
        q = tl.load(q_rows + offs_d[None, :] * stride_qd, mask=qd_mask, other=0.0)
        do = tl.load(g_rows + offs_d[None, :] * stride_gd, mask=qd_mask, other=0.0)
        st = dot_nt(k, q, FMA_DOTS, K_CHUNKS)
        if SINUSOID:
            block0 = (i0 // ROT_BLOCK_M) * ROT_BLOCK_M  # the forward's query block holding the tile
            q_rot = rotate_rows_at(q, q_rows + (offs_d ^ 1)[None, :] * stride_qd, qd_mask, ROT, i0 - block0)
            s_tile = load_positional(ROT, j0, q_offset + block0, R, BLOCK_N, q.shape[1]).to(q.dtype)
            rel = offs_n[:, None] - (q_offset + offs_m)[None, :]
            near = (rel > -R) & (rel < R)
            q_edge = edge_pair_t(stats, STAT_ROWS, PLANE_QE_LEFT, offs_m, m_valid, rel < 0)
            st += tl.where(near, dot_nt(s_tile, q_rot, FMA_DOTS, K_CHUNKS), q_edge)
        elif RELATIVE:
            base = j0 - (q_offset + i0) - (BLOCK_M - 1) + R
            ts = load_table_slice(T, stride_tr, stride_td, base, R, offs_d, HEAD_DIM, BLOCK_P).to(q.dtype)
            st += gather_rows_t(dot_nt(ts, q, FMA_DOTS, K_CHUNKS), BLOCK_M, BLOCK_N)
        s = st * scale
        valid = n_valid[:, None] & m_valid[None, :]
        if HAS_AMASK:
            ptrs = AMASK + b.to(tl.int64) * stride_ab + h.to(tl.int64) * stride_ah
            ptrs = ptrs + offs_m[None, :].to(tl.int64) * stride_am + offs_n[:, None] * stride_an
            s += tl.load(ptrs, mask=valid, other=0.0).to(tl.float32)
        if HAS_KPAD:
            keep = tl.load(KPAD + b.to(tl.int64) * stride_pb + offs_n * stride_pn, mask=n_valid, other=1)
            s = tl.where((keep == 0)[:, None], MASKED_SCORE, s)
        if CAUSAL:
            s = tl.where(offs_n[:, None] - (q_offset + offs_m)[None, :] > 0, MASKED_SCORE, s)
        s = tl.maximum(s, MASKED_SCORE)
        row_max = tl.load(ROW_MAX + offs_m, mask=m_valid, other=0.0)
        row_logsum = tl.load(ROW_LOGSUM + offs_m, mask=m_valid, other=0.0)
        # (s - max) - log(sum), not s - lse: exact for a fully masked row (max = finfo.min, p = 1/Lk).
        pt = tl.math.exp2(((s - row_max[None, :]) - row_logsum[None, :]) * LOG2E)
        pt = tl.where(valid, pt, 0.0)
        coef = hm
        if HAS_DROPOUT:
            coef = keep_factor_t(drop, offs_n, offs_m, bh) * hm
        dv = dot((pt * coef).to(do.dtype), do, dv, FMA_DOTS)
        dpt = dot_nt(v, do, FMA_DOTS, K_CHUNKS)
        if SINUSOID:
            do_rot = rotate_rows_at(do, g_rows + (offs_d ^ 1)[None, :] * stride_gd, qd_mask, ROT, i0 - block0)
            do_edge = edge_pair_t(stats, STAT_ROWS, PLANE_DE_LEFT, offs_m, m_valid, rel < 0)
            dpt += tl.where(near, dot_nt(s_tile, do_rot, FMA_DOTS, K_CHUNKS), do_edge)
        elif RELATIVE:
            dpt += gather_rows_t(dot_nt(ts, do, FMA_DOTS, K_CHUNKS), BLOCK_M, BLOCK_N)
        delta = tl.load(stats + PLANE_DELTA * STAT_ROWS + offs_m, mask=m_valid, other=0.0)
        dst = pt * (dpt * coef - delta[None, :])
        dk = dot(dst.to(q.dtype), q, dk, FMA_DOTS)
    return dk, dv


@triton.jit
def dkdv_rotation_band_loop(
    dk,
    dv,
    k,
    v,
    q_ptrs,
    g_ptrs,
    qr_ptrs,
    gr_ptrs,
    lo,
    hi,
    row_stats,
    hm,
    scale,
    stride_qm,
    stride_gm,
    d_valid,
    offs_n,
    block,
    R,
    ROTQ,
    EVEN_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    FMA_DOTS: tl.constexpr,
    K_CHUNKS: tl.constexpr,
    ROT_BLOCK_M: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Full band query tiles [lo, hi) by rotation, no per-pair feature but causal: (dk, dv), dv without the head mask.

    q_ptrs / g_ptrs / qr_ptrs / gr_ptrs: [BLOCK_M, BLOCK_D] pointers of the tiles at query row lo of Q, dO and of the
    delta kernel's q_rot and dO_rot (QROT / GROT, [B*H, LQ, BLOCK_D]: rotated once per row, not once per key block).
    The forward's scores, as dkdv_band_tile_loop computes them (q_rot, dO_rot and S rows from the start of the
    forward's ROT_BLOCK_M-row query block holding the tile), without bounds, masks or per-pair side selects.
    Needs 2R >= BLOCK_N (the launcher's ROTATION_LOOP): a key block of at most 2R keys holds a query's out-of-band
    keys on one side only (j <= p - R and j' >= p + R are 2R apart), the left one exactly when its first key is
    (p - j0 >= R), so the edge terms are per-query selects; near (|j - p| < R) and causal's j > p are two compares of
    one t = j - p + R - 1. ROTQ: the launcher's rotation table in q's dtype (rotation.rotation_table_as), so each
    tile's S rows are one pipelined copy into the wgmmas' shared operand (benchmarks/NOTES.md "S tile once per forward
    block": hoisting it into an outer loop over forward blocks spilled).
    """
    stats, STAT_ROWS, ROW_MAX, ROW_LOGSUM = row_stats
    b, h, bh, q_offset, j0 = block
    BLOCK_D: tl.constexpr = q_ptrs.shape[1]
    qk_scale = scale * LOG2E
    for i0 in range(lo, hi, BLOCK_M):
        offs_m = i0 + tl.arange(0, BLOCK_M)
        pos = q_offset + offs_m
        m0 = i0 % ROT_BLOCK_M  # the tile's first row in the forward's query block
        q = load_rows(q_ptrs, d_valid, EVEN_D)
        do = load_rows(g_ptrs, d_valid, EVEN_D)
        q_rot = load_rows(qr_ptrs, d_valid, EVEN_D)
        # The rotation table in q's dtype (the launcher's copy): copied straight into the wgmma's shared operand.
        s_tile = load_positional(ROTQ, j0, q_offset + i0 - m0, R, k.shape[0], BLOCK_D)
        st = dot_nt(k, q, FMA_DOTS, K_CHUNKS)
        q_bias = dot_nt(s_tile, q_rot, FMA_DOTS, K_CHUNKS)
        # One integer per pair: t = j - p + R - 1; in band (|j - p| < R) is t <u 2R - 1, causal's j > p is t > R - 1.
        t = offs_n[:, None] - (pos - R + 1)[None, :]
        near = t.to(tl.uint32, bitcast=True) < (2 * R - 1).to(tl.uint32)
        left = pos - j0 >= R
        # Both sides' planes, contiguous (pipelined copies), then one select per query: a per-query plane index
        # made every address a 64-bit product (51 instructions a tile, triton 3.9).
        q_edge = tl.where(
            left,
            tl.load(stats + PLANE_QE_LEFT * STAT_ROWS + offs_m),
            tl.load(stats + (PLANE_QE_LEFT + 1) * STAT_ROWS + offs_m),
        )
        s = st + tl.where(near, q_bias, q_edge[None, :])
        row_max = tl.load(ROW_MAX + offs_m)
        row_logsum = tl.load(ROW_LOGSUM + offs_m)
        # Natural-unit p = exp((s scale - max) - log sum) as one FFMA feeding EX2 (dkdv_far_loop's form).
        pt = tl.math.exp2(s * qk_scale + ((-row_max - row_logsum) * LOG2E)[None, :])
        if CAUSAL:
            # A masked pair's p, per query, as the general loop computes it ((MASKED_SCORE - max) - log sum): 0, or
            # 1/Lk in a fully masked row (max = MASKED_SCORE, band.py), whose other p (overflowed) are never taken.
            p_masked = tl.math.exp2((-(row_max - MASKED_SCORE) - row_logsum) * LOG2E)  # -(max - c): c - max exactly
            pt = tl.where(t > R - 1, p_masked[None, :], pt)
        dv = dot(pt.to(do.dtype), do, dv, FMA_DOTS)
        do_rot = load_rows(gr_ptrs, d_valid, EVEN_D)
        dpt = dot_nt(v, do, FMA_DOTS, K_CHUNKS)
        do_bias = dot_nt(s_tile, do_rot, FMA_DOTS, K_CHUNKS)
        # near again: not kept across the exponentials (ptxas packs kept predicates into registers bit by bit).
        near_again = t.to(tl.uint32, bitcast=True) < (2 * R - 1).to(tl.uint32)
        do_edge = tl.where(
            left,
            tl.load(stats + PLANE_DE_LEFT * STAT_ROWS + offs_m),
            tl.load(stats + (PLANE_DE_LEFT + 1) * STAT_ROWS + offs_m),
        )
        delta = tl.load(stats + PLANE_DELTA * STAT_ROWS + offs_m)
        dpt += tl.where(near_again, do_bias, do_edge[None, :])
        dst = pt * (dpt * hm - delta[None, :])
        dk = dot(dst.to(q.dtype), q, dk, FMA_DOTS)
        q_ptrs += BLOCK_M * stride_qm
        g_ptrs += BLOCK_M * stride_gm
        qr_ptrs += BLOCK_M * BLOCK_D
        gr_ptrs += BLOCK_M * BLOCK_D
    return dk, dv


@triton.jit
def dkdv_general_loop(
    dk,
    dv,
    k_ptrs,
    v_ptrs,
    kv_mask,
    q_base,
    g_base,
    lo,
    hi,
    lq,
    row_stats,
    hm,
    scale,
    strides,
    offs_d,
    d_valid,
    offs_n,
    n_valid,
    block,
    table,
    ROT,
    masks,
    drop,
    HEAD_DIM: tl.constexpr,
    RELATIVE: tl.constexpr,
    SINUSOID: tl.constexpr,
    ROT_BLOCK_M: tl.constexpr,
    HAS_KPAD: tl.constexpr,
    HAS_AMASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    FMA_DOTS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Every query tile [lo, hi) with FAR_LOOPS 0, BLOCK_M rows each: the old kernel's general loop.

    The general path of backward.tile_grads (per-tile table slices; SINUSOID: the rotation, measured from the start
    of the forward's ROT_BLOCK_M-row query block), query-major; dv includes the head mask.
    """
    k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
    v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    stride_qm, stride_qd, stride_gm, stride_gd = strides
    stats, STAT_ROWS, ROW_MAX, ROW_LOGSUM = row_stats
    b, h, bh, q_offset, j0 = block
    T, stride_tr, stride_td, R = table
    KPAD, stride_pb, stride_pn, AMASK, stride_ab, stride_ah, stride_am, stride_an = masks
    dropout_p, dropout_scale, seed_lo, seed_hi = drop
    for i0 in range(lo, hi, BLOCK_M):
        offs_m = i0 + tl.arange(0, BLOCK_M)
        m_valid = offs_m < lq
        qd_mask = m_valid[:, None] & d_valid[None, :]
        q_rows = q_base + offs_m[:, None].to(tl.int64) * stride_qm
        g_rows = g_base + offs_m[:, None].to(tl.int64) * stride_gm
        q = tl.load(q_rows + offs_d[None, :] * stride_qd, mask=qd_mask, other=0.0)
        do = tl.load(g_rows + offs_d[None, :] * stride_gd, mask=qd_mask, other=0.0)
        row_max = tl.load(ROW_MAX + offs_m, mask=m_valid, other=0.0)
        row_logsum = tl.load(ROW_LOGSUM + offs_m, mask=m_valid, other=0.0)
        delta = tl.load(stats + PLANE_DELTA * STAT_ROWS + offs_m, mask=m_valid, other=0.0)
        q_left = tl.load(stats + PLANE_QE_LEFT * STAT_ROWS + offs_m, mask=m_valid, other=0.0)
        q_right = tl.load(stats + (PLANE_QE_LEFT + 1) * STAT_ROWS + offs_m, mask=m_valid, other=0.0)
        do_left = tl.load(stats + PLANE_DE_LEFT * STAT_ROWS + offs_m, mask=m_valid, other=0.0)
        do_right = tl.load(stats + (PLANE_DE_LEFT + 1) * STAT_ROWS + offs_m, mask=m_valid, other=0.0)
        block0 = i0
        if SINUSOID:
            block0 = (i0 // ROT_BLOCK_M) * ROT_BLOCK_M  # the forward's query block holding the tile
        w, ds = tile_grads(
            q, do, k, v, T, stride_tr, stride_td, q_left, q_right, do_left, do_right, offs_d, row_max, row_logsum,
            delta, hm, b, h, bh, offs_m, offs_n, m_valid, n_valid, q_offset + offs_m, q_offset + i0, j0, KPAD,
            stride_pb, stride_pn, AMASK, stride_ab, stride_ah, stride_am, stride_an, R, scale, dropout_p,
            dropout_scale, seed_lo, seed_hi, T, 0,
            (ROT, i0 - block0, q_offset + block0, q_rows, g_rows, stride_qd, stride_gd, qd_mask), HEAD_DIM, RELATIVE,
            SINUSOID, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, BLOCK_M, BLOCK_N, BLOCK_P, 0,
        )  # fmt: skip
        dv += dot(tl.trans(w).to(do.dtype), do, None, FMA_DOTS)
        dk += dot(tl.trans(ds).to(q.dtype), q, None, FMA_DOTS)
    return dk, dv


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "Q_OFFSET"])
def _relattn_bwd_dkdv_kernel(
    Q,
    K,
    V,
    T,
    DOUT,
    ROW_MAX,
    ROW_LOGSUM,
    STATS,
    DK,
    DV,
    ROT,
    QROT,
    GROT,
    ROTQ,
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
    STAT_ROWS,
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
    SINUSOID: tl.constexpr,
    ROT_BLOCK_M: tl.constexpr,
    ROTATION_LOOP: tl.constexpr,
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
    FAR_LOOPS: tl.constexpr,
):
    """Per key block of one (b, h): dK, dV by loops over query tiles (see the module docstring).

    STATS: the delta kernel's [STAT_PLANES, STAT_ROWS] fp32 per-row statistics (backward.py). Contiguous outputs:
    [B, H, Lk, D] dense, [Tk, H, D] varlen (sequence.py). SINUSOID: the band by rotation (rotation.py; ROT the
    launcher's rotation table) with angles measured from the starts of the forward's ROT_BLOCK_M-row query blocks,
    so that every score is the forward's (its rotated q and S rows, rounded alike): P rebuilt from the forward's
    row statistics is then the P the forward normalized. ROTQ: ROT in q's dtype, for the rotation band loop
    (ROTATION_LOOP; else a dummy never read).
    """
    # The general loop's query tile: at most 1024 scores per program, so its per-pair band work (table-slice
    # products [BLOCK_MB, BLOCK_P], gathers) stays in registers next to the key block's dK / dV accumulators.
    BLOCK_MB: tl.constexpr = max(16, min(BLOCK_M, 1024 // BLOCK_N))
    tl.static_assert(BLOCK_P >= BLOCK_MB + BLOCK_N - 1)
    # Each query tile lies in one of the forward's blocks (rotation.py's table covers blocks of up to 128 rows).
    tl.static_assert(not SINUSOID or (RELATIVE and ROT_BLOCK_M % BLOCK_MB == 0 and ROT_BLOCK_M <= 128))
    K_CHUNKS: tl.constexpr = min(4, BLOCK_D // 16) if FMA_DOTS else 1  # see dot.dot_nt
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    # The band's full query tiles by rotation without per-pair features (dkdv_rotation_band_loop; the launcher sets
    # ROTATION_LOOP where 2R >= BLOCK_N, configs.rotation_loop) run query tiles of at most ROTATION_LOOP_QUERIES rows;
    # the general loop keeps the partial tail.
    PLAIN_ROTATION: tl.constexpr = (
        ROTATION_LOOP and SINUSOID and FAR_LOOPS > 0 and not (HAS_KPAD or HAS_AMASK or HAS_DROPOUT or VARLEN)
    )
    BLOCK_MR: tl.constexpr = min(BLOCK_M, ROTATION_LOOP_QUERIES)
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
    k_ptrs = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + k_rows * stride_kn
    k_ptrs += offs_d[None, :] * stride_kd
    v_ptrs = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh + k_rows * stride_vn
    v_ptrs += offs_d[None, :] * stride_vd
    hm = 1.0
    if HAS_HMASK:
        hm = tl.load(HMASK + b * stride_hb + h * stride_hh).to(tl.float32)
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + q_start.to(tl.int64) * stride_qm
    g_base = DOUT + b.to(tl.int64) * stride_gb + h.to(tl.int64) * stride_gh + q_start.to(tl.int64) * stride_gm
    # The planes' row count as int64 (plane * rows passes 2**31 at 2**28 rows).
    row_stats = (STATS + stat_row0, STAT_ROWS + stat_row0 * 0, ROW_MAX + stat_row0, ROW_LOGSUM + stat_row0)
    block = (b, h, bh, q_offset, j0)
    masks = (KPAD, stride_pb, stride_pn, AMASK, stride_ab, stride_ah, stride_am, stride_an)
    drop = (dropout_p, dropout_scale, seed_lo, seed_hi)
    table = (T, stride_tr, stride_td, R)
    strides = (stride_qm, stride_qd, stride_gm, stride_gd)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo = 0
    if CAUSAL_SKIP:
        # Query rows at positions < j0 give these keys zero weight, unless fully masked (positions < 0,
        # only when q_offset < 0: see sequence.py).
        lo = tl.where(q_offset >= 0, (tl.maximum(j0 - q_offset, 0) // BLOCK_M) * BLOCK_M, 0)
    band_lo, band_hi, full_end, general_end = query_ranges(
        j0, q_offset, lq, lo, R, RELATIVE, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_MB
    )
    if FAR_LOOPS > 0:
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        q_tile = tl.arange(0, BLOCK_M)[:, None] * stride_qm + offs_d[None, :] * stride_qd
        g_tile = tl.arange(0, BLOCK_M)[:, None] * stride_gm + offs_d[None, :] * stride_gd
        # Far right first (queries far above the keys: every pair j - p >= R), then far left (far below).
        dk, dv = dkdv_far_loop(
            dk, dv, k, v, q_base + lo.to(tl.int64) * stride_qm + q_tile, g_base + lo.to(tl.int64) * stride_gm + g_tile,
            lo, band_lo, row_stats, hm, scale, stride_qm, stride_gm, d_valid, offs_n, n_valid, block, masks, drop,
            EVEN_D, 1, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, K_CHUNKS, BLOCK_M,
        )  # fmt: skip
        dk, dv = dkdv_far_loop(
            dk, dv, k, v, q_base + band_hi.to(tl.int64) * stride_qm + q_tile,
            g_base + band_hi.to(tl.int64) * stride_gm + g_tile, band_hi, full_end, row_stats, hm, scale, stride_qm,
            stride_gm, d_valid, offs_n, n_valid, block, masks, drop,
            EVEN_D, 0, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, K_CHUNKS, BLOCK_M,
        )  # fmt: skip
        if PLAIN_ROTATION:
            r_tile = tl.arange(0, BLOCK_MR)[:, None] * stride_qm + offs_d[None, :] * stride_qd
            g_rtile = tl.arange(0, BLOCK_MR)[:, None] * stride_gm + offs_d[None, :] * stride_gd
            rot_tile = tl.arange(0, BLOCK_MR)[:, None] * BLOCK_D + offs_d[None, :]
            rot_base = (bh.to(tl.int64) * LQ + band_lo) * BLOCK_D
            dk, dv = dkdv_rotation_band_loop(
                dk, dv, k, v, q_base + band_lo.to(tl.int64) * stride_qm + r_tile,
                g_base + band_lo.to(tl.int64) * stride_gm + g_rtile, QROT + rot_base + rot_tile,
                GROT + rot_base + rot_tile, band_lo, band_hi, row_stats, hm, scale, stride_qm, stride_gm, d_valid,
                offs_n, block, R, ROTQ,
                EVEN_D, CAUSAL, FMA_DOTS, K_CHUNKS, ROT_BLOCK_M, BLOCK_MR,
            )  # fmt: skip
        if HAS_HMASK:
            dv = dv * hm  # the far loops' and the rotation loop's P^T dO, before the general loop's (carrying hm)
        if not PLAIN_ROTATION:
            dk, dv = dkdv_band_tile_loop(
                dk, dv, k, v, q_base, g_base, band_lo, band_hi, lq, row_stats, hm, scale, strides,
                offs_d, d_valid, offs_n, n_valid, block, table, ROT, masks, drop,
                HEAD_DIM, RELATIVE, SINUSOID, ROT_BLOCK_M, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS,
                K_CHUNKS, BLOCK_MB, BLOCK_N, BLOCK_P,
            )  # fmt: skip
        dk, dv = dkdv_band_tile_loop(
            dk, dv, k, v, q_base, g_base, full_end, general_end, lq, row_stats, hm, scale,
            strides, offs_d, d_valid, offs_n, n_valid, block, table, ROT, masks, drop,
            HEAD_DIM, RELATIVE, SINUSOID, ROT_BLOCK_M, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, K_CHUNKS,
            BLOCK_MB, BLOCK_N, BLOCK_P,
        )  # fmt: skip
    else:
        # One general loop over every query tile (see configs.skeleton_choice).
        dk, dv = dkdv_general_loop(
            dk, dv, k_ptrs, v_ptrs, kv_mask, q_base, g_base, lo, general_end, lq, row_stats, hm, scale, strides,
            offs_d, d_valid, offs_n, n_valid, block, table, ROT, masks, drop,
            HEAD_DIM, RELATIVE, SINUSOID, ROT_BLOCK_M, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, BLOCK_MB,
            BLOCK_N, BLOCK_P,
        )  # fmt: skip

    if VARLEN:
        out_off = (k_rows * H + h) * HEAD_DIM + offs_d[None, :]
    else:
        out_off = bh.to(tl.int64) * LK * HEAD_DIM + offs_n[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
    tl.store(DK + out_off, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=kv_mask)
