"""The forward's online softmax over key tiles, in two kinds of loop (the flash skeleton).

Scores are kept in natural units (the row max m saved for the backward is exp's, not exp2's), and every
exponential is ``exp2((x - m) * log2 e)`` or, in the far loop without masks, one FFMA
``qk * (scale * log2 e) + addend_row`` feeding one EX2: log2 e is folded into the scale and the row's edge
term q . T[0] or q . T[2R] (scaled) and its max shift into one per-row addend.

- far_loop: key tiles wholly outside the band on one side (SIDE 0: every pair has j - p <= -R, SIDE 1: >= R),
  full tiles only (no bounds), masks only where a mask is passed. The value side's edge rows need only each side's
  probability mass, which the caller reads off the running sum (or, with dropout, the loop accumulates).
- band_loop: any tile (the band, and the last, partial, tile): bounds, masks and the band's per-pair terms
  (block-band scratch or per-tile table slices, see forward.py).
- rotation_band_loop: the band's full tiles by rotation (SINUSOID) without key padding, additive mask or dropout:
  the far loop's work plus the band's terms, no bounds, per-row edge and mass bookkeeping (2R >= BLOCK_N).
"""

import triton
import triton.language as tl

from .band import MASKED_SCORE, band_bucket, band_gather, load_table_slice, mask_tile
from .dot import dot, dot_nt
from .philox import philox_uniform
from .rotation import add_rotated_back, load_positional

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def rescale(x, m_from, m_to):
    """x * exp(m_from - m_to) per row; 1 where the two maxima are equal (both -inf or both finfo.min)."""
    return x * tl.where(m_from == m_to, 1.0, tl.math.exp2((m_from - m_to) * LOG2E))


@triton.jit
def load_rows(ptrs, d_valid, EVEN_D: tl.constexpr):
    """A full [rows, BLOCK_D] tile; the head-dim mask only where BLOCK_D pads HEAD_DIM."""
    if EVEN_D:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=d_valid[None, :], other=0.0)
    return x


@triton.jit
def tile_ptrs(base, stride_n, stride_d, j0, offs_d, BLOCK_N: tl.constexpr):
    """[BLOCK_N, BLOCK_D] pointers of rows j0 .. j0 + BLOCK_N - 1 of a K or V tile (int64 row offsets): where a loop
    starts at a run-time key and then advances its pointers by increments (the rotation band loops)."""
    keys = (j0 + tl.arange(0, BLOCK_N))[:, None].to(tl.int64)
    return base + keys * stride_n + offs_d[None, :] * stride_d


@triton.jit
def dropout_factor(seed_lo, seed_hi, offs_m, offs_n, bh, dropout_p, dropout_scale):
    """fp32 [BLOCK_M, BLOCK_N]: 1 / (1 - p) where the pair (offs_m, offs_n) is kept, 0 where dropped (philox.py)."""
    cols = offs_n[None, :] + 0 * offs_m[:, None]
    rows = offs_m[:, None] + 0 * offs_n[None, :]
    u = philox_uniform(seed_lo, seed_hi, cols, rows, bh)
    # The keep factor is built as fp32 in u's layout: an i1 tensor crossing layouts fails to compile
    # (fp32 32x32 tiles, "shared-memory element type bit width ... got 1").
    return tl.where(u >= dropout_p, dropout_scale, 0.0)


@triton.jit
def keep_factor(drop, rows, offs_n):
    """dropout_factor of the program's query rows (rows pack) against keys offs_n; drop: the dropout pack."""
    dropout_p, dropout_scale, seed_lo, seed_hi = drop
    _, _, bh, offs_m, _ = rows
    return dropout_factor(seed_lo, seed_hi, offs_m, offs_n, bh, dropout_p, dropout_scale)


@triton.jit
def far_loop(
    acc,
    m_i,
    l_i,
    mass,
    q,
    k_ptrs,
    v_ptrs,
    lo,
    hi,
    edge,
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
    """Full key tiles [lo, hi) beyond the band on side SIDE: (acc, m_i, l_i, mass).

    k_ptrs / v_ptrs: [BLOCK_N, BLOCK_D] pointers of the tile at key lo. edge [BLOCK_M]: q_i . T[0] (SIDE 0) or
    q_i . T[2R] (SIDE 1). mass: the side's dropped-out probability mass, accumulated only with dropout (without
    it the mass is the running sum's growth, read off by the caller).
    """
    # Causal masks every far-right pair (j - p >= R > 0) and no far-left one.
    MASKED: tl.constexpr = HAS_KPAD or HAS_AMASK or (CAUSAL and SIDE == 1)
    qk_scale = scale * LOG2E
    edge_scaled = edge * scale
    for j0 in range(lo, hi, BLOCK_N):
        k = load_rows(k_ptrs, d_valid, EVEN_D)
        qk = dot_nt(q, k, FMA_DOTS, K_CHUNKS)
        offs_n = j0 + tl.arange(0, BLOCK_N)
        if MASKED:
            s = (qk + edge[:, None]) * scale
            s = mask_tile(
                s, tl.full(s.shape, 1, tl.int32), rows, offs_n, offs_n >= 0, masks, HAS_KPAD, HAS_AMASK,
                CAUSAL and SIDE == 1,
            )  # fmt: skip
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.math.exp2((s - m_new[:, None]) * LOG2E)
        else:
            # scale >= 0 here (the kernel folds a negative scale's sign into q): max commutes with it.
            m_new = tl.maximum(m_i, tl.max(qk, axis=1) * scale + edge_scaled)
            p = tl.math.exp2(qk * qk_scale + ((edge_scaled - m_new) * LOG2E)[:, None])
        alpha = tl.math.exp2((m_i - m_new) * LOG2E)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
        if HAS_DROPOUT:
            p = p * keep_factor(drop, rows, offs_n)
            mass = mass * alpha + tl.sum(p, axis=1)
        v = load_rows(v_ptrs, d_valid, EVEN_D)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, None, FMA_DOTS)
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, m_i, l_i, mass


@triton.jit
def band_loop(
    acc,
    m_i,
    l_i,
    carry,
    q,
    kv,
    lo,
    hi,
    lk,
    qt_left,
    qt_right,
    pos,
    pos0,
    ws,
    ws_row,
    table,
    rot,
    scale,
    offs_d,
    d_valid,
    rows,
    masks,
    drop,
    HEAD_DIM: tl.constexpr,
    RELATIVE: tl.constexpr,
    SINUSOID: tl.constexpr,
    HAS_KPAD: tl.constexpr,
    HAS_AMASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    FMA_DOTS: tl.constexpr,
    K_CHUNKS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BAND_P: tl.constexpr,
):
    """Key tiles [lo, hi), each in or near the band or partial: (acc, m_i, l_i, mass_left, mass_right).

    Any tile is computed exactly here (pairs beyond the band take the edge rows), so the caller sends the band
    and the last partial tile. The masses are the edge-row weights (block-band mode; per-tile mode folds them into
    its table-slice product) relative to the returned m_i: carry's (u, mass_left, mass_right), relative to the m_i
    passed in (zeros: a fresh start), rescaled, plus this call's. kv: (k_base, v_base, stride_kn, stride_kd,
    stride_vn, stride_vd); table: (T, stride_tr, stride_td, R); rows, masks, drop: see forward.py.
    SINUSOID (rotation.py): rot = (ROT, q_rot); in-band key-side terms are Q_rot @ S_tile^T, the value side
    u = sum P_band @ S_tile (carry's u onward: the rotation band loop's) is rescaled like acc and added to acc,
    rotated back, when the loop ends.
    """
    k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd = kv
    T, stride_tr, stride_td, R = table
    ROT, q_rot = rot
    _, _, _, _, m_valid = rows
    u, mass_left, mass_right = carry
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
        s = dot_nt(q, k, FMA_DOTS, K_CHUNKS)
        rel = offs_n[None, :] - pos[:, None]
        near = (rel > -R) & (rel < R)
        slot_ptrs = ws + (ws_row + (rel + (R - 1)))
        slot_mask = near & m_valid[:, None] & n_valid[None, :]
        if SINUSOID:
            s_tile = load_positional(ROT, j0, pos0, R, BLOCK_N, q.shape[1]).to(q.dtype)
            bias = dot_nt(q_rot, s_tile, FMA_DOTS, K_CHUNKS)
            s += tl.where(near, bias, tl.where(rel < 0, qt_left[:, None], qt_right[:, None]))
        elif RELATIVE:
            if BAND_P > 0:
                bias = tl.load(slot_ptrs, mask=slot_mask, other=0.0)
                s += tl.where(near, bias, tl.where(rel < 0, qt_left[:, None], qt_right[:, None]))
            else:
                rel_min = j0 - (pos0 + BLOCK_M - 1)
                ts = load_table_slice(T, stride_tr, stride_td, rel_min + R, R, offs_d, HEAD_DIM, BLOCK_P)
                s += band_gather(dot(q, tl.trans(ts), None, FMA_DOTS), BLOCK_M, BLOCK_N)
        s = mask_tile(s * scale, rel, rows, offs_n, n_valid, masks, HAS_KPAD, HAS_AMASK, CAUSAL)
        s = tl.where(n_valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2((m_i - m_new) * LOG2E)
        p = tl.math.exp2((s - m_new[:, None]) * LOG2E)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
        if HAS_DROPOUT:
            p = p * keep_factor(drop, rows, offs_n)
            if RELATIVE and BAND_P > 0 and not SINUSOID:
                s = tl.where(p > 0.0, s, float("-inf"))  # a dropped pair leaves no value-side weight
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, None, FMA_DOTS)
        if SINUSOID:
            u = u * alpha[:, None] + dot(tl.where(near, p, 0.0).to(s_tile.dtype), s_tile, None, FMA_DOTS)
            mass_left = mass_left * alpha
            mass_right = mass_right * alpha
            far = tl.where(near, 0.0, p)
            mass_left += tl.sum(tl.where(rel < 0, far, 0.0), axis=1)
            mass_right += tl.sum(tl.where(rel > 0, far, 0.0), axis=1)
        elif RELATIVE:
            if BAND_P > 0:
                mass_left = mass_left * alpha
                mass_right = mass_right * alpha
                tl.store(slot_ptrs, s, mask=slot_mask)
                far = tl.where(near, 0.0, p)
                mass_left += tl.sum(tl.where(rel < 0, far, 0.0), axis=1)
                mass_right += tl.sum(tl.where(rel > 0, far, 0.0), axis=1)
            else:
                rel_min = j0 - (pos0 + BLOCK_M - 1)
                ts = load_table_slice(T, stride_tr, stride_td, rel_min + R, R, offs_d, HEAD_DIM, BLOCK_P)
                acc += dot(band_bucket(p, BLOCK_M, BLOCK_N, BLOCK_P).to(ts.dtype), ts, None, FMA_DOTS)
    if SINUSOID:
        acc = add_rotated_back(acc, u, ROT, BLOCK_M, q.shape[1])
    return acc, m_i, l_i, mass_left, mass_right


@triton.jit
def rotation_band_loop(
    acc,
    m_i,
    l_i,
    carry,
    q,
    q_rot,
    k_ptrs,
    v_ptrs,
    s_ptrs,
    lo,
    hi,
    pos,
    R,
    qt_left,
    qt_right,
    scale,
    stride_kn,
    stride_vn,
    d_valid,
    EVEN_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    FMA_DOTS: tl.constexpr,
    K_CHUNKS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Full band tiles [lo, hi) by rotation, no per-pair feature but causal: (acc, m_i, l_i, carry).

    k_ptrs / v_ptrs / s_ptrs: [BLOCK_N, BLOCK_D] pointers of the K, V and S tiles at key lo (s:
    rotation.band_positional_ptrs). Needs 2R >= BLOCK_N: a tile of at most 2R keys holds a row's out-of-band keys
    on one side only (j <= p - R and j' >= p + R are 2R apart), the left one exactly when its first key is. So the
    edge term is a per-row select and the tile's out-of-band mass, sum(p) - sum(p_band), goes to that side whole.
    carry (u, mass_left, mass_right), relative to the m_i passed in, is returned grown by this call's tiles and
    relative to the returned m_i: u = sum P_band @ S_tile, not yet rotated back (band_loop takes the carry on to the
    partial tail and adds u, rotated back, into acc once).
    """
    qk_scale = scale * LOG2E
    u, mass_left, mass_right = carry
    offs_n = tl.arange(0, BLOCK_N)
    for j0 in range(lo, hi, BLOCK_N):
        k = load_rows(k_ptrs, d_valid, EVEN_D)
        s_tile = tl.load(s_ptrs).to(q.dtype)
        qk = dot_nt(q, k, FMA_DOTS, K_CHUNKS)
        bias = dot_nt(q_rot, s_tile, FMA_DOTS, K_CHUNKS)
        # Key offsets within the tile against each row's position: j - p = offs_n - p0.
        p0 = pos - j0
        near = (offs_n[None, :] > (p0 - R)[:, None]) & (offs_n[None, :] < (p0 + R)[:, None])
        left = p0 >= R
        s = qk + tl.where(near, bias, tl.where(left, qt_left, qt_right)[:, None])
        if CAUSAL:
            # Scaled before masking: a fully masked row's max is MASKED_SCORE and its weights exp(0) (band.py).
            s = tl.where(offs_n[None, :] > p0[:, None], MASKED_SCORE, s * scale)
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.math.exp2((s - m_new[:, None]) * LOG2E)
        else:
            # scale >= 0 (the kernel folds a negative scale's sign into q): max commutes with it.
            m_new = tl.maximum(m_i, tl.max(s, axis=1) * scale)
            p = tl.math.exp2(s * qk_scale - (m_new * LOG2E)[:, None])
        alpha = tl.math.exp2((m_i - m_new) * LOG2E)
        m_i = m_new
        # near again, as one unsigned range compare: the same expression would be reused, and its 16 predicates,
        # kept live across the row max and EX2, were packed into registers (P2R / ISETP per pair: 496 -> 466 here).
        near_again = (offs_n[None, :] - (p0 - R + 1)[:, None]).to(tl.uint32, bitcast=True) < (2 * R - 1).to(tl.uint32)
        p_band = tl.where(near_again, p, 0.0)
        total = tl.sum(p, axis=1)
        out = total - tl.sum(p_band, axis=1)
        l_i = l_i * alpha + total
        mass_left = mass_left * alpha + tl.where(left, out, 0.0)
        mass_right = mass_right * alpha + tl.where(left, 0.0, out)
        v = load_rows(v_ptrs, d_valid, EVEN_D)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, None, FMA_DOTS)
        u = u * alpha[:, None] + dot(p_band.to(s_tile.dtype), s_tile, None, FMA_DOTS)
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
        s_ptrs += BLOCK_N * q.shape[1]
    return acc, m_i, l_i, (u, mass_left, mass_right)
