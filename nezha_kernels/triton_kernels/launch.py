"""Launchers: validate, allocate, launch on the current stream. Nothing about autograd here.

Tensors are passed with their strides (strided q/k/v views are read in place, never copied);
masks: key padding bool [B, Lk] is reinterpreted as uint8, the additive mask is the expanded
[B, H, Lq, Lk] view (stride 0 on broadcast dims), head_mask [B, H] (possibly an expanded view).
"""

from __future__ import annotations

import torch
import triton

from . import configs
from .backward import _relattn_bwd_delta_kernel, _relattn_bwd_dkdv_kernel, _relattn_bwd_dq_kernel
from .forward import _relattn_fwd_kernel
from .philox import seed_words

_fwd = configs.autotune("fwd")(_relattn_fwd_kernel)
_bwd_dkdv = configs.autotune("bwd_dkdv")(_relattn_bwd_dkdv_kernel)
_bwd_dq = configs.autotune("bwd_dq")(_relattn_bwd_dq_kernel)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def _strides(t: torch.Tensor | None, rank: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * rank


def _common_args(q, k, v, table, key_padding, additive_mask, head_mask, r, causal, q_offset,
                 dropout_p, seed, scale) -> tuple[tuple, dict]:
    """(pointer/stride/scalar positional args after the kernel-specific pointers, constexpr kwargs)."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    dummy = q  # any valid pointer for an absent optional tensor (never read: its HAS_* flag is off)
    kpad = key_padding.view(torch.uint8) if key_padding is not None else dummy
    seed_lo, seed_hi = seed_words(seed if dropout_p > 0.0 else 0)
    pointers = (kpad, additive_mask if additive_mask is not None else dummy,
                head_mask if head_mask is not None else dummy)
    strides = (
        *q.stride(), *k.stride(), *v.stride(), *table.stride(),
    )
    tail = (
        *_strides(key_padding, 2), *_strides(additive_mask, 4), *_strides(head_mask, 2),
        h, lq, lk, r, q_offset,
        float(scale), float(dropout_p), 1.0 / (1.0 - dropout_p), seed_lo, seed_hi,
        triton.next_power_of_2(lq), triton.next_power_of_2(lk),
    )
    has_masks = key_padding is not None or additive_mask is not None
    meta = dict(
        HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
        HAS_KPAD=key_padding is not None, HAS_AMASK=additive_mask is not None, HAS_HMASK=head_mask is not None,
        CAUSAL=causal, CAUSAL_SKIP=causal and not has_masks, HAS_DROPOUT=dropout_p > 0.0,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return pointers, strides, tail, meta


def _band_scratch(q: torch.Tensor, band_p: int, planes: int) -> torch.Tensor:
    """fp32 [B*H*Lq, planes*band_p] block-band scratch (uninitialized: every slot read is written first).

    O(B*H*Lq*R), freed after the kernel; a 1-element dummy when band_p == 0 (per-tile mode).
    """
    b, h, lq, _ = q.shape
    if band_p == 0:
        return torch.empty(1, dtype=torch.float32, device=q.device)
    return torch.empty((b * h * lq, planes * band_p), dtype=torch.float32, device=q.device)


def check_tensors(q, k, v, table) -> None:
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q: the triton kernels take float16, bfloat16 or float32, got {q.dtype}")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"q: head dim {q.shape[-1]} exceeds the triton kernels' maximum {MAX_HEAD_DIM}")


def _relattn_fwd(q, k, v, table, key_padding, additive_mask, head_mask, r, causal, q_offset,
                 dropout_p, seed, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward. q: [B, H, Lq, D], k, v: [B, H, Lk, D], table: [2R+1, D] (any strides).

    Returns (out [B, H, Lq, D] contiguous in q's dtype, lse [2, B, H, Lq] float32) where lse[0] is each
    row's score max and lse[1] the log of its softmax sum (the log-sum-exp is lse[0] + lse[1]).
    """
    check_tensors(q, k, v, table)
    b, h, lq, d = q.shape
    out = torch.empty((b, h, lq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((2, b, h, lq), dtype=torch.float32, device=q.device)
    pointers, strides, tail, meta = _common_args(q, k, v, table, key_padding, additive_mask, head_mask, r,
                                                 causal, q_offset, dropout_p, seed, scale)
    band_p = configs.band_p(r)
    scratch = _band_scratch(q, band_p, 1)
    grid = lambda cfg: (triton.cdiv(lq, cfg["BLOCK_M"]), b * h)  # noqa: E731
    _fwd[grid](q, k, v, table, out, lse[0], lse[1], scratch, *pointers, *strides, *out.stride(), *tail,
               BAND_P=band_p, **meta)
    return out, lse


def _relattn_bwd(grad_out, q, k, v, table, out, lse, key_padding, additive_mask, head_mask, r, causal,
                 q_offset, dropout_p, seed, scale) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward: (dq, dk, dv), contiguous, in q's dtype. lse is the forward's [2, B, H, Lq] statistics."""
    check_tensors(q, k, v, table)
    b, h, lq, d = q.shape
    lk = k.shape[2]
    delta = torch.empty((b, h, lq), dtype=torch.float32, device=q.device)
    block_d = max(16, triton.next_power_of_2(d))
    delta_rows = 16 if configs.interpreted() else 64
    _relattn_bwd_delta_kernel[(triton.cdiv(lq, delta_rows), b * h)](
        out, grad_out, delta, *out.stride(), *grad_out.stride(), h, lq,
        HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=delta_rows,
    )
    dq = torch.empty((b, h, lq, d), dtype=q.dtype, device=q.device)
    dk = torch.empty((b, h, lk, d), dtype=k.dtype, device=q.device)
    dv = torch.empty((b, h, lk, d), dtype=v.dtype, device=q.device)
    pointers, strides, tail, meta = _common_args(q, k, v, table, key_padding, additive_mask, head_mask, r,
                                                 causal, q_offset, dropout_p, seed, scale)
    grid_kv = lambda cfg: (triton.cdiv(lk, cfg["BLOCK_N"]), b * h)  # noqa: E731
    _bwd_dkdv[grid_kv](q, k, v, table, grad_out, lse[0], lse[1], delta, dk, dv, *pointers, *strides,
                       *grad_out.stride(), *tail, **meta)
    grid_q = lambda cfg: (triton.cdiv(lq, cfg["BLOCK_M"]), b * h)  # noqa: E731
    band_p = configs.band_p(r)
    scratch = _band_scratch(q, band_p, 2)
    _bwd_dq[grid_q](q, k, v, table, grad_out, lse[0], lse[1], delta, dq, scratch, *pointers, *strides,
                    *grad_out.stride(), *tail, BAND_P=band_p, **meta)
    return dq, dk, dv
