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
