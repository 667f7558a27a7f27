"""GPU parity of the CUDA padding-free (varlen) kernels: the launcher pair (nezha_kernels/cuda_ext/launch.py) on
packed [T, H, D] batches against the float64 formula per sequence (q_offset = Lk_b - Lq_b), and against the dense
kernels on the padded batch (same dropout bits), forward and dq / dk / dv, both kernel families, fp32 / fp16 /
bf16, head dims 32 / 64 / 128, with lengths that span several blocks and lengths 0 and 1.

Skipped without a CUDA device (and when the extension cannot be built there, with the reason).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import varlen_reference as vref
from tolerance import assert_all_within

from nezha_kernels.backends import available_backends
from nezha_kernels.cuda_ext import launch
from nezha_kernels.table import sinusoidal_table

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
SEED = 0x2468_ACE0_1357
# k per dtype and output (tests/tolerance.py), as tests/test_cuda_gpu.py and the emulated varlen suite (whose
# largest ratios were fp32 0.08 and bf16 1.08: the emulator runs these kernels' source).
K = {dtype: dict(out=2.0, dq=2.0, dk=2.0, dv=2.0) for dtype in (F32, F16, BF16)}
LENS_Q = (1, 0, 130, 77, 300, 5)
LENS_K = (1, 0, 150, 77, 211, 9)
_T_Q, _T_K = sum(LENS_Q), sum(LENS_K)


@pytest.fixture(scope="module", autouse=True)
def cuda_backend_available():
    status = available_backends("cuda")["cuda"]
    if not status.available:
        pytest.skip(f"cuda backend unavailable: {status.reason}")


def _cu(lens):
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")


def _call(dtype, d, r, *, causal, dropout_p, heads=2, lens_q=LENS_Q, lens_k=LENS_K, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (
        torch.randn(n, heads, d, device="cuda", generator=g).to(dtype) for n in (sum(lens_q), sum(lens_k), sum(lens_k))
    )
    head_mask = torch.rand(len(lens_q), heads, device="cuda", generator=g)
    grad_out = torch.randn(q.shape, device="cuda", generator=g).to(dtype)
    table = sinusoidal_table(r, d).to(device="cuda", dtype=dtype)
    tail = (
        None,
        None,
        head_mask,
        _cu(lens_q),
        _cu(lens_k),
        max(lens_q),
        max(lens_k),
        r,
        causal,
        0,
        d**-0.5,
        dropout_p,
        SEED if dropout_p else 0,
    )
    return q, k, v, table, grad_out, tail


def _run(q, k, v, table, grad_out, tail, family):
    out, lse = launch.relattn_fwd(q, k, v, table, *tail, family=family)
    grads = launch.relattn_bwd(grad_out, q, k, v, table, out, lse, *tail, family=family)
    torch.cuda.synchronize()
    return out, lse, grads


def _pad(t, cu, lmax):
    """[T, H, D] -> [B, H, lmax, D] zero-padded."""
    b = cu.numel() - 1
    out = t.new_zeros(b, t.shape[1], lmax, t.shape[2])
    for i in range(b):
        s, e = int(cu[i]), int(cu[i + 1])
        out[i, :, : e - s] = t[s:e].transpose(0, 1)
    return out


def _families(dtype):
    return ["simt"] if dtype == F32 else ["tc", "simt"]


@dataclasses.dataclass(frozen=True)
class _Case:
    """What tests/varlen_reference.py reads of a case."""

    lens_q: tuple[int, ...]
    lens_k: tuple[int, ...]
    heads: int
    r: int
    causal: bool
    dropout_p: float


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
@pytest.mark.parametrize("d", [32, 64, 128])
def test_varlen_matches_formula_per_sequence(dtype, d):
    """Per sequence against the float64 formula by tests/tolerance.py's rule (K), the same-precision baseline being
    the formula run by PyTorch in the kernels' dtype (on the CPU, from the same rounded inputs)."""
    case = _Case(LENS_Q, LENS_K, 2, {32: 1, 64: 7, 128: 64}[d], d == 64, 0.2 if d == 32 else 0.0)
    g = torch.Generator(device="cuda").manual_seed(d)
    q, k, v = (torch.randn(n, case.heads, d, device="cuda", generator=g).to(dtype) for n in (_T_Q, _T_K, _T_K))
    head_mask = torch.rand(len(LENS_Q), case.heads, device="cuda", generator=g)
    grad_out = torch.randn(q.shape, device="cuda", generator=g).to(dtype)
    table = sinusoidal_table(case.r, d).to(device="cuda", dtype=dtype)
    cu_q, cu_k, scale = _cu(LENS_Q), _cu(LENS_K), d**-0.5
    tail = vref.launcher_tail(case, head_mask, cu_q, cu_k, scale)
    cpu = [t.cpu() for t in (q, k, v, cu_q, cu_k, table, head_mask, grad_out)]
    ref_out, ref_grads, _ = vref.expected(case, *cpu, scale)
    sp_out, sp_grads, _ = vref.expected(case, *cpu, scale, dtype=dtype)
    for family in _families(dtype):
        out, _, grads = _run(q, k, v, table, grad_out, tail, family)
        assert all(torch.isfinite(t).all() for t in (out, *grads)), f"{family}: unwritten or non-finite rows"
        assert_all_within(
            dict(out=out, dq=grads[0], dk=grads[1], dv=grads[2]),
            dict(out=ref_out, dq=ref_grads[0], dk=ref_grads[1], dv=ref_grads[2]),
            dict(out=sp_out, dq=sp_grads[0], dk=sp_grads[1], dv=sp_grads[2]),
            K[dtype],
            f"{family} {dtype} D={d}",
        )


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_varlen_equals_dense_kernels_on_the_padded_batch(dtype):
    """Equal lengths per sequence (offset 0 both ways), key padding on the padded batch, same seed: the dense
    kernels drop the same entries and give the same rows and gradients."""
    lens = (1, 130, 0, 77, 33)
    q, k, v, table, grad_out, tail = _call(dtype, 64, 7, causal=True, dropout_p=0.3, lens_q=lens, lens_k=lens)
    cu = tail[3]
    lmax = max(lens)
    dense = [_pad(t, cu, lmax) for t in (q, k, v, grad_out)]
    padding = torch.zeros(len(lens), lmax, dtype=torch.bool, device="cuda")
    for i, n in enumerate(lens):
        padding[i, :n] = True
    dense_tail = (padding, None, tail[2], None, None, lmax, lmax, *tail[7:])
    for family in _families(dtype):
        out, _, grads = _run(q, k, v, table, grad_out, tail, family)
        out_d, lse_d = launch.relattn_fwd(*dense[:3], table, *dense_tail, family=family)
        grads_d = launch.relattn_bwd(dense[3], *dense[:3], table, out_d, lse_d, *dense_tail, family=family)
        tol = dict(atol=1e-5, rtol=1e-5) if dtype == F32 else dict(atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(_pad(out, cu, lmax).float(), (out_d * padding[:, None, :, None]).float(), **tol)
        for got, want in zip(grads, grads_d, strict=True):
            torch.testing.assert_close(_pad(got, cu, lmax).float(), (want * padding[:, None, :, None]).float(), **tol)
