"""The Triton plain twin as a benchmark provider: our flash skeleton with every relative term compiled out.

The twin (launch.relattn_fwd / relattn_bwd with relative=False) computes exact softmax attention. Timed beside the
relative kernel it shows what the relative terms cost (same skeleton, same tiles); timed beside SDPA's flash kernel
it shows how good the skeleton itself is. It is called through the launchers directly (no custom op, no argument
validation), so at the shortest lengths its times leave out a few microseconds of Python the other providers pay.
"""

from __future__ import annotations

import inspect
import math

import torch

__all__ = ["plain_twin_attention", "twin_built"]


def twin_built() -> bool:
    """Whether the installed Triton launchers have the twin (a ``relative`` switch): true since the flash skeleton was
    re-landed (benchmarks/NOTES.md, "Triton flash skeleton, re-landed"); false on an older install."""
    from ..triton_kernels import launch

    return "relative" in inspect.signature(launch.relattn_fwd).parameters


def _args(q: torch.Tensor, k: torch.Tensor) -> tuple:
    """The launcher's arguments after (q, k, v, table): no masks, no varlen, R = 0, non-causal, no dropout."""
    lq, lk = q.shape[2], k.shape[2]
    return (None, None, None, None, None, lq, lk, 0, False, 0, 1.0 / math.sqrt(q.shape[-1]), 0.0, 0)


class _PlainTwin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        from ..triton_kernels import launch

        table = q.new_zeros((1, q.shape[-1]))  # never read with relative=False
        out, lse = launch.relattn_fwd(q, k, v, table, *_args(q, k), relative=False)
        ctx.save_for_backward(q, k, v, table, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from ..triton_kernels import launch

        q, k, v, table, out, lse = ctx.saved_tensors
        return launch.relattn_bwd(grad_out.contiguous(), q, k, v, table, out, lse, *_args(q, k), relative=False)


def plain_twin_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v by the Triton twin, differentiable. q, k, v: [B, H, L, D] on a GPU."""
    return _PlainTwin.apply(q, k, v)
