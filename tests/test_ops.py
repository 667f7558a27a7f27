"""The one op (nezha_kernels::relattn_fwd / relattn_bwd) with each GPU implementation behind it, on the CPU.

CUDA runs under the emulator (csrc/ compiled by g++), Triton under its interpreter (TRITON_INTERPRET must be
set before triton is imported, so those cases run in a subprocess of this file, like test_triton_interpreter).
Each passes torch.library.opcheck (schema, fake tensors, autograd registration, AOT dispatch) and traces under
torch.compile(fullgraph=True) with the same numbers as eager.
"""

from __future__ import annotations

import os

import pytest
import torch
from triton_parity import run_interpreted

import nezha_kernels as nk
from nezha_kernels import ops
from nezha_kernels.dropout import seed_tensor

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
UTILS = ("test_schema", "test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")


def _dense_args(dtype, impl, *, d=32, dropout=0.1, g=None):
    """Arguments of relattn_fwd for a small dense call with every feature on."""
    g = g or torch.Generator().manual_seed(5)
    b, h, lq, lk = 1, 2, 19, 26
    q = torch.randn(b, h, lq, d, generator=g).to(dtype).requires_grad_()
    k, v = (torch.randn(b, h, lk, d, generator=g).to(dtype).requires_grad_() for _ in range(2))
    table = torch.randn(9, d, generator=g).to(dtype)
    key_padding = torch.ones(b, lk, dtype=torch.bool)
    key_padding[0, 21:] = False
    head_mask = torch.rand(b, h, generator=g).to(dtype)
    return (
        q,
        k,
        v,
        table,
        key_padding,
        None,
        head_mask,
        None,
        None,
        lq,
        lk,
        4,
        True,
        lk - lq,
        0.3,
        dropout,
        seed_tensor(1234),
        impl,
    )


def _check_op(args, *, exact_compile: bool):
    torch.library.opcheck(torch.ops.nezha_kernels.relattn_fwd.default, args, test_utils=UTILS)
    q, k, v = args[:3]

    def attend(q, k, v):
        return ops.relattn_fwd(q, k, v, *args[3:])[0]

    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")  # no graph break allowed
    out, expected = compiled(q, k, v), attend(q, k, v)
    tol = 0 if exact_compile else 1e-6
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    want = torch.autograd.grad(expected.float().square().sum(), (q, k, v))
    for got, ref in zip(grads, want, strict=True):
        torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
        assert got.abs().sum() > 0


def test_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="impl must be one of"):
        ops._launchers("cuda-fast")


@pytest.fixture(scope="module")
def emulated():
    from nezha_kernels.cuda_ext import emulator

    try:
        emulator.build_emulator()
    except emulator.EmulatorBuildError as exc:
        pytest.skip(f"CUDA emulator unavailable: {exc}")
    with emulator.emulated_cuda_backend() as ext:
        yield ext


@pytest.mark.skipif(INTERPRETED, reason="the emulator cases run in the main process")
@pytest.mark.parametrize("impl,dtype", [("cuda-simt", torch.float32), ("cuda-tc", torch.bfloat16)])
def test_cuda_impls_pass_opcheck_and_compile(emulated, impl, dtype):
    _check_op(_dense_args(dtype, impl), exact_compile=True)


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="already inside the interpreter subprocess")
def test_triton_impl_suite():
    # The op's default table takes the Triton rotation path here whatever the dtype (configs.ROTATION_ENV).
    run_interpreted(__file__, {"NEZHA_KERNELS_TRITON_ROTATION": "all"}, "interpreted")


@pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 subprocess of test_triton_impl_suite")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interpreted_triton_impl_passes_opcheck_and_compile(dtype):
    _check_op(_dense_args(dtype, "triton", d=16), exact_compile=True)


@pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 subprocess of test_triton_impl_suite")
def test_interpreted_public_op_goes_through_the_one_op(monkeypatch):
    seen = []
    original = ops.relattn_fwd

    def spy(*args):
        seen.append(tuple(args[-2:]))  # (impl, sinusoid)
        return original(*args)

    monkeypatch.setattr(ops, "relattn_fwd", spy)
    q = torch.randn(1, 2, 17, 16)
    out = nk.relative_attention(q, q, q, max_relative_position=3, backend="triton")
    ref = nk.relative_attention(q, q, q, max_relative_position=3, backend="reference")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    # A user's table is read as given, even one equal to the sinusoid: only the op's default is flagged.
    table = nk.sinusoidal_table(3, 16)
    out_given = nk.relative_attention(q, q, q, max_relative_position=3, rel_table=table, backend="triton")
    torch.testing.assert_close(out_given, ref, atol=2e-5, rtol=2e-5)
    assert seen == [("triton", True), ("triton", False)]


@pytest.mark.skipif(INTERPRETED, reason="the emulator cases run in the main process")
def test_public_varlen_op_dispatches_to_cuda(emulated):
    # Sequences of 5, 0 and 17 tokens; the capability table sends padding-free calls to the CUDA kernels.
    g = torch.Generator().manual_seed(3)
    cu = torch.tensor([0, 5, 5, 22], dtype=torch.int32)
    q, k, v = (torch.randn(22, 2, 32, generator=g).requires_grad_() for _ in range(3))
    out = nk.relative_attention_varlen(q, k, v, cu, max_relative_position=4, causal=True, backend="cuda")
    ref = nk.relative_attention_varlen(q, k, v, cu, max_relative_position=4, causal=True, backend="reference")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    want = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for got, exp in zip(grads, want, strict=True):
        torch.testing.assert_close(got, exp, atol=5e-5, rtol=5e-5)
