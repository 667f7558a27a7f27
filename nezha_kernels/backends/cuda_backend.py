"""The "cuda" backend: hand-written CUDA C++ kernels (csrc/) through a pybind11 extension.

Flash-style kernels with fp32 accumulation, forward and backward (dQ, dK, dV), band / far-field treatment
of the table, in two families: tensor-core kernels ("cuda-tc": mma.sync m16n8k16, fp16 / bf16, the default)
and SIMT kernels ("cuda-simt": every dtype; float32 always uses them). ``NEZHA_KERNELS_CUDA_IMPL=simt|tc``
picks the family for fp16 / bf16; ``impl_name`` is the one place that decides. Calls run through the one op
(nezha_kernels/ops.py) with the launchers of nezha_kernels/cuda_ext/launch.py; what the kernels cover is in
the capability table (nezha_kernels/capabilities.py). The extension is built ahead of time
(``NEZHA_KERNELS_BUILD_CUDA=1`` install, or ``nezha-kernels build``) or JIT-built on first use
(nezha_kernels/cuda_ext/build.py); a missing toolchain makes this backend unavailable with the reason, never
breaks the package.
"""

from __future__ import annotations

import os

import torch

NAME = "cuda"
IMPL_ENV = "NEZHA_KERNELS_CUDA_IMPL"
IMPLS = {"tc": "cuda-tc", "simt": "cuda-simt"}
MIN_CAPABILITY = (8, 0)  # shared-memory tiles need sm_80-class opt-in shared memory


def impl_name(dtype: torch.dtype) -> str:
    """The op implementation for ``dtype``: $NEZHA_KERNELS_CUDA_IMPL (tc|simt, default tc); float32 always
    "cuda-simt" (the tensor-core kernels take fp16 / bf16 only)."""
    family = os.environ.get(IMPL_ENV, "tc").strip().lower() or "tc"
    if family not in IMPLS:
        raise ValueError(f"{IMPL_ENV} must be one of {sorted(IMPLS)}, got {family!r}")
    return IMPLS["simt"] if dtype == torch.float32 else IMPLS[family]


def availability(device: torch.device) -> tuple[bool, str]:
    from ..cuda_ext import build

    if device.type != "cuda":
        return False, "needs a CUDA device"
    if not torch.cuda.is_available():
        return False, "torch has no usable CUDA device"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return False, f"needs compute capability >= 8.0, device has {capability[0]}.{capability[1]}"
    try:
        build.load_extension()
    except build.CudaBuildError as exc:
        return False, str(exc)
    return True, "CUDA C++ extension built and loaded"


def forward(inputs):
    from ..ops import run

    return run(inputs, impl_name(inputs.q.dtype))


def forward_varlen(inputs):
    from ..ops import run

    return run(inputs, impl_name(inputs.q.dtype))
