// Tensor-core building blocks (sm_80+): mma.sync m16n8k16 with fp32 accumulators for fp16 / bf16,
// fragment loads from padded shared tiles (offsets from relattn_mma.h, CPU-tested), tile staging.
//
// Tile geometry of the TC kernels: NT = 128 threads = 4 warps; a block owns BM = 64 rows, each warp 16
// of them (the mma's M), and streams BN = 64 other-side rows per tile. Shared tiles keep the input dtype
// with row stride D + 8 (16-byte aligned rows, conflict-free fragment loads).
#pragma once

#include <cstdint>

#include "relattn_mma.h"
#include "relattn_tile.cuh"

namespace nezha {

template <int D_>
struct TcConfig {
    static constexpr int D = D_;
    static constexpr int BM = 64;                 // own rows per block
    static constexpr int BN = 64;                 // streamed rows per tile (fwd)
    static constexpr int BN_DQ = D >= 128 ? 32 : 64;  // dQ: S, dP and dQ accumulators live together; 0 spills
    static constexpr int NT = 128;
    static constexpr int WARPS = NT / 32;
    static constexpr int LD = D + 8;              // == tc_row_stride(D)
    static constexpr int WCOLS = 80;              // per-warp table slice, >= 16 + BN - 1, multiple of 16
    static constexpr int QT_LD = WCOLS + 4;       // floats, per-warp Q.T_slice^T scratch
    static constexpr int BK_LD = WCOLS + 8;       // 16-bit elements, per-warp bucket (aliases the scratch)
    static constexpr int TS_ROWS = BM - 16 + WCOLS;  // staged table rows (every warp's padded slice)
    // dK dV kernel: 64 keys own, 32 queries streamed, one block-wide table slice of <= 95 rows.
    static constexpr int QN = 32;
    static constexpr int TB_COLS = 96;
    static constexpr int TB_LD = TB_COLS + 4;
    static_assert(WARPS * 16 == BM && WCOLS % 16 == 0 && WCOLS >= 16 + BN - 1, "warp slice geometry");
    static_assert(TB_COLS % 8 == 0 && TB_COLS >= QN + BM - 1, "dkdv slice geometry");
    static_assert(LD * 2 % 16 == 0, "16-byte aligned smem rows");
};

template <typename T> struct MmaOp;

template <> struct MmaOp<__half> {
    __device__ __forceinline__ static void run(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef NEZHA_CUDA_EMULATE
        ::nezha::emu::mma_m16n8k16(::nezha::emu::MmaType::F16, c, a, b, __FILE__, __LINE__);
#else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
    }
    __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    }
};

template <> struct MmaOp<__nv_bfloat16> {
    __device__ __forceinline__ static void run(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef NEZHA_CUDA_EMULATE
        ::nezha::emu::mma_m16n8k16(::nezha::emu::MmaType::BF16, c, a, b, __FILE__, __LINE__);
#else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
    }
    __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    }
};

__device__ __forceinline__ uint32_t lds32(const void* base, int off_elems) {
    return *reinterpret_cast<const uint32_t*>(static_cast<const uint16_t*>(base) + off_elems);
}

// A fragment of the 16 x 16 block at `tile` (row-major, stride ld, 16-bit elements).
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const void* tile, int ld, int lane) {
#pragma unroll
    for (int r = 0; r < 4; ++r) a[r] = lds32(tile, mma_a_offset(lane, r, ld));
}

// B fragment (16 x 8) from an n-major tile: row n of `tile` holds B[0..15][n].
__device__ __forceinline__ void load_b_nmajor(uint32_t (&b)[2], const void* tile, int ld, int lane) {
#pragma unroll
    for (int r = 0; r < 2; ++r) b[r] = lds32(tile, mma_b_offset_nmajor(lane, r, ld));
}

// B fragment (16 x 8) from a k-major tile: row k of `tile` holds B[k][0..7].
__device__ __forceinline__ void load_b_kmajor(uint32_t (&b)[2], const void* tile, int ld, int lane) {
    const uint16_t* p = static_cast<const uint16_t*>(tile);
#pragma unroll
    for (int r = 0; r < 2; ++r)
        b[r] = static_cast<uint32_t>(p[mma_b_offset_kmajor(lane, 2 * r, ld)]) |
               (static_cast<uint32_t>(p[mma_b_offset_kmajor(lane, 2 * r + 1, ld)]) << 16);
}

// A fragment of k-step kk from the fp32 accumulators of n-tiles 2kk, 2kk+1 (rounded to T).
template <typename T, int NTILES>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c)[NTILES][4], int kk) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const float* src = c[2 * kk + c_to_a_ntile(r)];
        a[r] = MmaOp<T>::pack(src[c_to_a_elem(r)], src[c_to_a_elem(r) + 1]);
    }
}

// dst[r][0..D) (stride LD, T) = src rows first + r (row stride row_stride elements) for r < rows;
// rows at or past `limit` are zero. 16-byte copies when the source allows, else element copies.
template <typename T, int D, int LD, int NT>
__device__ __forceinline__ void stage_rows(T* dst, const T* __restrict__ src, int64_t row_stride, int first,
                                           int rows, int limit) {
    constexpr int VEC = 16 / sizeof(T);
    const bool vec_ok = (reinterpret_cast<uintptr_t>(src) % 16 == 0) && (row_stride % VEC == 0);
    if (vec_ok) {
        for (int e = threadIdx.x; e < rows * (D / VEC); e += NT) {
            const int r = e / (D / VEC), c = (e % (D / VEC)) * VEC;
            const int g = first + r;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (g < limit) v = *reinterpret_cast<const uint4*>(src + static_cast<int64_t>(g) * row_stride + c);
            *reinterpret_cast<uint4*>(dst + r * LD + c) = v;
        }
    } else {
        for (int e = threadIdx.x; e < rows * D; e += NT) {
            const int r = e / D, c = e % D;
            const int g = first + r;
            dst[r * LD + c] = g < limit ? src[static_cast<int64_t>(g) * row_stride + c] : from_f<T>(0.0f);
        }
    }
}

// The 4 adjacent lanes (a quad) that share an accumulator row: row reductions are group_sum / group_max<QUAD>.
constexpr int QUAD = 4;

// out[16 x 8*ntiles] (fp32, stride out_ld) = A(16 x D, row-major at a_tile) . B^T where B rows are the
// n-major rows of b_tile: one warp, the Q.T_slice^T / dO.T_slice^T projections of the band terms.
template <typename T, int D>
__device__ __forceinline__ void warp_project(float* out, int out_ld, const T* a_tile, const T* b_tile, int ld,
                                             int ntiles, int lane) {
    for (int nt = 0; nt < ntiles; ++nt) {
        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            uint32_t a[4], b[2];
            load_a(a, a_tile + kk * 16, ld, lane);
            load_b_nmajor(b, b_tile + nt * 8 * ld + kk * 16, ld, lane);
            MmaOp<T>::run(c, a, b);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const FragRC x = mma_c_elem(lane, e);
            out[x.row * out_ld + nt * 8 + x.col] = c[e];
        }
    }
}

// acc[D/8][4] += Bucket(16 x 16*ksteps, row-major T at bucket) . Tslice(16*ksteps x D, k-major at ts).
template <typename T, int D>
__device__ __forceinline__ void warp_bucket_times_table(float (&acc)[D / 8][4], const T* bucket, int bk_ld,
                                                        const T* ts, int ld, int ksteps, int lane) {
    for (int ks = 0; ks < ksteps; ++ks) {
        uint32_t a[4];
        load_a(a, bucket + ks * 16, bk_ld, lane);
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt) {
            uint32_t b[2];
            load_b_kmajor(b, ts + ks * 16 * ld + nt * 8, ld, lane);
            MmaOp<T>::run(acc[nt], a, b);
        }
    }
}

}  // namespace nezha
