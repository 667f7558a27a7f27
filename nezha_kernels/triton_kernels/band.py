"""Pieces shared by the forward and backward kernels: the band gathers and the score masks.

For a query block (absolute positions p0 .. p0+BLOCK_M-1) and a key tile (j0 .. j0+BLOCK_N-1), a pair
(ii, jj) of in-tile offsets has table row clamp(j - p + R, 0, 2R) = T_slice[jj - ii + BLOCK_M - 1] where
T_slice[r] = T[clamp(base + r, 0, 2R)], base = j0 - p0 - (BLOCK_M - 1) + R. The clamp makes pairs beyond
the band correct too, so a band tile needs no special case; a tile entirely beyond the band uses only the
edge rows T[0] / T[2R] (one scalar per query row).
"""

import triton
import triton.language as tl

from .dot import dot

# float32's most negative finite value (inputs.MASKED_SCORE): masked pairs score exactly this.
MASKED_SCORE = tl.constexpr(-3.4028234663852886e38)


@triton.jit
def load_table_slice(T, stride_tr, stride_td, base, R, offs_d, HEAD_DIM: tl.constexpr, BLOCK_P: tl.constexpr):
    """T_slice [BLOCK_P, BLOCK_D]: rows T[clamp(base + r, 0, 2R)] (padded head dims read as 0)."""
    rows = tl.minimum(tl.maximum(base + tl.arange(0, BLOCK_P), 0), 2 * R)
    ptrs = T + rows[:, None] * stride_tr + offs_d[None, :] * stride_td
    return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)


@triton.jit
def load_band_table(T, stride_tr, stride_td, R, row0, offs_d, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr):
    """Tb[row0 : row0 + ROWS] [ROWS, BLOCK_D] where Tb[r] = T[r + 1] for r < 2R - 1, 0 beyond.

    Tb holds the in-band offsets |j - p| < R: column r of a query block's band scratch is the pair
    (i, j) with j - p_i = r - (R - 1).
    """
    rows = row0 + tl.arange(0, ROWS)
    ptrs = T + (rows[:, None] + 1) * stride_tr + offs_d[None, :] * stride_td
    return tl.load(ptrs, mask=(rows[:, None] < 2 * R - 1) & (offs_d[None, :] < HEAD_DIM), other=0.0)


@triton.jit
def band_gather(x, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """x [BLOCK_M, BLOCK_P] (x = rows @ T_slice^T) -> [BLOCK_M, BLOCK_N]: out[ii, jj] = x[ii, jj - ii + BLOCK_M - 1]."""
    ii = tl.arange(0, BLOCK_M)[:, None]
    jj = tl.arange(0, BLOCK_N)[None, :]
    return tl.gather(x, jj - ii + (BLOCK_M - 1), axis=1)


@triton.jit
def band_bucket(x, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr):
    """x [BLOCK_M, BLOCK_N] -> [BLOCK_M, BLOCK_P]: out[ii, r] = x[ii, r - (BLOCK_M - 1) + ii], 0 off the tile.

    The transpose of band_gather: sums a tile's weights by table-slice row, so out @ T_slice is the
    tile's value-side term sum_j x_ij a_ij.
    """
    ii = tl.arange(0, BLOCK_M)[:, None]
    jj = tl.arange(0, BLOCK_P)[None, :] - (BLOCK_M - 1) + ii
    inside = (jj >= 0) & (jj < BLOCK_N)
    return tl.where(inside, tl.gather(x, tl.where(inside, jj, 0), axis=1), 0.0)


@triton.jit
def mask_scores(
    s,
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
    HAS_KPAD: tl.constexpr,
    HAS_AMASK: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """Scores after the additive mask, padding / causal masking and the finfo.min floor (fp32 [BM, BN]).

    rel [BM, BN] = j - (q_offset + i). Same order as the reference: add, replace masked, floor.
    """
    if HAS_AMASK:
        ptrs = AMASK + b.to(tl.int64) * stride_ab + h.to(tl.int64) * stride_ah
        ptrs = ptrs + offs_m[:, None].to(tl.int64) * stride_am + offs_n[None, :] * stride_an
        s += tl.load(ptrs, mask=m_valid[:, None] & n_valid[None, :], other=0.0).to(tl.float32)
    if HAS_KPAD:
        keep = tl.load(KPAD + b.to(tl.int64) * stride_pb + offs_n * stride_pn, mask=n_valid, other=1)
        s = tl.where((keep == 0)[None, :], MASKED_SCORE, s)
    if CAUSAL:
        s = tl.where(rel > 0, MASKED_SCORE, s)
    return tl.maximum(s, MASKED_SCORE)


@triton.jit
def mask_tile(
    s, rel, rows, offs_n, n_valid, masks, HAS_KPAD: tl.constexpr, HAS_AMASK: tl.constexpr, CAUSAL: tl.constexpr
):
    """mask_scores with the kernels' packs: rows (b, h, bh, offs_m, m_valid), masks (KPAD, stride_pb, stride_pn,
    AMASK, stride_ab, stride_ah, stride_am, stride_an)."""
    b, h, _, offs_m, m_valid = rows
    KPAD, stride_pb, stride_pn, AMASK, stride_ab, stride_ah, stride_am, stride_an = masks
    return mask_scores(
        s, rel, b, h, offs_m, offs_n, m_valid, n_valid, KPAD, stride_pb, stride_pn, AMASK, stride_ab, stride_ah,
        stride_am, stride_an, HAS_KPAD, HAS_AMASK, CAUSAL,
    )  # fmt: skip


@triton.jit
def edge_terms(x, T, stride_tr, stride_td, R, offs_d, HEAD_DIM: tl.constexpr, FMA_DOTS: tl.constexpr):
    """(x . T[0], x . T[2R]) [rows] fp32 for x [rows, BLOCK_D], as one small dot x @ [T[0]; T[2R]; 0 ...]^T.

    A dot, not an fp32 elementwise product: that would hold a widened [rows, BLOCK_D] copy of x in registers.
    """
    e = tl.arange(0, 16)
    ptrs = T + (e[:, None] * 2 * R) * stride_tr + offs_d[None, :] * stride_td
    rows = tl.load(ptrs, mask=(e[:, None] < 2) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    xt = dot(x, tl.trans(rows.to(x.dtype)), None, FMA_DOTS)
    return tl.sum(tl.where(e[None, :] == 0, xt, 0.0), axis=1), tl.sum(tl.where(e[None, :] == 1, xt, 0.0), axis=1)


@triton.jit
def band_tile_terms(
    s,
    dw,
    q,
    do,
    table,
    edges,
    offs_d,
    m_valid,
    n_valid,
    rel,
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
    """(s, dw) plus the table terms of a tile with in-band pairs (exact for any tile): block-band scratch (BAND_P > 0,
    edge rows beyond the band) or per-tile table slices. The backward's key and value sides of the table path
    (dQ's dq_tile, dK/dV's general tile_grads). s = q.k, dw = dO.v [BLOCK_M, BLOCK_N]; edges: (q . T[0], q . T[2R],
    dO . T[0], dO . T[2R]) [BLOCK_M]; rel = j - p per pair, rel_min the tile's smallest; ws + ws_row: the block's
    scratch rows (columns [0, BAND_P): Q @ Tb^T, [BAND_P, 2 BAND_P): dO @ Tb^T)."""
    T, stride_tr, stride_td, R = table
    q_left, q_right, do_left, do_right = edges
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
    return s, dw
