"""Dense calls of the "torch" backend: the chunked autograd.Function, or the materialized form for small calls."""

from __future__ import annotations

import torch

from ...inputs import AttentionInputs
from .. import reference  # the materialized form: small calls, traces and exports
from . import chunks

__all__ = ["MATERIALIZE_ELEMENTS", "forward", "forward_with_probs", "materializes"]


class _TorchRelativeAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, table, head_mask, inputs: AttentionInputs):
        cd = chunks.compute_dtype(q.dtype)
        qc, kc, vc, tc = (t.to(cd) for t in (q, k, v, table))
        b, h, lq, lk, _ = inputs.shape
        save = [] if chunks.saves_probabilities(b * h, lq, lk) else None
        out = chunks.forward_chunks(inputs, qc, kc, vc, tc, save=save)
        flat = []
        for probs, keep in save or ():
            flat += [probs, keep if keep is not None else probs.new_empty(0, dtype=torch.bool)]
        ctx.save_for_backward(q, k, v, table, *flat)
        ctx.inputs = inputs
        ctx.head_mask_dtype = head_mask.dtype if head_mask is not None else None
        return out.to(q.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _TorchRelativeAttention._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        q, k, v, table, *saved = ctx.saved_tensors
        inputs: AttentionInputs = ctx.inputs
        b, h = q.shape[:2]
        cd = chunks.compute_dtype(q.dtype)
        qc, kc, vc, tc = (t.to(cd) for t in (q, k, v, table))
        dq = torch.empty_like(qc)
        dk = torch.zeros_like(kc)
        dv = torch.zeros_like(vc)
        dt = torch.zeros_like(tc) if ctx.needs_input_grad[3] else None
        dhm = torch.zeros(b, h, dtype=cd, device=q.device) if ctx.needs_input_grad[4] else None
        pairs = [(saved[i], saved[i + 1] if saved[i + 1].numel() else None) for i in range(0, len(saved), 2)]
        chunks.backward_chunks(inputs, qc, kc, vc, tc, grad_out.to(cd), dq, dk, dv, dt, dhm, saved=pairs or None)
        return (
            dq.to(q.dtype),
            dk.to(k.dtype),
            dv.to(v.dtype),
            dt.to(table.dtype) if dt is not None else None,
            dhm.to(ctx.head_mask_dtype) if dhm is not None else None,
            None,
        )


# Up to this many elements of the [Lq, Lk, D] table (L = 181 at D = 64) the materialized form, the reference's
# math under autograd, is faster than the skewed band on a CPU: a handful of large ops instead of a few dozen
# smaller ones, and its table costs at most 8 MiB. Measured in benchmarks/NOTES.md ("torch backend by size").
MATERIALIZE_ELEMENTS = 1 << 21


def materializes(inputs: AttentionInputs) -> bool:
    """Small calls on a CPU: the table within MATERIALIZE_ELEMENTS and, when autograd records the call, the scores
    it keeps for the backward within what the banded form keeps anyway (chunks.SAVE_ELEMENTS), so a training step's peak
    memory stays that of the banded form (inference keeps nothing)."""
    b, h, lq, lk, d = inputs.shape
    if inputs.q.device.type != "cpu" or lq * lk * d > MATERIALIZE_ELEMENTS:
        return False
    leaves = (inputs.q, inputs.k, inputs.v, inputs.table, inputs.head_mask)
    recorded = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in leaves)
    return not recorded or b * h * lq * lk <= chunks.SAVE_ELEMENTS


def forward(inputs: AttentionInputs) -> torch.Tensor:
    if torch.jit.is_tracing() or torch.compiler.is_exporting():
        # A trace or an export must hold for every shape: the chunk loop's trip count and the band's pieces
        # (sized in Python from L and R) would be baked in, and torch.jit.trace cannot record the
        # autograd.Function. The materialized form is plain ops whose shapes follow L symbolically; the
        # exported graph then holds an [Lq, Lk, D] table per layer, as transformers' model does.
        return reference.forward(inputs)
    if materializes(inputs) and not torch.compiler.is_compiling():
        return reference.forward(inputs)
    return _TorchRelativeAttention.apply(inputs.q, inputs.k, inputs.v, inputs.table, inputs.head_mask, inputs)


def forward_with_probs(inputs: AttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, attention weights [B, H, Lq, Lk]) through plain autograd, for output_attentions.

    The weights are those the output is built from: after dropout and head_mask.
    """
    cd = chunks.compute_dtype(inputs.q.dtype)
    q, k, v, table = (t.to(cd) for t in (inputs.q, inputs.k, inputs.v, inputs.table))
    _, _, lq, _, _ = inputs.shape
    chunk = chunks.Chunk.compute(inputs, q, k, table, 0, lq, chunks.Scratch())
    out, w = chunks.chunk_output(chunk, v, table, in_place=False)
    return out.to(inputs.q.dtype), w.to(inputs.q.dtype)
