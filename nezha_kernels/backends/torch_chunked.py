"""The "torch" backend: pure PyTorch that never builds the [Lq, Lk, D] table.

Key side: q_i . a_ij = (Q T^T)[i, idx(i, j)], read from an [Lq, 2R+1] matrix.
Value side: sum_j p_ij a_ij = sum_m Bk[i, m] T[m], Bk = the probabilities bucketed by table row.
Both maps go through a skewed [chunk, chunk + Lk - 1] matrix whose diagonals are the distances
(``_Band``): one strided view and contiguous copies, instead of gather / scatter_add over an int64 index
(which cost more than the matmuls on a CPU).

Queries are processed in chunks, in the forward AND in a hand-written backward that recomputes
each chunk's probabilities (nothing of size Lq x Lk is saved for autograd), so the peak extra
memory is a few tensors of at most CHUNK_ELEMENTS float32. Gradients: q, k, v, the table and head_mask.

Padding-free calls (``forward_varlen``) run each sequence through the same chunks, with no padding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..dropout import keep_mask
from ..inputs import MASKED_SCORE, AttentionInputs
from . import torch_varlen  # padding-free calls; it builds on _forward / _backward below

if TYPE_CHECKING:
    from ..varlen import VarlenInputs

NAME = "torch"

# Elements of the largest [B, H, chunk, chunk + Lk - 1] float32 intermediate (64 MiB); the chunk follows.
CHUNK_ELEMENTS = 1 << 24


def availability(device: torch.device) -> tuple[bool, str]:
    return True, "pure PyTorch, any device"


def unsupported_reason(inputs) -> str | None:
    return None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_length(batch: int, heads: int, key_length: int, query_length: int) -> int:
    """Most query rows n with B * H * n * (n + Lk - 1) <= CHUNK_ELEMENTS (at least 1)."""
    budget = CHUNK_ELEMENTS // max(1, batch * heads)
    lo, hi = 1, max(1, query_length)
    while lo < hi:  # largest n in [1, Lq] within the budget
        mid = (lo + hi + 1) // 2
        if mid * (mid + key_length - 1) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Band:
    """The distance map of rows [p0, p0 + n) against keys [0, Lk): idx(r, j) = clamp(j - p0 - r, -R, R) + R.

    In the skewed matrix E[r, c] (c = j - r + n - 1, width W = n + Lk - 1) the index depends on c alone,
    idx = clamp(c + raw0, 0, 2R); and E's element (r, j - r + n - 1) is an as_strided view of shape [n, Lk]
    with row stride W - 1. So a gather is "widen each row of X [.., n, 2R+1] to W columns, view", and
    a bucket sum is "write into the view of a zero E, add up each column range".
    """

    def __init__(self, n: int, key_length: int, p0: int, r: int):
        self.n, self.lk, self.r = n, key_length, r
        self.width = n + key_length - 1
        self.raw0 = r - (n - 1) - p0
        self.lo = min(max(-self.raw0, 0), self.width)           # columns before lo read table row 0
        self.hi = min(max(2 * r + 1 - self.raw0, 0), self.width)  # columns from hi read row 2R

    def _diagonal_view(self, e: torch.Tensor) -> torch.Tensor:
        """e: a freshly made contiguous [.., n, W] tensor (offset 0, so torch.compile can trace this)."""
        lead = tuple(e.shape[:-2])
        strides, step = [], self.n * self.width
        for size in reversed(lead):
            strides.append(step)
            step *= size
        return e.as_strided((*lead, self.n, self.lk), (*reversed(strides), self.width - 1, 1), self.n - 1)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """[.., n, Lk] view with [.., r, j] = x[.., r, idx(r, j)], for x [.., n, 2R+1]."""
        lead = x.shape[:-1]
        pieces = (
            x[..., :1].expand(*lead, self.lo),
            x[..., self.raw0 + self.lo : self.raw0 + self.hi],
            x[..., -1:].expand(*lead, self.width - self.hi),
        )
        return self._diagonal_view(torch.cat(pieces, dim=-1))

    def bucket(self, y: torch.Tensor) -> torch.Tensor:
        """[.., n, 2R+1]: y [.., n, Lk] summed by table row, out[.., r, m] = sum_{j: idx(r, j) = m} y[.., r, j]."""
        e = y.new_zeros(*y.shape[:-1], self.width)
        self._diagonal_view(e).copy_(y)
        out = y.new_zeros(*y.shape[:-1], 2 * self.r + 1)
        out[..., self.raw0 + self.lo : self.raw0 + self.hi] = e[..., self.lo : self.hi]
        if self.lo:
            out[..., 0] += e[..., : self.lo].sum(-1)
        if self.hi < self.width:
            out[..., -1] += e[..., self.hi :].sum(-1)
        return out


class _Chunk:
    """Recomputable per-chunk quantities: rows [start, stop) of the score matrix.

    bh_offset: dropout counter of batch 0, head 0 (b * H when the call is sequence b of a padding-free batch).
    """

    def __init__(self, inputs: AttentionInputs, q, k, table, start: int, stop: int, bh_offset: int = 0):
        b, h, _, lk, _ = inputs.shape
        r = inputs.max_relative_position
        device = q.device
        self.rows = torch.arange(start, stop, device=device)
        self.band = _Band(stop - start, lk, start + inputs.q_offset, r)
        self.q = q[:, :, start:stop]
        base = torch.matmul(self.q, k.transpose(-1, -2))
        base += self.band.gather(torch.matmul(self.q, table.t()))
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
            cols = torch.arange(lk, device=device)
            future = (cols[None, :] > (self.rows[:, None] + inputs.q_offset)).view(1, 1, stop - start, lk)
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
            keep = keep_mask(inputs.dropout_seed, inputs.dropout_p, b, h, self.rows, lk, device, bh_offset)
            self.drop_scale = keep.to(scores.dtype) / (1.0 - inputs.dropout_p)
        self.head_mask = None
        if inputs.head_mask is not None:
            self.head_mask = inputs.head_mask.to(scores.dtype).view(b, h, 1, 1)

    def dropped(self) -> torch.Tensor:
        return self.probs if self.drop_scale is None else self.probs * self.drop_scale

    def weights(self) -> torch.Tensor:
        dropped = self.dropped()
        return dropped if self.head_mask is None else dropped * self.head_mask

    def bucket(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x[..., i, j] into [..., i, idx(i, j)]: shape [B, H, chunk, 2R+1]."""
        return self.band.bucket(x)


def _forward(inputs: AttentionInputs, q, k, v, table, bh_offset: int = 0) -> torch.Tensor:
    b, h, lq, lk, d = inputs.shape
    out = torch.empty(b, h, lq, d, dtype=q.dtype, device=q.device)
    step = chunk_length(b, h, lk, lq)
    for start in range(0, lq, step):
        stop = min(lq, start + step)
        chunk = _Chunk(inputs, q, k, table, start, stop, bh_offset)
        w = chunk.weights()
        out[:, :, start:stop] = torch.matmul(w, v) + torch.matmul(chunk.bucket(w), table)
    return out


def _backward(inputs: AttentionInputs, q, k, v, table, go, dq, dk, dv, dt, dhm, bh_offset: int = 0) -> None:
    """Accumulates the gradients into dq (written), dk, dv, dt and dhm (added to; dt / dhm may be None).

    All in the compute dtype; dq, dk, dv are [B, H, L, D] (views are fine), dhm [B, H].
    """
    b, h, lq, lk, d = inputs.shape
    step = chunk_length(b, h, lk, lq)
    for start in range(0, lq, step):
        stop = min(lq, start + step)
        c = _Chunk(inputs, q, k, table, start, stop, bh_offset)
        go_c = go[:, :, start:stop]
        w = c.weights()
        # dW_ij = dO_i . (v_j + a_ij): the gradient of each weight.
        dw = torch.matmul(go_c, v.transpose(-1, -2))
        dw += c.band.gather(torch.matmul(go_c, table.t()))
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
        ds_bucket = c.bucket(ds)
        dq[:, :, start:stop] = (torch.matmul(ds, k) + torch.matmul(ds_bucket, table)) * inputs.scale
        dk += torch.matmul(ds.transpose(-1, -2), c.q) * inputs.scale
        dv += torch.matmul(w.transpose(-1, -2), go_c)
        if dt is not None:
            dt += torch.einsum("bhim,bhid->md", ds_bucket, c.q) * inputs.scale
            dt += torch.einsum("bhim,bhid->md", c.bucket(w), go_c)


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
        b, h = q.shape[:2]
        cd = _compute_dtype(q.dtype)
        qc, kc, vc, tc = (t.to(cd) for t in (q, k, v, table))
        dq = torch.empty_like(qc)
        dk = torch.zeros_like(kc)
        dv = torch.zeros_like(vc)
        dt = torch.zeros_like(tc) if ctx.needs_input_grad[3] else None
        dhm = torch.zeros(b, h, dtype=cd, device=q.device) if ctx.needs_input_grad[4] else None
        _backward(inputs, qc, kc, vc, tc, grad_out.to(cd), dq, dk, dv, dt, dhm)
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


def forward_varlen(inputs: VarlenInputs) -> torch.Tensor:
    return torch_varlen.forward_varlen(inputs)


def forward_with_probs(inputs: AttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, attention weights [B, H, Lq, Lk]) through plain autograd, for output_attentions.

    The weights are those the output is built from: after dropout and head_mask.
    """
    cd = _compute_dtype(inputs.q.dtype)
    q, k, v, table = (t.to(cd) for t in (inputs.q, inputs.k, inputs.v, inputs.table))
    _, _, lq, _, _ = inputs.shape
    chunk = _Chunk(inputs, q, k, table, 0, lq)
    w = chunk.weights()
    out = torch.matmul(w, v) + torch.matmul(chunk.bucket(w), table)
    return out.to(inputs.q.dtype), w.to(inputs.q.dtype)
