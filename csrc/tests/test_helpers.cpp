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

#include "relattn_helpers.h"

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
    std::printf("%s: %d checks, %d failures\n", failures ? "FAILED" : "ok", checks, failures);
    return failures ? 1 : 0;
}
