"""The "reference" backend: NEZHA's math as the Hugging Face model computes it.

It materializes the [Lq, Lk, D] table of relative vectors a_ij, like the original model, and
relies on plain autograd. It exists as an oracle and a fallback, never for speed: its memory is
O(Lq * Lk * D). Computation runs in float32 (float64 for float64 inputs) and is cast back.
Padding-free calls (``forward_varlen``) run that math on each sequence in turn.
"""

from __future__ import annotations

import torch

from ..dropout import keep_mask
from ..inputs import MASKED_SCORE, AttentionInputs
from ..table import relative_index

NAME = "reference"


def availability(device: torch.device) -> tuple[bool, str]:
    return True, "pure PyTorch, any device"


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


def probabilities(
    inputs: AttentionInputs, compute_dtype: torch.dtype, bh_offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention weights after dropout and head_mask [B, H, Lq, Lk], materialized table [Lq, Lk, D]).

    bh_offset: the dropout counter of batch 0, head 0 (b * H for sequence b of a padding-free call).
    """
    b, h, lq, lk, _ = inputs.shape
    q, k = inputs.q.to(compute_dtype), inputs.k.to(compute_dtype)
    idx = relative_index(lq, lk, inputs.max_relative_position, inputs.q_offset, device=q.device)
    rel = inputs.table.to(compute_dtype)[idx]  # [Lq, Lk, D]: what the original model builds
    base = (torch.matmul(q, k.transpose(-1, -2)) + torch.einsum("bhid,ijd->bhij", q, rel)) * inputs.scale
    masked = score_mask(inputs)
    # In place from here: on a copy under autograd, on base itself without (the torch backend's small calls).
    # jit.trace re-traces its check under no_grad: one branch while tracing keeps the two graphs equal.
    tracked = base.requires_grad or torch.jit.is_tracing()
    scores = base.detach().clone() if tracked else base
    if inputs.additive_mask is not None:
        scores += inputs.additive_mask.to(compute_dtype)
    if masked is not None:
        scores.masked_fill_(masked, MASKED_SCORE)
    if tracked or inputs.additive_mask is not None:
        # Raising -inf (only an additive mask holds it) to finfo.min keeps a fully masked row uniform instead of NaN.
        scores.clamp_(min=MASKED_SCORE)
    if tracked:
        # The gradient reaches every score unchanged, masked ones included, as with the original model's additive mask.
        scores = scores + (base - base.detach())
    probs = torch.softmax(scores, dim=-1)
    if inputs.dropout_p > 0.0:
        keep = keep_mask(inputs.dropout_seed, inputs.dropout_p, b, h, range(lq), lk, q.device, bh_offset)
        probs = probs * keep / (1.0 - inputs.dropout_p)
    if inputs.head_mask is not None:
        probs = probs * inputs.head_mask.to(compute_dtype).view(b, h, 1, 1)
    return probs, rel


def _output(inputs: AttentionInputs, bh_offset: int = 0) -> torch.Tensor:
    compute_dtype = torch.float64 if inputs.q.dtype == torch.float64 else torch.float32
    probs, rel = probabilities(inputs, compute_dtype, bh_offset)
    out = torch.matmul(probs, inputs.v.to(compute_dtype)) + torch.einsum("bhij,ijd->bhid", probs, rel)
    return out.to(inputs.q.dtype)


def forward(inputs: AttentionInputs) -> torch.Tensor:
    return _output(inputs)


def _sequence(t: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start .. stop of a packed [T, H, D] tensor as a dense [1, H, L, D] view."""
    return t[start:stop].transpose(0, 1).unsqueeze(0)


def forward_varlen(inputs: AttentionInputs) -> torch.Tensor:
    """Each sequence through the dense math: a batch of one with q_offset = Lk_b - Lq_b (maybe negative).

    Reads cu_seqlens on the host (a sync on CUDA; a graph break under torch.compile): an oracle, not a fast path.
    """
    h = inputs.q.shape[1]
    starts_q, starts_k = inputs.cu_seqlens_q.tolist(), inputs.cu_seqlens_k.tolist()
    outputs = []
    for b in range(inputs.batch):
        q0, q1, k0, k1 = starts_q[b], starts_q[b + 1], starts_k[b], starts_k[b + 1]
        if q1 == q0:
            continue
        if k1 == k0:  # no keys: nothing to attend to
            outputs.append(inputs.q.new_zeros(q1 - q0, h, inputs.q.shape[2]))
            continue
        sequence = inputs.dense_part(
            _sequence(inputs.q, q0, q1),
            _sequence(inputs.k, k0, k1),
            _sequence(inputs.v, k0, k1),
            q_offset=(k1 - k0) - (q1 - q0),
            head_mask=inputs.head_mask[b : b + 1] if inputs.head_mask is not None else None,
        )
        outputs.append(_output(sequence, bh_offset=b * h)[0].transpose(0, 1))
    if not outputs:
        return inputs.q.new_zeros(inputs.q.shape)
    return torch.cat(outputs)
