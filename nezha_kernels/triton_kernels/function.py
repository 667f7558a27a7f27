"""Torch custom ops around the launchers, with fake (shape-only) twins and autograd.

``nezha_kernels::relattn_triton_fwd`` -> (out [B, H, Lq, D], lse [2, B, H, Lq] fp32) and
``nezha_kernels::relattn_triton_bwd`` -> (dq, dk, dv) are opaque to torch.compile (custom_op +
register_fake), so ``torch.compile(fullgraph=True)`` traces through them without graph breaks, and
register_autograd makes the forward op differentiable in q, k and v (the table and head_mask get no
gradient here: the backend sends calls that need one to the torch backend).
"""

from __future__ import annotations

import torch

from ..dropout import seed_tensor
from .launch import _relattn_bwd, _relattn_fwd

__all__ = ["relattn_fwd", "relattn_bwd", "relative_attention_triton"]


@torch.library.custom_op("nezha_kernels::relattn_triton_fwd", mutates_args=())
def relattn_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
    key_padding: torch.Tensor | None, additive_mask: torch.Tensor | None, head_mask: torch.Tensor | None,
    max_relative_position: int, causal: bool, q_offset: int, dropout_p: float, seed: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _relattn_fwd(q, k, v, table, key_padding, additive_mask, head_mask, max_relative_position,
                        causal, q_offset, dropout_p, int(seed), scale)


@relattn_fwd.register_fake
def _(q, k, v, table, key_padding, additive_mask, head_mask, max_relative_position, causal, q_offset,
      dropout_p, seed, scale):
    b, h, lq, d = q.shape
    return q.new_empty((b, h, lq, d)), q.new_empty((2, b, h, lq), dtype=torch.float32)


@torch.library.custom_op("nezha_kernels::relattn_triton_bwd", mutates_args=())
def relattn_bwd(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor,
    key_padding: torch.Tensor | None, additive_mask: torch.Tensor | None, head_mask: torch.Tensor | None,
    max_relative_position: int, causal: bool, q_offset: int, dropout_p: float, seed: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _relattn_bwd(grad_out, q, k, v, table, out, lse, key_padding, additive_mask, head_mask,
                        max_relative_position, causal, q_offset, dropout_p, int(seed), scale)


@relattn_bwd.register_fake
def _(grad_out, q, k, v, table, out, lse, key_padding, additive_mask, head_mask, max_relative_position,
      causal, q_offset, dropout_p, seed, scale):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape))


def _setup_context(ctx, inputs, output):
    (q, k, v, table, key_padding, additive_mask, head_mask, r, causal, q_offset, dropout_p, seed, scale) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, table, out, lse, key_padding, additive_mask, head_mask, seed)
    ctx.scalars = (r, causal, q_offset, dropout_p, scale)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, table, out, lse, key_padding, additive_mask, head_mask, seed = ctx.saved_tensors
    r, causal, q_offset, dropout_p, scale = ctx.scalars
    dq, dk, dv = relattn_bwd(grad_out, q, k, v, table, out, lse, key_padding, additive_mask, head_mask,
                             r, causal, q_offset, dropout_p, seed, scale)
    return dq, dk, dv, None, None, None, None, None, None, None, None, None, None


relattn_fwd.register_autograd(_backward, setup_context=_setup_context)


def relative_attention_triton(inputs) -> torch.Tensor:
    """Output [B, H, Lq, D] of one validated call (``AttentionInputs``) through the custom op."""
    out, _ = relattn_fwd(
        inputs.q, inputs.k, inputs.v, inputs.table, inputs.key_padding, inputs.additive_mask, inputs.head_mask,
        inputs.max_relative_position, inputs.causal, inputs.q_offset, inputs.dropout_p,
        seed_tensor(inputs.dropout_seed), inputs.scale,
    )
    return out

