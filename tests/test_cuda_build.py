"""CUDA backend checks that need no GPU: nvcc compile of every kernel for sm_80 / sm_90, the binding's
JIT build and import on CPU torch (with its CPU-tensor error), the C++ helper unit tests, dispatch.

The first extension build takes ~1 min on 2 cores; it is cached (keyed by the sources) in a temp dir. Every test that
runs nvcc is marked slow (the compile check of every kernel alone printed nothing for ~25 min on a cold cache), so the
quick subset (-m "not slow") never compiles CUDA.
"""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from nezha_kernels import relative_attention
from nezha_kernels.backends import cuda_backend
from nezha_kernels.cuda_ext import sources
from nezha_kernels.cuda_ext.build import CSRC, CudaBuildError, build_extension, find_nvcc, object_cache_path
from nezha_kernels.dropout import philox_uniform

needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="nvcc not found")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
BUILD_DIR = os.environ.get("NEZHA_KERNELS_BUILD_DIR", os.path.join(tempfile.gettempdir(), "nezha_kernels_test_build"))
KERNELS = {"relattn_fwd_kernel", "relattn_bwd_dq_kernel", "relattn_bwd_dkdv_kernel"}
TC_KERNELS = {"relattn_fwd_tc_kernel", "relattn_bwd_dq_tc_kernel", "relattn_bwd_dkdv_tc_kernel"}
FUSED_KERNEL, CONVERT_KERNEL = "relattn_bwd_fused_tc_kernel", "relattn_bwd_dq_convert_kernel"


@pytest.mark.slow  # nvcc over every kernel, config and arch: ~7 min on 2 cores with a cold cache
@needs_nvcc
def test_nvcc_compile_check_every_kernel_sm80_sm90():
    """Every instantiation on sm_90a; on sm_80 the tensor-core kernels but bf16 (CI's time: bf16 is fp16's code but
    for conversions, the SIMT kernels at most 148 registers on either arch; `nezha-kernels compile-check` checks
    everything everywhere)."""
    from nezha_kernels.compile_check import nvcc

    rows = nvcc.run((80, 90), bf16_archs=(90,), simt_archs=(90,))
    bad = [r for r in rows if not r.ok]
    assert not bad, "\n".join(f"{r.kernel} {r.config} sm_{r.arch}: {r.message}" for r in bad)
    seen = {(r.kernel, r.config, r.arch) for r in rows}
    expected = {
        (k, f"{dt} D={d}", arch)
        for k in KERNELS
        for dt in ("fp16", "bf16", "fp32")
        for d in (32, 64, 128)
        for arch in (80, 90)
    }
    expected |= {
        (k, f"{dt} D={d}", arch)
        for k in TC_KERNELS
        for dt in ("fp16", "bf16")
        for d in (32, 64, 128)
        for arch in (80, 90)
    }
    # The tensor-core kernels also have their GENERAL feature set (masks, causal, dropout; csrc/relattn_flash.h).
    expected |= {(f"{k}_general", config, arch) for k, config, arch in expected if k in TC_KERNELS}
    # The fused backward (relattn_bwd_fused.cu) for D = 32 and 64 only (csrc/relattn.h fused_bwd_head_dim), both
    # feature sets.
    expected |= {
        (f"{FUSED_KERNEL}{features}", f"{dt} D={d}", arch)
        for features in ("", "_general")
        for dt in ("fp16", "bf16")
        for d in (32, 64)
        for arch in (80, 90)
    }
    # The forward's rotation feature set (PLAIN, the band from the sinusoid's rotation identity; relattn_rotation.cuh
    # rotation_kernel): head dims 32 and 64, dense and padding-free.
    expected |= {
        (f"{k}_rotation", config, arch)
        for k, config, arch in expected
        if k == "relattn_fwd_tc_kernel" and not config.endswith("D=128")
    }
    # Every kernel also has its padding-free (PACKED) instantiation, reported as <kernel>_varlen.
    expected |= {(f"{k}_varlen", config, arch) for k, config, arch in expected}
    # The fused backward's dq conversion: one per dtype and head dim, no layout or feature set, no shared memory.
    expected |= {
        (CONVERT_KERNEL, f"{dt} D={d}", arch) for dt in ("fp16", "bf16") for d in (32, 64) for arch in (80, 90)
    }
    simt = KERNELS | {f"{k}_varlen" for k in KERNELS}
    narrowed = {(k, c, a) for k, c, a in expected if a == 80 and (c.startswith("bf16") or k in simt)}
    assert seen == expected - narrowed
    for r in rows:
        assert r.spill_bytes == 0 and 0 < r.registers <= 255
        assert (r.kernel == CONVERT_KERNEL or 0 < r.shared_bytes) and r.shared_bytes <= 163 * 1024


@pytest.mark.slow
@needs_nvcc
def test_tc_kernels_emit_tensor_core_sass():
    """The TC sources really run on tensor cores: HMMA.16816 with fp32 accumulators for f16 and bf16 in the sm_90a SASS.

    Reads the object the compile check above compiled and cached (the JIT build reuses it too); compiles it when the
    test runs alone. A separate nvcc -ptx of the source took 51 s of CI for the same question.
    """
    from nezha_kernels.compile_check import nvcc as nvcc_check
    from nezha_kernels.compile_check.profile_analyze import tool

    nvcc, source = find_nvcc(), "relattn_fwd_tc.cu"
    obj = object_cache_path(nvcc, source, (90,))
    if not obj.exists():
        with tempfile.TemporaryDirectory() as tmp:
            _, _, rc, log = nvcc_check._compile(nvcc, source, 90, tmp)
        assert rc == 0, log[-2000:]
    try:
        cuobjdump = tool("cuobjdump")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    sass = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True, check=True).stdout
    opcodes = set(re.findall(r"HMMA\.16816\.F32(?:\.BF16)?\b", sass))
    assert opcodes == {"HMMA.16816.F32", "HMMA.16816.F32.BF16"}, opcodes


def test_tc_smem_formulas_fit_every_arch():
    from nezha_kernels.compile_check.nvcc import dynamic_smem_bytes

    for k in (*TC_KERNELS, FUSED_KERNEL):
        sizes = [dynamic_smem_bytes(k, d) for d in (32, 64, 128)]
        assert sizes == sorted(sizes) and sizes[-1] <= 163 * 1024, (k, sizes)
    # fused D = 64: the dK dV kernel's tiles plus dS^T (64 keys x 32 queries, 16-bit, swizzled: no padding); the band
    # bucket aliases the fp32 projections.
    assert dynamic_smem_bytes(FUSED_KERNEL, 64) == dynamic_smem_bytes("relattn_bwd_dkdv_tc_kernel", 64) + 2 * 64 * 32
    # and still 2 blocks per SM on sm_80 (164 KiB of shared memory per SM, 1 KiB reserved per block).
    assert 2 * (dynamic_smem_bytes(FUSED_KERNEL, 64) + 1024) <= 164 * 1024
    # fwd D=128: Q (64 rows), two pipeline stages of K and V (64 rows each) + 128 table rows at stride 136 halves
    # + 4 warps x 16 x 84 floats.
    assert dynamic_smem_bytes("relattn_fwd_tc_kernel", 128) == 2 * (64 * 5 + 128) * 136 + 4 * 4 * 16 * 84
    # fwd D=64, 128-row blocks: Q (128 rows), K and V stages, 128 - 16 + 80 table rows at stride 72, the scratch;
    # the GENERAL padding-free kernel keeps 64-row blocks (fwd_row_tiles), the other layouts / feature sets 128.
    assert dynamic_smem_bytes("relattn_fwd_tc_kernel", 64) == 2 * (128 + 256 + 192) * 72 + 4 * 4 * 16 * 84
    for name in ("relattn_fwd_tc_kernel_varlen", "relattn_fwd_tc_kernel_general"):
        assert dynamic_smem_bytes(name, 64) == dynamic_smem_bytes("relattn_fwd_tc_kernel", 64)
    assert dynamic_smem_bytes("relattn_fwd_tc_kernel_general_varlen", 64) == 2 * (64 * 5 + 128) * 72 + 4 * 4 * 16 * 84
    # rotation: Q, K / V stages, 8 edge rows, two S stages, Q_rot, 4 edge terms and 8 parked row statistics per
    # thread and row tile; no table slice, no scratch. 128-row blocks (D = 32 and 64; D = 128 has no rotation kernel).
    for name in ("relattn_fwd_tc_kernel_rotation", "relattn_fwd_tc_kernel_rotation_varlen"):
        assert dynamic_smem_bytes(name, 64) == 2 * (128 + 256 + 8 + 128 + 128) * 72 + 4 * 12 * 2 * 128
        assert dynamic_smem_bytes(name, 32) == 2 * (128 + 256 + 8 + 128 + 128) * 40 + 4 * 12 * 2 * 128


def test_impl_switch_env(monkeypatch):
    monkeypatch.delenv(cuda_backend.IMPL_ENV, raising=False)
    assert cuda_backend.impl_name(torch.float16) == "cuda-tc" and cuda_backend.impl_name(torch.bfloat16) == "cuda-tc"
    assert cuda_backend.impl_name(torch.float32) == "cuda-simt"  # fp32 has no tensor-core kernels
    monkeypatch.setenv(cuda_backend.IMPL_ENV, "simt")
    assert {cuda_backend.impl_name(dt) for dt in (torch.float16, torch.bfloat16)} == {"cuda-simt"}
    monkeypatch.setenv(cuda_backend.IMPL_ENV, "TC")
    assert cuda_backend.impl_name(torch.bfloat16) == "cuda-tc"
    assert cuda_backend.impl_name(torch.float32) == "cuda-simt"
    monkeypatch.setenv(cuda_backend.IMPL_ENV, "wmma")
    with pytest.raises(ValueError, match=cuda_backend.IMPL_ENV):
        cuda_backend.impl_name(torch.float16)


def test_parse_ptxas_reads_registers_spills_and_names():
    from nezha_kernels.compile_check.nvcc import parse_ptxas

    log = (
        "ptxas info    : Compiling entry function '_ZN5nezha18relattn_fwd_kernelI6__halfLi64EEEvNS_8AttnArgsEPT_Pf'"
        " for 'sm_90a'\n"
        "ptxas info    : Function properties for _Z...\n"
        "    16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads\n"
        "ptxas info    : Used 90 registers, used 1 barriers, 256 bytes smem\n"
    )
    (row,) = parse_ptxas(log)
    assert row == {
        "kernel": "relattn_fwd_kernel",
        "dtype": "fp16",
        "head_dim": 64,
        "arch": 90,
        "registers": 90,
        "spill_bytes": 16,
        "static_smem": 256,
    }
    # The tensor-core forward's feature set (4th template parameter) and layout name the row.
    (row,) = parse_ptxas(
        "ptxas info    : Compiling entry function "
        "'_ZN5nezha21relattn_fwd_tc_kernelI13__nv_bfloat16Li128ELb1ELi1EEEvNS_8AttnArgsEPT_Pf' for 'sm_80'\n"
        "ptxas info    : Used 200 registers, used 1 barriers\n"
    )
    assert (row["kernel"], row["dtype"], row["head_dim"], row["registers"]) == (
        "relattn_fwd_tc_kernel_general_varlen",
        "bf16",
        128,
        200,
    )
    # The forward's rotation feature set (FEATURES_ROTATION = 2, csrc/relattn_rotation.cuh).
    (row,) = parse_ptxas(
        "ptxas info    : Compiling entry function "
        "'_ZN5nezha21relattn_fwd_tc_kernelI6__halfLi64ELb0ELi2EEEvNS_8AttnArgsEPT_Pf' for 'sm_90a'\n"
        "ptxas info    : Used 214 registers, used 1 barriers\n"
    )
    assert (row["kernel"], row["dtype"], row["head_dim"]) == ("relattn_fwd_tc_kernel_rotation", "fp16", 64)


@pytest.fixture(scope="module")
def extension():
    if find_nvcc() is None:
        pytest.skip("nvcc not found")
    return build_extension(archs=(90,), build_dir=BUILD_DIR)  # the arch whose every object the compile check cached


def _call_args(q, table, r):
    return (q, q, q, table, None, None, None, r, 0, False, 0.125, 0.0, 0, 0)  # ... seed, stream (impl follows)


@pytest.mark.slow  # the extension fixture builds every kernel with nvcc
def test_binding_builds_imports_and_rejects_cpu_tensors(extension):
    assert callable(extension.forward) and callable(extension.backward)
    q = torch.randn(1, 2, 9, 64, dtype=torch.float16)
    table = torch.randn(9, 64, dtype=torch.float16)
    for impl in (0, 1):  # both kernel families go through the same checks
        with pytest.raises(RuntimeError, match="q must be a CUDA tensor"):
            extension.forward(*_call_args(q, table, 4), impl)
    with pytest.raises(RuntimeError, match="q must be a CUDA tensor"):
        extension.backward(
            q,
            *_call_args(q, table, 4)[:7],
            torch.zeros(1, 2, 9),
            torch.zeros(1, 2, 9),
            4,
            0,
            False,
            0.125,
            0.0,
            0,
            0,
            1,
        )


@pytest.mark.slow  # the extension fixture builds every kernel with nvcc
def test_binding_links_every_kernel_symbol(extension):
    """The built module (binding + every listed kernel object) leaves no nezha:: symbol undefined."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    undefined = subprocess.run(
        [nm, "-D", "--undefined-only", extension.__file__], capture_output=True, text=True, check=True
    ).stdout
    assert "5nezha" not in undefined, [line for line in undefined.splitlines() if "5nezha" in line]


def _local_includes(path: Path) -> set[str]:
    """csrc-relative paths of the files ``path`` includes with #include "..."."""
    found = set()
    for line in path.read_text().splitlines():
        match = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
        if match:
            found.add(os.path.relpath(os.path.normpath(path.parent / match.group(1)), CSRC))
    return found


def test_source_lists_are_complete():
    """One list for setup.py, the JIT build, the emulator and compile-check: every csrc file the builds read."""
    on_disk = {str(p.relative_to(CSRC)) for p in CSRC.rglob("*") if p.is_file() and p.parts[-2] != "tests"}
    assert set(sources.PACKAGED_FILES) == on_disk
    for files, allowed_outside in ((sources.EXTENSION_FILES, {"emu/cuda_emu.h"}), (sources.EMULATOR_FILES, set())):
        included = set().union(*(_local_includes(CSRC / name) for name in files))
        # relattn_tile.cuh includes the emulator header only under NEZHA_CUDA_EMULATE.
        assert included - allowed_outside <= set(files), included - set(files)


def test_aot_build_compiles_every_listed_source():
    """setup.py's ahead-of-time extension is the binding and every kernel source (before: not the *_tc.cu)."""
    setup_globals = runpy.run_path(str(Path(__file__).resolve().parents[1] / "setup.py"), run_name="nezha_setup")
    want = [f"csrc/{sources.BINDING_SOURCE}", *(f"csrc/{name}" for name in sources.KERNEL_SOURCES)]
    assert setup_globals["AOT_SOURCES"] == want
    assert {"relattn_fwd_tc.cu", "relattn_bwd_tc.cu", "relattn_bwd_fused.cu"} <= set(sources.KERNEL_SOURCES)


def test_build_without_nvcc_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr("nezha_kernels.cuda_ext.build.find_nvcc", lambda: None)
    with pytest.raises(CudaBuildError, match="needs nvcc"):
        build_extension(build_dir=tmp_path)


def test_backend_refuses_cpu_tensors():
    q = torch.randn(2, 3, 11, 64)
    ok, reason = cuda_backend.availability(torch.device("cpu"))
    assert not ok and "CUDA device" in reason
    with pytest.raises(ValueError, match="backend 'cuda' is unavailable"):
        relative_attention(q, q, q, backend="cuda")


@pytest.fixture(scope="module")
def helper_binary(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    exe = tmp_path_factory.mktemp("helpers") / "test_helpers"
    subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-O1",
            "-Wall",
            "-Werror",
            f"-I{CSRC}",
            str(CSRC / "tests" / "test_helpers.cpp"),
            "-o",
            str(exe),
        ],
        check=True,
    )
    return exe


def test_cpp_helper_unit_tests_pass(helper_binary):
    proc = subprocess.run([str(helper_binary)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok:")


@pytest.mark.parametrize("seed, bh", [(0, 0), (2**63 - 25, 5), (0x1234_5678_9ABC_DEF, 77)])
def test_cpp_philox_matches_python_dropout_spec(helper_binary, seed, bh):
    rows, keys = 13, 17
    proc = subprocess.run(
        [str(helper_binary), "philox", str(seed), str(bh), str(rows), str(keys)],
        capture_output=True,
        text=True,
        check=True,
    )
    got = torch.tensor([float(x) for x in proc.stdout.split()], dtype=torch.float32).view(rows, keys)
    want = philox_uniform(seed, torch.arange(keys).view(1, -1), torch.arange(rows).view(-1, 1), torch.tensor(bh))
    assert torch.equal(got, want)
