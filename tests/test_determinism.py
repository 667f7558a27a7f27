"""A backward run twice on the same inputs gives bitwise-equal gradients, for every backend that claims it.

The claim: the reference and torch backends (CPU), the Triton kernels and the CUDA kernels in deterministic mode
(torch.use_deterministic_algorithms(True), PyTorch's switch: the CUDA backward then runs its two kernels, dK/dV and dQ
each written by one program; without it the tensor-core family runs the fused backward, whose dQ atomics make the
summation order run-dependent, tests/test_cuda_fused_bwd_emulated.py). Checked on the CPU for the reference and
torch backends, for the Triton kernels under the interpreter (TRITON_INTERPRET=1, in a subprocess as in
test_triton_interpreter.py) and for both CUDA kernel families on the emulator (as in test_cuda_emulated.py); on a GPU
for triton and cuda (skipped without one). One case per backend has dropout, with the same seed both times.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

import nezha_kernels as nk

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
B, H, LQ, LK, D, R = 2, 2, 11, 14, 32, 3  # D = 32: a head dim every kernel takes


def _inputs(dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=g).to(dtype).to(device) for n in (LQ, LK, LK))
    pad = torch.rand(B, LK, generator=g) > 0.3
    pad[:, 0] = True
    table = torch.randn(2 * R + 1, D, generator=g).to(dtype).to(device)
    head_mask = (torch.rand(B, H, generator=g) + 0.5).to(dtype).to(device)
    grad_out = torch.randn(B, H, LQ, D, generator=g).to(dtype).to(device)
    return q, k, v, pad.to(device), table, head_mask, grad_out


@contextlib.contextmanager
def _deterministic_algorithms():
    """torch.use_deterministic_algorithms(True) within the block (the CUDA backward's deterministic mode). warn_only:
    the switch is what is tested here, not PyTorch's own ops (cuBLAS would want CUBLAS_WORKSPACE_CONFIG)."""
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


def _run_twice(backend, dtype, device, *, dropout, table_grads):
    """Forward and backward twice on fresh leaves of the same values: [(out, grads), (out, grads)]."""
    q, k, v, pad, table, head_mask, grad_out = _inputs(dtype, device)
    runs = []
    for _ in range(2):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        extra = [t.detach().clone().requires_grad_(table_grads) for t in (table, head_mask)]
        out = nk.relative_attention(
            *leaves,
            attention_mask=pad,
            max_relative_position=R,
            rel_table=extra[0],
            head_mask=extra[1],
            causal=True,
            q_offset=LK - LQ,
            dropout_p=0.25 if dropout else 0.0,
            generator=torch.Generator().manual_seed(7) if dropout else None,
            backend=backend,
        )
        grads = torch.autograd.grad(out, leaves + (extra if table_grads else []), grad_out)
        runs.append((out, grads))
    return runs


def _assert_bitwise_equal(runs):
    (out1, grads1), (out2, grads2) = runs
    assert torch.equal(out1, out2), "forward differs between two runs"
    names = ["dq", "dk", "dv", "dtable", "dhead_mask"]
    for name, a, b in zip(names, grads1, grads2, strict=False):
        assert a.abs().sum() > 0, f"{name} is all zeros: nothing was compared"
        assert torch.equal(a, b), f"{name} differs between two backward runs: max {(a - b).abs().max().item():.3g}"


@pytest.mark.skipif(INTERPRETED, reason="runs in the main process")
@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("dropout", [False, True], ids=["no_dropout", "dropout"])
def test_cpu_backends(backend, dropout):
    _assert_bitwise_equal(_run_twice(backend, torch.float32, "cpu", dropout=dropout, table_grads=True))


@pytest.mark.skipif(INTERPRETED, reason="runs in the main process")
@pytest.mark.parametrize(
    "impl, dtype, dropout", [("simt", torch.float32, True), ("tc", torch.bfloat16, False)], ids=["simt", "tc"]
)
def test_cuda_kernels_on_the_emulator(impl, dtype, dropout, monkeypatch):
    from nezha_kernels.backends.cuda_backend import IMPL_ENV
    from nezha_kernels.cuda_ext import emulator

    if emulator.find_cxx() is None:
        pytest.skip("the CUDA emulator needs g++ (C++20)")
    monkeypatch.setenv(IMPL_ENV, impl)
    with emulator.emulated_cuda_backend(), _deterministic_algorithms():
        runs = _run_twice("cuda", dtype, "cpu", dropout=dropout, table_grads=False)
    _assert_bitwise_equal(runs)


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="already inside the interpreter subprocess")
def test_triton_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    from triton_parity import run_interpreted

    run_interpreted(__file__, {}, "interpreted")


@pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 subprocess")
@pytest.mark.parametrize("dropout", [False, True], ids=["no_dropout", "dropout"])
def test_interpreted_triton(dropout):
    _assert_bitwise_equal(_run_twice("triton", torch.float32, "cpu", dropout=dropout, table_grads=False))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(INTERPRETED, reason="TRITON_INTERPRET=1 would run the interpreter, not the compiled kernels")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dropout", [False, True], ids=["no_dropout", "dropout"])
def test_gpu_kernels(backend, dtype, dropout):
    status = nk.available_backends("cuda")[backend]
    if not status.available:
        pytest.skip(f"{backend}: {status.reason}")
    with _deterministic_algorithms():
        _assert_bitwise_equal(_run_twice(backend, dtype, "cuda", dropout=dropout, table_grads=False))
