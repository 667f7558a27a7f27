"""The "reference" backend: NEZHA's math as the Hugging Face model computes it.

It materializes the [Lq, Lk, D] table of relative vectors a_ij, like the original model, and
relies on plain autograd. It exists as an oracle and a fallback, never for speed: its memory is
O(Lq * Lk * D). Computation runs in float32 (float64 for float64 inputs) and is cast back.
"""

from __future__ import annotations

import torch

from ..dropout import keep_mask
from ..inputs import MASKED_SCORE, AttentionInputs
from ..table import relative_index

NAME = "reference"


def availability(device: torch.device) -> tuple[bool, str]:
    return True, "pure PyTorch, any device"


def unsupported_reason(inputs: AttentionInputs) -> str | None:
    return None


def score_mask(inputs: AttentionInputs) -> torch.Tensor | None:
    """Bool [B|1, 1, Lq|1, Lk] of pairs that are masked out (padding or causal), or None."""
    b, _, lq, lk, _ = inputs.shape
    device = inputs.q.device
    masked = None
    if inputs.key_padding is not None:
        masked = (~inputs.key_padding).view(b, 1, 1, lk)
    if inputs.causal:
        rows = torch.arange(lq, device=device) + inputs.q_offset
        future = (torch.arange(lk, device=device)[None, :] > rows[:, None]).view(1, 1, lq, lk)
        masked = future if masked is None else masked | future
    return masked


def probabilities(inputs: AttentionInputs, compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention weights after dropout and head_mask [B, H, Lq, Lk], materialized table [Lq, Lk, D])."""
    b, h, lq, lk, _ = inputs.shape
    q, k = inputs.q.to(compute_dtype), inputs.k.to(compute_dtype)
    idx = relative_index(lq, lk, inputs.max_relative_position, inputs.q_offset, device=q.device)
    rel = inputs.table.to(compute_dtype)[idx]  # [Lq, Lk, D]: what the original model builds
    base = (torch.matmul(q, k.transpose(-1, -2)) + torch.einsum("bhid,ijd->bhij", q, rel)) * inputs.scale
    scores = base.detach()
    if inputs.additive_mask is not None:
        scores = scores + inputs.additive_mask.to(compute_dtype)
    masked = score_mask(inputs)
    if masked is not None:
        scores = scores.masked_fill(masked, MASKED_SCORE)
    # Raising -inf to finfo.min keeps a fully masked row uniform instead of NaN. The gradient reaches
    # every score unchanged, masked ones included, as with the original model's additive mask.
    scores = scores.clamp(min=MASKED_SCORE) + (base - base.detach())
    probs = torch.softmax(scores, dim=-1)
    if inputs.dropout_p > 0.0:
        keep = keep_mask(inputs.dropout_seed, inputs.dropout_p, b, h, torch.arange(lq), lk, q.device)
        probs = probs * keep / (1.0 - inputs.dropout_p)
    if inputs.head_mask is not None:
        probs = probs * inputs.head_mask.to(compute_dtype).view(b, h, 1, 1)
    return probs, rel


def forward(inputs: AttentionInputs) -> torch.Tensor:
    compute_dtype = torch.float64 if inputs.q.dtype == torch.float64 else torch.float32
    probs, rel = probabilities(inputs, compute_dtype)
    out = torch.matmul(probs, inputs.v.to(compute_dtype)) + torch.einsum("bhij,ijd->bhid", probs, rel)
    return out.to(inputs.q.dtype)
