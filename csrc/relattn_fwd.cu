// Forward kernel: flash-style relative attention with the band / far-field treatment of the table.
//
// One block = BM query rows of one (b, h); it streams key tiles of BN rows through shared memory with an
// online softmax (fp32). Key side: pairs with an edge index (0 or 2R, the far field) add the per-row
// scalar q.T[0] / q.T[2R]; band pairs dot q with (k_j + T[idx]) from the tile's table rows (at most
// BM + BN - 1 rows, loaded only for tiles that touch the band). Value side: far-field weights only add to
// two per-row masses (rescaled like the accumulator) that become mass * T[0] / T[2R] at the end; band
// weights add w * T[idx]. The [Lq, Lk, D] table is never built. SIMT with fp32 accumulation.
// Padding-free calls run the same code on one sequence per grid row (sequence_args); a block past it returns.
#include "relattn_tile.cuh"

namespace nezha {

template <typename T, int D, bool PACKED>
__global__ void __launch_bounds__(TileConfig<D>::NT, 1)
relattn_fwd_kernel(AttnArgs a, T* __restrict__ out, float* __restrict__ lse) {
    using C = TileConfig<D>;
    constexpr int BM = C::BM, BN = C::BN, NT = C::NT, TPR = C::TPR, DP = C::DP, SP = C::SP;
    NZ_DYNAMIC_SMEM(float, smem);
    float* Qs = smem;
    float* Ks = Qs + BM * DP;
    float* Vs = Ks + BN * DP;
    float* Ts = Vs + BN * DP;
    float* Ps = Ts + C::TROWS * DP;

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

    load_tile<T, D, NT>(Qs, in.q, a.q_sl, q0, BM, a.Lq);
    __syncthreads();
    float q_left, q_right;
    edge_dots<T, D, TPR>(Qs + row * DP, in.table, a.R, sub, q_left, q_right);

    float m = -INFINITY, l = 0.0f;
    FarField far = {0.0f, 0.0f};  // weights of the row's far-field pairs
    float acc[C::DPT];
#pragma unroll
    for (int c = 0; c < C::DPT; ++c) acc[c] = 0.0f;

    for (int k0 = 0; k0 < a.Lk; k0 += BN) {
        // Causal-future tiles contribute exp(MASKED - m) == 0 unless a row is still all-masked.
        if (causal_future_tile(a, q0, BM, k0) &&
            __syncthreads_and(row_skips_future_keys(row_valid, m)))
            break;
        __syncthreads();  // previous tile fully consumed
        const TableRows tr = load_key_tile<T, C>(Ks, Vs, Ts, a, in, q0, k0, E);
        __syncthreads();

        float s[C::CPT];
        float tile_max = -INFINITY;
#pragma unroll
        for (int c = 0; c < C::CPT; ++c) {
            const int jl = sub + TPR * c, j = k0 + jl;
            float sc = -INFINITY;  // keys past Lk get zero weight
            if (j < a.Lk) {
                const int idx = relative_index(j, pos, a.R);
                const float dot = pair_dot<D>(Qs + row * DP, Ks + jl * DP, Ts, tr.lo, idx, E, q_left, q_right);
                sc = row_valid ? pair_score(a, head, i, j, pos, dot) : finalize_score(dot, a.scale, 0.0f, false);
            }
            s[c] = sc;
            tile_max = fmaxf(tile_max, sc);
        }
        const float m_new = fmaxf(m, group_max<TPR>(tile_max));
        const float alpha = rescale_factor(m, m_new);
        l *= alpha;
        far.rescale(alpha);
#pragma unroll
        for (int c = 0; c < C::DPT; ++c) acc[c] *= alpha;
#pragma unroll
        for (int c = 0; c < C::CPT; ++c) {
            const int jl = sub + TPR * c, j = k0 + jl;
            const float p = expf(s[c] - m_new);
            l += p;
            float w = p;
            if (j < a.Lk && row_valid) {
                // Dropped weights leave the output but not the normalizer l; 1/(1-p) is applied at the end.
                if (!dropout_keep(a.dropout_seed, a.dropout_p, head.bh, i, j)) w = 0.0f;
                far.add(relative_index(j, pos, a.R), E, w);
            }
            Ps[row * SP + jl] = w;
        }
        __syncthreads();

        accumulate_rows<C>(acc, Ps + row * SP, Vs, sub);  // P.V
        if (tile_in_band(tr, a.R)) accumulate_band_rows<C>(acc, Ps + row * SP, Ts, tr, k0, pos, a.R, E, sub);
        m = m_new;
    }

    l = group_sum<TPR>(l);
    far.reduce<TPR>();
    if (row_valid) {
        const float f = PACKED && l == 0.0f ? 0.0f : kept_weight_scale(a, head.bh) / l;  // 0: a sequence without keys
        T* og = out + query_row(a, head, i) * D;
#pragma unroll
        for (int c = 0; c < C::DPT; ++c) {
            const int d = sub + TPR * c;
            og[d] = from_f<T>(f * far.plus_edge_rows<T, D>(acc[c], in.table, a.R, d));
        }
        if (sub == 0) store_row_stats(a, lse, head, i, m, l);
    }
}

template <int D>
constexpr size_t fwd_smem_bytes() {
    using C = TileConfig<D>;
    return sizeof(float) * ((C::BM + 2 * C::BN + C::TROWS) * C::DP + C::BM * C::SP);
}

const char* relattn_fwd(const AttnArgs& a, DType dtype, Impl impl, void* o, float* lse, int device, void* stream) {
    if (impl == Impl::TC) return relattn_fwd_tc(a, dtype, o, lse, device, stream);  // float32: an error there
    return dispatch_kernel<Impl::SIMT>(dtype, a.D, [&](auto element, auto head_dim) {
        using T = typename decltype(element)::type;
        constexpr int D = decltype(head_dim)::value;
        return dispatch_layout(a, [&](auto packed) {
            return launch_row_blocks<TileConfig<D>>(relattn_fwd_kernel<T, D, decltype(packed)::value>, a.Lq,
                                                    fwd_smem_bytes<D>(), a, device, stream, static_cast<T*>(o), lse);
        });
    });
}

}  // namespace nezha
