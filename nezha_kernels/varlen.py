"""Padding-free relative attention: ``relative_attention_varlen``.

Sequences are packed along one token axis, as flash-attention's ``flash_attn_varlen_func`` takes them:
q [Tq, H, D], k / v [Tk, H, D], and sequence b is rows ``cu_seqlens[b]:cu_seqlens[b + 1]``. The arguments
are checked by ``inputs.prepare_varlen_inputs`` (which reads cu_seqlens on the host once, outside
torch.compile) into the same ``AttentionInputs`` a dense call gets, with its cu_seqlens set.
"""

from __future__ import annotations

import torch

from .backends import resolve_backend
from .inputs import autocast_inputs, prepare_varlen_inputs

__all__ = ["relative_attention_varlen"]


def relative_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor | None = None,
    *,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    max_relative_position: int = 64,
    rel_table: torch.Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    head_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Relative-position attention over packed sequences, with no padding (``flash_attn_varlen_func``'s shape).

    Sequence b holds query rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` of q and key rows
    ``cu_seqlens_k[b]:cu_seqlens_k[b+1]`` of k and v. Within it, key j sits at position j and query i at
    ``i + (Lk_b - Lq_b)`` (bottom-right aligned, as flash-attention: a decode step's query attends to its
    whole cache); with equal lengths the offset is 0. Each sequence is then exactly the dense
    ``relative_attention`` with ``q_offset = Lk_b - Lq_b``: the same relative terms, causal mask, head_mask
    row ``head_mask[b]`` and gradients (q, k, v, and the table and head_mask where they require grad).

    Edge rows. A query row with no visible key (causal with Lq_b > Lk_b) attends uniformly to the
    sequence's Lk_b keys, as the dense op's fully masked row does; a sequence with Lk_b = 0 outputs zeros.
    Zero-length sequences are allowed.

    Dropout: the Philox mask of the dense op with b = the sequence index and i, j = positions within the
    sequence, so the same seed drops exactly the entries the dense op drops on the padded batch.

    Args:
        q: [Tq, H, D]; k, v: [Tk, H, D]. One floating dtype, one device.
        cu_seqlens_q: int32 [B+1] on q's device, from 0 to Tq, non-decreasing.
        cu_seqlens_k: the same for k and v; default cu_seqlens_q (self-attention).
        max_seqlen_q, max_seqlen_k: the longest sequence (an upper bound is fine); computed when None.
        head_mask: [H] or [B, H].
        The other arguments are those of ``relative_attention``.

    Returns:
        [Tq, H, D] in q's dtype.
    """
    q, k, v, rel_table = autocast_inputs(q, k, v, rel_table)
    inputs = prepare_varlen_inputs(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        max_relative_position=max_relative_position,
        rel_table=rel_table,
        causal=causal,
        dropout_p=dropout_p,
        scale=scale,
        head_mask=head_mask,
        generator=generator,
    )
    module = resolve_backend(backend, inputs)
    with torch.autocast(inputs.q.device.type, enabled=False):
        return module.forward_varlen(inputs)
