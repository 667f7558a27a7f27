"""backend="cuda"'s kernels (csrc/) executed on the CPU by the CUDA emulator (csrc/emu/), against the float64
formula (tests/formula.py): forward output, row max and log row sum, dq / dk / dv, SIMT (fp32 / fp16 / bf16) and
tensor-core (fp16 / bf16) kernels, with every feature the kernels implement.

Each call goes through the CUDA launchers the op runs (nezha_kernels/cuda_ext/launch.py: layouts, mask / head_mask /
delta preparation) with the built extension swapped for the emulated one (nezha_kernels/cuda_ext/emulator.py).
Not marked gpu: needs only g++ (C++20).
Outputs are NaN-poisoned and unwritten shared memory reads as NaN, so a missed write fails the comparison.

A plain run also re-runs a few cases in a subprocess under AddressSanitizer (test_address_sanitizer_subset).
Run the whole file under AddressSanitizer + UBSan (or ThreadSanitizer: NEZHA_EMU_SANITIZE=thread, libtsan.so) with
    NEZHA_EMU_SANITIZE=address,undefined ASAN_OPTIONS=detect_leaks=0:log_path=/tmp/asan \\
    LD_PRELOAD=$(g++ -print-file-name=libasan.so):$(g++ -print-file-name=libubsan.so) python -m pytest <this file>
(reports go to /tmp/asan.<pid>).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import formula
import pytest
import torch
from tolerance import assert_all_within

import nezha_kernels as nk
from nezha_kernels.backends import cuda_backend
from nezha_kernels.cuda_ext import emulator, launch
from nezha_kernels.dropout import keep_mask
from nezha_kernels.inputs import prepare_inputs

pytestmark = pytest.mark.skipif(emulator.find_cxx() is None, reason="the CUDA emulator needs g++ (C++20)")
SANITIZED = bool(os.environ.get(emulator.SANITIZE_ENV))

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
FMIN = torch.finfo(torch.float32).min

# k per dtype and output (tests/tolerance.py): the kernels' error against the float64 formula is at most k times the
# error of the formula computed by PyTorch in the kernels' dtype, both from the same rounded inputs. Largest ratios
# over CASES when k was set (NEZHA_TOL_LOG): fp32 0.62 (one_key's dq: the floor), fp16 1.17, bf16 0.74.
K = {
    F32: dict(out=2.0, dq=2.0, dk=2.0, dv=2.0),
    F16: dict(out=2.0, dq=2.0, dk=2.0, dv=2.0),
    BF16: dict(out=2.0, dq=2.0, dk=2.0, dv=2.0),
}
STATS_TOL = dict(atol=1e-3, rtol=1e-5)  # the forward's fp32 row max and log row sum, from fp32 scores


@dataclasses.dataclass(frozen=True)
class Case:
    impl: str  # "simt" | "tc" (fp32 always runs SIMT)
    dtype: torch.dtype
    shape: tuple[int, int, int, int, int]  # B, H, Lq, Lk, D
    r: int
    causal: bool = False
    q_offset: int = 0
    padding: str | None = None  # "random" | "batch_all_masked" | "prefix" (batch 0's first 50 keys)
    additive: str | None = None  # "hf" ([B, 1, 1, Lk]: finfo.min, an all-masked batch, -inf) | "dense" [1, H, Lq, Lk]
    dropout_p: float = 0.0
    head_mask: str | None = None  # "random" | "zero_head" (one head's weights all 0)
    layout: str = "contiguous"  # | "fused" (views of [B, L, 3, H, D]) | "padded" (rows of [B, H, L, D + 3])
    table: str = "nezha"  # | "random"
    scale: float | None = None


CASES = {
    "simt_fp32_odd_lengths": Case("simt", F32, (2, 2, 37, 45, 32), 8),
    "simt_fp16_causal_q_offset_custom_table": Case(
        "simt", F16, (1, 2, 37, 45, 64), 3, causal=True, q_offset=8, table="random", scale=0.37
    ),
    "simt_bf16_fully_padded_batch": Case("simt", BF16, (3, 1, 37, 45, 32), 8, padding="batch_all_masked"),
    "simt_fp32_d128_additive_hf": Case("simt", F32, (2, 2, 33, 41, 128), 5, additive="hf"),
    "simt_fp16_dropout_head_mask": Case("simt", F16, (2, 2, 37, 45, 32), 8, dropout_p=0.3, head_mask="random"),
    "simt_fp32_fused_qkv_views": Case("simt", F32, (2, 2, 40, 40, 64), 4, layout="fused"),
    "simt_fp32_far_field_padding": Case("simt", F32, (1, 1, 200, 200, 32), 8, padding="random"),
    "simt_bf16_large_r": Case("simt", BF16, (1, 2, 50, 60, 32), 64),
    "simt_fp32_causal_skip": Case("simt", F32, (1, 1, 130, 200, 32), 6, causal=True),
    "simt_fp16_causal_lq_above_lk": Case("simt", F16, (1, 1, 70, 17, 64), 3, causal=True),
    "simt_fp32_one_key": Case("simt", F32, (1, 2, 45, 1, 32), 2),
    "simt_fp32_causal_fully_masked_rows": Case("simt", F32, (2, 1, 40, 200, 32), 6, causal=True, padding="prefix"),
    "tc_fp16_odd_lengths": Case("tc", F16, (2, 2, 37, 45, 32), 8),
    "tc_bf16_causal_q_offset_custom_table": Case(
        "tc", BF16, (1, 2, 37, 45, 64), 3, causal=True, q_offset=8, table="random", scale=0.37
    ),
    "tc_fp16_d128_fully_padded_batch": Case("tc", F16, (3, 1, 37, 45, 128), 8, padding="batch_all_masked"),
    "tc_bf16_additive_dense_broadcast": Case("tc", BF16, (2, 2, 33, 41, 64), 5, additive="dense"),
    "tc_fp16_additive_hf": Case("tc", F16, (3, 1, 33, 41, 32), 5, additive="hf"),
    "tc_bf16_dropout_head_mask": Case("tc", BF16, (2, 2, 37, 45, 32), 8, dropout_p=0.3, head_mask="random"),
    "tc_fp16_r1_zero_head": Case("tc", F16, (2, 2, 37, 45, 32), 1, head_mask="zero_head"),
    "tc_fp16_decode_one_query": Case("tc", F16, (2, 2, 1, 77, 64), 8, causal=True, q_offset=76, padding="random"),
    "tc_fp16_fused_qkv_views": Case("tc", F16, (2, 2, 40, 40, 32), 4, layout="fused"),
    "tc_fp16_unaligned_rows": Case("tc", F16, (1, 2, 37, 45, 64), 4, layout="padded"),
    "tc_fp16_far_field_padding": Case("tc", F16, (1, 1, 200, 200, 64), 8, padding="random"),
    "tc_fp16_large_r": Case("tc", F16, (1, 2, 50, 60, 64), 64),
    "tc_bf16_causal_skip": Case("tc", BF16, (1, 1, 130, 200, 32), 6, causal=True),
    "tc_fp16_causal_fully_masked_rows": Case("tc", F16, (2, 1, 40, 200, 32), 6, causal=True, padding="prefix"),
}


@pytest.fixture(scope="module")
def emulated_backend():
    """The launchers on the emulated kernels."""
    with emulator.emulated_cuda_backend() as ext:
        yield ext


def _qkv(case: Case, g: torch.Generator):
    """q, k, v as the layout of ``case`` gives them: contiguous, or strided views."""
    b, h, lq, lk, d = case.shape
    if case.layout == "fused":  # q, k, v as views of one [B, L, 3, H, D] projection (Lq == Lk)
        assert lq == lk
        fused = torch.randn(b, lq, 3, h, d, generator=g).to(case.dtype)
        return [fused[:, :, i].permute(0, 2, 1, 3) for i in range(3)]
    if case.layout == "padded":  # rows of stride D + 3 starting one element in: no 16-byte vector loads
        return [torch.randn(b, h, n, d + 3, generator=g).to(case.dtype)[..., 1 : d + 1] for n in (lq, lk, lk)]
    return [torch.randn(b, h, n, d, generator=g).to(case.dtype) for n in (lq, lk, lk)]


def launcher_tail(inputs) -> tuple:
    """The launchers' arguments after the tensors (key_padding ... seed) for a dense AttentionInputs."""
    lq, lk = inputs.q.shape[2], inputs.k.shape[2]
    return (
        inputs.key_padding,
        inputs.additive_mask,
        inputs.head_mask,
        None,
        None,
        lq,
        lk,
        inputs.max_relative_position,
        inputs.causal,
        inputs.q_offset,
        inputs.scale,
        inputs.dropout_p,
        int(inputs.dropout_seed or 0),
    )


def _op_kwargs(case: Case, g: torch.Generator) -> dict:
    b, h, lq, lk, d = case.shape
    kw = dict(max_relative_position=case.r, causal=case.causal, q_offset=case.q_offset, scale=case.scale)
    if case.table == "random":
        kw["rel_table"] = torch.randn(2 * case.r + 1, d, generator=g).to(case.dtype)
    if case.padding is not None:
        pad = torch.rand(b, lk, generator=g) > 0.3
        pad[:, 0] = True
        if case.padding == "batch_all_masked":
            pad[1] = False  # batch 1 attends uniformly to every key
        elif case.padding == "prefix":
            pad[0, :50] = False  # with causal, batch 0's first rows see no key at all: no causal skip for them
        kw["attention_mask"] = pad
    if case.additive == "hf":
        hf = torch.zeros(b, 1, 1, lk)
        hf[0, ..., lk // 2 :] = FMIN
        hf[-1, ..., min(3, lk - 1)] = float("-inf")
        if b > 2:
            hf[1] = FMIN  # every key masked: uniform weights
        kw["attention_mask"] = hf
    elif case.additive == "dense":
        kw["attention_mask"] = torch.randn(1, h, lq, lk, generator=g)  # broadcast over the batch
    if case.dropout_p > 0.0:
        kw["dropout_p"] = case.dropout_p
        kw["generator"] = torch.Generator().manual_seed(11)
    if case.head_mask is not None:
        hm = torch.rand(b, h, generator=g)
        if case.head_mask == "zero_head":
            hm[0, 1] = 0.0
        kw["head_mask"] = hm.to(case.dtype)
    return kw


def _oracle_row_stats(q, k, table, r, scale, key_padding, additive, causal, q_offset):
    """float64 [2, B, H, Lq]: row max and log of sum exp(s - max) of the masked scores (finfo.min, as formula.py)."""
    lq, lk = q.shape[2], k.shape[2]
    i = torch.arange(lq).view(-1, 1) + q_offset
    j = torch.arange(lk).view(1, -1)
    a = table[(j - i).clamp(-r, r) + r]
    s = (torch.einsum("bhid,bhjd->bhij", q, k) + torch.einsum("bhid,ijd->bhij", q, a)) * scale
    if additive is not None:
        s = s + additive.double()
    masked = torch.zeros(1, 1, lq, lk, dtype=torch.bool)
    if key_padding is not None:
        masked = masked | ~key_padding.view(-1, 1, 1, lk)
    if causal:
        masked = masked | (j > i)
    s = torch.where(masked, torch.full_like(s, FMIN), s).clamp(min=FMIN)
    m = s.amax(dim=-1)
    return torch.stack([m, (s - m.unsqueeze(-1)).exp().sum(-1).log()])


def _expected(q, k, v, table, grad_out, dtype, **raw):
    """The formula in float64 and in ``dtype`` on the raw arguments: ({out, dq, dk, dv} float64, the same in dtype)."""
    results = []
    for precision in (torch.float64, dtype):
        leaves = [t.detach().to(precision).requires_grad_() for t in (q, k, v)]
        out = formula.attention(*leaves, table, dtype=precision, **raw)
        grads = torch.autograd.grad(out, leaves, grad_out.to(precision))
        results.append({"out": out.detach(), **{f"d{n}": g for n, g in zip("qkv", grads, strict=True)}})
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_emulated_kernels_match_formula(name, emulated_backend):
    case = CASES[name]
    b, h, lq, lk, d = case.shape
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    q, k, v = _qkv(case, g)
    kwargs = _op_kwargs(case, g)
    inputs = prepare_inputs(q, k, v, **kwargs)
    tail = launcher_tail(inputs)

    out, lse = launch.relattn_fwd(q, k, v, inputs.table, *tail, family=case.impl)
    grad_out = torch.randn(b, h, lq, d, generator=g).to(case.dtype)
    grads = launch.relattn_bwd(grad_out, q, k, v, inputs.table, out, lse, *tail, family=case.impl)

    # The oracle reads the arguments as the user passed them (raw masks and head_mask), not the launchers' forms;
    # the dropout seed is the launchers' argument, and the default table is tests/test_table.py's subject.
    keep = None
    if case.dropout_p > 0.0:
        keep = keep_mask(inputs.dropout_seed, case.dropout_p, b, h, torch.arange(lq), lk, torch.device("cpu"))
    raw = dict(
        r=case.r,
        attention_mask=kwargs.get("attention_mask"),
        causal=case.causal,
        q_offset=case.q_offset,
        scale=case.scale,
        keep=keep,
        dropout_p=case.dropout_p,
        head_mask=kwargs.get("head_mask"),
    )
    table = kwargs.get("rel_table", inputs.table)
    expected, same_precision = _expected(q, k, v, table, grad_out, case.dtype, **raw)
    key_padding, additive = formula.split_mask(kwargs.get("attention_mask"))
    expected_stats = _oracle_row_stats(
        q.double(),
        k.double(),
        table.double(),
        case.r,
        d**-0.5 if case.scale is None else case.scale,
        key_padding,
        additive,
        case.causal,
        case.q_offset,
    )

    assert out.dtype == case.dtype and torch.isfinite(out).all()
    torch.testing.assert_close(lse.double(), expected_stats, **STATS_TOL, msg=lambda m: f"row max / log sum: {m}")
    got = {"out": out, **{f"d{n}": t for n, t in zip("qkv", grads, strict=True)}}
    for gname, t in got.items():
        assert t.dtype == case.dtype and torch.isfinite(t).all(), f"{gname} has non-finite entries"
    assert_all_within(got, expected, same_precision, K[case.dtype])


@pytest.mark.parametrize("dtype, family", [(F32, "simt"), (F16, "tc"), (BF16, "tc")])
def test_impl_name_picks_the_family_the_cases_run(dtype, family, monkeypatch):
    monkeypatch.delenv(cuda_backend.IMPL_ENV, raising=False)
    assert cuda_backend.impl_name(dtype) == f"cuda-{family}"


def test_backend_is_available_for_cpu_tensors_only_while_emulated(emulated_backend):
    ok, reason = cuda_backend.availability(torch.device("cpu"))
    assert ok and "emulator" in reason
    with launch.use_extension(None):  # as outside emulated_cuda_backend()
        ok, reason = cuda_backend.availability(torch.device("cpu"))
        assert not ok and "CUDA device" in reason


@pytest.mark.parametrize("impl, dtype", [("simt", F32), ("tc", BF16)])
def test_public_op_runs_backend_cuda_on_the_emulator(impl, dtype, emulated_backend, monkeypatch):
    """relative_attention(..., backend="cuda") on CPU tensors: dispatch, the one op, its autograd, the launchers."""
    monkeypatch.setenv(cuda_backend.IMPL_ENV, impl)
    g = torch.Generator().manual_seed(21)
    q, k, v = (torch.randn(2, 2, n, 32, generator=g).to(dtype).requires_grad_() for n in (23, 30, 30))
    pad = torch.rand(2, 30, generator=g) > 0.3
    pad[:, 0] = True
    kwargs = dict(max_relative_position=5, attention_mask=pad, causal=True, q_offset=7)
    out = nk.relative_attention(q, k, v, backend="cuda", **kwargs)
    grad_out = torch.randn(out.shape, generator=g).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    table = prepare_inputs(q, k, v, **kwargs).table
    expected, same_precision = _expected(
        q, k, v, table, grad_out, dtype, r=5, attention_mask=pad, causal=True, q_offset=7
    )
    got = {"out": out, **{f"d{n}": t for n, t in zip("qkv", grads, strict=True)}}
    assert_all_within(got, expected, same_precision, K[dtype])


@pytest.mark.parametrize("family", ["simt", "tc"])
def test_launchers_restore_the_callers_current_device(family, emulated_backend):
    """The launch makes the tensors' device current and gives the caller's current device back (the emulator has
    two devices; the launches target device 0 while the caller's current device is 1)."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, n, 32, generator=g).to(F16) for n in (17, 20, 20))
    args = (
        q,
        k,
        v,
        torch.randn(7, 32, generator=g).to(F16),
        None,
        None,
        None,
        None,
        None,
        17,
        20,
        3,
        False,
        0,
        0.2,
        0.0,
        0,
    )
    want_out, want_lse = launch.relattn_fwd(*args, family=family)
    grad_out = torch.randn(q.shape, generator=g).to(F16)
    want_grads = launch.relattn_bwd(grad_out, *args[:4], want_out, want_lse, *args[4:], family=family)
    assert emulated_backend.device == 0 and emulated_backend.current_device() == 0
    emulated_backend.set_current_device(1)
    try:
        out, lse = launch.relattn_fwd(*args, family=family)
        assert emulated_backend.current_device() == 1, "the forward launch left its device current"
        grads = launch.relattn_bwd(grad_out, *args[:4], out, lse, *args[4:], family=family)
        assert emulated_backend.current_device() == 1, "the backward launches left their device current"
    finally:
        emulated_backend.set_current_device(0)
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
    assert all(torch.equal(a, b) for a, b in zip(grads, want_grads, strict=True))


def test_every_feature_and_family_is_covered():
    cases = CASES.values()
    for impl, dtypes in (("simt", {F32, F16, BF16}), ("tc", {F16, BF16})):
        assert {c.dtype for c in cases if c.impl == impl} == dtypes
        assert {c.shape[4] for c in cases if c.impl == impl} == {32, 64, 128}


# ---- the emulator itself ----


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
def test_emulated_conversions_round_like_torch(dtype):
    g = torch.Generator().manual_seed(3)
    info = torch.finfo(dtype)
    x = torch.cat(
        [
            torch.randn(4000, generator=g) * 10.0 ** torch.randint(-9, 6, (4000,), generator=g),
            torch.tensor(
                [
                    0.0,
                    -0.0,
                    info.max,
                    -info.max,
                    info.tiny,
                    info.tiny / 4,
                    float("inf"),
                    float("-inf"),
                    65520.0,
                    65519.99,
                    2.0**-25,
                    2.0**-25 * 1.0001,
                    2.0**-24 * 1.5,
                    2.0**-24 * 2.5,
                    1 + 2.0**-11,
                    1 + 3 * 2.0**-11,
                    1 + 2.0**-8,
                    1 + 3 * 2.0**-8,
                ]
            ),
        ]
    )
    # Exact ties between neighbouring representable values: round to even.
    ulp_grid = x.to(dtype).float()
    ties = (ulp_grid[:-1] + ulp_grid[1:]) / 2
    x = torch.cat([x, ties])
    got = emulator.emulated_extension().round_to(x, dtype)
    torch.testing.assert_close(got, x.to(dtype).float(), atol=0, rtol=0, equal_nan=True)
    assert torch.isnan(emulator.emulated_extension().round_to(torch.tensor([float("nan")]), dtype)).all()


@pytest.mark.parametrize(
    "name, dtype", [("mma_f16", F16), ("mma_bf16", BF16), ("mma_f16_kmajor", F16), ("mma_bf16_kmajor", BF16)]
)
def test_kernel_fragment_loaders_agree_with_emulated_mma(name, dtype):
    """One m16n8k16 through the kernels' loaders (relattn_mma.h) and the emulator's PTX layout = A @ B."""
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(16, 16, generator=g), torch.randn(16, 8, generator=g)
    err, out = emulator.run_selftest(name, a, b)
    assert err is None
    want = a.to(dtype).double() @ b.to(dtype).double()
    torch.testing.assert_close(out.view(16, 8).double(), want, atol=1e-5, rtol=1e-5)


def test_emulator_runs_correct_barriers_and_shuffles():
    err, out = emulator.run_selftest("block_sum")
    assert err is None
    assert out[0].item() == sum(range(128)) and out[1].item() == 1.0


@pytest.mark.parametrize(
    "name, message",
    [
        ("early_exit", "thread 5 (warp 0, lane 5) exited while"),
        ("divergent_barrier", "divergent block barrier"),
        ("deadlock", "deadlock: every live thread waits"),
        ("partial_mask", "member mask 65535"),
        ("smem_limit", "above the kernel's limit of 49152"),
    ],
)
def test_emulator_reports_barrier_bugs_instead_of_hanging(name, message):
    err, _ = emulator.run_selftest(name)
    assert err is not None and message in err, err


def test_emulator_watchdog_fails_a_barrier_that_does_not_complete(monkeypatch):
    monkeypatch.setenv("NEZHA_EMU_WATCHDOG_S", "0.4")  # one thread arrives 1.5 s late
    err, _ = emulator.run_selftest("slow_thread")
    assert err is not None and "did not complete within the watchdog time" in err, err
    assert "thread 7 running" in err and "threads 0-6 waiting at __syncthreads" in err, err


def test_unwritten_shared_memory_reads_nan():
    err, out = emulator.run_selftest("smem_poison", out_numel=32)
    assert err is None
    assert out[1].item() == 2.0 and torch.isnan(out[0]) and torch.isnan(out[2:]).all()


def _fwd_args(**overrides):
    """The extension's forward arguments for q = k = v (impl 0, SIMT), with ``overrides`` by name."""
    q = overrides.get("q", torch.randn(1, 1, 8, 32))
    args = dict(
        q=q,
        k=q,
        v=q,
        table=torch.randn(9, 32),
        key_padding=None,
        additive_mask=None,
        head_mask=None,
        R=4,
        q_offset=0,
        causal=False,
        scale=0.1,
        dropout_p=0.0,
        seed=0,
        stream=0,
        impl=0,
    )
    return {**args, **overrides}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(q=torch.randn(1, 1, 8, 48), table=torch.randn(9, 48)), "head dim must be 32, 64 or 128"),
        (dict(q=torch.randn(1, 1, 32, 8).transpose(2, 3)), "q must have unit stride on the head dim"),
        (dict(q=torch.randn(8, 32)), "q must be 4-D"),
        (dict(q=torch.randn(1, 1, 8, 32).double()), "q must be float16, bfloat16 or float32, got an unsupported"),
        (dict(v=torch.randn(1, 1, 9, 32)), "k and v must be [B, H, Lk, D]"),
        (dict(table=torch.randn(32, 9).t()), "rel_table must be a contiguous [2R+1, D] = [9, 32]"),
        (dict(R=3), "rel_table must be a contiguous [2R+1, D] = [7, 32]"),
        (dict(table=torch.randn(9, 32).half()), "rel_table must be float32, got float16"),
        (dict(key_padding=torch.ones(1, 7, dtype=torch.bool)), "key_padding must be bool [B, Lk], got shape [1, 7]"),
        (dict(key_padding=torch.ones(1, 8)), "key_padding must be bool, got float32"),
        (dict(additive_mask=torch.zeros(1, 1, 1, 8)), "additive_mask must be a float32 view of shape [B, H, Lq, Lk]"),
        (dict(head_mask=torch.ones(2, 1).t()), "head_mask must be a contiguous float32 [B, H]"),
        (dict(q_offset=2**31), "32-bit index range"),
        (dict(impl=2), "impl must be 0 (simt) or 1 (tc)"),
        (dict(impl=1), "tensor-core kernels take float16 / bfloat16"),  # the family is chosen in Python, not here
    ],
)
def test_emulated_extension_checks_arguments_with_the_bindings_code(overrides, message):
    """The emulated extension runs csrc/relattn_args.h, the binding's argument handling: each memory-safety check
    gives a RuntimeError naming the argument (on the device the binding expects CUDA tensors)."""
    ext = emulator.emulated_extension()
    with pytest.raises(RuntimeError) as info:
        ext.forward(*_fwd_args(**overrides).values())
    assert message in str(info.value), str(info.value)


def test_emulated_extension_checks_the_backward_and_grid_limits():
    ext = emulator.emulated_extension()
    q, table = torch.randn(1, 1, 8, 32), torch.randn(9, 32)
    out, lse = ext.forward(*_fwd_args(q=q, table=table).values())
    delta = torch.zeros(1, 1, 8)
    tail = (None, None, None)
    scalars = (4, 0, False, 0.1, 0.0, 0, 0, 0)
    with pytest.raises(RuntimeError, match="dout must be contiguous with q's shape"):
        ext.backward(out.transpose(2, 3).contiguous().transpose(2, 3), q, q, q, table, *tail, lse, delta, *scalars)
    with pytest.raises(RuntimeError, match=r"lse must be contiguous float32 \[2, B, H, Lq\]"):
        ext.backward(out, q, q, q, table, *tail, lse[:1], delta, *scalars)
    with pytest.raises(RuntimeError, match="delta must be float32"):
        ext.backward(out, q, q, q, table, *tail, lse, delta.double(), *scalars)
    wide = torch.randn(256, 256, 1, 32)  # B * H = 65536: past grid axis y
    with pytest.raises(RuntimeError, match="grid"):
        ext.forward(*_fwd_args(q=wide).values())


# Cases re-run under AddressSanitizer in CI: both families, the largest shared-memory layouts (D = 128), the
# element-wise staging path, one query, one key, dropout; plus the mma self-test.
ASAN_CASES = (
    "simt_fp32_d128_additive_hf",
    "tc_fp16_d128_fully_padded_batch",
    "tc_fp16_unaligned_rows",
    "tc_fp16_decode_one_query",
    "simt_fp32_one_key",
    "tc_bf16_dropout_head_mask",
)


@pytest.mark.slow
@pytest.mark.skipif(SANITIZED, reason="already running under a sanitizer")
def test_address_sanitizer_subset(tmp_path):
    """Out-of-bounds global or shared memory accesses of the kernels abort the subprocess with a report."""
    try:
        runtime = emulator.sanitizer_runtime("address")
    except emulator.EmulatorBuildError as exc:
        pytest.skip(f"no AddressSanitizer runtime: {exc}")
    here = Path(__file__).resolve()
    preload = ":".join(p for p in (runtime, os.environ.get("LD_PRELOAD")) if p)
    env = {
        **os.environ,
        emulator.SANITIZE_ENV: "address",
        "LD_PRELOAD": preload,
        "ASAN_OPTIONS": f"detect_leaks=0:log_path={tmp_path / 'asan'}",
    }
    tests = [f"{here}::test_emulated_kernels_match_formula[{name}]" for name in ASAN_CASES]
    tests.append(f"{here}::test_kernel_fragment_loaders_agree_with_emulated_mma")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=here.parent.parent)
    reports = "".join(p.read_text() for p in sorted(tmp_path.glob("asan*")))
    assert result.returncode == 0 and not reports, result.stdout[-4000:] + result.stderr[-2000:] + reports[-8000:]
    assert f"{len(ASAN_CASES) + 4} passed" in result.stdout
