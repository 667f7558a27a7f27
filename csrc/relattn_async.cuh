// Data movement and math primitives of the flash-style tensor-core kernels (sm_80+): cp.async (global -> shared
// without registers, in commit groups), ldmatrix fragment loads (.trans for k-major B operands) and ex2.approx.
// Under the CPU emulator (NEZHA_CUDA_EMULATE) each maps onto its emulated twin (csrc/emu/cuda_emu.h): cp.async
// delivers only at the wait and poisons its destination until then; ldmatrix gathers rows from the warp's lanes.
#pragma once

#include <cstdint>

#include "relattn_mma.h"
#include "relattn_tile.cuh"

namespace nezha {

constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

// 2^x, x <= 0 in the kernels (one MUFU.EX2; -inf gives 0, denormal results flush to 0).
__device__ __forceinline__ float fast_exp2(float x) {
#ifdef NEZHA_CUDA_EMULATE
    return std::exp2(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// 16 bytes global -> shared, zero-filled when !valid (the source is not read then).
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, bool valid) {
#ifdef NEZHA_CUDA_EMULATE
    ::nezha::emu::cp_async16(smem_dst, gmem_src, valid ? 16 : 0, __FILE__, __LINE__);
#else
    const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(valid ? 16 : 0));
#endif
}

// 4 bytes global -> shared (cp.async.ca: the only form below 16 bytes), zero-filled when !valid.
__device__ __forceinline__ void cp_async4(void* smem_dst, const void* gmem_src, bool valid) {
#ifdef NEZHA_CUDA_EMULATE
    ::nezha::emu::cp_async(smem_dst, gmem_src, 4, valid ? 4 : 0, __FILE__, __LINE__);
#else
    const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(valid ? 4 : 0));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef NEZHA_CUDA_EMULATE
    ::nezha::emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most N committed groups are still in flight (this thread's copies; a barrier publishes them).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef NEZHA_CUDA_EMULATE
    ::nezha::emu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ldmatrix .x4: r[m] is this lane's register of 8 x 8 matrix m, whose rows lanes 8m .. 8m + 7 address.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* row) {
#ifdef NEZHA_CUDA_EMULATE
    ::nezha::emu::ldmatrix(r, 4, false, row, __FILE__, __LINE__);
#else
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#endif
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* row) {
#ifdef NEZHA_CUDA_EMULATE
    ::nezha::emu::ldmatrix(r, 4, true, row, __FILE__, __LINE__);
#else
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#endif
}

// The row a lane addresses for the ldmatrix .x4 loads below (lanes 8m .. 8m + 7: rows of matrix m), as an
// offset in 16-bit elements of a [rows][ld] tile:
//   A fragment of the 16 x 16 block at the tile's origin: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7),
//     (rows 0-7, k 8-15), (rows 8-15, k 8-15) = registers a0 .. a3 of mma.m16n8k16;
//   B fragments of two n-tiles from an n-major tile (row n holds k): (n 0-7, k 0-7), (n 0-7, k 8-15),
//     (n 8-15, k 0-7), (n 8-15, k 8-15) = b0, b1 of n-tile 0, then of n-tile 1;
//   B fragments of two n-tiles from a k-major tile (row k holds n), loaded .trans: (k 0-7, n 0-7), (k 8-15, n 0-7),
//     (k 0-7, n 8-15), (k 8-15, n 8-15) = b0, b1 of n-tile 0, then of n-tile 1.
NZ_HD int ldsm_a_offset(int lane, int ld) { return ((lane >> 3 & 1) * 8 + (lane & 7)) * ld + (lane >> 4) * 8; }
NZ_HD int ldsm_b_nmajor_offset(int lane, int ld) { return ((lane >> 4) * 8 + (lane & 7)) * ld + (lane >> 3 & 1) * 8; }
NZ_HD int ldsm_b_kmajor_offset(int lane, int ld) { return ((lane >> 3 & 1) * 8 + (lane & 7)) * ld + (lane >> 4) * 8; }

// Makes x opaque to the compiler once per call: ptxas keeps it in a register across a loop instead of rematerializing
// it from its inputs every iteration (the key-block loops' lane offsets: 5-10 integer instructions each per tile).
__device__ __forceinline__ void keep_in_register(int& x) {
#ifndef NEZHA_CUDA_EMULATE
    asm volatile("" : "+r"(x));
#endif
}

// This lane's three ldmatrix row offsets in tiles of row stride LD (elements): A fragments, B from n-major rows, B
// .trans from k-major rows. Set up once per block; keep() at the top of each loop iteration holds them in registers.
template <int LD>
struct LdsmLane {
    int a, b_n, b_k;
    __device__ __forceinline__ explicit LdsmLane(int lane)
        : a(ldsm_a_offset(lane, LD)), b_n(ldsm_b_nmajor_offset(lane, LD)), b_k(ldsm_b_kmajor_offset(lane, LD)) {}
    __device__ __forceinline__ void keep() {
        keep_in_register(a);
        keep_in_register(b_n);
        keep_in_register(b_k);
    }
};

// Copies tiles of ROWS rows x D (16-bit T) from global rows (stride row_stride, 16-byte aligned) to a shared
// [ROWS][LD] tile by cp.async, rows at or past `limit` zero-filled. TPR threads share a row, each copying CPT 16-byte
// chunks of it TPR chunks apart (TPR * 16 = 128 bytes: a warp's copy reads whole 128-byte row segments and writes
// every shared bank equally); thread t takes rows t / TPR + c * RSTEP. Its source address is set up once and
// advanced by one increment per row step; the chunks of a row are immediate offsets.
template <typename T, int D, int LD, int NT, int ROWS>
struct AsyncRowCopier {
    static constexpr int VEC = 16 / sizeof(T), CPR = D / VEC, TPR = CPR < 8 ? CPR : 8, CPT = CPR / TPR;
    static constexpr int RSTEP = NT / TPR, CHUNKS = ROWS / RSTEP;
    static_assert(CPR % TPR == 0 && NT % TPR == 0 && ROWS % RSTEP == 0, "whole chunks per thread");
    const T* src;          // this thread's first chunk of row 0
    int64_t tile_stride;   // ROWS rows
    int64_t chunk_stride;  // RSTEP rows
    int dst_offset;        // this thread's first chunk of row 0 in the shared tile
    int row0;

    __device__ __forceinline__ AsyncRowCopier(const T* base, int64_t row_stride) {
        row0 = threadIdx.x / TPR;
        const int col = (threadIdx.x % TPR) * VEC;
        src = base + row0 * row_stride + col;
        tile_stride = ROWS * row_stride;
        chunk_stride = RSTEP * row_stride;
        dst_offset = row0 * LD + col;
    }

    // ROWS rows into dst from s (this thread's first chunk of the first row), rows from `rows_left` on zero-filled
    // (rows_left counted from this thread's first row): the caller advances s by tile_stride itself.
    __device__ __forceinline__ void copy_from(T* dst, const T* s, int rows_left) const {
#pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
#pragma unroll
            for (int k = 0; k < CPT; ++k)
                cp_async16(dst + dst_offset + c * RSTEP * LD + k * TPR * VEC, s + k * TPR * VEC, c * RSTEP < rows_left);
            s += chunk_stride;
        }
    }

    // Rows tile * ROWS .. + ROWS into dst (rows from `limit` on zero-filled).
    __device__ __forceinline__ void copy(T* dst, int tile, int limit) const {
        copy_from(dst, src + tile * tile_stride, limit - tile * ROWS - row0);
    }

    // This thread's first chunk of tile `tile`: a source the caller may advance by tile_stride per tile.
    __device__ __forceinline__ const T* tile_src(int tile) const { return src + tile * tile_stride; }
    // Tile `tile` from s = tile_src(tile), rows from `limit` on zero-filled.
    __device__ __forceinline__ void copy_tile(T* dst, const T* s, int tile, int limit) const {
        copy_from(dst, s, limit - tile * ROWS - row0);
    }
    // A whole tile from s = tile_src(tile) (every row below the limit: no zero-fill, no bound tests).
    __device__ __forceinline__ void copy_whole(T* dst, const T* s) const { copy_from(dst, s, ROWS); }
};

// True when rows of `src` at `row_stride` can be copied in 16-byte pieces.
template <typename T>
__device__ __forceinline__ bool rows_vectorizable(const T* src, int64_t row_stride) {
    return reinterpret_cast<uintptr_t>(src) % 16 == 0 && row_stride % (16 / static_cast<int64_t>(sizeof(T))) == 0;
}

}  // namespace nezha
