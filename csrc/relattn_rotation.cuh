// The band of NEZHA's sinusoid table on tensor cores: the rotation identity (docs: relative-attention.md,
// "Rotation"), used by the tensor-core forward's rotation feature set (FEATURES_ROTATION, relattn_fwd_tc.cu).
//
// T[m] = [sin(m w_t), cos(m w_t)]_t is a sinusoid of m = j - i + R, so for a query block whose first position is pos0
// (angles measured from there, so they stay below (ROT_MAX_BM + 2R + 2 ROT_SHIFT) w_t at any absolute position):
//   s_j       = [sin((j - pos0 + R) w_t), cos((j - pos0 + R) w_t)]_t      (rows of the extended table, relattn.h)
//   q_rot_i   = q_i rotated by -(i - pos0) w_t per pair (2t, 2t + 1)
//   key side  q_i . T[j - i + R] = q_rot_i . s_j                            (any j; used where |j - i| < R)
//   value side sum_j p_ij T[j - i + R] = rotate_{+(i - pos0) w_t}(sum_j p_ij s_j)
// Out-of-band pairs of a band tile keep the edge rows T[0] / T[2R] (the per-row bias and the far-field masses).
#pragma once

#include "relattn_async.cuh"
#include "relattn_tc.cuh"

namespace nezha {

// The tensor-core forward's feature set for a PLAIN call whose table is NEZHA's sinusoid (AttnArgs::rot_keys set):
// the PLAIN kernel with the band from the rotation identity (relattn_flash.h has PLAIN = 0, GENERAL = 1).
constexpr int FEATURES_ROTATION = 2;

// Which instantiations have a rotation kernel: D = 32 and 64 (dense and padding-free). D = 128 takes the table slices:
// its 64-row blocks are bound by shared memory and tensor work, to which the rotation's band adds (two more mma
// chains, S tiles), so the static profile's model puts it 13-17% behind the table slices at every length
// (benchmarks/NOTES.md, "CUDA rotation at D = 128"); its padding-free kernel spilled on sm_80 besides.
// cuda_ext/launch.py rotation_args mirrors this.
constexpr bool rotation_kernel(int d, bool packed) {
    (void)packed;
    return d == 32 || d == 64;
}

// Whether the rotation kernel serves max_relative_position R: R >= ROT_SHIFT / 2 (half a key tile; NEZHA's
// checkpoints have R = 64), so that in a band tile a row's out-of-band keys lie on one side of its band (2R - 1 >=
// 63 columns of band) and every pair of the row needs one edge term and one far mass (relattn_fwd_tc.cu). Smaller R
// (a band of at most two tiles) takes the table slices.
NZ_HD constexpr bool rotation_band_one_sided(int R) { return 2 * R >= ROT_SHIFT; }

// The position of pair t within a row of the float32 extended table (relattn.h; launch.py rotation_f32_order
// mirrors it): the D / 8 pairs t = 4 n + q of accumulator lane q = lane % 4 are adjacent.
NZ_HD constexpr int rot_f32_pair(int t, int d) { return (t % 4) * (d / 8) + t / 4; }

// sin and cos of one angle, adjacent in the float32 extended table (pair t at rot_f32_pair(t, D)).
struct alignas(8) SinCos {
    float sin;
    float cos;
};

template <int D>
__device__ __forceinline__ SinCos load_sincos(const float* __restrict__ row, int t) {
    return reinterpret_cast<const SinCos*>(row)[rot_f32_pair(t, D)];
}

// The pairs t = 4 (2 dp) + q and 4 (2 dp + 1) + q of accumulator lane q (n-tiles 2 dp, 2 dp + 1), adjacent in a
// rot_f32 row: one 16-byte load.
struct alignas(16) SinCos2 {
    SinCos n[2];
};

template <int D>
__device__ __forceinline__ SinCos2 load_sincos2(const float* __restrict__ row, int q, int dp) {
    return reinterpret_cast<const SinCos2*>(row + 2 * rot_f32_pair(q, D))[dp];
}

// QRs[r] = Qs[r] rotated by -r w_t (fp32 from the float32 table rows ROT_SHIFT + r, rounded to T once), r < ROWS:
//   q_rot[2t] = q[2t] cos + q[2t+1] sin,  q_rot[2t+1] = q[2t+1] cos - q[2t] sin.
template <typename T, int D, int LD, int NT, int ROWS>
__device__ __forceinline__ void rotate_queries(T* QRs, const T* Qs, const float* __restrict__ rot_f32) {
    static_assert(ROWS <= ROT_MAX_BM, "the extended table covers ROT_MAX_BM query rows");
#pragma unroll 1
    for (int e = threadIdx.x; e < ROWS * (D / 2); e += NT) {
        const int r = e / (D / 2), t = e % (D / 2);
        const SinCos sc = load_sincos<D>(rot_f32 + static_cast<int64_t>(ROT_SHIFT + r) * D, t);
        const float q0 = to_f(Qs[r * LD + 2 * t]), q1 = to_f(Qs[r * LD + 2 * t + 1]);
        QRs[r * LD + 2 * t] = from_f<T>(fmaf(q0, sc.cos, q1 * sc.sin));
        QRs[r * LD + 2 * t + 1] = from_f<T>(fmaf(q1, sc.cos, -(q0 * sc.sin)));
    }
}

// A row's edge terms q . T[0] and q . T[2R], adjacent in shared memory (one 8-byte load).
struct alignas(8) EdgeTerms {
    float left, right;
};

// A thread's row statistics (row max m, sum l, the far masses) in shared memory, one ParkedRowStats per row:
// [RW][NT] of them from `slots` (this thread's column, 16-byte aligned), so a row tile's statistics load and store in
// two 16-byte accesses per thread; the band loop keeps one row tile's in registers at a time.
struct alignas(16) ParkedRowStats {
    float m, l, left, right;
};

template <int RW, int NT>
struct RowStatsParking {
    ParkedRowStats* slots;  // this thread's first slot; row r at slots[r NT]

    __device__ __forceinline__ explicit RowStatsParking(ParkedRowStats* thread_slots) : slots(thread_slots) {}

    __device__ __forceinline__ void store(const float (&m)[RW], const float (&l)[RW], const FarField (&far)[RW]) const {
#pragma unroll
        for (int r = 0; r < RW; ++r) slots[r * NT] = ParkedRowStats{m[r], l[r], far[r].left, far[r].right};
    }
    __device__ __forceinline__ void load_all(float (&m)[RW], float (&l)[RW], FarField (&far)[RW]) const {
#pragma unroll
        for (int r = 0; r < RW; ++r) {
            const ParkedRowStats v = slots[r * NT];
            m[r] = v.m;
            l[r] = v.l;
            far[r] = {v.left, v.right};
        }
    }
    // Rows 2 mt, 2 mt + 1 (row tile mt).
    __device__ __forceinline__ void load(int mt, float (&m)[2], float (&l)[2], FarField (&far)[2]) const {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const ParkedRowStats v = slots[(2 * mt + h) * NT];
            m[h] = v.m;
            l[h] = v.l;
            far[h] = {v.left, v.right};
        }
    }
    __device__ __forceinline__ void store_tile(int mt, const float (&m)[2], const float (&l)[2],
                                               const FarField (&far)[2]) const {
#pragma unroll
        for (int h = 0; h < 2; ++h) slots[(2 * mt + h) * NT] = ParkedRowStats{m[h], l[h], far[h].left, far[h].right};
    }
};

// The weights of one row tile as P's A fragments (k-steps of 16 keys, rounded to T), computed pair by pair from the
// raw scores s (p = 2^(s scale_log2 - m) per row: rows g, g + 8 of the lane, maxima m0 / m1) so that the fp32 tile
// dies as they are packed. The row sums come from the packed weights by mma (add_row_sums).
template <typename T, int NTN>
__device__ __forceinline__ void weights_to_a(uint32_t (&pa)[NTN / 2][4], const float (&s)[NTN][4], float scale_log2,
                                             float m0, float m1) {
#pragma unroll
    for (int kk = 0; kk < NTN / 2; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int nt = 2 * kk + c_to_a_ntile(r), e = c_to_a_elem(r);
            const float m = e >> 1 ? m1 : m0;
            const float p0 = fast_exp2(fmaf(s[nt][e], scale_log2, -m));
            const float p1 = fast_exp2(fmaf(s[nt][e + 1], scale_log2, -m));
            pa[kk][r] = MmaOp<T>::pack(p0, p1);
        }
}

// The band test of one row of a band tile, two keys per instruction on f16x2: the pair (row, key column k) is in
// band when |k - mid| <= R - 1, mid = the column of the row's own position (its band: columns mid - R + 1 .. mid +
// R - 1). Exact for R <= ROT_MAX_R: k < 64 and R - 1 are exact in f16, so are mid and k - mid while their magnitude is
// at most 2048; beyond, k - mid rounds (or overflows to +-inf) to a magnitude >= 1984 > R - 1 (rounding is
// monotone), out of band as the exact value is.
constexpr int ROT_MAX_R = 1024;
NZ_HD constexpr bool rotation_band_exact(int R) { return R <= ROT_MAX_R; }

struct RowBand {
    uint32_t mid2;  // f16x2 (mid, mid)
#ifdef NEZHA_CUDA_EMULATE
    int mid;
#endif
};

// (n, n) in f16x2, n an integer (rounded to f16).
__device__ __forceinline__ uint32_t f16x2_of_int(int n) {
#ifdef NEZHA_CUDA_EMULATE
    (void)n;
    return 0u;
#else
    uint32_t h2;
    asm("{.reg .f16 h; cvt.rn.f16.s32 h, %1; mov.b32 %0, {h, h};}" : "=r"(h2) : "r"(n));
    return h2;
#endif
}

__device__ __forceinline__ RowBand row_band(int mid) {
#ifdef NEZHA_CUDA_EMULATE
    return {0u, mid};
#else
    return {f16x2_of_int(mid)};
#endif
}

// The band's half width R - 1 for select_band_pair: f16x2 (R - 1, R - 1) (the emulator keeps the integer).
struct BandHalfWidth {
    uint32_t r2;
#ifdef NEZHA_CUDA_EMULATE
    int r;
#endif
};

__device__ __forceinline__ BandHalfWidth band_half_width(int R) {
#ifdef NEZHA_CUDA_EMULATE
    return {0u, R - 1};
#else
    return {f16x2_of_int(R - 1)};
#endif
}

// The f16 bits of a small non-negative integer n < 2048.
NZ_HD constexpr uint32_t f16_bits_of_int(int n) {
    if (n == 0) return 0;
    int e = 0;
    while ((n >> (e + 1)) != 0) ++e;
    return static_cast<uint32_t>(((e + 15) << 10) | ((n << (10 - e)) & 0x3ff));
}

// For keys K and K + 1 of a row: s0 / s1 keep their value in band, else take `edge`; returns P_band's mask of the
// packed register of the two weights (0xffff per 16-bit half in band). K: a compile-time constant after unrolling
// (its f16x2 folds into the subtraction); ptxas folds the |.| into the compares (HSETP2 / HSET2 with |v|).
__device__ __forceinline__ uint32_t select_band_pair(int K, float& s0, float& s1, float edge, const RowBand& rb,
                                                     const BandHalfWidth& hw) {
#ifdef NEZHA_CUDA_EMULATE
    const bool in0 = std::abs(K - rb.mid) <= hw.r, in1 = std::abs(K + 1 - rb.mid) <= hw.r;
    if (!in0) s0 = edge;
    if (!in1) s1 = edge;
    return (in0 ? 0x0000ffffu : 0u) | (in1 ? 0xffff0000u : 0u);
#else
    const uint32_t k2 = f16_bits_of_int(K) | (f16_bits_of_int(K + 1) << 16);
    uint32_t mask;
    asm("{.reg .b32 v; .reg .pred p, q;\n"
        " sub.f16x2 v, %3, %4;\n"
        " abs.f16x2 v, v;\n"
        " setp.le.f16x2 p|q, v, %5;\n"
        " selp.f32 %1, %1, %6, p;\n"
        " selp.f32 %2, %2, %6, q;\n"
        " set.le.u32.f16x2 %0, v, %5;}"
        : "=r"(mask), "+f"(s0), "+f"(s1)
        : "r"(k2), "r"(rb.mid2), "r"(hw.r2), "f"(edge));
    return mask;
#endif
}

// P's A fragments masked to P_band: pa[kk][r] &= mask[nt][e >> 1] of its n-tile nt and row (select_band_pair).
template <int NTN>
__device__ __forceinline__ void mask_to_band(uint32_t (&pa)[NTN / 2][4], const uint32_t (&mask)[NTN][2]) {
#pragma unroll
    for (int kk = 0; kk < NTN / 2; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) pa[kk][r] &= mask[2 * kk + c_to_a_ntile(r)][c_to_a_elem(r) >> 1];
}

// c[2h] (and c[2h + 1]) += w * (the row sum of the lane's row h of P), P as packed A fragments: an mma per k-step
// against a B of w in every element (each of the 8 columns, so every lane of the quad, gets the row's sum).
template <typename T, int NTN>
__device__ __forceinline__ void add_row_sums(float (&c)[4], const uint32_t (&pa)[NTN / 2][4], float w) {
    const uint32_t b[2] = {MmaOp<T>::pack(w, w), MmaOp<T>::pack(w, w)};
#pragma unroll
    for (int kk = 0; kk < NTN / 2; ++kk) MmaOp<T>::run(c, pa[kk], b);
}

// acc[D/8][4] += P . V for one row tile, P as packed A fragments (pack_weights), V rows k-major at vs (stride LD).
template <typename T, int D, int LD, int NTN>
__device__ __forceinline__ void warp_packed_pv(float (&acc)[D / 8][4], const uint32_t (&pa)[NTN / 2][4], const T* vs,
                                               int lane) {
    const T* vl = vs + ldsm_b_kmajor_offset(lane, LD);
#pragma unroll
    for (int kk = 0; kk < NTN / 2; ++kk)
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
            uint32_t b[4];
            ldsm_x4_trans(b, vl + kk * 16 * LD + dp * 16);
            const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
            MmaOp<T>::run(acc[2 * dp], pa[kk], b0);
            MmaOp<T>::run(acc[2 * dp + 1], pa[kk], b1);
        }
}

// acc[D/8][4] += rotate(P_band . S_tile): the value side of one row tile of a band tile. a: P_band's A fragments
// (pack_weights); ss: the S tile, k-major (row j = s_j), stride LD;
// rot_rows: the float32 extended table row ROT_SHIFT + (i - pos0) of the row tile's first row i. Per 16
// columns of D: U = P_band . S (two n-tiles), rotated by +(i - pos0) w_t per pair and added to acc.
template <typename T, int D, int LD, int NTN>
__device__ __forceinline__ void add_rotated_band_values(float (&acc)[D / 8][4], const uint32_t (&a)[NTN / 2][4],
                                                        const T* ss, const float* rot_rows, int lane) {
    // the float32 table rows of the lane's fragment rows g, g + 8 (rot_rows: the row tile's first row)
    const float* const rows[2] = {rot_rows + (lane >> 2) * D, rot_rows + ((lane >> 2) + 8) * D};
    const T* sl = ss + ldsm_b_kmajor_offset(lane, LD);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
        float u[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
        for (int kk = 0; kk < NTN / 2; ++kk) {
            uint32_t b[4];
            ldsm_x4_trans(b, sl + kk * 16 * LD + dp * 16);
            const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
            MmaOp<T>::run(u[0], a[kk], b0);
            MmaOp<T>::run(u[1], a[kk], b1);
        }
        SinCos2 sc[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) sc[h] = load_sincos2<D>(rows[h], lane & 3, dp);
#pragma unroll
        for (int n = 0; n < 2; ++n) {  // the pair (2t, 2t + 1), t = (2 dp + n) 4 + lane % 4, of elements (2h, 2h + 1)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const SinCos c = sc[h].n[n];
                float* o = acc[2 * dp + n];
                o[2 * h] = fmaf(u[n][2 * h], c.cos, fmaf(-u[n][2 * h + 1], c.sin, o[2 * h]));
                o[2 * h + 1] = fmaf(u[n][2 * h + 1], c.cos, fmaf(u[n][2 * h], c.sin, o[2 * h + 1]));
            }
        }
    }
}

}  // namespace nezha
