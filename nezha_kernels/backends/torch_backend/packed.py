"""The computation of the "torch" backend's padding-free calls: each sequence through the dense chunks.

Sequence b of the packed batch is the dense problem [1, H, Lq_b, D] x [1, H, Lk_b, D] with
q_offset = Lk_b - Lq_b (bottom-right alignment) and dropout counters b * H + h: the chunks (chunks.py)
run on it unchanged, so the backend's memory bound (a few CHUNK_ELEMENTS tensors) holds.

The table side is batched: short sequences are overhead-bound (a dozen small ops each), and the two
products with the table (Q T^T on the way in, bucket(W) T on the way out; dO T^T, bucket(dS) T and the
table gradient in the backward) are 2/3 of their FLOPs. So consecutive sequences are taken in groups of
at most GROUP_TOKENS query rows, and each of those products is one matmul over the group's rows
([H, rows, 2R+1] tensors: a few MiB) instead of one per sequence and chunk.

``packed_forward`` / ``packed_backward`` take the call's tensors and scalars (what the custom ops of varlen.py
take) and read cu_seqlens on the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from ...inputs import AttentionInputs
from . import chunks

__all__ = ["GROUP_TOKENS", "packed_backward", "packed_forward"]


def _heads_first(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[T, H, D] -> contiguous [1, H, T, D] in ``dtype``: each sequence is then a slice along dim 2."""
    return t.to(dtype).transpose(0, 1).contiguous().unsqueeze(0)


def _packed(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[1, H, T, D] -> contiguous [T, H, D] in ``dtype``: the inverse of _heads_first."""
    return t[0].transpose(0, 1).to(dtype).contiguous()


def _rows(t: torch.Tensor, r0: int, n: int, length: int) -> torch.Tensor:
    """The [n, H, length, X] view of rows r0 .. r0 + n * length of a [1, H, T, X] tensor: n consecutive sequences
    of one length as a dense batch (no copy)."""
    _, h, _, x = t.shape
    return t[0, :, r0 : r0 + n * length].view(h, n, length, x).transpose(0, 1)


def _dense(t: torch.Tensor, r0: int, n: int, length: int) -> torch.Tensor:
    """_rows as an operand: a run of several sequences is copied to a contiguous [n, H, length, X] (a strided
    view would be copied by every matmul over it: its n and H dims do not merge); one sequence stays a view."""
    view = _rows(t, r0, n, length)
    return view.contiguous() if n > 1 else view


@dataclasses.dataclass
class _Run:
    """Sequences b .. b + n - 1, consecutive and all of one shape (Lq, Lk): one dense call of batch n, q rows
    q0 .. q0 + n * lq and k rows k0 .. k0 + n * lk of the packed tensors. Dropout counters (b + i) * H + h and
    head_mask rows b .. b + n - 1 are those of the dense op on the padded batch."""

    b: int
    n: int
    q0: int
    lq: int
    k0: int
    lk: int
    seq: AttentionInputs | None = None


def _runs(q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, r, causal, scale, dropout_p, seed) -> list[_Run]:
    """Every sequence with queries and keys, in runs of equal shapes (a batch of equal lengths is one run)."""
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    runs: list[_Run] = []
    for b in range(len(starts_q) - 1):
        q0, k0 = starts_q[b], starts_k[b]
        lq, lk = starts_q[b + 1] - q0, starts_k[b + 1] - k0
        if lq == 0 or lk == 0:  # no rows, or no keys (the rows' output is zero)
            continue
        last = runs[-1] if runs else None
        # b follows the run directly (nothing skipped between), so its rows follow the run's rows too
        if last and last.b + last.n == b and (last.lq, last.lk) == (lq, lk) and (last.n + 1) * lq <= GROUP_TOKENS:
            last.n += 1
        else:
            runs.append(_Run(b, 1, q0, lq, k0, lk))
    seed = int(seed) if dropout_p > 0.0 else None
    for run in runs:
        run.seq = AttentionInputs(
            q=_dense(q, run.q0, run.n, run.lq),
            k=_dense(k, run.k0, run.n, run.lk),
            v=_dense(v, run.k0, run.n, run.lk),
            table=table,
            max_relative_position=r,
            causal=causal,
            dropout_p=dropout_p,
            dropout_seed=seed,
            scale=scale,
            head_mask=head_mask[run.b : run.b + run.n] if head_mask is not None else None,
            q_offset=run.lk - run.lq,
        )
    return runs


# Query rows per group of sequences sharing the table-side matmuls ([H, rows, 2R+1] float32: 3 MiB at H = 12;
# larger groups made the matmuls slower on a CPU, smaller ones more numerous: benchmarks/NOTES.md, "Measurements
# behind code constants").
GROUP_TOKENS = 512


def _groups(runs: list[_Run]) -> Iterator[tuple[int, int, list[_Run]]]:
    """(first row, end row, runs): consecutive runs of at most GROUP_TOKENS query rows together (a longer run alone)."""
    group: list[_Run] = []
    rows = 0
    for run in runs:
        if group and rows + run.n * run.lq > GROUP_TOKENS:
            yield group[0].q0, group[-1].q0 + group[-1].n * group[-1].lq, group
            group, rows = [], 0
        group.append(run)
        rows += run.n * run.lq
    if group:
        yield group[0].q0, group[-1].q0 + group[-1].n * group[-1].lq, group


def _long(group: list[_Run]) -> bool:
    """A single sequence longer than GROUP_TOKENS: its table products stay per chunk (memory bounded as dense)."""
    return group[0].n * group[0].lq > GROUP_TOKENS


def _chunks(seq: AttentionInputs) -> Iterator[tuple[int, int]]:
    b, h, lq, lk, _ = seq.shape
    step = chunks.chunk_length(b, h, lk, lq, seq.q.device)
    for start in range(0, lq, step):
        yield start, min(lq, start + step)


def _forward_heads_first(qh, kh, vh, tc, runs: list[_Run], h: int, saved: dict | None = None) -> torch.Tensor:
    """out [1, H, Tq, D] from the heads-first tensors; ``saved``: {b: chunks' (probs, keep)} is filled for the
    runs small enough to keep them (chunks.saves_probabilities)."""
    out = qh.new_zeros(qh.shape)
    scratch = chunks.Scratch()
    tc_t = tc.t().contiguous()  # a transposed operand slows the large matmuls (NOTES)
    for g0, g1, group in _groups(runs):
        if _long(group):
            run = group[0]
            save = [] if saved is not None and chunks.saves_probabilities(h, run.lq, run.lk) else None
            _rows(out, run.q0, 1, run.lq).copy_(
                chunks.forward_chunks(run.seq, run.seq.q, run.seq.k, run.seq.v, tc, bh_offset=run.b * h, save=save)
            )
            if save is not None:
                saved[run.b] = save
            continue
        qt = torch.matmul(qh[:, :, g0:g1], tc_t)  # [1, H, rows, 2R+1]: Q T^T of the whole group
        buckets = torch.zeros_like(qt)  # bucket(W) of every row, times T once at the end
        for run in group:
            seq = run.seq
            save = saved is not None and chunks.saves_probabilities(run.n * h, run.lq, run.lk)
            out_run, qt_run = _rows(out, run.q0, run.n, run.lq), _rows(qt, run.q0 - g0, run.n, run.lq)
            buckets_run = _rows(buckets, run.q0 - g0, run.n, run.lq)
            for start, stop in _chunks(seq):
                c = chunks.Chunk.compute(
                    seq, seq.q, seq.k, tc, start, stop, scratch, bh_offset=run.b * h, qt=qt_run[:, :, start:stop]
                )
                w = c.weights(in_place=not save)
                out_run[:, :, start:stop] = torch.matmul(w, seq.v)
                buckets_run[:, :, start:stop] = c.bucket(w)
                if save:
                    saved.setdefault(run.b, []).append((c.probs, c.keep))
        out[:, :, g0:g1] += torch.matmul(buckets, tc)
    return out


def packed_forward(
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
    saved: dict | None = None,
) -> torch.Tensor:
    cd = chunks.compute_dtype(q.dtype)
    qh, kh, vh = (_heads_first(t, cd) for t in (q, k, v))
    tc = table.to(cd)
    hm = head_mask.to(cd) if head_mask is not None else None
    runs = _runs(qh, kh, vh, tc, hm, cu_seqlens_q, cu_seqlens_k, max_relative_position, causal, scale, dropout_p, seed)
    out = _forward_heads_first(qh, kh, vh, tc, runs, q.shape[1], saved)
    return _packed(out, q.dtype)


def packed_backward(
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
    probabilities=None,
):
    """varlen_bwd's body; ``probabilities``: {b: the forward's saved chunks of sequence b} where kept."""
    cd = chunks.compute_dtype(q.dtype)
    qh, kh, vh, go = (_heads_first(t, cd) for t in (q, k, v, grad_out))
    tc = table.to(cd)
    hm = head_mask.to(cd) if head_mask is not None else None
    dq, dk, dv = torch.zeros_like(qh), torch.zeros_like(kh), torch.zeros_like(vh)
    dt = torch.zeros_like(tc) if table_grad else None
    dhm = torch.zeros(head_mask.shape, dtype=cd, device=q.device) if head_mask_grad else None
    h = q.shape[1]
    scratch = chunks.Scratch()
    tc_t = tc.t().contiguous()
    runs = _runs(qh, kh, vh, tc, hm, cu_seqlens_q, cu_seqlens_k, max_relative_position, causal, scale, dropout_p, seed)
    for g0, g1, group in _groups(runs):
        if _long(group):
            run = group[0]
            chunks.backward_chunks(
                run.seq,
                run.seq.q,
                run.seq.k,
                run.seq.v,
                tc,
                _rows(go, run.q0, 1, run.lq),
                _rows(dq, run.q0, 1, run.lq),
                _rows(dk, run.k0, 1, run.lk),
                _rows(dv, run.k0, 1, run.lk),
                dt,
                dhm[run.b : run.b + 1] if dhm is not None else None,
                bh_offset=run.b * h,
                saved=probabilities.get(run.b) if probabilities else None,
            )
            continue
        go_t = torch.matmul(go[:, :, g0:g1], tc_t)  # dO T^T of the group's rows
        ds_buckets = torch.zeros_like(go_t)  # bucket(dS): times T into dq, and into dt
        w_buckets = torch.zeros_like(go_t) if dt is not None else None
        qt = None
        for run in group:
            seq = run.seq
            kept = probabilities.get(run.b) if probabilities else None
            if kept is None and qt is None:
                qt = torch.matmul(qh[:, :, g0:g1], tc_t)  # to recompute the probabilities
            r0 = run.q0 - g0  # the run's first row within the group's tensors
            go_run, dq_run = _dense(go, run.q0, run.n, run.lq), _rows(dq, run.q0, run.n, run.lq)
            dk_run, dv_run = _rows(dk, run.k0, run.n, run.lk), _rows(dv, run.k0, run.n, run.lk)
            for index, (start, stop) in enumerate(_chunks(seq)):
                if kept is not None:
                    c = chunks.Chunk.saved(seq, seq.q, start, stop, *kept[index], scratch)
                else:
                    qt_c = _rows(qt, r0, run.n, run.lq)[:, :, start:stop]
                    c = chunks.Chunk.compute(seq, seq.q, seq.k, tc, start, stop, scratch, run.b * h, qt_c)
                rel = chunks.RelativeRows(
                    _rows(go_t, r0, run.n, run.lq)[:, :, start:stop],
                    _rows(w_buckets, r0, run.n, run.lq)[:, :, start:stop] if w_buckets is not None else None,
                    _rows(ds_buckets, r0, run.n, run.lq)[:, :, start:stop],
                )
                chunks.chunk_backward(
                    seq,
                    c,
                    seq.k,
                    seq.v,
                    tc,
                    go_run[:, :, start:stop],
                    dq_run[:, :, start:stop],
                    dk_run,
                    dv_run,
                    dt,
                    dhm[run.b : run.b + run.n] if dhm is not None else None,
                    rel=rel,
                )
        dq[:, :, g0:g1] += torch.matmul(ds_buckets, tc).mul_(scale)
        if dt is not None:
            dt += torch.einsum("bhim,bhid->md", w_buckets, go[:, :, g0:g1])
            dt += torch.einsum("bhim,bhid->md", ds_buckets, qh[:, :, g0:g1]) * scale
    return (
        _packed(dq, q.dtype),
        _packed(dk, k.dtype),
        _packed(dv, v.dtype),
        dt.to(table.dtype) if dt is not None else q.new_empty(0),  # outputs must not alias: two empties
        dhm.to(head_mask.dtype) if dhm is not None else q.new_empty(0),
    )
