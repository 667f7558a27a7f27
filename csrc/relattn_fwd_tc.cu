// Tensor-core forward (fp16 / bf16, sm_80+): same semantics as relattn_fwd.cu, flash-attention style.
//
// A block owns BM = 64 MT query rows (TcFwdConfig: MT = 2 row tiles of 16 per warp where registers allow, as
// FlashAttention-2's 32 rows per warp, so that every K and V fragment feeds two mma rows; MT = 1 at D = 128 and in
// the GENERAL padding-free kernel at D = 64); warp w owns rows w * 16 MT .. + 16 MT. Key tiles of BN = 64 rows arrive
// by cp.async in a 2-stage pipeline (tile s + 1 is copied while tile s is computed); fragments come from shared
// memory by ldmatrix (.trans for V). The softmax runs in base 2, log2(e) folded into the scale.
// Key tiles follow relattn_flash.h's schedule:
//   far tiles (every pair of the block at j - i <= -R, or >= R): plain attention, the far-left tiles then the
//     far-right ones. The relative term q_i . T[0] (or T[2R]) is a per-row constant computed once per side, so a
//     score costs one FFMA and one EX2; the row's probability mass on each side follows from l (its T row joins the
//     output once, at the end);
//   the other tiles (band, the partial last tile, causal far-right tiles, every tile with masks or dropout), one
//     row tile at a time: S = Q.K^T plus band = Q.T_slice^T through a per-warp scratch, gathered at idx - lo per
//     pair; masks, causal and dropout per element as the feature set says; O += P.V and O += Bucket.T_slice
//     (Bucket[row][idx - lo] = weight of interior pairs; edge pairs go to the two per-row masses).
// Rotation (FEATURES_ROTATION: a PLAIN call with NEZHA's sinusoid table, relattn_rotation.cuh): the far tiles as above;
//   a band tile, per row tile, S = Q.K^T and Rel = Q_rot.S_tile^T (Q_rot rotated once per block into shared memory,
//   the S tile of extended sinusoid rows staged by cp.async with K and V); a pair's relative term is Rel where
//   |j - i| < R, else the row's edge term as in the far tiles (R >= 32: one side per row and tile); O += P.V, then
//   O += rotate(P_band.S_tile), P_band = p in band, and the row's far mass = rowsum(P) - rowsum(P_band) by mma. No
//   scratch, no gather, no bucket; the row statistics wait in shared memory while the other row tile runs.
// Row statistics, head_mask and the padding-free sequences (sequence_args) are those of the SIMT kernel; the stored
// row max is in natural units (finfo.min kept exact for fully masked rows).
#include "relattn_async.cuh"
#include "relattn_flash.h"
#include "relattn_rotation.cuh"
#include "relattn_tc.cuh"

namespace nezha {

// A warp's MT row tiles of 16 query rows as mma A fragments: held in registers (the far loop, where
// fwd_q_in_registers says so), or loaded by ldmatrix from the shared Q tile at each use (the other far loops, and
// the band loop, which leaves the far loop's registers to its own per-pair state).
template <typename T, int D, int LD, int MT, bool IN_REGISTERS>
struct QueryFragments {
    uint32_t regs[IN_REGISTERS ? MT : 1][IN_REGISTERS ? D / 16 : 1][4];
    const T* lane_row;  // this lane's ldmatrix row in the warp's first row tile

    __device__ __forceinline__ QueryFragments(const T* warp_q, int lane) : lane_row(warp_q + ldsm_a_offset(lane, LD)) {
        if constexpr (IN_REGISTERS) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk) ldsm_x4(regs[mt][kk], lane_row + mt * 16 * LD + kk * 16);
        }
    }
    // The A fragment of row tile mt, k-step kk (columns 16 kk .. 16 kk + 15).
    __device__ __forceinline__ void get(uint32_t (&a)[4], int mt, int kk) const {
        if constexpr (IN_REGISTERS) {
#pragma unroll
            for (int r = 0; r < 4; ++r) a[r] = regs[mt][kk][r];
        } else {
            ldsm_x4(a, lane_row + mt * 16 * LD + kk * 16);
        }
    }
};

// S[MT][NTN][4] = Q.K^T (accumulate: S += Q.K^T) for one warp: Q fragments q (MT row tiles x D, a QueryFragments),
// K rows n-major at ks (stride LD); each K fragment feeds the MT row tiles.
template <typename T, int D, int LD, int NTN, int MT, typename QF>
__device__ __forceinline__ void warp_qk(float (&s)[MT][NTN][4], const QF& q, const T* ks, int lane,
                                        bool accumulate = false) {
    if (!accumulate) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) zero_acc(s[mt]);
    }
    const T* kl = ks + ldsm_b_nmajor_offset(lane, LD);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) q.get(a[mt], mt, kk);
#pragma unroll
        for (int np = 0; np < NTN / 2; ++np) {
            uint32_t b[4];
            ldsm_x4(b, kl + np * 16 * LD + kk * 16);
            const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                MmaOp<T>::run(s[mt][2 * np], a[mt], b0);
                MmaOp<T>::run(s[mt][2 * np + 1], a[mt], b1);
            }
        }
    }
}

// acc[mt0 + t][D/8][4] += P[t].V for the PT row tiles t of P: P from the fp32 weights p (rounded to T), V rows k-major
// at vs (stride LD), ldmatrix.trans; each V fragment feeds the PT row tiles.
template <typename T, int D, int LD, int NTN, int MT, int PT>
__device__ __forceinline__ void warp_pv(float (&acc)[MT][D / 8][4], const float (&p)[PT][NTN][4], const T* vs,
                                        int lane, int mt0 = 0) {
    const T* vl = vs + ldsm_b_kmajor_offset(lane, LD);
#pragma unroll
    for (int kk = 0; kk < NTN / 2; ++kk) {
        uint32_t a[PT][4];
#pragma unroll
        for (int t = 0; t < PT; ++t) acc_to_a<T, NTN>(a[t], p[t], kk);
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
            uint32_t b[4];
            ldsm_x4_trans(b, vl + kk * 16 * LD + dp * 16);
            const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
            for (int t = 0; t < PT; ++t) {
                MmaOp<T>::run(acc[mt0 + t][2 * dp], a[t], b0);
                MmaOp<T>::run(acc[mt0 + t][2 * dp + 1], a[t], b1);
            }
        }
    }
}

// bias[2 mt + h] = (q . T[0]) (side 0) or (q . T[2R]) (side 1) * scale_log2 for the lane's rows: one mma per k-step
// of each row tile against Ts rows 0 (T[0]) and 1 (T[2R]) (rows 2-7 zero).
template <typename T, int D, int LD, int MT, typename QF>
__device__ __forceinline__ void edge_bias(float (&bias)[2 * MT], const QF& qf, const T* Ts, int side, float scale_log2,
                                          int lane) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            uint32_t a[4], b[2];
            qf.get(a, mt, kk);
            load_b_nmajor(b, Ts + kk * 16, LD, lane);
            MmaOp<T>::run(c, a, b);
        }
        const bool col = (lane & 3) == 0;  // columns 0 (T[0]) and 1 (T[2R]) live in the quad's first lane
#pragma unroll
        for (int h = 0; h < 2; ++h)
            bias[2 * mt + h] = group_sum<QUAD>(col ? (side == 0 ? c[2 * h] : c[2 * h + 1]) : 0.0f) * scale_log2;
    }
}

// Score of the in-range pair (query i at pos, key j) from its raw dot product, with only the feature set's masks.
template <Features F>
__device__ __forceinline__ float feature_score(const AttnArgs& a, HeadIndex head, int i, int j, int pos, float dot) {
    if constexpr (F == Features::GENERAL) return pair_score(a, head, i, j, pos, dot);
    else return finalize_score(dot, a.scale, 0.0f, false);
}

// A natural-units score in base 2: s * log2(e), kept >= finfo.min (a masked score stays exactly finfo.min).
__device__ __forceinline__ float score_log2(float s) { return fmaxf(s * LOG2E, MASKED_SCORE); }

template <typename T, int D, bool PACKED, int FEATURES>
__global__ void __launch_bounds__(128, 1)
relattn_fwd_tc_kernel(AttnArgs a, T* __restrict__ out, float* __restrict__ lse) {
    using C = TcFwdConfig<D, fwd_row_tiles(D, PACKED, FEATURES)>;
    static_assert(C::NT == 128, "launch bounds");
    constexpr bool ROT = FEATURES == FEATURES_ROTATION;  // PLAIN, with the band from the rotation identity
    constexpr Features F = ROT ? Features::PLAIN : static_cast<Features>(FEATURES);
    static_assert(!ROT || (C::BN == ROT_SHIFT && C::BM <= ROT_MAX_BM), "extended sinusoid table geometry");
    constexpr int BM = C::BM, BN = C::BN, NT = C::NT, LD = C::LD, MT = C::MT, NTD = D / 8, NTN = BN / 8;
    constexpr int RW = 2 * MT;  // accumulator rows per lane: rows 2 mt, 2 mt + 1 of row tile mt
    NZ_DYNAMIC_SMEM(__align__(16) unsigned char, smem_raw);
    T* Qs = reinterpret_cast<T*>(smem_raw);
    T* Ks = Qs + BM * LD;      // [2][BN][LD]
    T* Vs = Ks + 2 * BN * LD;  // [2][BN][LD]
    T* Ts = Vs + 2 * BN * LD;
    float* scratch = reinterpret_cast<float*>(Ts + C::TS_ROWS * LD);
    T* Ss = Ts + 8 * LD;       // rotation: [2][BN][LD] S tiles, then Q_rot [BM][LD] (Ts keeps its 8 edge rows)
    T* QRs = Ss + 2 * BN * LD;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* qt = scratch + warp * 16 * C::QT_LD;
    T* bucket = reinterpret_cast<T*>(qt);  // reused once the scores are read
    const HeadIndex head = block_head<PACKED>(a);
    if constexpr (PACKED) a = sequence_args<T>(a, head);  // dense: `a` stays the kernel parameter
    const int q0 = blockIdx.x * BM, wrow0 = q0 + warp * C::WROWS;
    if (PACKED && q0 >= a.Lq) return;  // past its sequence
    const int E = 2 * a.R;
    const HeadInputs<T> in = head_inputs<T>(a, head);
    const float scale_log2 = a.scale * LOG2E;

    const bool causal = F == Features::GENERAL && a.causal;
    const bool pair_masks = F == Features::GENERAL && has_pair_masks(a);
    // Rows that allow 16-byte copies go by cp.async; others (rare strided views) by element copies, and then every
    // tile takes the general loop, so that the far loop holds only the cp.async path.
    // (The rotation kernel runs only where they do: rotation_kv_async, at the launch.)
    const bool kv_async = ROT || (rows_vectorizable(in.k, a.k_sl) && rows_vectorizable(in.v, a.v_sl));
    const KeySchedule sched = key_schedule(a.q_offset + q0, a.q_offset + min(q0 + BM, a.Lq) - 1, a.Lk, a.R, BN,
                                           kv_async && !pair_masks, kv_async && !pair_masks && !causal);
    // K and V of key tile `tile` into pipeline stage `stage`.
    const AsyncRowCopier<T, D, LD, NT, BN> k_copier(in.k, a.k_sl), v_copier(in.v, a.v_sl);
    auto load_kv = [&](int stage, int tile) {
        if (kv_async) {
            k_copier.copy(Ks + stage * BN * LD, tile, a.Lk);
            v_copier.copy(Vs + stage * BN * LD, tile, a.Lk);
            cp_async_commit();
        } else {
            stage_rows_elementwise<T, D, LD, NT>(Ks + stage * BN * LD, in.k, a.k_sl, tile * BN, BN, a.Lk);
            stage_rows_elementwise<T, D, LD, NT>(Vs + stage * BN * LD, in.v, a.v_sl, tile * BN, BN, a.Lk);
        }
    };

    // Prologue: Q, the first key tile, and the table's edge rows T[0], T[2R] (rows 0, 1 of Ts; rows 2-7 zero).
    if (rows_vectorizable(in.q, a.q_sl)) AsyncRowCopier<T, D, LD, NT, BM>(in.q, a.q_sl).copy(Qs, blockIdx.x, a.Lq);
    else stage_rows<T, D, LD, NT>(Qs, in.q, a.q_sl, q0, BM, a.Lq);
    if (sched.n_tiles > 0) load_kv(0, sched.tile(0));
    stage_rows<T, D, LD, NT>(Ts, in.table, D, 0, 1, E + 1);
    stage_rows<T, D, LD, NT>(Ts + LD, in.table, D, E, 1, E + 1);
    stage_rows<T, D, LD, NT>(Ts + 2 * LD, in.table, D, E + 1, 6, E + 1);
    cp_async_wait<0>();
    __syncthreads();
    // Q_rot, read by the band loop after at least one more barrier.
    if constexpr (ROT) rotate_queries<T, D, LD, NT, BM>(QRs, Qs, a.rot_f32);

    const T* warp_q = Qs + warp * C::WROWS * LD;
    const QueryFragments<T, D, LD, MT, fwd_q_in_registers(D, PACKED, FEATURES)> qf(warp_q, lane);
    float m[RW], l[RW];  // row max (base 2) and this lane's partial row sum
    float acc[MT][NTD][4];
#pragma unroll
    for (int r = 0; r < RW; ++r) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) zero_acc(acc[mt]);

    // Far tiles: plain attention, straight-line; the far-left tiles (side 0), then the far-right ones (side 1). The
    // relative term is a per-row constant, bias = (q . T[0]) or (q . T[2R]) * scale * log2(e). The side's probability
    // mass needs no register: until the far-right tiles start it is l; from then on far_left follows the old mass.
    const int n_far = sched.n_far();
    float far_left[RW];
#pragma unroll
    for (int r = 0; r < RW; ++r) far_left[r] = 0.0f;
    int step = 0;
#pragma unroll 1
    for (int side = 0; side < 2; ++side) {
        float bias[RW];
        edge_bias<T, D, LD, MT>(bias, qf, Ts, side, scale_log2, lane);
        // The side's tiles are consecutive (tile = step + shift); after its last one comes step `end`'s tile, or, past
        // the last tile, a copy of nothing (every chunk zero-filled): the prefetch needs no branch.
        const int end = side == 0 ? sched.n_left : n_far;
        const int shift = side == 0 ? 0 : sched.mid_end - sched.n_left;
        const int after_tile = end < sched.n_tiles ? sched.tile(end) : 0, after_limit = end < sched.n_tiles ? a.Lk : 0;
        for (; step < end; ++step) {  // profile: far
            cp_async_wait<0>();
            __syncthreads();  // tile `step` visible; every warp done with the stage it replaces
            const bool inside = step + 1 < end;
            const int next_tile = inside ? step + 1 + shift : after_tile, next_limit = inside ? a.Lk : after_limit;
            k_copier.copy(Ks + ((step + 1) & 1) * BN * LD, next_tile, next_limit);
            v_copier.copy(Vs + ((step + 1) & 1) * BN * LD, next_tile, next_limit);
            cp_async_commit();
            const T* ks = Ks + (step & 1) * BN * LD;
            const T* vs = Vs + (step & 1) * BN * LD;

            float s[MT][NTN][4];
            warp_qk<T, D, LD, NTN>(s, qf, ks, lane);
            float tile_max[RW];
#pragma unroll
            for (int r = 0; r < RW; ++r) tile_max[r] = s[r >> 1][0][2 * (r & 1)];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NTN; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        tile_max[2 * mt + (e >> 1)] = fmaxf(tile_max[2 * mt + (e >> 1)], s[mt][nt][e]);
            float offset[RW], alpha[RW];
#pragma unroll
            for (int r = 0; r < RW; ++r) {
                const float m_new = fmaxf(m[r], fmaf(group_max<QUAD>(tile_max[r]), scale_log2, bias[r]));
                alpha[r] = fast_exp2(m[r] - m_new);  // 0 while m is -inf
                offset[r] = bias[r] - m_new;
                m[r] = m_new;
            }
            float sum[RW];
#pragma unroll
            for (int r = 0; r < RW; ++r) sum[r] = 0.0f;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NTN; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int r = 2 * mt + (e >> 1);
                        s[mt][nt][e] = fast_exp2(fmaf(s[mt][nt][e], scale_log2, offset[r]));
                        sum[r] += s[mt][nt][e];
                    }
#pragma unroll
            for (int r = 0; r < RW; ++r) {
                l[r] = fmaf(l[r], alpha[r], sum[r]);
                far_left[r] *= alpha[r];  // meaningful on side 1 only (set below after side 0)
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NTD; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[mt][nt][e] *= alpha[2 * mt + (e >> 1)];
            warp_pv<T, D, LD, NTN>(acc, s, vs, lane);
        }
        if (side == 0) {
#pragma unroll
            for (int r = 0; r < RW; ++r) far_left[r] = l[r];
        }
    }
    FarField far[RW];  // this lane's partial far-field masses
#pragma unroll
    for (int r = 0; r < RW; ++r) far[r] = {far_left[r], l[r] - far_left[r]};

    if constexpr (ROT) {
        // Band and partial tiles, ascending. A tile's S rows (extended table rows pos0 - R - BN + j) are staged only
        // when the tile meets the block's band (zero-filled otherwise: a partial far tile, whose pairs take the
        // edge terms alone); the first one here, the next ones with the prefetch of K and V.
        const int pos0 = a.q_offset + q0;
        const AsyncRowCopier<T, D, LD, NT, BN> s_copier(
            static_cast<const T*>(a.rot_keys) + static_cast<int64_t>(a.R + ROT_SHIFT - pos0) * D, D);
        // The S rows of `tile` below this limit are staged (tile * BN .. + BN for a band tile: its rows lie inside
        // the extended table, rotation_rows).
        auto s_limit = [&](int tile) {
            const int k0 = tile * BN;
            const bool meets_band = k0 + BN - 1 > pos0 - a.R && k0 < pos0 + BM - 1 + a.R;
            return meets_band ? min(k0 + BN, pos0 - a.R - ROT_SHIFT + a.rot_rows) : k0;
        };
        int tile = sched.tile(step);
        if (step < sched.n_tiles) {
            s_copier.copy(Ss + (step & 1) * BN * LD, tile, s_limit(tile));
            cp_async_commit();
        }
        // The lane rows' edge terms q . T[0], q . T[2R] (raw dot products), parked in shared memory [RW][NT] (8 bytes
        // each) until their row tile: in registers across the loop, the D = 128 kernel spilled.
        EdgeTerms* const edge_s = reinterpret_cast<EdgeTerms*>(QRs + BM * LD) + threadIdx.x;
        {
            float edge[2][RW];
            edge_bias<T, D, LD, MT>(edge[0], qf, Ts, 0, 1.0f, lane);
            edge_bias<T, D, LD, MT>(edge[1], qf, Ts, 1, 1.0f, lane);
#pragma unroll
            for (int r = 0; r < RW; ++r) edge_s[r * NT] = {edge[0][r], edge[1][r]};
        }
        // The row statistics (m, l, the two far masses) parked there too, [RW][NT] x 16 bytes after the edge terms,
        // for the loop: one row tile's in registers at a time (both row tiles' across the loop spilled at D = 64).
        RowStatsParking<RW, NT> parked(
            reinterpret_cast<ParkedRowStats*>(reinterpret_cast<float*>(QRs + BM * LD) + 2 * RW * NT) + threadIdx.x);
        parked.store(m, l, far);
        // The loop's tiles: the band tiles [n_left, mid_end), then the partial one (n_full) if any. A band tile is
        // whole and meets the band, so the next one's K, V and S rows come from sources advanced by one tile, with
        // no bounds; the partial tile's (once per block at most) from the general copy.
        const T* k_src = k_copier.tile_src(tile);
        const T* v_src = v_copier.tile_src(tile);
        const T* s_src = s_copier.tile_src(tile);
        const BandHalfWidth half_width = band_half_width(a.R);
        for (; step < sched.n_tiles; ++step) {  // profile: band
            const int k0 = tile * BN;
            cp_async_wait<0>();
            __syncthreads();
            const int next_stage = (step + 1) & 1;
            if (tile + 1 < sched.mid_end) {
                k_src += k_copier.tile_stride;
                v_src += v_copier.tile_stride;
                s_src += s_copier.tile_stride;
                k_copier.copy_whole(Ks + next_stage * BN * LD, k_src);
                v_copier.copy_whole(Vs + next_stage * BN * LD, v_src);
                s_copier.copy_whole(Ss + next_stage * BN * LD, s_src);
                cp_async_commit();
                ++tile;
            } else if (step + 1 < sched.n_tiles) {  // profile: rare (the partial last tile, after the band)
                const int skip = sched.n_full - tile;
                tile = sched.n_full;
                k_src += skip * k_copier.tile_stride;
                v_src += skip * v_copier.tile_stride;
                s_src += skip * s_copier.tile_stride;
                k_copier.copy_tile(Ks + next_stage * BN * LD, k_src, tile, a.Lk);
                v_copier.copy_tile(Vs + next_stage * BN * LD, v_src, tile, a.Lk);
                s_copier.copy_tile(Ss + next_stage * BN * LD, s_src, tile, s_limit(tile));
                cp_async_commit();
            }
            const T* ks = Ks + (step & 1) * BN * LD;
            const T* vs = Vs + (step & 1) * BN * LD;
            const T* ss = Ss + (step & 1) * BN * LD;
            const int cols = a.Lk - k0;  // key columns below Lk
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const int row0 = warp * C::WROWS + 16 * mt;  // the row tile's first row in the block
                // Pair (row h of the lane at position pos, column c = nt * 8 + 2 (lane % 4) + (e & 1)), k = nt * 8 +
                // (e & 1): in band when |k - mid| <= R - 1, mid = pos - k0 - 2 (lane % 4) (RowBand). With R >= BN / 2
                // (rotation_band_one_sided) a row's out-of-band keys in the tile lie on one side only: left when the
                // tile's first key is, pos - R - k0 >= 0, else right. So a pair takes the row's one edge term, and its
                // weight the row's one far mass; the test runs on f16x2, two keys of a row per instruction.
                bool left[2];
                float edge_dot[2];
                RowBand band[2];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int x = pos0 + row0 + (lane >> 2) + 8 * h - k0;  // pos - k0
                    left[h] = x >= a.R;
                    const EdgeTerms edge = edge_s[(2 * mt + h) * NT];
                    edge_dot[h] = left[h] ? edge.left : edge.right;
                    band[h] = row_band(x - 2 * (lane & 3));
                }
                // S = (Q_rot.S_tile^T in band, else the row's edge term) + Q.K^T: one accumulator tile, raw dots; the
                // band masks of P's packed registers kept for P_band.
                float s[1][NTN][4];
                uint32_t band_mask[NTN][2];
                warp_qk<T, D, LD, NTN>(s, QueryFragments<T, D, LD, 1, false>(QRs + row0 * LD, lane), ss, lane);
#pragma unroll
                for (int nt = 0; nt < NTN; ++nt)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        band_mask[nt][h] = select_band_pair(nt * 8, s[0][nt][2 * h], s[0][nt][2 * h + 1], edge_dot[h],
                                                            band[h], half_width);
                warp_qk<T, D, LD, NTN>(s, QueryFragments<T, D, LD, 1, false>(Qs + row0 * LD, lane), ks, lane, true);
                if (cols < BN) {  // profile: rare (the partial last tile: keys past Lk get zero weight)
                    for_each_acc<NTN>(lane, [&](int nt, int e, int, int col) {
                        if (col >= cols) s[0][nt][e] = -INFINITY;
                    });
                }
                // The row max of the raw dot products (scale_log2 > 0 commutes with max); p = 2^(s scale_log2 - m).
                float tile_max[2] = {-INFINITY, -INFINITY};
                for_each_acc<NTN>(lane, [&](int nt, int e, int, int) {
                    tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[0][nt][e]);
                });
                float tm[2], tl[2], alpha[2];  // the row tile's statistics, from the parking
                FarField tf[2];
                parked.load(mt, tm, tl, tf);
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const float m_new = fmaxf(tm[h], group_max<QUAD>(tile_max[h]) * scale_log2);
                    alpha[h] = fast_exp2(tm[h] - m_new);  // 0 while m is -inf (every tile has a key below Lk)
                    tm[h] = m_new;
                    tl[h] *= alpha[h];
                    tf[h].rescale(alpha[h]);
                }
#pragma unroll
                for (int nt = 0; nt < NTD; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[mt][nt][e] *= alpha[e >> 1];
                // The weights, packed as P's A fragments as they are computed (the fp32 tile dies here); O += P.V;
                // then the same registers masked to P_band (in-band pairs) for O += rotate(P_band.S_tile).
                uint32_t pw[NTN / 2][4];
                weights_to_a<T, NTN>(pw, s[0], scale_log2, tm[0], tm[1]);
                warp_packed_pv<T, D, LD, NTN>(acc[mt], pw, vs, lane);
                // The row sums by mma, of the packed weights (as P.V uses them): sum(P) to l, and sum(P) - sum(P_band)
                // to the row's one far side (cheaper than an add per pair, masked or not). Every lane of a quad gets
                // the row's sum, so each takes a quarter (exact): l and FarField are summed over the quad at the end.
                float row_sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                add_row_sums<T, NTN>(row_sum, pw, 0.25f);
                mask_to_band<NTN>(pw, band_mask);
                float far_mass[4] = {row_sum[0], row_sum[1], row_sum[2], row_sum[3]};
                add_row_sums<T, NTN>(far_mass, pw, -0.25f);
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    tl[h] += row_sum[2 * h];
                    tf[h].left += left[h] ? far_mass[2 * h] : 0.0f;
                    tf[h].right += left[h] ? 0.0f : far_mass[2 * h];
                }
                parked.store_tile(mt, tm, tl, tf);
                add_rotated_band_values<T, D, LD, NTN>(acc[mt], pw, ss, a.rot_f32 + (ROT_SHIFT + row0) * D, lane);
                __syncwarp();  // keeps the row tiles apart: interleaved, they spilled
            }
        }
        parked.load_all(m, l, far);
    }
    // Band, partial and (with masks, dropout or causal) every other tile, ascending (the table-slice path: not
    // compiled into the rotation kernel, whose loop above took every tile).
    for (; !ROT && step < sched.n_tiles; ++step) {  // profile: band
        const int k0 = sched.tile(step) * BN;
        // Causal-future tiles contribute exp(MASKED - m) == 0 unless a row is still all-masked.
        if (causal && causal_future_tile(a, q0, BM, k0)) {
            const LaneQueries<MT> rows = lane_queries<MT>(a, wrow0, lane);
            bool skip = true;
#pragma unroll
            for (int r = 0; r < RW; ++r) skip = skip && row_skips_future_keys(rows.valid[r], m[r]);
            if (__syncthreads_and(skip)) break;
        }
        cp_async_wait<0>();
        __syncthreads();
        if (step + 1 < sched.n_tiles) load_kv((step + 1) & 1, sched.tile(step + 1));
        const T* ks = Ks + (step & 1) * BN * LD;
        const T* vs = Vs + (step & 1) * BN * LD;
        const int pos_first = a.q_offset + q0;
        const TableRows tr = tile_table_rows(pos_first, pos_first + BM - 1, k0, k0 + BN - 1, a.R);
        stage_rows<T, D, LD, NT, true>(Ts, in.table, D, tr.lo, tc_table_stage_rows(tr, 16, C::TS_ROWS), E + 1);
        __syncthreads();

        // Row tile by row tile (K and V fragments loaded per row tile here: band tiles are few, and the far loop's
        // registers, Q's fragments included, go to the per-pair state): its table slice, Q.T_slice^T into the warp's
        // scratch gathered per pair, the softmax, the bucket of interior pairs, then P.V and Bucket.T_slice.
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const T* tile_q = warp_q + mt * 16 * LD;
            const LaneQueries<1> rq = lane_queries<1>(a, wrow0 + 16 * mt, lane);
            float s[1][NTN][4];
            warp_qk<T, D, LD, NTN>(s, QueryFragments<T, D, LD, 1, false>(tile_q, lane), ks, lane);
            const WarpSlice<T> ws = warp_table_slice<T, LD, BN>(Ts, tr.lo, a, wrow0 + 16 * mt, k0);
            if (mt > 0) __syncwarp();  // every lane has read the previous row tile's bucket
            warp_project<T, D>(qt, C::QT_LD, tile_q, ws.ts, LD, (ws.count + 7) / 8, lane);
            __syncwarp();  // qt visible to the whole warp

            float tile_max[2] = {-INFINITY, -INFINITY};
            for_each_acc<NTN>(lane, [&](int nt, int e, int tile_row, int tile_col) {
                const int r = 2 * mt + (e >> 1), j = k0 + tile_col;
                float sc = -INFINITY;  // keys past Lk get zero weight
                if (j < a.Lk) {
                    const int idx = relative_index(j, rq.pos[e >> 1], a.R);
                    const float dot = s[0][nt][e] + qt[tile_row * C::QT_LD + idx - ws.rows.lo];
                    sc = score_log2(rq.valid[e >> 1] ? feature_score<F>(a, head, rq.i[e >> 1], j, rq.pos[e >> 1], dot)
                                                  : finalize_score(dot, a.scale, 0.0f, false));
                }
                s[0][nt][e] = sc;
                tile_max[e >> 1] = fmaxf(tile_max[e >> 1], sc);
            });
            float alpha[2];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = 2 * mt + h;
                const float m_new = fmaxf(m[r], group_max<QUAD>(tile_max[h]));
                alpha[h] = m[r] == -INFINITY ? 0.0f : fast_exp2(m[r] - m_new);
                m[r] = m_new;
                l[r] *= alpha[h];
                far[r].rescale(alpha[h]);
            }
#pragma unroll
            for (int nt = 0; nt < NTD; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[mt][nt][e] *= alpha[e >> 1];

            const bool band = tile_in_band(ws.rows, a.R);
            __syncwarp();  // every lane has read qt: the bucket may overwrite it
            if (band) clear_warp_bucket<C::BK_LD>(bucket, lane);
            for_each_acc<NTN>(lane, [&](int nt, int e, int tile_row, int tile_col) {
                const int r = 2 * mt + (e >> 1), j = k0 + tile_col;
                const float p = fast_exp2(s[0][nt][e] - m[r]);
                l[r] += p;
                float w = p;
                if (j < a.Lk && rq.valid[e >> 1]) {
                    if constexpr (F == Features::GENERAL) {
                        // Dropped weights leave the output but not the normalizer l; 1/(1-p) is applied at the end.
                        if (!dropout_keep(a.dropout_seed, a.dropout_p, head.bh, rq.i[e >> 1], j)) w = 0.0f;
                    }
                    const int idx = relative_index(j, rq.pos[e >> 1], a.R);
                    if (!far[r].add(idx, E, w)) bucket[tile_row * C::BK_LD + idx - ws.rows.lo] = from_f<T>(w);
                }
                s[0][nt][e] = w;
            });
            warp_pv<T, D, LD, NTN>(acc, s, vs, lane, mt);
            if (band) {
                __syncwarp();
                warp_bucket_times_table<T, D>(acc[mt], bucket, C::BK_LD, ws.ts, LD, (ws.count + 15) / 16, lane);
            }
        }
    }
    cp_async_wait<0>();  // a causal exit leaves the prefetch in flight

    const float kept_scale = kept_weight_scale(a, head.bh);
    const LaneQueries<MT> rows = lane_queries<MT>(a, wrow0, lane);
#pragma unroll
    for (int r = 0; r < RW; ++r) {
        l[r] = group_sum<QUAD>(l[r]);
        far[r].template reduce<QUAD>();
    }
#pragma unroll
    for (int r = 0; r < RW; ++r) {
        if (!rows.valid[r]) continue;
        const float f = PACKED && l[r] == 0.0f ? 0.0f : kept_scale / l[r];  // 0: a sequence without keys
        T* og = out + query_row(a, head, rows.i[r]) * D;
        for_each_acc_in_row<NTD>(lane, r & 1, [&](int nt, int e, int d) {
            og[d] = from_f<T>(f * far[r].template plus_edge_rows<T, D>(acc[r >> 1][nt][e], in.table, a.R, d));
        });
        // Natural units; a fully masked row's max stays exactly finfo.min (its scores were clamped to it).
        const float m_nat = m[r] == MASKED_SCORE ? MASKED_SCORE : m[r] * LN2;
        if ((lane & 3) == 0) store_row_stats(a, lse, head, rows.i[r], m_nat, l[r]);
    }
}

// Q, two pipeline stages of K and V, then: the staged table rows and the per-warp scratch; or (rotation) the 8 edge
// rows, two stages of S tiles, Q_rot, the edge terms and the parked row statistics ((2 + 4) x 2 MT floats per
// thread).
template <typename C, bool ROT>
constexpr size_t fwd_tc_smem_bytes() {
    if constexpr (ROT) return 2 * (C::BM + 4 * C::BN + 8 + 2 * C::BN + C::BM) * C::LD + 4 * 6 * 2 * C::MT * C::NT;
    return 2 * (C::BM + 4 * C::BN + C::TS_ROWS) * C::LD + 4 * C::WARPS * 16 * C::QT_LD;
}

// The kernel's feature set: the rotation for PLAIN calls with the sinusoid's extended table where it is built
// (rotation_kernel), K / V rows allow cp.async and the scale is positive (the rotation kernel's row max is taken over
// the unscaled dot products), else PLAIN / GENERAL.
// Whether every K and V row of the call allows 16-byte copies (the kernel's rows_vectorizable for every head and
// sequence): base pointers 16-byte aligned, every stride a multiple of 8 elements.
inline bool rotation_kv_async(const AttnArgs& a) {
    auto ok = [](const void* p, int64_t sb, int64_t sh, int64_t sl) {
        return reinterpret_cast<uintptr_t>(p) % 16 == 0 && sb % 8 == 0 && sh % 8 == 0 && sl % 8 == 0;
    };
    return ok(a.k, a.k_sb, a.k_sh, a.k_sl) && ok(a.v, a.v_sb, a.v_sh, a.v_sl);
}

template <int D, bool PACKED, typename L>
inline const char* dispatch_fwd_features(const AttnArgs& a, L&& launch) {
    if constexpr (rotation_kernel(D, PACKED)) {
        if (a.rot_keys != nullptr && features_of(a) == Features::PLAIN && a.scale > 0.0f &&
            rotation_band_one_sided(a.R) && rotation_band_exact(a.R) && rotation_kv_async(a))
            return launch(std::integral_constant<int, FEATURES_ROTATION>{});
    }
    return dispatch_features(a, launch);
}

const char* relattn_fwd_tc(const AttnArgs& a, DType dtype, void* o, float* lse, int device, void* stream) {
    return dispatch_kernel<Impl::TC>(dtype, a.D, [&](auto element, auto head_dim) {
        using T = typename decltype(element)::type;
        constexpr int D = decltype(head_dim)::value;
        return dispatch_layout(a, [&](auto packed) {
            constexpr bool PACKED = decltype(packed)::value;
            return dispatch_fwd_features<D, PACKED>(a, [&](auto features) {
                constexpr int FEATURES = decltype(features)::value;
                using C = TcFwdConfig<D, fwd_row_tiles(D, PACKED, FEATURES)>;
                return launch_row_blocks<C>(relattn_fwd_tc_kernel<T, D, PACKED, FEATURES>, a.Lq,
                                            fwd_tc_smem_bytes<C, FEATURES == FEATURES_ROTATION>(), a, device, stream,
                                            static_cast<T*>(o), lse);
            });
        });
    });
}

}  // namespace nezha
