"""tests/tolerance.py's rule passes a correct kernel and fails a wrong one.

The "kernel" here is backend="torch" in bfloat16 / float16 on the CPU (fp32 accumulation); the wrong kernels are the
same op with one bug each (a scale off by 1%, a relative distance off by one, one padded key attended), and the
correct result moved past the bound at one element.
"""

from __future__ import annotations

import formula
import pytest
import torch
from tolerance import assert_within, error, floor

import nezha_kernels as nk

K = 2.0
B, H, LQ, LK, D, R = 2, 2, 19, 23, 32, 4


def _case(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=g).to(dtype) for n in (LQ, LK, LK))
    pad = torch.rand(B, LK, generator=g) > 0.3
    pad[:, 0] = True
    table = nk.sinusoidal_table(R, D, dtype=dtype)
    ref = formula.attention(q, k, v, table, r=R, attention_mask=pad)
    same = formula.attention(q, k, v, table, r=R, attention_mask=pad, dtype=dtype)
    return q, k, v, pad, table, ref, same


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_rule_passes_a_correct_kernel_and_fails_wrong_ones(dtype):
    q, k, v, pad, table, ref, same = _case(dtype)
    assert same.dtype == dtype and error(same, ref) > 0
    out = nk.relative_attention(q, k, v, attention_mask=pad, max_relative_position=R, backend="torch")
    assert_within("out", out, ref, same, K)

    wrong = {
        "scale off by 1%": dict(attention_mask=pad, max_relative_position=R, scale=1.01 * D**-0.5),
        "distances clipped at R - 1": dict(attention_mask=pad, max_relative_position=R - 1, rel_table=table[1:-1]),
        "one padded key attended": dict(attention_mask=pad | (torch.arange(LK) == int((~pad[0]).nonzero()[0]))),
    }
    for bug, kwargs in wrong.items():
        bad = nk.relative_attention(q, k, v, backend="torch", **kwargs)
        with pytest.raises(AssertionError, match="exceeds"):
            assert_within(f"out ({bug})", bad, ref, same, K)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_the_bound_is_sharp_at_one_element(dtype):
    """The correct result moved at one element: half way to the bound passes, one step past it fails."""
    q, k, v, pad, table, ref, same = _case(dtype, seed=1)
    out = nk.relative_attention(q, k, v, attention_mask=pad, max_relative_position=R, backend="torch").double()
    bound = K * error(same, ref) + floor(ref)
    at = (ref - out).abs().argmin()  # an element the kernel got (almost) right: its error is all the shift's
    for shift, fails in ((0.5 * bound, False), (1.02 * bound, True)):
        moved = out.clone().view(-1)
        moved[at] = ref.view(-1)[at] + shift
        if fails:
            with pytest.raises(AssertionError, match="exceeds"):
                assert_within("out", moved.view(out.shape), ref, same, K)
        else:
            assert_within("out", moved.view(out.shape), ref, same, K)


def test_a_nan_fails_and_an_exact_baseline_leaves_only_the_floor():
    _, _, _, _, _, ref, same = _case(torch.bfloat16, seed=2)
    out = same.clone()
    out.view(-1)[5] = float("nan")
    with pytest.raises(AssertionError, match="exceeds"):
        assert_within("out", out, ref, same, K)
    exact = torch.zeros(3, 4, dtype=torch.float64)
    assert_within("zeros", exact.float() + 1e-6, exact, exact.float(), K)  # within 64 float32 ulps of 1
    with pytest.raises(AssertionError, match="exceeds"):
        assert_within("zeros", exact.float() + 1e-5, exact, exact.float(), K)
