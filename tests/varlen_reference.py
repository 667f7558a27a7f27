"""The per-sequence float64 reference for the padding-free (varlen) kernel tests, shared by the Triton
(tests/test_triton_varlen.py) and the emulated CUDA (tests/test_cuda_varlen_emulated.py) suites.

A case is any object with lens_q, lens_k, heads, r, causal and dropout_p. Each sequence runs alone through the
float64 formula (tests/formula.py) with its bottom-right offset Lk_b - Lq_b; dropout uses the dense op's keep mask
on the padded batch, so the kernels must drop what the padded dense op drops.
"""

from __future__ import annotations

import formula
import torch

from nezha_kernels.dropout import keep_mask

FMIN = torch.finfo(torch.float32).min
SEED = 0x1234_5678_9ABC  # 63-bit dropout seed, split into the Philox key's two words by the kernels


def cu_seqlens(lens) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)


def launcher_tail(case, head_mask, cu_q, cu_k, scale: float) -> tuple:
    """The launchers' arguments after the tensors (key_padding ... seed) for a padding-free call."""
    seed = SEED if case.dropout_p > 0.0 else 0
    return (
        None,
        None,
        head_mask,
        cu_q,
        cu_k,
        max(case.lens_q),
        max(case.lens_k),
        case.r,
        case.causal,
        0,
        scale,
        case.dropout_p,
        seed,
    )


def padded_keep(case) -> torch.Tensor | None:
    """The dense op's keep mask on the padded batch [B, H, max Lq, max Lk]: sequence b's block is its mask."""
    if case.dropout_p == 0.0:
        return None
    return keep_mask(
        SEED,
        case.dropout_p,
        len(case.lens_q),
        case.heads,
        torch.arange(max(case.lens_q)),
        max(case.lens_k),
        torch.device("cpu"),
    )


def row_stats(q, k, table, r, scale, causal, q_offset):
    """float64 [2, H, Lq] of one sequence: row max and log sum exp(s - max) of the finfo.min-masked scores."""
    lq, lk = q.shape[1], k.shape[1]
    i = torch.arange(lq).view(-1, 1) + q_offset
    j = torch.arange(lk).view(1, -1)
    a = table[(j - i).clamp(-r, r) + r]
    s = (torch.einsum("hid,hjd->hij", q, k) + torch.einsum("hid,ijd->hij", q, a)) * scale
    if causal:
        s = torch.where(j > i, torch.full_like(s, FMIN), s)
    m = s.amax(dim=-1)
    return torch.stack([m, (s - m.unsqueeze(-1)).exp().sum(-1).log()])


def expected(case, q, k, v, cu_q, cu_k, table, head_mask, grad_out, scale, dtype=torch.float64):
    """Per sequence through formula.attention: out [Tq, H, D], dq, dk, dv (zeros where a sequence has no query or
    no key), and the row statistics of the sequences that have keys as {sequence: [2, H, Lq_b]}.

    dtype: float64 (the default) is the oracle; a kernel's dtype gives PyTorch's same-precision result, the
    baseline of tests/tolerance.py (the row statistics are then left out: {})."""
    ref = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    tab = table.to(dtype)
    keep = padded_keep(case)
    out = torch.zeros(q.shape, dtype=dtype)
    grads = [torch.zeros(t.shape, dtype=dtype) for t in (q, k, v)]
    stats = {}
    for b in range(len(case.lens_q)):
        qs, qe, ks, ke = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        lq, lk = qe - qs, ke - ks
        if lq == 0 or lk == 0:
            continue
        seq = [ref[0][qs:qe], ref[1][ks:ke], ref[2][ks:ke]]
        dense = [t.transpose(0, 1).unsqueeze(0) for t in seq]  # [1, H, L, D]
        o = formula.attention(
            *dense,
            tab,
            r=case.r,
            causal=case.causal,
            q_offset=lk - lq,
            scale=scale,
            keep=None if keep is None else keep[b : b + 1, :, :lq, :lk],
            dropout_p=case.dropout_p,
            head_mask=None if head_mask is None else head_mask[b : b + 1],
            dtype=dtype,
        )
        o = o[0].transpose(0, 1)
        out[qs:qe] = o.detach()
        g = torch.autograd.grad(o, seq, grad_out[qs:qe].to(dtype))
        for full, part, (s, e) in zip(grads, g, ((qs, qe), (ks, ke), (ks, ke)), strict=True):
            full[s:e] = part
        if dtype == torch.float64:
            stats[b] = row_stats(
                *(t.detach().transpose(0, 1) for t in seq[:2]), tab, case.r, scale, case.causal, lk - lq
            )
    return out, grads, stats
