// The key-block side of the tensor-core backward, shared by the two-kernel backward's dK dV kernel
// (relattn_bwd_tc.cu) and the fused backward (relattn_bwd_fused.cu): a block owns BM = 64 keys (16 per warp) and
// streams query tiles of QN = 32 rows, double-buffered: the next tile's Q, dO rows and row statistics arrive by
// cp.async while this one computes (QueryTileLoader). Per band tile: the block-wide table projections Q.T^T and
// dO.T^T over the tile's table rows (key side and value side of the relative term); per far tile (every pair on one
// side, one table row) only per-row terms, folded into the row's statistics, against the table's two edge rows
// (staged once, stage_edge_rows). Then per warp S^T = K.Q^T and dP^T = V.dO^T by mma (fragments by ldmatrix) and
// the pair gradients (dV's weight W^T and dS^T) in the accumulators, and dK, dV accumulated in registers.
#pragma once

#include "relattn_async.cuh"
#include "relattn_flash.h"
#include "relattn_tc.cuh"

namespace nezha {

// pair_grad with only the feature set's masks: PLAIN has no mask and no dropout (every weight kept, f = kept_scale),
// and P = 2^(dot * scale * log2 e - (m + log l) * log2 e). PLAIN's dV weight is p without f (f is one number per
// head there: store_dkdv applies it to dV once instead of once per pair); GENERAL's is p f with its dropout mask.
template <Features F>
__device__ __forceinline__ PairGrad feature_pair_grad(const AttnArgs& a, HeadIndex head, int i, int j, int pos,
                                                      float dot, float dw, const RowStats& row, float kept_scale) {
    if constexpr (F == Features::GENERAL) {
        return pair_grad(a, head, i, j, pos, dot, dw, row, kept_scale);
    } else {  // one FFMA and one ex2 per pair, as the forward's far loop (no masks: the row max is finite)
        const float p = fast_exp2(fmaf(dot, a.scale * LOG2E, -(row.max + row.log_sum) * LOG2E));
        PairGrad g;
        g.w = p;
        g.ds = p * (dw * kept_scale - row.delta);
        return g;
    }
}

// qtb[i][c] = q_i . T[lo + c] and dotb[i][c] = dO_i . T[lo + c] (fp32, stride TB_LD) for the tile's QN query rows
// (Qs, dOs) and its staged table rows (Ts, tcols of them, a multiple of 8): (QN / 16) x (tcols / 8) output tiles of
// 16 x 8, round-robin over the warps (A fragments by ldmatrix).
template <typename T, typename C>
__device__ __forceinline__ void project_band_tile(float* qtb, float* dotb, const T* Qs, const T* dOs, const T* Ts,
                                                  int tcols, int warp, int lane) {
    constexpr int QN = C::QN, LD = C::LD, TB_LD = C::TB_LD;
    const int jobs = (QN / 16) * (tcols / 8);
    for (int job = warp; job < jobs; job += C::WARPS) {
        const int mt = job % (QN / 16), nt = job / (QN / 16);
        float cq[4] = {0.0f, 0.0f, 0.0f, 0.0f}, cd[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int kk = 0; kk < C::D / 16; ++kk) {
            uint32_t aq[4], ado[4], bf[2];
            ldsm_x4(aq, Qs + mt * 16 * LD + ldsm_a_offset(lane, LD) + kk * 16);
            ldsm_x4(ado, dOs + mt * 16 * LD + ldsm_a_offset(lane, LD) + kk * 16);
            load_b_nmajor(bf, Ts + nt * 8 * LD + kk * 16, LD, lane);
            MmaOp<T>::run(cq, aq, bf);
            MmaOp<T>::run(cd, ado, bf);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const FragRC x = mma_c_elem(lane, e);
            const int o = (mt * 16 + x.row) * TB_LD + nt * 8 + x.col;
            qtb[o] = cq[e];
            dotb[o] = cd[e];
        }
    }
}

// A far tile (every pair of the query tile x key block on one side, |j - i| >= R) uses one table row T[e], e = 0
// or 2R, for all its pairs: the relative terms are per query row, q_i . T[e] in the score and dO_i . T[e] in dP.
// PLAIN folds them into the row's statistics (bias = (scale q_i . T[e] - m_i - log l_i) log2 e, so that
// p = 2^(s scale log2 e + bias); dside = f dO_i . T[e] - delta_i, so that dS = p (dP f + dside)); GENERAL keeps them
// apart (bias = q_i . T[e], dside = dO_i . T[e]) for pair_grad's masks and dropout.
struct FarRow {
    float bias;
    float dside;
};
static_assert(sizeof(FarRow) == 2 * sizeof(float), "project_far_tile_rows writes a row's terms as floats");

// far_s[il] for the tile's QN query rows (Qs, dOs) against the table's edge rows (Te rows 0 and 1 = T[0], T[2R],
// rows 2-7 zero: stage_edge_rows): warp w projects row tile w % (QN / 16) of Q (bias) or dO (dside, the warps from
// QN / 16 on), one 16 x 8 mma per k-step, and the lanes of columns 0-1 write its rows' term for T[0] (far left) or
// T[2R] (right). The two halves of the fold need no exchange (bias from q . T[e] and the row's max and log-sum,
// dside from dO . T[e] and delta). stats_s must be visible (a barrier before).
template <Features F, typename T, typename C>
__device__ __forceinline__ void project_far_tile_rows(FarRow* far_s, const T* Qs, const T* dOs, const T* Te,
                                                      const RowStats* stats_s, const AttnArgs& a, float kept_scale,
                                                      bool right, const LdsmLane<C::LD>& ll, int warp, int lane) {
    constexpr int LD = C::LD, MT = C::QN / 16;
    static_assert(C::WARPS == 2 * MT, "one warp per row tile and operand");
    const bool is_do = warp >= MT;
    const int mt = warp % MT;
    const T* A = (is_do ? dOs : Qs) + mt * 16 * LD + ll.a;
    // B (Te rows n = 0..7, k along the row) by ldmatrix .x4, two k-steps each: matrices k 0-7, 8-15, 16-23, 24-31
    const T* B = Te + (lane & 7) * LD + (lane >> 3) * 8;
    static_assert(C::D % 32 == 0, "edge-row fragments two k-steps at a time");
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int kp = 0; kp < C::D / 32; ++kp) {
        uint32_t b4[4];
        ldsm_x4(b4, B + kp * 32);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            uint32_t af[4];
            ldsm_x4(af, A + (2 * kp + h) * 16);
            const uint32_t bf[2] = {b4[2 * h], b4[2 * h + 1]};
            MmaOp<T>::run(c, af, bf);
        }
    }
    float v[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // columns 0, 1: elements 2r, 2r + 1 (row g, then g + 8) of the lanes 4 g
        v[r] = right ? c[2 * r + 1] : c[2 * r];
        if constexpr (F == Features::PLAIN) {
            const RowStats st = stats_s[mt * 16 + mma_c_elem(lane, 2 * r).row];
            v[r] = is_do ? fmaf(kept_scale, v[r], -st.delta) : (a.scale * v[r] - st.max - st.log_sum) * LOG2E;
        }
    }
    if (lane % 4 == 0) {  // rows g, g + 8: bias or dside (FarRow's second float)
        float* dst = reinterpret_cast<float*>(far_s + mt * 16 + mma_c_elem(lane, 0).row) + (is_do ? 1 : 0);
        dst[0] = v[0];
        dst[8 * 2] = v[1];
    }
}

// The far tiles' table rows, staged once per key block (the loop's first barrier publishes them): Te rows 0 and 1 =
// T[0] and T[2R] (E = 2R), rows 2-7 zero. The kernels place Te right before Ks, so that a 16-row k-step from Te (the
// fused kernel's dQ edge step, whose A is zero past column 1) reads K rows 0-7 as its rows 8-15: finite, times zero.
constexpr int EDGE_ROWS = 8;

template <typename T, int D, int LD, int NT>
__device__ __forceinline__ void stage_edge_rows(T* Te, const T* __restrict__ table, int E) {
#pragma unroll 1
    for (int e = threadIdx.x; e < EDGE_ROWS * D; e += NT) {
        const int r = e / D, c = e % D;
        Te[r * LD + c] = r < 2 ? table[(r == 0 ? 0 : E) * D + c] : from_f<T>(0.0f);
    }
}

// This lane's two keys (accumulator rows g and g + 8 of its warp's 16) and whether they are below Lk.
struct LaneKeys {
    int j[2];
    bool valid[2];
};

__device__ __forceinline__ LaneKeys lane_keys(const AttnArgs& a, int key0, int lane) {
    LaneKeys k;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        k.j[r] = key0 + mma_c_elem(lane, 2 * r).row;
        k.valid[r] = k.j[r] < a.Lk;
    }
    return k;
}

// What a key block of either backward kernel sets up before its query loop: the head and its inputs, the block's
// first key, this lane's keys, dO's rows, the kept weights' factor; K and V of the block staged into Ks, Vs.
template <typename T>
struct KeyBlock {
    HeadIndex head;
    int k0;
    LaneKeys keys;
    HeadInputs<T> in;
    const T* dog;   // dO row 0 of the head
    int64_t do_sl;  // dO row stride
    float kept_scale;
};

// Fills kb for block blockIdx.x (a padding-free call narrows `a` to the block's sequence first) and stages its K and V
// rows; false (nothing staged) for a padding-free block past its sequence's keys. The caller's loop needs a barrier
// before it reads Ks, Vs (its first tile's begin_query_tile).
template <typename T, typename C, bool PACKED>
__device__ __forceinline__ bool setup_key_block(KeyBlock<T>& kb, AttnArgs& a, const T* dout, T* Ks, T* Vs, int warp,
                                                int lane) {
    constexpr int D = C::D;
    kb.head = block_head<PACKED>(a);
    if constexpr (PACKED) a = sequence_args<T>(a, kb.head);  // dense: `a` stays the kernel parameter
    kb.k0 = blockIdx.x * C::BM;
    if (PACKED && kb.k0 >= a.Lk) return false;  // past its sequence
    kb.keys = lane_keys(a, kb.k0 + warp * 16, lane);
    kb.in = head_inputs<T>(a, kb.head);
    kb.dog = dout + query_row(a, kb.head, 0) * D;
    kb.do_sl = static_cast<int64_t>(row_step(a, kb.head)) * D;
    kb.kept_scale = kept_weight_scale(a, kb.head.bh);
    stage_rows<T, D, C::LD, C::NT>(Ks, kb.in.k, a.k_sl, kb.k0, C::BM, a.Lk);
    stage_rows<T, D, C::LD, C::NT>(Vs, kb.in.v, a.v_sl, kb.k0, C::BM, a.Lk);
    return true;
}

// Which streamed query tiles of a key block are band tiles, by one loop-carried offset (a far tile pays an add and
// two compares, not its table rows): with positions q_offset + q0 .. + QN - 1 and keys k0 .. k0 + BM - 1, a tile is
// far right (every pair j - i >= R, table row 2R) while k0 - (q_offset + q0 + QN - 1) >= R, and far left (j - i <= -R,
// row 0) once k0 + BM - 1 - (q_offset + q0) <= -R; rel = q0 - the first q0 past the far-right ones, so the band
// tiles are 0 <= rel < BM + 2R + QN - 3 (tile_table_rows / tile_in_band say the same, R >= 1).
template <typename C>
struct QueryTileClass {
    int rel;

    __device__ __forceinline__ QueryTileClass(const AttnArgs& a, int k0)
        : rel(a.q_offset + C::QN - 2 + a.R - k0) {}  // the first tile's (q0 = 0)
    __device__ __forceinline__ bool band(const AttnArgs& a) const {
        return static_cast<unsigned>(rel) < static_cast<unsigned>(2 * a.R + C::BM + C::QN - 3);
    }
    __device__ __forceinline__ bool far_right() const { return rel < 0; }
    __device__ __forceinline__ void advance() { rel += C::QN; }
};

// A band tile's table rows (q0: the tile's first query row, k0: the key block's first key). Called inside the band
// arms, each arm its own call, so that a far tile does not compute them.
template <typename C>
__device__ __forceinline__ TableRows band_tile_rows(const AttnArgs& a, int q0, int k0) {
    const int pos_first = a.q_offset + q0;
    return tile_table_rows(pos_first, pos_first + C::QN - 1, k0, k0 + C::BM - 1, a.R);
}

// The staged table rows of a band tile: a multiple of 8 (the projections' n-tiles), and of 16 for the fused kernel's
// dQ bucket k-steps.
__device__ __forceinline__ int band_tile_cols(TableRows tr) { return round_up(tr.hi - tr.lo + 1, 8); }
__device__ __forceinline__ int band_tile_kcols(TableRows tr) { return round_up(band_tile_cols(tr), 16); }

// The streamed query tiles' loads, issued one tile ahead (the key-block loops hold two buffers of Q, dO and the row
// statistics): Q and dO rows by cp.async where every row allows 16-byte copies (else element copies, rare strided
// views), the statistics (lse[0], lse[1], delta of each row) by 4-byte cp.async from threads 0 .. QN - 1; rows past
// Lq zero-filled, so that a load past the last tile reads nothing. The caller commits, waits and publishes with a
// barrier.
template <typename T, typename C>
struct QueryTileLoader {
    static constexpr int QN = C::QN;
    using Rows = AsyncRowCopier<T, C::D, C::LD, C::NT, QN>;
    Rows q_rows, do_rows;
    // D = 128 (the dK dV kernel at 244-255 registers) keeps one statistics index instead of three pointers: without
    // that, its GENERAL kernel spilled 16 bytes on sm_90a.
    static constexpr bool LEAN = C::D >= 128;
    const T* q_src;       // this thread's first chunk of Q's row 0 of the next tile to load (async)
    const T* do_src;      // dO's
    const float* lse0;    // lse[0] of query row threadIdx.x of the next tile to load (threads < QN)
    const float* lse1;    // lse[1] (not LEAN)
    const float* dlt;     // delta (not LEAN)
    int next;             // first query row of the next tile to load
    bool async;

    __device__ __forceinline__ QueryTileLoader(const AttnArgs& a, const KeyBlock<T>& kb, const float* lse,
                                               const float* delta)
        : q_rows(kb.in.q, a.q_sl), do_rows(kb.dog, kb.do_sl) {
        async = rows_vectorizable(kb.in.q, a.q_sl) && rows_vectorizable(kb.dog, kb.do_sl);
        q_src = q_rows.src;
        do_src = do_rows.src;
        const int64_t row = stat_index(a, kb.head, threadIdx.x);
        lse0 = lse + row;
        lse1 = lse + stat_half(a, kb.head) + row;
        dlt = delta + row;
        next = 0;
    }

    // The next tile's Q and dO rows into Qs, dOs and its row statistics into stats_s (zeros past Lq, as
    // load_row_stats); then the addresses advance by one tile. lse, delta: the kernel's (LEAN recomputes from them).
    __device__ __forceinline__ void load_next(T* Qs, T* dOs, RowStats* stats_s, const AttnArgs& a,
                                              const KeyBlock<T>& kb, const float* lse, const float* delta) {
        const int rows_left = a.Lq - next - q_rows.row0;  // Q's and dO's copiers share the thread's rows
        if (!async) {  // profile: rare (strided views)
            stage_rows_elementwise<T, C::D, C::LD, C::NT>(Qs, kb.in.q, a.q_sl, next, QN, a.Lq);
            stage_rows_elementwise<T, C::D, C::LD, C::NT>(dOs, kb.dog, kb.do_sl, next, QN, a.Lq);
        } else {
            q_rows.copy_from(Qs, q_src, rows_left);
            do_rows.copy_from(dOs, do_src, rows_left);
        }
        if (threadIdx.x < QN) {
            const bool valid = next + static_cast<int>(threadIdx.x) < a.Lq;
            if constexpr (LEAN) {
                const int64_t row = lse0 - lse;
                cp_async4(&stats_s[threadIdx.x].max, lse0, valid);
                cp_async4(&stats_s[threadIdx.x].log_sum, lse0 + stat_half(a, kb.head), valid);
                cp_async4(&stats_s[threadIdx.x].delta, delta + row, valid);
            } else {
                cp_async4(&stats_s[threadIdx.x].max, lse0, valid);
                cp_async4(&stats_s[threadIdx.x].log_sum, lse1, valid);
                cp_async4(&stats_s[threadIdx.x].delta, dlt, valid);
            }
        }
        q_src += q_rows.tile_stride;
        do_src += do_rows.tile_stride;
        lse0 += QN;
        if constexpr (!LEAN) {
            lse1 += QN;
            dlt += QN;
        }
        next += QN;
    }
};

// The shared buffers of one streamed query tile.
template <typename T>
struct QueryTileBuffers {
    T* q;
    T* dO;
    RowStats* stats;
};

// Start of the key-block loop's tile at q0 (its loads in buffer cur, issued a tile ahead): waits for them and
// publishes them with a barrier, which also ends every warp's reads of the previous tile (buffer nxt, the table rows,
// the scratch), then issues the next tile's loads into nxt. False: the tile is skipped (causal: every key in the
// future of every valid row and every row has an attended key; p = 0 for all its pairs). A skipped tile's rows are
// loaded all the same (the skip needs its statistics, which arrive with them): causal calls read Q and dO once per
// key block for every query tile, as the two-kernel backward's dQ side does. (PLAIN calls are never causal.)
template <Features F, typename T, typename C>
__device__ __forceinline__ bool begin_query_tile(QueryTileLoader<T, C>& ld, QueryTileBuffers<T> cur,
                                                 QueryTileBuffers<T> nxt, const AttnArgs& a, const KeyBlock<T>& kb,
                                                 const float* lse, const float* delta, int q0) {
    constexpr int QN = C::QN;
    cp_async_wait<0>();
    __syncthreads();
    ld.load_next(nxt.q, nxt.dO, nxt.stats, a, kb, lse, delta);
    cp_async_commit();
    if constexpr (F == Features::PLAIN) return true;
    return !(causal_future_tile(a, q0, QN, kb.k0) && rows_skip_future_keys<QN>(cur.stats, q0, a.Lq));
}

// One warp's 16 keys (Ks, Vs rows from the warp's first) x the QN queries of the tile: S^T = K.Q^T into w[] and
// dP^T = V.dO^T into ds[], by mma; fragments by ldmatrix (A: the warp's K / V rows; B: two query n-tiles per .x4
// from the n-major Q / dO rows).
template <typename T, typename C>
__device__ __forceinline__ void warp_scores(float (&w)[C::QN / 8][4], float (&ds)[C::QN / 8][4], const T* Ks_warp,
                                            const T* Vs_warp, const T* Qs, const T* dOs, const LdsmLane<C::LD>& ll) {
    constexpr int LD = C::LD;
    zero_acc(w);
    zero_acc(ds);
    const int a_off = ll.a, b_off = ll.b_n;
#pragma unroll
    for (int kk = 0; kk < C::D / 16; ++kk) {
        uint32_t ak[4], av[4];
        ldsm_x4(ak, Ks_warp + a_off + kk * 16);
        ldsm_x4(av, Vs_warp + a_off + kk * 16);
#pragma unroll
        for (int np = 0; np < C::QN / 16; ++np) {
            uint32_t bq[4], bd[4];
            ldsm_x4(bq, Qs + b_off + np * 16 * LD + kk * 16);
            ldsm_x4(bd, dOs + b_off + np * 16 * LD + kk * 16);
            const uint32_t q0[2] = {bq[0], bq[1]}, q1[2] = {bq[2], bq[3]};
            const uint32_t d0[2] = {bd[0], bd[1]}, d1[2] = {bd[2], bd[3]};
            MmaOp<T>::run(w[2 * np], ak, q0);
            MmaOp<T>::run(ds[2 * np], av, d0);
            MmaOp<T>::run(w[2 * np + 1], ak, q1);
            MmaOp<T>::run(ds[2 * np + 1], av, d1);
        }
    }
}

// warp_scores' S^T, dP^T in place into W^T (dV's weights p f) and dS^T, zero for pairs past Lq / Lk, band tile q0
// (its table rows tr). The projections qtb / dotb of the tile must be visible (a barrier after project_band_tile).
// (Function names with far_tile / band_tile give their lines the static profile's roles: compile_check/roles.py.)
template <Features F, typename C>
__device__ __forceinline__ void warp_pair_grads_band_tile(float (&w)[C::QN / 8][4], float (&ds)[C::QN / 8][4],
                                                          const AttnArgs& a, HeadIndex head, const LaneKeys& keys,
                                                          const float* qtb, const float* dotb,
                                                          const RowStats* stats_s, TableRows tr, int q0,
                                                          float kept_scale, int lane) {
    for_each_acc<C::QN / 8>(lane, [&](int nt, int e, int, int il) {  // il: the query's column in the tile
        const int r = e >> 1, i = q0 + il;
        float weight = 0.0f, grad = 0.0f;
        if constexpr (F == Features::PLAIN) {  // branch-free: pairs past Lq / Lk are finite (zero-filled rows)
            const int pos = a.q_offset + i, j = keys.j[r];
            const int col = il * C::TB_LD + relative_index(j, pos, a.R) - tr.lo;
            const PairGrad g = feature_pair_grad<F>(a, head, i, j, pos, w[nt][e] + qtb[col], ds[nt][e] + dotb[col],
                                                    stats_s[il], kept_scale);
            const bool valid = keys.valid[r] && i < a.Lq;
            weight = valid ? g.w : 0.0f;
            grad = valid ? g.ds : 0.0f;
        } else if (keys.valid[r] && i < a.Lq) {
            const int pos = a.q_offset + i, j = keys.j[r];
            const int col = il * C::TB_LD + relative_index(j, pos, a.R) - tr.lo;
            const PairGrad g = feature_pair_grad<F>(a, head, i, j, pos, w[nt][e] + qtb[col], ds[nt][e] + dotb[col],
                                                    stats_s[il], kept_scale);
            weight = g.w;
            grad = g.ds;
        }
        w[nt][e] = weight;
        ds[nt][e] = grad;
    });
}

// The pair gradients of a far tile: the relative terms from far_s (project_far_tile_rows, visible after a barrier) per
// query row, no relative index and no gather per pair. PLAIN: one FFMA and one ex2 for p, dS zero for keys past Lk
// (rows past Lq give dS = 0 and W . dO = 0 by themselves: their Q, dO rows and statistics are zero); W of keys past Lk
// is left as computed (it only reaches their own, unstored rows of dV). Only the lanes of the last key block's keys
// past Lk select (FlashAttention's even-N split: the bound only where a tile can cross it).
template <Features F, typename C>
__device__ __forceinline__ void warp_pair_grads_far_tile(float (&w)[C::QN / 8][4], float (&ds)[C::QN / 8][4],
                                                         const AttnArgs& a, HeadIndex head, const LaneKeys& keys,
                                                         const FarRow* far_s, const RowStats* stats_s, int q0,
                                                         float kept_scale, int lane) {
    const float scale_log2 = a.scale * LOG2E;
    for_each_acc<C::QN / 8>(lane, [&](int nt, int e, int, int il) {
        const int r = e >> 1;
        const FarRow fr = far_s[il];
        if constexpr (F == Features::PLAIN) {
            const float p = fast_exp2(fmaf(w[nt][e], scale_log2, fr.bias));
            const float g = p * fmaf(ds[nt][e], kept_scale, fr.dside);
            w[nt][e] = p;  // f: at the store (feature_pair_grad)
            ds[nt][e] = g;
        } else {
            const int i = q0 + il;
            float weight = 0.0f, grad = 0.0f;
            if (keys.valid[r] && i < a.Lq) {
                const PairGrad pg = pair_grad(a, head, i, keys.j[r], a.q_offset + i, w[nt][e] + fr.bias,
                                              ds[nt][e] + fr.dside, stats_s[il], kept_scale);
                weight = pg.w;
                grad = pg.ds;
            }
            w[nt][e] = weight;
            ds[nt][e] = grad;
        }
    });
    if constexpr (F == Features::PLAIN) {
        if (!(keys.valid[0] && keys.valid[1])) {  // profile: rare (a key past Lk: the last key block only)
            for_each_acc<C::QN / 8>(lane, [&](int nt, int e, int, int) {
                if (!keys.valid[e >> 1]) ds[nt][e] = 0.0f;
            });
        }
    }
}

// acc_v += W^T . dO and acc_k += dS^T . Q over the tile's QN queries (dO, Q rows k-major: B[k = query][n = d]),
// B fragments by ldmatrix .trans, two d n-tiles per .x4.
template <typename T, typename C>
__device__ __forceinline__ void warp_accumulate_dkdv(float (&acc_k)[C::D / 8][4], float (&acc_v)[C::D / 8][4],
                                                     const float (&w)[C::QN / 8][4], const float (&ds)[C::QN / 8][4],
                                                     const T* Qs, const T* dOs, const LdsmLane<C::LD>& ll) {
    constexpr int LD = C::LD;
    const int b_off = ll.b_k;
#pragma unroll
    for (int kk = 0; kk < C::QN / 16; ++kk) {
        uint32_t aw[4], ads[4];
        acc_to_a<T, C::QN / 8>(aw, w, kk);
        acc_to_a<T, C::QN / 8>(ads, ds, kk);
#pragma unroll
        for (int dp = 0; dp < C::D / 16; ++dp) {
            uint32_t bd[4], bq[4];
            ldsm_x4_trans(bd, dOs + b_off + kk * 16 * LD + dp * 16);
            ldsm_x4_trans(bq, Qs + b_off + kk * 16 * LD + dp * 16);
            const uint32_t d0[2] = {bd[0], bd[1]}, d1[2] = {bd[2], bd[3]};
            const uint32_t q0[2] = {bq[0], bq[1]}, q1[2] = {bq[2], bq[3]};
            MmaOp<T>::run(acc_v[2 * dp], aw, d0);
            MmaOp<T>::run(acc_k[2 * dp], ads, q0);
            MmaOp<T>::run(acc_v[2 * dp + 1], aw, d1);
            MmaOp<T>::run(acc_k[2 * dp + 1], ads, q1);
        }
    }
}

// dk = scale * acc_k and dv = acc_v (PLAIN: kept_scale * acc_v, see feature_pair_grad) for this lane's valid keys.
template <Features F, typename T, int D>
__device__ __forceinline__ void store_dkdv(T* dk, T* dv, const float (&acc_k)[D / 8][4],
                                           const float (&acc_v)[D / 8][4], const AttnArgs& a, HeadIndex head,
                                           const LaneKeys& keys, float kept_scale, int lane) {
    const float v_scale = F == Features::PLAIN ? kept_scale : 1.0f;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (!keys.valid[r]) continue;
        const int64_t base = key_row(a, head, keys.j[r]) * D;
        for_each_acc_in_row<D / 8>(lane, r, [&](int nt, int e, int d) {
            dk[base + d] = from_f<T>(a.scale * acc_k[nt][e]);
            dv[base + d] = from_f<T>(v_scale * acc_v[nt][e]);
        });
    }
}

}  // namespace nezha
