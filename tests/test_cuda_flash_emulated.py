"""The flash-style tensor-core forward's key-tile schedule (csrc/relattn_flash.h) on the CUDA emulator: cases whose
blocks have full far-left and far-right tiles (the plain-attention loop: cp.async pipeline, ldmatrix, exp2 with the
per-row edge term), both feature sets (PLAIN; GENERAL: causal, key padding) and every head dim, against the float64
formula: output and row statistics (one case also the backward; tests/test_cuda_emulated.py runs it on every feature).

tests/test_cuda_emulated.py covers every feature on short sequences; these cases are long enough (Lk >= 3 tiles of
64) that blocks mix far tiles, band tiles and the partial last tile.
"""

from __future__ import annotations

import formula
import pytest
import torch

from nezha_kernels.cuda_ext import emulator, launch
from nezha_kernels.inputs import prepare_inputs

pytestmark = pytest.mark.skipif(emulator.find_cxx() is None, reason="the CUDA emulator needs g++ (C++20)")

F16, BF16 = torch.float16, torch.bfloat16
FMIN = torch.finfo(torch.float32).min
# (atol, rtol) of the output and of the gradients over max(1, max |grad|), as tests/test_cuda_emulated.py.
TOLERANCES = {F16: ((3e-3, 3e-3), (1e-2, 1e-2)), BF16: ((2e-2, 2e-2), (6e-2, 6e-2))}

# name: (dtype, (B, H, Lq, Lk, D), R, options)
CASES = {
    # Lk a multiple of 64: far-left and far-right full tiles, no partial tile.
    "plain_fp16_d64_both_sides": (F16, (1, 1, 200, 256, 64), 8, {}),
    # Few queries, many keys: most tiles far-right, plus a partial tile.
    "plain_bf16_d32_far_right_partial": (BF16, (1, 1, 40, 300, 32), 4, {}),
    # Positive offset: most tiles far-left.
    "plain_fp16_d128_far_left": (F16, (1, 1, 70, 200, 128), 16, {"q_offset": 150}),
    # Also the backward's PLAIN kernels on several key tiles (the backward is the same for every schedule).
    "plain_bf16_d64_head_mask": (BF16, (2, 1, 70, 192, 64), 5, {"head_mask": True, "backward": True}),
    # Causal: far-left tiles take the plain loop, the far-right ones are causal-future.
    "causal_fp16_d64": (F16, (1, 1, 200, 200, 64), 8, {"causal": True}),
    # Three 128-row query blocks (the last partial), both row tiles of every warp in band and far tiles.
    "plain_bf16_d64_three_blocks": (BF16, (1, 1, 300, 384, 64), 12, {"q_offset": 20}),
    # Key padding: every tile through the general loop.
    "general_bf16_d64_padding": (BF16, (2, 1, 70, 200, 64), 6, {"padding": True}),
}


def _kwargs(dtype, shape, r, opts, g):
    b, h, _, lk, _ = shape
    kw = dict(max_relative_position=r, causal=opts.get("causal", False), q_offset=opts.get("q_offset", 0))
    if opts.get("padding"):
        pad = torch.rand(b, lk, generator=g) > 0.3
        pad[:, 0] = True
        kw["attention_mask"] = pad
    if opts.get("head_mask"):
        kw["head_mask"] = torch.rand(b, h, generator=g).to(dtype)
    return kw


@pytest.mark.parametrize("name", list(CASES))
def test_flash_forward_schedule_matches_formula(name):
    dtype, shape, r, opts = CASES[name]
    b, h, lq, lk, d = shape
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(dtype) for n in (lq, lk, lk))
    inputs = prepare_inputs(q, k, v, **_kwargs(dtype, shape, r, opts, g))
    tail = (inputs.key_padding, inputs.additive_mask, inputs.head_mask, None, None, lq, lk)
    tail += (r, inputs.causal, inputs.q_offset, inputs.scale, 0.0, 0)
    grad_out = torch.randn(b, h, lq, d, generator=g).to(dtype)
    with emulator.emulated_cuda_backend():
        out, lse = launch.relattn_fwd(q, k, v, inputs.table, *tail, family="tc")
        if opts.get("backward"):
            grads = launch.relattn_bwd(grad_out, q, k, v, inputs.table, out, lse, *tail, family="tc")

    ref = [t.double().requires_grad_() for t in (q, k, v)]
    expected = formula.attention(
        *ref,
        inputs.table.double(),
        r=r,
        key_padding=inputs.key_padding,
        causal=inputs.causal,
        q_offset=inputs.q_offset,
        scale=inputs.scale,
        head_mask=inputs.head_mask,
    )
    (oa, orr), (ga, gr) = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), expected, atol=oa, rtol=orr)

    # Row max in natural units (lse[0]) from the float64 scores.
    i = torch.arange(lq).view(-1, 1) + inputs.q_offset
    j = torch.arange(lk).view(1, -1)
    a = inputs.table.double()[(j - i).clamp(-r, r) + r]
    s = (torch.einsum("bhid,bhjd->bhij", *ref[:2]) + torch.einsum("bhid,ijd->bhij", ref[0], a)) * inputs.scale
    masked = torch.zeros(1, 1, lq, lk, dtype=torch.bool)
    if inputs.key_padding is not None:
        masked = masked | ~inputs.key_padding.view(-1, 1, 1, lk)
    if inputs.causal:
        masked = masked | (j > i)
    s = torch.where(masked, torch.full_like(s, FMIN), s).detach()
    m = s.amax(-1)
    torch.testing.assert_close(lse[0].double(), m, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(lse[1].double(), (s - m.unsqueeze(-1)).exp().sum(-1).log(), atol=1e-3, rtol=1e-5)
    if not opts.get("backward"):
        return
    ref_grads = torch.autograd.grad(expected, ref, grad_out.double())
    for got, want in zip(grads, ref_grads, strict=True):
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.double() / scale, want / scale, atol=ga, rtol=gr)
