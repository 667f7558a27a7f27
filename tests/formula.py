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


def _product(equation, x, y):
    """einsum as a GEMM computes it: float32 accumulation, the result rounded to the operands' dtype (float64 stays
    float64). Also fast on the CPU, where float16 einsum over the gathered [Lq, Lk, D] table is not."""
    if x.dtype == torch.float64:
        return torch.einsum(equation, x, y)
    return torch.einsum(equation, x.float(), y.float()).to(x.dtype)


def split_mask(attention_mask):
    """A mask as a user passes it to the op -> (key_padding, additive), read from the op's documentation: a bool or
    integer mask is [B, Lk] with True / nonzero = attend; a floating mask is added to the scores and is 4-D,
    broadcastable to [B, H, Lq, Lk] (the Hugging Face extended mask [B, 1, 1, Lk] is one)."""
    if attention_mask is None:
        return None, None
    if attention_mask.dtype == torch.bool or not attention_mask.dtype.is_floating_point:
        assert attention_mask.dim() == 2, "a bool/integer mask is [B, Lk]"
        return attention_mask != 0, None
    assert attention_mask.dim() == 4, "a floating mask is 4-D"
    return None, attention_mask


def attention(
    q,
    k,
    v,
    table,
    *,
    r,
    attention_mask=None,
    key_padding=None,
    additive=None,
    causal=False,
    q_offset=0,
    scale=None,
    keep=None,
    dropout_p=0.0,
    head_mask=None,
    return_weights=False,
    dtype=torch.float64,
):
    """Output [B, H, Lq, D] (autograd-capable) of the formula, computed in ``dtype``.

    attention_mask: the op's mask as the user passes it (see split_mask); or, equivalently, key_padding (bool
    [B, Lk], True = attend) and / or additive (4-D, broadcastable to [B, H, Lq, Lk]). keep: a bool [B, H, Lq, Lk]
    dropout mask. head_mask: [H] or [B, H]. dtype float64 (the default) is the oracle; dtype float16 / bfloat16 /
    float32 is "the same computation done by PyTorch at that precision", the baseline of tests/tolerance.py
    (scores, softmax and products all rounded to dtype; masked scores then get dtype's most negative value).
    """
    if attention_mask is not None:
        assert key_padding is None and additive is None, "pass attention_mask or key_padding / additive"
        key_padding, additive = split_mask(attention_mask)
    q, k, v, table = (x.to(dtype) for x in (q, k, v, table))
    fmin = max(FMIN, torch.finfo(dtype).min)  # float16 cannot hold float32's finfo.min
    b, h, lq, d = q.shape
    lk = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    i = torch.arange(lq, device=q.device).view(-1, 1) + q_offset
    j = torch.arange(lk, device=q.device).view(1, -1)
    idx = (j - i).clamp(-r, r) + r  # [Lq, Lk]
    a = table[idx]  # [Lq, Lk, D]
    base = (_product("bhid,bhjd->bhij", q, k) + _product("bhid,ijd->bhij", q, a)) * scale
    s = base.detach().clone()
    if additive is not None:
        s = s + additive.to(device=q.device, dtype=dtype)
    masked = torch.zeros(b, 1, lq, lk, dtype=torch.bool, device=q.device)
    if key_padding is not None:
        masked = masked | ~key_padding.bool().view(b, 1, 1, lk).to(q.device)
    if causal:
        masked = masked | (j > i).view(1, 1, lq, lk)
    # Masked pairs score finfo.min (so a fully masked row is uniform) and -inf is raised to finfo.min;
    # the gradient reaches every score unchanged, as with the Hugging Face model's additive mask.
    s = torch.where(masked, torch.full_like(s, fmin), s).clamp(min=fmin)
    s = s + (base - base.detach())
    p = torch.softmax(s, dim=-1)
    if keep is not None:
        p = p * keep.to(device=q.device, dtype=dtype) / (1.0 - dropout_p)
    if head_mask is not None:
        hm = head_mask.to(device=q.device, dtype=dtype)
        hm = hm.view(1, h, 1, 1) if hm.dim() == 1 else hm.view(b, h, 1, 1)
        p = p * hm
    o = _product("bhij,bhjd->bhid", p, v) + _product("bhij,ijd->bhid", p, a)
    return (o, p) if return_weights else o
