// Torch-free launch API of the relative-attention kernels: raw pointers, sizes, strides, a stream.
//
// Layout: q [B, H, Lq, D], k/v [B, H, Lk, D] with any (batch, head, row) strides and unit stride on D;
// table [2R+1, D] contiguous; outputs contiguous. Padding-free (varlen) calls, cu_seqlens_q set: q [Tq, H, D],
// k/v [Tk, H, D] (any head / row strides, batch strides unused), outputs in the same packed layout. Every launcher returns nullptr on success or a static
// error message (kernels failing to launch report the CUDA error string).
#pragma once

#include <cstdint>

namespace nezha {

enum class DType : int { F16 = 0, BF16 = 1, F32 = 2 };

// Kernel family: SIMT (CUDA cores, every dtype) or TC (mma.sync tensor cores, fp16 / bf16 only: a float32 call
// is an error). Chosen in Python (nezha_kernels/backends/cuda_backend.impl_name), not re-decided here.
enum class Impl : int { SIMT = 0, TC = 1 };

struct AttnArgs {
    int B, H, Lq, Lk, D, R, q_offset;
    bool causal;
    float scale;
    const void* q; int64_t q_sb, q_sh, q_sl;
    const void* k; int64_t k_sb, k_sh, k_sl;
    const void* v; int64_t v_sb, v_sh, v_sl;
    const void* table;                        // [2R+1, D], contiguous, q's dtype
    const uint8_t* key_padding;               // bool [B, Lk] (nonzero = attend) or nullptr
    int64_t kp_sb, kp_sk;
    const float* additive_mask;               // float32, strides may be 0 on broadcast dims, or nullptr
    int64_t am_sb, am_sh, am_sq, am_sk;
    float dropout_p;                          // 0 = no dropout
    uint64_t dropout_seed;
    const float* head_mask;                   // float32 [B, H] contiguous, or nullptr
    // Padding-free batches (both set, or both nullptr = dense): int32 [B + 1] on the device, sequence b is rows
    // cu[b] .. cu[b + 1] of q (keys: of k / v), its query i at position i + Lk_b - Lq_b (q_offset unused). Lq / Lk
    // then hold max_seqlen_q / max_seqlen_k (they size the grid), Tq the total query rows; no key_padding or
    // additive_mask.
    const int32_t* cu_seqlens_q;
    const int32_t* cu_seqlens_k;
    int Tq;
    // The table is NEZHA's sinusoid (the op's default): the tensor-core forward may take the band from the rotation
    // identity (csrc/relattn_rotation.cuh) instead of the table. Extended sinusoid rows u = 0 .. rot_rows - 1 at
    // angle (u - ROT_SHIFT) w_t, [rot_rows, D] contiguous: rot_keys in q's dtype, rot_f32 in float32; both nullptr
    // (rot_rows 0) for a user-given table. The table itself still gives the edge rows T[0] and T[2R].
    const void* rot_keys;
    const float* rot_f32;
    int rot_rows;
};

// The extended sinusoid table of the rotation path (AttnArgs::rot_keys / rot_f32): row u holds
// [sin((u - ROT_SHIFT) w_t), cos((u - ROT_SHIFT) w_t)]_t, w_t = 10000^(-2t/D). A query block of at most ROT_MAX_BM
// rows from position pos0 reads rows pos0 - R - ROT_SHIFT + j for its band keys j (ROT_SHIFT = the key tile, so
// every row index of a tile that meets the band is >= 0) and rows ROT_SHIFT + r for its rows r: rotation_rows(R)
// rows cover both. The launcher (nezha_kernels/cuda_ext/launch.py) builds it with the same constants. rot_f32 holds
// each row's D / 2 (sin, cos) pairs in mma-fragment order (relattn_rotation.cuh rot_f32_pair): pair t at position
// (t % 4) D / 8 + t / 4, so the D / 8 pairs t = 4 n + q of an accumulator lane q = lane % 4 are adjacent.
constexpr int ROT_SHIFT = 64;
constexpr int ROT_MAX_BM = 128;
constexpr int64_t rotation_rows(int64_t R) { return 2 * R + ROT_MAX_BM + 2 * ROT_SHIFT; }

// o [B, H, Lq, D] (varlen: [Tq, H, D]) contiguous in q's dtype; lse [2, B, H, Lq] (varlen: [2, H, Tq]) float32: lse[0] the row max m of the scores,
// lse[1] log of the row sum l. Kept apart, not m + log l: a fully masked row has m = finfo.min, where
// m + log l == m in float32, and the backward would recompute weights 1 instead of 1 / Lk.
const char* relattn_fwd(const AttnArgs& a, DType dtype, Impl impl, void* o, float* lse, int device, void* stream);
const char* relattn_fwd_tc(const AttnArgs& a, DType dtype, void* o, float* lse, int device, void* stream);

// dout [B, H, Lq, D] contiguous; lse [2, B, H, Lq] from the forward; delta [B, H, Lq] float32 = rowsum(dout * o).
// dq [B, H, Lq, D], dk/dv [B, H, Lk, D] contiguous in q's dtype, every element written. Varlen: dout / dq
// [Tq, H, D], lse [2, H, Tq], delta [H, Tq], dk / dv [Tk, H, D]; every row of a sequence written.
const char* relattn_bwd(const AttnArgs& a, DType dtype, Impl impl, const void* dout, const float* lse,
                        const float* delta, void* dq, void* dk, void* dv, int device, void* stream);
const char* relattn_bwd_tc(const AttnArgs& a, DType dtype, const void* dout, const float* lse, const float* delta,
                           void* dq, void* dk, void* dv, int device, void* stream);
// The fused tensor-core backward (relattn_bwd_fused.cu): one kernel per key block writes dk / dv and adds dQ into
// dq_acc (float32, dq's layout and element count, zeroed by the caller), then a small kernel writes dq = scale * dq_acc
// in q's dtype. dQ's summation order depends on the schedule (atomics): relattn_bwd_tc is the deterministic mode.
// Head dims without a fused kernel run relattn_bwd_tc (dq_acc unused, may be nullptr).
// Head dims the fused backward is built for; others (D = 128: 255 registers, spills on sm_90a) run relattn_bwd_tc.
constexpr bool fused_bwd_head_dim(int d) { return d == 32 || d == 64; }
const char* relattn_bwd_tc_fused(const AttnArgs& a, DType dtype, const void* dout, const float* lse,
                                 const float* delta, float* dq_acc, void* dq, void* dk, void* dv, int device,
                                 void* stream);

}  // namespace nezha
