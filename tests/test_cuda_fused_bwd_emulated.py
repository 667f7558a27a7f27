"""The fused tensor-core backward (csrc/relattn_bwd_fused.cu: dK, dV and dQ in one kernel per key block, dQ added
with atomicAdd) on the CUDA emulator, against the float64 formula by tests/tolerance.py's rule, next to the
deterministic two-kernel backward that torch.use_deterministic_algorithms(True) selects (cuda_ext/launch.py).

Cases: blocks whose query tiles are far-left, far-right and band tiles of one key block (the one-column row-sum
bucket and the band bucket), odd lengths, both fused head dims (32, 64; D = 128 runs the two kernels), causal with
key padding, dropout and head_mask, an additive mask, q_offset, R = 64 and padding-free batches. dK and dV come from
the same code in both modes (bitwise equal); dQ's summation order differs (atomics), so both modes are held to the
rule, not to each other's bits. Plus the emulator's atomicAdd self-test (thread-safe: no update lost or doubled).
"""

from __future__ import annotations

import dataclasses

import formula
import pytest
import torch
import varlen_reference as vref
from test_cuda_varlen_emulated import Case as VarlenCase
from tolerance import assert_all_within

from nezha_kernels.cuda_ext import emulator, launch
from nezha_kernels.dropout import keep_mask
from nezha_kernels.inputs import prepare_inputs
from nezha_kernels.table import sinusoidal_table

pytestmark = pytest.mark.skipif(emulator.find_cxx() is None, reason="the CUDA emulator needs g++ (C++20)")

F16, BF16 = torch.float16, torch.bfloat16
# k per dtype and output (tests/tolerance.py), as the other emulated suites.
K = {F16: dict(dq=2.0, dk=2.0, dv=2.0), BF16: dict(dq=2.0, dk=2.0, dv=2.0)}


@dataclasses.dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    shape: tuple[int, int, int, int, int]  # B, H, Lq, Lk, D
    r: int
    causal: bool = False
    q_offset: int = 0
    padding: bool = False
    additive: bool = False
    dropout_p: float = 0.0
    head_mask: bool = False


CASES = {
    # Lq 230 against 4 key blocks of 64, R = 8: each key block sees far-left, band and far-right query tiles.
    "fp16_d64_far_both_sides": Case(F16, (1, 1, 230, 261, 64), 8),
    "bf16_d32_causal_padding_dropout_head_mask": Case(
        BF16, (2, 1, 97, 131, 32), 5, causal=True, padding=True, dropout_p=0.2, head_mask=True
    ),
    "fp16_d64_q_offset_far_left": Case(F16, (1, 1, 70, 200, 64), 16, q_offset=150),
    "bf16_d64_r64_band_everywhere": Case(BF16, (1, 2, 100, 150, 64), 64),
    "bf16_d32_additive_mask": Case(BF16, (2, 2, 45, 77, 32), 3, additive=True),
}


def _both_modes(fn):
    """fn() with torch.use_deterministic_algorithms off (the fused kernel) and on (the two-kernel backward)."""
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        results = []
        for deterministic in (False, True):
            torch.use_deterministic_algorithms(deterministic, warn_only=True)
            results.append(fn())
        return results
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


@pytest.fixture(scope="module")
def emulated_backend():
    with emulator.emulated_cuda_backend() as ext:
        yield ext


def test_emulator_atomic_add_loses_no_update():
    rounds = 64
    n = 2 * 128 * rounds
    err, out = emulator.run_selftest("atomic_add", out_numel=1 + n)
    assert err is None, err
    assert out[0].item() == n
    assert torch.equal(out[1:].sort().values, torch.arange(n, dtype=torch.float32)), "atomicAdd returned a duplicate"


def _kwargs(case: Case, g: torch.Generator) -> dict:
    b, h, lq, lk, _ = case.shape
    kw = dict(max_relative_position=case.r, causal=case.causal, q_offset=case.q_offset)
    if case.padding:
        pad = torch.rand(b, lk, generator=g) > 0.3
        pad[:, 0] = True
        kw["attention_mask"] = pad
    if case.additive:
        kw["attention_mask"] = torch.randn(1, h, lq, lk, generator=g)
    if case.dropout_p:
        kw["dropout_p"] = case.dropout_p
        kw["generator"] = torch.Generator().manual_seed(5)
    if case.head_mask:
        kw["head_mask"] = torch.rand(b, h, generator=g).to(case.dtype)
    return kw


@pytest.mark.parametrize("name", list(CASES))
def test_fused_backward_matches_formula(name, emulated_backend):
    case = CASES[name]
    b, h, lq, lk, d = case.shape
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(case.dtype) for n in (lq, lk, lk))
    kwargs = _kwargs(case, g)
    inputs = prepare_inputs(q, k, v, **kwargs)
    tail = (inputs.key_padding, inputs.additive_mask, inputs.head_mask, None, None, lq, lk, case.r, case.causal)
    tail += (case.q_offset, inputs.scale, inputs.dropout_p, int(inputs.dropout_seed or 0))
    grad_out = torch.randn(b, h, lq, d, generator=g).to(case.dtype)
    out, lse = launch.relattn_fwd(q, k, v, inputs.table, *tail, family="tc")
    fused, two_kernel = _both_modes(
        lambda: launch.relattn_bwd(grad_out, q, k, v, inputs.table, out, lse, *tail, family="tc")
    )

    keep = None
    if case.dropout_p:
        keep = keep_mask(inputs.dropout_seed, case.dropout_p, b, h, torch.arange(lq), lk, torch.device("cpu"))
    raw = dict(
        r=case.r,
        attention_mask=kwargs.get("attention_mask"),
        causal=case.causal,
        q_offset=case.q_offset,
        keep=keep,
        dropout_p=case.dropout_p,
        head_mask=kwargs.get("head_mask"),
    )
    ref = {}
    for precision in (torch.float64, case.dtype):
        leaves = [t.detach().to(precision).requires_grad_() for t in (q, k, v)]
        o = formula.attention(*leaves, inputs.table, dtype=precision, **raw)
        ref[precision] = dict(
            zip(("dq", "dk", "dv"), torch.autograd.grad(o, leaves, grad_out.to(precision)), strict=True)
        )
    for label, grads in (("fused", fused), ("two-kernel", two_kernel)):
        got = dict(zip(("dq", "dk", "dv"), grads, strict=True))
        for gname, t in got.items():
            assert t.dtype == case.dtype and torch.isfinite(t).all(), f"{label} {gname} has non-finite entries"
        assert_all_within(got, ref[torch.float64], ref[case.dtype], K[case.dtype], label)
    # dK and dV: the same code in both kernels' key loops.
    assert torch.equal(fused[1], two_kernel[1]) and torch.equal(fused[2], two_kernel[2])


VARLEN = VarlenCase("tc", BF16, (70, 1, 0, 131), (45, 3, 2, 140), 2, 64, 7, causal=True, dropout_p=0.2, head_mask=True)


def test_fused_backward_padding_free(emulated_backend):
    case = VARLEN
    g = torch.Generator().manual_seed(3)
    tq, tk = sum(case.lens_q), sum(case.lens_k)
    q, k, v = (torch.randn(n, case.heads, case.d, generator=g).to(case.dtype) for n in (tq, tk, tk))
    cu_q, cu_k = vref.cu_seqlens(case.lens_q), vref.cu_seqlens(case.lens_k)
    table = sinusoidal_table(case.r, case.d).to(case.dtype)
    head_mask = torch.rand(len(case.lens_q), case.heads, generator=g)
    grad_out = torch.randn(q.shape, generator=g).to(case.dtype)
    scale = case.d**-0.5
    tail = vref.launcher_tail(case, head_mask, cu_q, cu_k, scale)
    out, lse = launch.relattn_fwd(q, k, v, table, *tail, family="tc")
    fused, two_kernel = _both_modes(lambda: launch.relattn_bwd(grad_out, q, k, v, table, out, lse, *tail, family="tc"))
    _, ref_grads, _ = vref.expected(case, q, k, v, cu_q, cu_k, table, head_mask, grad_out, scale)
    _, same_precision, _ = vref.expected(case, q, k, v, cu_q, cu_k, table, head_mask, grad_out, scale, dtype=BF16)
    names = ("dq", "dk", "dv")
    for label, grads in (("fused", fused), ("two-kernel", two_kernel)):
        assert all(torch.isfinite(t).all() for t in grads), f"{label}: unwritten or non-finite rows"
        assert_all_within(
            dict(zip(names, grads, strict=True)),
            dict(zip(names, ref_grads, strict=True)),
            dict(zip(names, same_precision, strict=True)),
            K[BF16],
            label,
        )
    assert torch.equal(fused[1], two_kernel[1]) and torch.equal(fused[2], two_kernel[2])


def test_deterministic_switch_picks_the_backward(emulated_backend):
    """launch.relattn_bwd passes torch.are_deterministic_algorithms_enabled() to the extension's backward: on, the
    two-kernel backward (deterministic=True); off, the fused one."""
    g = torch.Generator().manual_seed(9)
    b, h, lq, lk, d, r = 1, 2, 75, 140, 32, 4
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(F16) for n in (lq, lk, lk))
    table = sinusoidal_table(r, d).to(F16)
    grad_out = torch.randn(b, h, lq, d, generator=g).to(F16)
    tail = (None, None, None, None, None, lq, lk, r, False, 0, d**-0.5, 0.0, 0)
    out, lse = launch.relattn_fwd(q, k, v, table, *tail, family="tc")
    via_launch = _both_modes(lambda: launch.relattn_bwd(grad_out, q, k, v, table, out, lse, *tail, family="tc"))
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()
    scalars = (r, 0, False, d**-0.5, 0.0, 0, 0, launch.FAMILIES["tc"])
    for grads, deterministic in zip(via_launch, (False, True), strict=True):
        direct = emulated_backend.backward(
            grad_out, q, k, v, table, None, None, None, lse, delta, *scalars, deterministic
        )
        for got, want in zip(grads, direct, strict=True):
            assert torch.equal(got, want)
    assert not torch.equal(via_launch[0][0], via_launch[1][0]), "dq: expected the two kernels' rounding to differ"
