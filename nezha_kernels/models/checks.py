"""Value checks of model inputs (token ids, 1/0 masks) that never cost a host-device sync by default.

A value check reads data back to the host. On CPU tensors that is free, so they are always checked. On
CUDA it would block every forward (issue 11), so CUDA inputs are checked only when the environment
variable ``NEZHA_KERNELS_CHECK_INPUTS=1`` is set (a debugging switch); otherwise a bad id surfaces as the
embedding's device-side assert. Compiled, exported and traced models skip the checks (data-dependent).
"""

from __future__ import annotations

import os

import torch

__all__ = ["CHECK_INPUTS_ENV", "values_checked", "check_ids", "check_keep_mask"]

CHECK_INPUTS_ENV = "NEZHA_KERNELS_CHECK_INPUTS"


def values_checked(t: torch.Tensor) -> bool:
    """Whether the values of ``t`` are read back and checked here (see the module docstring)."""
    if t.numel() == 0 or torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return False
    return t.device.type == "cpu" or os.environ.get(CHECK_INPUTS_ENV, "") == "1"


def check_ids(name: str, ids: torch.Tensor, upper: int, config_key: str) -> None:
    """TypeError for a non-integer tensor; ValueError when ``ids`` has values outside [0, upper)."""
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {ids.dtype}")
    if not values_checked(ids):
        return
    low, high = (int(x) for x in torch.aminmax(ids))
    if low < 0 or high >= upper:
        raise ValueError(
            f"{name} has values in [{low}, {high}] but must lie in [0, {upper}) (config.{config_key} = {upper})"
        )


def check_keep_mask(name: str, mask: torch.Tensor) -> None:
    """ValueError unless every value of a (non-bool) mask is 0 or 1.

    The model reads attention_mask as transformers does: 1 keeps a key, 0 masks it. An additive mask
    (0 / -10000) would otherwise be silently inverted, and 0.5 silently read as "keep".
    """
    if mask.dtype == torch.bool or not values_checked(mask):
        return
    bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        example = mask[bad][0].item()
        raise ValueError(
            f"{name} must be a keep mask of 1 (attend) and 0 (masked), as in transformers; it holds {example!r}. "
            "An additive mask (0 / -10000 or finfo.min) is not accepted here: pass (mask == 0) for one."
        )
