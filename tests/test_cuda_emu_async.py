"""The CUDA emulator's cp.async and ldmatrix (csrc/emu/emu_runtime.cpp) against hand-built cases.

ldmatrix is checked against the PTX ISA's description of the fragments ("Warp-level matrix load instruction:
ldmatrix"), written here a third time, independently of the emulator and of the kernels' offsets: threads 8m .. 8m + 7
give the row addresses of matrix m; thread t receives, of each matrix, row t // 4 at columns 2 (t % 4) and
2 (t % 4) + 1 (low and high half of one register); .trans delivers the transposed matrix. The kernels' ldmatrix
offsets (csrc/relattn_async.cuh) are then checked against their scalar fragment loaders, which
test_cuda_emulated.py checks against the emulated mma.sync.
"""

from __future__ import annotations

import math

import pytest
import torch

from nezha_kernels.cuda_ext import emulator

pytestmark = pytest.mark.skipif(emulator.find_cxx() is None, reason="the CUDA emulator needs g++ (C++20)")


def _expected_ldmatrix(values: torch.Tensor, trans: bool) -> torch.Tensor:
    """[32 lanes, 4 matrices, 2 halves] from matrices[m][row][col] = values[(8 m + row) * 8 + col]."""
    mats = values.view(4, 8, 8)
    out = torch.empty(32, 4, 2)
    for t in range(32):
        for m in range(4):
            for h in range(2):
                row, col = t // 4, 2 * (t % 4) + h
                out[t, m, h] = mats[m, col, row] if trans else mats[m, row, col]
    return out


@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_x4_matches_the_ptx_fragment_description(trans):
    values = torch.randperm(256, generator=torch.Generator().manual_seed(3)).float()  # distinct, exact in fp16
    err, out = emulator.run_selftest("ldmatrix_trans" if trans else "ldmatrix", values, out_numel=256)
    assert err is None, err
    assert torch.equal(out.view(32, 4, 2), _expected_ldmatrix(values, trans))


def test_kernel_ldmatrix_offsets_agree_with_the_scalar_fragment_loaders():
    err, out = emulator.run_selftest("ldmatrix_vs_loaders", out_numel=3)
    assert err is None, err
    assert out.tolist() == [0.0, 0.0, 0.0], "mismatching registers (A, n-major B, k-major B .trans)"


def test_cp_async_delivers_at_the_wait_and_poisons_until_then():
    src = torch.tensor([1.5, -2.0, 3.25, 4.0, 5.5, 6.0, -7.75, 8.0])
    err, out = emulator.run_selftest("cp_async", src, out_numel=20)
    assert err is None, err
    assert all(math.isnan(x) for x in out[0:4].tolist()), "read before the wait must see the poison"
    assert out[4:8].tolist() == src[0:4].tolist(), "wait_group 1 delivers the older group"
    assert all(math.isnan(x) for x in out[8:12].tolist()), "wait_group 1 leaves the newest group in flight"
    assert out[12:16].tolist() == src[4:8].tolist(), "wait_group 0 delivers everything"
    assert out[16:20].tolist() == [0.0] * 4, "a copy with source size 0 zero-fills"
