// Fused tensor-core backward (fp16 / bf16, sm_80+): dK, dV and dQ in one kernel per key block, FlashAttention-2's
// structure. A block owns BM = 64 keys (16 per warp) and streams query tiles of QN = 32 rows (relattn_bwd_tc.cuh:
// table projections, S^T and dP^T by mma, the pair gradients W^T and dS^T, dK and dV accumulated in registers, as the
// two-kernel backward's dK dV kernel). The tile's dQ contribution
//     dQ_i += sum_j dS_ij (k_j + a_ij) = (dS . K)_i + sum_m Bucket(dS)[i][m] T[m]
// is one more set of mmas: dS goes through shared memory (dS^T, [key][query], DsTile: the A operand of dS . K and
// the block's source for the bucket), each warp computes 16 query rows x D / 2 columns and adds them with atomicAdd
// into an fp32 accumulator in global memory (zeroed by the caller); relattn_bwd_dq_convert_kernel then writes
// dq = scale * acc in the output dtype.
// The relative part: a far tile (every pair of the tile on one side, |j - i| >= R) uses one table
// row, T[0] or T[2R], so its bucket is one column, the row sums of dS (one more mma with a B of ones) times that row
// (one more k-step); a band tile fills a [QN][96] bucket in shared memory (interior pairs by index, the two edge
// columns summed per row) and multiplies it by the staged table rows.
//
// Determinism: the atomics make dQ's summation order run-dependent; the two-kernel backward (relattn_bwd_tc.cu)
// stays the deterministic mode (the caller picks: torch.are_deterministic_algorithms_enabled()).
#include "relattn_async.cuh"
#include "relattn_bwd_tc.cuh"

namespace nezha {

// dS^T of a tile in shared memory: [BM keys][QN = 32 queries], input dtype, each row four 16-byte chunks of 8 queries,
// chunk c of key row j stored at chunk c ^ ((j >> 1) & 3). What a lane's accumulators hold (one key, two adjacent
// queries) is one 32-bit store, and dQ reads A = dS (query x key) by ldmatrix .trans; the swizzle keeps both free of
// bank conflicts without padding (a [64][40] tile would take 512 B more: sm_80's second block per SM).
struct DsTile {
    static constexpr int QN = 32;
    // Element index of (key row j, query column q).
    __device__ __forceinline__ static int elem(int j, int q) {
        return j * QN + (((q >> 3) ^ ((j >> 1) & 3)) << 3) + (q & 7);
    }
    // The element index of this lane's accumulator pair (key row warp * 16 + g, queries 2c, 2c + 1) in query n-tile nt
    // is (store_base ^ (nt << 3)) + 8 QN h for the key row g + 8 h: the row's chunk bits, (key >> 1) & 3, do not
    // change by 8 rows, and bits 3-4 of store_base are the swizzle alone (j QN + 2c has none there).
    __device__ __forceinline__ static int store_base(int warp, int lane) {
        return elem(warp * 16 + (lane >> 2), 2 * (lane & 3));
    }
    // This lane's ldmatrix .trans row address (elements) for the A fragment of query rows qr0 .. qr0 + 15 and keys
    // 0 .. 15 (k-step kk adds kk * 16 * QN): matrices (keys 0-7 | 8-15) x (queries qr0 + 0-7 | + 8-15).
    __device__ __forceinline__ static int a_trans_offset(int qr0, int lane) {
        return elem((lane >> 4) * 8 + (lane & 7), qr0 + (lane >> 3 & 1) * 8);
    }
};

// Shared memory of the fused kernel: the dK dV kernel's tiles (the edge rows, two buffers of Q, dO and the row
// statistics) plus dS^T ([BM][QN], DsTile). A band tile's bucket ([QN][TB_COLS + 8], input dtype) aliases the fp32
// projections (read by the pair gradients before the barrier that publishes dS; the bucket is filled after it).
template <int D>
struct FusedLayout {
    using C = TcConfig<D>;
    static constexpr int BK_LD = C::TB_COLS + 8;
    static constexpr size_t bytes() {
        return 2 * ((EDGE_ROWS + 2 * C::BM + 4 * C::QN + C::TB_COLS) * C::LD + C::BM * C::QN) +
               4 * (2 * C::QN * C::TB_LD + 2 * 3 * C::QN);
    }
    static_assert(C::QN == DsTile::QN, "dS^T rows of four 16-byte chunks");
    static_assert(C::NT == 4 * C::QN, "the band bucket gives 4 threads to each query row");
    static_assert(C::WARPS == 4 && C::QN == 32, "dQ: 4 warps of 16 query rows x D / 2 columns");
    static_assert(2 * C::QN * BK_LD <= 4 * 2 * C::QN * C::TB_LD, "the bucket fits in the projections' space");
    static_assert(BK_LD * 2 % 16 == 0, "bucket rows of whole 16-byte chunks");
};

// Band tile: Bk[il][idx - lo] = dS of the interior pair (il, key with index idx) (one key per index and row), and the
// row's edge columns (idx 0, 2R, when the tile has them) = the sums of its far-left / far-right dS; the other columns
// zero. 4 threads a row, one warp's lanes (the row is cleared and filled by them alone: a warp barrier between).
template <typename T, int D>
__device__ __forceinline__ void fill_band_bucket(T* Bk, const T* dSs, const AttnArgs& a, TableRows tr, int pos_first,
                                                 int k0) {
    using L = FusedLayout<D>;
    const int il = threadIdx.x / 4, sub = threadIdx.x % 4, pos = pos_first + il, E = 2 * a.R;
    constexpr int CHUNKS = L::BK_LD * 2 / 16;
    uint4* z = reinterpret_cast<uint4*>(Bk + il * L::BK_LD);
    for (int c = sub; c < CHUNKS; c += 4) z[c] = make_uint4(0u, 0u, 0u, 0u);
    __syncwarp();
    float left = 0.0f, right = 0.0f;
    // dS^T (key jl = sub + 4c, query il): elem(sub, il) + 4c QN, its chunk's swizzle bit 1 flipped for odd c
    const int ds_even = DsTile::elem(sub, il), ds_odd = ds_even ^ 16;
    for (int c = 0; c < TcConfig<D>::BM / 4; ++c) {
        const int jl = sub + 4 * c;
        const int idx = relative_index(k0 + jl, pos, a.R);
        const T x = dSs[(c & 1 ? ds_odd : ds_even) + 4 * c * DsTile::QN];
        if (idx == 0) left += to_f(x);
        else if (idx == E) right += to_f(x);
        else Bk[il * L::BK_LD + idx - tr.lo] = x;
    }
    left = group_sum<4>(left);
    right = group_sum<4>(right);
    if (sub == 0 && tr.lo == 0) Bk[il * L::BK_LD] = from_f<T>(left);
    if (sub == 0 && tr.hi == E) Bk[il * L::BK_LD + E - tr.lo] = from_f<T>(right);
}

// acc[0 .. NTP) += A . B, A one loaded 16 x 16 fragment, B's NTP n-tiles from the k-major tile at b_lane (this
// lane's ldmatrix row address: tile + ldsm_b_kmajor_offset), two n-tiles per ldmatrix .x4 .trans.
template <typename T, int NTP>
__device__ __forceinline__ void mma_kmajor_ldsm(float (&acc)[NTP][4], const uint32_t (&af)[4], const T* b_lane) {
#pragma unroll
    for (int np = 0; np < NTP / 2; ++np) {
        uint32_t b4[4];
        ldsm_x4_trans(b4, b_lane + np * 16);
        const uint32_t b0[2] = {b4[0], b4[1]}, b1[2] = {b4[2], b4[3]};
        MmaOp<T>::run(acc[2 * np], af, b0);
        MmaOp<T>::run(acc[2 * np + 1], af, b1);
    }
}

// Where this lane adds into dq_acc: its rows g and g + 8 of the warp's 16 query rows of the tile (rows qr0 + g, +8)
// from its first column (the warp's column half, + 2 (lane % 4)); set up once per key block and advanced by one
// increment per query tile, so that each atomic's address is this pointer plus an immediate.
struct DqLaneRows {
    float* p;      // row g of the current tile, this lane's first column
    int64_t row8;  // from row g to row g + 8
    int64_t tile;  // QN query rows
    int i;         // query index of row g in the current tile

    template <int D, int QN>
    __device__ __forceinline__ static DqLaneRows make(float* dq_acc, const AttnArgs& a, HeadIndex head, int warp,
                                                      int lane) {
        const FragRC x = mma_c_elem(lane, 0);
        DqLaneRows d;
        d.i = (warp & 1) * 16 + x.row;
        d.p = dq_acc + query_row(a, head, d.i) * D + (warp >> 1) * (D / 2) + x.col;
        d.row8 = static_cast<int64_t>(8) * row_step(a, head) * D;
        d.tile = static_cast<int64_t>(QN) * row_step(a, head) * D;
        return d;
    }
    __device__ __forceinline__ void advance(int qn) {
        p += tile;
        i += qn;
    }
};

// Far tile: acc += rowsum(dS) * T[0] (far left) or T[2R] (far right), a bucket k-step whose only nonzero column is 0
// or 1 (Te rows 0, 1 = T[0], T[2R], then zeros and K rows: stage_edge_rows). rowsum: the row sums of dS (mma layout).
template <typename T, int NTP>
__device__ __forceinline__ void dq_edge_far_tile(float (&acc)[NTP][4], const float (&rowsum)[4], const T* te_lane,
                                                 bool right, int lane) {
    uint32_t af[4] = {0u, 0u, 0u, 0u};
    if (lane % 4 == 0) {
        af[0] = right ? MmaOp<T>::pack(0.0f, rowsum[0]) : MmaOp<T>::pack(rowsum[0], 0.0f);
        af[1] = right ? MmaOp<T>::pack(0.0f, rowsum[2]) : MmaOp<T>::pack(rowsum[2], 0.0f);
    }
    mma_kmajor_ldsm<T, NTP>(acc, af, te_lane);
}

// Band tile: acc += Bucket . T[lo .. lo + kcols), at most TB_COLS / 16 k-steps (bk_lane: this lane's ldmatrix address
// in the warp's bucket rows, ts_lane: in the staged table rows, k-major).
template <typename T, int D, int NTP>
__device__ __forceinline__ void dq_bucket_band_tile(float (&acc)[NTP][4], const T* bk_lane, const T* ts_lane,
                                                    int kcols) {
    using C = TcConfig<D>;
#pragma unroll
    for (int ks = 0; ks < C::TB_COLS / 16; ++ks) {
        if (ks < kcols / 16) {
            uint32_t af[4];
            ldsm_x4(af, bk_lane + ks * 16);
            mma_kmajor_ldsm<T, NTP>(acc, af, ts_lane + ks * 16 * C::LD);
        }
    }
}

// One warp's share of the tile's dQ (16 query rows from qr0, D / 2 columns from dc0), added into dq_acc (dq); at D = 128
// in two passes of 32 columns (the accumulators of one pass: 16 registers, as at D = 64; one pass spilled). Fragments
// by ldmatrix (A from dS / the bucket, B .trans from K / the table rows).
template <typename T, int D>
__device__ __forceinline__ void warp_add_dq(const DqLaneRows& dq, const T* dSs, const T* Ks, const T* Te, const T* Ts,
                                            const T* Bk, bool band, bool right, int q0, int k0, const AttnArgs& a,
                                            int ds_a, int b_k, int warp, int lane) {
    using C = TcConfig<D>;
    using L = FusedLayout<D>;
    constexpr int PASSES = D >= 128 ? 2 : 1, COLS = D / 2 / PASSES, NTP = COLS / 8, LD = C::LD;
    static_assert(NTP % 2 == 0, "n-tiles in pairs (ldmatrix .x4)");
    const int qr0 = (warp & 1) * 16;
    const T* ds_lane = dSs + ds_a;
    const T* bk_lane = Bk + qr0 * L::BK_LD + ldsm_a_offset(lane, L::BK_LD);
    const uint32_t one = MmaOp<T>::pack(1.0f, 1.0f);
    const uint32_t ones[2] = {one, one};
    float rowsum[1][4];
    zero_acc(rowsum);
#pragma unroll
    for (int pass = 0; pass < PASSES; ++pass) {
        const int dc0 = (warp >> 1) * (D / 2) + pass * COLS;
        const int b_off = dc0 + b_k;  // ldsm_b_kmajor_offset(lane, LD)
        float acc[NTP][4];
        zero_acc(acc);
#pragma unroll
        for (int kk = 0; kk < C::BM / 16; ++kk) {  // dQ += dS . K, and a far tile's row sums of dS
            uint32_t af[4];
            ldsm_x4_trans(af, ds_lane + kk * 16 * DsTile::QN);
            mma_kmajor_ldsm<T, NTP>(acc, af, Ks + kk * 16 * LD + b_off);
            if (pass == 0 && !band) {  // profile: far
                MmaOp<T>::run(rowsum[0], af, ones);
            }
        }
        if (!band) {  // profile: far
            dq_edge_far_tile<T, NTP>(acc, rowsum[0], Te + b_off, right, lane);
        } else {  // profile: band
            dq_bucket_band_tile<T, D, NTP>(acc, bk_lane, Ts + b_off, band_tile_kcols(band_tile_rows<C>(a, q0, k0)));
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            if (dq.i + 8 * r >= a.Lq) continue;
            float* row = dq.p + r * dq.row8 + pass * COLS;
#pragma unroll
            for (int nt = 0; nt < NTP; ++nt) {
                atomicAdd(row + nt * 8, acc[nt][2 * r]);
                atomicAdd(row + nt * 8 + 1, acc[nt][2 * r + 1]);
            }
        }
    }
}

template <typename T, int D, bool PACKED, int FEATURES>
__global__ void __launch_bounds__(TcConfig<D>::NT, 1)
relattn_bwd_fused_tc_kernel(AttnArgs a, const T* __restrict__ dout, const float* __restrict__ lse,
                            const float* __restrict__ delta, float* __restrict__ dq_acc, T* __restrict__ dk,
                            T* __restrict__ dv) {
    using C = TcConfig<D>;
    using L = FusedLayout<D>;
    constexpr Features F = static_cast<Features>(FEATURES);
    constexpr int BM = C::BM, QN = C::QN, NT = C::NT, LD = C::LD, NTD = D / 8, NTQ = QN / 8, TB_LD = C::TB_LD;
    NZ_DYNAMIC_SMEM(__align__(16) unsigned char, smem_raw);
    T* Te = reinterpret_cast<T*>(smem_raw);  // [EDGE_ROWS][LD]: T[0], T[2R], zeros (far tiles; Ks follows)
    T* Ks = Te + EDGE_ROWS * LD;
    T* Vs = Ks + BM * LD;
    T* Qb = Vs + BM * LD;       // [2][QN][LD]: Q of this tile and of the next
    T* dOb = Qb + 2 * QN * LD;  // [2][QN][LD]: dO
    T* Ts = dOb + 2 * QN * LD;  // a band tile's table rows
    T* dSs = Ts + C::TB_COLS * LD;  // [BM][QN]: dS^T of the tile, [key][query] (DsTile)
    float* qtb = reinterpret_cast<float*>(dSs + BM * QN);  // [QN][TB_LD]: q_i . T[lo + c]
    float* dotb = qtb + QN * TB_LD;                             // [QN][TB_LD]: dO_i . T[lo + c]
    T* Bk = reinterpret_cast<T*>(qtb);  // [QN][BK_LD]: a band tile's bucket, once the projections are read
    RowStats* stats_b = reinterpret_cast<RowStats*>(dotb + QN * TB_LD);  // [2][QN]

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    KeyBlock<T> kb;
    if (!setup_key_block<T, C, PACKED>(kb, a, dout, Ks, Vs, warp, lane)) return;
    const HeadIndex head = kb.head;
    const int k0 = kb.k0, E = 2 * a.R;
    const LaneKeys& keys = kb.keys;
    const HeadInputs<T>& in = kb.in;
    const float kept_scale = kb.kept_scale;
    float acc_k[NTD][4], acc_v[NTD][4];
    zero_acc(acc_k);
    zero_acc(acc_v);
    auto buffers = [&](int b) { return QueryTileBuffers<T>{Qb + b * QN * LD, dOb + b * QN * LD, stats_b + b * QN}; };
    QueryTileLoader<T, C> loader(a, kb, lse, delta);
    loader.load_next(Qb, dOb, stats_b, a, kb, lse, delta);  // the first tile, into buffer 0
    cp_async_commit();
    stage_edge_rows<T, D, LD, NT>(Te, in.table, E);

    DqLaneRows dq = DqLaneRows::make<D, QN>(dq_acc, a, head, warp, lane);
    QueryTileClass<C> tiles(a, k0);
    const int ds_store = DsTile::store_base(warp, lane);
    // dQ's A operand: this lane's ldmatrix .trans offset in dS^T (warp_add_dq's ds_a), kept in a register
    int ds_a = DsTile::a_trans_offset((warp & 1) * 16, lane);
    LdsmLane<LD> ll(lane);  // the lane's ldmatrix offsets in Ks, Vs, Q, dO (kept in registers, as ds_a)

    // Skipped tiles (begin_query_tile) contribute nothing to dQ either (every pair masked, p = 0).
    for (int q0 = 0, b = 0; q0 < a.Lq; q0 += QN, b ^= 1, dq.advance(QN), tiles.advance()) {
        if (!begin_query_tile<F>(loader, buffers(b), buffers(b ^ 1), a, kb, lse, delta, q0)) continue;
        keep_in_register(ds_a);
        ll.keep();
        const T* Qs = Qb + b * QN * LD;
        const T* dOs = dOb + b * QN * LD;
        const RowStats* stats_s = stats_b + b * QN;
        const bool band = tiles.band(a);
        const bool right = tiles.far_right();  // a far tile's side: T[2R]
        FarRow* far_s = reinterpret_cast<FarRow*>(qtb);  // far tiles: per-row terms instead of projections
        TableRows tr;  // a band tile's table rows (set in its first arm: a far tile does not compute them)
        if (band) {  // profile: band
            tr = band_tile_rows<C>(a, q0, k0);
            // 16-row k-steps of the dQ bucket product: rows past 2R zero, the others finite (times zero weights).
            stage_rows<T, D, LD, NT>(Ts, in.table, D, tr.lo, band_tile_kcols(tr), E + 1);
            __syncthreads();  // the table rows visible
            project_band_tile<T, C>(qtb, dotb, Qs, dOs, Ts, band_tile_cols(tr), warp, lane);
        } else {  // profile: far
            project_far_tile_rows<F, T, C>(far_s, Qs, dOs, Te, stats_s, a, kept_scale, right, ll, warp, lane);
        }

        float s[NTQ][4], dp[NTQ][4];
        warp_scores<T, C>(s, dp, Ks + warp * 16 * LD, Vs + warp * 16 * LD, Qs, dOs, ll);
        __syncthreads();  // projections visible to every warp
        if (band) {  // profile: band
            warp_pair_grads_band_tile<F, C>(s, dp, a, head, keys, qtb, dotb, stats_s, tr, q0, kept_scale, lane);
        } else {  // profile: far
            warp_pair_grads_far_tile<F, C>(s, dp, a, head, keys, far_s, stats_s, q0, kept_scale, lane);
        }
#pragma unroll
        for (int nt = 0; nt < NTQ; ++nt) {  // one key, two adjacent queries per 32-bit store
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                *reinterpret_cast<uint32_t*>(dSs + (ds_store ^ (nt << 3)) + h * 8 * QN) =
                    MmaOp<T>::pack(dp[nt][2 * h], dp[nt][2 * h + 1]);
            }
        }
        warp_accumulate_dkdv<T, C>(acc_k, acc_v, s, dp, Qs, dOs, ll);
        __syncthreads();  // dS visible to every warp; every warp done with the projections (the bucket's space)
        if (band) {  // profile: band
            fill_band_bucket<T, D>(Bk, dSs, a, tr, a.q_offset + q0, k0);
            __syncthreads();
        }
        warp_add_dq<T, D>(dq, dSs, Ks, Te, Ts, Bk, band, right, q0, k0, a, ds_a, ll.b_k, warp, lane);
    }
    cp_async_wait<0>();  // the last prefetch (zero-filled) still in flight
    store_dkdv<F, T, D>(dk, dv, acc_k, acc_v, a, head, keys, kept_scale, lane);
}

// dq[e] = scale * acc[e] in the output dtype over n = rows * D elements (rows of D: the row length names the
// instantiation, one per head dim as every kernel here).
template <typename T, int D>
__global__ void __launch_bounds__(256)
relattn_bwd_dq_convert_kernel(const float* __restrict__ acc, T* __restrict__ dq, int64_t n, float scale) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride)
        dq[e] = from_f<T>(scale * acc[e]);
}

constexpr int CONVERT_THREADS = 256;
constexpr int CONVERT_MAX_BLOCKS = 1024;

template <typename T, int D>
inline const char* launch_dq_convert(const float* acc, T* dq, int64_t n, float scale, int device, void* stream) {
    if (n == 0) return nullptr;
    const DeviceGuard guard(device);
    if (guard.error()) return guard.error();
    const int64_t want = (n + 4 * CONVERT_THREADS - 1) / (4 * CONVERT_THREADS);  // ~4 elements a thread
    const unsigned blocks = static_cast<unsigned>(want < CONVERT_MAX_BLOCKS ? want : CONVERT_MAX_BLOCKS);
    auto kernel = relattn_bwd_dq_convert_kernel<T, D>;
    NZ_LAUNCH(kernel, dim3(blocks), dim3(CONVERT_THREADS), 0, static_cast<cudaStream_t>(stream), acc, dq, n, scale);
    return launch_status();
}

// The fused kernel for the call's layout and feature set, then the dQ conversion.
template <typename T, int D>
inline const char* launch_fused(const AttnArgs& a, const T* dout, const float* lse, const float* delta,
                                float* dq_acc, T* dq, T* dk, T* dv, int device, void* stream) {
    const char* err = dispatch_layout(a, [&](auto packed) -> const char* {
        return dispatch_features(a, [&](auto features) -> const char* {
            constexpr bool P = decltype(packed)::value;
            constexpr int F = decltype(features)::value;
            return launch_row_blocks<TcConfig<D>>(relattn_bwd_fused_tc_kernel<T, D, P, F>, a.Lk,
                                                  FusedLayout<D>::bytes(), a, device, stream, dout, lse, delta,
                                                  dq_acc, dk, dv);
        });
    });
    if (err) return err;
    const int64_t rows = a.cu_seqlens_q != nullptr ? static_cast<int64_t>(a.Tq) * a.H
                                                   : static_cast<int64_t>(a.B) * a.H * a.Lq;
    return launch_dq_convert<T, D>(dq_acc, dq, rows * D, a.scale, device, stream);
}

const char* relattn_bwd_tc_fused(const AttnArgs& a, DType dtype, const void* dout, const float* lse,
                                 const float* delta, float* dq_acc, void* dq, void* dk, void* dv, int device,
                                 void* stream) {
    return dispatch_kernel<Impl::TC>(dtype, a.D, [&](auto element, auto head_dim) -> const char* {
        using T = typename decltype(element)::type;
        constexpr int D = decltype(head_dim)::value;
        if constexpr (!fused_bwd_head_dim(D))
            return relattn_bwd_tc(a, dtype, dout, lse, delta, dq, dk, dv, device, stream);
        else
            return launch_fused<T, D>(a, static_cast<const T*>(dout), lse, delta, dq_acc, static_cast<T*>(dq),
                                      static_cast<T*>(dk), static_cast<T*>(dv), device, stream);
    });
}

}  // namespace nezha
