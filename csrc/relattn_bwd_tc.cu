// Tensor-core backward (fp16 / bf16, sm_80+): dQ, dK, dV with the formulas of relattn_bwd.cu,
//     dS_ij = p_ij (dW_ij f_ij - delta_i),  dW_ij = dO_i . (v_j + a_ij),  f = keep / (1 - p_drop) * head_mask
//     dQ_i = scale * sum_j dS_ij (k_j + a_ij),  dK_j = scale * sum_i dS_ij q_i,  dV_j = sum_i p_ij f_ij dO_i
// every product on mma.sync m16n8k16 with fp32 accumulators.
//
// relattn_bwd_dq_tc_kernel: warp = 16 query rows, key tiles of 64 (32 for D = 128, register budget).
//   S = Q.K^T and dP = dO.V^T by mma; the band terms Q.T_slice^T and dO.T_slice^T go through per-warp scratch
//   (gathered at idx - lo); dQ += dS.K (dS from the accumulators) + Bucket(dS).T_slice, edge dS into two
//   per-row masses (like the forward).
// relattn_bwd_dkdv_tc_kernel: warp = 16 keys, query tiles of 32. S^T = K.Q^T and dP^T = V.dO^T by mma; the
//   block computes Q.T_slice^T and dO.T_slice^T once per tile into shared memory ([query][table row]);
//   dV += W^T.dO and dK += dS^T.Q with W, dS from the accumulators (no table term in dK, dV).
// Padding-free calls: one sequence per grid row, as in the SIMT kernels (sequence_args). Both kernels are instantiated
// per feature set (relattn_flash.h): the PLAIN one holds no mask, causal or dropout code per pair.
#include "relattn_bwd_tc.cuh"

namespace nezha {

template <typename T, int D, bool PACKED, int FEATURES>
__global__ void __launch_bounds__(TcConfig<D>::NT, 1)
relattn_bwd_dq_tc_kernel(AttnArgs a, const T* __restrict__ dout, const float* __restrict__ lse,
                         const float* __restrict__ delta, T* __restrict__ dq) {
    using C = TcConfig<D>;
    constexpr Features F = static_cast<Features>(FEATURES);
    constexpr int BM = C::BM, BN = C::BN_DQ, NT = C::NT, LD = C::LD, NTD = D / 8, NTN = BN / 8;
    NZ_DYNAMIC_SMEM(__align__(16) unsigned char, smem_raw);
    T* Qs = reinterpret_cast<T*>(smem_raw);
    T* dOs = Qs + BM * LD;
    T* Ks = dOs + BM * LD;
    T* Vs = Ks + BN * LD;
    T* Ts = Vs + BN * LD;
    float* scratch = reinterpret_cast<float*>(Ts + C::TS_ROWS * LD);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* qt = scratch + warp * 2 * 16 * C::QT_LD;
    float* dot_s = qt + 16 * C::QT_LD;
    T* bucket = reinterpret_cast<T*>(qt);  // reused once the scores are read
    const HeadIndex head = block_head<PACKED>(a);
    if constexpr (PACKED) a = sequence_args<T>(a, head);  // dense: `a` stays the kernel parameter
    const int q0 = blockIdx.x * BM, wrow0 = q0 + warp * 16;
    if (PACKED && q0 >= a.Lq) return;  // past its sequence
    const int E = 2 * a.R;
    const LaneQueries<1> rows = lane_queries(a, wrow0, lane);
    RowStats rstats[2];  // the forward's row statistics
#pragma unroll
    for (int r = 0; r < 2; ++r) rstats[r] = load_row_stats(a, lse, delta, head, rows.i[r]);
    const HeadInputs<T> in = head_inputs<T>(a, head);
    const T* dog = dout + query_row(a, head, 0) * D;
    const int64_t do_sl = static_cast<int64_t>(row_step(a, head)) * D;
    const float kept_scale = kept_weight_scale(a, head.bh);

    stage_rows<T, D, LD, NT>(Qs, in.q, a.q_sl, q0, BM, a.Lq);
    stage_rows<T, D, LD, NT>(dOs, dog, do_sl, q0, BM, a.Lq);

    FarField far_ds[2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};  // dS of each row's far-field pairs
    float acc[NTD][4];
    zero_acc(acc);

    for (int k0 = 0; k0 < a.Lk; k0 += BN) {
        // p = exp(MASKED - m) == 0 on causal-future tiles unless a row was all-masked in the forward.
        if (causal_future_tile(a, q0, BM, k0) &&
            __syncthreads_and(row_skips_future_keys(rows.valid[0], rstats[0].max) &&
                              row_skips_future_keys(rows.valid[1], rstats[1].max)))
            break;
        __syncthreads();
        const TableRows tr = stage_key_tile<T, C, BN>(Ks, Vs, Ts, a, in, q0, k0, E);
        __syncthreads();

        const WarpSlice<T> ws = warp_table_slice<T, LD, BN>(Ts, tr.lo, a, wrow0, k0);
        warp_project<T, D>(qt, C::QT_LD, Qs + warp * 16 * LD, ws.ts, LD, (ws.count + 7) / 8, lane);
        warp_project<T, D>(dot_s, C::QT_LD, dOs + warp * 16 * LD, ws.ts, LD, (ws.count + 7) / 8, lane);

        float s[NTN][4], dp[NTN][4];
        zero_acc(s);
        zero_acc(dp);
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {  // S = Q.K^T and dP = dO.V^T
            uint32_t aq[4], ado[4];
            load_a(aq, Qs + warp * 16 * LD + kk * 16, LD, lane);
            load_a(ado, dOs + warp * 16 * LD + kk * 16, LD, lane);
            mma_b_pair<BLayout::N_MAJOR>(s, aq, Ks + kk * 16, dp, ado, Vs + kk * 16, LD, lane);
        }
        __syncwarp();  // scratch visible to the whole warp

        // dS into s[]; the bucket (aliasing qt) is written after every lane has read the scratch.
        for_each_acc<NTN>(lane, [&](int nt, int e, int tile_row, int tile_col) {
            const int r = e >> 1, j = k0 + tile_col;
            float ds = 0.0f;
            if (rows.valid[r] && j < a.Lk) {
                const int idx = relative_index(j, rows.pos[r], a.R);
                const int col = tile_row * C::QT_LD + idx - ws.rows.lo;
                ds = feature_pair_grad<F>(a, head, rows.i[r], j, rows.pos[r], s[nt][e] + qt[col],
                                          dp[nt][e] + dot_s[col], rstats[r], kept_scale).ds;
                far_ds[r].add(idx, E, ds);
            }
            s[nt][e] = ds;
        });
        const bool band = tile_in_band(ws.rows, a.R);
        __syncwarp();
        if (band) {
            clear_warp_bucket<C::BK_LD>(bucket, lane);
            for_each_acc<NTN>(lane, [&](int nt, int e, int tile_row, int tile_col) {
                const int r = e >> 1, j = k0 + tile_col;
                const int idx = relative_index(j, rows.pos[r], a.R);
                if (rows.valid[r] && j < a.Lk && idx != 0 && idx != E)
                    bucket[tile_row * C::BK_LD + idx - ws.rows.lo] = from_f<T>(s[nt][e]);
            });
        }

        warp_mma_acc_b(acc, s, Ks, LD, lane);  // dQ += dS.K (K rows k-major here: B[k = key][n = d])
        if (band) {
            __syncwarp();
            warp_bucket_times_table<T, D>(acc, bucket, C::BK_LD, ws.ts, LD, (ws.count + 15) / 16, lane);
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) far_ds[r].reduce<QUAD>();
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (!rows.valid[r]) continue;
        T* g = dq + query_row(a, head, rows.i[r]) * D;
        for_each_acc_in_row<NTD>(lane, r, [&](int nt, int e, int d) {
            g[d] = from_f<T>(a.scale * far_ds[r].plus_edge_rows<T, D>(acc[nt][e], in.table, a.R, d));
        });
    }
}

template <typename T, int D, bool PACKED, int FEATURES>
__global__ void __launch_bounds__(TcConfig<D>::NT, 1)
relattn_bwd_dkdv_tc_kernel(AttnArgs a, const T* __restrict__ dout, const float* __restrict__ lse,
                           const float* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv) {
    using C = TcConfig<D>;
    constexpr Features F = static_cast<Features>(FEATURES);
    // Own rows are keys (BM, 16 per warp); streamed tiles are QN queries.
    constexpr int BM = C::BM, QN = C::QN, NT = C::NT, LD = C::LD, NTD = D / 8, NTQ = QN / 8, TB_LD = C::TB_LD;
    NZ_DYNAMIC_SMEM(__align__(16) unsigned char, smem_raw);
    T* Te = reinterpret_cast<T*>(smem_raw);  // [EDGE_ROWS][LD]: T[0], T[2R], zeros (far tiles; Ks follows)
    T* Ks = Te + EDGE_ROWS * LD;
    T* Vs = Ks + BM * LD;
    T* Qb = Vs + BM * LD;      // [2][QN][LD]: Q of this tile and of the next
    T* dOb = Qb + 2 * QN * LD;  // [2][QN][LD]: dO
    T* Ts = dOb + 2 * QN * LD;  // a band tile's table rows
    float* qtb = reinterpret_cast<float*>(Ts + C::TB_COLS * LD);  // [QN][TB_LD]: q_i . T[lo + c]
    float* dotb = qtb + QN * TB_LD;                              // [QN][TB_LD]: dO_i . T[lo + c]
    RowStats* stats_b = reinterpret_cast<RowStats*>(dotb + QN * TB_LD);  // [2][QN]: the forward's row statistics

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
    QueryTileClass<C> tiles(a, k0);
    LdsmLane<LD> ll(lane);  // the lane's ldmatrix offsets in Ks, Vs, Q, dO, kept in registers

    for (int q0 = 0, b = 0; q0 < a.Lq; q0 += QN, b ^= 1, tiles.advance()) {
        if (!begin_query_tile<F>(loader, buffers(b), buffers(b ^ 1), a, kb, lse, delta, q0)) continue;
        ll.keep();
        const T* Qs = Qb + b * QN * LD;
        const T* dOs = dOb + b * QN * LD;
        const RowStats* stats_s = stats_b + b * QN;
        const bool band = tiles.band(a);
        FarRow* far_s = reinterpret_cast<FarRow*>(qtb);  // far tiles: per-row terms instead of projections
        TableRows tr;  // a band tile's table rows (set in its first arm: a far tile does not compute them)
        if (band) {  // profile: band
            tr = band_tile_rows<C>(a, q0, k0);
            stage_rows<T, D, LD, NT>(Ts, in.table, D, tr.lo, band_tile_cols(tr), E + 1);
            __syncthreads();  // the table rows visible
            project_band_tile<T, C>(qtb, dotb, Qs, dOs, Ts, band_tile_cols(tr), warp, lane);
        } else {  // profile: far
            project_far_tile_rows<F, T, C>(far_s, Qs, dOs, Te, stats_s, a, kept_scale, tiles.far_right(), ll,
                                          warp, lane);
        }

        float s[NTQ][4], dp[NTQ][4];
        warp_scores<T, C>(s, dp, Ks + warp * 16 * LD, Vs + warp * 16 * LD, Qs, dOs, ll);
        __syncthreads();  // projections visible to every warp
        if (band) {  // profile: band
            warp_pair_grads_band_tile<F, C>(s, dp, a, head, keys, qtb, dotb, stats_s, tr, q0, kept_scale, lane);
        } else {  // profile: far
            warp_pair_grads_far_tile<F, C>(s, dp, a, head, keys, far_s, stats_s, q0, kept_scale, lane);
        }
        warp_accumulate_dkdv<T, C>(acc_k, acc_v, s, dp, Qs, dOs, ll);
    }
    cp_async_wait<0>();  // the last prefetch (zero-filled) still in flight
    store_dkdv<F, T, D>(dk, dv, acc_k, acc_v, a, head, keys, kept_scale, lane);
}

template <int D>
constexpr size_t dq_tc_smem_bytes() {
    using C = TcConfig<D>;
    return 2 * (2 * C::BM + 2 * C::BN_DQ + C::TS_ROWS) * C::LD + 4 * C::WARPS * 2 * 16 * C::QT_LD;
}

template <int D>
constexpr size_t dkdv_tc_smem_bytes() {
    using C = TcConfig<D>;
    return 2 * (EDGE_ROWS + 2 * C::BM + 4 * C::QN + C::TB_COLS) * C::LD + 4 * (2 * C::QN * C::TB_LD + 2 * 3 * C::QN);
}

const char* relattn_bwd_tc(const AttnArgs& a, DType dtype, const void* dout, const float* lse, const float* delta,
                           void* dq, void* dk, void* dv, int device, void* stream) {
    return dispatch_kernel<Impl::TC>(dtype, a.D, [&](auto element, auto head_dim) -> const char* {
        using T = typename decltype(element)::type;
        constexpr int D = decltype(head_dim)::value;
        using C = TcConfig<D>;
        const T* go = static_cast<const T*>(dout);
        return dispatch_layout(a, [&](auto packed) -> const char* {
            return dispatch_features(a, [&](auto features) -> const char* {
                constexpr bool P = decltype(packed)::value;
                constexpr int F = decltype(features)::value;
                if (const char* err = launch_row_blocks<C>(relattn_bwd_dq_tc_kernel<T, D, P, F>, a.Lq,
                                                           dq_tc_smem_bytes<D>(), a, device, stream, go, lse, delta,
                                                           static_cast<T*>(dq)))
                    return err;
                return launch_row_blocks<C>(relattn_bwd_dkdv_tc_kernel<T, D, P, F>, a.Lk, dkdv_tc_smem_bytes<D>(), a,
                                            device, stream, go, lse, delta, static_cast<T*>(dk),
                                            static_cast<T*>(dv));
            });
        });
    });
}

}  // namespace nezha
