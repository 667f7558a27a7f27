"""Packaging: metadata lives in pyproject.toml; this file adds the CUDA sources as package data and the
optional ahead-of-time CUDA extension.

``pip install .`` never needs torch, nvcc or a GPU. A non-editable install (wheel) ships the CUDA sources
(nezha_kernels/cuda_ext/sources.py: PACKAGED_FILES) under nezha_kernels/_csrc, where the JIT build and the
CPU emulator find them; an editable install reads the checkout's csrc/. With ``NEZHA_KERNELS_BUILD_CUDA=1``
(and ``--no-build-isolation`` so the installed torch is used) the kernels are built ahead of time as
``nezha_kernels._cuda_aot``; otherwise they are JIT-built on first use of backend="cuda" (or by
``nezha-kernels build``). Archs for the AOT build: $TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0a"), default the local GPU's.
"""

import importlib.util
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _load_sources():
    """nezha_kernels/cuda_ext/sources.py, read by path: importing the package would need torch."""
    spec = importlib.util.spec_from_file_location("_nezha_cuda_sources", ROOT / "nezha_kernels/cuda_ext/sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCES = _load_sources()
# The AOT extension's translation units: the binding and every kernel source it calls.
AOT_SOURCES = [f"csrc/{name}" for name in (SOURCES.BINDING_SOURCE, *SOURCES.KERNEL_SOURCES)]


class build_py_with_csrc(build_py):
    """build_py that also copies the CUDA sources into the built package (nezha_kernels/_csrc)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout's csrc/
            return
        dest = Path(self.build_lib) / "nezha_kernels" / SOURCES.PACKAGED_DIR
        for name in SOURCES.PACKAGED_FILES:
            target = dest / name
            self.mkpath(str(target.parent))
            self.copy_file(str(ROOT / "csrc" / name), str(target))


def cuda_extension():
    from torch.utils.cpp_extension import CUDAExtension

    return CUDAExtension(
        name="nezha_kernels._cuda_aot",
        sources=AOT_SOURCES,
        depends=[f"csrc/{name}" for name in SOURCES.HEADERS],
        include_dirs=[str(ROOT / "csrc")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-std=c++17"]},
    )


if __name__ == "__main__":  # setuptools' build backend runs this file as __main__; tests read AOT_SOURCES
    ext_modules, cmdclass = [], {"build_py": build_py_with_csrc}
    if os.environ.get("NEZHA_KERNELS_BUILD_CUDA", "") == "1":
        from torch.utils.cpp_extension import BuildExtension

        ext_modules.append(cuda_extension())
        cmdclass["build_ext"] = BuildExtension
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
