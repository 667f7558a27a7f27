"""Padding-free calls of the "torch" backend: each sequence through the dense chunks, no padding built.

The forward and backward are torch.library custom ops with register_autograd: opaque to torch.compile
(their fakes give the shapes), so a compiled model traces through them with fullgraph=True and no
recompile for a new token count, while their bodies read cu_seqlens on the host (free on the CPU; one
sync each on CUDA, where this backend is a fallback) to slice the sequences.

Sequence b of the packed batch is the dense problem [1, H, Lq_b, D] x [1, H, Lk_b, D] with
q_offset = Lk_b - Lq_b (bottom-right alignment) and dropout counters b * H + h: the chunks of
torch_chunked run on it unchanged, so the backend's memory bound (a few CHUNK_ELEMENTS tensors) holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch

from ..dropout import seed_tensor
from ..inputs import AttentionInputs
from . import torch_chunked

if TYPE_CHECKING:
    from ..varlen import VarlenInputs

__all__ = ["forward_varlen"]


def _heads_first(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[T, H, D] -> contiguous [1, H, T, D] in ``dtype``: each sequence is then a slice along dim 2."""
    return t.to(dtype).transpose(0, 1).contiguous().unsqueeze(0)


def _sequences(q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, r, causal, scale, dropout_p, seed
               ) -> Iterator[tuple[int, int, int, int, int, AttentionInputs]]:
    """(b, q0, q1, k0, k1, the sequence's dense AttentionInputs) for every sequence with queries and keys."""
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    seed = int(seed) if dropout_p > 0.0 else None
    for b in range(len(starts_q) - 1):
        q0, q1, k0, k1 = starts_q[b], starts_q[b + 1], starts_k[b], starts_k[b + 1]
        if q1 == q0 or k1 == k0:  # no rows, or no keys (the rows' output is zero)
            continue
        yield b, q0, q1, k0, k1, AttentionInputs(
            q=q[:, :, q0:q1], k=k[:, :, k0:k1], v=v[:, :, k0:k1], table=table, max_relative_position=r,
            key_padding=None, additive_mask=None, causal=causal, q_offset=(k1 - k0) - (q1 - q0),
            dropout_p=dropout_p, dropout_seed=seed, scale=scale,
            head_mask=head_mask[b : b + 1] if head_mask is not None else None,
        )


@torch.library.custom_op("nezha_kernels::torch_varlen_fwd", mutates_args=())
def varlen_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, head_mask: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_relative_position: int, causal: bool,
    scale: float, dropout_p: float, seed: torch.Tensor,
) -> torch.Tensor:
    cd = torch_chunked._compute_dtype(q.dtype)
    qh, kh, vh = (_heads_first(t, cd) for t in (q, k, v))
    tc = table.to(cd)
    hm = head_mask.to(cd) if head_mask is not None else None
    out = qh.new_zeros(qh.shape)
    h = q.shape[1]
    for b, q0, q1, _, _, seq in _sequences(qh, kh, vh, tc, hm, cu_seqlens_q, cu_seqlens_k, max_relative_position,
                                           causal, scale, dropout_p, seed):
        out[:, :, q0:q1] = torch_chunked._forward(seq, seq.q, seq.k, seq.v, tc, bh_offset=b * h)
    return out[0].transpose(0, 1).to(q.dtype).contiguous()


@varlen_fwd.register_fake
def _(q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_relative_position, causal, scale, dropout_p,
      seed):
    return q.new_empty(q.shape)


@torch.library.custom_op("nezha_kernels::torch_varlen_bwd", mutates_args=())
def varlen_bwd(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
    head_mask: torch.Tensor | None, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
    max_relative_position: int, causal: bool, scale: float, dropout_p: float, seed: torch.Tensor,
    table_grad: bool, head_mask_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dtable or an empty tensor, dhead_mask [B, H] or an empty tensor)."""
    cd = torch_chunked._compute_dtype(q.dtype)
    qh, kh, vh, go = (_heads_first(t, cd) for t in (q, k, v, grad_out))
    tc = table.to(cd)
    hm = head_mask.to(cd) if head_mask is not None else None
    dq, dk, dv = torch.zeros_like(qh), torch.zeros_like(kh), torch.zeros_like(vh)
    dt = torch.zeros_like(tc) if table_grad else None
    dhm = torch.zeros(head_mask.shape, dtype=cd, device=q.device) if head_mask_grad else None
    h = q.shape[1]
    for b, q0, q1, k0, k1, seq in _sequences(qh, kh, vh, tc, hm, cu_seqlens_q, cu_seqlens_k,
                                             max_relative_position, causal, scale, dropout_p, seed):
        torch_chunked._backward(
            seq, seq.q, seq.k, seq.v, tc, go[:, :, q0:q1], dq[:, :, q0:q1], dk[:, :, k0:k1], dv[:, :, k0:k1],
            dt, dhm[b : b + 1] if dhm is not None else None, bh_offset=b * h,
        )
    back = lambda t, like: t[0].transpose(0, 1).to(like.dtype).contiguous()
    empty = q.new_empty(0)
    return (
        back(dq, q), back(dk, k), back(dv, v),
        dt.to(table.dtype) if dt is not None else empty,
        dhm.to(head_mask.dtype) if dhm is not None else empty,
    )


@varlen_bwd.register_fake
def _(grad_out, q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_relative_position, causal, scale,
      dropout_p, seed, table_grad, head_mask_grad):
    empty = q.new_empty(0)
    return (
        q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
        table.new_empty(table.shape) if table_grad else empty,
        head_mask.new_empty(head_mask.shape) if head_mask_grad else empty,
    )


def _setup_context(ctx, inputs, output):
    q, k, v, table, head_mask, cu_q, cu_k, r, causal, scale, dropout_p, seed = inputs
    ctx.save_for_backward(q, k, v, table, head_mask, cu_q, cu_k, seed)
    ctx.scalars = (r, causal, scale, dropout_p)


def _backward(ctx, grad_out):
    q, k, v, table, head_mask, cu_q, cu_k, seed = ctx.saved_tensors
    table_grad = ctx.needs_input_grad[3]
    head_mask_grad = head_mask is not None and ctx.needs_input_grad[4]
    with torch.autocast(grad_out.device.type, enabled=False):
        dq, dk, dv, dt, dhm = varlen_bwd(grad_out, q, k, v, table, head_mask, cu_q, cu_k, *ctx.scalars, seed,
                                         table_grad, head_mask_grad)
    return (dq, dk, dv, dt if table_grad else None, dhm if head_mask_grad else None) + (None,) * 7


varlen_fwd.register_autograd(_backward, setup_context=_setup_context)


def forward_varlen(inputs: VarlenInputs) -> torch.Tensor:
    return varlen_fwd(
        inputs.q, inputs.k, inputs.v, inputs.table, inputs.head_mask, inputs.cu_seqlens_q, inputs.cu_seqlens_k,
        inputs.max_relative_position, inputs.causal, inputs.scale, inputs.dropout_p,
        seed_tensor(inputs.dropout_seed),
    )
