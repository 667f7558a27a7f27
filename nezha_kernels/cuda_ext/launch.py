"""Launchers of the CUDA kernels: canonical layouts, allocate (in the extension), launch on the current stream.

``relattn_fwd`` / ``relattn_bwd`` take exactly the arguments of the ``nezha_kernels::relattn_fwd`` / ``_bwd`` ops
(nezha_kernels/ops.py) plus the kernel family, ``family="tc"`` (tensor cores, fp16 / bf16) or ``"simt"``; which
family a dtype runs is decided by the caller (nezha_kernels/backends/cuda_backend.impl_name), not here. Nothing
about autograd and no argument validation: ``prepare_inputs`` did that; the binding checks only what guards
memory (device, dtype, shape, strides, index range).

Layouts handed to the extension: q, k, v with any (batch, head, row) strides and unit stride on D; the table
contiguous; key_padding bool [B, Lk] contiguous; the additive mask as float32 [B, H, Lq, Lk] with stride 0 on
its broadcast dims (only its distinct entries are copied); head_mask float32 [B, H] contiguous. Padding-free
calls (cu_seqlens_q given): q [Tq, H, D], k / v [Tk, H, D] (any head / row strides), cu_seqlens int32 [B+1]
contiguous, max_seqlen_q / max_seqlen_k sizing the grid; out [Tq, H, D], lse [2, H, Tq].

The extension module comes from ``extension(device)``: the built one (AOT or JIT, nezha_kernels/cuda_ext/build.py),
or, inside ``use_extension(...)`` (nezha_kernels/cuda_ext/emulator.emulated_cuda_backend), the CPU emulation.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import torch

__all__ = ["FAMILIES", "relattn_fwd", "relattn_bwd", "extension", "use_extension", "redirected"]

# The binding's `impl` code per kernel family (nezha::Impl in csrc/relattn.h).
FAMILIES = {"simt": 0, "tc": 1}

_override = None


def extension(device: torch.device):
    """The module with ``forward`` / ``backward`` (csrc/binding.cpp) for tensors on ``device``: the redirect of
    ``use_extension``, else the built extension for the device's arch (may JIT-build it: build.load_extension)."""
    if _override is not None:
        return _override
    from .build import load_extension

    major, minor = torch.cuda.get_device_capability(device) if device.type == "cuda" else (8, 0)
    return load_extension(major * 10 + minor)


def redirected() -> bool:
    """Whether a ``use_extension`` block is active (the emulator: the launchers then take CPU tensors)."""
    return _override is not None


@contextlib.contextmanager
def use_extension(ext) -> Iterator[None]:
    """Within the block, the launchers call ``ext`` instead of the built extension (not thread-safe: tests)."""
    global _override
    saved, _override = _override, ext
    try:
        yield
    finally:
        _override = saved


def _family_code(family: str) -> int:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    return FAMILIES[family]


def _stream(t: torch.Tensor) -> int:
    """torch's current stream on t's device, as the integer the binding takes (0 for CPU tensors: emulator)."""
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """The kernels take any (batch, head, row) strides but need a contiguous head dim."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _compact_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """float32 copy of an additive mask's distinct entries, expanded back (stride 0 on broadcast dims)."""
    if mask is None:
        return None
    base = mask[tuple(slice(0, 1) if s == 0 else slice(None) for s in mask.stride())]
    return base.to(torch.float32).expand(mask.shape)


def _canonical(q, k, v, table, key_padding, additive_mask, head_mask, batch: int) -> tuple:
    return (
        _unit_stride(q),
        _unit_stride(k),
        _unit_stride(v),
        table.contiguous(),
        key_padding.contiguous() if key_padding is not None else None,
        _compact_mask(additive_mask),
        head_mask.to(torch.float32).expand(batch, q.shape[1]).contiguous() if head_mask is not None else None,
    )


# The extended sinusoid table of the tensor-core forward's rotation path (csrc/relattn.h: ROT_SHIFT, ROT_MAX_BM,
# rotation_rows): row u at angle (u - ROT_SHIFT) w_t, 2R + ROT_MAX_BM + 2 ROT_SHIFT rows.
ROT_SHIFT = 64
ROT_MAX_BM = 128


def rotation_table(max_relative_position: int, head_dim: int) -> torch.Tensor:
    """float64 [2R + ROT_MAX_BM + 2 ROT_SHIFT, D]: row u = [sin((u - ROT_SHIFT) w_t), cos((u - ROT_SHIFT) w_t)]_t,
    w_t = 10000^(-2t/D), NEZHA's sinusoid (nezha_kernels/table.py) at unclamped, shifted positions."""
    rows = 2 * max_relative_position + ROT_MAX_BM + 2 * ROT_SHIFT
    angle = torch.arange(rows, dtype=torch.float64).sub_(ROT_SHIFT).unsqueeze(1)
    angle = angle * torch.exp(torch.arange(0, head_dim, 2, dtype=torch.float64) * (-math.log(10000.0) / head_dim))
    return torch.stack((angle.sin(), angle.cos()), dim=-1).reshape(rows, head_dim)


def rotation_f32_order(table: torch.Tensor) -> torch.Tensor:
    """``table`` [rows, D] with each row's (sin, cos) pairs t in mma-fragment order: pair t at position
    (t % 4) D / 8 + t / 4 (csrc/relattn.h rot_f32_pair), the float32 table's layout."""
    rows, d = table.shape
    return table.reshape(rows, d // 8, 4, 2).transpose(1, 2).reshape(rows, d)


@functools.lru_cache(maxsize=32)
def _rotation_tables(
    max_relative_position: int, head_dim: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    # One copy per (R, D, dtype, device), as table.py's default table: later calls make no host-to-device copy.
    with torch.inference_mode(False), torch.no_grad():
        table = rotation_table(max_relative_position, head_dim)
        f32 = rotation_f32_order(table).to(device=device, dtype=torch.float32).contiguous()
        return table.to(device=device, dtype=dtype), f32


def rotation_args(q, max_relative_position, family: str, sinusoid: bool) -> tuple:
    """(rot_keys, rot_f32) for the tensor-core forward when the table is the op's sinusoid, else (None, None).

    Any key range: the rotation kernels run the PLAIN kernels' block heights, so their far tiles cost the same and
    their band less (benchmarks/NOTES.md, "CUDA rotation forward at D = 64: 128-row blocks"). Head dims 32 and 64
    only, as csrc/relattn_rotation.cuh rotation_kernel: at D = 128 the table slices are predicted faster."""
    if not sinusoid or family != "tc" or q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] > 64:
        return None, None
    return _rotation_tables(int(max_relative_position), q.shape[-1], q.dtype, q.device)


def _batch(q, cu_seqlens_q) -> int:
    return q.shape[0] if cu_seqlens_q is None else cu_seqlens_q.shape[0] - 1


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
    family: str,
    sinusoid: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, Lq, D] in q's dtype, lse [2, B, H, Lq] float32: row max, log of the row sum).

    q: [B, H, Lq, D], k / v: [B, H, Lk, D], table: [2R+1, D] in q's dtype; seed: int (0 without dropout).
    max_seqlen_q / max_seqlen_k (= Lq, Lk for dense calls) are not needed by the dense kernels. sinusoid: the table
    is NEZHA's default (ops.py): the tensor-core family then gets the extended sinusoid tables (cached per R, D,
    dtype, device) and its PLAIN calls take the band from the rotation identity (csrc/relattn_rotation.cuh); the
    table still gives the edge rows. Padding-free
    (cu_seqlens_q given): q [Tq, H, D], k / v [Tk, H, D] -> out [Tq, H, D], lse [2, H, Tq]; q_offset unused.
    """
    impl = _family_code(family)
    ext = extension(q.device)
    args = _canonical(q, k, v, table, key_padding, additive_mask, head_mask, _batch(q, cu_seqlens_q))
    rot_keys, rot_f32 = rotation_args(q, max_relative_position, family, sinusoid)
    if cu_seqlens_q is not None:
        q, k, v, table, _, _, head_mask = args
        out, lse = ext.forward_varlen(
            q,
            k,
            v,
            table,
            head_mask,
            cu_seqlens_q.contiguous(),
            cu_seqlens_k.contiguous(),
            int(max_seqlen_q),
            int(max_seqlen_k),
            max_relative_position,
            causal,
            scale,
            dropout_p,
            int(seed),
            _stream(q),
            impl,
            rot_keys,
            rot_f32,
        )
    else:
        out, lse = ext.forward(
            *args,
            max_relative_position,
            q_offset,
            causal,
            scale,
            dropout_p,
            int(seed),
            _stream(q),
            impl,
            rot_keys,
            rot_f32,
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
    *,
    family: str,
    sinusoid: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), contiguous, in q's dtype; out / lse from ``relattn_fwd`` with the same arguments.

    The tensor-core family runs the fused backward (one kernel per key block, dQ added with atomics: its summation
    order varies from run to run) unless ``torch.are_deterministic_algorithms_enabled()``, PyTorch's switch, asks
    for the deterministic two-kernel backward (dQ per query block, dK / dV per key block). SIMT: always two kernels.
    """
    impl = _family_code(family)
    deterministic = torch.are_deterministic_algorithms_enabled()
    grad_out = grad_out.contiguous()
    # delta_i = dO_i . O_i (O with its positional part): the softmax-backward row term, laid out like lse[0]
    # ([B, H, Lq]; padding-free [H, Tq]).
    delta = (grad_out.float() * out.float()).sum(-1)
    delta = (delta if cu_seqlens_q is None else delta.t()).contiguous()
    ext = extension(q.device)
    args = _canonical(q, k, v, table, key_padding, additive_mask, head_mask, _batch(q, cu_seqlens_q))
    if cu_seqlens_q is not None:
        q, k, v, table, _, _, head_mask = args
        dq, dk, dv = ext.backward_varlen(
            grad_out,
            q,
            k,
            v,
            table,
            head_mask,
            lse.contiguous(),
            delta,
            cu_seqlens_q.contiguous(),
            cu_seqlens_k.contiguous(),
            int(max_seqlen_q),
            int(max_seqlen_k),
            max_relative_position,
            causal,
            scale,
            dropout_p,
            int(seed),
            _stream(q),
            impl,
            deterministic,
        )
    else:
        dq, dk, dv = ext.backward(
            grad_out,
            *args,
            lse.contiguous(),
            delta,
            max_relative_position,
            q_offset,
            causal,
            scale,
            dropout_p,
            int(seed),
            _stream(q),
            impl,
            deterministic,
        )
    return dq, dk, dv
