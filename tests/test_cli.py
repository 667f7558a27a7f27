"""The command line's messages: `check` on a device that is not there, `compile-check`'s help, progress
and table (which configs are main, which are autotune candidates, what spills mean). No compiling: the
compile components are stand-ins or fed canned ptxas logs."""

from __future__ import annotations

import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from nezha_kernels import compile_check
from nezha_kernels.cli import main
from nezha_kernels.compile_check import CompileRow, config_role, format_table, summary

REPO = Path(__file__).resolve().parent.parent
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")


# --- check ---------------------------------------------------------------------------------------------


@no_cuda
def test_check_on_missing_cuda_is_a_clean_error(capsys):
    assert main(["check", "--device", "cuda"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("nezha-kernels check: --device cuda: no CUDA device is available")
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "meta"])
def test_check_rejects_unknown_devices(capsys, device):
    assert main(["check", "--device", device]) == 2
    err = capsys.readouterr().err
    assert f"got {device!r}" in err and "expected cpu or cuda[:N]" in err and "Traceback" not in err


@no_cuda
@pytest.mark.slow
def test_check_console_command_prints_no_traceback():
    """The real entry point in a fresh interpreter, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "nezha_kernels", "check", "--device", "cuda"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no CUDA device is available" in proc.stderr and "Traceback" not in proc.stderr


def test_check_compares_banded_cases_on_cpu(monkeypatch):
    """The small cases run the reference's own math on a CPU (0.00e+00 everywhere); the banded cases (past the
    torch backend's materialized size) compare two computations, so their errors are small but not zero."""
    from nezha_kernels import check
    from nezha_kernels.backends.torch_backend.dense import MATERIALIZE_ELEMENTS

    banded = [case for case in check.CASES if case[3] * case[4] * case[5] > MATERIALIZE_ELEMENTS]
    assert len(banded) >= 1
    monkeypatch.setattr(check, "CASES", banded)
    rows = [r for r in check.run_checks("cpu") if r.backend == "torch"]
    assert [r.case for r in rows] == [case[0] for case in banded]
    for r in rows:
        assert r.ok and 0 < r.fwd_err <= 1e-5 and 0 < r.grad_err <= 1e-5, r


class _ClosedPipe:
    """stdout whose reader has gone (`| head`): the first line is taken, the next write fails."""

    def __init__(self):
        self.lines = []

    def write(self, text):
        if self.lines:
            raise BrokenPipeError(32, "Broken pipe")
        self.lines.append(text)
        return len(text)

    def flush(self):
        pass


def test_info_into_a_closed_pipe_stops_quietly(monkeypatch, capsys):
    pipe = _ClosedPipe()
    monkeypatch.setattr(sys, "stdout", pipe)
    assert main(["info"]) == 141  # as `yes | head`: 128 + SIGPIPE
    assert pipe.lines[0].startswith("nezha_kernels ")
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="a shell pipe")
def test_info_piped_to_head_prints_no_traceback():
    proc = subprocess.run(
        ["bash", "-c", f"PYTHONUNBUFFERED=1 {sys.executable} -m nezha_kernels info | head -2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.splitlines()[0].startswith("nezha_kernels ") and len(proc.stdout.splitlines()) == 2
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


# --- compile-check: help, roles, table -------------------------------------------------------------------


def test_compile_check_help_is_for_users(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compile-check", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "run(archs)" not in text and "CompileRow" not in text
    for words in ("without a GPU", "--arch", "--only", "cold cache", "Exit status", "main:", "candidate:", "spill B"):
        assert words in text, words


def _triton_row(kernel, dtype, d, tile, arch=80, spill=0, variant="all-features"):
    bm, bn, warps, stages = tile
    return CompileRow(
        "triton",
        kernel,
        f"{dtype} D={d} {bm}x{bn} w{warps} s{stages} {variant}",
        arch,
        "ok",
        registers=128,
        shared_bytes=32768,
        spill_bytes=spill,
    )


def test_config_roles_follow_the_tile_tables():
    """Per configs.py: the first tile of each list is the main one; D > 64 runs WIDE_HEAD_TILES first."""
    from nezha_kernels.triton_kernels import configs

    fwd_main, fwd_other = configs.FWD_TILES[0], configs.FWD_TILES[1]
    assert config_role(_triton_row("fwd", "fp16", 64, fwd_main)) == "main"
    assert config_role(_triton_row("fwd", "bf16", 64, fwd_main, variant="plain")) == "main"
    assert config_role(_triton_row("fwd", "fp16", 64, fwd_other)) == "candidate"
    # dK/dV: the general loop's tile with every feature, the far loops' tile in the common case (sm_90).
    assert config_role(_triton_row("bwd_dkdv", "fp16", 64, configs.DKDV_GENERAL)) == "main"
    assert config_role(_triton_row("bwd_dkdv", "fp16", 64, configs.DKDV_FAR_SM90)) == "candidate"
    assert config_role(_triton_row("bwd_dkdv", "fp16", 64, configs.DKDV_FAR_SM90, 90, variant="plain")) == "main"
    wide = configs.WIDE_HEAD_TILES[("bwd_dq", 2)]
    assert config_role(_triton_row("bwd_dq", "fp16", 128, wide)) == "main"
    assert config_role(_triton_row("bwd_dq", "fp16", 64, wide)) == "candidate"  # not the D=64 main tile
    assert config_role(CompileRow("triton", "bwd_delta", "fp16 D=64 64 rows", 90, "ok")) == "single"
    assert config_role(CompileRow("cuda", "relattn_fwd_kernel", "fp32 D=64", 90, "ok")) == "single"


def test_table_marks_roles_and_explains_spills():
    from nezha_kernels.triton_kernels import configs

    rows = [
        _triton_row("fwd", "fp16", 64, configs.FWD_TILES[0]),
        _triton_row("fwd", "fp16", 64, configs.FWD_TILES[1], spill=80),
        _triton_row("bwd_dq", "fp16", 64, configs.DQ_TILES[0], spill=16),
        CompileRow("cuda", "relattn_fwd_kernel", "fp32 D=64", 90, "error", 255, 40000, 24, "register spills: 24 bytes"),
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == [
        "component",
        "kernel",
        "config",
        "arch",
        "role",
        "status",
        "regs",
        "smem",
        "B",
        "spill",
        "B",
        "message",
    ]
    main_line, candidate_line, main_spill_line, cuda_line = lines[2:]
    assert " main " in main_line and "spills" not in main_line
    assert " candidate " in candidate_line and candidate_line.endswith("spills (autotune candidate)")
    assert main_spill_line.endswith("spills (main config)")
    assert " single " in cuda_line and cuda_line.endswith("register spills: 24 bytes")
    assert summary(rows) == "3 ok, 1 failed; 1 main config(s) and 1 autotune candidate(s) spill"


# --- compile-check: progress ----------------------------------------------------------------------------


def _stand_in(monkeypatch, name, run):
    module = types.ModuleType(f"nezha_test_component_{name}")
    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(compile_check, "COMPONENTS", {name: module.__name__})


def test_silent_component_gets_a_heartbeat(monkeypatch, capsys):
    """A component with no progress hook (a cold triton cache: minutes) still shows it is alive."""

    def run(archs):
        time.sleep(0.6)
        return [CompileRow("slow", "k", "c", a, "ok") for a in archs]

    _stand_in(monkeypatch, "slow", run)
    monkeypatch.setattr(compile_check, "HEARTBEAT_S", 0.2)
    assert compile_check.main(["--arch", "80"]) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert err[0] == "compile-check: slow kernels for sm_80 ..."
    assert any("slow: still compiling" in line for line in err[1:-1])
    assert err[-1].startswith("  slow: 1 rows in")
    assert "1 ok, 0 failed" in captured.out and "spill B  bytes per thread" in captured.out


def test_component_progress_hook_and_errors(monkeypatch, capsys):
    def run(archs, progress=None):
        rows = [CompileRow("fast", "k", "c", 80, "ok"), CompileRow("fast", "bad", "c", 90, "error", message="boom")]
        for row in rows:
            if progress is not None:
                progress(row)
        return rows

    _stand_in(monkeypatch, "fast", run)
    assert compile_check.main([]) == 1
    captured = capsys.readouterr()
    assert "  fast: 2 done" in captured.err and "bad c sm_90: error" in captured.err  # errors at once
    assert "1 ok, 1 failed" in captured.out
    assert compile_check.main(["--quiet"]) == 1
    assert capsys.readouterr().err == ""


def test_nvcc_component_reports_rows_as_they_finish(monkeypatch):
    from nezha_kernels.compile_check import nvcc

    def fake_compile(_nvcc, source, arch, _out_dir, _bf16=True):
        log = (
            f"ptxas info    : Compiling entry function '_ZN5nezha18relattn_fwd_kernelI6__halfLi64EEEvNS_8AttnArgs'"
            f" for 'sm_{arch}'\nptxas info    : Used 90 registers, used 1 barriers, 256 bytes smem\n"
        )
        return source, arch, 0, log

    monkeypatch.setattr(nvcc, "find_nvcc", lambda: "nvcc")
    monkeypatch.setattr(nvcc, "_compile", fake_compile)
    seen = []
    rows = nvcc.run((80, 90), progress=seen.append)
    assert seen == rows and len(rows) == 2 * len(nvcc.KERNEL_SOURCES)
    assert {r.arch for r in rows} == {80, 90} and all(r.ok for r in rows)
