"""Ahead-of-time compilation of the Triton kernels for sm_80 and sm_90 (no GPU needed)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("triton")

from nezha_kernels.compile_check import config_role, triton_aot  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return triton_aot.run((80, 90), grid="main")


def test_every_kernel_compiles_within_shared_memory(rows):
    kernels = {r.kernel for r in rows}
    assert kernels == {"fwd", "bwd_dkdv", "bwd_dq", "bwd_delta"}
    assert {r.arch for r in rows} == {80, 90}
    failed = [f"{r.kernel} {r.config} sm_{r.arch}: {r.message}" for r in rows if not r.ok]
    assert not failed, "\n".join(failed)
    for r in rows:
        assert r.registers is not None and 0 < r.registers <= 255
        assert 0 <= r.shared_bytes <= triton_aot.SHARED_LIMIT[r.arch]


def test_aot_flags_shared_memory_over_the_limit(monkeypatch):
    # The check must turn "compiled but too much shared memory" into an error row, not "ok".
    monkeypatch.setitem(triton_aot.SHARED_LIMIT, 90, 1024)
    job = next(j for j in triton_aot._jobs((90,), "main") if j[0] == "fwd" and "plain" in j[2])
    (row,) = triton_aot.run(jobs=[job])
    assert row.status == "error" and "shared memory" in row.message


def test_compile_check_leaves_the_environment_alone(monkeypatch):
    # It used to pop TRITON_INTERPRET (and set TRITON_DEFAULT_FP_FUSION) in this process: an interpreting
    # process lost its mode for every later kernel import. Workers compile real kernels all the same.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("TRITON_DEFAULT_FP_FUSION", raising=False)
    before = dict(os.environ)
    job = next(j for j in triton_aot._jobs((80,), "main") if j[0] == "bwd_delta")
    (row,) = triton_aot.run(jobs=[job])
    assert dict(os.environ) == before
    assert row.ok and row.registers, row.message


def _spilling(rows, keep):
    return [
        f"{r.kernel} {r.config} sm_{r.arch}: {r.spill_bytes} B"
        for r in rows
        if "D=64" in r.config and r.spill_bytes and keep(r)
    ]


def test_main_d64_half_precision_configs_do_not_spill(rows):
    # fp16 and bf16, every kernel, plain and every feature on: the configs training runs use.
    half = [r for r in rows if "D=64" in r.config and not r.config.startswith("fp32")]
    assert {"fwd", "bwd_dkdv", "bwd_dq"} <= {r.kernel for r in half}
    assert any(r.config.startswith("bf16") for r in half)
    spilling = _spilling(rows, lambda r: not r.config.startswith("fp32"))
    assert not spilling, "\n".join(spilling)


def test_main_d64_fp32_configs_do_not_spill(rows):
    # fp32 runs exact ("ieee") FMA dots, the path the 1e-5 parity tolerance needs: every kernel's
    # main fp32 config must be spill-free too (kernels chunk K of the FMA dots and keep the band
    # prologue/epilogue as runtime loops, see band.dot_nt and benchmarks/NOTES.md (Triton section)).
    fp32 = [r for r in rows if "D=64" in r.config and r.config.startswith("fp32")]
    assert {r.kernel for r in fp32} == {"fwd", "bwd_dkdv", "bwd_dq"}
    assert {r.arch for r in fp32} == {80, 90}
    spilling = _spilling(rows, lambda r: r.config.startswith("fp32"))
    assert not spilling, "\n".join(spilling)


def test_fp32_d128_forward_does_not_spill(rows):
    d128 = [r for r in rows if r.config.startswith("fp32 D=128")]
    assert {(r.kernel, r.arch) for r in d128} == {("fwd", 80), ("fwd", 90)}
    spilling = [f"{r.kernel} {r.config} sm_{r.arch}: {r.spill_bytes} B" for r in d128 if r.spill_bytes]
    assert not spilling, "\n".join(spilling)


def test_d128_half_precision_backward_does_not_spill(rows):
    # Head dim 128 training: dK/dV and dQ run their wide-head tiles (configs.WIDE_HEAD_TILES), spill-free.
    d128 = [r for r in rows if r.config.startswith("fp16 D=128") and not r.config.endswith(" varlen")]
    assert {(r.kernel, r.arch) for r in d128} == {(k, a) for k in ("bwd_dkdv", "bwd_dq") for a in (80, 90)}
    spilling = [f"{r.kernel} {r.config} sm_{r.arch}: {r.spill_bytes} B" for r in d128 if r.spill_bytes]
    assert not spilling, "\n".join(spilling)
    # Without per-pair features sm_90 runs wgmma far-loop tiles there (configs.wide_head_far_loops): spill-free too.
    wgmma = [r for r in rows if r.config.startswith("bf16 D=128") and r.config.endswith(" plain")]
    assert {(r.kernel, r.arch) for r in wgmma} == {("bwd_dkdv", 90), ("bwd_dq", 90)}
    assert {config_role(r) for r in wgmma} == {"main"}
    spilling = [f"{r.kernel} {r.config} sm_{r.arch}: {r.spill_bytes} B" for r in wgmma if r.spill_bytes]
    assert not spilling, "\n".join(spilling)


def test_varlen_main_configs_compile_without_spills(rows):
    # The padding-free kernels (VARLEN: cu_seqlens, head_mask, causal, dropout) on each kernel's main tile, D = 64
    # and 128, bf16 on sm_90 and fp16 on sm_80: spill-free like their dense twins (benchmarks/NOTES.md, Triton
    # padding-free kernels).
    varlen = [r for r in rows if r.config.endswith(" varlen")]
    assert {(r.kernel, r.config.split()[0], r.config.split()[1], r.arch) for r in varlen} == {
        (k, "bf16" if a == 90 else "fp16", f"D={d}", a)
        for k in ("fwd", "bwd_dkdv", "bwd_dq")
        for d in (64, 128)
        for a in (80, 90)
    }
    assert {config_role(r) for r in varlen} == {"main"}
    spilling = [f"{r.kernel} {r.config} sm_{r.arch}: {r.spill_bytes} B" for r in varlen if r.spill_bytes]
    assert not spilling, "\n".join(spilling)


def test_sinusoid_rows_cover_every_rotation_kernel(rows):
    # NEZHA's own table (rel_table=None): the band by rotation where configs.rotation_band runs it (sm_90), in the
    # forward, dQ and dK/dV; dK/dV in exactly the forward's variants (it rebuilds P from the forward's statistics).
    # Spill-free like every D = 64 half-precision row (above).
    sinusoid = [r for r in rows if r.config.endswith(triton_aot.SINUSOID_SUFFIX)]
    assert {(r.kernel, r.arch) for r in sinusoid} == {(k, 90) for k in ("fwd", "bwd_dq", "bwd_dkdv")}
    variants = {k: {r.config.split()[-1] for r in sinusoid if r.kernel == k} for k in ("fwd", "bwd_dkdv")}
    assert variants["bwd_dkdv"] == variants["fwd"]
    spilling = [f"{r.kernel} {r.config} sm_{r.arch}: {r.spill_bytes} B" for r in sinusoid if r.spill_bytes]
    assert not spilling, "\n".join(spilling)
