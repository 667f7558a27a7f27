"""dQ kernel on the flash skeleton (the forward's key ranges, sequence.key_ranges).

Far tiles (dq_far_loop): p = exp2(qk * scale log2 e + addend_row) with the row's edge term, max and log-sum in
one per-row addend; dS = p (dO.v hm + (dO . T_edge hm - delta)) (one FFMA and one FMUL per score without dropout);
dQ += dS @ K; the edge row's dQ term is the row sum of dS times T[0] or T[2R], once at the end. The band and the
partial last tile run the general path (dq_tile: block-band scratch, per-tile table slices, or with NEZHA's own
sinusoid (SINUSOID) the rotation identity of rotation.py: in-band terms Q_rot @ S_tile^T and dO_rot @ S_tile^T, and
the table term of dQ as u += dS_band @ S_tile, rotated back when the band-loop call ends).
With SINUSOID, the full far loops (no key padding, additive mask or dropout) and 2R >= its key tile (ROTATION_LOOP,
configs.rotation_loop), the band's full tiles run dq_rotation_band_loop instead: no bounds or masks, the edge
term and the out-of-band dS row sums per row, not per pair.
Where the delta kernel has written q_rot and dO_rot (ROT_BLOCK_M > 0: the calls whose dK/dV runs its rotation band
loop) and its blocks are this kernel's (ROT_BLOCK_M == BLOCK_M), dQ loads them instead of rotating q and dO.
"""

import triton
import triton.language as tl

from . import configs
from .band import MASKED_SCORE, band_bucket, band_tile_terms, edge_terms, load_band_table, load_table_slice, mask_tile
from .dot import dot, dot_nt
from .forward import block_ptrs
from .rotation import add_rotated_back, band_positional_ptrs, load_positional, rotate_query, scale_add_sinusoid_edges
from .sequence import key_ranges, sequence_window
from .softmax import LOG2E, keep_factor, load_rows, tile_ptrs

ROTATION_LOOP_KEYS = tl.constexpr(configs.ROTATION_LOOP_KEYS)


@triton.jit
def dq_far_loop(
    dq,
    q,
    do,
    k_ptrs,
    v_ptrs,
    lo,
    hi,
    q_edge,
    do_edge,
    ds_sum,
    stats,
    scale,
    stride_kn,
    stride_vn,
    d_valid,
    rows,
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
    BLOCK_N: tl.constexpr,
):
    """Full key tiles [lo, hi) beyond the band on side SIDE (softmax.far_loop): (dq, ds_sum + the side's row sum of
    dS).

    stats: (row_max, row_logsum, delta, hm) of the program's rows. ds_sum [BLOCK_M]: the sum so far (the right side
    starts from the band's, so the two are not both live over the loop).
    """
    row_max, row_logsum, delta, hm = stats
    MASKED: tl.constexpr = HAS_KPAD or HAS_AMASK or (CAUSAL and SIDE == 1)
    qk_scale = scale * LOG2E
    p_addend = (q_edge * scale - row_max - row_logsum) * LOG2E
    ds_addend = do_edge * hm - delta
    for j0 in range(lo, hi, BLOCK_N):
        k = load_rows(k_ptrs, d_valid, EVEN_D)
        v = load_rows(v_ptrs, d_valid, EVEN_D)
        qk = dot_nt(q, k, FMA_DOTS, K_CHUNKS)
        offs_n = j0 + tl.arange(0, BLOCK_N)
        if MASKED:
            s = (qk + q_edge[:, None]) * scale
            s = mask_tile(
                s, tl.full(s.shape, 1, tl.int32), rows, offs_n, offs_n >= 0, masks, HAS_KPAD, HAS_AMASK,
                CAUSAL and SIDE == 1,
            )  # fmt: skip
            # (s - max) - log(sum), not s - lse: exact for a fully masked row (max = finfo.min, p = 1/Lk).
            p = tl.math.exp2(((s - row_max[:, None]) - row_logsum[:, None]) * LOG2E)
        else:
            p = tl.math.exp2(qk * qk_scale + p_addend[:, None])
        dp = dot_nt(do, v, FMA_DOTS, K_CHUNKS)
        if HAS_DROPOUT:
            coef = keep_factor(drop, rows, offs_n) * hm
            ds = p * ((dp + do_edge[:, None]) * coef - delta[:, None])
        else:
            ds = p * (dp * hm + ds_addend[:, None])
        ds_sum += tl.sum(ds, axis=1)
        dq = dot(ds.to(k.dtype), k, dq, FMA_DOTS)
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return dq, ds_sum


@triton.jit
def dq_tile(
    q,
    do,
    k,
    v,
    table,
    edges,
    offs_d,
    stats,
    rows,
    offs_n,
    n_valid,
    pos,
    pos0,
    j0,
    masks,
    drop,
    scale,
    ws,
    ws_row,
    rot,
    s_tile,
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
    UNBRANCHED: tl.constexpr,
):
    """One (query block, key tile) pair of the dQ kernel: dS fp32 [BLOCK_M, BLOCK_N] (backward.py's formulas).

    edges: (q . T[0], q . T[2R], dO . T[0], dO . T[2R]) [BLOCK_M]. BAND_P > 0 (block-band mode): in-band biases
    are read from the block's scratch rows ws + ws_row (columns [0, BAND_P): Q @ Tb^T, [BAND_P, 2 BAND_P):
    dO @ Tb^T); BAND_P == 0: per-tile table slices. UNBRANCHED: the tile is in or next to the band (the split loops'
    band and tail, with BRANCHLESS_BAND), so the table path runs without a branch on the tile's position.
    SINUSOID (rotation.py): rot = (ROT, q_rot, do_rot), in-band terms Q_rot @ S_tile^T and dO_rot @ S_tile^T.
    """
    _, _, _, R = table
    _, q_rot, do_rot = rot
    q_left, q_right, do_left, do_right = edges
    row_max, row_logsum, delta, hm = stats
    _, _, _, _, m_valid = rows
    # fp32 FMA dots: chunk the head dim (see dot.dot_nt); tensor-core dots stay whole.
    K_CHUNKS: tl.constexpr = min(4, q.shape[1] // 16) if FMA_DOTS else 1
    s = dot_nt(q, k, FMA_DOTS, K_CHUNKS)
    dw = dot_nt(do, v, FMA_DOTS, K_CHUNKS)
    rel = offs_n[None, :] - pos[:, None]
    rel_min = j0 - (pos0 + BLOCK_M - 1)
    rel_max = j0 + BLOCK_N - 1 - pos0
    if SINUSOID:
        near = (rel > -R) & (rel < R)
        left = rel < 0
        q_edge = tl.where(left, q_left[:, None], q_right[:, None])
        do_edge = tl.where(left, do_left[:, None], do_right[:, None])
        s += tl.where(near, dot_nt(q_rot, s_tile, FMA_DOTS, K_CHUNKS), q_edge)
        dw += tl.where(near, dot_nt(do_rot, s_tile, FMA_DOTS, K_CHUNKS), do_edge)
    elif RELATIVE:
        if UNBRANCHED:
            # No runtime branch around the scratch loads (configs.dq_branchless_band): in a pipelined loop one
            # fails triton 3.6's sm_90 pipeliner (benchmarks/NOTES.md "Triton 3.6 pipelining on sm_90"); a tile
            # beyond the band gets its edge terms from the where's other arm.
            s, dw = band_tile_terms(
                s, dw, q, do, table, edges, offs_d, m_valid, n_valid, rel, rel_min, ws, ws_row,
                HEAD_DIM, FMA_DOTS, BLOCK_M, BLOCK_N, BLOCK_P, BAND_P,
            )  # fmt: skip
        elif (rel_min < R) & (rel_max > -R):
            s, dw = band_tile_terms(
                s, dw, q, do, table, edges, offs_d, m_valid, n_valid, rel, rel_min, ws, ws_row,
                HEAD_DIM, FMA_DOTS, BLOCK_M, BLOCK_N, BLOCK_P, BAND_P,
            )  # fmt: skip
        else:
            right = rel_min >= R
            s += tl.where(right, q_right, q_left)[:, None]
            dw += tl.where(right, do_right, do_left)[:, None]
    s = mask_tile(s * scale, rel, rows, offs_n, n_valid, masks, HAS_KPAD, HAS_AMASK, CAUSAL)
    # (s - max) - log(sum), not s - lse: exact for a fully masked row (max = finfo.min, p = 1/Lk).
    p = tl.exp((s - row_max[:, None]) - row_logsum[:, None])
    p = tl.where(m_valid[:, None] & n_valid[None, :], p, 0.0)
    coef = tl.zeros_like(p) + hm
    if HAS_DROPOUT:
        coef = coef * keep_factor(drop, rows, offs_n)
    return p * (dw * coef - delta[:, None])


@triton.jit
def dq_band_tile_values(
    dq,
    ds_left,
    ds_right,
    ds,
    table,
    offs_d,
    offs_n,
    n_valid,
    rows,
    q_offset,
    rel_min,
    ws,
    ws_row,
    HEAD_DIM: tl.constexpr,
    FMA_DOTS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BAND_P: tl.constexpr,
):
    """(dq, ds_left, ds_right) after the table side of a tile's dS (exact for any tile): block-band mode stores the
    in-band dS in the scratch slots and adds the rest to the edge rows' sums; per-tile mode adds bucket(dS) @ T_slice
    (rows clamped to T[0] / T[2R] beyond the band). Both arms of dq_band_loop's table path (UNBRANCHED or not)."""
    T, stride_tr, stride_td, R = table
    _, _, _, offs_m, m_valid = rows
    if BAND_P > 0:
        rel = offs_n[None, :] - (q_offset + offs_m)[:, None]
        near = (rel > -R) & (rel < R)
        tl.store(ws + (ws_row + (rel + (R - 1))), ds, mask=near & m_valid[:, None] & n_valid[None, :])
        far = tl.where(near, 0.0, ds)
        ds_left += tl.sum(tl.where(rel < 0, far, 0.0), axis=1)
        ds_right += tl.sum(tl.where(rel > 0, far, 0.0), axis=1)
    else:
        ts = load_table_slice(T, stride_tr, stride_td, rel_min + R, R, offs_d, HEAD_DIM, BLOCK_P)
        dq += dot(band_bucket(ds, BLOCK_M, BLOCK_N, BLOCK_P).to(ts.dtype), ts, None, FMA_DOTS)
    return dq, ds_left, ds_right


@triton.jit
def dq_band_loop(
    dq,
    q,
    do,
    kv,
    lo,
    hi,
    lk,
    table,
    edges,
    offs_d,
    d_valid,
    stats,
    rows,
    q_offset,
    pos0,
    masks,
    drop,
    scale,
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
    UNBRANCHED: tl.constexpr,
):
    """Key tiles [lo, hi) of any kind (band, partial): (dq, ds_left, ds_right), the edge rows' dS row sums.

    SINUSOID: dQ's in-band table term sum_j dS_ij a_ij is sum_j dS_band_ij s_j rotated back, one P_band-like dot per
    tile into u, rotated back and added to dq when the loop ends.
    """
    k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd = kv
    _, _, _, R = table
    ROT, _, _ = rot
    _, _, _, offs_m, _ = rows
    _, _, delta, _ = stats
    ds_left = tl.zeros_like(delta)
    ds_right = tl.zeros_like(delta)
    if SINUSOID:
        u = tl.zeros_like(dq)
    for j0 in range(lo, hi, BLOCK_N):
        offs_n = j0 + tl.arange(0, BLOCK_N)
        n_valid = offs_n < lk
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(
            k_base + offs_n[:, None].to(tl.int64) * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0
        )
        v = tl.load(
            v_base + offs_n[:, None].to(tl.int64) * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0
        )
        s_tile = k
        if SINUSOID:
            s_tile = load_positional(ROT, j0, pos0, R, BLOCK_N, q.shape[1]).to(q.dtype)
        ds = dq_tile(
            q, do, k, v, table, edges, offs_d, stats, rows, offs_n, n_valid, q_offset + offs_m, pos0, j0, masks, drop,
            scale, ws, ws_row, rot, s_tile,
            HEAD_DIM, RELATIVE, SINUSOID, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, BLOCK_M, BLOCK_N, BLOCK_P,
            BAND_P, UNBRANCHED,
        )  # fmt: skip
        dq += dot(ds.to(k.dtype), k, None, FMA_DOTS)
        if SINUSOID:
            rel = offs_n[None, :] - (q_offset + offs_m)[:, None]
            near = (rel > -R) & (rel < R)
            u += dot(tl.where(near, ds, 0.0).to(s_tile.dtype), s_tile, None, FMA_DOTS)
            far = tl.where(near, 0.0, ds)
            ds_left += tl.sum(tl.where(rel < 0, far, 0.0), axis=1)
            ds_right += tl.sum(tl.where(rel > 0, far, 0.0), axis=1)
        elif RELATIVE:
            rel_min = j0 - (pos0 + BLOCK_M - 1)
            rel_max = j0 + BLOCK_N - 1 - pos0
            if UNBRANCHED:  # unbranched, as in dq_tile
                dq, ds_left, ds_right = dq_band_tile_values(
                    dq, ds_left, ds_right, ds, table, offs_d, offs_n, n_valid, rows, q_offset, rel_min, ws, ws_row,
                    HEAD_DIM, FMA_DOTS, BLOCK_M, BLOCK_N, BLOCK_P, BAND_P,
                )  # fmt: skip
            elif (rel_min < R) & (rel_max > -R):
                dq, ds_left, ds_right = dq_band_tile_values(
                    dq, ds_left, ds_right, ds, table, offs_d, offs_n, n_valid, rows, q_offset, rel_min, ws, ws_row,
                    HEAD_DIM, FMA_DOTS, BLOCK_M, BLOCK_N, BLOCK_P, BAND_P,
                )  # fmt: skip
            elif rel_min >= R:
                ds_right += tl.sum(ds, axis=1)
            else:
                ds_left += tl.sum(ds, axis=1)
    if SINUSOID:
        dq = add_rotated_back(dq, u, ROT, BLOCK_M, q.shape[1])
    return dq, ds_left, ds_right


@triton.jit
def dq_rotation_band_loop(
    dq,
    q,
    do,
    q_rot,
    do_rot,
    k_ptrs,
    v_ptrs,
    s_ptrs,
    lo,
    hi,
    pos,
    R,
    edges,
    stats,
    scale,
    stride_kn,
    stride_vn,
    d_valid,
    ROT,
    EVEN_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    FMA_DOTS: tl.constexpr,
    K_CHUNKS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Full band tiles [lo, hi) by rotation, no per-pair feature but causal: (dq, ds_left, ds_right).

    k_ptrs / v_ptrs / s_ptrs: [BLOCK_N, BLOCK_D] pointers of the K, V and S tiles at key lo (s:
    rotation.band_positional_ptrs).
    Needs 2R >= BLOCK_N: a tile of at most 2R keys holds a row's out-of-band keys on one side only (j <= p - R and
    j' >= p + R are 2R apart), the left one exactly when its first key is (as softmax.rotation_band_loop). So the
    edge terms are per-row selects and the tile's out-of-band dS row sum, sum(dS - dS_band), goes to that side
    whole. u = sum dS_band @ S_tile is rotated back into dq at the end.
    """
    q_left, q_right, do_left, do_right = edges
    row_max, row_logsum, delta, hm = stats
    qk_scale = scale * LOG2E
    # Natural-unit p = exp((s scale - max) - log sum) as one FFMA feeding EX2 (dq_far_loop's unmasked form).
    p_addend = (-row_max - row_logsum) * LOG2E
    ds_left = tl.zeros_like(delta)
    ds_right = tl.zeros_like(delta)
    u = tl.zeros_like(dq)
    offs_n = tl.arange(0, BLOCK_N)
    for j0 in range(lo, hi, BLOCK_N):
        k = load_rows(k_ptrs, d_valid, EVEN_D)
        v = load_rows(v_ptrs, d_valid, EVEN_D)
        s_tile = tl.load(s_ptrs).to(q.dtype)
        qk = dot_nt(q, k, FMA_DOTS, K_CHUNKS)
        dw = dot_nt(do, v, FMA_DOTS, K_CHUNKS)
        q_bias = dot_nt(q_rot, s_tile, FMA_DOTS, K_CHUNKS)
        do_bias = dot_nt(do_rot, s_tile, FMA_DOTS, K_CHUNKS)
        # Key offsets within the tile against each row's position: j - p = offs_n - p0.
        p0 = pos - j0
        near = (offs_n[None, :] > (p0 - R)[:, None]) & (offs_n[None, :] < (p0 + R)[:, None])
        left = p0 >= R
        s = qk + tl.where(near, q_bias, tl.where(left, q_left, q_right)[:, None])
        if CAUSAL:
            # Scaled, then masked: a fully masked row's max is MASKED_SCORE and its weights 1/Lk (band.py).
            s = tl.where(offs_n[None, :] > p0[:, None], MASKED_SCORE, s * scale)
            p = tl.math.exp2(((s - row_max[:, None]) - row_logsum[:, None]) * LOG2E)
        else:
            p = tl.math.exp2(s * qk_scale + p_addend[:, None])
        dw += tl.where(near, do_bias, tl.where(left, do_left, do_right)[:, None])
        ds = p * (dw * hm - delta[:, None])
        # near again, one unsigned compare: not kept across the exponentials.
        near2 = (offs_n[None, :] - (p0 - R + 1)[:, None]).to(tl.uint32) < (2 * R - 1)
        ds_band = tl.where(near2, ds, 0.0)
        if CAUSAL:
            # Two reductions: one over dS - dS_band spilled 8-24 B next to the causal select.
            out = tl.sum(ds, axis=1) - tl.sum(ds_band, axis=1)
        else:
            out = tl.sum(ds - ds_band, axis=1)  # one row reduction, exact: 0 in band, dS beyond
        ds_left += tl.where(left, out, 0.0)
        ds_right += tl.where(left, 0.0, out)
        dq = dot(ds.to(k.dtype), k, dq, FMA_DOTS)
        u = dot(ds_band.to(s_tile.dtype), s_tile, u, FMA_DOTS)
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
        s_ptrs += BLOCK_N * q.shape[1]
    dq = add_rotated_back(dq, u, ROT, q.shape[0], q.shape[1])
    return dq, ds_left, ds_right


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
    ROT,
    QROT,
    GROT,
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
    SINUSOID: tl.constexpr,
    ROTATION_LOOP: tl.constexpr,
    ROT_BLOCK_M: tl.constexpr,
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
    BAND_P: tl.constexpr,
    FAR_LOOPS: tl.constexpr,
    BRANCHLESS_BAND: tl.constexpr,
):
    tl.static_assert(BLOCK_P >= BLOCK_M + BLOCK_N - 1)
    tl.static_assert(not SINUSOID or (BAND_P == 0 and BLOCK_M <= 128 and RELATIVE))  # as in forward.py
    tl.static_assert(not VARLEN or ROT_BLOCK_M == 0)  # the delta kernel writes QROT / GROT for dense calls only
    # Block-band scratch in chunks of table rows; 16 for the 128-row tile at wide heads (D = 128: 32-row chunks kept
    # index values live to the epilogue in local memory, 16 B; benchmarks/NOTES.md "Triton D = 128 backward on wgmma").
    BAND_CHUNK: tl.constexpr = min(16 if BLOCK_D > 64 and BLOCK_M >= 128 else 32, BAND_P)
    K_CHUNKS: tl.constexpr = min(4, BLOCK_D // 16) if FMA_DOTS else 1  # see dot.dot_nt
    BLOCK_NB: tl.constexpr = max(16, min(BLOCK_N, 2048 // BLOCK_M))  # the general loop's key tile (forward.py)
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    # The far loops' key width (configs.far_loops): the tile's, or the general loop's where per-pair features
    # (masks, dropout) would make the wide far tile spill; none (FAR_LOOPS 0): one general loop over every key.
    BLOCK_NF: tl.constexpr = BLOCK_N if FAR_LOOPS == 2 else BLOCK_NB
    # The band's full tiles by rotation without per-pair features (dq_rotation_band_loop; the launcher sets
    # ROTATION_LOOP where 2R >= its key tile, configs.rotation_loop) run key tiles of at most ROTATION_LOOP_KEYS;
    # the general loop keeps the partial tail.
    PLAIN_ROTATION: tl.constexpr = ROTATION_LOOP and SINUSOID and FAR_LOOPS == 2
    BLOCK_NR: tl.constexpr = min(BLOCK_N, ROTATION_LOOP_KEYS)
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
    q_ptrs = block_ptrs(Q, b, h, q_start, pid_m, stride_qb, stride_qh, stride_qm, stride_qd, offs_d, BLOCK_M, SINUSOID)
    q = tl.load(q_ptrs, mask=qd_mask, other=0.0)
    do_ptrs = block_ptrs(
        DOUT, b, h, q_start, pid_m, stride_gb, stride_gh, stride_gm, stride_gd, offs_d, BLOCK_M, SINUSOID
    )
    do = tl.load(do_ptrs, mask=qd_mask, other=0.0)
    row = stat_row0 + offs_m
    row_max = tl.load(ROW_MAX + row, mask=m_valid, other=0.0)
    row_logsum = tl.load(ROW_LOGSUM + row, mask=m_valid, other=0.0)
    delta = tl.load(DELTA + row, mask=m_valid, other=0.0)
    if RELATIVE:
        q_left, q_right = edge_terms(q, T, stride_tr, stride_td, R, offs_d, HEAD_DIM, FMA_DOTS)
        do_left, do_right = edge_terms(do, T, stride_tr, stride_td, R, offs_d, HEAD_DIM, FMA_DOTS)
    else:
        q_left = tl.zeros([BLOCK_M], tl.float32)
        q_right = q_left
        do_left = q_left
        do_right = q_left
    hm = 1.0
    if HAS_HMASK:
        hm = tl.load(HMASK + b * stride_hb + h * stride_hh).to(tl.float32)
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + k_start.to(tl.int64) * stride_kn
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh + k_start.to(tl.int64) * stride_vn
    pos0 = q_offset + i0

    ws = WS + (stat_row0 + i0) * (2 * BAND_P)
    ws_row = tl.arange(0, BLOCK_M)[:, None] * (2 * BAND_P)
    if RELATIVE and BAND_P > 0:
        # A runtime loop, not static_range: unrolled, q's and dO's FMA (fp32) dot operands are loaded
        # once for all chunks and stay live together (the old dQ fp32 spills, see benchmarks/NOTES.md, Triton section).
        for c in range(0, BAND_P // BAND_CHUNK):
            tb = load_band_table(T, stride_tr, stride_td, R, c * BAND_CHUNK, offs_d, HEAD_DIM, BAND_CHUNK)
            cols = ws_row + (c * BAND_CHUNK + tl.arange(0, BAND_CHUNK))[None, :]
            tl.store(ws + cols, dot_nt(q, tb, FMA_DOTS, K_CHUNKS), mask=m_valid[:, None])
            tl.store(ws + BAND_P + cols, dot_nt(do, tb, FMA_DOTS, K_CHUNKS), mask=m_valid[:, None])
        tl.debug_barrier()  # band tiles read slots other threads wrote

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = lk
    if CAUSAL_SKIP:
        hi = tl.where(pos0 >= 0, tl.minimum(lk, pos0 + BLOCK_M), lk)  # as in forward.py
    band_lo, band_hi, full_end, general_end = key_ranges(pos0, lk, hi, R, RELATIVE, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_NB)
    k_tile = tl.arange(0, BLOCK_NF)[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_tile = tl.arange(0, BLOCK_NF)[:, None] * stride_vn + offs_d[None, :] * stride_vd
    # The argument packs of the loops (built once; the helpers unpack what they use).
    rows = (b, h, bh, offs_m, m_valid)
    masks = (KPAD, stride_pb, stride_pn, AMASK, stride_ab, stride_ah, stride_am, stride_an)
    drop = (dropout_p, dropout_scale, seed_lo, seed_hi)
    table = (T, stride_tr, stride_td, R)
    kv = (k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd)
    stats = (row_max, row_logsum, delta, hm)
    edges = (q_left, q_right, do_left, do_right)
    q_rot = q
    do_rot = do
    if SINUSOID:
        if ROT_BLOCK_M == BLOCK_M:
            # The delta kernel's rows (dK/dV's rotation band loop): rotated from the starts of ROT_BLOCK_M-row blocks,
            # which are this program's (i % ROT_BLOCK_M = i - i0), so they are q_rot / dO_rot of this block.
            rot_tile = tl.arange(0, BLOCK_M)[:, None] * BLOCK_D + offs_d[None, :]
            rot_base = (bh.to(tl.int64) * LQ + i0) * BLOCK_D
            # "+ 0.0" (not folded away: -0 + 0 is +0) makes them computed values, which triton feeds the band's wgmma
            # from registers as it did the rotated ones; a loaded A operand is read from shared memory through
            # descriptors instead, and every loop paid for it (triton 3.9: far-right tile 289 -> 303 instructions,
            # band tile 405 -> 412, 255 registers against 247; benchmarks/NOTES.md "Triton dQ reads the delta ...").
            q_rot = tl.load(QROT + rot_base + rot_tile, mask=qd_mask, other=0.0) + 0.0
            do_rot = tl.load(GROT + rot_base + rot_tile, mask=qd_mask, other=0.0) + 0.0
        else:
            q_rot = rotate_query(q, ROT, BLOCK_M, BLOCK_D)
            do_rot = rotate_query(do, ROT, BLOCK_M, BLOCK_D)
    rot = (ROT, q_rot, do_rot)
    if FAR_LOOPS > 0:
        dq, ds_left = dq_far_loop(
            dq, q, do, k_base + k_tile, v_base + v_tile, 0, band_lo, q_left, do_left, tl.zeros_like(delta), stats,
            scale, stride_kn, stride_vn, d_valid, rows, masks, drop,
            EVEN_D, 0, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, K_CHUNKS, BLOCK_NF,
        )  # fmt: skip
        if PLAIN_ROTATION:
            dq, band_left, band_right = dq_rotation_band_loop(
                dq, q, do, q_rot, do_rot, tile_ptrs(k_base, stride_kn, stride_kd, band_lo, offs_d, BLOCK_NR),
                tile_ptrs(v_base, stride_vn, stride_vd, band_lo, offs_d, BLOCK_NR),
                band_positional_ptrs(ROT, band_lo, pos0, R, BLOCK_NR, BLOCK_D), band_lo, band_hi, q_offset + offs_m, R,
                edges, stats, scale, stride_kn, stride_vn, d_valid, ROT,
                EVEN_D, CAUSAL, FMA_DOTS, K_CHUNKS, BLOCK_NR,
            )  # fmt: skip
        else:
            dq, band_left, band_right = dq_band_loop(
                dq, q, do, kv, band_lo, band_hi, lk, table, edges, offs_d, d_valid, stats, rows, q_offset, pos0,
                masks, drop, scale, ws, ws_row, rot,
                HEAD_DIM, RELATIVE, SINUSOID, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, BLOCK_M, BLOCK_NB,
                BLOCK_P, BAND_P, BRANCHLESS_BAND,
            )  # fmt: skip
        if PLAIN_ROTATION:
            # The band's dS sums joined now, not kept live beside the far-right loop's (triton 3.9: straight line
            # -20 instructions, 247 registers against 254).
            ds_left += band_left
            right0 = band_right
        else:
            right0 = tl.zeros_like(delta)
        dq, ds_right = dq_far_loop(
            dq, q, do, k_base + band_hi.to(tl.int64) * stride_kn + k_tile,
            v_base + band_hi.to(tl.int64) * stride_vn + v_tile, band_hi, full_end, q_right, do_right, right0, stats,
            scale, stride_kn, stride_vn, d_valid, rows, masks, drop,
            EVEN_D, 1, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, K_CHUNKS, BLOCK_NF,
        )  # fmt: skip
        dq, tail_left, tail_right = dq_band_loop(
            dq, q, do, kv, full_end, general_end, lk, table, edges, offs_d, d_valid, stats, rows, q_offset, pos0,
            masks, drop, scale, ws, ws_row, rot,
            HEAD_DIM, RELATIVE, SINUSOID, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, BLOCK_M, BLOCK_NB,
            BLOCK_P, BAND_P, BRANCHLESS_BAND,
        )  # fmt: skip
        if PLAIN_ROTATION:
            ds_left += tail_left
            ds_right += tail_right
        else:
            ds_left += band_left + tail_left
            ds_right += band_right + tail_right
    else:
        # One general loop over every key tile (see forward.py).
        dq, ds_left, ds_right = dq_band_loop(
            dq, q, do, kv, 0, general_end, lk, table, edges, offs_d, d_valid, stats, rows, q_offset, pos0, masks,
            drop, scale, ws, ws_row, rot,
            HEAD_DIM, RELATIVE, SINUSOID, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, BLOCK_M, BLOCK_NB,
            BLOCK_P, BAND_P, False,
        )  # fmt: skip

    if RELATIVE and BAND_P > 0:
        tl.debug_barrier()  # the dS slots were written by other threads' layouts
        pos = q_offset + offs_m
        for c in range(0, BAND_P // BAND_CHUNK):
            offs_r = c * BAND_CHUNK + tl.arange(0, BAND_CHUNK)
            j = pos[:, None] + offs_r[None, :] - (R - 1)
            # Slots of keys the loop never visited still hold Q @ Tb^T: mask them out.
            seen = m_valid[:, None] & (offs_r[None, :] < 2 * R - 1) & (j >= 0) & (j < lk) & (j < general_end)
            ds_band = tl.load(ws + ws_row + offs_r[None, :], mask=seen, other=0.0)
            tb = load_band_table(T, stride_tr, stride_td, R, c * BAND_CHUNK, offs_d, HEAD_DIM, BAND_CHUNK)
            dq += dot(ds_band.to(tb.dtype), tb, None, FMA_DOTS)
    if SINUSOID:
        # As the forward's epilogue: the edges added with NEZHA's T[0] = [0, 1]_t, the scale folded in.
        t_right = tl.load(T + 2 * R * stride_tr + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
        dq = scale_add_sinusoid_edges(
            dq, scale, (ds_left * scale)[:, None], (ds_right * scale)[:, None], t_right, BLOCK_M, BLOCK_D
        )
    else:
        if RELATIVE:
            t_left = tl.load(T + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
            t_right = tl.load(T + 2 * R * stride_tr + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
            dq += ds_left[:, None] * t_left[None, :] + ds_right[:, None] * t_right[None, :]
        dq = dq * scale
    if VARLEN:
        out_off = (q_rows * H + h) * HEAD_DIM + offs_d[None, :]
    else:
        out_off = bh.to(tl.int64) * LQ * HEAD_DIM + offs_m[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
    tl.store(DQ + out_off, dq.to(DQ.dtype.element_ty), mask=qd_mask)
