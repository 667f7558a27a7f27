"""In-kernel Philox-4x32-10, bit-identical to ``nezha_kernels/dropout.py``.

Counter (c0, c1, c2, 0) = (key index j, query row i, b*H + h, 0), key (seed_lo, seed_hi);
u = (word0 >> 8) * 2^-24. Written with uint32 multiplies and tl.umulhi instead of tl.rand
because the shared spec fixes the counter layout and every backend must drop the same entries.
"""

import triton
import triton.language as tl

PHILOX_ROUND_A = tl.constexpr(0xD2511F53)
PHILOX_ROUND_B = tl.constexpr(0xCD9E8D57)
PHILOX_KEY_A = tl.constexpr(0x9E3779B9)
PHILOX_KEY_B = tl.constexpr(0xBB67AE85)


@triton.jit
def philox_uniform(seed_lo, seed_hi, c0, c1, c2):
    """Uniform float32 in [0, 1) at counters (c0, c1, c2, 0).

    c0, c1: int32 tensors of one shape (key index, query row); c2: int32 scalar (b*H + h).
    seed_lo / seed_hi: the seed's two 32-bit halves as int32 scalars (bit patterns).
    """
    x0 = c0.to(tl.uint32, bitcast=True)
    x1 = c1.to(tl.uint32, bitcast=True)
    x2 = tl.zeros_like(x0) + c2.to(tl.uint32, bitcast=True)
    x3 = tl.zeros_like(x0)
    k0 = seed_lo.to(tl.uint32, bitcast=True)
    k1 = seed_hi.to(tl.uint32, bitcast=True)
    for _ in tl.static_range(10):
        hi_b = tl.umulhi(x2, PHILOX_ROUND_B)
        lo_b = x2 * PHILOX_ROUND_B
        hi_a = tl.umulhi(x0, PHILOX_ROUND_A)
        lo_a = x0 * PHILOX_ROUND_A
        x0, x1, x2, x3 = hi_b ^ x1 ^ k0, lo_b, hi_a ^ x3 ^ k1, lo_a
        k0 = k0 + PHILOX_KEY_A
        k1 = k1 + PHILOX_KEY_B
    return (x0 >> 8).to(tl.float32) * (1.0 / 16777216.0)


def seed_words(seed: int) -> tuple[int, int]:
    """The 63-bit seed as two int32 bit patterns (lo, hi), the kernels' scalar arguments."""

    def signed(word: int) -> int:
        return word - (1 << 32) if word >= (1 << 31) else word

    return signed(seed & 0xFFFFFFFF), signed((seed >> 32) & 0xFFFFFFFF)
