"""Launchers: allocate, launch on the current stream. Nothing about autograd or argument semantics here.

``relattn_fwd`` / ``relattn_bwd`` take exactly the op's arguments (nezha_kernels::relattn_fwd / _bwd, in
that order, seed as a Python int). The op validated every argument once (inputs.prepare_inputs); these
functions keep only the checks that guard memory: device, dtype, shape and stride of what the kernels
read and write.

Tensors are passed with their strides (strided q/k/v views are read in place, never copied);
masks: key padding bool [B, Lk] is reinterpreted as uint8, the additive mask is the expanded
[B, H, Lq, Lk] view (stride 0 on broadcast dims), head_mask [B, H] (possibly an expanded view).

Grids put B*H on axis 0 (limit 2**31 - 1) and the query or key block on axis 1 (limit 65535): see MAX_BLOCKS.
"""

from __future__ import annotations

import torch
import triton

from . import configs
from .backward import _relattn_bwd_delta_kernel, _relattn_bwd_dkdv_kernel
from .backward_dq import _relattn_bwd_dq_kernel
from .forward import _relattn_fwd_kernel
from .philox import seed_words

_fwd = configs.autotune("fwd")(_relattn_fwd_kernel)
_bwd_dkdv = configs.autotune("bwd_dkdv")(_relattn_bwd_dkdv_kernel)
_bwd_dq = configs.autotune("bwd_dq")(_relattn_bwd_dq_kernel)

# CUDA's grid limits: axis 0 up to 2**31 - 1 programs (B*H), axes 1 and 2 up to 65535 (row blocks).
MAX_PROGRAMS_AXIS0 = 2**31 - 1
MAX_BLOCKS = 65535
# Rows per program of the delta kernel (rowsum(dO * O)).
DELTA_ROWS_GPU = 64
DELTA_ROWS_INTERPRETED = 16


def _grid(bh: int, length: int, block: str):
    """Autotuner grid: (B*H, cdiv(length, cfg[block]))."""
    return lambda cfg: (bh, triton.cdiv(length, cfg[block]))


def _length_key(length: int) -> int:
    """Autotuning key of a length (LQ_KEY / LK_KEY): a power of two, so new lengths rarely re-tune."""
    return triton.next_power_of_2(max(1, length))


def _strides(t: torch.Tensor | None, rank: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * rank


def _expect(name: str, t: torch.Tensor, shape: tuple, device: torch.device, dtype=None) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got {t.device}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")


def _check_dense(q, k, v, table, key_padding, additive_mask, head_mask) -> None:
    """Memory-safety checks of a dense call: what the kernels index must exist where they read it."""
    if q.dim() != 4:
        raise ValueError(f"q: expected [B, H, Lq, D], got shape {tuple(q.shape)}")
    b, h, lq, d = q.shape
    if k.dim() != 4:
        raise ValueError(f"k: expected [B, H, Lk, D], got shape {tuple(k.shape)}")
    lk = k.shape[2]
    _expect("k", k, (b, h, lk, d), q.device, q.dtype)
    _expect("v", v, (b, h, lk, d), q.device, q.dtype)
    if table.dim() != 2 or table.shape[1] != d or table.shape[0] % 2 != 1:
        raise ValueError(f"table: expected [2R+1, {d}], got shape {tuple(table.shape)}")
    _expect("table", table, tuple(table.shape), q.device, q.dtype)
    if key_padding is not None:
        _expect("key_padding", key_padding, (b, lk), q.device, torch.bool)
    if additive_mask is not None:
        _expect("additive_mask", additive_mask, (b, h, lq, lk), q.device)
    if head_mask is not None:
        _expect("head_mask", head_mask, (b, h), q.device)
    if b * h > MAX_PROGRAMS_AXIS0:
        raise ValueError(f"q: B*H = {b * h} exceeds the grid limit {MAX_PROGRAMS_AXIS0}")


def _common_args(
    q, k, v, table, key_padding, additive_mask, head_mask, r, causal, q_offset, dropout_p, seed, scale, cu_seqlens=None
) -> tuple[tuple, tuple, tuple, dict]:
    """(optional-tensor pointers, q/k/v/table strides, trailing strides + scalars, constexpr kwargs).

    q, k, v: [B, H, L, D] (strides), or for varlen the [1, H, T, D] views of _varlen_view with
    cu_seqlens = (cu_seqlens_q, cu_seqlens_k).
    """
    b, h, lq, d = q.shape
    lk = k.shape[2]
    dummy = q  # any valid pointer for an absent optional tensor (never read: its HAS_* flag is off)
    kpad = key_padding.view(torch.uint8) if key_padding is not None else dummy
    seed_lo, seed_hi = seed_words(seed if dropout_p > 0.0 else 0)
    cu_q, cu_k = cu_seqlens if cu_seqlens is not None else (dummy, dummy)
    pointers = (
        kpad,
        additive_mask if additive_mask is not None else dummy,
        head_mask if head_mask is not None else dummy,
        cu_q,
        cu_k,
    )
    strides = (
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *table.stride(),
    )
    tail = (
        *_strides(key_padding, 2),
        *_strides(additive_mask, 4),
        *_strides(head_mask, 2),
        h,
        lq,
        lk,
        r,
        q_offset,
        float(scale),
        float(dropout_p),
        1.0 / (1.0 - dropout_p),
        seed_lo,
        seed_hi,
        _length_key(lq),
        _length_key(lk),
    )
    has_masks = key_padding is not None or additive_mask is not None
    meta = dict(
        HEAD_DIM=d,
        BLOCK_D=max(16, triton.next_power_of_2(d)),
        HAS_KPAD=key_padding is not None,
        HAS_AMASK=additive_mask is not None,
        HAS_HMASK=head_mask is not None,
        CAUSAL=causal,
        CAUSAL_SKIP=causal and not has_masks,
        HAS_DROPOUT=dropout_p > 0.0,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        VARLEN=cu_seqlens is not None,
    )
    return pointers, strides, tail, meta


def _band_scratch(q: torch.Tensor, band_p: int, planes: int) -> torch.Tensor:
    """fp32 [B*H*Lq, planes*band_p] block-band scratch (uninitialized: every slot read is written first).

    O(B*H*Lq*R) (varlen: H*Tq*R), freed after the kernel; a 1-element dummy when band_p == 0 (per-tile mode).
    """
    b, h, lq, _ = q.shape
    if band_p == 0:
        return torch.empty(1, dtype=torch.float32, device=q.device)
    return torch.empty((b * h * lq, planes * band_p), dtype=torch.float32, device=q.device)


def _check_varlen(q, k, v, table, key_padding, additive_mask, head_mask, cu_seqlens_q, cu_seqlens_k) -> int:
    """Memory-safety checks of a varlen call; returns B. cu_seqlens' values (0 .. T, non-decreasing) were
    validated by the op (prepare_varlen_inputs): the kernels trust them."""
    if q.dim() != 3:
        raise ValueError(f"q: expected [Tq, H, D] with cu_seqlens, got shape {tuple(q.shape)}")
    _, h, d = q.shape
    if k.dim() != 3:
        raise ValueError(f"k: expected [Tk, H, D] with cu_seqlens, got shape {tuple(k.shape)}")
    _expect("k", k, (k.shape[0], h, d), q.device, q.dtype)
    _expect("v", v, tuple(k.shape), q.device, q.dtype)
    if table.dim() != 2 or table.shape[1] != d or table.shape[0] % 2 != 1:
        raise ValueError(f"table: expected [2R+1, {d}], got shape {tuple(table.shape)}")
    _expect("table", table, tuple(table.shape), q.device, q.dtype)
    if cu_seqlens_k is None or cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape[0] < 1:
        raise ValueError("cu_seqlens_q, cu_seqlens_k: expected two int32 [B + 1] tensors")
    _expect("cu_seqlens_q", cu_seqlens_q, tuple(cu_seqlens_q.shape), q.device, torch.int32)
    _expect("cu_seqlens_k", cu_seqlens_k, tuple(cu_seqlens_q.shape), q.device, torch.int32)
    if key_padding is not None or additive_mask is not None:
        raise ValueError("key_padding, additive_mask: not taken with cu_seqlens (the sequences carry no padding)")
    b = cu_seqlens_q.shape[0] - 1
    if head_mask is not None:
        _expect("head_mask", head_mask, (b, h), q.device)
    if b * h > MAX_PROGRAMS_AXIS0:
        raise ValueError(f"cu_seqlens_q: B*H = {b * h} exceeds the grid limit {MAX_PROGRAMS_AXIS0}")
    return b


def _varlen_view(x: torch.Tensor) -> torch.Tensor:
    """[T, H, D] -> the [1, H, T, D] view the kernels index (batch stride 0: sequences start at cu[b])."""
    return x.as_strided((1, x.shape[1], x.shape[0], x.shape[2]), (0, x.stride(1), x.stride(0), x.stride(2)))


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward. Dense: q [B, H, Lq, D], k, v [B, H, Lk, D], table [2R+1, D] (any strides).

    Returns (out [B, H, Lq, D] contiguous in q's dtype, lse [2, B, H, Lq] float32) where lse[0] is each
    row's score max and lse[1] the log of its softmax sum (the log-sum-exp is lse[0] + lse[1]).
    Varlen (cu_seqlens_q given): see relattn_fwd_varlen.
    """
    if cu_seqlens_q is not None:
        return relattn_fwd_varlen(
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
        )
    _check_dense(q, k, v, table, key_padding, additive_mask, head_mask)
    b, h, lq, d = q.shape
    out = torch.empty((b, h, lq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((2, b, h, lq), dtype=torch.float32, device=q.device)
    pointers, strides, tail, meta = _common_args(
        q,
        k,
        v,
        table,
        key_padding,
        additive_mask,
        head_mask,
        max_relative_position,
        causal,
        q_offset,
        dropout_p,
        seed,
        scale,
    )
    band_p = configs.band_p(max_relative_position)
    scratch = _band_scratch(q, band_p, 1)
    _fwd[_grid(b * h, lq, "BLOCK_M")](
        q, k, v, table, out, lse[0], lse[1], scratch, *pointers, *strides, *out.stride(), *tail, BAND_P=band_p, **meta
    )
    return out, lse


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward: (dq, dk, dv), contiguous, in q's dtype. lse is the forward's [2, B, H, Lq] statistics.

    Varlen (cu_seqlens_q given): see relattn_bwd_varlen.
    """
    if cu_seqlens_q is not None:
        return relattn_bwd_varlen(
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
        )
    _check_dense(q, k, v, table, key_padding, additive_mask, head_mask)
    b, h, lq, d = q.shape
    lk = k.shape[2]
    _expect("grad_out", grad_out, (b, h, lq, d), q.device, q.dtype)
    _expect("out", out, (b, h, lq, d), q.device, q.dtype)
    _expect("lse", lse, (2, b, h, lq), q.device, torch.float32)
    dq = torch.empty((b, h, lq, d), dtype=q.dtype, device=q.device)
    dk = torch.empty((b, h, lk, d), dtype=k.dtype, device=q.device)
    dv = torch.empty((b, h, lk, d), dtype=v.dtype, device=q.device)
    args = _common_args(
        q,
        k,
        v,
        table,
        key_padding,
        additive_mask,
        head_mask,
        max_relative_position,
        causal,
        q_offset,
        dropout_p,
        seed,
        scale,
    )
    _launch_bwd(grad_out, q, k, v, table, out, lse, dq, dk, dv, args, b * h, lq, lk, max_relative_position)
    return dq, dk, dv


def _launch_bwd(grad_out, q, k, v, table, out, lse, dq, dk, dv, args, programs, blocks_q, blocks_k, r) -> None:
    """The three backward kernels on [B, H, L, D] tensors (or varlen views): delta, dK/dV, dQ.

    Grids: (programs, cdiv(blocks_q or blocks_k, BLOCK)); the delta kernel runs over every row of q.
    Empty grids (varlen: no sequence, or no query / key row) are not launched; dK / dV of keys no query
    sees are zeros (the dK/dV programs of a sequence without queries run an empty loop).
    """
    b, h, lq, d = q.shape
    if programs * blocks_q * lq == 0:  # no query row: every gradient is zero (or empty)
        for grad in (dq, dk, dv):
            grad.zero_()
        return
    lse = lse.contiguous()  # the kernels index it as [2, B*H*Lq] (varlen [2, H*Tq]) rows
    delta = torch.empty((b, h, lq), dtype=torch.float32, device=q.device)
    delta_rows = DELTA_ROWS_INTERPRETED if configs.interpreted() else DELTA_ROWS_GPU
    _relattn_bwd_delta_kernel[(b * h, triton.cdiv(lq, delta_rows))](
        out,
        grad_out,
        delta,
        *out.stride(),
        *grad_out.stride(),
        h,
        lq,
        HEAD_DIM=d,
        BLOCK_D=max(16, triton.next_power_of_2(d)),
        BLOCK_M=delta_rows,
    )
    pointers, strides, tail, meta = args
    if blocks_k * k.shape[2] > 0:  # else no key row: dk, dv are empty
        _bwd_dkdv[_grid(programs, blocks_k, "BLOCK_N")](
            q,
            k,
            v,
            table,
            grad_out,
            lse[0],
            lse[1],
            delta,
            dk,
            dv,
            *pointers,
            *strides,
            *grad_out.stride(),
            *tail,
            **meta,
        )
    band_p = configs.band_p(r)
    scratch = _band_scratch(q, band_p, 2)
    _bwd_dq[_grid(programs, blocks_q, "BLOCK_M")](
        q,
        k,
        v,
        table,
        grad_out,
        lse[0],
        lse[1],
        delta,
        dq,
        scratch,
        *pointers,
        *strides,
        *grad_out.stride(),
        *tail,
        BAND_P=band_p,
        **meta,
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Varlen forward: q [Tq, H, D], k, v [Tk, H, D] (any token/head strides), cu_seqlens_q/k int32 [B + 1].

    Sequence b is q rows cu_seqlens_q[b] : [b + 1] and k/v rows cu_seqlens_k[b] : [b + 1]; its query i sits at
    position i + Lk_b - Lq_b. One program per (sequence, head, query block of max_seqlen_q rows): max_seqlen_q /
    max_seqlen_k must be >= every sequence's length (rows past them are never computed). Returns (out [Tq, H, D]
    contiguous, lse [2, H, Tq] float32); a query row of a sequence without keys outputs 0.
    """
    b = _check_varlen(q, k, v, table, None, None, head_mask, cu_seqlens_q, cu_seqlens_k)
    tq, h, d = q.shape
    out = torch.empty((tq, h, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((2, h, tq), dtype=torch.float32, device=q.device)
    qv, kv, vv = (_varlen_view(x) for x in (q, k, v))
    # Kernel LQ / LK = Tq / Tk (row counts of the statistics), the lengths' keys from max_seqlen.
    pointers, strides, tail, meta = _common_args(
        qv,
        kv,
        vv,
        table,
        None,
        None,
        head_mask,
        max_relative_position,
        causal,
        0,
        dropout_p,
        seed,
        scale,
        (cu_seqlens_q, cu_seqlens_k),
    )
    tail = tail[:-2] + (_length_key(max_seqlen_q), _length_key(max_seqlen_k))
    if b * h * max_seqlen_q * tq == 0:
        return out, lse  # no query row (empty grids are not launched)
    band_p = configs.band_p(max_relative_position)
    scratch = _band_scratch(qv, band_p, 1)
    _fwd[_grid(b * h, max_seqlen_q, "BLOCK_M")](
        qv,
        kv,
        vv,
        table,
        _varlen_view(out),
        lse[0],
        lse[1],
        scratch,
        *pointers,
        *strides,
        *_varlen_view(out).stride(),
        *tail,
        BAND_P=band_p,
        **meta,
    )
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Varlen backward: (dq [Tq, H, D], dk, dv [Tk, H, D]) contiguous; lse is the forward's [2, H, Tq]."""
    b = _check_varlen(q, k, v, table, None, None, head_mask, cu_seqlens_q, cu_seqlens_k)
    tq, h, d = q.shape
    _expect("grad_out", grad_out, tuple(q.shape), q.device, q.dtype)
    _expect("out", out, tuple(q.shape), q.device, q.dtype)
    _expect("lse", lse, (2, h, tq), q.device, torch.float32)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    qv, kv, vv = (_varlen_view(x) for x in (q, k, v))
    pointers, strides, tail, meta = _common_args(
        qv,
        kv,
        vv,
        table,
        None,
        None,
        head_mask,
        max_relative_position,
        causal,
        0,
        dropout_p,
        seed,
        scale,
        (cu_seqlens_q, cu_seqlens_k),
    )
    tail = tail[:-2] + (_length_key(max_seqlen_q), _length_key(max_seqlen_k))
    _launch_bwd(
        _varlen_view(grad_out),
        qv,
        kv,
        vv,
        table,
        _varlen_view(out),
        lse.reshape(2, 1, h, tq),
        dq,
        dk,
        dv,
        (pointers, strides, tail, meta),
        b * h,
        max_seqlen_q,
        max_seqlen_k,
        max_relative_position,
    )
    return dq, dk, dv
