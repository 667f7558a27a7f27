"""A plain flash-attention forward in Triton: the same-compiler baseline row of the static profile.

Softmax attention without relative terms, masks or dropout, written the way a well-tuned flash kernel is
(128 x 64 tiles, 4 warps, 3 stages): the scale and log2(e) folded into one multiplier so each score costs
one FFMA-able multiply and one exp2, the running max kept in the log2 domain, K and V advanced by pointer
increments, no bounds checks (Lk a multiple of BLOCK_N, Lq of BLOCK_M, as the profile compiles it).

It exists so every profile carries a reference compiled by the same triton as our kernels; it is not a
public op; ``plain_flash_forward`` launches it (tests run it under the interpreter against the formula).
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

__all__ = ["plain_flash_fwd_kernel", "plain_flash_forward", "TILE", "LOG2E"]

LOG2E = 1.4426950408889634
# (BLOCK_M, BLOCK_N, num_warps, num_stages)
TILE = (128, 64, 4, 3)


@triton.jit
def plain_flash_fwd_kernel(
    Q,
    K,
    V,
    OUT,
    stride_qh,
    stride_qm,
    stride_kh,
    stride_kn,
    stride_vh,
    stride_vn,
    stride_oh,
    stride_om,
    LK,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program: BLOCK_M query rows of one (batch x head) ``bh``; q, k, v, out [BH, L, HEAD_DIM] with unit
    last stride; qk_scale = softmax scale * log2(e)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + bh * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :])
    k_ptrs = K + bh * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + bh * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for _ in range(0, LK, BLOCK_N):  # profile: far
        k = tl.load(k_ptrs)
        s = tl.dot(q, tl.trans(k))
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptrs)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    out = acc / l_i[:, None]
    tl.store(OUT + bh * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :], out.to(OUT.dtype.element_ty))


def plain_flash_forward(q, k, v, scale: float | None = None, block_m: int = TILE[0], block_n: int = TILE[1]):
    """softmax(q k^T * scale) v for q [BH, Lq, D], k, v [BH, Lk, D] (Lq % block_m == 0, Lk % block_n == 0)."""
    bh, lq, d = q.shape
    lk = k.shape[1]
    if lq % block_m or lk % block_n:
        raise ValueError(f"q, k: lengths ({lq}, {lk}) must be multiples of the tile ({block_m}, {block_n})")
    if q.stride(2) != 1 or k.stride(2) != 1 or v.stride(2) != 1:
        raise ValueError("q, k, v: the head dim must be contiguous")
    import torch

    out = torch.empty_like(q)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    plain_flash_fwd_kernel[(lq // block_m, bh)](
        q,
        k,
        v,
        out,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        lk,
        scale * LOG2E,
        HEAD_DIM=d,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
    )
    return out
