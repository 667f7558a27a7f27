// Tensor-core forward (fp16 / bf16, sm_80+): same semantics as relattn_fwd.cu, mma.sync m16n8k16 with
// fp32 accumulators for every matrix product.
//
// Warp w of a block owns 16 query rows; per key tile of BN = 64:
//   S     = Q.K^T                                   (mma, A from smem, B = K rows n-major)
//   band  = Q.T_slice^T -> per-warp scratch [16][<=80], gathered at idx - lo for every pair (edge pairs too:
//           the slice always covers the warp's indices; a far-field tile's slice is its one edge row)
//   O    += P.V                                     (P from the score accumulators, V rows k-major)
//   O    += Bucket.T_slice                          (Bucket[row][idx - lo] = weight for interior pairs;
//           edge weights go to two per-row masses, added as mass * T[0] / T[2R] at the end)
// Online softmax, masks, dropout (Philox spec), head_mask, the log-sum-exp and the padding-free sequences
// (sequence_args) are those of the SIMT kernel.
#include "relattn_tc.cuh"

namespace nezha {

template <typename T, int D, bool PACKED>
__global__ void __launch_bounds__(TcConfig<D>::NT, 1)
relattn_fwd_tc_kernel(AttnArgs a, T* __restrict__ out, float* __restrict__ lse) {
    using C = TcConfig<D>;
    constexpr int BM = C::BM, BN = C::BN, NT = C::NT, LD = C::LD, NTD = D / 8, NTN = BN / 8;
    NZ_DYNAMIC_SMEM(__align__(16) unsigned char, smem_raw);
    T* Qs = reinterpret_cast<T*>(smem_raw);
    T* Ks = Qs + BM * LD;
    T* Vs = Ks + BN * LD;
    T* Ts = Vs + BN * LD;
    float* scratch = reinterpret_cast<float*>(Ts + C::TS_ROWS * LD);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* qt = scratch + warp * 16 * C::QT_LD;
    T* bucket = reinterpret_cast<T*>(qt);  // reused once the scores are read
    const HeadIndex head = block_head<PACKED>(a);
    if constexpr (PACKED) a = sequence_args<T>(a, head);  // dense: `a` stays the kernel parameter
    const int q0 = blockIdx.x * BM, wrow0 = q0 + warp * 16;
    if (PACKED && q0 >= a.Lq) return;  // past its sequence
    const int E = 2 * a.R;
    const LaneQueries rows = lane_queries(a, wrow0, lane);
    const HeadInputs<T> in = head_inputs<T>(a, head);

    stage_rows<T, D, LD, NT>(Qs, in.q, a.q_sl, q0, BM, a.Lq);

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    FarField far[2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};  // weights of each row's far-field pairs
    float acc[NTD][4];
    zero_acc(acc);

    for (int k0 = 0; k0 < a.Lk; k0 += BN) {
        // Causal-future tiles contribute exp(MASKED - m) == 0 unless a row is still all-masked.
        if (causal_future_tile(a, q0, BM, k0) &&
            __syncthreads_and(row_skips_future_keys(rows.valid[0], m[0]) && row_skips_future_keys(rows.valid[1], m[1])))
            break;
        __syncthreads();  // previous tile fully consumed
        const TableRows tr = stage_key_tile<T, C, BN>(Ks, Vs, Ts, a, in, q0, k0, E);
        __syncthreads();

        const WarpSlice<T> ws = warp_table_slice<T, LD, BN>(Ts, tr.lo, a, wrow0, k0);
        warp_project<T, D>(qt, C::QT_LD, Qs + warp * 16 * LD, ws.ts, LD, (ws.count + 7) / 8, lane);

        float s[NTN][4];
        zero_acc(s);
        warp_mma_abt<T, D>(s, Qs + warp * 16 * LD, Ks, LD, lane);  // S = Q.K^T
        __syncwarp();  // qt visible to the whole warp

        float tile_max[2] = {-INFINITY, -INFINITY};
        for_each_acc<NTN>(lane, [&](int nt, int e, int tile_row, int tile_col) {
            const int r = e >> 1, j = k0 + tile_col;
            float sc = -INFINITY;  // keys past Lk get zero weight
            if (j < a.Lk) {
                const int idx = relative_index(j, rows.pos[r], a.R);
                const float dot = s[nt][e] + qt[tile_row * C::QT_LD + idx - ws.rows.lo];
                sc = rows.valid[r] ? pair_score(a, head, rows.i[r], j, rows.pos[r], dot)
                                   : finalize_score(dot, a.scale, 0.0f, false);
            }
            s[nt][e] = sc;
            tile_max[r] = fmaxf(tile_max[r], sc);
        });
        float alpha[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float m_new = fmaxf(m[r], group_max<QUAD>(tile_max[r]));
            alpha[r] = rescale_factor(m[r], m_new);
            m[r] = m_new;
            l[r] *= alpha[r];
            far[r].rescale(alpha[r]);
        }
#pragma unroll
        for (int nt = 0; nt < NTD; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nt][e] *= alpha[e >> 1];

        const bool band = tile_in_band(ws.rows, a.R);
        const int ksteps = (ws.count + 15) / 16;
        __syncwarp();  // every lane has read qt: the bucket may overwrite it
        if (band) clear_warp_bucket<C::BK_LD>(bucket, lane);
        for_each_acc<NTN>(lane, [&](int nt, int e, int tile_row, int tile_col) {
            const int r = e >> 1, j = k0 + tile_col;
            const float p = expf(s[nt][e] - m[r]);
            l[r] += p;
            float w = p;
            if (j < a.Lk && rows.valid[r]) {
                // Dropped weights leave the output but not the normalizer l; 1/(1-p) is applied at the end.
                if (!dropout_keep(a.dropout_seed, a.dropout_p, head.bh, rows.i[r], j)) w = 0.0f;
                const int idx = relative_index(j, rows.pos[r], a.R);
                if (!far[r].add(idx, E, w)) bucket[tile_row * C::BK_LD + idx - ws.rows.lo] = from_f<T>(w);
            }
            s[nt][e] = w;
        });

        warp_mma_acc_b(acc, s, Vs, LD, lane);  // O += P.V
        if (band) {
            __syncwarp();
            warp_bucket_times_table<T, D>(acc, bucket, C::BK_LD, ws.ts, LD, ksteps, lane);
        }
    }

    const float kept_scale = kept_weight_scale(a, head.bh);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] = group_sum<QUAD>(l[r]);
        far[r].reduce<QUAD>();
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (!rows.valid[r]) continue;
        const float f = PACKED && l[r] == 0.0f ? 0.0f : kept_scale / l[r];  // 0: a sequence without keys
        T* og = out + query_row(a, head, rows.i[r]) * D;
        for_each_acc_in_row<NTD>(lane, r, [&](int nt, int e, int d) {
            og[d] = from_f<T>(f * far[r].plus_edge_rows<T, D>(acc[nt][e], in.table, a.R, d));
        });
        if ((lane & 3) == 0) store_row_stats(a, lse, head, rows.i[r], m[r], l[r]);
    }
}

template <int D>
constexpr size_t fwd_tc_smem_bytes() {
    using C = TcConfig<D>;
    return 2 * (C::BM + 2 * C::BN + C::TS_ROWS) * C::LD + 4 * C::WARPS * 16 * C::QT_LD;
}

const char* relattn_fwd_tc(const AttnArgs& a, DType dtype, void* o, float* lse, int device, void* stream) {
    return dispatch_kernel<Impl::TC>(dtype, a.D, [&](auto element, auto head_dim) {
        using T = typename decltype(element)::type;
        constexpr int D = decltype(head_dim)::value;
        return dispatch_layout(a, [&](auto packed) {
            return launch_row_blocks<TcConfig<D>>(relattn_fwd_tc_kernel<T, D, decltype(packed)::value>, a.Lq,
                                                  fwd_tc_smem_bytes<D>(), a, device, stream, static_cast<T*>(o), lse);
        });
    });
}

}  // namespace nezha
