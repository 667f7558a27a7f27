// Index, mask, dropout and online-softmax helpers shared by the CUDA kernels and the CPU unit tests.
//
// Everything here is __host__ __device__ (plain inline under g++), so the exact logic the kernels run
// is tested on the CPU by csrc/tests/test_helpers.cpp. No torch, no CUDA headers needed.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define NZ_HD __host__ __device__ __forceinline__
#else
#include <cmath>
#define NZ_HD inline
#endif

namespace nezha {

// float32 finfo.min: the score of a masked (query, key) pair (see nezha_kernels/inputs.py).
constexpr float MASKED_SCORE = -3.40282346638528859812e+38f;

// idx(key, pos) = clamp(key - pos, -R, R) + R, pos = q_offset + query row. Row of the [2R+1, D] table.
NZ_HD int relative_index(int key, int pos, int R) {
    int d = key - pos;
    d = d < -R ? -R : (d > R ? R : d);
    return d + R;
}

// Inclusive range of table rows touched by query positions [pos_first, pos_last] x keys [key_first, key_last].
// At most (rows + keys - 1) rows; a tile entirely outside the band touches exactly one row, 0 or 2R.
struct TableRows {
    int lo;
    int hi;
};

NZ_HD TableRows tile_table_rows(int pos_first, int pos_last, int key_first, int key_last, int R) {
    TableRows t;
    t.lo = relative_index(key_first, pos_last, R);
    t.hi = relative_index(key_last, pos_first, R);
    return t;
}

// True when some pair of the tile has an interior index (0 < idx < 2R): the tile needs per-pair table rows.
NZ_HD bool tile_in_band(TableRows t, int R) { return t.lo < 2 * R && t.hi > 0; }

// True when every key of [key_first, key_last] is in the causal future of every position <= pos_last.
NZ_HD bool tile_all_future(int pos_last, int key_first) { return key_first > pos_last; }

// Masked pair: key padding says "do not attend", or a causal future key.
NZ_HD bool pair_masked(int key, int pos, bool causal, bool key_attend) {
    return !key_attend || (causal && key > pos);
}

// s = (q.k + q.a) * scale + additive, replaced by MASKED_SCORE when masked, then max(s, MASKED_SCORE)
// (turns -inf into finfo.min so an all-masked row stays uniform, never NaN).
NZ_HD float finalize_score(float dot, float scale, float additive, bool masked) {
    float s = dot * scale + additive;
    if (masked) s = MASKED_SCORE;
    return s < MASKED_SCORE ? MASKED_SCORE : s;  // also maps -inf; NaN falls through like torch.clamp
}

// A row whose running max exceeds this has exp(MASKED_SCORE - max) == 0 exactly in float32, so skipping
// its fully masked (causal-future) tiles changes nothing. Rows at MASKED_SCORE must see every key.
constexpr float SKIP_MASKED_THRESHOLD = 0.5f * MASKED_SCORE;

// True when a query row may skip its causal-future key tiles: a row past Lq, or one whose max exceeds
// SKIP_MASKED_THRESHOLD. A row still at MASKED_SCORE (every key so far masked) must see every key.
NZ_HD bool row_skips_future_keys(bool row_valid, float row_max) {
    return !row_valid || row_max > SKIP_MASKED_THRESHOLD;
}

// Online softmax: factor that rescales sums taken under max m_old to max m_new (m_old may be -inf).
NZ_HD float rescale_factor(float m_old, float m_new) {
#ifdef __CUDA_ARCH__
    return m_old == -INFINITY ? 0.0f : __expf(m_old - m_new);
#else
    return m_old == -INFINITY ? 0.0f : std::exp(m_old - m_new);
#endif
}

// Softmax weight of score s in a row with max m and log-sum log_l (the forward's two row statistics):
// (s - m) - log_l, not s - (m + log_l), so a fully masked row (m = finfo.min) keeps weights 1 / Lk.
NZ_HD float softmax_weight(float s, float m, float log_l) {
#ifdef __CUDA_ARCH__
    return expf((s - m) - log_l);
#else
    return std::exp((s - m) - log_l);
#endif
}

// ---- padding-free (varlen) batches: cu_seqlens [B + 1], sequence b is rows cu[b] .. cu[b + 1] ----

// Sequence b's first row in the packed [T, H, D] tensor and its length.
struct SeqSpan {
    int first;
    int len;
};

NZ_HD SeqSpan sequence_span(const int32_t* cu, int b) {
    SeqSpan s;
    s.first = cu[b];
    s.len = cu[b + 1] - cu[b];
    return s;
}

// Bottom-right alignment (flash-attention's): query i of a sequence of Lq queries and Lk keys sits at position
// i + Lk - Lq, so the last query sees the last key (a cached decode step).
NZ_HD int bottom_right_offset(int Lq, int Lk) { return Lk - Lq; }

// Row (of D elements) of row i of head h of a sequence starting at `first` in a contiguous [T, H, D] tensor.
NZ_HD int64_t packed_row(int first, int i, int H, int h) { return (static_cast<int64_t>(first) + i) * H + h; }

// Index of that row's entry in a contiguous [H, T] statistic (lse[0], lse[1], delta).
NZ_HD int64_t packed_stat(int first, int i, int T, int h) { return static_cast<int64_t>(h) * T + first + i; }

// ---- Philox-4x32-10 (Random123), the dropout spec of nezha_kernels/dropout.py ----
constexpr uint32_t PHILOX_ROUND_A = 0xD2511F53u;
constexpr uint32_t PHILOX_ROUND_B = 0xCD9E8D57u;
constexpr uint32_t PHILOX_KEY_A = 0x9E3779B9u;
constexpr uint32_t PHILOX_KEY_B = 0xBB67AE85u;

struct Philox4 {
    uint32_t x, y, z, w;
};

NZ_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int round = 0; round < 10; ++round) {
        const uint64_t pb = static_cast<uint64_t>(PHILOX_ROUND_B) * c2;
        const uint64_t pa = static_cast<uint64_t>(PHILOX_ROUND_A) * c0;
        const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
        const uint32_t n1 = static_cast<uint32_t>(pb);
        const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
        const uint32_t n3 = static_cast<uint32_t>(pa);
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += PHILOX_KEY_A;
        k1 += PHILOX_KEY_B;
    }
    Philox4 r;
    r.x = c0; r.y = c1; r.z = c2; r.w = c3;
    return r;
}

// u in [0, 1) for weight (bh, row, key): counter (key, row, bh, 0), key (seed_lo, seed_hi), top 24 bits of word 0.
NZ_HD float dropout_uniform(uint64_t seed, int bh, int row, int key) {
    const Philox4 r = philox4x32_10(static_cast<uint32_t>(key), static_cast<uint32_t>(row),
                                    static_cast<uint32_t>(bh), 0u, static_cast<uint32_t>(seed),
                                    static_cast<uint32_t>(seed >> 32));
    return static_cast<float>(r.x >> 8) * (1.0f / 16777216.0f);
}

// 1 / (1 - p): the rescale of the weights dropout keeps (1 without dropout).
NZ_HD float dropout_rescale(float p) { return p > 0.0f ? 1.0f / (1.0f - p) : 1.0f; }

// Kept iff u >= p, compared in float32 as torch does (p already rounded to float).
NZ_HD bool dropout_keep(uint64_t seed, float p, int bh, int row, int key) {
    return p <= 0.0f || dropout_uniform(seed, bh, row, key) >= p;
}

}  // namespace nezha
