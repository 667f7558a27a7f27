// CPU unit tests of csrc/relattn_helpers.h (the index, mask, dropout and softmax logic the kernels run).
//
//   g++ -std=c++17 -O1 -I csrc csrc/tests/test_helpers.cpp -o test_helpers && ./test_helpers
// prints "ok: N checks" and exits 0, or lists failures and exits 1.
//   ./test_helpers philox SEED BH ROWS KEYS   prints dropout_uniform for every (row, key) of head BH,
// which tests/test_cuda_build.py compares with nezha_kernels.dropout.philox_uniform.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "relattn_flash.h"
#include "relattn_helpers.h"
#include "relattn_mma.h"

using namespace nezha;

static int checks = 0, failures = 0;
#define CHECK(cond, ...)                                   \
    do {                                                   \
        ++checks;                                          \
        if (!(cond)) {                                     \
            ++failures;                                    \
            std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            std::printf(__VA_ARGS__);                      \
            std::printf("\n");                             \
        }                                                  \
    } while (0)

static void test_philox_known_answers() {
    // Random123 kat_vectors, philox4x32 with 10 rounds.
    Philox4 r = philox4x32_10(0, 0, 0, 0, 0, 0);
    CHECK(r.x == 0x6627e8d5u && r.y == 0xe169c58du && r.z == 0xbc57ac4cu && r.w == 0x9b00dbd8u,
          "zero counter/key: %08x %08x %08x %08x", r.x, r.y, r.z, r.w);
    r = philox4x32_10(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu);
    CHECK(r.x == 0x408f276du && r.y == 0x41c83b0eu && r.z == 0xa20bc7c6u && r.w == 0x6d5451fdu,
          "all-ones: %08x %08x %08x %08x", r.x, r.y, r.z, r.w);
    r = philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
    CHECK(r.x == 0xd16cfe09u && r.y == 0x94fdccebu && r.z == 0x5001e420u && r.w == 0x24126ea1u,
          "pi digits: %08x %08x %08x %08x", r.x, r.y, r.z, r.w);
}

static void test_dropout() {
    // u is a multiple of 2^-24 in [0, 1); p = 0 keeps everything; keep iff u >= p.
    const uint64_t seed = 0x123456789abcdefull;
    int kept = 0, total = 0;
    for (int row = 0; row < 40; ++row)
        for (int key = 0; key < 50; ++key) {
            const float u = dropout_uniform(seed, 3, row, key);
            CHECK(u >= 0.0f && u < 1.0f && u * 16777216.0f == static_cast<float>(static_cast<uint32_t>(u * 16777216.0f)),
                  "u out of range or not on the 2^-24 grid: %g", u);
            CHECK(dropout_keep(seed, 0.0f, 3, row, key), "p = 0 must keep");
            CHECK(dropout_keep(seed, 0.3f, 3, row, key) == (u >= 0.3f), "keep rule");
            kept += dropout_keep(seed, 0.3f, 3, row, key);
            ++total;
        }
    const double rate = static_cast<double>(kept) / total;
    CHECK(rate > 0.65 && rate < 0.75, "keep rate %g for p = 0.3 over %d draws", rate, total);
    // Kept weights are scaled by 1 / (1 - p), so the expected weight is unchanged; no dropout scales by 1.
    CHECK(dropout_rescale(0.0f) == 1.0f, "no dropout, no rescale");
    CHECK(dropout_rescale(0.3f) == 1.0f / 0.7f && dropout_rescale(0.5f) == 2.0f, "rescale 1 / (1 - p)");
}

static void test_relative_index_and_tiles() {
    for (int R : {1, 3, 64}) {
        CHECK(relative_index(10, 10, R) == R, "diagonal");
        CHECK(relative_index(10 + R + 5, 10, R) == 2 * R, "far right clamps to 2R");
        CHECK(relative_index(0, 10 + R + 5, R) == 0, "far left clamps to 0");
        CHECK(relative_index(11, 10, R) == (R >= 1 ? R + 1 : R), "one step right");
        // Every tile placement: all pairs lie in [lo, hi]; the range fits BM + BN - 1 rows; band iff interior.
        const int BM = 8, BN = 4;
        for (int p0 = 0; p0 < 3 * R + 20; p0 += 3)
            for (int k0 = 0; k0 < 3 * R + 20; k0 += 2) {
                const TableRows t = tile_table_rows(p0, p0 + BM - 1, k0, k0 + BN - 1, R);
                bool interior = false, inside = true;
                for (int p = p0; p < p0 + BM; ++p)
                    for (int k = k0; k < k0 + BN; ++k) {
                        const int idx = relative_index(k, p, R);
                        inside = inside && idx >= t.lo && idx <= t.hi;
                        interior = interior || (idx > 0 && idx < 2 * R);
                    }
                CHECK(inside, "pair outside table rows (R=%d p0=%d k0=%d)", R, p0, k0);
                CHECK(t.hi - t.lo + 1 <= BM + BN - 1, "too many table rows");
                CHECK(tile_in_band(t, R) == interior, "band flag (R=%d p0=%d k0=%d)", R, p0, k0);
                if (!interior) CHECK(t.lo == t.hi && (t.lo == 0 || t.lo == 2 * R), "far tile is one edge row");
                CHECK(tile_all_future(p0 + BM - 1, k0) == (k0 > p0 + BM - 1), "future tile");
            }
    }
}

static void test_scores_and_masks() {
    CHECK(finalize_score(2.0f, 0.5f, 0.25f, false) == 1.25f, "scale then add");
    CHECK(finalize_score(2.0f, 0.5f, 0.25f, true) == MASKED_SCORE, "masked replaces");
    CHECK(finalize_score(1.0f, 1.0f, -INFINITY, false) == MASKED_SCORE, "-inf becomes finfo.min");
    CHECK(finalize_score(1.0f, 1.0f, MASKED_SCORE, false) == MASKED_SCORE, "finfo.min mask stays finite");
    CHECK(pair_masked(5, 4, true, true) && !pair_masked(4, 4, true, true), "causal: key > pos masked");
    CHECK(!pair_masked(5, 4, false, true) && pair_masked(0, 4, false, false), "padding");
    CHECK(rescale_factor(-INFINITY, 3.0f) == 0.0f, "first tile");
    CHECK(std::fabs(rescale_factor(1.0f, 3.0f) - std::exp(-2.0f)) < 1e-7f, "rescale");
    CHECK(std::exp(MASKED_SCORE - SKIP_MASKED_THRESHOLD) == 0.0f, "skip threshold underflows to zero");
    // A row may skip its causal future once a masked key's weight exp(MASKED_SCORE - max) is exactly 0.
    for (float m : {-1e30f, 0.0f, 3.0f}) {
        CHECK(row_skips_future_keys(true, m) && std::exp(MASKED_SCORE - m) == 0.0f, "row with max %g skips", m);
    }
    CHECK(!row_skips_future_keys(true, MASKED_SCORE), "an all-masked row must see every key (uniform weights)");
    CHECK(!row_skips_future_keys(true, -INFINITY), "a row that saw no key yet must go on");
    CHECK(row_skips_future_keys(false, MASKED_SCORE) && row_skips_future_keys(false, -INFINITY), "rows past Lq");
}

// CPU mirror of the forward tile loop (online softmax, far-field masses, band rows) against a direct
// two-pass softmax, for one head with a random table: checks the algorithm the kernel implements.
static void test_tile_loop_mirror() {
    const int Lq = 37, Lk = 45, D = 4, R = 5, BM = 8, BN = 8, q_offset = 3;
    std::vector<float> q(Lq * D), k(Lk * D), v(Lk * D), T((2 * R + 1) * D);
    uint32_t state = 12345;
    auto rnd = [&]() { state = state * 1664525u + 1013904223u; return (state >> 8) * (1.0f / 16777216.0f) - 0.5f; };
    for (auto* vec : {&q, &k, &v, &T}) for (auto& x : *vec) x = 2.0f * rnd();
    const float scale = 0.7f;
    double worst = 0.0;
    for (int i = 0; i < Lq; ++i) {
        const int pos = q_offset + i;
        const bool causal = (i % 2) == 0;  // half the rows causal, to exercise masks
        auto score = [&](int j) {
            const int idx = relative_index(j, pos, R);
            float dot = 0.0f;
            for (int d = 0; d < D; ++d) dot += q[i * D + d] * (k[j * D + d] + T[idx * D + d]);
            return finalize_score(dot, scale, 0.0f, pair_masked(j, pos, causal, j != 7));
        };
        // Direct.
        double mx = -1e300, sum = 0.0, ref[D] = {0};
        for (int j = 0; j < Lk; ++j) mx = std::fmax(mx, score(j));
        for (int j = 0; j < Lk; ++j) {
            const double p = std::exp(score(j) - mx);
            sum += p;
            const int idx = relative_index(j, pos, R);
            for (int d = 0; d < D; ++d) ref[d] += p * (v[j * D + d] + T[idx * D + d]);
        }
        // Tiled, as the kernel: per-tile max, rescale, masses for edge rows, table rows [lo, hi] for band tiles.
        const int q0 = (i / BM) * BM;
        float m = -INFINITY, l = 0.0f, left = 0.0f, right = 0.0f, acc[D] = {0};
        for (int k0 = 0; k0 < Lk; k0 += BN) {
            const TableRows tr = tile_table_rows(q_offset + q0, q_offset + q0 + BM - 1, k0, k0 + BN - 1, R);
            float s[BN], tmax = -INFINITY;
            for (int jl = 0; jl < BN; ++jl) {
                s[jl] = k0 + jl < Lk ? score(k0 + jl) : -INFINITY;
                tmax = std::fmax(tmax, s[jl]);
            }
            const float mn = std::fmax(m, tmax), alpha = rescale_factor(m, mn);
            l *= alpha; left *= alpha; right *= alpha;
            for (float& a : acc) a *= alpha;
            for (int jl = 0; jl < BN && k0 + jl < Lk; ++jl) {
                const float p = std::exp(s[jl] - mn);
                l += p;
                const int idx = relative_index(k0 + jl, pos, R);
                for (int d = 0; d < D; ++d) acc[d] += p * v[(k0 + jl) * D + d];
                if (idx == 0) left += p;
                else if (idx == 2 * R) right += p;
                else {
                    CHECK(tile_in_band(tr, R) && idx >= tr.lo && idx <= tr.hi, "band row outside tile rows");
                    for (int d = 0; d < D; ++d) acc[d] += p * T[idx * D + d];
                }
            }
            m = mn;
        }
        for (int d = 0; d < D; ++d) {
            const double got = (acc[d] + left * T[d] + right * T[2 * R * D + d]) / l;
            worst = std::fmax(worst, std::fabs(got - ref[d] / sum));
        }
    }
    CHECK(worst < 2e-5, "tiled loop differs from direct softmax by %g", worst);
}


// ---- m16n8k16 fragment layouts (relattn_mma.h) ----

// Each map is a bijection lanes x elements -> tile, and agrees with the ISA's figures at a few hand-read points.
static void test_mma_maps_bijective() {
    int a_hits[16][16] = {}, b_hits[16][8] = {}, c_hits[16][8] = {};
    for (int lane = 0; lane < 32; ++lane) {
        for (int e = 0; e < 8; ++e) { const FragRC c = mma_a_elem(lane, e); ++a_hits[c.row][c.col]; }
        for (int e = 0; e < 4; ++e) { const FragRC c = mma_b_elem(lane, e); ++b_hits[c.row][c.col]; }
        for (int e = 0; e < 4; ++e) { const FragRC c = mma_c_elem(lane, e); ++c_hits[c.row][c.col]; }
    }
    bool ok = true;
    for (int r = 0; r < 16; ++r) {
        for (int c = 0; c < 16; ++c) ok = ok && a_hits[r][c] == 1;
        for (int c = 0; c < 8; ++c) ok = ok && b_hits[r][c] == 1 && c_hits[r][c] == 1;
    }
    CHECK(ok, "fragment maps must cover each tile element exactly once");
    // Figure "m16n8k16 A .f16": lane 5 (group 1, tig 1) holds a0 = (1, 2), a3 = (9, 3), a4 = (1, 10), a7 = (9, 11).
    FragRC c = mma_a_elem(5, 0); CHECK(c.row == 1 && c.col == 2, "A a0 lane5");
    c = mma_a_elem(5, 3); CHECK(c.row == 9 && c.col == 3, "A a3 lane5");
    c = mma_a_elem(5, 4); CHECK(c.row == 1 && c.col == 10, "A a4 lane5");
    c = mma_a_elem(5, 7); CHECK(c.row == 9 && c.col == 11, "A a7 lane5");
    // B: lane 30 (group 7, tig 2) holds b0 = (k 4, n 7), b3 = (k 13, n 7). C: lane 30 c3 = (15, 5).
    c = mma_b_elem(30, 0); CHECK(c.row == 4 && c.col == 7, "B b0 lane30");
    c = mma_b_elem(30, 3); CHECK(c.row == 13 && c.col == 7, "B b3 lane30");
    c = mma_c_elem(30, 3); CHECK(c.row == 15 && c.col == 5, "C c3 lane30");
}

// Offsets of the loaders: packed pairs are adjacent in memory and are the map's elements.
static void test_mma_offsets() {
    const int ld = tc_row_stride(64);
    bool ok = true;
    for (int lane = 0; lane < 32; ++lane) {
        for (int reg = 0; reg < 4; ++reg) {
            const FragRC lo = mma_a_elem(lane, 2 * reg), hi = mma_a_elem(lane, 2 * reg + 1);
            const int off = mma_a_offset(lane, reg, ld);
            ok = ok && off == lo.row * ld + lo.col && off + 1 == hi.row * ld + hi.col && off % 2 == 0;
        }
        for (int reg = 0; reg < 2; ++reg) {
            const FragRC lo = mma_b_elem(lane, 2 * reg), hi = mma_b_elem(lane, 2 * reg + 1);
            const int off = mma_b_offset_nmajor(lane, reg, ld);
            ok = ok && off == lo.col * ld + lo.row && off + 1 == hi.col * ld + hi.row && off % 2 == 0;
        }
        for (int e = 0; e < 4; ++e) {
            const FragRC c = mma_b_elem(lane, e);
            ok = ok && mma_b_offset_kmajor(lane, e, ld) == c.row * ld + c.col;
        }
        for (int reg = 0; reg < 4; ++reg) {  // accumulator -> A reuse: same (row, col) within the 16-wide k-step
            const FragRC a = mma_a_elem(lane, 2 * reg);
            const FragRC cc = mma_c_elem(lane, c_to_a_elem(reg));
            const FragRC cc1 = mma_c_elem(lane, c_to_a_elem(reg) + 1);
            ok = ok && a.row == cc.row && a.col == cc.col + 8 * c_to_a_ntile(reg) && cc1.col == cc.col + 1;
        }
    }
    CHECK(ok, "loader offsets / accumulator reuse disagree with the fragment maps");
}

// A CPU model of one warp-wide mma: gathers every lane's fragments through the ISA maps, multiplies,
// hands each lane its accumulators. Feeding it fragments built with the kernels' offset helpers checks
// the loaders end to end: O = (Q K^T) V for a 16 x 32 query tile, 16 keys, D = 32, like the forward.
static void emulate_mma(const float (&a)[32][8], const float (&b)[32][4], float (&c)[32][4]) {
    float A[16][16], B[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        for (int e = 0; e < 8; ++e) { const FragRC x = mma_a_elem(lane, e); A[x.row][x.col] = a[lane][e]; }
        for (int e = 0; e < 4; ++e) { const FragRC x = mma_b_elem(lane, e); B[x.row][x.col] = b[lane][e]; }
    }
    for (int lane = 0; lane < 32; ++lane)
        for (int e = 0; e < 4; ++e) {
            const FragRC x = mma_c_elem(lane, e);
            for (int k = 0; k < 16; ++k) c[lane][e] += A[x.row][k] * B[k][x.col];
        }
}

static void test_mma_emulated_flash_step() {
    constexpr int D = 32, N = 16, ld = tc_row_stride(D);
    std::vector<float> Q(16 * ld, 1e30f), K(N * ld, 1e30f), V(N * ld, 1e30f);  // padding must never be read
    uint32_t state = 777;
    auto rnd = [&]() { state = state * 1664525u + 1013904223u; return static_cast<float>(static_cast<int>(state >> 28) - 8); };
    for (int r = 0; r < 16; ++r) for (int d = 0; d < D; ++d) Q[r * ld + d] = rnd();
    for (int r = 0; r < N; ++r) for (int d = 0; d < D; ++d) { K[r * ld + d] = rnd(); V[r * ld + d] = rnd(); }
    float S[N / 8][32][4] = {};
    for (int kk = 0; kk < D / 16; ++kk)
        for (int nt = 0; nt < N / 8; ++nt) {
            float a[32][8], b[32][4];
            for (int lane = 0; lane < 32; ++lane) {
                for (int reg = 0; reg < 4; ++reg) {
                    const int off = mma_a_offset(lane, reg, ld) + kk * 16;
                    a[lane][2 * reg] = Q[off]; a[lane][2 * reg + 1] = Q[off + 1];
                }
                for (int reg = 0; reg < 2; ++reg) {
                    const int off = mma_b_offset_nmajor(lane, reg, ld) + nt * 8 * ld + kk * 16;
                    b[lane][2 * reg] = K[off]; b[lane][2 * reg + 1] = K[off + 1];
                }
            }
            emulate_mma(a, b, S[nt]);
        }
    float O[D / 8][32][4] = {};
    for (int kk = 0; kk < N / 16; ++kk) {
        float a[32][8];
        for (int lane = 0; lane < 32; ++lane)
            for (int reg = 0; reg < 4; ++reg) {
                const float* src = S[2 * kk + c_to_a_ntile(reg)][lane];
                a[lane][2 * reg] = src[c_to_a_elem(reg)]; a[lane][2 * reg + 1] = src[c_to_a_elem(reg) + 1];
            }
        for (int nt = 0; nt < D / 8; ++nt) {
            float b[32][4];
            for (int lane = 0; lane < 32; ++lane)
                for (int e = 0; e < 4; ++e) b[lane][e] = V[mma_b_offset_kmajor(lane, e, ld) + kk * 16 * ld + nt * 8];
            emulate_mma(a, b, O[nt]);
        }
    }
    double worst = 0.0;
    for (int lane = 0; lane < 32; ++lane)
        for (int nt = 0; nt < D / 8; ++nt)
            for (int e = 0; e < 4; ++e) {
                const FragRC x = mma_c_elem(lane, e);
                const int i = x.row, d = nt * 8 + x.col;
                double want = 0.0;
                for (int j = 0; j < N; ++j) {
                    double s = 0.0;
                    for (int k = 0; k < D; ++k) s += static_cast<double>(Q[i * ld + k]) * K[j * ld + k];
                    want += s * V[j * ld + d];
                }
                worst = std::fmax(worst, std::fabs(O[nt][lane][e] - want));
            }
    CHECK(worst == 0.0, "emulated fragment pipeline differs from (Q K^T) V by %g", worst);
}

// Shared-memory banks: for every fragment load the 32 lanes touch distinct banks (or the same word).
static bool conflict_free(const int (&word)[32]) {
    for (int x = 0; x < 32; ++x)
        for (int y = x + 1; y < 32; ++y)
            if (word[x] != word[y] && word[x] % 32 == word[y] % 32) return false;
    return true;
}

static void test_mma_bank_conflicts() {
    const int bucket_ld = 80 + 8;  // TcConfig::BK_LD
    for (int ld : {tc_row_stride(32), tc_row_stride(64), tc_row_stride(128), bucket_ld}) {
        for (int base_row : {0, 8, 16, 48}) {
            for (int base_col : {0, 8, 16, 32}) {
                const int base = base_row * ld + base_col;
                for (int reg = 0; reg < 4; ++reg) {
                    int w[32];
                    for (int lane = 0; lane < 32; ++lane) w[lane] = (base + mma_a_offset(lane, reg, ld)) / 2;
                    CHECK(conflict_free(w), "A load conflicts (ld=%d reg=%d)", ld, reg);
                }
                for (int reg = 0; reg < 2; ++reg) {
                    int w[32];
                    for (int lane = 0; lane < 32; ++lane) w[lane] = (base + mma_b_offset_nmajor(lane, reg, ld)) / 2;
                    CHECK(conflict_free(w), "B n-major load conflicts (ld=%d reg=%d)", ld, reg);
                }
                for (int e = 0; e < 4; ++e) {
                    int w[32];
                    for (int lane = 0; lane < 32; ++lane) w[lane] = (base + mma_b_offset_kmajor(lane, e, ld)) / 2;
                    CHECK(conflict_free(w), "B k-major load conflicts (ld=%d e=%d)", ld, e);
                }
            }
        }
    }
}

// Band terms of the TC kernels on the CPU: per warp of 16 rows x BN keys, the table slice [lo, hi]
// (QT = Q.T_slice^T gathered at idx - lo for every pair; Bucket[row][idx - lo] = w for interior pairs,
// edge pairs into two masses) reproduces q.T[idx] and sum_j w T[idx]; the staged table rows cover every
// padded slice the warps read. Geometry of the forward (128 x 64: 8 row tiles, 2 per warp; 64 x 64 at D = 128),
// the dQ kernel (64 x 64, 64 x 32 at D = 128) and dK dV (32 queries).
static void test_tc_band_decomposition() {
    const int D = 3;
    uint32_t state = 99;
    auto rnd = [&]() { state = state * 1664525u + 1013904223u; return (state >> 8) * (1.0f / 16777216.0f) - 0.5f; };
    for (int R : {1, 2, 5, 64, 200}) {
        std::vector<float> T((2 * R + 1) * D);
        for (auto& x : T) x = rnd();
        for (int pos_first = 0; pos_first < 3 * R + 140; pos_first += 13)
            for (int k0 = 0; k0 < 3 * R + 140; k0 += 64) {
                // Forward / dQ: blocks of BM rows in row tiles of 16, BN keys, stage rows = min(span + 16, cap),
                // cap = TS_ROWS = BM - 16 + WCOLS (TcFwdConfig, TcConfig).
                struct Geometry { int bm, bn, cap; };
                for (const Geometry geo : {Geometry{128, 64, 192}, Geometry{64, 64, 128}, Geometry{64, 32, 128}}) {
                const int BN = geo.bn;  // (body kept at the outer indentation)
                const TableRows tr = tile_table_rows(pos_first, pos_first + geo.bm - 1, k0, k0 + BN - 1, R);
                const int staged = tc_table_stage_rows(tr, 16, geo.cap);
                for (int w = 0; w < geo.bm / 16; ++w) {
                    const int p0 = pos_first + 16 * w;
                    const TableRows wr = tile_table_rows(p0, p0 + 15, k0, k0 + BN - 1, R);
                    const int off = wr.lo - tr.lo, cnt = wr.hi - wr.lo + 1;
                    CHECK(off >= 0 && cnt <= 79 && off + round_up(cnt, 16) <= staged, "warp slice outside staged rows");
                    for (int r = 0; r < 16; ++r) {
                        const int pos = p0 + r;
                        float q[D], want[D] = {}, got[D] = {}, bucket[80] = {}, ml = 0.0f, mr = 0.0f;
                        for (auto& x : q) x = rnd();
                        float qt[80];
                        for (int c = 0; c < round_up(cnt, 8); ++c) {
                            qt[c] = 0.0f;
                            for (int d = 0; d < D; ++d) qt[c] += q[d] * (wr.lo + c <= 2 * R ? T[(wr.lo + c) * D + d] : 0.0f);
                        }
                        for (int j = k0; j < k0 + BN; ++j) {
                            const int idx = relative_index(j, pos, R);
                            float direct = 0.0f;
                            for (int d = 0; d < D; ++d) direct += q[d] * T[idx * D + d];
                            CHECK(idx - wr.lo >= 0 && idx - wr.lo < cnt && qt[idx - wr.lo] == direct, "QT gather");
                            const float wgt = rnd();
                            for (int d = 0; d < D; ++d) want[d] += wgt * T[idx * D + d];
                            if (idx == 0) ml += wgt;
                            else if (idx == 2 * R) mr += wgt;
                            else {
                                CHECK(tile_in_band(wr, R) && bucket[idx - wr.lo] == 0.0f, "interior pairs are unique per row");
                                bucket[idx - wr.lo] = wgt;
                            }
                        }
                        for (int c = 0; c < round_up(cnt, 16); ++c)
                            for (int d = 0; d < D; ++d)
                                got[d] += bucket[c] * (wr.lo + c <= 2 * R ? T[(wr.lo + c) * D + d] : 0.0f);
                        for (int d = 0; d < D; ++d) {
                            got[d] += ml * T[d] + mr * T[2 * R * D + d];
                            CHECK(std::fabs(got[d] - want[d]) < 1e-4f, "bucket + masses != sum w T[idx] (%g vs %g)", got[d], want[d]);
                        }
                    }
                }
                }
                // dK dV: 64 keys x 32 queries per tile, one block-wide slice padded to 8 rows (96 staged at most).
                const TableRows tq = tile_table_rows(pos_first, pos_first + 31, k0, k0 + 63, R);
                CHECK(round_up(tq.hi - tq.lo + 1, 8) <= 96, "dkdv slice exceeds its 96 staged rows");
            }
    }
}

// key_schedule: every tile exactly once, far tiles only where every pair of the block is at one edge index, far
// tiles full, general tiles ascending, and far tiles as many as the predicate allows.
static void test_key_schedule() {
    const int BN = 64;
    for (int R : {1, 3, 8, 64, 200})
        for (int Lk : {0, 1, 63, 64, 65, 200, 256, 700})
            for (int pos_first = -300; pos_first <= 800; pos_first += 37)
                for (int rows : {1, 17, 64})
                    for (int mode = 0; mode < 3; ++mode) {
                        const bool left_ok = mode != 2, right_ok = mode == 0;
                        const int pos_last = pos_first + rows - 1;
                        const KeySchedule s = key_schedule(pos_first, pos_last, Lk, R, BN, left_ok, right_ok);
                        CHECK(s.n_tiles == (Lk + BN - 1) / BN && s.n_full == Lk / BN, "tile counts");
                        std::vector<int> seen(s.n_tiles + 1, 0);
                        int prev_general = -1, far_possible = 0;
                        for (int t = 0; t < s.n_full; ++t) {
                            const bool all_left = t * BN + BN - 1 - pos_first <= -R;
                            const bool all_right = t * BN - pos_last >= R;
                            far_possible += (all_left && left_ok) || (all_right && right_ok);
                        }
                        CHECK(s.n_far() == far_possible, "far tiles %d, possible %d (R=%d Lk=%d p=%d mode=%d)",
                              s.n_far(), far_possible, R, Lk, pos_first, mode);
                        for (int step = 0; step < s.n_tiles; ++step) {
                            const int t = s.tile(step);
                            CHECK(t >= 0 && t < s.n_tiles, "tile in range");
                            if (t < 0 || t >= s.n_tiles) continue;
                            ++seen[t];
                            if (step < s.n_far()) {
                                const bool right = s.far_right(step);
                                CHECK(t < s.n_full, "far tiles are full");
                                if (right) CHECK(right_ok && t * BN - pos_last >= R, "far-right tile %d", t);
                                else CHECK(left_ok && t * BN + BN - 1 - pos_first <= -R, "far-left tile %d", t);
                            } else {
                                CHECK(t > prev_general, "general tiles ascending");
                                prev_general = t;
                            }
                        }
                        for (int t = 0; t < s.n_tiles; ++t) CHECK(seen[t] == 1, "tile %d seen %d times", t, seen[t]);
                    }
    CHECK(floor_div(-1, 64) == -1 && floor_div(-64, 64) == -1 && floor_div(-65, 64) == -2 && floor_div(63, 64) == 0,
          "floor_div");
    CHECK(ceil_div(-63, 64) == 0 && ceil_div(1, 64) == 1 && ceil_div(64, 64) == 1 && ceil_div(-64, 64) == -1,
          "ceil_div");
}

int main(int argc, char** argv) {
    if (argc == 6 && std::strcmp(argv[1], "philox") == 0) {
        const uint64_t seed = std::strtoull(argv[2], nullptr, 10);
        const int bh = std::atoi(argv[3]), rows = std::atoi(argv[4]), keys = std::atoi(argv[5]);
        for (int row = 0; row < rows; ++row)
            for (int key = 0; key < keys; ++key) std::printf("%.9g\n", dropout_uniform(seed, bh, row, key));
        return 0;
    }
    test_philox_known_answers();
    test_dropout();
    test_relative_index_and_tiles();
    test_scores_and_masks();
    test_tile_loop_mirror();
    test_mma_maps_bijective();
    test_mma_offsets();
    test_mma_emulated_flash_step();
    test_mma_bank_conflicts();
    test_tc_band_decomposition();
    test_key_schedule();
    std::printf("%s: %d checks, %d failures\n", failures ? "FAILED" : "ok", checks, failures);
    return failures ? 1 : 0;
}
