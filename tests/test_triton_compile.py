"""Ahead-of-time compilation of the Triton kernels for sm_80 and sm_90 (no GPU needed)."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from nezha_kernels.compile_check import triton_aot  # noqa: E402


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
    row = triton_aot._compile(job)
    assert row.status == "error" and "shared memory" in row.message


def _spilling(rows, keep):
    return [f"{r.kernel} {r.config} sm_{r.arch}: {r.spill_bytes} B" for r in rows
            if "D=64" in r.config and r.spill_bytes and keep(r)]


def test_main_d64_half_precision_configs_do_not_spill(rows):
    # fp16 and bf16, every kernel, plain and every feature on: the configs training runs use.
    half = [r for r in rows if "D=64" in r.config and not r.config.startswith("fp32")]
    assert {"fwd", "bwd_dkdv", "bwd_dq"} <= {r.kernel for r in half}
    assert any(r.config.startswith("bf16") for r in half)
    spilling = _spilling(rows, lambda r: not r.config.startswith("fp32"))
    assert not spilling, "\n".join(spilling)


@pytest.mark.xfail(reason="known, unfinished: fp32 (ieee FMA dots) fwd spills 8 B on sm_90 and dQ ~650 B; "
                          "see benchmarks/NOTES_triton.md", strict=False)
def test_main_d64_fp32_configs_do_not_spill(rows):
    spilling = _spilling(rows, lambda r: r.config.startswith("fp32"))
    assert not spilling, "\n".join(spilling)
