// Tensor-core building blocks (sm_80+): mma.sync m16n8k16 with fp32 accumulators for fp16 / bf16, fragment
// loads from padded shared tiles (offsets from relattn_mma.h, CPU-tested), warp products built on them (mma_b,
// warp_mma_abt, warp_mma_acc_b), loops over a warp's accumulators (for_each_acc), and the staging of key tiles and
// of each warp's table slice.
//
// Tile geometry of the TC kernels: NT = 128 threads = 4 warps. The backward (TcConfig): a block owns BM = 64
// rows, each warp 16 of them (the mma's M), and streams BN = 64 other-side rows per tile. The forward
// (TcFwdConfig): MT row tiles of 16 per warp (FlashAttention-2's 32 rows per warp at D <= 64: every K and V fragment
// feeds two mma rows). Shared tiles keep the input dtype with row stride D + 8 (16-byte aligned rows,
// conflict-free fragment loads).
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

// Forward tiles: MT row tiles of 16 per warp, BM = 64 MT query rows per block, BN = 64 keys per tile. MT = 2 (128 x
// 64 blocks) wherever it compiles without spills: D <= 64, except the GENERAL padding-free kernel at D = 64. D = 128
// keeps 64 x 64: 128 x 64 does not fit sm_80's 163 KiB of shared memory (178,176 B), and 128 x 32 would cost more
// instructions per score (the O rescale and the row statistics per 32 columns). Measurements: benchmarks/NOTES.md,
// "CUDA forward: 128-row query blocks". Band tiles work one row tile at a time through a 16-row scratch.
// The rotation kernels (features 2, relattn_rotation.cuh) follow the PLAIN rule: 128-row blocks at D = 64 too, their
// band loop keeping one row tile's statistics in registers at a time (benchmarks/NOTES.md "CUDA rotation forward at
// D = 64: 128-row blocks").
NZ_HD constexpr int fwd_row_tiles(int d, bool packed, int features) {
    return d >= 128 || (d == 64 && packed && features == 1) ? 1 : 2;  // features 1: GENERAL
}
// Whether the far loop holds Q's fragments in registers (else ldmatrix reloads them per tile): where that does not
// spill (every one-row-tile kernel and D = 32; at D = 64 with two row tiles, only the PLAIN dense kernel), except
// the rotation kernels (the dense D = 64 one spilled).
NZ_HD constexpr bool fwd_q_in_registers(int d, bool packed, int features) {
    return features != 2 &&
           (d <= 32 || fwd_row_tiles(d, packed, features) == 1 || (d == 64 && !packed && features == 0));
}

template <int D_, int MT_>
struct TcFwdConfig {
    static constexpr int D = D_;
    static constexpr int MT = MT_;                // m16 row tiles per warp
    static constexpr int NT = 128;
    static constexpr int WARPS = NT / 32;
    static constexpr int WROWS = 16 * MT;         // query rows per warp
    static constexpr int BM = WARPS * WROWS;      // query rows per block
    static constexpr int BN = 64;                 // keys per tile
    static constexpr int LD = D + 8;              // == tc_row_stride(D)
    static constexpr int WCOLS = (16 + BN - 1 + 15) / 16 * 16;  // table slice of one row tile, multiple of 16
    static constexpr int QT_LD = WCOLS + 4;       // floats, per-warp Q.T_slice^T scratch (one row tile)
    static constexpr int BK_LD = WCOLS + 8;       // 16-bit elements, per-warp bucket (aliases the scratch)
    static constexpr int TS_ROWS = BM - 16 + WCOLS;  // staged table rows: the last row tile's slice starts BM - 16 in
    static_assert(WARPS * WROWS == BM && WCOLS % 16 == 0 && WCOLS >= 16 + BN - 1, "row tile slice geometry");
    static_assert(BN % 16 == 0 && D % 16 == 0, "whole ldmatrix x4 fragments");
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

// How a B operand tile is stored: K_MAJOR, row k holds B[k][0..n) (V rows for P.V, table rows for Bucket.T);
// N_MAJOR, row n holds B[0..16)[n] (K rows for Q.K^T, table rows for Q.T^T).
enum class BLayout { K_MAJOR, N_MAJOR };

// B fragment of the 16 x 8 n-tile nt of b_tile.
template <BLayout L, typename T>
__device__ __forceinline__ void load_b_ntile(uint32_t (&b)[2], const T* b_tile, int nt, int ld, int lane) {
    if constexpr (L == BLayout::N_MAJOR) load_b_nmajor(b, b_tile + nt * 8 * ld, ld, lane);
    else load_b_kmajor(b, b_tile + nt * 8, ld, lane);
}

// c[nt] += A . B over the NTILES n-tiles of B, A one loaded 16 x 16 fragment.
template <BLayout L, typename T, int NTILES>
__device__ __forceinline__ void mma_b(float (&c)[NTILES][4], const uint32_t (&a)[4], const T* b_tile, int ld,
                                      int lane) {
#pragma unroll
    for (int nt = 0; nt < NTILES; ++nt) {
        uint32_t b[2];
        load_b_ntile<L>(b, b_tile, nt, ld, lane);
        MmaOp<T>::run(c[nt], a, b);
    }
}

// Two such products computed together (the backward's S and dP, dV and dK): c0 += A0 . B0 and c1 += A1 . B1,
// interleaved per n-tile; one after the other costs up to 4 more registers in the TC backward kernels.
template <BLayout L, typename T, int NTILES>
__device__ __forceinline__ void mma_b_pair(float (&c0)[NTILES][4], const uint32_t (&a0)[4], const T* b0,
                                           float (&c1)[NTILES][4], const uint32_t (&a1)[4], const T* b1, int ld,
                                           int lane) {
#pragma unroll
    for (int nt = 0; nt < NTILES; ++nt) {
        uint32_t b[2];
        load_b_ntile<L>(b, b0, nt, ld, lane);
        MmaOp<T>::run(c0[nt], a0, b);
        load_b_ntile<L>(b, b1, nt, ld, lane);
        MmaOp<T>::run(c1[nt], a1, b);
    }
}

// c += A . B^T over the head dim D: one warp's 16 x 8 * NTILES block of, e.g., S = Q.K^T (A rows at a_tile, B rows
// at b_tile, both [rows][D] with stride ld).
template <typename T, int D, int NTILES>
__device__ __forceinline__ void warp_mma_abt(float (&c)[NTILES][4], const T* a_tile, const T* b_tile, int ld,
                                             int lane) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[4];
        load_a(a, a_tile + kk * 16, ld, lane);
        mma_b<BLayout::N_MAJOR>(c, a, b_tile + kk * 16, ld, lane);
    }
}

// acc[D/8][4] += P . B: P (16 x 8 * NTILES) from the fp32 accumulators p, rounded to T (flash-attention register
// reuse); B's rows k-major at b_tile (O += P.V, dQ += dS.K).
template <typename T, int NTD, int NTILES>
__device__ __forceinline__ void warp_mma_acc_b(float (&acc)[NTD][4], const float (&p)[NTILES][4], const T* b_tile,
                                               int ld, int lane) {
#pragma unroll
    for (int kk = 0; kk < NTILES / 2; ++kk) {
        uint32_t a[4];
        acc_to_a<T, NTILES>(a, p, kk);
        mma_b<BLayout::K_MAJOR>(acc, a, b_tile + kk * 16 * ld, ld, lane);
    }
}

template <int NTILES>
__device__ __forceinline__ void zero_acc(float (&c)[NTILES][4]) {
#pragma unroll
    for (int nt = 0; nt < NTILES; ++nt) c[nt][0] = c[nt][1] = c[nt][2] = c[nt][3] = 0.0f;
}

// stage_rows by element copies (sources that do not allow 16-byte copies); not unrolled, so that a kernel keeps no
// per-thread addresses of this rare path in registers.
template <typename T, int D, int LD, int NT>
__device__ __forceinline__ void stage_rows_elementwise(T* dst, const T* __restrict__ src, int64_t row_stride,
                                                       int first, int rows, int limit) {
#pragma unroll 1
    for (int e = threadIdx.x; e < rows * D; e += NT) {
        const int r = e / D, c = e % D;
        const int g = first + r;
        dst[r * LD + c] = g < limit ? src[static_cast<int64_t>(g) * row_stride + c] : from_f<T>(0.0f);
    }
}

// dst[r][0..D) (stride LD, T) = src rows first + r (row stride row_stride elements) for r < rows;
// rows at or past `limit` are zero. 16-byte copies when the source allows, else element copies. ROLLED: loops not
// unrolled (the forward's per-tile table rows: unrolled copies keep addresses in registers its loops lack).
template <typename T, int D, int LD, int NT, bool ROLLED = false>
__device__ __forceinline__ void stage_rows(T* dst, const T* __restrict__ src, int64_t row_stride, int first,
                                           int rows, int limit) {
    constexpr int VEC = 16 / sizeof(T);
    const bool vec_ok = (reinterpret_cast<uintptr_t>(src) % 16 == 0) && (row_stride % VEC == 0);
    auto copy = [&](int e) {
        const int r = e / (D / VEC), c = (e % (D / VEC)) * VEC;
        const int g = first + r;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (g < limit) v = *reinterpret_cast<const uint4*>(src + static_cast<int64_t>(g) * row_stride + c);
        *reinterpret_cast<uint4*>(dst + r * LD + c) = v;
    };
    if (vec_ok && ROLLED) {
#pragma unroll 1
        for (int e = threadIdx.x; e < rows * (D / VEC); e += NT) copy(e);
    } else if (vec_ok) {
        for (int e = threadIdx.x; e < rows * (D / VEC); e += NT) copy(e);
    } else {
        stage_rows_elementwise<T, D, LD, NT>(dst, src, row_stride, first, rows, limit);
    }
}

// f(nt, e, tile_row, tile_col) for every element c[nt][e] of a warp's 16 x 8 * NTILES fp32 accumulator tile: its
// row (0..15; e >> 1 tells the lane's first row from its second, 8 below) and column (nt * 8 + 0..7).
template <int NTILES, typename F>
__device__ __forceinline__ void for_each_acc(int lane, F&& f) {
#pragma unroll
    for (int nt = 0; nt < NTILES; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const FragRC x = mma_c_elem(lane, e);
            f(nt, e, x.row, nt * 8 + x.col);
        }
}

// f(nt, e, col) for the elements of the lane's accumulator row r (e = 2r, 2r + 1 of every n-tile) and their
// columns col = nt * 8 + 0..7: the epilogues, which store a row at a time.
template <int NTILES, typename F>
__device__ __forceinline__ void for_each_acc_in_row(int lane, int r, F&& f) {
#pragma unroll
    for (int nt = 0; nt < NTILES; ++nt)
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) f(nt, e, nt * 8 + mma_c_elem(lane, e).col);
}

// The 4 adjacent lanes (a quad) that share an accumulator row: row reductions are group_sum / group_max<QUAD>.
constexpr int QUAD = 4;

// This lane's accumulator rows of its warp's MT row tiles of 16 from row0: rows 2 mt and 2 mt + 1 are fragment rows
// g and g + 8 of row tile mt. Index, position q_offset + index, and whether it is below Lq.
template <int MT = 1>
struct LaneQueries {
    int i[2 * MT];
    int pos[2 * MT];
    bool valid[2 * MT];
};

template <int MT = 1>
__device__ __forceinline__ LaneQueries<MT> lane_queries(const AttnArgs& a, int row0, int lane) {
    LaneQueries<MT> q;
#pragma unroll
    for (int r = 0; r < 2 * MT; ++r) {
        q.i[r] = row0 + 16 * (r >> 1) + mma_c_elem(lane, 2 * (r & 1)).row;
        q.pos[r] = a.q_offset + q.i[r];
        q.valid[r] = q.i[r] < a.Lq;
    }
    return q;
}

// Key tile k0 of a query-owned block (forward, dQ; BN keys, queries from q0): K and V rows into Ks / Vs, and into
// Ts the tile's table rows from tr.lo, padded to cover every warp's 16-aligned slice (rows past E = 2R are zero).
// Returns the tile's table rows tr.
template <typename T, typename C, int BN>
__device__ __forceinline__ TableRows stage_key_tile(T* Ks, T* Vs, T* Ts, const AttnArgs& a, const HeadInputs<T>& in,
                                                    int q0, int k0, int E) {
    const int pos_first = a.q_offset + q0;
    stage_rows<T, C::D, C::LD, C::NT>(Ks, in.k, a.k_sl, k0, BN, a.Lk);
    stage_rows<T, C::D, C::LD, C::NT>(Vs, in.v, a.v_sl, k0, BN, a.Lk);
    const TableRows tr = tile_table_rows(pos_first, pos_first + C::BM - 1, k0, k0 + BN - 1, a.R);
    stage_rows<T, C::D, C::LD, C::NT>(Ts, in.table, C::D, tr.lo, tc_table_stage_rows(tr, 16, C::TS_ROWS), E + 1);
    return tr;
}

// The table rows one warp's 16 query rows [row0, row0 + 16) touch in key tile [k0, k0 + BN): `rows`, their staged
// copy `ts` in the block's Ts (staged from block_lo) and how many there are.
template <typename T>
struct WarpSlice {
    TableRows rows;
    const T* ts;
    int count;
};

template <typename T, int LD, int BN>
__device__ __forceinline__ WarpSlice<T> warp_table_slice(const T* Ts, int block_lo, const AttnArgs& a, int row0,
                                                         int k0) {
    WarpSlice<T> w;
    w.rows = tile_table_rows(a.q_offset + row0, a.q_offset + row0 + 15, k0, k0 + BN - 1, a.R);
    w.ts = Ts + (w.rows.lo - block_lo) * LD;
    w.count = w.rows.hi - w.rows.lo + 1;
    return w;
}

// Zeroes a warp's bucket [16][BK_LD] (16-bit weights per table row of its slice) and makes that visible to the warp.
template <int BK_LD, typename T>
__device__ __forceinline__ void clear_warp_bucket(T* bucket, int lane) {
    uint32_t* z = reinterpret_cast<uint32_t*>(bucket);
    for (int e = lane; e < 16 * BK_LD / 2; e += 32) z[e] = 0u;
    __syncwarp();
}

// out[16 x 8*ntiles] (fp32, stride out_ld) = A(16 x D, row-major at a_tile) . B^T where B rows are the
// n-major rows of b_tile: one warp, the Q.T_slice^T / dO.T_slice^T projections of the band terms.
template <typename T, int D>
__device__ __forceinline__ void warp_project(float* out, int out_ld, const T* a_tile, const T* b_tile, int ld,
                                             int ntiles, int lane) {
    for (int nt = 0; nt < ntiles; ++nt) {
        float c[1][4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
        warp_mma_abt<T, D>(c, a_tile, b_tile + nt * 8 * ld, ld, lane);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const FragRC x = mma_c_elem(lane, e);
            out[x.row * out_ld + nt * 8 + x.col] = c[0][e];
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
        mma_b<BLayout::K_MAJOR>(acc, a, ts + ks * 16 * ld, ld, lane);
    }
}

}  // namespace nezha
