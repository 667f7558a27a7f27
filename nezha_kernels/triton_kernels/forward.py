"""Forward kernel: flash attention with the relative terms fused on both sides, on the flash skeleton.

Per program: BLOCK_M query rows of one (b, h). The key loop is split into four ranges, each its own loop
(softmax.py): far left, band, far right, and the last partial tile. Far tiles (every pair has |j - p| >= R) run the
plain flash loop: the row's edge term q_i . T[0] or q_i . T[2R] is one per-row addend of the FFMA that feeds exp2,
and the value side needs only each side's probability mass, read off the running sum (with dropout: summed), so
the output gets mass_left * T[0] + mass_right * T[2R] once at the end. No bounds (full tiles only), masks only
where one is passed. The band (and the partial tile) run the general loop:
- block-band mode (BAND_P > 0, 2R - 1 <= BAND_P): the program computed QTb = Q_blk @ Tb^T [BLOCK_M, BAND_P] once
  (Tb = T[1 .. 2R-1]) and wrote it to its rows of the fp32 scratch WS; a band tile reads its key-side bias from
  there and writes each in-band pair's final score back in place (each (i, j - p_i) slot belongs to exactly one
  pair). After the loops the weights exp(s - m_final) are read back and the value side is one dot
  [BLOCK_M, BAND_P] @ Tb. Scores are stored instead of weights so no online-softmax rescaling of the scratch is
  needed;
- per-tile mode (BAND_P == 0, large R): loads T_slice (see band.py) and pays two [BLOCK_M, BLOCK_P] dots: key side
  bias = gather(Q @ T_slice^T), value side acc += bucket(W) @ T_slice;
- rotation mode (SINUSOID, the table is NEZHA's own sinusoid; BAND_P == 0, no scratch): rotation.py. Q_rot is
  computed once; a band tile adds Q_rot @ S_tile^T in band and accumulates u += P_band @ S_tile (rescaled like acc),
  rotated back into acc when the band-loop call ends. Without per-pair features (FAR_LOOPS 2) and for 2R >= 32
  (ROTATION_LOOP) the band's full tiles run softmax.rotation_band_loop instead: no bounds or masks, the edge terms
  and masses per row; the partial tile keeps the general loop, run next (before the far right): it takes over u and
  the masses, and rotates u back into acc once.
RELATIVE off compiles every relative term out: exact softmax attention (the plain twin; T is not read).
Outputs: o [B, H, Lq, D] and per row the running max m and log of the softmax sum (kept apart, not m + log l, so
a fully masked row whose max is finfo.min keeps its exact 1/Lk weights in the backward).
"""

import triton
import triton.language as tl

from . import configs
from .band import load_band_table
from .dot import dot, dot_nt
from .rotation import band_positional_ptrs, rotate_query, scale_add_sinusoid_edges
from .sequence import key_ranges, sequence_window
from .softmax import LOG2E, band_loop, far_loop, rescale, rotation_band_loop, tile_ptrs

ROTATION_LOOP_KEYS = tl.constexpr(configs.ROTATION_LOOP_KEYS)
# The edge-term dot's columns: T[0] and T[2R], each split into three parts in q's dtype (see edge_terms).
EDGE_COLS = tl.constexpr(16)


@triton.jit
def edge_terms(q, T, stride_tr, stride_td, R, offs_d, d_valid, BY_DOT: tl.constexpr):
    """(q_i . T[0], q_i . T[2R]) [BLOCK_M] fp32: the far tiles' per-row edge terms.

    16-bit q on tensor cores: one small dot q @ E^T, E [16, BLOCK_D] in q's dtype with rows T[0] hi, T[2R] hi,
    T[0] mid, T[2R] mid, T[0] lo, T[2R] lo (hi + mid + lo = the fp32 row: 3 x 8 bits of bf16 mantissa cover fp32's
    24) and zeros, then two row sums over its even / odd columns. A 16-bit times 16-bit product is exact in fp32, so
    the sums are the fp32 products' up to the accumulation's rounding; the elementwise fp32 products and cross-thread
    reductions it replaces cost ~225 instructions per warp (benchmarks/NOTES.md, "Triton forward prologue and
    epilogue"). BY_DOT off (fp32 q, and the table paths: there the dot's operands spilled the loops, 8-56 B on sm_80
    D = 64 plain and sm_90 D = 128): the reductions."""
    if not BY_DOT:
        t_left = tl.load(T + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
        t_right = tl.load(T + 2 * R * stride_tr + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
        qt_left = tl.sum(q.to(tl.float32) * t_left[None, :], axis=1)
        qt_right = tl.sum(q.to(tl.float32) * t_right[None, :], axis=1)
    else:
        r = tl.arange(0, EDGE_COLS)
        side = r % 2
        part = r // 2
        rows = tl.where(side == 0, 0, 2 * R)
        t = tl.load(
            T + rows[:, None] * stride_tr + offs_d[None, :] * stride_td,
            mask=(part < 3)[:, None] & d_valid[None, :],
            other=0.0,
        ).to(tl.float32)
        hi = t.to(q.dtype)
        rest = t - hi.to(tl.float32)
        mid = rest.to(q.dtype)
        lo = (rest - mid.to(tl.float32)).to(q.dtype)
        e = tl.where((part == 0)[:, None], hi, tl.where((part == 1)[:, None], mid, lo))
        qe = dot_nt(q, e, False, 1)
        left = (side == 0)[None, :]
        qt_left = tl.sum(tl.where(left, qe, 0.0), axis=1)
        qt_right = tl.sum(tl.where(left, 0.0, qe), axis=1)
    return qt_left, qt_right


@triton.jit
def block_ptrs(
    base,
    b,
    h,
    row_start,
    pid_m,
    stride_b,
    stride_h,
    stride_m,
    stride_d,
    offs_d,
    BLOCK_M: tl.constexpr,
    IN_BLOCK_32: tl.constexpr,
):
    """[BLOCK_M, BLOCK_D] pointers of the program's query rows of q or out. IN_BLOCK_32: a 64-bit block base and
    32-bit offsets within the block (as the K / V tiles'), fewer 64-bit adds per element (the rotation path; on the
    table paths this form spilled the D = 128 varlen rows, benchmarks/NOTES.md)."""
    if IN_BLOCK_32:
        row0 = (row_start + pid_m * BLOCK_M).to(tl.int64)
        block = base + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h + row0 * stride_m
        ptrs = block + (tl.arange(0, BLOCK_M)[:, None] * stride_m + offs_d[None, :] * stride_d)
    else:
        ptrs = base + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h + row_start.to(tl.int64) * stride_m
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        ptrs = ptrs + offs_m[:, None].to(tl.int64) * stride_m + offs_d[None, :] * stride_d
    return ptrs


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
    ROT,
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
    RELATIVE: tl.constexpr,
    SINUSOID: tl.constexpr,
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
    BAND_P: tl.constexpr,
    FAR_LOOPS: tl.constexpr,
    NEGATIVE_SCALE: tl.constexpr,
):
    tl.static_assert(BLOCK_P >= BLOCK_M + BLOCK_N - 1)
    # The rotation path (rotation.py) needs no scratch; its table covers query blocks of up to 128 rows.
    tl.static_assert(not SINUSOID or (BAND_P == 0 and BLOCK_M <= 128 and RELATIVE))
    BAND_CHUNK: tl.constexpr = 32 if BAND_P > 32 else BAND_P
    # The general loop's key tile: at most 2048 scores per program (8 per thread at 8 warps), so its per-pair band
    # work (scratch slot pointers, masks) stays in registers; the far loops run the full BLOCK_N.
    BLOCK_NB: tl.constexpr = max(16, min(BLOCK_N, 2048 // BLOCK_M))
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    # The far loops' key width (configs.far_loops): the tile's, or the general loop's where per-pair features
    # (masks, dropout) would make the wide far tile spill; none (FAR_LOOPS 0): one general loop over every key.
    BLOCK_NF: tl.constexpr = BLOCK_N if FAR_LOOPS == 2 else BLOCK_NB
    # The band's full tiles by rotation without per-pair features (softmax.rotation_band_loop; the launcher sets
    # ROTATION_LOOP where 2R >= its key tile, configs.rotation_loop) run key tiles of at most ROTATION_LOOP_KEYS (64
    # spilled); the general loop keeps the partial tail.
    PLAIN_ROTATION: tl.constexpr = ROTATION_LOOP and SINUSOID and FAR_LOOPS == 2
    BLOCK_NR: tl.constexpr = min(BLOCK_N, ROTATION_LOOP_KEYS)
    # fp32 FMA dots: chunk the head dim (see dot.dot_nt); tensor-core dots stay whole.
    K_CHUNKS: tl.constexpr = min(4, BLOCK_D // 16) if FMA_DOTS else 1
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

    q_ptrs = block_ptrs(Q, b, h, q_start, pid_m, stride_qb, stride_qh, stride_qm, stride_qd, offs_d, BLOCK_M, SINUSOID)
    q = tl.load(q_ptrs, mask=m_valid[:, None] & d_valid[None, :], other=0.0)
    # A negative scale's sign goes into q (exactly): the far loop's row max then commutes with the scale. A
    # compile-time switch (the launcher's scale < 0), so a positive scale's kernel holds no branch on it.
    if NEGATIVE_SCALE:
        q = -q
        scale = -scale
    if RELATIVE:
        qt_left, qt_right = edge_terms(
            q, T, stride_tr, stride_td, R, offs_d, d_valid, SINUSOID and not FMA_DOTS and q.dtype != tl.float32
        )
    else:
        qt_left = tl.zeros([BLOCK_M], tl.float32)
        qt_right = qt_left
    q_rot = q
    if SINUSOID:
        q_rot = rotate_query(q, ROT, BLOCK_M, BLOCK_D)

    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + k_start.to(tl.int64) * stride_kn
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh + k_start.to(tl.int64) * stride_vn
    k_tile = tl.arange(0, BLOCK_NF)[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_tile = tl.arange(0, BLOCK_NF)[:, None] * stride_vn + offs_d[None, :] * stride_vd

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # This block's scratch rows; in-block offsets stay int32 (64-bit pointer tiles cost registers).
    ws = WS + (stat_row0 + pid_m * BLOCK_M) * BAND_P
    ws_row = tl.arange(0, BLOCK_M)[:, None] * BAND_P
    if RELATIVE and BAND_P > 0:
        # Column chunks in a runtime loop, not static_range: unrolled, the compiler loads q's FMA (fp32)
        # dot operand once for every chunk and keeps it live (see benchmarks/NOTES.md, Triton section).
        for c in range(0, BAND_P // BAND_CHUNK):
            tb = load_band_table(T, stride_tr, stride_td, R, c * BAND_CHUNK, offs_d, HEAD_DIM, BAND_CHUNK)
            qtb = dot_nt(q, tb, FMA_DOTS, K_CHUNKS)
            tl.store(ws + ws_row + (c * BAND_CHUNK + tl.arange(0, BAND_CHUNK))[None, :], qtb, mask=m_valid[:, None])
        tl.debug_barrier()  # band tiles read slots other threads wrote

    hi = lk
    if CAUSAL_SKIP:
        # Without padding or additive masks no row at a position >= 0 is fully masked, so keys past the
        # block's last position carry exactly zero weight and are skipped (see sequence.py for pos0 < 0).
        hi = tl.where(pos0 >= 0, tl.minimum(lk, pos0 + BLOCK_M), lk)
    band_lo, band_hi, full_end, general_end = key_ranges(pos0, lk, hi, R, RELATIVE, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_NB)

    # The argument packs of the loops (built once; the helpers unpack what they use).
    rows = (b, h, bh, offs_m, m_valid)
    masks = (KPAD, stride_pb, stride_pn, AMASK, stride_ab, stride_ah, stride_am, stride_an)
    drop = (dropout_p, dropout_scale, seed_lo, seed_hi)
    table = (T, stride_tr, stride_td, R)
    kv = (k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd)
    rot = (ROT, q_rot)
    # A loop's carry (u, mass_left, mass_right) from nothing: see softmax.band_loop.
    fresh = (tl.zeros_like(acc), tl.zeros_like(l_i), tl.zeros_like(l_i))
    if FAR_LOOPS > 0:
        acc, m_i, l_i, mass_far = far_loop(
            acc, m_i, l_i, tl.zeros([BLOCK_M], tl.float32), q, k_base + k_tile, v_base + v_tile, 0, band_lo, qt_left,
            scale, stride_kn, stride_vn, d_valid, rows, masks, drop,
            EVEN_D, 0, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, K_CHUNKS, BLOCK_NF,
        )  # fmt: skip
        # The edge rows' masses (left, right), relative to m_ref: masses of later loops are folded in at each join.
        mass_left = mass_far if HAS_DROPOUT else l_i
        mass_right = tl.zeros([BLOCK_M], tl.float32)
        m_ref = m_i
        if PLAIN_ROTATION:
            # The band's full tiles, then the partial tail, then the far right: the band loop's value-side sum u
            # (rotated back once, at the tail's end) and the masses go on from loop to loop, rescaled there, so
            # there is no join before the far right (without dropout the far-left mass is the running sum).
            k_band = tile_ptrs(k_base, stride_kn, stride_kd, band_lo, offs_d, BLOCK_NR)
            v_band = tile_ptrs(v_base, stride_vn, stride_vd, band_lo, offs_d, BLOCK_NR)
            s_band = band_positional_ptrs(ROT, band_lo, pos0, R, BLOCK_NR, BLOCK_D)
            acc, m_i, l_i, carry = rotation_band_loop(
                acc, m_i, l_i, (tl.zeros_like(acc), mass_left, mass_right), q, q_rot, k_band, v_band, s_band,
                band_lo, band_hi, pos, R, qt_left, qt_right, scale, stride_kn, stride_vn, d_valid,
                EVEN_D, CAUSAL, FMA_DOTS, K_CHUNKS, BLOCK_NR,
            )  # fmt: skip
            acc, m_i, l_i, mass_left, mass_right = band_loop(
                acc, m_i, l_i, carry, q, kv, full_end, general_end, lk, qt_left, qt_right, pos, pos0, ws, ws_row,
                table, rot, scale, offs_d, d_valid, rows, masks, drop,
                HEAD_DIM, RELATIVE, SINUSOID, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, K_CHUNKS, BLOCK_M,
                BLOCK_NB, BLOCK_P, BAND_P,
            )  # fmt: skip
        else:
            acc, m_i, l_i, band_left, band_right = band_loop(
                acc, m_i, l_i, fresh, q, kv, band_lo, band_hi, lk, qt_left, qt_right, pos, pos0, ws, ws_row, table,
                rot, scale, offs_d, d_valid, rows, masks, drop,
                HEAD_DIM, RELATIVE, SINUSOID, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, K_CHUNKS, BLOCK_M,
                BLOCK_NB, BLOCK_P, BAND_P,
            )  # fmt: skip
            mass_left = rescale(mass_left, m_ref, m_i) + band_left
            mass_right = band_right
        m_ref = m_i
        l_before = l_i
        acc, m_i, l_i, mass_far = far_loop(
            acc, m_i, l_i, tl.zeros([BLOCK_M], tl.float32), q, k_base + band_hi.to(tl.int64) * stride_kn + k_tile,
            v_base + band_hi.to(tl.int64) * stride_vn + v_tile, band_hi, full_end, qt_right,
            scale, stride_kn, stride_vn, d_valid, rows, masks, drop,
            EVEN_D, 1, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, K_CHUNKS, BLOCK_NF,
        )  # fmt: skip
        mass_left = rescale(mass_left, m_ref, m_i)
        if HAS_DROPOUT:
            mass_right = rescale(mass_right, m_ref, m_i) + mass_far
        else:
            # Without dropout the far-right mass is what the loop added to the running sum.
            mass_right = rescale(mass_right, m_ref, m_i) + (l_i - rescale(l_before, m_ref, m_i))
        if not PLAIN_ROTATION:
            m_ref = m_i
            acc, m_i, l_i, tail_left, tail_right = band_loop(
                acc, m_i, l_i, fresh, q, kv, full_end, general_end, lk, qt_left, qt_right, pos, pos0, ws, ws_row,
                table, rot, scale, offs_d, d_valid, rows, masks, drop,
                HEAD_DIM, RELATIVE, SINUSOID, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, K_CHUNKS, BLOCK_M,
                BLOCK_NB, BLOCK_P, BAND_P,
            )  # fmt: skip
            mass_left = rescale(mass_left, m_ref, m_i) + tail_left
            mass_right = rescale(mass_right, m_ref, m_i) + tail_right
    else:
        # One general loop over every key tile (fp32 FMA tiles: the split loops' extra live state spills there).
        acc, m_i, l_i, mass_left, mass_right = band_loop(
            acc, m_i, l_i, fresh, q, kv, 0, general_end, lk, qt_left, qt_right, pos, pos0, ws, ws_row, table, rot,
            scale, offs_d, d_valid, rows, masks, drop,
            HEAD_DIM, RELATIVE, SINUSOID, HAS_KPAD, HAS_AMASK, CAUSAL, HAS_DROPOUT, FMA_DOTS, K_CHUNKS, BLOCK_M,
            BLOCK_NB, BLOCK_P, BAND_P,
        )  # fmt: skip

    if RELATIVE and BAND_P > 0:
        tl.debug_barrier()  # the slots were written by other threads' layouts
        # In column chunks (a runtime loop, like the prologue): bounds the live [BLOCK_M, chunk] tile.
        m_band = m_i
        if VARLEN:
            m_band = tl.where(m_i > float("-inf"), m_i, 0.0)  # a row without keys: exp(-inf - -inf) would be NaN
        for c in range(0, BAND_P // BAND_CHUNK):
            offs_r = c * BAND_CHUNK + tl.arange(0, BAND_CHUNK)
            j = pos[:, None] + offs_r[None, :] - (R - 1)
            # Slots of keys the loop never visited still hold QTb: mask them out.
            seen = m_valid[:, None] & (offs_r[None, :] < 2 * R - 1) & (j >= 0) & (j < lk) & (j < general_end)
            s_band = tl.load(ws + ws_row + offs_r[None, :], mask=seen, other=float("-inf"))
            w_band = tl.math.exp2((s_band - m_band[:, None]) * LOG2E)
            if HAS_DROPOUT:
                w_band = w_band * dropout_scale
            tb = load_band_table(T, stride_tr, stride_td, R, c * BAND_CHUNK, offs_d, HEAD_DIM, BAND_CHUNK)
            acc += dot(w_band.to(tb.dtype), tb, None, FMA_DOTS)
    if VARLEN:
        l_i = tl.where(l_i > 0.0, l_i, 1.0)  # a query row of a sequence without keys outputs 0
    if SINUSOID:
        # One reciprocal per row, not a division per element (IEEE division: RCP plus fix-ups per element), the
        # masses normalized per row, added with NEZHA's T[0] = [0, 1]_t (scale_add_sinusoid_edges).
        # (The table paths keep the division: this form spilled their D = 128 varlen rows, 16-32 B.)
        inv_l = 1.0 / l_i
        # Loaded again, not kept from the prologue: live across the loops, the edge rows cost registers.
        t_right = tl.load(T + 2 * R * stride_tr + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
        out = scale_add_sinusoid_edges(
            acc, inv_l[:, None], (mass_left * inv_l)[:, None], (mass_right * inv_l)[:, None], t_right, BLOCK_M, BLOCK_D
        )
    else:
        if RELATIVE:
            # Loaded again, not kept from the prologue: live across the loops, the edge rows cost registers.
            t_left = tl.load(T + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
            t_right = tl.load(T + 2 * R * stride_tr + offs_d * stride_td, mask=d_valid, other=0.0).to(tl.float32)
            acc += mass_left[:, None] * t_left[None, :] + mass_right[:, None] * t_right[None, :]
        out = acc / l_i[:, None]
    if HAS_HMASK:
        out = out * tl.load(HMASK + b * stride_hb + h * stride_hh).to(tl.float32)
    o_ptrs = block_ptrs(
        OUT, b, h, q_start, pid_m, stride_ob, stride_oh, stride_om, stride_od, offs_d, BLOCK_M, SINUSOID
    )
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=m_valid[:, None] & d_valid[None, :])
    if SINUSOID:
        row = (stat_row0 + pid_m * BLOCK_M) + tl.arange(0, BLOCK_M)
    else:
        row = stat_row0 + offs_m
    tl.store(ROW_MAX + row, m_i, mask=m_valid)
    tl.store(ROW_LOGSUM + row, tl.log(l_i), mask=m_valid)
