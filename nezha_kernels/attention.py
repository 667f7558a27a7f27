"""The public op: relative_attention."""

from __future__ import annotations

import torch

from .backends import resolve_backend
from .inputs import autocast_inputs, prepare_inputs

__all__ = ["relative_attention", "relative_attention_with_weights"]


def relative_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    max_relative_position: int = 64,
    rel_table: torch.Tensor | None = None,
    causal: bool = False,
    q_offset: int = 0,
    dropout_p: float = 0.0,
    scale: float | None = None,
    head_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """NEZHA / Shaw-style relative-position attention, without materializing the [Lq, Lk, D] table.

    For batch b, head h, query i (absolute position q_offset + i) and key j::

        idx(i, j) = clamp(j - (q_offset + i), -R, R) + R,   a_ij = rel_table[idx(i, j)]
        s_ij = (q_i . k_j + q_i . a_ij) * scale + mask_ij
        p_ij = softmax_j(s_ij), then dropout, then * head_mask[b, h]
        o_i  = sum_j p_ij (v_j + a_ij)

    Args:
        q: [B, H, Lq, D]; k, v: [B, H, Lk, D]. float16, bfloat16, float32 or float64, one dtype, one device.
        attention_mask: None; a bool/integer key-padding mask [B, Lk] (True/1 = attend); or an additive
            floating mask of rank 4 broadcastable to [B, H, Lq, Lk] (the Hugging Face extended mask
            [B, 1, 1, Lk]), added in float32. No gradient flows to it.
        max_relative_position: R >= 1; distances beyond +-R share the edge rows of the table.
        rel_table: [2R+1, D] in q's dtype; default ``sinusoidal_table(R, D)`` (NEZHA's). May require grad.
        causal: mask keys j > q_offset + i.
        q_offset: absolute position of query row 0 (decoding with a KV cache: q_offset = Lk - Lq).
        dropout_p: probability of dropping an attention weight, in [0, 1); pass 0.0 at inference.
            The mask is a counter-based Philox function of a seed drawn from ``generator`` (or torch's
            default CPU generator), so ``torch.manual_seed`` makes it reproducible, and every backend
            drops the same entries for the same seed.
        scale: multiplies (q.k + q.a); default 1/sqrt(D).
        head_mask: [H] or [B, H] multiplier of the weights (1.0 keeps a head). Receives a gradient.
        generator: torch.Generator for the dropout seed.
        backend: "auto", "reference", "torch", "triton" or "cuda" (see ``available_backends()``).

    Returns:
        [B, H, Lq, D] in q's dtype. A query row whose keys are all masked attends uniformly to all Lk
        keys (every score equals float32's finfo.min), like the Hugging Face model: finite, never NaN.
    """
    q, k, v, rel_table = autocast_inputs(q, k, v, rel_table)
    inputs = prepare_inputs(
        q,
        k,
        v,
        attention_mask=attention_mask,
        max_relative_position=max_relative_position,
        rel_table=rel_table,
        causal=causal,
        q_offset=q_offset,
        dropout_p=dropout_p,
        scale=scale,
        head_mask=head_mask,
        generator=generator,
    )
    module = resolve_backend(backend, inputs)
    # Backends choose their own precision (fp32 accumulation); autocast must not re-cast their matmuls.
    with torch.autocast(inputs.q.device.type, enabled=False):
        return module.forward(inputs)


def relative_attention_with_weights(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`relative_attention` (same arguments, no ``backend``), also returning the weights.

    Returns (output [B, H, Lq, D], weights [B, H, Lq, Lk]): the attention probabilities after dropout
    and head_mask, as Hugging Face's ``output_attentions`` reports them. Always computed by the
    pure-PyTorch path with plain autograd, so it costs O(B * H * Lq * Lk) memory.
    """
    from .backends.torch_backend import forward_with_probs

    kwargs.pop("backend", None)
    q, k, v, kwargs["rel_table"] = autocast_inputs(q, k, v, kwargs.get("rel_table"))
    inputs = prepare_inputs(q, k, v, **kwargs)
    with torch.autocast(inputs.q.device.type, enabled=False):
        return forward_with_probs(inputs)
