// CPU unit tests of the padding-free (varlen) row arithmetic of csrc/relattn_helpers.h that the kernels run.
//
//   g++ -std=c++17 -O1 -I csrc csrc/tests/test_varlen_rows.cpp -o test_varlen_rows && ./test_varlen_rows
// prints "ok: N checks" and exits 0, or lists failures and exits 1 (tests/test_cuda_varlen_emulated.py runs it).
#include <cstdio>
#include <vector>

#include "relattn_helpers.h"

using namespace nezha;

static int checks = 0, failures = 0;
#define CHECK(cond, ...)                                     \
    do {                                                     \
        ++checks;                                            \
        if (!(cond)) {                                       \
            ++failures;                                      \
            std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            std::printf(__VA_ARGS__);                        \
            std::printf("\n");                               \
        }                                                    \
    } while (0)

// Sequence spans partition [0, T) in order, zero-length sequences included.
static void test_spans_partition_the_rows() {
    const std::vector<int32_t> cu = {0, 0, 5, 6, 6, 19};
    const int B = static_cast<int>(cu.size()) - 1, T = cu.back();
    int next = 0;
    for (int b = 0; b < B; ++b) {
        const SeqSpan s = sequence_span(cu.data(), b);
        CHECK(s.first == next && s.len >= 0, "sequence %d: first %d (want %d), len %d", b, s.first, next, s.len);
        next = s.first + s.len;
    }
    CHECK(next == T, "spans end at %d, T = %d", next, T);
    CHECK(sequence_span(cu.data(), 0).len == 0 && sequence_span(cu.data(), 3).len == 0, "empty sequences");
}

// Every (sequence, head, row) maps to its own row of a contiguous [T, H, D] tensor and its own entry of an [H, T]
// statistic, together covering each exactly once; consecutive rows of one head are H rows apart.
static void test_packed_rows_cover_each_row_once() {
    const std::vector<int32_t> cu = {0, 3, 3, 10, 11};
    const int B = static_cast<int>(cu.size()) - 1, T = cu.back(), H = 3;
    std::vector<int> rows(static_cast<size_t>(T) * H, 0), stats(static_cast<size_t>(T) * H, 0);
    for (int b = 0; b < B; ++b) {
        const SeqSpan s = sequence_span(cu.data(), b);
        for (int h = 0; h < H; ++h)
            for (int i = 0; i < s.len; ++i) {
                const int64_t r = packed_row(s.first, i, H, h), st = packed_stat(s.first, i, T, h);
                CHECK(r == (static_cast<int64_t>(s.first) + i) * H + h, "row of (%d, %d, %d)", b, h, i);
                CHECK(st == static_cast<int64_t>(h) * T + s.first + i, "stat of (%d, %d, %d)", b, h, i);
                if (r >= 0 && r < T * H) ++rows[r];
                if (st >= 0 && st < T * H) ++stats[st];
                if (i > 0) CHECK(r - packed_row(s.first, i - 1, H, h) == H, "row step H");
            }
    }
    for (int e = 0; e < T * H; ++e) {
        CHECK(rows[e] == 1, "[T, H] row %d written %d times", e, rows[e]);
        CHECK(stats[e] == 1, "[H, T] entry %d written %d times", e, stats[e]);
    }
    // 64-bit rows: a packed batch past 2^31 elements does not wrap.
    CHECK(packed_row(2000000000, 5, 16, 15) == (2000000005LL) * 16 + 15, "64-bit packed row");
}

// Bottom-right alignment: the last query sits at the last key's position; equal lengths give offset 0. With
// causal masking a query sees keys 0 .. i + Lk - Lq (none when that is negative: Lq > Lk).
static void test_bottom_right_offset() {
    CHECK(bottom_right_offset(7, 7) == 0, "equal lengths");
    CHECK(bottom_right_offset(1, 40) == 39, "decode step: one query at the last position");
    CHECK(bottom_right_offset(9, 4) == -5, "more queries than keys");
    const int Lq = 5, Lk = 12, off = bottom_right_offset(Lq, Lk);
    CHECK(!pair_masked(Lk - 1, Lq - 1 + off, true, true), "last query sees the last key");
    CHECK(pair_masked(Lk - 1, Lq - 2 + off, true, true), "the query before it does not");
    CHECK(pair_masked(0, 0 + bottom_right_offset(9, 4), true, true), "query 0 of Lq 9, Lk 4 sees no key");
}

int main() {
    test_spans_partition_the_rows();
    test_packed_rows_cover_each_row_once();
    test_bottom_right_offset();
    if (failures) {
        std::printf("%d of %d checks failed\n", failures, checks);
        return 1;
    }
    std::printf("ok: %d checks\n", checks);
    return 0;
}
