"""Packaging: metadata lives in pyproject.toml; this file only adds the optional CUDA extension.

``pip install -e .`` never needs torch, nvcc or a GPU. With ``NEZHA_KERNELS_BUILD_CUDA=1`` (and
``pip install --no-build-isolation -e .`` so the installed torch is used) the CUDA kernels are built
ahead of time as ``nezha_kernels._cuda_aot``; otherwise they are JIT-built on first use of backend="cuda".
Archs for the AOT build: $TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0"), default the local GPU's.
"""

import os

from setuptools import setup

ext_modules, cmdclass = [], {}
if os.environ.get("NEZHA_KERNELS_BUILD_CUDA", "") == "1":
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    ext_modules.append(CUDAExtension(
        name="nezha_kernels._cuda_aot",
        sources=["csrc/binding.cpp", "csrc/relattn_fwd.cu", "csrc/relattn_bwd.cu"],
        include_dirs=[os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-std=c++17"]},
    ))
    cmdclass["build_ext"] = BuildExtension

setup(ext_modules=ext_modules, cmdclass=cmdclass)
