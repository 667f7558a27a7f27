// Building blocks of the forward and backward kernels. Shared by both families (SIMT and tensor-core): fp32
// conversion, the per-(batch, head) setup and row statistics, the per-pair score and the backward's pair
// gradient, far-field masses, group reductions and the launchers. SIMT only: tile geometry, fp32 shared tiles,
// row dot products and the W . rows accumulation.
//
// SIMT thread layout: NT = 128 threads, a tile of BM = 32 "own" rows x BN = 32 "other" rows.
// Thread t owns row t / TPR and handles the other-side columns sub + TPR * c (sub = t % TPR) when
// computing scores, and the head-dim columns sub + TPR * c when accumulating. The TPR = 4 threads of one
// row are adjacent lanes of a warp, so row reductions are two xor-shuffles.
// Shared tiles are float32 with a padded row stride D + 1 so column-strided reads avoid bank conflicts.
#pragma once

#ifdef NEZHA_CUDA_EMULATE
#include "emu/cuda_emu.h"  // g++ on the CPU: the CUDA execution emulator (csrc/emu/)
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <type_traits>

#include "relattn.h"
#include "relattn_helpers.h"

// Dynamic shared memory and launches, spelled so that the CPU emulator can take them over:
//   NZ_DYNAMIC_SMEM(float, smem);  is  extern __shared__ float smem[];
//   NZ_LAUNCH(kernel, grid, block, smem, stream, args...);  is  kernel<<<grid, block, smem, stream>>>(args...);
// Under the emulator the first is a pointer to the block's buffer and the second runs the grid on CPU threads.
#ifdef NEZHA_CUDA_EMULATE
#define NZ_DYNAMIC_SMEM(type, name) type* const name = static_cast<type*>(::nezha::emu::dynamic_smem())
#define NZ_LAUNCH(kernel, grid, block, smem, stream, ...) \
    ::nezha::emu::launch(#kernel, kernel, grid, block, smem, stream, __VA_ARGS__)
#else
#define NZ_DYNAMIC_SMEM(type, name) extern __shared__ type name[]
#define NZ_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

namespace nezha {

template <int D_>
struct TileConfig {
    static constexpr int D = D_;
    static constexpr int BM = 32;           // own rows per block (queries in fwd / dQ, keys in dK dV)
    static constexpr int BN = 32;           // other-side rows per tile
    static constexpr int NT = 128;          // threads per block
    static constexpr int TPR = NT / BM;     // threads per own row
    static constexpr int CPT = BN / TPR;    // score columns per thread
    static constexpr int DPT = D / TPR;     // accumulator columns per thread
    static constexpr int DP = D + 1;        // padded smem row stride (floats)
    static constexpr int SP = BN + 1;       // padded stride of score tiles
    static constexpr int TROWS = BM + BN - 1;  // most table rows one tile can touch
    static_assert(D % TPR == 0 && BN % TPR == 0 && NT % 32 == 0 && 32 % TPR == 0, "tile geometry");
};

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// ---- per-(batch, head) setup ----

// The (batch, head) of this block (grid y = B * H; for a padding-free call b is the sequence): b and h index the
// inputs and masks, bh = b * H + h the dense outputs, the row statistics and the dropout stream (counter
// (j, i, bh, 0) with i, j within the sequence, as the dense kernels on the padded batch). packed: a padding-free
// call (the kernels' compile-time PACKED, so the dense kernels carry none of it); q_first / k_first: the sequence's
// first rows in the packed [T, H, D] tensors (0 when dense).
struct HeadIndex {
    int b;
    int h;
    int bh;
    bool packed;
    int q_first;
    int k_first;
};

template <bool PACKED>
__device__ __forceinline__ HeadIndex block_head(const AttnArgs& a) {
    HeadIndex head;
    head.bh = blockIdx.y;
    head.b = head.bh / a.H;
    head.h = head.bh % a.H;
    head.packed = PACKED;
    head.q_first = PACKED ? a.cu_seqlens_q[head.b] : 0;
    head.k_first = PACKED ? a.cu_seqlens_k[head.b] : 0;
    return head;
}

// The AttnArgs of a padding-free call's sequence b alone (Lq_b, Lk_b, its bottom-right offset q_offset = Lk_b -
// Lq_b, q / k / v at its first rows, batch strides 0). The PACKED kernels overwrite their parameter with it and run
// the dense code, returning at once when their tile starts past the sequence (no pad tile is computed). The dense
// kernels never write their parameter: a local copy of AttnArgs cost them up to +58 registers (fwd_tc).
template <typename T>
__device__ __forceinline__ AttnArgs sequence_args(const AttnArgs& args, HeadIndex head) {
    if (!head.packed) return args;
    AttnArgs a = args;
    a.Lq = sequence_span(args.cu_seqlens_q, head.b).len;
    a.Lk = sequence_span(args.cu_seqlens_k, head.b).len;
    a.q_offset = bottom_right_offset(a.Lq, a.Lk);
    a.q = static_cast<const T*>(args.q) + head.q_first * args.q_sl;
    a.k = static_cast<const T*>(args.k) + head.k_first * args.k_sl;
    a.v = static_cast<const T*>(args.v) + head.k_first * args.v_sl;
    a.q_sb = a.k_sb = a.v_sb = 0;
    return a;
}

// Output rows (of D elements) of the block's query i / key j: dense [B, H, L, D] contiguous, bh * L + i; varlen
// [T, H, D] contiguous, packed_row. row_step: rows between consecutive queries (keys) of one head.
__device__ __forceinline__ int64_t query_row(const AttnArgs& a, HeadIndex head, int i) {
    return head.packed ? packed_row(head.q_first, i, a.H, head.h) : static_cast<int64_t>(head.bh) * a.Lq + i;
}

__device__ __forceinline__ int64_t key_row(const AttnArgs& a, HeadIndex head, int j) {
    return head.packed ? packed_row(head.k_first, j, a.H, head.h) : static_cast<int64_t>(head.bh) * a.Lk + j;
}

__device__ __forceinline__ int row_step(const AttnArgs& a, HeadIndex head) { return head.packed ? a.H : 1; }

// The global inputs of one (batch, head): q, k, v at their strides, and the table every head shares.
template <typename T>
struct HeadInputs {
    const T* q;
    const T* k;
    const T* v;
    const T* table;
};

template <typename T>
__device__ __forceinline__ HeadInputs<T> head_inputs(const AttnArgs& a, HeadIndex head) {
    HeadInputs<T> in;
    in.q = static_cast<const T*>(a.q) + head.b * a.q_sb + head.h * a.q_sh;
    in.k = static_cast<const T*>(a.k) + head.b * a.k_sb + head.h * a.k_sh;
    in.v = static_cast<const T*>(a.v) + head.b * a.v_sb + head.h * a.v_sh;
    in.table = static_cast<const T*>(a.table);
    return in;
}

// Factor of every kept weight of head bh: 1 / (1 - dropout_p) times head_mask[bh] (1 when absent).
__device__ __forceinline__ float kept_weight_scale(const AttnArgs& a, int bh) {
    return dropout_rescale(a.dropout_p) * (a.head_mask != nullptr ? a.head_mask[bh] : 1.0f);
}

// A query row's forward statistics, lse [2, B, H, Lq] (varlen [2, H, Tq]): lse[0] the row max, lse[1] log of the
// row sum (apart, see relattn.h), and the backward's delta = dO . O [B, H, Lq] (varlen [H, Tq]).
struct RowStats {
    float max;
    float log_sum;
    float delta;
};
static_assert(sizeof(RowStats) == 3 * sizeof(float), "the shared-memory sizes count 3 floats per staged row");

// Index of query i's statistics in lse[0] / delta, and the distance from lse[0] to lse[1].
__device__ __forceinline__ int64_t stat_index(const AttnArgs& a, HeadIndex head, int i) {
    return head.packed ? packed_stat(head.q_first, i, a.Tq, head.h) : static_cast<int64_t>(head.bh) * a.Lq + i;
}

__device__ __forceinline__ int64_t stat_half(const AttnArgs& a, HeadIndex head) {
    return head.packed ? static_cast<int64_t>(a.H) * a.Tq : static_cast<int64_t>(a.B) * a.H * a.Lq;
}

__device__ __forceinline__ void store_row_stats(const AttnArgs& a, float* lse, HeadIndex head, int i, float m,
                                                float l) {
    const int64_t row = stat_index(a, head, i);
    lse[row] = m;
    lse[stat_half(a, head) + row] = logf(l);
}

// Statistics of query row i (zeros past Lq).
__device__ __forceinline__ RowStats load_row_stats(const AttnArgs& a, const float* __restrict__ lse,
                                                   const float* __restrict__ delta, HeadIndex head, int i) {
    RowStats s = {0.0f, 0.0f, 0.0f};
    if (i < a.Lq) {
        const int64_t row = stat_index(a, head, i);
        s.max = lse[row];
        s.log_sum = lse[stat_half(a, head) + row];
        s.delta = delta[row];
    }
    return s;
}

// True when key tile k0 lies in the causal future of every valid query of [q0, q0 + rows): all its pairs are masked.
__device__ __forceinline__ bool causal_future_tile(const AttnArgs& a, int q0, int rows, int k0) {
    return a.causal && tile_all_future(a.q_offset + min(q0 + rows, a.Lq) - 1, k0);
}

// True when every row of the query tile [q0, q0 + ROWS) may skip causal-future keys (row_skips_future_keys).
// With `stats` in shared memory every thread gets the same answer: the dK dV kernels skip a tile block-wide.
template <int ROWS>
__device__ __forceinline__ bool rows_skip_future_keys(const RowStats* stats, int q0, int Lq) {
    bool skip = true;
    for (int r = 0; r < min(ROWS, Lq - q0); ++r) skip = skip && row_skips_future_keys(true, stats[r].max);
    return skip;
}

// dK dV kernels, at streamed query tile [q0, q0 + ROWS): stages the tile's row statistics in stats_s, between the
// barriers that keep it from the previous tile's readers and from its own.
template <int ROWS>
__device__ __forceinline__ void stage_query_tile_stats(RowStats* stats_s, const AttnArgs& a, const float* lse,
                                                       const float* delta, HeadIndex head, int q0) {
    __syncthreads();  // previous tile fully consumed
    if (threadIdx.x < ROWS) stats_s[threadIdx.x] = load_row_stats(a, lse, delta, head, q0 + threadIdx.x);
    __syncthreads();
}

// ---- SIMT tiles: shared-memory staging, row dot products, accumulation ----

// dst[r][d] (stride DP) = src[(first + r) * row_stride + d] for r < rows, zero for rows past `limit`.
template <typename T, int D, int NT>
__device__ __forceinline__ void load_tile(float* dst, const T* __restrict__ src, int64_t row_stride, int first,
                                          int rows, int limit) {
    for (int e = threadIdx.x; e < rows * D; e += NT) {
        const int r = e / D, d = e % D;
        const int g = first + r;
        dst[r * (D + 1) + d] = g < limit ? to_f(src[static_cast<int64_t>(g) * row_stride + d]) : 0.0f;
    }
}

template <int D>
__device__ __forceinline__ float dot_row(const float* a, const float* b) {
    float s = 0.0f;
#pragma unroll 4
    for (int d = 0; d < D; ++d) s = fmaf(a[d], b[d], s);
    return s;
}

// a . (b + c): key plus its relative vector (or value plus its relative vector) in one pass.
template <int D>
__device__ __forceinline__ float dot_row_sum(const float* a, const float* b, const float* c) {
    float s = 0.0f;
#pragma unroll 4
    for (int d = 0; d < D; ++d) s = fmaf(a[d], b[d] + c[d], s);
    return s;
}

template <int TPR>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll 4
    for (int o = 1; o < TPR; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

template <int TPR>
__device__ __forceinline__ float group_max(float x) {
#pragma unroll 4
    for (int o = 1; o < TPR; o <<= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

// x . T[0] and x . T[2R] for the shared row x (stride-1 floats), split over the TPR threads of the row.
template <typename T, int D, int TPR>
__device__ __forceinline__ void edge_dots(const float* x, const T* __restrict__ table, int R, int sub,
                                          float& left, float& right) {
    left = 0.0f;
    right = 0.0f;
    const T* far_right = table + static_cast<int64_t>(2 * R) * D;
    for (int d = sub; d < D; d += TPR) {
        left = fmaf(x[d], to_f(table[d]), left);
        right = fmaf(x[d], to_f(far_right[d]), right);
    }
    left = group_sum<TPR>(left);
    right = group_sum<TPR>(right);
}

// Stages the table rows [tr.lo, tr.hi] of the [E + 1, D] table in Ts when the tile touches the band; a
// far-field tile needs only the edge scalars (edge_dots) and FarField's masses. Returns whether it staged them.
template <typename T, int D, int NT>
__device__ __forceinline__ bool load_band_rows(float* Ts, const T* __restrict__ table, TableRows tr, int R, int E) {
    const bool band = tile_in_band(tr, R);
    if (band) load_tile<T, D, NT>(Ts, table, D, tr.lo, tr.hi - tr.lo + 1, E + 1);
    return band;
}

// Key tile k0 of a query-owned block (forward, dQ; queries from q0): K and V rows into Ks / Vs and, for a band
// tile, its table rows into Ts (E = 2R). Returns the tile's table rows.
template <typename T, typename C>
__device__ __forceinline__ TableRows load_key_tile(float* Ks, float* Vs, float* Ts, const AttnArgs& a,
                                                   const HeadInputs<T>& in, int q0, int k0, int E) {
    const int pos_first = a.q_offset + q0;
    load_tile<T, C::D, C::NT>(Ks, in.k, a.k_sl, k0, C::BN, a.Lk);
    load_tile<T, C::D, C::NT>(Vs, in.v, a.v_sl, k0, C::BN, a.Lk);
    const TableRows tr = tile_table_rows(pos_first, pos_first + C::BM - 1, k0, k0 + C::BN - 1, a.R);
    load_band_rows<T, C::D, C::NT>(Ts, in.table, tr, a.R, E);
    return tr;
}

// acc[c] += sum over the tile's rows jl of w[jl] * rows[jl][sub + TPR c]: this thread's columns of W . rows
// (rows at stride DP), for the BN weights w of its own row.
template <typename C>
__device__ __forceinline__ void accumulate_rows(float (&acc)[C::DPT], const float* w, const float* rows, int sub) {
    for (int jl = 0; jl < C::BN; ++jl) {
        const float wj = w[jl];
        const float* row = rows + jl * C::DP + sub;
#pragma unroll
        for (int c = 0; c < C::DPT; ++c) acc[c] = fmaf(wj, row[C::TPR * c], acc[c]);
    }
}

// The table side of accumulate_rows for a band tile: acc[c] += w[jl] * T[idx][sub + TPR c] over the tile's
// interior pairs (query at pos, key k0 + jl; 0 < idx < E = 2R), T's rows staged in Ts from tr.lo; edge pairs
// are FarField's.
template <typename C>
__device__ __forceinline__ void accumulate_band_rows(float (&acc)[C::DPT], const float* w, const float* Ts,
                                                     TableRows tr, int k0, int pos, int R, int E, int sub) {
    for (int jl = 0; jl < C::BN; ++jl) {
        const int idx = relative_index(k0 + jl, pos, R);
        const float wj = w[jl];
        if (idx == 0 || idx == E || wj == 0.0f) continue;
        const float* trow = Ts + (idx - tr.lo) * C::DP + sub;
#pragma unroll
        for (int c = 0; c < C::DPT; ++c) acc[c] = fmaf(wj, trow[C::TPR * c], acc[c]);
    }
}

// x . (y + T[idx]) for one (row, key) pair: edge rows use the precomputed row scalars, band rows the
// tile's table rows Ts (first row = lo).
template <int D>
__device__ __forceinline__ float pair_dot(const float* x, const float* y, const float* Ts, int lo, int idx, int E,
                                          float x_left, float x_right) {
    if (idx == 0) return dot_row<D>(x, y) + x_left;
    if (idx == E) return dot_row<D>(x, y) + x_right;
    return dot_row_sum<D>(x, y, Ts + (idx - lo) * (D + 1));
}

// ---- per-pair scores, the backward's pair gradient, far-field masses ----

// Score of the valid pair (query i at position pos, key j) from its raw dot product (q.k + q.a).
__device__ __forceinline__ float pair_score(const AttnArgs& a, HeadIndex head, int i, int j, int pos, float dot) {
    float additive = 0.0f;
    if (a.additive_mask != nullptr)
        additive = a.additive_mask[head.b * a.am_sb + head.h * a.am_sh + i * a.am_sq + j * a.am_sk];
    const bool attend = a.key_padding == nullptr || a.key_padding[head.b * a.kp_sb + j * a.kp_sk] != 0;
    return finalize_score(dot, a.scale, additive, pair_masked(j, pos, a.causal, attend));
}

// Factor f of weight (bh, i, j): keep / (1 - p) times head_mask, kept_scale when dropout keeps it, else 0.
__device__ __forceinline__ float weight_factor(const AttnArgs& a, int bh, int i, int j, float kept_scale) {
    return dropout_keep(a.dropout_seed, a.dropout_p, bh, i, j) ? kept_scale : 0.0f;
}

// The backward of the valid pair (query i at position pos, key j) from its raw dot products dot = q.(k + a) and
// dw = dO.(v + a): p recomputed from the row's forward statistics, f = weight_factor, then dV's weight w = p f
// and the score gradient dS = p (dw f - delta).
struct PairGrad {
    float w;
    float ds;
};

__device__ __forceinline__ PairGrad pair_grad(const AttnArgs& a, HeadIndex head, int i, int j, int pos, float dot,
                                              float dw, const RowStats& row, float kept_scale) {
    const float p = softmax_weight(pair_score(a, head, i, j, pos, dot), row.max, row.log_sum);
    const float f = weight_factor(a, head.bh, i, j, kept_scale);
    PairGrad g;
    g.w = p * f;
    g.ds = p * (dw * f - row.delta);
    return g;
}

// A row's weights (forward) or dS (dQ) summed over its far-field pairs, idx 0 and 2R: those pairs share the
// table's edge rows T[0] / T[2R], which join the row's output once, at the end (plus_edge_rows).
struct FarField {
    float left;
    float right;

    // Adds w to the mass of an edge index; false (nothing added) for a band pair.
    __device__ __forceinline__ bool add(int idx, int E, float w) {
        if (idx == 0) left += w;
        else if (idx == E) right += w;
        else return false;
        return true;
    }
    __device__ __forceinline__ void rescale(float alpha) {
        left *= alpha;
        right *= alpha;
    }
    // Sums the partial masses of the LANES adjacent lanes that share the row.
    template <int LANES>
    __device__ __forceinline__ void reduce() {
        left = group_sum<LANES>(left);
        right = group_sum<LANES>(right);
    }
    // acc + left * T[0][d] + right * T[2R][d].
    template <typename T, int D>
    __device__ __forceinline__ float plus_edge_rows(float acc, const T* __restrict__ table, int R, int d) const {
        return acc + left * to_f(table[d]) + right * to_f(table[static_cast<int64_t>(2 * R) * D + d]);
    }
};

// ---- launchers (host) ----

// Makes `device` current for the launches in its scope and restores the caller's current device after: the
// current device belongs to the caller (torch's "current device" is the same per-thread runtime state).
class DeviceGuard {
  public:
    explicit DeviceGuard(int device) {
        if (cudaGetDevice(&previous_) != cudaSuccess) {
            error_ = "cudaGetDevice failed";
        } else if (previous_ != device) {
            if (cudaSetDevice(device) != cudaSuccess) error_ = "cudaSetDevice failed";
            else switched_ = true;
        }
    }
    ~DeviceGuard() {
        if (switched_) cudaSetDevice(previous_);
    }
    DeviceGuard(const DeviceGuard&) = delete;
    DeviceGuard& operator=(const DeviceGuard&) = delete;
    const char* error() const { return error_; }

  private:
    int previous_ = 0;
    bool switched_ = false;
    const char* error_ = nullptr;
};

// Allows `smem` bytes of dynamic shared memory for `kernel` on the current device `device`.
template <typename K>
inline const char* prepare_launch(K kernel, int device, size_t smem) {
    int optin = 0;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
        return "cudaDeviceGetAttribute failed";
    if (static_cast<size_t>(optin) < smem)
        return "this head dim needs more shared memory per block than the device allows (needs sm_80/sm_90 class)";
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

inline const char* launch_status() {
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// Launches `kernel(a, args...)` on `device` and `stream` (the caller's current device is kept) with one block of
// C::NT threads per C::BM own rows (of `rows`: the longest sequence's for varlen) and (batch, head), and `smem`
// bytes of dynamic shared memory; nullptr or the error message. An empty grid (no rows, or no heads) launches
// nothing.
template <typename C, typename K, typename... Args>
inline const char* launch_row_blocks(K kernel, int rows, size_t smem, const AttnArgs& a, int device, void* stream,
                                     Args... args) {
    const DeviceGuard guard(device);
    if (guard.error()) return guard.error();
    if (const char* err = prepare_launch(kernel, device, smem)) return err;
    const dim3 grid((rows + C::BM - 1) / C::BM, a.B * a.H);
    if (grid.x == 0 || grid.y == 0) return nullptr;
    NZ_LAUNCH(kernel, grid, C::NT, smem, static_cast<cudaStream_t>(stream), a, args...);
    return launch_status();
}

// The compile-time element type and head dim a launcher lambda receives from dispatch_kernel.
template <typename T> struct ElementType { using type = T; };
template <int D> using HeadDim = std::integral_constant<int, D>;

template <typename T, typename F>
inline const char* dispatch_head_dim(int head_dim, F& launch) {
    switch (head_dim) {
        case 32: return launch(ElementType<T>{}, HeadDim<32>{});
        case 64: return launch(ElementType<T>{}, HeadDim<64>{});
        case 128: return launch(ElementType<T>{}, HeadDim<128>{});
        default: return "head dim must be 32, 64 or 128";
    }
}

// launch(std::bool_constant<PACKED>{}): the kernels' compile-time layout, padding-free (cu_seqlens set) or dense.
template <typename F>
inline const char* dispatch_layout(const AttnArgs& a, F&& launch) {
    return a.cu_seqlens_q != nullptr ? launch(std::true_type{}) : launch(std::false_type{});
}

// launch(ElementType<T>{}, HeadDim<D>{}) for the runtime dtype and head dim: every kernel instantiation of a
// family the extension ships. The tensor-core family takes fp16 / bf16 only (float32 is the SIMT kernels' alone).
template <Impl FAMILY, typename F>
inline const char* dispatch_kernel(DType dtype, int head_dim, F&& launch) {
    switch (dtype) {
        case DType::F16: return dispatch_head_dim<__half>(head_dim, launch);
#ifndef NEZHA_NO_BF16  // the compile check's reduced scope on one arch (compile_check/nvcc.py): never in a build
        case DType::BF16: return dispatch_head_dim<__nv_bfloat16>(head_dim, launch);
#endif
        case DType::F32:
            if constexpr (FAMILY == Impl::TC)
                return "the tensor-core kernels take float16 / bfloat16 (float32 uses the SIMT kernels)";
            else
                return dispatch_head_dim<float>(head_dim, launch);
    }
    return "unsupported dtype";
}

}  // namespace nezha
