"""Launchers: allocate, launch on the current stream. Nothing about autograd or argument semantics here.

``relattn_fwd`` / ``relattn_bwd`` take exactly the op's arguments (nezha_kernels::relattn_fwd / _bwd, in
that order, seed as a Python int). The op validated every argument once (inputs.prepare_inputs); these
functions keep only the checks that guard memory: device, dtype, shape and stride of what the kernels
read and write.

Tensors are passed with their strides (strided q/k/v views are read in place, never copied);
masks: key padding bool [B, Lk] is reinterpreted as uint8, the additive mask is the expanded
[B, H, Lq, Lk] view (stride 0 on broadcast dims), head_mask [B, H] (possibly an expanded view).

Grids put B*H on axis 0 (limit 2**31 - 1) and the query or key block on axis 1 (limit 65535): see MAX_BLOCKS.
Argument checks live in launch_args.py (MAX_BLOCKS and MAX_PROGRAMS_AXIS0 re-exported here), the kernels' named
arguments in call.py.
"""

from __future__ import annotations

import torch
import triton

from . import configs
from .backward import STAT_PLANES, _relattn_bwd_delta_kernel
from .backward_dkdv import _relattn_bwd_dkdv_kernel
from .backward_dq import _relattn_bwd_dq_kernel
from .call import KernelCall, length_key, strides
from .forward import _relattn_fwd_kernel
from .launch_args import (
    MAX_BLOCKS,
    MAX_PROGRAMS_AXIS0,
    autotune_grid,
    band_scratch,
    check_dense,
    check_varlen,
    expect,
    varlen_view,
)
from .rotation import rotation_table, rotation_table_as

__all__ = [
    "relattn_fwd",
    "relattn_bwd",
    "relattn_fwd_varlen",
    "relattn_bwd_varlen",
    "MAX_BLOCKS",
    "MAX_PROGRAMS_AXIS0",
    "DELTA_ROWS_GPU",
    "DELTA_ROWS_INTERPRETED",
]

_fwd = configs.autotune("fwd")(_relattn_fwd_kernel)
_bwd_dkdv = configs.autotune("bwd_dkdv")(_relattn_bwd_dkdv_kernel)
_bwd_dq = configs.autotune("bwd_dq")(_relattn_bwd_dq_kernel)

# Rows per program of the delta kernel (rowsum(dO * O)).
DELTA_ROWS_GPU = 64
DELTA_ROWS_INTERPRETED = 16


def _call(
    q,
    k,
    v,
    table,
    key_padding,
    additive_mask,
    head_mask,
    cu_seqlens,
    r,
    causal,
    q_offset,
    scale,
    dropout_p,
    seed,
    lq_key,
    lk_key,
    relative,
    sinusoid=False,
) -> KernelCall:
    """The call's description; the plain twin (relative off) gets a [1, D] zero table and R = 0 (never read)."""
    if not relative:
        table = torch.zeros((1, q.shape[-1]), dtype=q.dtype, device=q.device)
        r = 0
    return KernelCall(
        q, k, v, table, key_padding, additive_mask, head_mask, cu_seqlens, r, causal, q_offset, scale, dropout_p, seed,
        lq_key, lk_key, relative, relative and sinusoid,
    )  # fmt: skip


def relattn_fwd(
    q,
    k,
    v,
    table,
    key_padding,
    additive_mask,
    head_mask,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    max_relative_position,
    causal,
    q_offset,
    scale,
    dropout_p,
    seed,
    *,
    relative: bool = True,
    sinusoid: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward. Dense: q [B, H, Lq, D], k, v [B, H, Lk, D], table [2R+1, D] (any strides).

    Returns (out [B, H, Lq, D] contiguous in q's dtype, lse [2, B, H, Lq] float32) where lse[0] is each
    row's score max and lse[1] the log of its softmax sum (the log-sum-exp is lse[0] + lse[1]).
    Varlen (cu_seqlens_q given): see relattn_fwd_varlen. relative=False runs the plain twin: exact softmax
    attention with every relative term compiled out (table and max_relative_position unused). sinusoid: the table
    is NEZHA's default (ops.py), which the kernels may compute instead of reading.
    """
    if cu_seqlens_q is not None:
        return relattn_fwd_varlen(
            q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, max_relative_position,
            causal, scale, dropout_p, seed, relative=relative, sinusoid=sinusoid,
        )  # fmt: skip
    check_dense(q, k, v, table, key_padding, additive_mask, head_mask)
    b, h, lq, d = q.shape
    out = torch.empty((b, h, lq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((2, b, h, lq), dtype=torch.float32, device=q.device)
    call = _call(
        q, k, v, table, key_padding, additive_mask, head_mask, None, max_relative_position, causal, q_offset, scale,
        dropout_p, seed, length_key(lq), length_key(k.shape[2]), relative, sinusoid,
    )  # fmt: skip
    _launch_fwd(call, out, lse, b * h, lq)
    return out, lse


def _rotation_table(call: KernelCall, sinusoid: bool) -> torch.Tensor:
    """The rotation path's table (rotation.rotation_table, cached) or, off that path, a dummy never read."""
    return rotation_table(call.r, call.q.shape[3], call.q.device) if sinusoid else call.q


def _launch_fwd(call: KernelCall, out, lse, programs: int, blocks_q: int) -> None:
    """The forward kernel over (programs, cdiv(blocks_q, BLOCK_M)); out and lse as the kernel indexes them."""
    sinusoid = call.rotation("fwd")
    band_p = configs.band_p(call.r) if call.relative and not sinusoid else 0
    scratch = band_scratch(call.q, band_p, 1)
    _fwd[autotune_grid(programs, blocks_q, "BLOCK_M")](
        **call.kwargs(
            OUT=out,
            ROW_MAX=lse[0],
            ROW_LOGSUM=lse[1],
            WS=scratch,
            ROT=_rotation_table(call, sinusoid),
            SINUSOID=sinusoid,
            ROTATION_LOOP=sinusoid and call.rotation_loop("fwd"),
            BAND_P=band_p,
            FAR_LOOPS=call.far_loops("fwd"),
            NEGATIVE_SCALE=call.scale < 0,
            **strides("o", out),
        )
    )


def relattn_bwd(
    grad_out,
    q,
    k,
    v,
    table,
    out,
    lse,
    key_padding,
    additive_mask,
    head_mask,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    max_relative_position,
    causal,
    q_offset,
    scale,
    dropout_p,
    seed,
    *,
    relative: bool = True,
    sinusoid: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward: (dq, dk, dv), contiguous, in q's dtype. lse is the forward's [2, B, H, Lq] statistics.

    Varlen (cu_seqlens_q given): see relattn_bwd_varlen. relative=False: the plain twin's gradients.
    """
    if cu_seqlens_q is not None:
        return relattn_bwd_varlen(
            grad_out, q, k, v, table, out, lse, head_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
            max_relative_position, causal, scale, dropout_p, seed, relative=relative, sinusoid=sinusoid,
        )  # fmt: skip
    check_dense(q, k, v, table, key_padding, additive_mask, head_mask)
    b, h, lq, d = q.shape
    lk = k.shape[2]
    expect("grad_out", grad_out, (b, h, lq, d), q.device, q.dtype)
    expect("out", out, (b, h, lq, d), q.device, q.dtype)
    expect("lse", lse, (2, b, h, lq), q.device, torch.float32)
    dq = torch.empty((b, h, lq, d), dtype=q.dtype, device=q.device)
    dk = torch.empty((b, h, lk, d), dtype=k.dtype, device=q.device)
    dv = torch.empty((b, h, lk, d), dtype=v.dtype, device=q.device)
    call = _call(
        q, k, v, table, key_padding, additive_mask, head_mask, None, max_relative_position, causal, q_offset, scale,
        dropout_p, seed, length_key(lq), length_key(lk), relative, sinusoid,
    )  # fmt: skip
    _launch_bwd(call, grad_out, out, lse, dq, dk, dv, b * h, lq, lk)
    return dq, dk, dv


def _launch_bwd(call: KernelCall, grad_out, out, lse, dq, dk, dv, programs, blocks_q, blocks_k) -> None:
    """The three backward kernels on [B, H, L, D] tensors (or varlen views): delta, dK/dV, dQ.

    Grids: (programs, cdiv(blocks_q or blocks_k, BLOCK)); the delta kernel runs over every row of q.
    Empty grids (varlen: no sequence, or no query / key row) are not launched; dK / dV of keys no query
    sees are zeros (the dK/dV programs of a sequence without queries run an empty loop).
    """
    q, k = call.q, call.k
    b, h, lq, d = q.shape
    if programs * blocks_q * lq == 0:  # no query row: every gradient is zero (or empty)
        for grad in (dq, dk, dv):
            grad.zero_()
        return
    lse = lse.contiguous()  # the kernels index it as [2, B*H*Lq] (varlen [2, H*Tq]) rows
    # Per-row statistics (backward.STAT_PLANES): plane 0 is delta = rowsum(dO * O), the rest the dK/dV kernel's.
    stat_rows = b * h * lq
    row_stats = torch.empty((STAT_PLANES, stat_rows), dtype=torch.float32, device=q.device)
    delta_rows = DELTA_ROWS_INTERPRETED if configs.interpreted() else DELTA_ROWS_GPU
    # dK/dV's rotation band loop reads q and dO rotated once per row (from the forward's query blocks), which the delta
    # kernel writes: [B*H, Lq, BLOCK_D] each in q's dtype. dQ loads its q_rot / dO_rot from them too where they exist.
    dkdv_sinusoid = call.rotation("bwd_dkdv")
    dkdv_loop = dkdv_sinusoid and call.rotation_loop("bwd_dkdv")
    block_d = max(16, triton.next_power_of_2(d))
    rot = _rotation_table(call, dkdv_sinusoid)
    q_rot = torch.empty((b * h * lq * block_d,), dtype=q.dtype, device=q.device) if dkdv_loop else q
    g_rot = torch.empty_like(q_rot) if dkdv_loop else q
    _relattn_bwd_delta_kernel[(b * h, triton.cdiv(lq, delta_rows))](
        OUT=out,
        DOUT=grad_out,
        Q=q,
        T=call.table,
        ROW_MAX=lse[0],
        ROW_LOGSUM=lse[1],
        HMASK=call.pointers()["HMASK"],
        STATS=row_stats,
        ROT=rot,
        QROT=q_rot,
        GROT=g_rot,
        **strides("o", out),
        **strides("g", grad_out),
        **strides("q", q),
        **strides("t", call.table),
        **strides("h", call.head_mask),
        H=h,
        LQ=lq,
        R=call.r,
        STAT_ROWS=stat_rows,
        scale=float(call.scale),
        HEAD_DIM=d,
        BLOCK_D=block_d,
        BLOCK_M=delta_rows,
        RELATIVE=call.relative,
        HAS_HMASK=call.head_mask is not None,
        ROT_BLOCK_M=call.rotation_block_m() if dkdv_loop else 0,
    )
    stats = dict(DOUT=grad_out, ROW_MAX=lse[0], ROW_LOGSUM=lse[1], **strides("g", grad_out))
    if blocks_k * k.shape[2] > 0:  # else no key row: dk, dv are empty
        # The forward's scores: the rotation where the forward took it, from its query blocks' starts.
        _bwd_dkdv[autotune_grid(programs, blocks_k, "BLOCK_N")](
            **call.kwargs(
                DK=dk,
                DV=dv,
                STATS=row_stats,
                STAT_ROWS=stat_rows,
                ROT=rot,
                QROT=q_rot,
                GROT=g_rot,
                ROTQ=rotation_table_as(call.r, d, q.device, q.dtype) if dkdv_loop else q,
                SINUSOID=dkdv_sinusoid,
                ROT_BLOCK_M=call.rotation_block_m() if dkdv_sinusoid else 0,
                ROTATION_LOOP=dkdv_loop,
                FAR_LOOPS=call.far_loops("bwd_dkdv"),
                **stats,
            )
        )
    sinusoid = call.rotation("bwd_dq")
    band_p = configs.band_p(call.r) if call.relative and not sinusoid else 0
    scratch = band_scratch(q, band_p, 2)
    _bwd_dq[autotune_grid(programs, blocks_q, "BLOCK_M")](
        **call.kwargs(
            DQ=dq,
            WS=scratch,
            ROT=_rotation_table(call, sinusoid),
            QROT=q_rot,
            GROT=g_rot,
            SINUSOID=sinusoid,
            ROTATION_LOOP=sinusoid and call.rotation_loop("bwd_dq"),
            # The delta kernel's q_rot / dO_rot where it wrote them: dQ loads its rotated tiles when its BLOCK_M is
            # ROT_BLOCK_M (the angles' block starts agree), else rotates them itself.
            ROT_BLOCK_M=call.rotation_block_m() if sinusoid and dkdv_loop else 0,
            BAND_P=band_p,
            FAR_LOOPS=call.far_loops("bwd_dq"),
            BRANCHLESS_BAND=configs.dq_branchless_band(configs.arch_major(call.q)),
            DELTA=row_stats[0],
            **stats,
        )
    )


def relattn_fwd_varlen(
    q,
    k,
    v,
    table,
    head_mask,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    max_relative_position,
    causal,
    scale,
    dropout_p,
    seed,
    *,
    relative: bool = True,
    sinusoid: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Varlen forward: q [Tq, H, D], k, v [Tk, H, D] (any token/head strides), cu_seqlens_q/k int32 [B + 1].

    Sequence b is q rows cu_seqlens_q[b] : [b + 1] and k/v rows cu_seqlens_k[b] : [b + 1]; its query i sits at
    position i + Lk_b - Lq_b. One program per (sequence, head, query block of max_seqlen_q rows): max_seqlen_q /
    max_seqlen_k must be >= every sequence's length (rows past them are never computed). Returns (out [Tq, H, D]
    contiguous, lse [2, H, Tq] float32); a query row of a sequence without keys outputs 0.
    """
    b = check_varlen(q, k, v, table, None, None, head_mask, cu_seqlens_q, cu_seqlens_k)
    tq, h, d = q.shape
    out = torch.empty((tq, h, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((2, h, tq), dtype=torch.float32, device=q.device)
    if b * h * max_seqlen_q * tq == 0:
        return out, lse  # no query row (empty grids are not launched)
    qv, kv, vv = (varlen_view(x) for x in (q, k, v))
    # Kernel LQ / LK = Tq / Tk (row counts of the statistics), the lengths' keys from max_seqlen.
    call = _call(
        qv, kv, vv, table, None, None, head_mask, (cu_seqlens_q, cu_seqlens_k), max_relative_position, causal, 0,
        scale, dropout_p, seed, length_key(max_seqlen_q), length_key(max_seqlen_k), relative, sinusoid,
    )  # fmt: skip
    _launch_fwd(call, varlen_view(out), lse, b * h, max_seqlen_q)
    return out, lse


def relattn_bwd_varlen(
    grad_out,
    q,
    k,
    v,
    table,
    out,
    lse,
    head_mask,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    max_relative_position,
    causal,
    scale,
    dropout_p,
    seed,
    *,
    relative: bool = True,
    sinusoid: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Varlen backward: (dq [Tq, H, D], dk, dv [Tk, H, D]) contiguous; lse is the forward's [2, H, Tq]."""
    b = check_varlen(q, k, v, table, None, None, head_mask, cu_seqlens_q, cu_seqlens_k)
    tq, h, d = q.shape
    expect("grad_out", grad_out, tuple(q.shape), q.device, q.dtype)
    expect("out", out, tuple(q.shape), q.device, q.dtype)
    expect("lse", lse, (2, h, tq), q.device, torch.float32)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    qv, kv, vv = (varlen_view(x) for x in (q, k, v))
    call = _call(
        qv, kv, vv, table, None, None, head_mask, (cu_seqlens_q, cu_seqlens_k), max_relative_position, causal, 0,
        scale, dropout_p, seed, length_key(max_seqlen_q), length_key(max_seqlen_k), relative, sinusoid,
    )  # fmt: skip
    _launch_bwd(
        call, varlen_view(grad_out), varlen_view(out), lse.reshape(2, 1, h, tq), dq, dk, dv, b * h, max_seqlen_q,
        max_seqlen_k,
    )  # fmt: skip
    return dq, dk, dv
