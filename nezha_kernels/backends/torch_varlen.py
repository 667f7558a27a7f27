"""Padding-free calls of the "torch" backend: each sequence through the dense chunks, no padding built.

Under torch.compile the forward and backward are torch.library custom ops with register_autograd: opaque
to the compiler (their fakes give the shapes), so a compiled model traces through them with fullgraph=True
and no recompile for a new token count, while their bodies read cu_seqlens on the host (free on the CPU;
one sync each on CUDA, where this backend is a fallback) to slice the sequences. In eager mode an
autograd.Function runs the same code and also keeps the small sequences' probabilities for the backward.

Sequence b of the packed batch is the dense problem [1, H, Lq_b, D] x [1, H, Lk_b, D] with
q_offset = Lk_b - Lq_b (bottom-right alignment) and dropout counters b * H + h: the chunks of
torch_chunked run on it unchanged, so the backend's memory bound (a few CHUNK_ELEMENTS tensors) holds.

The table side is batched: short sequences are overhead-bound (a dozen small ops each), and the two
products with the table (Q T^T on the way in, bucket(W) T on the way out; dO T^T, bucket(dS) T and the
table gradient in the backward) are 2/3 of their FLOPs. So consecutive sequences are taken in groups of
at most GROUP_TOKENS query rows, and each of those products is one matmul over the group's rows
([H, rows, 2R+1] tensors: a few MiB) instead of one per sequence and chunk.
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


# Query rows per group of sequences sharing the table-side matmuls ([H, rows, 2R+1] float32: 6 MiB at H=12).
GROUP_TOKENS = 1024


def _groups(sequences: list) -> Iterator[list]:
    """Consecutive sequences (from _sequences) in lists of at most GROUP_TOKENS query rows (a longer one alone)."""
    group, rows = [], 0
    for item in sequences:
        n = item[2] - item[1]
        if group and rows + n > GROUP_TOKENS:
            yield group
            group, rows = [], 0
        group.append(item)
        rows += n
    if group:
        yield group


def _chunks(seq: AttentionInputs) -> Iterator[tuple[int, int]]:
    b, h, lq, lk, _ = seq.shape
    step = torch_chunked.chunk_length(b, h, lk, lq, seq.q.device)
    for start in range(0, lq, step):
        yield start, min(lq, start + step)


def _forward_heads_first(qh, kh, vh, tc, sequences: list, h: int, saved: dict | None = None) -> torch.Tensor:
    """out [1, H, Tq, D] from the heads-first tensors; ``saved``: {b: chunks' (probs, keep)} is filled for the
    sequences small enough to keep them (torch_chunked.saves_probabilities)."""
    out = qh.new_zeros(qh.shape)
    scratch = torch_chunked._Scratch()
    for group in _groups(sequences):
        g0, g1 = group[0][1], group[-1][2]
        qt = torch.matmul(qh[:, :, g0:g1], tc.t())  # [1, H, rows, 2R+1]: Q T^T of the whole group
        buckets = torch.zeros_like(qt)               # bucket(W) of every row, times T once at the end
        for b, q0, q1, _, _, seq in group:
            save = saved is not None and torch_chunked.saves_probabilities(h, q1 - q0, seq.shape[3])
            for start, stop in _chunks(seq):
                rows = slice(q0 - g0 + start, q0 - g0 + stop)
                c = torch_chunked._Chunk.compute(seq, seq.q, seq.k, tc, start, stop, scratch, bh_offset=b * h,
                                                 qt=qt[:, :, rows])
                w = c.weights(in_place=not save)
                out[:, :, q0 + start : q0 + stop] = torch.matmul(w, seq.v)
                buckets[:, :, rows] = c.bucket(w)
                if save:
                    saved.setdefault(b, []).append((c.probs, c.keep))
        out[:, :, g0:g1] += torch.matmul(buckets, tc)
    return out


def _varlen_forward(q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_relative_position, causal, scale,
                    dropout_p, seed, saved: dict | None = None) -> torch.Tensor:
    cd = torch_chunked._compute_dtype(q.dtype)
    qh, kh, vh = (_heads_first(t, cd) for t in (q, k, v))
    tc = table.to(cd)
    hm = head_mask.to(cd) if head_mask is not None else None
    sequences = list(_sequences(qh, kh, vh, tc, hm, cu_seqlens_q, cu_seqlens_k, max_relative_position, causal, scale,
                                dropout_p, seed))
    out = _forward_heads_first(qh, kh, vh, tc, sequences, q.shape[1], saved)
    return out[0].transpose(0, 1).to(q.dtype).contiguous()


@torch.library.custom_op("nezha_kernels::torch_varlen_fwd", mutates_args=())
def varlen_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, head_mask: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_relative_position: int, causal: bool,
    scale: float, dropout_p: float, seed: torch.Tensor,
) -> torch.Tensor:
    return _varlen_forward(q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_relative_position, causal,
                           scale, dropout_p, seed)


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
    return _varlen_backward(grad_out, q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_relative_position,
                            causal, scale, dropout_p, seed, table_grad, head_mask_grad)


def _varlen_backward(grad_out, q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_relative_position,
                     causal, scale, dropout_p, seed, table_grad, head_mask_grad, probabilities=None):
    """varlen_bwd's body; ``probabilities``: {b: the forward's saved chunks of sequence b} where kept."""
    cd = torch_chunked._compute_dtype(q.dtype)
    qh, kh, vh, go = (_heads_first(t, cd) for t in (q, k, v, grad_out))
    tc = table.to(cd)
    hm = head_mask.to(cd) if head_mask is not None else None
    dq, dk, dv = torch.zeros_like(qh), torch.zeros_like(kh), torch.zeros_like(vh)
    dt = torch.zeros_like(tc) if table_grad else None
    dhm = torch.zeros(head_mask.shape, dtype=cd, device=q.device) if head_mask_grad else None
    h = q.shape[1]
    scratch = torch_chunked._Scratch()
    sequences = list(_sequences(qh, kh, vh, tc, hm, cu_seqlens_q, cu_seqlens_k, max_relative_position, causal, scale,
                                dropout_p, seed))
    for group in _groups(sequences):
        g0, g1 = group[0][1], group[-1][2]
        go_t = torch.matmul(go[:, :, g0:g1], tc.t())        # dO T^T of the group's rows
        ds_buckets = torch.zeros_like(go_t)                  # bucket(dS): times T into dq, and into dt
        w_buckets = torch.zeros_like(go_t) if dt is not None else None
        qt = None
        for b, q0, q1, k0, k1, seq in group:
            kept = probabilities.get(b) if probabilities else None
            if kept is None and qt is None:
                qt = torch.matmul(qh[:, :, g0:g1], tc.t())  # to recompute the probabilities
            for index, (start, stop) in enumerate(_chunks(seq)):
                rows = slice(q0 - g0 + start, q0 - g0 + stop)
                if kept is not None:
                    c = torch_chunked._Chunk.saved(seq, seq.q, start, stop, *kept[index], scratch)
                else:
                    c = torch_chunked._Chunk.compute(seq, seq.q, seq.k, tc, start, stop, scratch, bh_offset=b * h,
                                                     qt=qt[:, :, rows])
                rel = torch_chunked.RelativeRows(go_t[:, :, rows],
                                                 w_buckets[:, :, rows] if w_buckets is not None else None,
                                                 ds_buckets[:, :, rows])
                torch_chunked._chunk_backward(
                    seq, c, seq.k, seq.v, tc, go[:, :, q0 + start : q0 + stop], dq[:, :, q0 + start : q0 + stop],
                    dk[:, :, k0:k1], dv[:, :, k0:k1], dt, dhm[b : b + 1] if dhm is not None else None, rel=rel,
                )
        dq[:, :, g0:g1] += torch.matmul(ds_buckets, tc).mul_(scale)
        if dt is not None:
            dt += torch.einsum("bhim,bhid->md", w_buckets, go[:, :, g0:g1])
            dt += torch.einsum("bhim,bhid->md", ds_buckets, qh[:, :, g0:g1]) * scale
    back = lambda t, like: t[0].transpose(0, 1).to(like.dtype).contiguous()
    return (
        back(dq, q), back(dk, k), back(dv, v),
        dt.to(table.dtype) if dt is not None else q.new_empty(0),  # outputs must not alias: two empties
        dhm.to(head_mask.dtype) if dhm is not None else q.new_empty(0),
    )


@varlen_bwd.register_fake
def _(grad_out, q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_relative_position, causal, scale,
      dropout_p, seed, table_grad, head_mask_grad):
    return (
        q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
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
        dq, dk, dv, dt, dhm = varlen_bwd(grad_out, q, k, v, table, head_mask, cu_q, cu_k, *ctx.scalars, seed,
                                         table_grad, head_mask_grad)
    return (dq, dk, dv, dt if table_grad else None, dhm if head_mask_grad else None) + (None,) * 7


varlen_fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerVarlen(torch.autograd.Function):
    """The eager twin of the custom ops: the forward keeps each sequence's probabilities (and dropout mask)
    where torch_chunked would for a dense call of that size, so the backward recomputes nothing there and
    the dropout mask is generated once. (A custom op cannot hand a data-dependent list to its backward.)
    """

    @staticmethod
    def forward(ctx, q, k, v, table, head_mask, inputs: VarlenInputs):
        saved = {}
        out = _varlen_forward(q, k, v, table, head_mask, inputs.cu_seqlens_q, inputs.cu_seqlens_k,
                              inputs.max_relative_position, inputs.causal, inputs.scale, inputs.dropout_p,
                              seed_tensor(inputs.dropout_seed), saved)
        ctx.save_for_backward(q, k, v, table, head_mask)
        ctx.inputs, ctx.probabilities = inputs, saved
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, table, head_mask = ctx.saved_tensors
        inputs: VarlenInputs = ctx.inputs
        with torch.autocast(grad_out.device.type, enabled=False):
            grads = _varlen_backward(grad_out, q, k, v, table, head_mask, inputs.cu_seqlens_q, inputs.cu_seqlens_k,
                                     inputs.max_relative_position, inputs.causal, inputs.scale, inputs.dropout_p,
                                     seed_tensor(inputs.dropout_seed), ctx.needs_input_grad[3],
                                     head_mask is not None and ctx.needs_input_grad[4], ctx.probabilities)
        ctx.probabilities = None
        dq, dk, dv, dt, dhm = grads
        return (dq, dk, dv, dt if ctx.needs_input_grad[3] else None,
                dhm if head_mask is not None and ctx.needs_input_grad[4] else None, None)


def forward_varlen(inputs: VarlenInputs) -> torch.Tensor:
    if not torch.compiler.is_compiling():
        return _EagerVarlen.apply(inputs.q, inputs.k, inputs.v, inputs.table, inputs.head_mask, inputs)
    return varlen_fwd(
        inputs.q, inputs.k, inputs.v, inputs.table, inputs.head_mask, inputs.cu_seqlens_q, inputs.cu_seqlens_k,
        inputs.max_relative_position, inputs.causal, inputs.scale, inputs.dropout_p,
        seed_tensor(inputs.dropout_seed),
    )
