"""What each backend can run: one table, read by dispatch, ``available_backends()`` and the README.

A backend asked for by name runs a call only when its row here supports it (else a ValueError says
why); ``backend="auto"`` takes the first available backend whose row supports the call. Availability
(is the backend usable on this device at all: triton importable, a GPU, the CUDA extension) is a
separate question, answered by each backend module's ``availability(device)``.
"""

from __future__ import annotations

import dataclasses

import torch

from .inputs import AttentionInputs

__all__ = ["Capability", "CAPABILITIES", "unsupported_reason", "markdown_table"]

_ANY_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_GPU_FLOAT = (torch.float16, torch.bfloat16, torch.float32)
_INT32_LIMIT = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Capability:
    """The calls one backend supports. ``None`` for a limit means: no limit of its own."""

    name: str
    devices: str  # for the README
    dtypes: tuple[torch.dtype, ...]
    head_dims: tuple[int, ...] | None = None  # exactly these, or any up to max_head_dim
    max_head_dim: int | None = None
    table_grad: bool = True  # gradient to a rel_table that requires grad
    head_mask_grad: bool = True  # gradient to a head_mask that requires grad
    varlen: bool = True  # relative_attention_varlen (cu_seqlens)
    max_batch_heads: int | None = None  # B * H
    max_rows: int | None = None  # longest Lq or Lk: grid programs per axis x the smallest tile's rows
    max_position: int | None = None  # largest position + 2R, for 32-bit index math
    note: str = ""

    def unsupported_reason(self, inputs: AttentionInputs) -> str | None:
        """Why this backend cannot run the call ``inputs`` (dense or padding-free), or None."""
        dtype, d = inputs.q.dtype, inputs.q.shape[-1]
        if dtype not in self.dtypes:
            return f"dtype {dtype} is not supported (takes {', '.join(_dtype_name(t) for t in self.dtypes)})"
        if self.head_dims is not None and d not in self.head_dims:
            return f"head dim {d} is not supported (one of {self.head_dims})"
        if self.max_head_dim is not None and d > self.max_head_dim:
            return f"head dim {d} exceeds the maximum {self.max_head_dim}"
        if inputs.table.requires_grad and not self.table_grad:
            return "rel_table requires grad, and this backend computes no table gradient"
        if inputs.head_mask is not None and inputs.head_mask.requires_grad and not self.head_mask_grad:
            return "head_mask requires grad, and this backend computes no head_mask gradient"
        if inputs.varlen and not self.varlen:
            return "padding-free (varlen) calls are not implemented by this backend"
        batch_heads, length = inputs.batch * inputs.heads, max(inputs.lengths)
        if self.max_batch_heads is not None and batch_heads > self.max_batch_heads:
            return f"B * H = {batch_heads} exceeds the kernels' grid limit ({self.max_batch_heads})"
        if self.max_rows is not None and length > self.max_rows:
            return f"length {length} exceeds the kernels' grid limit ({self.max_rows} rows)"
        if self.max_position is not None:
            if length + inputs.q_offset + 2 * inputs.max_relative_position > self.max_position:
                return "sequence positions exceed the kernels' 32-bit index range"
        return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


CAPABILITIES: dict[str, Capability] = {
    "reference": Capability(
        name="reference",
        devices="any",
        dtypes=_ANY_FLOAT,
        note="HF math with the materialized [Lq, Lk, D] table; the oracle, never fast",
    ),
    "torch": Capability(
        name="torch",
        devices="any",
        dtypes=_ANY_FLOAT,
        note="pure PyTorch, no [Lq, Lk, D] table, chunked: memory bounded",
    ),
    "triton": Capability(
        name="triton",
        devices="CUDA sm_80+ (CPU under TRITON_INTERPRET=1)",
        dtypes=_GPU_FLOAT,
        max_head_dim=256,
        table_grad=False,
        head_mask_grad=False,
        # Grid axis 1 (query / key blocks) is limited to 65535 programs of at least 16 rows.
        max_rows=65535 * 16,
        max_position=_INT32_LIMIT,
        note="fused flash-style kernels, fp32 accumulation",
    ),
    "cuda": Capability(
        name="cuda",
        devices="CUDA sm_80+",
        dtypes=_GPU_FLOAT,
        head_dims=(32, 64, 128),
        table_grad=False,
        head_mask_grad=False,
        max_batch_heads=65535,
        max_position=_INT32_LIMIT,
        note="hand-written CUDA C++: tensor-core (fp16/bf16) and SIMT kernels",
    ),
}


def unsupported_reason(name: str, inputs: AttentionInputs) -> str | None:
    """Why backend ``name`` cannot run ``inputs``, or None when its capability row supports the call."""
    return CAPABILITIES[name].unsupported_reason(inputs)


def markdown_table() -> str:
    """The README's backend table, generated from CAPABILITIES (a test keeps the README in step)."""
    yes_no = {True: "yes", False: "no"}
    lines = [
        "| backend | devices | dtypes | head dim | gradients | padding-free | limits |",
        "|---|---|---|---|---|---|---|",
    ]
    for cap in CAPABILITIES.values():
        if cap.head_dims is not None:
            head = ", ".join(map(str, cap.head_dims))
        elif cap.max_head_dim is not None:
            head = f"<= {cap.max_head_dim}"
        else:
            head = "any"
        grads = "q, k, v" + (", table" if cap.table_grad else "") + (", head_mask" if cap.head_mask_grad else "")
        limits = []
        if cap.max_batch_heads is not None:
            limits.append(f"B*H <= {cap.max_batch_heads}")
        if cap.max_rows is not None:
            limits.append(f"L <= {cap.max_rows}")
        if cap.max_position is not None:
            limits.append("positions < 2^31")
        lines.append(
            f"| `{cap.name}` | {cap.devices} | {', '.join(_dtype_name(t) for t in cap.dtypes)} | {head} | {grads} "
            f"| {yes_no[cap.varlen]} | {'; '.join(limits) or 'none'} |"
        )
    return "\n".join(lines)
