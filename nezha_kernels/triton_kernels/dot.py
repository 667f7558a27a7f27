"""The kernels' matrix products: every tl.dot goes through `dot` (or `dot_nt`).

Why a wrapper: the Triton interpreter stores bfloat16 as uint16 and its tl.dot multiplies those bit
patterns (triton-lang/triton#11584; upstream does not support bf16 dots in the interpreter yet). Under
TRITON_INTERPRET=1, bfloat16 operands are widened to float32 first, which is exact (a bf16 x bf16
product fits in fp32's mantissa) and matches tensor cores' fp32 accumulation. Compiled kernels never
take that branch: INTERPRETED is a constexpr fixed at import, and the AOT compile check and GPU runs
import without TRITON_INTERPRET.
"""

import triton
import triton.language as tl

from .configs import interpreted

INTERPRETED = tl.constexpr(interpreted())


@triton.jit
def dot(a, b, acc, FMA_DOTS: tl.constexpr):
    """acc + a @ b in fp32 (acc may be None).

    FMA_DOTS: fp32 inputs, multiplied exactly ("ieee": FMA loops, the 1e-5 parity fp32 promises); off, the
    tensor cores in the input dtype (fp16 / bf16: the dot's input_precision does not apply to them).
    """
    if INTERPRETED and (a.dtype == tl.bfloat16 or b.dtype == tl.bfloat16):
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif FMA_DOTS:
        out = tl.dot(a, b, acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc)
    return out


@triton.jit
def _halves(x):
    """x [M, K] -> (x[:, :K/2], x[:, K/2:])."""
    M: tl.constexpr = x.shape[0]
    K: tl.constexpr = x.shape[1]
    return tl.split(tl.permute(tl.reshape(x, [M, 2, K // 2]), [0, 2, 1]))


@triton.jit
def dot_nt(a, b, FMA_DOTS: tl.constexpr, K_CHUNKS: tl.constexpr):
    """a [M, K] @ b [N, K]^T -> fp32 [M, N], as K_CHUNKS (1, 2 or 4) chained dots over K.

    Why: fp32 "ieee" dots lower to FMA loops that load each thread's whole K slice of both operands
    into registers before the first FMA (rows x K + cols x K registers); chunking K bounds that to
    K / K_CHUNKS. The chunks accumulate in order into one accumulator (same sum order as one dot).
    """
    # One return at the end: code after a returning constexpr `if` is still compiled.
    if K_CHUNKS == 1:
        acc = dot(a, tl.trans(b), None, FMA_DOTS)
    elif K_CHUNKS == 2:
        a0, a1 = _halves(a)
        b0, b1 = _halves(b)
        acc = dot(a0, tl.trans(b0), None, FMA_DOTS)
        acc = dot(a1, tl.trans(b1), acc, FMA_DOTS)
    else:
        tl.static_assert(K_CHUNKS == 4)
        a0, a1 = _halves(a)
        b0, b1 = _halves(b)
        a00, a01 = _halves(a0)
        a10, a11 = _halves(a1)
        b00, b01 = _halves(b0)
        b10, b11 = _halves(b1)
        acc = dot(a00, tl.trans(b00), None, FMA_DOTS)
        acc = dot(a01, tl.trans(b01), acc, FMA_DOTS)
        acc = dot(a10, tl.trans(b10), acc, FMA_DOTS)
        acc = dot(a11, tl.trans(b11), acc, FMA_DOTS)
    return acc
