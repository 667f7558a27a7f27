"""backend="cuda"'s padding-free (varlen) kernels executed on the CPU by the CUDA emulator, against the float64
formula (tests/formula.py) applied to each sequence alone with its bottom-right offset q_offset = Lk_b - Lq_b.

q [Tq, H, D], k / v [Tk, H, D] with cu_seqlens int32 [B+1]; forward output and row statistics ([2, H, Tq]), dq /
dk / dv, SIMT (fp32, bf16) and tensor-core (bf16) kernels: odd lengths, lengths 0 and 1, Lq_b != Lk_b, R in
{1, 7, 64}, D in {32, 64, 128}, causal, head_mask, dropout fed the dense op's keep mask on the padded batch. Calls
go through the CUDA launchers (nezha_kernels/cuda_ext/launch.py) and, for one case, through the one op
(nezha_kernels::relattn_fwd) with torch.library.opcheck. Outputs are NaN-poisoned by the emulated extension, so a
row the kernels miss fails the comparison. Shapes are tiny: the emulator runs one OS thread per CUDA thread.
The row arithmetic itself (sequence spans, packed rows, bottom-right offset) has C++ unit tests,
csrc/tests/test_varlen_rows.cpp, compiled and run here.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import torch
import varlen_reference as vref
from tolerance import assert_all_within

from nezha_kernels import ops
from nezha_kernels.cuda_ext import emulator, launch
from nezha_kernels.dropout import seed_tensor
from nezha_kernels.table import sinusoidal_table

pytestmark = pytest.mark.skipif(emulator.find_cxx() is None, reason="the CUDA emulator needs g++ (C++20)")

F32, BF16 = torch.float32, torch.bfloat16

# k per dtype and output (tests/tolerance.py): the kernels' error against the float64 formula (per sequence) is at
# most k times the error of the same formula computed by PyTorch in the kernels' dtype, from the same rounded inputs.
# Largest ratios when k was set (NEZHA_TOL_LOG): fp32 0.08, bf16 1.08 over CASES, 1.65 (dk) in the opcheck test.
K = {
    F32: dict(out=2.0, dq=2.0, dk=2.0, dv=2.0),
    BF16: dict(out=2.0, dq=2.0, dk=2.0, dv=2.0),
}
STATS_TOL = dict(atol=1e-3, rtol=1e-5)


@dataclasses.dataclass(frozen=True)
class Case:
    family: str  # "simt" | "tc"
    dtype: torch.dtype
    lens_q: tuple[int, ...]
    lens_k: tuple[int, ...]  # same as lens_q unless given
    heads: int
    d: int
    r: int
    causal: bool = False
    dropout_p: float = 0.0
    head_mask: bool = False
    fused: bool = False  # q, k, v as views of one packed [T, 3, H, D] projection (row stride 3 H D)


CASES = {
    # 37 rows: two SIMT blocks in sequence 0; a zero-length and a one-row sequence.
    "simt_fp32_d32_r7_odd_zero_one": Case("simt", F32, (37, 0, 1, 5), (37, 0, 1, 5), 2, 32, 7),
    "simt_fp32_d64_r1_lq_ne_lk_causal": Case("simt", F32, (20, 1, 33), (29, 3, 40), 1, 64, 1, causal=True),
    "simt_fp32_d128_r64_dropout_head_mask": Case(
        "simt", F32, (9, 17), (14, 17), 2, 128, 64, dropout_p=0.3, head_mask=True
    ),
    "simt_bf16_d32_r7_causal_fused": Case("simt", BF16, (13, 0, 34), (13, 0, 34), 2, 32, 7, causal=True, fused=True),
    # Queries without keys (Lk_b = 0 < Lq_b): zero output, zero dq.
    "simt_fp32_d32_r1_no_keys": Case("simt", F32, (3, 6), (0, 7), 1, 32, 1),
    # 70 queries: two tensor-core blocks in sequence 1 (BM = 64).
    "tc_bf16_d32_r7_odd_lq_ne_lk": Case("tc", BF16, (1, 70, 0), (5, 45, 2), 1, 32, 7),
    "tc_bf16_d64_r64_causal_dropout_head_mask": Case(
        "tc", BF16, (23, 1, 0, 31), (23, 1, 0, 40), 2, 64, 64, causal=True, dropout_p=0.2, head_mask=True
    ),
    "tc_bf16_d128_r1_causal": Case("tc", BF16, (17, 8), (11, 19), 1, 128, 1, causal=True),
}


CSRC = Path(__file__).resolve().parents[1] / "csrc"


def test_varlen_row_arithmetic_cpp_unit_tests(tmp_path):
    exe = tmp_path / "test_varlen_rows"
    subprocess.run(
        [
            emulator.find_cxx(),
            "-std=c++17",
            "-O1",
            "-Wall",
            "-Werror",
            f"-I{CSRC}",
            str(CSRC / "tests" / "test_varlen_rows.cpp"),
            "-o",
            str(exe),
        ],
        check=True,
    )
    result = subprocess.run([str(exe)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("ok: "), result.stdout


@pytest.fixture(scope="module")
def emulated_backend():
    with emulator.emulated_cuda_backend() as ext:
        yield ext


def _packed(case: Case, g: torch.Generator):
    tq, tk = sum(case.lens_q), sum(case.lens_k)
    h, d = case.heads, case.d
    if case.fused:
        assert case.lens_q == case.lens_k
        fused = torch.randn(tq, 3, h, d, generator=g).to(case.dtype)
        return fused[:, 0], fused[:, 1], fused[:, 2]
    return tuple(torch.randn(n, h, d, generator=g).to(case.dtype) for n in (tq, tk, tk))


def _case_tensors(case: Case, seed: int):
    g = torch.Generator().manual_seed(seed)
    q, k, v = _packed(case, g)
    cu_q, cu_k = vref.cu_seqlens(case.lens_q), vref.cu_seqlens(case.lens_k)
    table = sinusoidal_table(case.r, case.d).to(case.dtype)
    b = len(case.lens_q)
    head_mask = torch.rand(b, case.heads, generator=g) if case.head_mask else None
    grad_out = torch.randn(q.shape, generator=g).to(case.dtype)
    return q, k, v, cu_q, cu_k, table, head_mask, grad_out


def _assert_within_rule(case, out, grads, ref_out, ref_grads, same_precision, label):
    """out and dq / dk / dv against the float64 per-sequence reference, by tests/tolerance.py's rule with K."""
    for name, got in zip(("out", "dq", "dk", "dv"), (out, *grads), strict=True):
        assert got.dtype == case.dtype and torch.isfinite(got).all(), f"{name} has unwritten or non-finite rows"
    sp_out, sp_grads, _ = same_precision
    assert_all_within(
        dict(out=out, dq=grads[0], dk=grads[1], dv=grads[2]),
        dict(out=ref_out, dq=ref_grads[0], dk=ref_grads[1], dv=ref_grads[2]),
        dict(out=sp_out, dq=sp_grads[0], dk=sp_grads[1], dv=sp_grads[2]),
        K[case.dtype],
        label,
    )


@pytest.mark.parametrize("name", list(CASES))
def test_varlen_kernels_match_formula_per_sequence(name, emulated_backend):
    case = CASES[name]
    q, k, v, cu_q, cu_k, table, head_mask, grad_out = _case_tensors(case, sum(map(ord, name)))
    scale = case.d**-0.5
    tail = vref.launcher_tail(case, head_mask, cu_q, cu_k, scale)

    out, lse = launch.relattn_fwd(q, k, v, table, *tail, family=case.family)
    grads = launch.relattn_bwd(grad_out, q, k, v, table, out, lse, *tail, family=case.family)
    expected, ref_grads, stats = vref.expected(case, q, k, v, cu_q, cu_k, table, head_mask, grad_out, scale)
    same_precision = vref.expected(case, q, k, v, cu_q, cu_k, table, head_mask, grad_out, scale, dtype=case.dtype)

    assert out.shape == q.shape
    _assert_within_rule(case, out, grads, expected, ref_grads, same_precision, name)
    assert lse.shape == (2, case.heads, q.shape[0])
    for b, want in stats.items():
        got = lse[:, :, int(cu_q[b]) : int(cu_q[b + 1])].double()
        torch.testing.assert_close(got, want, **STATS_TOL, msg=lambda m: f"sequence {b} row max / log sum: {m}")  # noqa: B023 (called at once)


def test_varlen_matches_the_dense_kernels_on_the_padded_batch(emulated_backend):
    """Same seed, same kept entries: the padding-free call equals the dense kernels on the padded batch (bottom-
    right aligned: q_offset = Lk - Lq with equal lengths 0), dropout and head_mask included."""
    case = Case("simt", F32, (11, 6), (11, 6), 2, 32, 7, dropout_p=0.4, head_mask=True)
    q, k, v, cu_q, cu_k, table, head_mask, _ = _case_tensors(case, 3)
    scale = case.d**-0.5
    out, _ = launch.relattn_fwd(q, k, v, table, *vref.launcher_tail(case, head_mask, cu_q, cu_k, scale), family="simt")

    b, lmax = len(case.lens_q), max(case.lens_q)
    dense = [torch.zeros(b, case.heads, lmax, case.d) for _ in range(3)]
    padding = torch.zeros(b, lmax, dtype=torch.bool)
    for i, n in enumerate(case.lens_q):
        s = int(cu_q[i])
        for full, packed in zip(dense, (q, k, v), strict=True):
            full[i, :, :n] = packed[s : s + n].transpose(0, 1)
        padding[i, :n] = True
    out_dense, _ = launch.relattn_fwd(
        *dense,
        table,
        padding,
        None,
        head_mask,
        None,
        None,
        lmax,
        lmax,
        case.r,
        False,
        0,
        scale,
        case.dropout_p,
        vref.SEED,
        family="simt",
    )
    for i, n in enumerate(case.lens_q):
        s = int(cu_q[i])
        torch.testing.assert_close(out[s : s + n], out_dense[i, :, :n].transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_varlen_through_the_op_passes_opcheck(emulated_backend):
    """The one op (nezha_kernels::relattn_fwd, impl cuda-tc) on a padding-free call: schema, fake tensors,
    autograd registration, and its output and gradients equal the launchers'."""
    case = Case("tc", BF16, (5, 0, 9), (7, 0, 9), 1, 32, 7, causal=True, dropout_p=0.1, head_mask=True)
    q, k, v, cu_q, cu_k, table, head_mask, grad_out = _case_tensors(case, 8)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    scale = case.d**-0.5
    tail = vref.launcher_tail(case, head_mask, cu_q, cu_k, scale)
    args = (q, k, v, table, *tail[:-1], seed_tensor(tail[-1]), "cuda-tc")
    torch.library.opcheck(
        torch.ops.nezha_kernels.relattn_fwd.default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )

    out, lse = ops.relattn_fwd(*args)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    want_out, want_lse = launch.relattn_fwd(q.detach(), k.detach(), v.detach(), table, *tail, family="tc")
    want = launch.relattn_bwd(
        grad_out, q.detach(), k.detach(), v.detach(), table, want_out, want_lse, *tail, family="tc"
    )
    assert out.shape == q.shape and lse.shape == (2, 1, q.shape[0])
    torch.testing.assert_close(out, want_out, atol=0, rtol=0)
    for got, ref in zip(grads, want, strict=True):
        torch.testing.assert_close(got, ref, atol=0, rtol=0)
    expected, ref_grads, _ = vref.expected(case, q, k, v, cu_q, cu_k, table, head_mask, grad_out, scale)
    same_precision = vref.expected(case, q, k, v, cu_q, cu_k, table, head_mask, grad_out, scale, dtype=BF16)
    _assert_within_rule(case, out.detach(), grads, expected, ref_grads, same_precision, "opcheck")


def test_cases_cover_the_brief():
    cases = CASES.values()
    assert {c.r for c in cases} >= {1, 7, 64} and {c.d for c in cases} >= {32, 64, 128}
    assert {(c.family, c.dtype) for c in cases} >= {("simt", F32), ("simt", BF16), ("tc", BF16)}
    lens = {n for c in cases for n in (*c.lens_q, *c.lens_k)}
    assert {0, 1} <= lens and any(n % 2 for n in lens)
    assert any(c.lens_q != c.lens_k for c in cases)
    assert any(n > 64 for c in cases if c.family == "tc" for n in c.lens_q)  # several TC blocks in one sequence
    assert any(n > 32 for c in cases if c.family == "simt" for n in c.lens_q)
    assert any(c.causal for c in cases) and any(c.dropout_p for c in cases) and any(c.head_mask for c in cases)


def test_extension_refuses_layouts_that_would_read_out_of_bounds(emulated_backend):
    """The memory-safety checks of the varlen binding (relattn_args.h, which the emulated extension calls too) name
    the argument."""
    q = torch.randn(7, 2, 32)
    table = torch.randn(9, 32)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)

    def call(q=q, k=q, cu_q=cu, cu_k=cu, max_q=4, head_mask=None):
        return emulated_backend.forward_varlen(
            q, k, k, table, head_mask, cu_q, cu_k, max_q, 4, 4, False, 0.2, 0.0, 0, 0, 0
        )

    call()  # the valid call runs
    with pytest.raises(RuntimeError, match="q must be 3-D"):
        call(q=q.unsqueeze(0))
    with pytest.raises(RuntimeError, match="k and v must be"):
        call(k=torch.randn(7, 3, 32))
    with pytest.raises(RuntimeError, match="cu_seqlens_q must be int32"):
        call(cu_q=cu.long())
    with pytest.raises(RuntimeError, match="cu_seqlens_k must be a contiguous int32 \\[B \\+ 1\\]"):
        call(cu_k=torch.tensor([0, 7], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="max_seqlen"):
        call(max_q=-1)
    with pytest.raises(RuntimeError, match="head_mask must be a contiguous float32"):
        call(head_mask=torch.ones(3, 2))
