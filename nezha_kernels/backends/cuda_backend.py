"""The "cuda" backend: hand-written CUDA C++ kernels (csrc/) through a pybind11 extension.

Flash-style kernels with fp32 accumulation, forward and backward (dQ, dK, dV), band / far-field treatment
of the table, in two families: tensor-core kernels (mma.sync m16n8k16, fp16 / bf16, the default) and SIMT
kernels (every dtype; float32 always uses them). ``NEZHA_KERNELS_CUDA_IMPL=simt|tc`` picks the family for
fp16 / bf16 (see nezha_kernels/cuda_ext/function.py). The extension is JIT-built on first use (see
nezha_kernels/cuda_ext/build.py); a missing toolchain makes this backend unavailable with the reason,
never breaks the package. Inputs the kernels do not cover are refused by ``unsupported_reason``.
"""

from __future__ import annotations

import functools

import torch

from ..inputs import AttentionInputs

NAME = "cuda"
HEAD_DIMS = (32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_CAPABILITY = (8, 0)  # shared-memory tiles need sm_80-class opt-in shared memory


@functools.lru_cache(maxsize=1)
def _extension_status() -> tuple[bool, str]:
    from ..cuda_ext.build import CudaBuildError, load_extension

    try:
        load_extension()
    except CudaBuildError as exc:
        return False, str(exc)
    except Exception as exc:  # an optional backend must never break the package
        return False, f"loading the CUDA extension failed: {type(exc).__name__}: {exc}"
    return True, "CUDA C++ extension built and loaded"


def availability(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, "needs a CUDA device"
    if not torch.cuda.is_available():
        return False, "torch has no usable CUDA device"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return False, f"needs compute capability >= 8.0, device has {capability[0]}.{capability[1]}"
    return _extension_status()


def unsupported_reason(inputs: AttentionInputs) -> str | None:
    b, h, lq, lk, d = inputs.shape
    if inputs.q.dtype not in DTYPES:
        return f"dtype {inputs.q.dtype} is not supported (float16, bfloat16, float32)"
    if d not in HEAD_DIMS:
        return f"head dim {d} is not supported (one of {HEAD_DIMS})"
    if inputs.table_requires_grad:
        return "rel_table requires grad: the CUDA kernels compute no table gradient"
    if inputs.head_mask is not None and inputs.head_mask.requires_grad:
        return "head_mask requires grad: the CUDA kernels compute no head_mask gradient"
    if b * h >= 65536:
        return f"B * H = {b * h} exceeds the kernels' grid limit (65535)"
    if max(lq, lk) + inputs.q_offset + 2 * inputs.max_relative_position >= 2**31 - 1:
        return "sequence positions exceed the kernels' 32-bit index range"
    return None


def forward(inputs: AttentionInputs) -> torch.Tensor:
    from ..cuda_ext.function import relative_attention_cuda

    return relative_attention_cuda(inputs)
