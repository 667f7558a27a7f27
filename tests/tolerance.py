"""The kernel-testing rule of flash-attention's tests, for every kernel suite.

A kernel's error against a float64 reference is at most k times the error of the same computation done by PyTorch
at the kernel's precision (tests/formula.py with dtype=..., or a backend run in that dtype) against the same float64
reference, plus a tiny absolute floor:

    max |kernel - ref64|  <=  k * max |pytorch_dtype - ref64|  +  floor

Both sides start from the same rounded inputs, so the bound scales with the dtype and the shape by itself: no fixed
atol / rtol per dtype. The floor (64 float32 ulps of the largest reference value, at least of 1.0) only matters
where PyTorch's own result is exact, where k * 0 would demand bit-exactness: with one key, softmax's gradient is
exactly 0 in PyTorch, while a kernel's dS = P (dP - rowsum(dO O)) cancels terms of size |dO| |V| in fp32 (~32 ulps
seen). It is below 1% of a float16 ulp, and far below a low-precision PyTorch error. Each test file states
its k per dtype and per output (out, dq, dk, dv) in one table, with a comment on any k above 2.

Set NEZHA_TOL_LOG=<path> to append every comparison's ratio (kernel error / PyTorch error) to that file: how the
k of a table were chosen, and how to recheck them after a kernel change.
"""

from __future__ import annotations

import math
import os

import torch

__all__ = ["FLOOR_ULPS", "error", "floor", "assert_within", "assert_all_within"]

# The floor: this many float32 ulps (eps = 1.19e-7) of max(1, max |ref|): 7.6e-6 for values of order 1.
FLOOR_ULPS = 64


def error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| in float64 (0.0 for empty tensors); NaN when x holds a NaN or an inf."""
    if ref.numel() == 0:
        return 0.0
    diff = (x.detach().to(device=ref.device, dtype=torch.float64) - ref.detach().double()).abs()
    return float("nan") if not torch.isfinite(diff).all() else diff.max().item()


def floor(ref: torch.Tensor) -> float:
    largest = ref.detach().abs().max().item() if ref.numel() else 0.0
    return FLOOR_ULPS * torch.finfo(torch.float32).eps * max(1.0, largest)


def assert_within(name: str, got: torch.Tensor, ref: torch.Tensor, same_precision: torch.Tensor, k: float) -> float:
    """Assert error(got, ref) <= k * error(same_precision, ref) + floor(ref); return the ratio of the two errors.

    got: the kernel's result; ref: the float64 reference; same_precision: PyTorch's result of the same computation
    in got's dtype. All three of one shape.
    """
    assert got.shape == ref.shape == same_precision.shape, (name, got.shape, ref.shape, same_precision.shape)
    err, base, tiny = error(got, ref), error(same_precision, ref), floor(ref)
    assert math.isfinite(base), f"{name}: PyTorch's own {same_precision.dtype} result is not finite"
    ratio = err / max(base, tiny)
    log = os.environ.get("NEZHA_TOL_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]} {name} {got.dtype} {ratio:.3f}\n")
    assert err <= k * base + tiny, (
        f"{name}: kernel error {err:.3g} against float64 exceeds {k} x PyTorch's {same_precision.dtype} error "
        f"{base:.3g} + floor {tiny:.2g} (ratio {ratio:.2f})"
    )
    return ratio


def assert_all_within(
    got: dict[str, torch.Tensor],
    ref: dict[str, torch.Tensor],
    same_precision: dict[str, torch.Tensor],
    k: dict[str, float],
    label: str = "",
) -> dict[str, float]:
    """assert_within for every name of ``got`` (e.g. out, dq, dk, dv), with k[name]; the ratios by name."""
    prefix = f"{label}: " if label else ""
    return {n: assert_within(prefix + n, got[n], ref[n], same_precision[n], k[n]) for n in got}
