"""NEZHA's functional relative position table and the relative index map.

The table has 2R+1 rows: row m encodes the clipped relative distance m - R.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["sinusoidal_table", "relative_index"]


def _build_table(max_relative_position: int, head_dim: int) -> torch.Tensor:
    # Built in float32 with the same operation order as the original NEZHA code so
    # that the rows are bit-identical to the table users' checkpoints were trained with.
    rows = 2 * max_relative_position + 1
    position = torch.arange(0, rows, dtype=torch.int64).float().unsqueeze(1)
    div_term = torch.exp(torch.arange(0, head_dim, 2).float() * (-math.log(10000.0) / head_dim))
    table = torch.zeros(rows, head_dim)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table


@functools.lru_cache(maxsize=64)
def _cached_table(max_relative_position: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # One copy per (R, D, dtype, device): a call after the first makes no host-to-device copy (no sync).
    # Built outside inference mode so the cached tensor can also serve autograd-recording calls later.
    with torch.inference_mode(False), torch.no_grad():
        return _build_table(max_relative_position, head_dim).to(device=device, dtype=dtype)


def _check_table_args(max_relative_position, head_dim, dtype) -> None:
    if isinstance(max_relative_position, bool) or not isinstance(max_relative_position, int):
        raise TypeError(f"max_relative_position must be an int, got {type(max_relative_position).__name__}")
    if max_relative_position < 1:
        raise ValueError(f"max_relative_position must be >= 1, got {max_relative_position}")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int):
        raise TypeError(f"head_dim must be an int, got {type(head_dim).__name__}")
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even number for the sinusoid table, got {head_dim}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype}")


def default_table(max_relative_position: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The op's own read-only default table: the cached tensor itself, never handed to users.

    Inside a compiled graph it is built afresh (dynamo cannot trace an lru_cache; the build is
    constant-folded). torch.jit.trace builds it too: a cache hit would be a constant where a miss records
    the ops, so two traces of one model would differ (and fail the tracer's check).
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return _build_table(max_relative_position, head_dim).to(device=device, dtype=dtype)
    return _cached_table(max_relative_position, head_dim, dtype, torch.device(device))


def sinusoidal_table(
    max_relative_position: int = 64,
    head_dim: int = 64,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """NEZHA's fixed sinusoid table, shape [2R+1, head_dim]: a new tensor, the caller's to modify.

    ``T[m, 2t] = sin(m * w_t)``, ``T[m, 2t+1] = cos(m * w_t)``, ``w_t = 10000^(-2t/head_dim)``,
    for ``m = 0 .. 2R`` (the table index, i.e. clipped distance + R).
    """
    _check_table_args(max_relative_position, head_dim, dtype)
    device = torch.device(device if device is not None else "cpu")
    return default_table(max_relative_position, head_dim, dtype, device).clone()


def relative_index(
    query_length: int,
    key_length: int,
    max_relative_position: int,
    q_offset: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Table row for every (query, key) pair: clamp(j - (q_offset + i), -R, R) + R, shape [Lq, Lk] int64."""
    rows = torch.arange(query_length, device=device) + q_offset
    cols = torch.arange(key_length, device=device)
    distance = cols[None, :] - rows[:, None]
    return distance.clamp(-max_relative_position, max_relative_position) + max_relative_position
