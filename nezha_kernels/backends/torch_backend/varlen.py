"""Padding-free calls of the "torch" backend: ``forward_varlen``, its custom ops and its eager autograd.Function.

Under torch.compile the forward and backward are torch.library custom ops with register_autograd: opaque
to the compiler (their fakes give the shapes), so a compiled model traces through them with fullgraph=True
and no recompile for a new token count, while their bodies (packed.py) read cu_seqlens on the host (free on
the CPU; one sync each on CUDA, where this backend is a fallback) to slice the sequences. In eager mode an
autograd.Function runs the same code and also keeps the small sequences' probabilities for the backward.
A batch of sequences of one shape runs as the dense call it is.
"""

from __future__ import annotations

import torch

from ...dropout import seed_tensor
from ...inputs import AttentionInputs
from .dense import forward as dense_forward
from .packed import packed_backward, packed_forward

__all__ = ["forward_varlen", "varlen_bwd", "varlen_fwd"]


@torch.library.custom_op("nezha_kernels::torch_varlen_fwd", mutates_args=())
def varlen_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    head_mask: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_relative_position: int,
    causal: bool,
    scale: float,
    dropout_p: float,
    seed: torch.Tensor,
) -> torch.Tensor:
    return packed_forward(
        q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_relative_position, causal, scale, dropout_p, seed
    )


@varlen_fwd.register_fake
def _(q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_relative_position, causal, scale, dropout_p, seed):
    return q.new_empty(q.shape)


@torch.library.custom_op("nezha_kernels::torch_varlen_bwd", mutates_args=())
def varlen_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    head_mask: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_relative_position: int,
    causal: bool,
    scale: float,
    dropout_p: float,
    seed: torch.Tensor,
    table_grad: bool,
    head_mask_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dtable or an empty tensor, dhead_mask [B, H] or an empty tensor)."""
    return packed_backward(
        grad_out,
        q,
        k,
        v,
        table,
        head_mask,
        cu_seqlens_q,
        cu_seqlens_k,
        max_relative_position,
        causal,
        scale,
        dropout_p,
        seed,
        table_grad,
        head_mask_grad,
    )


@varlen_bwd.register_fake
def _(
    grad_out,
    q,
    k,
    v,
    table,
    head_mask,
    cu_seqlens_q,
    cu_seqlens_k,
    max_relative_position,
    causal,
    scale,
    dropout_p,
    seed,
    table_grad,
    head_mask_grad,
):
    return (
        q.new_empty(q.shape),
        k.new_empty(k.shape),
        v.new_empty(v.shape),
        table.new_empty(table.shape) if table_grad else q.new_empty(0),
        head_mask.new_empty(head_mask.shape) if head_mask_grad else q.new_empty(0),
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
        dq, dk, dv, dt, dhm = varlen_bwd(
            grad_out, q, k, v, table, head_mask, cu_q, cu_k, *ctx.scalars, seed, table_grad, head_mask_grad
        )
    return (dq, dk, dv, dt if table_grad else None, dhm if head_mask_grad else None) + (None,) * 7


varlen_fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerVarlen(torch.autograd.Function):
    """The eager twin of the custom ops: the forward keeps each sequence's probabilities (and dropout mask)
    where the dense path would for a call of that size, so the backward recomputes nothing there and
    the dropout mask is generated once. (A custom op cannot hand a data-dependent list to its backward.)
    """

    @staticmethod
    def forward(ctx, q, k, v, table, head_mask, inputs: AttentionInputs):
        saved = {}
        out = packed_forward(
            q,
            k,
            v,
            table,
            head_mask,
            inputs.cu_seqlens_q,
            inputs.cu_seqlens_k,
            inputs.max_relative_position,
            inputs.causal,
            inputs.scale,
            inputs.dropout_p,
            seed_tensor(inputs.dropout_seed),
            saved,
        )
        ctx.save_for_backward(q, k, v, table, head_mask)
        ctx.inputs, ctx.probabilities = inputs, saved
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, table, head_mask = ctx.saved_tensors
        inputs: AttentionInputs = ctx.inputs
        with torch.autocast(grad_out.device.type, enabled=False):
            grads = packed_backward(
                grad_out,
                q,
                k,
                v,
                table,
                head_mask,
                inputs.cu_seqlens_q,
                inputs.cu_seqlens_k,
                inputs.max_relative_position,
                inputs.causal,
                inputs.scale,
                inputs.dropout_p,
                seed_tensor(inputs.dropout_seed),
                ctx.needs_input_grad[3],
                head_mask is not None and ctx.needs_input_grad[4],
                ctx.probabilities,
            )
        ctx.probabilities = None
        dq, dk, dv, dt, dhm = grads
        return (
            dq,
            dk,
            dv,
            dt if ctx.needs_input_grad[3] else None,
            dhm if head_mask is not None and ctx.needs_input_grad[4] else None,
            None,
        )


def _batch(t: torch.Tensor, b: int, length: int) -> torch.Tensor:
    """Packed [b * length, H, D] -> [b, H, length, D]."""
    return t.view(b, length, *t.shape[1:]).transpose(1, 2).contiguous()


def _equal_lengths(inputs: AttentionInputs) -> AttentionInputs | None:
    """The call as one dense problem [B, H, L, D] when every sequence has the same (Lq, Lk), both > 0: a full
    batch, whose packed form costs only bookkeeping (layout copies, per-run slicing) on top of the dense one."""
    starts_q, starts_k = inputs.cu_seqlens_q.tolist(), inputs.cu_seqlens_k.tolist()
    b = len(starts_q) - 1
    lq, lk = starts_q[1] - starts_q[0] if b else 0, starts_k[1] - starts_k[0] if b else 0
    if lq == 0 or lk == 0 or starts_q != list(range(0, b * lq + 1, lq)) or starts_k != list(range(0, b * lk + 1, lk)):
        return None
    # [B, H, L, D] copies of [T, H, D]: as views, every matmul over them would copy (their B and H dims do not merge)
    return inputs.dense_part(
        _batch(inputs.q, b, lq),
        _batch(inputs.k, b, lk),
        _batch(inputs.v, b, lk),
        q_offset=lk - lq,
        head_mask=inputs.head_mask,
    )


def forward_varlen(inputs: AttentionInputs) -> torch.Tensor:
    if not torch.compiler.is_compiling():
        dense = _equal_lengths(inputs)
        if dense is not None:  # same counters, head_mask rows and offsets: the dense op computes the same numbers
            out = dense_forward(dense)
            return out.transpose(1, 2).reshape(inputs.q.shape)
        return _EagerVarlen.apply(inputs.q, inputs.k, inputs.v, inputs.table, inputs.head_mask, inputs)
    return varlen_fwd(
        inputs.q,
        inputs.k,
        inputs.v,
        inputs.table,
        inputs.head_mask,
        inputs.cu_seqlens_q,
        inputs.cu_seqlens_k,
        inputs.max_relative_position,
        inputs.causal,
        inputs.scale,
        inputs.dropout_p,
        seed_tensor(inputs.dropout_seed),
    )
