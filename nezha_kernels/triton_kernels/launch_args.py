"""Argument checks for the launchers (launch.py): the memory-guarding checks, the band scratch, the varlen views and
the autotuner grid. The kernels' arguments themselves are named by call.KernelCall.
"""

from __future__ import annotations

import torch
import triton

__all__ = [
    "MAX_PROGRAMS_AXIS0",
    "MAX_BLOCKS",
    "autotune_grid",
    "expect",
    "check_dense",
    "band_scratch",
    "check_varlen",
    "varlen_view",
]

# CUDA's grid limits: axis 0 up to 2**31 - 1 programs (B*H), axes 1 and 2 up to 65535 (row blocks).
MAX_PROGRAMS_AXIS0 = 2**31 - 1
MAX_BLOCKS = 65535


def autotune_grid(bh: int, length: int, block: str):
    """Autotuner grid: (B*H, cdiv(length, cfg[block]))."""
    return lambda cfg: (bh, triton.cdiv(length, cfg[block]))


def expect(name: str, t: torch.Tensor, shape: tuple, device: torch.device, dtype=None) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got {t.device}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")


def check_dense(q, k, v, table, key_padding, additive_mask, head_mask) -> None:
    """Memory-safety checks of a dense call: what the kernels index must exist where they read it."""
    if q.dim() != 4:
        raise ValueError(f"q: expected [B, H, Lq, D], got shape {tuple(q.shape)}")
    b, h, lq, d = q.shape
    if k.dim() != 4:
        raise ValueError(f"k: expected [B, H, Lk, D], got shape {tuple(k.shape)}")
    lk = k.shape[2]
    expect("k", k, (b, h, lk, d), q.device, q.dtype)
    expect("v", v, (b, h, lk, d), q.device, q.dtype)
    if table.dim() != 2 or table.shape[1] != d or table.shape[0] % 2 != 1:
        raise ValueError(f"table: expected [2R+1, {d}], got shape {tuple(table.shape)}")
    expect("table", table, tuple(table.shape), q.device, q.dtype)
    if key_padding is not None:
        expect("key_padding", key_padding, (b, lk), q.device, torch.bool)
    if additive_mask is not None:
        expect("additive_mask", additive_mask, (b, h, lq, lk), q.device)
    if head_mask is not None:
        expect("head_mask", head_mask, (b, h), q.device)
    if b * h > MAX_PROGRAMS_AXIS0:
        raise ValueError(f"q: B*H = {b * h} exceeds the grid limit {MAX_PROGRAMS_AXIS0}")


def band_scratch(q: torch.Tensor, band_p: int, planes: int) -> torch.Tensor:
    """fp32 [B*H*Lq, planes*band_p] block-band scratch (uninitialized: every slot read is written first).

    O(B*H*Lq*R) (varlen: H*Tq*R), freed after the kernel; a 1-element dummy when band_p == 0 (per-tile mode).
    """
    b, h, lq, _ = q.shape
    if band_p == 0:
        return torch.empty(1, dtype=torch.float32, device=q.device)
    return torch.empty((b * h * lq, planes * band_p), dtype=torch.float32, device=q.device)


def check_varlen(q, k, v, table, key_padding, additive_mask, head_mask, cu_seqlens_q, cu_seqlens_k) -> int:
    """Memory-safety checks of a varlen call; returns B. cu_seqlens' values (0 .. T, non-decreasing) were
    validated by the op (prepare_varlen_inputs): the kernels trust them."""
    if q.dim() != 3:
        raise ValueError(f"q: expected [Tq, H, D] with cu_seqlens, got shape {tuple(q.shape)}")
    _, h, d = q.shape
    if k.dim() != 3:
        raise ValueError(f"k: expected [Tk, H, D] with cu_seqlens, got shape {tuple(k.shape)}")
    expect("k", k, (k.shape[0], h, d), q.device, q.dtype)
    expect("v", v, tuple(k.shape), q.device, q.dtype)
    if table.dim() != 2 or table.shape[1] != d or table.shape[0] % 2 != 1:
        raise ValueError(f"table: expected [2R+1, {d}], got shape {tuple(table.shape)}")
    expect("table", table, tuple(table.shape), q.device, q.dtype)
    if cu_seqlens_k is None or cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape[0] < 1:
        raise ValueError("cu_seqlens_q, cu_seqlens_k: expected two int32 [B + 1] tensors")
    expect("cu_seqlens_q", cu_seqlens_q, tuple(cu_seqlens_q.shape), q.device, torch.int32)
    expect("cu_seqlens_k", cu_seqlens_k, tuple(cu_seqlens_q.shape), q.device, torch.int32)
    if key_padding is not None or additive_mask is not None:
        raise ValueError("key_padding, additive_mask: not taken with cu_seqlens (the sequences carry no padding)")
    b = cu_seqlens_q.shape[0] - 1
    if head_mask is not None:
        expect("head_mask", head_mask, (b, h), q.device)
    if b * h > MAX_PROGRAMS_AXIS0:
        raise ValueError(f"cu_seqlens_q: B*H = {b * h} exceeds the grid limit {MAX_PROGRAMS_AXIS0}")
    return b


def varlen_view(x: torch.Tensor) -> torch.Tensor:
    """[T, H, D] -> the [1, H, T, D] view the kernels index (batch stride 0: sequences start at cu[b])."""
    return x.as_strided((1, x.shape[1], x.shape[0], x.shape[2]), (0, x.stride(1), x.stride(0), x.stride(2)))
