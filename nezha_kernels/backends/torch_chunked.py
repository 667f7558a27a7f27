"""The "torch" backend: pure PyTorch that never builds the [Lq, Lk, D] table.

Key side: q_i . a_ij = (Q T^T)[i, idx(i, j)], a gather from an [Lq, 2R+1] matrix.
Value side: sum_j p_ij a_ij = sum_m Bk[i, m] T[m], Bk = the probabilities bucketed by table row.

Queries are processed in chunks, in the forward AND in a hand-written backward that recomputes
each chunk's probabilities (nothing of size Lq x Lk is saved for autograd), so the peak extra
memory is a few [B, H, chunk, Lk] float32 tensors. Gradients: q, k, v, the table and head_mask.
"""

from __future__ import annotations

import torch

from ..dropout import keep_mask
from ..inputs import MASKED_SCORE, AttentionInputs

NAME = "torch"

# Elements of one [B, H, chunk, Lk] float32 intermediate (64 MiB); the chunk length follows from it.
CHUNK_ELEMENTS = 1 << 24


def availability(device: torch.device) -> tuple[bool, str]:
    return True, "pure PyTorch, any device"


def unsupported_reason(inputs: AttentionInputs) -> str | None:
    return None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_length(batch: int, heads: int, key_length: int, query_length: int) -> int:
    return max(1, min(query_length, CHUNK_ELEMENTS // max(1, batch * heads * key_length)))


class _Chunk:
    """Recomputable per-chunk quantities: rows [start, stop) of the score matrix."""

    def __init__(self, inputs: AttentionInputs, q, k, table, start: int, stop: int):
        b, h, _, lk, _ = inputs.shape
        r = inputs.max_relative_position
        device = q.device
        self.rows = torch.arange(start, stop, device=device)
        cols = torch.arange(lk, device=device)
        distance = cols[None, :] - (self.rows[:, None] + inputs.q_offset)
        self.index = (distance.clamp(-r, r) + r).expand(b, h, stop - start, lk)
        self.q = q[:, :, start:stop]
        base = torch.matmul(self.q, k.transpose(-1, -2))
        base += torch.gather(torch.matmul(self.q, table.t()), -1, self.index)
        base *= inputs.scale
        # torch.jit.trace's checker re-traces under no_grad: a trace takes one branch in both grad modes.
        tracking = (torch.is_grad_enabled() and base.requires_grad) or torch.jit.is_tracing()
        scores = base.detach().clone() if tracking else base
        if inputs.additive_mask is not None:
            scores += inputs.additive_mask[:, :, start:stop].to(scores.dtype)
        masked = None
        if inputs.key_padding is not None:
            masked = (~inputs.key_padding).view(b, 1, 1, lk)
        if inputs.causal:
            future = (distance > 0).view(1, 1, stop - start, lk)
            masked = future if masked is None else masked | future
        if masked is not None:
            scores.masked_fill_(masked, MASKED_SCORE)
        scores.clamp_(min=MASKED_SCORE)
        if tracking:
            # Under autograd (forward_with_probs) the gradient reaches every score unchanged, masked
            # ones included, exactly as in the hand-written backward and the original additive mask.
            scores = scores + (base - base.detach())
        self.probs = torch.softmax(scores, dim=-1)
        # weights = probs * dropout keep / (1 - p) * head_mask, the coefficients of v_j + a_ij.
        self.drop_scale = None
        if inputs.dropout_p > 0.0:
            keep = keep_mask(inputs.dropout_seed, inputs.dropout_p, b, h, self.rows, lk, device)
            self.drop_scale = keep.to(scores.dtype) / (1.0 - inputs.dropout_p)
        self.head_mask = None
        if inputs.head_mask is not None:
            self.head_mask = inputs.head_mask.to(scores.dtype).view(b, h, 1, 1)

    def dropped(self) -> torch.Tensor:
        return self.probs if self.drop_scale is None else self.probs * self.drop_scale

    def weights(self) -> torch.Tensor:
        dropped = self.dropped()
        return dropped if self.head_mask is None else dropped * self.head_mask

    def bucket(self, x: torch.Tensor, rows_in_table: int) -> torch.Tensor:
        """Sum x[..., i, j] into [..., i, idx(i, j)]: shape [B, H, chunk, 2R+1]."""
        out = x.new_zeros(*x.shape[:-1], rows_in_table)
        return out.scatter_add_(-1, self.index, x)


def _forward(inputs: AttentionInputs, q, k, v, table) -> torch.Tensor:
    b, h, lq, lk, d = inputs.shape
    out = torch.empty(b, h, lq, d, dtype=q.dtype, device=q.device)
    step = chunk_length(b, h, lk, lq)
    for start in range(0, lq, step):
        stop = min(lq, start + step)
        chunk = _Chunk(inputs, q, k, table, start, stop)
        w = chunk.weights()
        out[:, :, start:stop] = torch.matmul(w, v) + torch.matmul(chunk.bucket(w, table.shape[0]), table)
    return out


class _TorchRelativeAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, table, head_mask, inputs: AttentionInputs):
        cd = _compute_dtype(q.dtype)
        qc, kc, vc, tc = (t.to(cd) for t in (q, k, v, table))
        out = _forward(inputs, qc, kc, vc, tc)
        ctx.save_for_backward(q, k, v, table)
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
        q, k, v, table = ctx.saved_tensors
        inputs: AttentionInputs = ctx.inputs
        b, h, lq, lk, d = inputs.shape
        cd = _compute_dtype(q.dtype)
        qc, kc, vc, tc = (t.to(cd) for t in (q, k, v, table))
        go = grad_out.to(cd)
        m = tc.shape[0]
        dq = torch.empty_like(qc)
        dk = torch.zeros_like(kc)
        dv = torch.zeros_like(vc)
        dt = torch.zeros_like(tc) if ctx.needs_input_grad[3] else None
        dhm = torch.zeros(b, h, dtype=cd, device=q.device) if ctx.needs_input_grad[4] else None
        step = chunk_length(b, h, lk, lq)
        for start in range(0, lq, step):
            stop = min(lq, start + step)
            c = _Chunk(inputs, qc, kc, tc, start, stop)
            go_c = go[:, :, start:stop]
            w = c.weights()
            # dW_ij = dO_i . (v_j + a_ij): the gradient of each weight.
            dw = torch.matmul(go_c, vc.transpose(-1, -2))
            dw += torch.gather(torch.matmul(go_c, tc.t()), -1, c.index)
            if dhm is not None:
                dhm += (dw * c.dropped()).sum(dim=(2, 3))
            # D_i = sum_j w_ij dW_ij (= dO_i . O_i), computed in full precision from the pieces.
            delta = (w * dw).sum(dim=-1, keepdim=True)
            dp = dw
            if c.drop_scale is not None:
                dp = dp * c.drop_scale
            if c.head_mask is not None:
                dp = dp * c.head_mask
            ds = c.probs * (dp - delta)
            ds_bucket = c.bucket(ds, m)
            dq[:, :, start:stop] = (torch.matmul(ds, kc) + torch.matmul(ds_bucket, tc)) * inputs.scale
            dk += torch.matmul(ds.transpose(-1, -2), c.q) * inputs.scale
            dv += torch.matmul(w.transpose(-1, -2), go_c)
            if dt is not None:
                dt += torch.einsum("bhim,bhid->md", ds_bucket, c.q) * inputs.scale
                dt += torch.einsum("bhim,bhid->md", c.bucket(w, m), go_c)
        return (
            dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
            dt.to(table.dtype) if dt is not None else None,
            dhm.to(ctx.head_mask_dtype) if dhm is not None else None,
            None,
        )


def forward(inputs: AttentionInputs) -> torch.Tensor:
    if torch.jit.is_tracing() or torch.compiler.is_exporting():
        # A trace or an export must hold for every shape: the chunk loop's trip count would be baked in
        # (or specialize a dynamic length), and torch.jit.trace cannot record the autograd.Function.
        # One chunk of plain, differentiable ops instead.
        return forward_with_probs(inputs)[0]
    return _TorchRelativeAttention.apply(inputs.q, inputs.k, inputs.v, inputs.table, inputs.head_mask, inputs)


def forward_with_probs(inputs: AttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, attention weights [B, H, Lq, Lk]) through plain autograd, for output_attentions.

    The weights are those the output is built from: after dropout and head_mask.
    """
    cd = _compute_dtype(inputs.q.dtype)
    q, k, v, table = (t.to(cd) for t in (inputs.q, inputs.k, inputs.v, inputs.table))
    _, _, lq, _, _ = inputs.shape
    chunk = _Chunk(inputs, q, k, table, 0, lq)
    w = chunk.weights()
    out = torch.matmul(w, v) + torch.matmul(chunk.bucket(w, table.shape[0]), table)
    return out.to(inputs.q.dtype), w.to(inputs.q.dtype)
