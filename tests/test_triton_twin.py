"""The plain twin of the Triton kernels (relative=False: every relative term compiled out) under the interpreter.

It must compute exact softmax attention: the float64 formula (tests/formula.py) with a zero table, forward output,
row statistics and the gradients of q, k and v, with masks, causal, dropout and head_mask; and padding-free.
As tests/test_triton_interpreter.py, a plain run runs this file again in a TRITON_INTERPRET=1 subprocess.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
interpreted_only = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 subprocess")

pytest.importorskip("triton")

import formula  # noqa: E402
from triton_parity import TOL, run_interpreted  # noqa: E402

from nezha_kernels.dropout import keep_mask  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="already inside the interpreter subprocess")
def test_twin_interpreter_suite():
    run_interpreted(__file__, {}, "not interpreter_suite")


def _case(dtype, b, h, lq, lk, d, *, kp=None, causal=False, q_offset=0, p=0.0, hm=None, seed=0):
    from nezha_kernels.triton_kernels import launch

    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(dtype) for n in (lq, lk, lk))
    scale, drop_seed, r = 0.21, 123456789 + seed, 3
    # A random table and R are passed and must be ignored: the twin has no relative term.
    table = torch.randn(2 * r + 1, d, generator=g).to(dtype)
    args = (kp, None, hm, None, None, lq, lk, r, causal, q_offset, scale, p, drop_seed)
    out, lse = launch.relattn_fwd(q, k, v, table, *args, relative=False)
    keep = keep_mask(drop_seed, p, b, h, torch.arange(lq), lk, torch.device("cpu")) if p > 0 else None
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    zero = torch.zeros(2 * r + 1, d, dtype=torch.float64)
    expected = formula.attention(
        *ref, zero, r=r, key_padding=kp, causal=causal, q_offset=q_offset, scale=scale, keep=keep, dropout_p=p,
        head_mask=hm,
    )  # fmt: skip
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), expected, atol=tol["fwd"], rtol=tol["fwd"])
    grad_out = torch.randn(b, h, lq, d, generator=g).to(dtype)
    grads = launch.relattn_bwd(grad_out, q, k, v, table, out, lse, *args, relative=False)
    for name, got, want in zip("qkv", grads, torch.autograd.grad(expected, ref, grad_out.double()), strict=True):
        torch.testing.assert_close(
            got.double(), want, atol=tol["grad"], rtol=tol["grad"], msg=lambda m, name=name: f"d{name}: {m}"
        )
    return lse


@interpreted_only
def test_twin_is_softmax_attention_with_far_tiles_both_sides():
    # 70 x 53 keys over 16-wide tiles: full tiles, a partial last tile; statistics are softmax's own.
    lse = _case(torch.float32, 2, 2, 70, 53, 32, q_offset=9)
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 2, n, 32, generator=g) for n in (70, 53))
    scores = (q.double() @ k.double().transpose(-1, -2)) * 0.21
    torch.testing.assert_close(lse[0].double(), scores.amax(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((lse[0] + lse[1]).double(), torch.logsumexp(scores, -1), atol=1e-5, rtol=1e-5)


@interpreted_only
def test_twin_with_padding_causal_dropout_and_head_mask():
    kp = torch.rand(2, 41, generator=torch.Generator().manual_seed(3)) > 0.3
    kp[1] = False  # a fully padded batch row: uniform weights
    hm = torch.tensor([[1.0, 0.5], [0.0, 2.0]])
    _case(torch.float32, 2, 2, 37, 41, 16, kp=kp, causal=True, q_offset=4, p=0.25, hm=hm, seed=1)


@interpreted_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_twin_low_precision(dtype):
    _case(dtype, 1, 2, 33, 47, 64, causal=True, q_offset=14, seed=2)
