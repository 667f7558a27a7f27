"""The op: one torch.library schema for the forward, one for the backward, every GPU implementation behind them.

    nezha_kernels::relattn_fwd(q, k, v, table, key_padding?, additive_mask?, head_mask?, cu_seqlens_q?,
        cu_seqlens_k?, max_seqlen_q, max_seqlen_k, max_relative_position, causal, q_offset, scale, dropout_p,
        seed, impl, sinusoid=False) -> (out, lse)
    nezha_kernels::relattn_bwd(grad_out, q, k, v, table, out, lse, <the same tail>) -> (dq, dk, dv)

``impl`` names the implementation ("triton", "cuda-tc", "cuda-simt"): a module with a launcher pair
``relattn_fwd`` / ``relattn_bwd`` taking exactly the schema's arguments (seed as an int, sinusoid by keyword).
``sinusoid``: the table is the op's default (NEZHA's sinusoid, see inputs.AttentionInputs): a launcher may
compute the band terms from the sinusoid instead of reading the table. Both ops are opaque to torch.compile
(fake twins give the shapes), and ``register_autograd`` makes the forward differentiable in q, k and v. Gradients
to the table and head_mask are not part of the schema: the capability table (nezha_kernels/capabilities.py) keeps
calls that need them away from these backends.

Layouts. Dense: q [B, H, Lq, D], k / v [B, H, Lk, D] -> out [B, H, Lq, D], lse [2, B, H, Lq].
Padding-free (cu_seqlens_q given): q [Tq, H, D], k / v [Tk, H, D], cu_seqlens int32 [B+1] ->
out [Tq, H, D], lse [2, H, Tq]. lse holds each row's score max and the log of its softmax sum.
Arguments are validated once, before the op (``prepare_inputs`` / ``prepare_varlen_inputs``).
"""

from __future__ import annotations

import functools
import importlib

import torch

from .dropout import seed_tensor
from .inputs import AttentionInputs

__all__ = ["IMPLEMENTATIONS", "relattn_fwd", "relattn_bwd", "run"]

# impl name -> (launcher module, extra keyword arguments of its launchers)
IMPLEMENTATIONS: dict[str, tuple[str, dict]] = {
    "triton": ("nezha_kernels.triton_kernels.launch", {}),
    "cuda-tc": ("nezha_kernels.cuda_ext.launch", {"family": "tc"}),
    "cuda-simt": ("nezha_kernels.cuda_ext.launch", {"family": "simt"}),
}


@functools.cache
def _launchers(impl: str):
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {sorted(IMPLEMENTATIONS)}, got {impl!r}")
    module_name, extra = IMPLEMENTATIONS[impl]
    module = importlib.import_module(module_name)
    return functools.partial(module.relattn_fwd, **extra), functools.partial(module.relattn_bwd, **extra)


@torch.library.custom_op("nezha_kernels::relattn_fwd", mutates_args=())
def relattn_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    key_padding: torch.Tensor | None,
    additive_mask: torch.Tensor | None,
    head_mask: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    max_relative_position: int,
    causal: bool,
    q_offset: int,
    scale: float,
    dropout_p: float,
    seed: torch.Tensor,
    impl: str,
    sinusoid: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    forward, _ = _launchers(impl)
    return forward(
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
        int(seed),
        sinusoid=sinusoid,
    )


@relattn_fwd.register_fake
def _(
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
    impl,
    sinusoid=False,
):
    if cu_seqlens_q is not None:
        tq, h, d = q.shape
        return q.new_empty((tq, h, d)), q.new_empty((2, h, tq), dtype=torch.float32)
    b, h, lq, d = q.shape
    return q.new_empty((b, h, lq, d)), q.new_empty((2, b, h, lq), dtype=torch.float32)


@torch.library.custom_op("nezha_kernels::relattn_bwd", mutates_args=())
def relattn_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_padding: torch.Tensor | None,
    additive_mask: torch.Tensor | None,
    head_mask: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    max_relative_position: int,
    causal: bool,
    q_offset: int,
    scale: float,
    dropout_p: float,
    seed: torch.Tensor,
    impl: str,
    sinusoid: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _, backward = _launchers(impl)
    return backward(
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
        int(seed),
        sinusoid=sinusoid,
    )


@relattn_bwd.register_fake
def _(
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
    impl,
    sinusoid=False,
):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


# Positions in relattn_fwd's argument list: tensors saved for the backward, then the scalar tail.
_N_TENSOR_ARGS = 9


def _setup_context(ctx, inputs, output):
    q, k, v, table, key_padding, additive_mask, head_mask, cu_seqlens_q, cu_seqlens_k = inputs[:_N_TENSOR_ARGS]
    *scalars, seed, impl, sinusoid = inputs[_N_TENSOR_ARGS:]
    out, lse = output
    ctx.save_for_backward(
        q, k, v, table, out, lse, key_padding, additive_mask, head_mask, cu_seqlens_q, cu_seqlens_k, seed
    )
    ctx.scalars = tuple(scalars)
    ctx.impl = impl
    ctx.sinusoid = sinusoid


def _backward(ctx, grad_out, grad_lse):
    q, k, v, table, out, lse, key_padding, additive_mask, head_mask, cu_q, cu_k, seed = ctx.saved_tensors
    dq, dk, dv = relattn_bwd(
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
        cu_q,
        cu_k,
        *ctx.scalars,
        seed,
        ctx.impl,
        ctx.sinusoid,
    )
    return (dq, dk, dv) + (None,) * 16


relattn_fwd.register_autograd(_backward, setup_context=_setup_context)


def run(inputs: AttentionInputs, impl: str) -> torch.Tensor:
    """The output of one validated call (dense or padding-free) through the op."""
    max_q, max_k = inputs.lengths
    out, _ = relattn_fwd(
        inputs.q,
        inputs.k,
        inputs.v,
        inputs.table,
        inputs.key_padding,
        inputs.additive_mask,
        inputs.head_mask,
        inputs.cu_seqlens_q,
        inputs.cu_seqlens_k,
        max_q,
        max_k,
        inputs.max_relative_position,
        inputs.causal,
        inputs.q_offset,
        inputs.scale,
        inputs.dropout_p,
        seed_tensor(inputs.dropout_seed),
        impl,
        inputs.sinusoid,
    )
    return out
