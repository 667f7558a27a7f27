"""torch custom ops (with fake twins) and the autograd Function over the CUDA extension.

Layers: extension (csrc/binding.cpp) -> private launchers ``_launch_forward`` / ``_launch_backward``
(canonical layouts, current stream) registered as ``nezha_kernels::cuda_relattn_fwd`` / ``_bwd``
custom ops with fake (shape-only) implementations so torch.compile can trace them -> the autograd
Function ``CudaRelativeAttention`` (saves q, k, v, table, out, lse; gradients for q, k, v).
"""

from __future__ import annotations

import os

import torch

from ..dropout import seed_tensor
from ..inputs import AttentionInputs
from .build import load_extension

__all__ = ["CudaRelativeAttention", "relative_attention_cuda", "IMPL_ENV", "kernel_impl"]

# Kernel family: "tc" (tensor cores, mma.sync; fp16 / bf16) or "simt" (CUDA cores). float32 always runs SIMT.
IMPL_ENV = "NEZHA_KERNELS_CUDA_IMPL"
_IMPL_CODES = {"simt": 0, "tc": 1}


def kernel_impl(dtype: torch.dtype) -> int:
    """Extension ``impl`` code for ``dtype``: $NEZHA_KERNELS_CUDA_IMPL (simt|tc, default tc), SIMT for float32."""
    name = os.environ.get(IMPL_ENV, "tc").strip().lower() or "tc"
    if name not in _IMPL_CODES:
        raise ValueError(f"{IMPL_ENV} must be one of {sorted(_IMPL_CODES)}, got {name!r}")
    return _IMPL_CODES["simt"] if dtype == torch.float32 else _IMPL_CODES[name]


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """The kernels take any (batch, head, row) strides but need a contiguous head dim."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _compact_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """float32 copy of an additive mask's distinct entries, expanded back (stride 0 on broadcast dims)."""
    if mask is None:
        return None
    base = mask[tuple(slice(0, 1) if s == 0 else slice(None) for s in mask.stride())]
    return base.to(torch.float32).expand(mask.shape)


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


@torch.library.custom_op("nezha_kernels::cuda_relattn_fwd", mutates_args=())
def _launch_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
    key_padding: torch.Tensor | None, additive_mask: torch.Tensor | None, head_mask: torch.Tensor | None,
    max_relative_position: int, q_offset: int, causal: bool, scale: float, dropout_p: float, seed: torch.Tensor, impl: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, Lq, D] in q's dtype, lse [2, B, H, Lq] float32: row max, log of the row sum)."""
    out, lse = load_extension().forward(
        _unit_stride(q), _unit_stride(k), _unit_stride(v), table.contiguous(), key_padding, additive_mask,
        head_mask, max_relative_position, q_offset, causal, scale, dropout_p, int(seed), _stream(q), impl)
    return out, lse


@_launch_forward.register_fake
def _(q, k, v, table, key_padding, additive_mask, head_mask, max_relative_position, q_offset, causal, scale,
      dropout_p, seed, impl):
    b, h, lq, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((2, b, h, lq), dtype=torch.float32)


@torch.library.custom_op("nezha_kernels::cuda_relattn_bwd", mutates_args=())
def _launch_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
    key_padding: torch.Tensor | None, additive_mask: torch.Tensor | None, head_mask: torch.Tensor | None,
    out: torch.Tensor, lse: torch.Tensor,
    max_relative_position: int, q_offset: int, causal: bool, scale: float, dropout_p: float, seed: torch.Tensor, impl: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), contiguous, in q's dtype."""
    grad_out = grad_out.contiguous()
    # delta_i = dO_i . O_i (O with its positional part): the softmax-backward row term.
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()
    dq, dk, dv = load_extension().backward(
        grad_out, _unit_stride(q), _unit_stride(k), _unit_stride(v), table.contiguous(), key_padding,
        additive_mask, head_mask, lse, delta, max_relative_position, q_offset, causal, scale, dropout_p, int(seed),
        _stream(q), impl)
    return dq, dk, dv


@_launch_backward.register_fake
def _(grad_out, q, k, v, table, key_padding, additive_mask, head_mask, out, lse, max_relative_position, q_offset,
      causal, scale, dropout_p, seed, impl):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


class CudaRelativeAttention(torch.autograd.Function):
    """Gradients for q, k and v; the backend refuses calls that need table or head_mask gradients."""

    @staticmethod
    def forward(ctx, q, k, v, table, key_padding, additive_mask, head_mask, scalars):
        out, lse = _launch_forward(q, k, v, table, key_padding, additive_mask, head_mask, *scalars)
        ctx.save_for_backward(q, k, v, table, key_padding, additive_mask, head_mask, out, lse)
        ctx.scalars = scalars
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, table, key_padding, additive_mask, head_mask, out, lse = ctx.saved_tensors
        dq, dk, dv = _launch_backward(grad_out, q, k, v, table, key_padding, additive_mask, head_mask, out, lse,
                                      *ctx.scalars)
        return dq, dk, dv, None, None, None, None, None


def relative_attention_cuda(inputs: AttentionInputs) -> torch.Tensor:
    """Run one validated call on the CUDA kernels: [B, H, Lq, D] in q's dtype."""
    b, h, _, _, _ = inputs.shape
    key_padding = inputs.key_padding.contiguous() if inputs.key_padding is not None else None
    head_mask = None
    if inputs.head_mask is not None:
        head_mask = inputs.head_mask.detach().to(torch.float32).expand(b, h).contiguous()
    scalars = (inputs.max_relative_position, inputs.q_offset, inputs.causal, inputs.scale, inputs.dropout_p,
               seed_tensor(inputs.dropout_seed), kernel_impl(inputs.q.dtype))
    return CudaRelativeAttention.apply(
        inputs.q, inputs.k, inputs.v, inputs.table.detach(), key_padding, _compact_mask(inputs.additive_mask),
        head_mask, scalars)
