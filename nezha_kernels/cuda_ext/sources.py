"""The CUDA sources, listed once: used by setup.py (the ahead-of-time build and the package data), the JIT
build, the CPU emulator and the nvcc compile-check.

Imports nothing beyond the standard library: setup.py reads this file by path, without importing the package
(which needs torch). Paths are relative to the source directory (``source_dir()``).
"""

from __future__ import annotations

from pathlib import Path

# Kernel translation units: nvcc compiles each to an object; the binding calls their launchers.
KERNEL_SOURCES = ("relattn_fwd.cu", "relattn_bwd.cu", "relattn_fwd_tc.cu", "relattn_bwd_tc.cu", "relattn_bwd_fused.cu")
BINDING_SOURCE = "binding.cpp"
HEADERS = (
    "relattn.h",
    "relattn_args.h",
    "relattn_helpers.h",
    "relattn_tile.cuh",
    "relattn_mma.h",
    "relattn_tc.cuh",
    "relattn_async.cuh",
    "relattn_flash.h",
    "relattn_bwd_tc.cuh",
    "relattn_rotation.cuh",
)
# The extension: every file its build reads.
EXTENSION_FILES = (BINDING_SOURCE, *KERNEL_SOURCES, *HEADERS)
# The CPU emulator (g++): its translation units include the kernel sources.
EMU_SOURCES = (
    "emu/emu_api.cpp",
    "emu/emu_runtime.cpp",
    "emu/emu_selftest.cpp",
    *(f"emu/emu_kernels_{name}.cpp" for name in ("fwd", "fwd_tc", "bwd", "bwd_tc", "bwd_fused")),
)
EMU_HEADERS = ("emu/cuda_emu.h",)
EMULATOR_FILES = (*EMU_SOURCES, *EMU_HEADERS, *KERNEL_SOURCES, *HEADERS)
# What a non-editable install ships, under nezha_kernels/<PACKAGED_DIR>/.
PACKAGED_FILES = (*EXTENSION_FILES, *EMU_SOURCES, *EMU_HEADERS)
PACKAGED_DIR = "_csrc"

_HERE = Path(__file__).resolve().parent
CHECKOUT_DIR = _HERE.parents[1] / "csrc"  # a source checkout: <repo>/csrc
PACKAGE_DATA_DIR = _HERE.parent / PACKAGED_DIR  # an installed wheel: nezha_kernels/_csrc


def source_dir() -> Path:
    """Where the sources are: the checkout's csrc/ when this module runs from one, else the installed copy."""
    if (CHECKOUT_DIR / BINDING_SOURCE).is_file():
        return CHECKOUT_DIR
    return PACKAGE_DATA_DIR
