"""The "triton" backend: fused flash-style relative attention (nezha_kernels/triton_kernels).

Runs on CUDA GPUs of compute capability >= 8.0 and, for testing, on CPU tensors under the
triton interpreter (TRITON_INTERPRET=1, read by triton when the kernels are imported). Gradients
flow to q, k and v; a call whose rel_table or head_mask requires grad goes to the torch backend
(with a one-time warning), which has those gradients.
"""

from __future__ import annotations

import os
import warnings

import torch

from ..inputs import AttentionInputs

NAME = "triton"
MIN_CAPABILITY = (8, 0)
MAX_HEAD_DIM = 256
_warned_fallback = False


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def availability(device: torch.device) -> tuple[bool, str]:
    device = torch.device(device)
    try:
        import triton
    except Exception as exc:  # triton missing or broken on this platform
        return False, f"triton cannot be imported: {type(exc).__name__}: {exc}"
    if _interpreted():
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


def unsupported_reason(inputs: AttentionInputs) -> str | None:
    if inputs.q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the triton kernels take float16, bfloat16 or float32, got {inputs.q.dtype}"
    if inputs.q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {inputs.q.shape[-1]} > {MAX_HEAD_DIM}"
    return None


def _needs_torch_fallback(inputs: AttentionInputs) -> bool:
    return inputs.table.requires_grad or (inputs.head_mask is not None and inputs.head_mask.requires_grad)


def forward(inputs: AttentionInputs) -> torch.Tensor:
    if _needs_torch_fallback(inputs):
        global _warned_fallback
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(
                "triton backend: rel_table or head_mask requires grad, which the triton kernels do not "
                "compute; this call (and later ones like it) runs on the torch backend",
                stacklevel=3,
            )
        from . import torch_chunked

        return torch_chunked.forward(inputs)
    from ..triton_kernels.function import relative_attention_triton

    return relative_attention_triton(inputs)
