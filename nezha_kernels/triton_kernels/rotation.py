"""The band of NEZHA's own sinusoid table on tensor cores: the rotation identity (shared/docs/relative-attention.md).

For the default table T[m] = [sin(m w_t), cos(m w_t)]_t (w_t = 10000^(-2t/D)), a query block whose first position is
pos0 measures every angle from pos0. With s_j = S[j - pos0 + R] (unclamped rows of the same sinusoid) and q_rot_i the
pairwise rotation of q_i by the angle (i - pos0) w_t:

    key side    q_i . T[j - i + R] = q_rot_i . s_j                      (|j - i| <= R)
    value side  sum_j p_ij T[j - i + R] = rotate_back_i(sum_j p_ij s_j)

so a band tile pays two small dots (Q_rot @ S_tile^T, P_band @ S_tile) instead of gathers or the block-band scratch,
and the angles stay below BLOCK_M + 2R + BLOCK_N radians at any absolute position (float32 exact to rounding).

The launcher passes one table (``rotation_table``): float32 [PAD_ROWS + MAX_BLOCK_M + 2R + PAD_ROWS, BLOCK_D], row
PAD_ROWS + m = [sin(m w_t), cos(m w_t)]_t for m = -PAD_ROWS .. , computed in float64 (padded head dims 0). A band
tile's S_tile is a contiguous [BLOCK_N, BLOCK_D] block of it at a row offset, like a K tile; rows 0 .. BLOCK_M - 1
from m = 0 are the cos / sin of q's rotation. Tiles with no in-band pair read clamped rows (never used: masked).

The dK/dV kernel rebuilds P from the forward's row statistics, so it computes the forward's scores: its query tiles
(16 or 32 rows) are slices of the forward's BLOCK_M-row blocks, and it measures angles and S rows from the start of
the forward block holding each tile (load_rotation_planes at row m0 = tile start - block start, load_positional with
that block's pos0). Its q_rot is the forward's, bit for bit (the same fp32 products and sums, rounded to q's dtype),
computed elementwise from a pair-swapped reload of q (rotate_rows_at) instead of rotate's split / join, which spilled
next to dK/dV's accumulators.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

# Rows of the table before m = 0 (and after the largest m a band tile can need): at least any key tile's width.
PAD_ROWS = 64
# The tallest query block a kernel may run with the rotation path (the forward's and dQ's 128-row tiles).
MAX_BLOCK_M = 128
_PAD = tl.constexpr(PAD_ROWS)
_MAX_BLOCK_M = tl.constexpr(MAX_BLOCK_M)


def rotation_rows(r: int) -> int:
    """Rows of the rotation table of max_relative_position r."""
    return 2 * PAD_ROWS + MAX_BLOCK_M + 2 * r


@functools.lru_cache(maxsize=32)
def _cached(r: int, head_dim: int, block_d: int, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        m = torch.arange(rotation_rows(r), dtype=torch.float64) - PAD_ROWS
        w = torch.exp(torch.arange(0, head_dim, 2, dtype=torch.float64) * (-math.log(10000.0) / head_dim))
        angle = m[:, None] * w[None, :]
        table = torch.zeros(m.shape[0], block_d, dtype=torch.float64)
        table[:, 0:head_dim:2] = torch.sin(angle)
        table[:, 1:head_dim:2] = torch.cos(angle)
        return table.to(device=device, dtype=torch.float32)


def rotation_table(r: int, head_dim: int, device: torch.device) -> torch.Tensor:
    """float32 [rotation_rows(r), BLOCK_D] (see the module docstring), cached per (R, D, device)."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    return _cached(r, head_dim, block_d, torch.device(device))


@functools.lru_cache(maxsize=32)
def _cached_as(r: int, head_dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return rotation_table(r, head_dim, device).to(dtype)


def rotation_table_as(r: int, head_dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """rotation_table in ``dtype`` (q's), cached: dK/dV's rotation band loop reads its S tiles from it straight into
    the wgmma's shared operand (pipelined copies), not as fp32 rows converted per tile. torch's fp32 -> fp16 / bf16 is
    round-to-nearest-even like the kernels' .to(q.dtype): the same S tile bit for bit."""
    return _cached_as(r, head_dim, torch.device(device), dtype)


@triton.jit
def rotate(x, cs, SIGN: tl.constexpr):
    """x [M, BLOCK_D] fp32 rotated pairwise by cs [M, BLOCK_D] = [sin(a), cos(a)]_t (the table's row layout).

    SIGN +1 (q_rot):    y[2t] = x[2t] cos + x[2t+1] sin,  y[2t+1] = x[2t+1] cos - x[2t] sin
    SIGN -1 (back):     y[2t] = x[2t] cos - x[2t+1] sin,  y[2t+1] = x[2t+1] cos + x[2t] sin
    """
    M: tl.constexpr = x.shape[0]
    D: tl.constexpr = x.shape[1]
    x_even, x_odd = tl.split(tl.reshape(x, [M, D // 2, 2]))
    sin, cos = tl.split(tl.reshape(cs, [M, D // 2, 2]))
    y_even = x_even * cos + SIGN * (x_odd * sin)
    y_odd = x_odd * cos - SIGN * (x_even * sin)
    return tl.reshape(tl.join(y_even, y_odd), [M, D])


@triton.jit
def load_angles(ROT, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """[BLOCK_M, BLOCK_D] fp32: rows m = 0 .. BLOCK_M - 1 (the angles (i - pos0) w_t of a query block's rows)."""
    return load_angles_from(ROT, 0, BLOCK_M, BLOCK_D)


@triton.jit
def load_angles_from(ROT, m0, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """[BLOCK_M, BLOCK_D] fp32: rows m = m0 .. m0 + BLOCK_M - 1 (0 <= m0, m0 + BLOCK_M <= MAX_BLOCK_M): the angles of
    query rows m0 .. of a block, for a kernel whose query tiles are slices of another kernel's blocks (dK/dV)."""
    rows = tl.arange(0, BLOCK_M) + (m0 + _PAD)
    offs = rows[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    return tl.load(ROT + offs)


@triton.jit
def load_rotation_planes(ROT, m0, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """(cos, sin_signed) [BLOCK_M, BLOCK_D] fp32 of rows m0 .. m0 + BLOCK_M - 1 spread over both columns of each
    pair: cos[:, d] = cos(a_t), sin_signed[:, d] = +sin(a_t) for even d, -sin(a_t) for odd d (t = d // 2).

    With them rotate(x, cs, 1) is x * cos + x_swapped * sin_signed, x_swapped[:, d] = x[:, d ^ 1] loaded as such:
    elementwise in x's own layout, no pair split (the same products and sums, see rotate_swapped).
    """
    return _load_padded_rotation_rows(ROT, tl.arange(0, BLOCK_M) + (m0 + _PAD), BLOCK_D)


@triton.jit
def load_rotation_rows(ROT, m, BLOCK_D: tl.constexpr):
    """load_rotation_planes for rows m [M] given per row (0 <= m < MAX_BLOCK_M; the delta kernel's rows, each in its
    own forward block): (cos, sin_signed) [M, BLOCK_D] fp32."""
    return _load_padded_rotation_rows(ROT, m + _PAD, BLOCK_D)


@triton.jit
def _load_padded_rotation_rows(ROT, rows, BLOCK_D: tl.constexpr):
    """The two loaders' body; rows [M] already offset by _PAD (the planes add it to the scalar m0 once: the
    original address arithmetic, instruction for instruction)."""
    d = tl.arange(0, BLOCK_D)
    row_offs = rows[:, None] * BLOCK_D
    cos = tl.load(ROT + row_offs + (d | 1)[None, :])
    sin = tl.load(ROT + row_offs + (d & ~1)[None, :])
    return cos, tl.where((d % 2 == 0)[None, :], sin, -sin)


@triton.jit
def rotate_swapped(x, x_swapped, cos, sin_signed):
    """rotate(x, cs, 1) in x's dtype from x_swapped[:, d] = x[:, d ^ 1] and load_rotation_planes' (cos, sin_signed):
    y[2t] = x[2t] cos + x[2t+1] sin, y[2t+1] = x[2t+1] cos + x[2t] (-sin), the products rotate forms."""
    return (x.to(tl.float32) * cos + x_swapped.to(tl.float32) * sin_signed).to(x.dtype)


@triton.jit
def rotate_rows_at(x, x_swapped_ptrs, mask, ROT, m0):
    """x [M, BLOCK_D] rotated by the angles of rows m0 .. m0 + M - 1 (rotate_swapped), in x's dtype: the pair-swapped
    copy is loaded from x_swapped_ptrs (x's pointers at columns d ^ 1) under x's mask."""
    cos, sin_signed = load_rotation_planes(ROT, m0, x.shape[0], x.shape[1])
    return rotate_swapped(x, tl.load(x_swapped_ptrs, mask=mask, other=0.0), cos, sin_signed)


@triton.jit
def load_positional(ROT, j0, pos0, R, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """S_tile [BLOCK_N, BLOCK_D] fp32: s_j = row j - pos0 + R for keys j0 .. j0 + BLOCK_N - 1.

    A tile without in-band pairs may ask for rows outside the table: its first row is clamped (its values are
    never used, every pair of it is out of band).
    """
    row0 = tl.minimum(tl.maximum(j0 - pos0 + R + _PAD, 0), 2 * _PAD + _MAX_BLOCK_M + 2 * R - BLOCK_N)
    rows = row0 + tl.arange(0, BLOCK_N)
    offs = rows[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    return tl.load(ROT + offs)


@triton.jit
def band_positional_ptrs(ROT, j0, pos0, R, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pointers of S_tile [BLOCK_N, BLOCK_D] at keys j0 .. (load_positional's rows) for a tile of the band, unclamped:
    the band of a block of at most MAX_BLOCK_M rows starts at a key j0 >= pos0 - R - BLOCK_N + 2 and ends before
    pos0 + MAX_BLOCK_M + R + BLOCK_N - 2, rows -BLOCK_N + 2 .. MAX_BLOCK_M + 2R + BLOCK_N - 3: inside the table for
    BLOCK_N <= PAD_ROWS. The next tile's are these + BLOCK_N * BLOCK_D."""
    tl.static_assert(BLOCK_N <= _PAD)
    rows = (j0 - pos0 + R + _PAD) + tl.arange(0, BLOCK_N)
    return ROT + rows[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]


@triton.jit
def rotate_query(x, ROT, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """x_rot [BLOCK_M, BLOCK_D] in x's dtype: the rows of x rotated by their angle from the block start."""
    return rotate(x.to(tl.float32), load_angles(ROT, BLOCK_M, BLOCK_D), 1).to(x.dtype)


@triton.jit
def add_rotated_back(acc, u, ROT, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """acc + u rotated back [BLOCK_M, BLOCK_D] fp32: the band's value side (u = sum_j p_ij s_j, or dQ's sum_j dS_ij
    s_j) as two FFMA per element into acc (acc_e + u_e cos - u_o sin, acc_o + u_o cos + u_e sin) instead of
    rotate(u, cs, -1)'s FMUL + FFMA and then the add (the forward's and dQ's band loops)."""
    acc_even, acc_odd = tl.split(tl.reshape(acc, [BLOCK_M, BLOCK_D // 2, 2]))
    u_even, u_odd = tl.split(tl.reshape(u, [BLOCK_M, BLOCK_D // 2, 2]))
    sin, cos = tl.split(tl.reshape(load_angles(ROT, BLOCK_M, BLOCK_D), [BLOCK_M, BLOCK_D // 2, 2]))
    y_even = (acc_even + u_even * cos) - u_odd * sin
    y_odd = (acc_odd + u_odd * cos) + u_even * sin
    return tl.reshape(tl.join(y_even, y_odd), [BLOCK_M, BLOCK_D])


@triton.jit
def scale_add_sinusoid_edges(
    x, row_scale, edge_left, edge_right, t_right, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr
):
    """x * row_scale + edge_left T[0] + edge_right T[2R], [BLOCK_M, BLOCK_D] fp32, for NEZHA's own table: T[0] =
    [sin 0, cos 0]_t = [0, 1]_t exactly, so the left edge goes to the odd columns alone (T[0] not loaded, no product):
    two FFMA per element (the forward's output normalization and dQ's scale). edge_left / edge_right: [BLOCK_M, 1]
    per-row weights, already scaled; t_right: the row T[2R] in fp32."""
    x_even, x_odd = tl.split(tl.reshape(x, [BLOCK_M, BLOCK_D // 2, 2]))
    t_even, t_odd = tl.split(tl.reshape(t_right, [BLOCK_D // 2, 2]))
    y_even = x_even * row_scale + edge_right * t_even[None, :]
    y_odd = x_odd * row_scale + (edge_left + edge_right * t_odd[None, :])
    return tl.reshape(tl.join(y_even, y_odd), [BLOCK_M, BLOCK_D])
