"""The rotation identity the Triton band on tensor cores is to rely on (issue 19, item 3), checked before any kernel.

For NEZHA's sinusoid table, a_ij = T[j - i + R] (|j - i| <= R) is a rotation of a "positional row" of key j by the
query's angle (shared/docs/relative-attention.md, "Two ways to do the band"):
    key side    q_i . a_ij = q_rot_i . s_j
    value side  sum_j p_ij a_ij = rotate_back_i(sum_j p_ij s_j)
Angles are measured from the query block's start i0 (i - i0, j - i0), so they stay below BLOCK_M + 2R + BLOCK_N
whatever the absolute position: float32 sin / cos are then exact to rounding at positions up to 1,048,560, where
absolute angles lose ~1e-1 (shown below as the reason for block-relative angles). Checked against the float64
gather of tests/formula.py's table, for the key side and the value side, in float64 and float32.
"""

from __future__ import annotations

import math

import formula
import pytest
import torch

R, D, BLOCK_M = 64, 64, 128


def _freqs(d: int, dtype) -> torch.Tensor:
    """w_t = exp(-2t ln(10000) / d), t = 0 .. d/2 - 1."""
    t = torch.arange(0, d, 2, dtype=torch.float64)
    return torch.exp(-t * math.log(10000.0) / d).to(dtype)


def _rotate(x: torch.Tensor, angle: torch.Tensor, sign: float) -> torch.Tensor:
    """x [n, D] rotated pairwise by angle [n, D/2]: sign +1 is q_rot (the key side), -1 the value side's way back."""
    c, s = torch.cos(angle), torch.sin(angle)
    even, odd = x[:, 0::2], x[:, 1::2]
    out = torch.empty_like(x)
    out[:, 0::2] = even * c + sign * odd * s
    out[:, 1::2] = odd * c - sign * even * s
    return out


def _positional_rows(j_rel: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """s_j [n, D] = [sin((j + R) w_t), cos((j + R) w_t)]_t with j measured from the block start."""
    angle = (j_rel.to(w.dtype) + R)[:, None] * w[None, :]
    s = torch.empty(j_rel.shape[0], 2 * w.shape[0], dtype=w.dtype)
    s[:, 0::2], s[:, 1::2] = torch.sin(angle), torch.cos(angle)
    return s


def _band_case(i0: int, dtype, origin: int):
    """(key side, value side) by rotation in ``dtype`` with angles measured from ``origin``, and their float64
    gathers, for the query block i0 .. i0 + BLOCK_M - 1 and every key within R of it."""
    g = torch.Generator().manual_seed(i0 % 9973)
    i = torch.arange(i0, i0 + BLOCK_M)
    j = torch.arange(i0 - R, i0 + BLOCK_M + R)
    q = torch.randn(BLOCK_M, D, generator=g, dtype=torch.float64)
    band = (j[None, :] - i[:, None]).abs() <= R
    p = torch.rand(BLOCK_M, j.shape[0], generator=g, dtype=torch.float64) * band
    # float64 reference: the formula's table gathered at the clamped index (only in-band pairs used).
    table = formula.nezha_table(R, D)
    a = table[(j[None, :] - i[:, None]).clamp(-R, R) + R]  # [BLOCK_M, keys, D]
    key_ref = torch.einsum("id,ijd->ij", q, a) * band
    value_ref = torch.einsum("ij,ijd->id", p, a)

    w = _freqs(D, dtype)
    q_rot = _rotate(q.to(dtype), (i - origin).to(dtype)[:, None] * w[None, :], 1.0)
    s = _positional_rows(j - origin, w)
    key = (q_rot @ s.T) * band.to(dtype)
    u = p.to(dtype) @ s
    value = _rotate(u, (i - origin).to(dtype)[:, None] * w[None, :], -1.0)
    return key.double(), key_ref, value.double(), value_ref


@pytest.mark.parametrize("i0", [0, 4096, 1_048_560 - BLOCK_M + 1])
def test_rotation_matches_the_gather_in_float64(i0):
    key, key_ref, value, value_ref = _band_case(i0, torch.float64, origin=i0)
    torch.testing.assert_close(key, key_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(value, value_ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("i0", [0, 65_536, 1_048_560 - BLOCK_M + 1])
def test_block_relative_angles_keep_float32_exact_at_a_million(i0):
    # float32 rounding of the angles: (j - i0 + R) w_t reaches BLOCK_M + 2R = 256 rad (w_0 = 1), whose half-ulp is
    # 1.5e-5 rad; q . a sums D/2 pairs of such errors times |q| ~ 1 (~1e-4 at worst), the value side 2R + 1 weights.
    key, key_ref, value, value_ref = _band_case(i0, torch.float32, origin=i0)
    torch.testing.assert_close(key, key_ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(value, value_ref, atol=1e-4, rtol=0)


def test_absolute_angles_lose_float32_accuracy_far_out():
    # Why angles are measured from the block start: at position ~1e6 a float32 angle i * w carries an error of
    # ~ulp(1e6) = 0.06 rad, and the key side inherits it.
    i0 = 1_048_560 - BLOCK_M + 1
    key, key_ref, _, _ = _band_case(i0, torch.float32, origin=0)
    relative, _, _, _ = _band_case(i0, torch.float32, origin=i0)
    assert (key - key_ref).abs().max() > 100 * (relative - key_ref).abs().max()


@pytest.mark.parametrize("i0", [0, 2**20 - 16 - BLOCK_M + 1])
def test_kernel_rotation_arithmetic_is_float32_exact_at_a_million(i0):
    # The kernels' own arithmetic (triton_kernels/rotation.py), emulated in float32: the launcher's table (sinusoid
    # rows m = j - i0 + R computed in float64, stored as float32), q rotated by the table's rows 0 .. BLOCK_M - 1
    # (angles from the block start), Q_rot @ S^T, P @ S rotated back. Its error against the float64 gather is that
    # of the same products done in float32 on a float32 table (fp32 rounding), whatever the absolute position: the
    # last row sits at 1,048,560 for the second block.
    rotation = pytest.importorskip("nezha_kernels.triton_kernels.rotation")  # imports triton
    g = torch.Generator().manual_seed(5)
    i = torch.arange(i0, i0 + BLOCK_M)
    j = torch.arange(i0 - R, i0 + BLOCK_M + R)
    q = torch.randn(BLOCK_M, D, generator=g).double()
    band = (j[None, :] - i[:, None]).abs() < R
    p = torch.rand(BLOCK_M, j.shape[0], generator=g, dtype=torch.float64) * band
    table64 = formula.nezha_table(R, D)
    a = table64[(j[None, :] - i[:, None]).clamp(-R, R) + R]
    key_ref = torch.einsum("id,ijd->ij", q, a) * band
    value_ref = torch.einsum("ij,ijd->id", p, a)

    rot = rotation.rotation_table(R, D, torch.device("cpu"))
    assert rot.dtype == torch.float32 and rot.shape == (rotation.rotation_rows(R), D)
    angles = rot[rotation.PAD_ROWS : rotation.PAD_ROWS + BLOCK_M]  # [sin, cos] of (i - i0) w_t
    s = rot[(j - i0 + R) + rotation.PAD_ROWS]  # s_j, unclamped rows

    def rotate(x, sign):
        sin, cos = angles[:, 0::2], angles[:, 1::2]
        out = torch.empty_like(x)
        out[:, 0::2] = x[:, 0::2] * cos + sign * (x[:, 1::2] * sin)
        out[:, 1::2] = x[:, 1::2] * cos - sign * (x[:, 0::2] * sin)
        return out

    q32 = q.float()
    key = (rotate(q32, 1.0) @ s.T) * band
    value = rotate(p.float() @ s, -1.0)
    # The float32 baseline: the gather on the float32-rounded table, products in float32.
    a32 = a.float()
    key_base = torch.einsum("id,ijd->ij", q32, a32) * band
    value_base = torch.einsum("ij,ijd->id", p.float(), a32)
    for got, base, ref in ((key, key_base, key_ref), (value, value_base, value_ref)):
        err, base_err = (got.double() - ref).abs().max().item(), (base.double() - ref).abs().max().item()
        assert err <= 4 * base_err + 1e-6, (err, base_err)
        assert err <= 16 * torch.finfo(torch.float32).eps * ref.abs().max().item(), err  # a few fp32 ulps
