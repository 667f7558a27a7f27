"""The "triton" backend: fused flash-style relative attention (nezha_kernels/triton_kernels).

Runs on CUDA GPUs of compute capability >= 8.0 and, for testing, on CPU tensors under the
triton interpreter (TRITON_INTERPRET=1, read by triton when the kernels are imported). Calls go
through the one op (nezha_kernels/ops.py, impl "triton"); what it supports is its row of
nezha_kernels/capabilities.py (gradients to q, k and v only: calls whose table or head_mask
requires grad are refused by name and sent elsewhere by "auto").
"""

from __future__ import annotations

import torch

from ..inputs import AttentionInputs
from ..ops import run

NAME = "triton"
MIN_CAPABILITY = (8, 0)


def availability(device: torch.device) -> tuple[bool, str]:
    device = torch.device(device)
    try:
        import triton

        from ..triton_kernels.configs import interpreted
    except Exception as exc:  # triton missing or broken on this platform
        return False, f"triton cannot be imported: {type(exc).__name__}: {exc}"
    if interpreted():
        if device.type in ("cpu", "cuda"):
            return True, "interpreted (TRITON_INTERPRET=1)"
        return False, f"the triton interpreter takes cpu tensors, not {device.type}"
    if device.type == "cpu":
        return False, "cpu tensors need the triton interpreter (set TRITON_INTERPRET=1 before importing)"
    if device.type != "cuda":
        return False, f"no triton kernels for {device.type} tensors"
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return False, f"needs compute capability >= 8.0, device has {capability[0]}.{capability[1]}"
    return True, f"triton {triton.__version__}, sm_{capability[0]}{capability[1]}"


def forward(inputs: AttentionInputs) -> torch.Tensor:
    return run(inputs, "triton")


def forward_varlen(inputs) -> torch.Tensor:
    return run(inputs, "triton")
