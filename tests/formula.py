"""An independent float64 implementation of NEZHA relative attention, straight from relative-attention.md.

Written without any nezha_kernels code: the sinusoid table from its closed form, the index map from its
definition, masks as the Hugging Face model's additive finfo.min. Used as the oracle for every backend.
"""

from __future__ import annotations

import math

import torch

FMIN = torch.finfo(torch.float32).min


def nezha_table(r: int, d: int) -> torch.Tensor:
    """T[m, 2t] = sin(m w_t), T[m, 2t+1] = cos(m w_t), w_t = exp(-2t ln(10000) / d), float64."""
    t = torch.zeros(2 * r + 1, d, dtype=torch.float64)
    for m in range(2 * r + 1):
        for i in range(0, d, 2):
            w = math.exp(-i * math.log(10000.0) / d)
            t[m, i] = math.sin(m * w)
            if i + 1 < d:
                t[m, i + 1] = math.cos(m * w)
    return t


def attention(
    q,
    k,
    v,
    table,
    *,
    r,
    key_padding=None,
    additive=None,
    causal=False,
    q_offset=0,
    scale=None,
    keep=None,
    dropout_p=0.0,
    head_mask=None,
    return_weights=False,
):
    """float64 output [B, H, Lq, D] (autograd-capable) of the formula; keep is a bool [B, H, Lq, Lk] dropout mask."""
    q, k, v, table = (x.double() for x in (q, k, v, table))
    b, h, lq, d = q.shape
    lk = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    i = torch.arange(lq).view(-1, 1) + q_offset
    j = torch.arange(lk).view(1, -1)
    idx = (j - i).clamp(-r, r) + r  # [Lq, Lk]
    a = table[idx]  # [Lq, Lk, D]
    base = (torch.einsum("bhid,bhjd->bhij", q, k) + torch.einsum("bhid,ijd->bhij", q, a)) * scale
    s = base.detach().clone()
    if additive is not None:
        s = s + additive.double()
    masked = torch.zeros(b, 1, lq, lk, dtype=torch.bool)
    if key_padding is not None:
        masked = masked | ~key_padding.bool().view(b, 1, 1, lk)
    if causal:
        masked = masked | (j > i).view(1, 1, lq, lk)
    # Masked pairs score finfo.min (so a fully masked row is uniform) and -inf is raised to finfo.min;
    # the gradient reaches every score unchanged, as with the Hugging Face model's additive mask.
    s = torch.where(masked, torch.full_like(s, FMIN), s).clamp(min=FMIN)
    s = s + (base - base.detach())
    p = torch.softmax(s, dim=-1)
    if keep is not None:
        p = p * keep.double() / (1.0 - dropout_p)
    if head_mask is not None:
        hm = head_mask.double()
        hm = hm.view(1, h, 1, 1) if hm.dim() == 1 else hm.view(b, h, 1, 1)
        p = p * hm
    o = torch.einsum("bhij,bhjd->bhid", p, v) + torch.einsum("bhij,ijd->bhid", p, a)
    return (o, p) if return_weights else o
