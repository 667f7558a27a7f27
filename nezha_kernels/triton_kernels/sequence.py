"""Which rows a program works on: one (b, h) of a dense batch, or one sequence of a varlen batch.

Dense (VARLEN off): q [B, H, Lq, D], sequence b is batch row b, lengths LQ / LK, offset Q_OFFSET, the
statistics (lse, delta) and band scratch rows of (b, h) start at bh * LQ.
Varlen (VARLEN on): q [Tq, H, D] passed as a [1, H, Tq, D] view (batch stride 0); sequence b is token
rows cu_q[b] : cu_q[b + 1] (keys cu_k[b] : cu_k[b + 1]), its query i sits at position i + (Lk_b - Lq_b)
(bottom-right aligned), LQ is the total Tq and the statistics rows of (b, h) start at h * Tq + cu_q[b].
Row and key indices inside a program are always within the sequence (0 .. Lq_b - 1, 0 .. Lk_b - 1): the
dropout counters (j, i, b*H + h) are the dense op's on the padded batch.

Causal skipping (CAUSAL_SKIP) assumes no fully masked row. Varlen sequences with Lq_b > Lk_b start at
negative positions, and their rows at positions < 0 see no key: fully masked, they weigh every key
uniformly (as the dense op with padding does), so the kernels skip only where the rows involved sit at
positions >= 0.
"""

import triton
import triton.language as tl


@triton.jit
def sequence_window(CU_Q, CU_K, b, h, bh, LQ, LK, Q_OFFSET, VARLEN: tl.constexpr):
    """(q_start, k_start, lq, lk, q_offset, stat_row0): the sequence's first q / k token rows, its lengths,
    the position of its query 0, and its first row of the [*, LQ] statistics and scratch (int64)."""
    if VARLEN:
        q_start = tl.load(CU_Q + b)
        k_start = tl.load(CU_K + b)
        lq = tl.load(CU_Q + b + 1) - q_start
        lk = tl.load(CU_K + b + 1) - k_start
        q_offset = lk - lq
        stat_row0 = h.to(tl.int64) * LQ + q_start
    else:
        q_start = b * 0  # int32 zeros: fold away, and keep one type for the pointer arithmetic
        k_start = b * 0
        lq = LQ
        lk = LK
        q_offset = Q_OFFSET
        stat_row0 = bh.to(tl.int64) * LQ
    return q_start, k_start, lq, lk, q_offset, stat_row0


@triton.jit
def key_ranges(
    pos0,
    lk,
    hi,
    R,
    RELATIVE: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_NB: tl.constexpr,
):
    """(band_lo, band_hi, full_end, general_end): a query block's key loop split at compile time into ranges.

    Query block at positions pos0 .. pos0 + BLOCK_M - 1, keys 0 .. lk - 1, loop bound hi <= lk (causal skipping).
    [0, band_lo) far left, [band_lo, band_hi) band, [band_hi, full_end) far right: multiples of BLOCK_N, full tiles
    only; [full_end, general_end) the last, partial, tile in BLOCK_NB steps (general_end covers hi). A tile is in
    the band when some pair has |j - p| < R: j0 + BLOCK_N - 1 - pos0 > -R and j0 - (pos0 + BLOCK_M - 1) < R. The
    plain twin (RELATIVE off) has no band, except with causal the diagonal tiles (those with both masked and
    unmasked pairs: R = 1); far-left tiles then hold no masked pair and far-right tiles only masked ones.
    """
    tiles_end = tl.cdiv(hi, BLOCK_N) * BLOCK_N
    full_end = tl.minimum(tiles_end, (lk // BLOCK_N) * BLOCK_N)
    general_end = tl.cdiv(hi, BLOCK_NB) * BLOCK_NB
    if RELATIVE or CAUSAL:
        r_band = R if RELATIVE else 1
        band_lo = tl.cdiv(tl.maximum(pos0 - r_band - BLOCK_N + 2, 0), BLOCK_N) * BLOCK_N
        band_hi = tl.cdiv(tl.maximum(pos0 + BLOCK_M - 1 + r_band, 0), BLOCK_N) * BLOCK_N
        band_lo = tl.minimum(band_lo, full_end)
        band_hi = tl.maximum(band_lo, tl.minimum(band_hi, full_end))
    else:
        band_lo = full_end
        band_hi = full_end
    return band_lo, band_hi, full_end, general_end
