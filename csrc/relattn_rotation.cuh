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

// Which instantiations have a rotation kernel: every head dim, except the padding-free D = 128 one (it spilled on
// sm_80: 12 bytes at 255 registers); the others take the table slices.
constexpr bool rotation_kernel(int d, bool packed) { return d == 32 || d == 64 || (d == 128 && !packed); }

// Whether the rotation kernel serves max_relative_position R: R >= ROT_SHIFT / 2 (half a key tile; NEZHA's
// checkpoints have R = 64), so that in a band tile a row's out-of-band keys lie on one side of its band (2R - 1 >=
// 63 columns of band) and every pair of the row needs one edge term and one far mass (relattn_fwd_tc.cu). Smaller R
// (a band of at most two tiles) takes the table slices.
NZ_HD constexpr bool rotation_band_one_sided(int R) { return 2 * R >= ROT_SHIFT; }

// sin and cos of one angle, adjacent in the float32 extended table (columns 2t, 2t + 1).
struct alignas(8) SinCos {
    float sin;
    float cos;
};

__device__ __forceinline__ SinCos load_sincos(const float* __restrict__ row, int t) {
    return reinterpret_cast<const SinCos*>(row)[t];
}

// QRs[r] = Qs[r] rotated by -r w_t (fp32 from the float32 table rows ROT_SHIFT + r, rounded to T once), r < ROWS:
//   q_rot[2t] = q[2t] cos + q[2t+1] sin,  q_rot[2t+1] = q[2t+1] cos - q[2t] sin.
template <typename T, int D, int LD, int NT, int ROWS>
__device__ __forceinline__ void rotate_queries(T* QRs, const T* Qs, const float* __restrict__ rot_f32) {
    static_assert(ROWS <= ROT_MAX_BM, "the extended table covers ROT_MAX_BM query rows");
#pragma unroll 1
    for (int e = threadIdx.x; e < ROWS * (D / 2); e += NT) {
        const int r = e / (D / 2), t = e % (D / 2);
        const SinCos sc = load_sincos(rot_f32 + static_cast<int64_t>(ROT_SHIFT + r) * D, t);
        const float q0 = to_f(Qs[r * LD + 2 * t]), q1 = to_f(Qs[r * LD + 2 * t + 1]);
        QRs[r * LD + 2 * t] = from_f<T>(fmaf(q0, sc.cos, q1 * sc.sin));
        QRs[r * LD + 2 * t + 1] = from_f<T>(fmaf(q1, sc.cos, -(q0 * sc.sin)));
    }
}

// A thread's row statistics (row max m, sum l, the far masses) in shared memory, [4][RW][NT] floats from `slots`
// (this thread's column): the band loop keeps one row tile's in registers at a time.
template <int RW, int NT>
struct RowStatsParking {
    float* slots;  // this thread's first slot; slot (k, r) at slots[(k RW + r) NT]

    __device__ __forceinline__ explicit RowStatsParking(float* thread_slots) : slots(thread_slots) {}
    __device__ __forceinline__ float& at(int k, int r) const { return slots[(k * RW + r) * NT]; }

    __device__ __forceinline__ void store(const float (&m)[RW], const float (&l)[RW], const FarField (&far)[RW]) const {
#pragma unroll
        for (int r = 0; r < RW; ++r) {
            at(0, r) = m[r];
            at(1, r) = l[r];
            at(2, r) = far[r].left;
            at(3, r) = far[r].right;
        }
    }
    __device__ __forceinline__ void load_all(float (&m)[RW], float (&l)[RW], FarField (&far)[RW]) const {
#pragma unroll
        for (int r = 0; r < RW; ++r) {
            m[r] = at(0, r);
            l[r] = at(1, r);
            far[r] = {at(2, r), at(3, r)};
        }
    }
    // Rows 2 mt, 2 mt + 1 (row tile mt).
    __device__ __forceinline__ void load(int mt, float (&m)[2], float (&l)[2], FarField (&far)[2]) const {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            m[h] = at(0, 2 * mt + h);
            l[h] = at(1, 2 * mt + h);
            far[h] = {at(2, 2 * mt + h), at(3, 2 * mt + h)};
        }
    }
    __device__ __forceinline__ void store_tile(int mt, const float (&m)[2], const float (&l)[2],
                                               const FarField (&far)[2]) const {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            at(0, 2 * mt + h) = m[h];
            at(1, 2 * mt + h) = l[h];
            at(2, 2 * mt + h) = far[h].left;
            at(3, 2 * mt + h) = far[h].right;
        }
    }
};

// The weights of one row tile as P's A fragments (k-steps of 16 keys, rounded to T), computed pair by pair from the
// raw scores s (p = 2^(s scale_log2 - m) per row: rows g, g + 8 of the lane, maxima m0 / m1, sums into l0 / l1) so
// that the fp32 tile dies as they are packed; on_weight(nt, e, p) sees each weight (the far-field masses).
template <typename T, int NTN, typename OnWeight>
__device__ __forceinline__ void weights_to_a(uint32_t (&pa)[NTN / 2][4], const float (&s)[NTN][4], float scale_log2,
                                             float m0, float m1, float& l0, float& l1, OnWeight&& on_weight) {
#pragma unroll
    for (int kk = 0; kk < NTN / 2; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int nt = 2 * kk + c_to_a_ntile(r), e = c_to_a_elem(r);
            const float m = e >> 1 ? m1 : m0;
            const float p0 = fast_exp2(fmaf(s[nt][e], scale_log2, -m));
            const float p1 = fast_exp2(fmaf(s[nt][e + 1], scale_log2, -m));
            if (e >> 1) l1 += p0 + p1;
            else l0 += p0 + p1;
            on_weight(nt, e, p0);
            on_weight(nt, e + 1, p1);
            pa[kk][r] = MmaOp<T>::pack(p0, p1);
        }
}

// P's A fragments masked to P_band: 16-bit halves of pairs that are not in band (in_band(nt, e) false) set to 0.
template <int NTN, typename InBand>
__device__ __forceinline__ void mask_to_band(uint32_t (&pa)[NTN / 2][4], InBand&& in_band) {
#pragma unroll
    for (int kk = 0; kk < NTN / 2; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int nt = 2 * kk + c_to_a_ntile(r), e = c_to_a_elem(r);
            pa[kk][r] &= (in_band(nt, e) ? 0x0000ffffu : 0u) | (in_band(nt, e + 1) ? 0xffff0000u : 0u);
        }
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
#pragma unroll
        for (int n = 0; n < 2; ++n) {
            const int t = (2 * dp + n) * 4 + (lane & 3);  // the pair (2t, 2t + 1) of elements (2h, 2h + 1)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const SinCos sc = load_sincos(rows[h], t);
                float* o = acc[2 * dp + n];
                o[2 * h] = fmaf(u[n][2 * h], sc.cos, fmaf(-u[n][2 * h + 1], sc.sin, o[2 * h]));
                o[2 * h + 1] = fmaf(u[n][2 * h + 1], sc.cos, fmaf(u[n][2 * h], sc.sin, o[2 * h + 1]));
            }
        }
    }
}

}  // namespace nezha
