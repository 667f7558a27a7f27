// Backward kernels (dQ, dK, dV) for relative attention; the table and head_mask get no gradient here.
//
// With p = exp((s - m) - log l) recomputed from the forward's row statistics, f = keep / (1 - p_drop) * head_mask,
// dW_ij = dO_i . (v_j + a_ij) and delta_i = dO_i . O_i:
//     dS_ij = p_ij (dW_ij f_ij - delta_i)
//     dQ_i  = scale * sum_j dS_ij (k_j + a_ij)     (relattn_bwd_dq_kernel: one block per query tile)
//     dK_j  = scale * sum_i dS_ij q_i               (relattn_bwd_dkdv_kernel: one block per key tile)
//     dV_j  = sum_i p_ij f_ij dO_i
// Two kernels recompute the scores instead of accumulating dQ with atomics: deterministic and simple.
// The table terms use the same band / far-field split as the forward (edge rows via per-row scalars).
// Padding-free calls run the same code on one sequence per grid row (sequence_args); a block past it returns.
#include "relattn_tile.cuh"

namespace nezha {

template <typename T, int D, bool PACKED>
__global__ void __launch_bounds__(TileConfig<D>::NT, 1)
relattn_bwd_dq_kernel(AttnArgs a, const T* __restrict__ dout, const float* __restrict__ lse,
                      const float* __restrict__ delta, T* __restrict__ dq) {
    using C = TileConfig<D>;
    constexpr int BM = C::BM, BN = C::BN, NT = C::NT, TPR = C::TPR, DP = C::DP, SP = C::SP;
    NZ_DYNAMIC_SMEM(float, smem);
    float* Qs = smem;
    float* dOs = Qs + BM * DP;
    float* Ks = dOs + BM * DP;
    float* Vs = Ks + BN * DP;
    float* Ts = Vs + BN * DP;
    float* dSs = Ts + C::TROWS * DP;

    const HeadIndex head = block_head<PACKED>(a);
    if constexpr (PACKED) a = sequence_args<T>(a, head);  // dense: `a` stays the kernel parameter
    const int q0 = blockIdx.x * BM;
    if (PACKED && q0 >= a.Lq) return;  // past its sequence
    const int row = threadIdx.x / TPR, sub = threadIdx.x % TPR;
    const int i = q0 + row;
    const bool row_valid = i < a.Lq;
    const int pos = a.q_offset + i;
    const int E = 2 * a.R;
    const HeadInputs<T> in = head_inputs<T>(a, head);
    const T* dog = dout + query_row(a, head, 0) * D;
    const int64_t do_sl = static_cast<int64_t>(row_step(a, head)) * D;

    load_tile<T, D, NT>(Qs, in.q, a.q_sl, q0, BM, a.Lq);
    load_tile<T, D, NT>(dOs, dog, do_sl, q0, BM, a.Lq);
    __syncthreads();
    float q_left, q_right, do_left, do_right;
    edge_dots<T, D, TPR>(Qs + row * DP, in.table, a.R, sub, q_left, q_right);
    edge_dots<T, D, TPR>(dOs + row * DP, in.table, a.R, sub, do_left, do_right);
    const RowStats stats = load_row_stats(a, lse, delta, head, i);
    const float kept_scale = kept_weight_scale(a, head.bh);

    FarField far_ds = {0.0f, 0.0f};  // dS of the row's far-field pairs
    float acc[C::DPT];
#pragma unroll
    for (int c = 0; c < C::DPT; ++c) acc[c] = 0.0f;

    for (int k0 = 0; k0 < a.Lk; k0 += BN) {
        // p = exp(MASKED - m) == 0 on causal-future tiles unless a row was all-masked in the forward.
        if (causal_future_tile(a, q0, BM, k0) &&
            __syncthreads_and(row_skips_future_keys(row_valid, stats.max)))
            break;
        __syncthreads();
        const TableRows tr = load_key_tile<T, C>(Ks, Vs, Ts, a, in, q0, k0, E);
        __syncthreads();

#pragma unroll
        for (int c = 0; c < C::CPT; ++c) {
            const int jl = sub + TPR * c, j = k0 + jl;
            float ds = 0.0f;
            if (row_valid && j < a.Lk) {
                const int idx = relative_index(j, pos, a.R);
                const float dot = pair_dot<D>(Qs + row * DP, Ks + jl * DP, Ts, tr.lo, idx, E, q_left, q_right);
                const float dw = pair_dot<D>(dOs + row * DP, Vs + jl * DP, Ts, tr.lo, idx, E, do_left, do_right);
                ds = pair_grad(a, head, i, j, pos, dot, dw, stats, kept_scale).ds;
                far_ds.add(idx, E, ds);
            }
            dSs[row * SP + jl] = ds;
        }
        __syncthreads();

        accumulate_rows<C>(acc, dSs + row * SP, Ks, sub);  // dS.K
        if (tile_in_band(tr, a.R)) accumulate_band_rows<C>(acc, dSs + row * SP, Ts, tr, k0, pos, a.R, E, sub);
    }

    far_ds.reduce<TPR>();
    if (row_valid) {
        T* g = dq + query_row(a, head, i) * D;
#pragma unroll
        for (int c = 0; c < C::DPT; ++c) {
            const int d = sub + TPR * c;
            g[d] = from_f<T>(a.scale * far_ds.plus_edge_rows<T, D>(acc[c], in.table, a.R, d));
        }
    }
}

template <typename T, int D, bool PACKED>
__global__ void __launch_bounds__(TileConfig<D>::NT, 1)
relattn_bwd_dkdv_kernel(AttnArgs a, const T* __restrict__ dout, const float* __restrict__ lse,
                        const float* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv) {
    using C = TileConfig<D>;
    // Own rows are keys (BM), the streamed tiles are queries (BN).
    constexpr int BM = C::BM, BN = C::BN, NT = C::NT, TPR = C::TPR, DP = C::DP, SP = C::SP;
    static_assert(BN == NT / TPR, "one thread group per query row for the per-row scalars");
    NZ_DYNAMIC_SMEM(float, smem);
    float* Ks = smem;
    float* Vs = Ks + BM * DP;
    float* Qs = Vs + BM * DP;
    float* dOs = Qs + BN * DP;
    float* Ts = dOs + BN * DP;
    float* Ws = Ts + C::TROWS * DP;
    float* dSs = Ws + BM * SP;
    // Per query row of the tile: q.T[0], q.T[2R], dO.T[0], dO.T[2R], the forward's statistics.
    float* q_left = dSs + BM * SP;
    float* q_right = q_left + BN;
    float* do_left = q_right + BN;
    float* do_right = do_left + BN;
    RowStats* stats_s = reinterpret_cast<RowStats*>(do_right + BN);

    const HeadIndex head = block_head<PACKED>(a);
    if constexpr (PACKED) a = sequence_args<T>(a, head);  // dense: `a` stays the kernel parameter
    const int k0 = blockIdx.x * BM;
    if (PACKED && k0 >= a.Lk) return;  // past its sequence
    const int krow = threadIdx.x / TPR, sub = threadIdx.x % TPR;
    const int j = k0 + krow;
    const bool key_valid = j < a.Lk;
    const int E = 2 * a.R;
    const HeadInputs<T> in = head_inputs<T>(a, head);
    const T* dog = dout + query_row(a, head, 0) * D;
    const int64_t do_sl = static_cast<int64_t>(row_step(a, head)) * D;
    const float kept_scale = kept_weight_scale(a, head.bh);

    load_tile<T, D, NT>(Ks, in.k, a.k_sl, k0, BM, a.Lk);
    load_tile<T, D, NT>(Vs, in.v, a.v_sl, k0, BM, a.Lk);
    float acc_k[C::DPT], acc_v[C::DPT];
#pragma unroll
    for (int c = 0; c < C::DPT; ++c) acc_k[c] = acc_v[c] = 0.0f;

    for (int q0 = 0; q0 < a.Lq; q0 += BN) {
        stage_query_tile_stats<BN>(stats_s, a, lse, delta, head, q0);
        if (causal_future_tile(a, q0, BN, k0) && rows_skip_future_keys<BN>(stats_s, q0, a.Lq)) continue;
        const int pos_first = a.q_offset + q0;
        load_tile<T, D, NT>(Qs, in.q, a.q_sl, q0, BN, a.Lq);
        load_tile<T, D, NT>(dOs, dog, do_sl, q0, BN, a.Lq);
        const TableRows tr = tile_table_rows(pos_first, pos_first + BN - 1, k0, k0 + BM - 1, a.R);
        load_band_rows<T, D, NT>(Ts, in.table, tr, a.R, E);
        __syncthreads();
        {
            const int qr = threadIdx.x / TPR;
            float ql, qrr, dl, dr;
            edge_dots<T, D, TPR>(Qs + qr * DP, in.table, a.R, sub, ql, qrr);
            edge_dots<T, D, TPR>(dOs + qr * DP, in.table, a.R, sub, dl, dr);
            if (sub == 0) {
                q_left[qr] = ql;
                q_right[qr] = qrr;
                do_left[qr] = dl;
                do_right[qr] = dr;
            }
        }
        __syncthreads();

#pragma unroll
        for (int c = 0; c < C::CPT; ++c) {
            const int il = sub + TPR * c, i = q0 + il;
            float w = 0.0f, ds = 0.0f;
            if (key_valid && i < a.Lq) {
                const int pos = a.q_offset + i;
                const int idx = relative_index(j, pos, a.R);
                const float dot =
                    pair_dot<D>(Qs + il * DP, Ks + krow * DP, Ts, tr.lo, idx, E, q_left[il], q_right[il]);
                const float dw =
                    pair_dot<D>(dOs + il * DP, Vs + krow * DP, Ts, tr.lo, idx, E, do_left[il], do_right[il]);
                const PairGrad g = pair_grad(a, head, i, j, pos, dot, dw, stats_s[il], kept_scale);
                w = g.w;
                ds = g.ds;
            }
            Ws[krow * SP + il] = w;
            dSs[krow * SP + il] = ds;
        }
        __syncthreads();

        for (int il = 0; il < BN; ++il) {
            const float w = Ws[krow * SP + il], ds = dSs[krow * SP + il];
            const float* dorow = dOs + il * DP + sub;
            const float* qrow = Qs + il * DP + sub;
#pragma unroll
            for (int c = 0; c < C::DPT; ++c) {
                acc_v[c] = fmaf(w, dorow[TPR * c], acc_v[c]);
                acc_k[c] = fmaf(ds, qrow[TPR * c], acc_k[c]);
            }
        }
    }

    if (key_valid) {
        const int64_t base = key_row(a, head, j) * D;
#pragma unroll
        for (int c = 0; c < C::DPT; ++c) {
            const int d = sub + TPR * c;
            dk[base + d] = from_f<T>(a.scale * acc_k[c]);
            dv[base + d] = from_f<T>(acc_v[c]);
        }
    }
}

template <int D>
constexpr size_t dq_smem_bytes() {
    using C = TileConfig<D>;
    return sizeof(float) * ((2 * C::BM + 2 * C::BN + C::TROWS) * C::DP + C::BM * C::SP);
}

template <int D>
constexpr size_t dkdv_smem_bytes() {
    using C = TileConfig<D>;
    return sizeof(float) * ((2 * C::BM + 2 * C::BN + C::TROWS) * C::DP + 2 * C::BM * C::SP + 7 * C::BN);
}

const char* relattn_bwd(const AttnArgs& a, DType dtype, Impl impl, const void* dout, const float* lse,
                        const float* delta, void* dq, void* dk, void* dv, int device, void* stream) {
    if (impl == Impl::TC)  // float32: an error there
        return relattn_bwd_tc(a, dtype, dout, lse, delta, dq, dk, dv, device, stream);
    return dispatch_kernel<Impl::SIMT>(dtype, a.D, [&](auto element, auto head_dim) -> const char* {
        using T = typename decltype(element)::type;
        constexpr int D = decltype(head_dim)::value;
        using C = TileConfig<D>;
        const T* go = static_cast<const T*>(dout);
        return dispatch_layout(a, [&](auto packed) -> const char* {
            constexpr bool P = decltype(packed)::value;
            if (const char* err = launch_row_blocks<C>(relattn_bwd_dq_kernel<T, D, P>, a.Lq, dq_smem_bytes<D>(), a,
                                                       device, stream, go, lse, delta, static_cast<T*>(dq)))
                return err;
            return launch_row_blocks<C>(relattn_bwd_dkdv_kernel<T, D, P>, a.Lk, dkdv_smem_bytes<D>(), a, device,
                                        stream, go, lse, delta, static_cast<T*>(dk), static_cast<T*>(dv));
        });
    });
}

}  // namespace nezha
