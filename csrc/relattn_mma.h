// Fragment layouts of mma.sync.aligned.m16n8k16 (.f16 / .bf16 inputs, .f32 accumulators) and the
// shared-memory offsets the tensor-core kernels load fragments from.
//
// Maps transcribed from the PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type":
//   groupID = lane >> 2, threadID_in_group = lane % 4
//   A (16x16, a0..a7):  row = groupID (+8 for a2,a3,a6,a7), col = 2*tig + (i & 1) (+8 for i >= 4)
//   B (16x8,  b0..b3):  row(k) = 2*tig + (i & 1) (+8 for i >= 2), col(n) = groupID
//   C/D (16x8, c0..c3): row = groupID (+8 for c2,c3), col = 2*tig + (i & 1)
// Element 2r and 2r+1 of A / B share 32-bit register r (low half = lower element index).
// Everything is __host__ __device__ so csrc/tests/test_helpers.cpp checks the maps, the loaders'
// offsets, the accumulator -> A-operand reuse and the bank-conflict freedom of the padded strides on the CPU.
#pragma once

#include "relattn_helpers.h"

namespace nezha {

struct FragRC {
    int row;
    int col;
};

NZ_HD FragRC mma_a_elem(int lane, int e) {
    FragRC c;
    c.row = (lane >> 2) + (((e >> 1) & 1) ? 8 : 0);
    c.col = 2 * (lane & 3) + (e & 1) + (e >= 4 ? 8 : 0);
    return c;
}

// (row, col) = (k, n).
NZ_HD FragRC mma_b_elem(int lane, int e) {
    FragRC c;
    c.row = 2 * (lane & 3) + (e & 1) + (e >= 2 ? 8 : 0);
    c.col = lane >> 2;
    return c;
}

NZ_HD FragRC mma_c_elem(int lane, int e) {
    FragRC c;
    c.row = (lane >> 2) + (e >= 2 ? 8 : 0);
    c.col = 2 * (lane & 3) + (e & 1);
    return c;
}

// Offset (elements) of A register `reg` (elements 2reg, 2reg+1, adjacent) in a row-major [row][k] tile.
NZ_HD int mma_a_offset(int lane, int reg, int ld) {
    const FragRC c = mma_a_elem(lane, 2 * reg);
    return c.row * ld + c.col;
}

// B register `reg` from an "n-major" tile: smem row n holds B[., n] contiguous over k (K rows for Q.K^T,
// table rows for Q.T^T). Elements 2reg, 2reg+1 are adjacent in k: one 32-bit load.
NZ_HD int mma_b_offset_nmajor(int lane, int reg, int ld) {
    const FragRC c = mma_b_elem(lane, 2 * reg);
    return c.col * ld + c.row;
}

// B element `e` from a "k-major" tile: smem row k holds B[k, .] contiguous over n (V rows for P.V,
// table rows for Bucket.T). Two 16-bit loads per register.
NZ_HD int mma_b_offset_kmajor(int lane, int e, int ld) {
    const FragRC c = mma_b_elem(lane, e);
    return c.row * ld + c.col;
}

// Accumulators of two adjacent n-tiles (2kk, 2kk+1) form the A operand of k-step kk (flash-attention
// register reuse): A register `reg` = C elements (c_to_a_elem, +1) of n-tile 2kk + c_to_a_ntile(reg).
NZ_HD int c_to_a_ntile(int reg) { return reg >> 1; }
NZ_HD int c_to_a_elem(int reg) { return 2 * (reg & 1); }

// Padded smem row stride (16-bit elements) of the TC kernels' [rows][D] tiles: +8 halves (16 bytes)
// keeps rows 16-byte aligned and makes every fragment load above conflict-free for D = 32, 64, 128.
NZ_HD constexpr int tc_row_stride(int d) { return d + 8; }

// Table rows the TC kernels stage per tile: [lo, lo + rows) where rows = span + pad covers every
// warp's 8- / 16-padded slice; rows past 2R are zero-filled. `cap` is the buffer's row count.
NZ_HD int tc_table_stage_rows(TableRows t, int pad, int cap) {
    const int rows = t.hi - t.lo + 1 + pad;
    return rows < cap ? rows : cap;
}

NZ_HD int round_up(int x, int m) { return (x + m - 1) / m * m; }

}  // namespace nezha
