"""The CUDA backend's availability is cheap and never builds; the build happens on first use (said on stderr)
or ahead of time (`nezha-kernels build`); a broken ahead-of-time build is reported, not replaced by a JIT build.

No GPU needed: a fake sm_90 device, and every compile step replaced by one that fails the test.
"""

from __future__ import annotations

import pytest
import torch
import torch.utils.cpp_extension

from nezha_kernels.backends import cuda_backend
from nezha_kernels.cuda_ext import build

NVCC = "/opt/cuda/bin/nvcc"


def _no_build(*args, **kwargs):
    raise AssertionError("this path must not build the extension")


def _fake_sm90(monkeypatch, cache_dir):
    """An sm_90 GPU as the backend sees it, an empty build cache, no AOT build, nvcc and ninja present."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setenv(build.BUILD_DIR_ENV, str(cache_dir))
    monkeypatch.setattr(build, "_status", {})
    monkeypatch.setattr(build, "_failure", {})
    monkeypatch.setattr(build, "_aot_spec", lambda: None)
    monkeypatch.setattr(build, "find_nvcc", lambda: NVCC)
    monkeypatch.setattr(torch.utils.cpp_extension, "is_ninja_available", lambda: True)


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """_fake_sm90 with every compile step failing the test."""
    _fake_sm90(monkeypatch, tmp_path)
    for name in ("build_extension", "_compile_kernels", "_compile_binding"):
        monkeypatch.setattr(build, name, _no_build)


def test_availability_never_builds_and_says_it_will_jit(fake_gpu):
    ok, reason = cuda_backend.availability(torch.device("cuda"))
    assert ok and "JIT-builds" in reason and "sm_90" in reason and "nezha-kernels build" in reason


@pytest.mark.parametrize("missing, message", [("nvcc", "needs nvcc"), ("ninja", "needs ninja")])
def test_availability_without_toolchain_says_what_is_missing(fake_gpu, monkeypatch, missing, message):
    if missing == "nvcc":
        monkeypatch.setattr(build, "find_nvcc", lambda: None)
    else:
        monkeypatch.setattr(torch.utils.cpp_extension, "is_ninja_available", lambda: False)
    ok, reason = cuda_backend.availability(torch.device("cuda"))
    assert not ok and message in reason


def test_availability_finds_a_cached_build_of_the_current_sources(fake_gpu, monkeypatch):
    monkeypatch.setattr(build, "find_nvcc", lambda: None)  # a cached build needs no toolchain
    out_dir = build.jit_build_dir((80, 90))
    out_dir.mkdir(parents=True)
    (out_dir / f"nezha_kernels_{out_dir.name}.so").write_bytes(b"")
    ok, reason = cuda_backend.availability(torch.device("cuda"))
    assert ok and "cached JIT build" in reason and str(out_dir) in reason
    assert build.cached_build(90) == build.cached_build(80) == out_dir / f"nezha_kernels_{out_dir.name}.so"
    assert build.cached_build(86) is None


def test_broken_aot_build_is_reported_not_replaced_by_a_jit_build(fake_gpu, monkeypatch):
    def broken_import():
        raise ImportError("_cuda_aot.so: undefined symbol: _ZN5nezha14relattn_fwd_tcERKNS_8AttnArgsE")

    monkeypatch.setattr(build, "_aot_spec", lambda: object())
    monkeypatch.setattr(build, "_import_aot", broken_import)
    ok, reason = cuda_backend.availability(torch.device("cuda"))
    assert not ok and "_cuda_aot" in reason and "undefined symbol" in reason
    with pytest.raises(build.CudaBuildError, match="undefined symbol"):
        build.load_extension.__wrapped__(90)  # uncached; a JIT build attempt would fail the test


def test_first_use_build_says_so_on_stderr(monkeypatch, tmp_path, capsys):
    _fake_sm90(monkeypatch, tmp_path)  # the real build_extension, its two compile steps stubbed
    monkeypatch.setattr(build, "_compile_kernels", lambda nvcc, archs, out_dir: [])
    monkeypatch.setattr(build, "_compile_binding", lambda objects, out_dir, nvcc, verbose: "module")
    assert build.load_extension.__wrapped__(90) == "module"
    err = capsys.readouterr().err
    assert "building the CUDA extension for sm_90" in err and "nezha-kernels build" in err


def test_build_command_passes_the_archs(monkeypatch, tmp_path, capsys):
    from nezha_kernels import cli

    calls = []
    monkeypatch.setattr(build, "build_extension", lambda archs, build_dir, verbose: calls.append((archs, build_dir)))
    assert cli.main(["build", "--archs", "9.0;8.0", "--build-dir", str(tmp_path)]) == 0
    assert calls == [((80, 90), str(tmp_path))]
    assert "sm_80, sm_90" in capsys.readouterr().out
    assert cli.main(["build", "--archs", "ninety"]) == 2
    assert build.parse_archs("sm_80 sm_90a") == (80, 90)
