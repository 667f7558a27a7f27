// Argument handling of the launch API, torch-free: from plain tensor views to AttnArgs, or an error message.
//
// The one place the extension's arguments are checked: csrc/binding.cpp (torch tensors) and the CPU emulator's
// C API (csrc/emu/emu_api.cpp, tensors described from Python) both call it. It checks only what guards memory:
// device, dtype, rank, sizes, strides and the 32-bit index / grid range. What a call means (dropout_p in [0, 1),
// R >= 1, ...) is checked once, in Python (nezha_kernels/inputs.py prepare_inputs); head dims are checked by the
// kernel dispatch, which knows the instantiations.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "relattn.h"

namespace nezha {

enum class ScalarKind : int { F16 = 0, BF16 = 1, F32 = 2, BOOL = 3, OTHER = 4, INT32 = 5 };
enum class DeviceKind : int { CPU = 0, CUDA = 1, OTHER = 2 };

constexpr int MAX_VIEW_RANK = 4;

// A tensor as plain data. Sizes and strides (in elements) past ndim (or past MAX_VIEW_RANK) are not read.
struct TensorView {
    const void* data;
    int dtype;         // ScalarKind
    int device_type;   // DeviceKind
    int device_index;
    int ndim;
    int64_t sizes[MAX_VIEW_RANK];
    int64_t strides[MAX_VIEW_RANK];
};

namespace args_detail {

inline const char* dtype_name(int dtype) {
    switch (static_cast<ScalarKind>(dtype)) {
        case ScalarKind::F16: return "float16";
        case ScalarKind::BF16: return "bfloat16";
        case ScalarKind::F32: return "float32";
        case ScalarKind::BOOL: return "bool";
        case ScalarKind::INT32: return "int32";
        default: return "an unsupported dtype";
    }
}

inline std::string device_name(const TensorView& t) {
    switch (static_cast<DeviceKind>(t.device_type)) {
        case DeviceKind::CPU: return "cpu";
        case DeviceKind::CUDA: return "cuda:" + std::to_string(t.device_index);
        default: return "a non-CPU, non-CUDA device";
    }
}

inline std::string shape_of(const TensorView& t) {
    std::string s = "[";
    for (int d = 0; d < t.ndim && d < MAX_VIEW_RANK; ++d) s += (d ? ", " : "") + std::to_string(t.sizes[d]);
    return s + (t.ndim > MAX_VIEW_RANK ? ", ...]" : "]");
}

inline bool has_shape(const TensorView& t, std::initializer_list<int64_t> shape) {
    if (t.ndim != static_cast<int>(shape.size())) return false;
    int d = 0;
    for (int64_t n : shape)
        if (t.sizes[d++] != n) return false;
    return true;
}

inline bool is_contiguous(const TensorView& t) {
    int64_t expected = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
        if (t.sizes[d] != 1 && t.strides[d] != expected) return false;
        expected *= t.sizes[d];
    }
    return true;
}

constexpr const char* PREFIX = "nezha_kernels cuda backend: ";

// Device (of kind `device`, q's) and dtype of `t`; "" when they are right.
inline std::string check_placement(const char* name, const TensorView& t, const TensorView& q, DeviceKind device,
                                   int dtype) {
    if (t.device_type != static_cast<int>(device))
        return std::string(PREFIX) + name + " must be a " + (device == DeviceKind::CUDA ? "CUDA" : "CPU (emulator)") +
               " tensor, got device " + device_name(t);
    if (t.device_index != q.device_index)
        return std::string(PREFIX) + name + " is on " + device_name(t) + " but q is on " + device_name(q);
    if (t.dtype != dtype)
        return std::string(PREFIX) + name + " must be " + dtype_name(dtype) + ", got " + dtype_name(t.dtype);
    return "";
}

inline std::string shape_error(const char* name, const TensorView& t, const char* expected) {
    return std::string(PREFIX) + name + " must be " + expected + ", got shape " + shape_of(t);
}

}  // namespace args_detail

// Fills `a` and `dtype` from q [B, H, Lq, D], k / v [B, H, Lk, D] (any batch, head, row strides; unit stride on
// D), table [2R+1, D] contiguous, and the optional key_padding bool [B, Lk], additive_mask float32 [B, H, Lq, Lk]
// (any strides, 0 on broadcast dims) and head_mask float32 [B, H] contiguous (nullptr when absent), every tensor
// on one `device` of kind `device`. Returns "" or what is wrong, naming the argument.
inline std::string make_attn_args(const TensorView& q, const TensorView& k, const TensorView& v,
                                  const TensorView& table, const TensorView* key_padding,
                                  const TensorView* additive_mask, const TensorView* head_mask, int64_t R,
                                  int64_t q_offset, bool causal, double scale, double dropout_p, uint64_t seed,
                                  DeviceKind device, AttnArgs& a, DType& dtype) {
    using namespace args_detail;
    if (q.dtype != static_cast<int>(ScalarKind::F16) && q.dtype != static_cast<int>(ScalarKind::BF16) &&
        q.dtype != static_cast<int>(ScalarKind::F32))
        return std::string(PREFIX) + "q must be float16, bfloat16 or float32, got " + dtype_name(q.dtype);
    const TensorView* qkv[] = {&q, &k, &v};
    const char* names[] = {"q", "k", "v"};
    for (int t = 0; t < 3; ++t) {
        std::string err = check_placement(names[t], *qkv[t], q, device, q.dtype);
        if (!err.empty()) return err;
        if (qkv[t]->ndim != 4) return shape_error(names[t], *qkv[t], "4-D [B, H, L, D]");
        if (qkv[t]->strides[3] != 1) return std::string(PREFIX) + names[t] + " must have unit stride on the head dim";
    }
    const int64_t B = q.sizes[0], H = q.sizes[1], Lq = q.sizes[2], D = q.sizes[3], Lk = k.sizes[2];
    if (!has_shape(k, {B, H, Lk, D}) || !has_shape(v, {B, H, Lk, D}))
        return std::string(PREFIX) + "k and v must be [B, H, Lk, D] matching q " + shape_of(q) + ", got k " +
               shape_of(k) + " and v " + shape_of(v);
    // 32-bit positions and indices (max(Lq, Lk) + |q_offset| + 2R), grid axis y = B * H.
    const int64_t limit = int64_t{1} << 31;
    const bool in_range = R >= 0 && R < limit && q_offset > -limit && q_offset < limit && B < 65536 && H < 65536 &&
                          B * H < 65536 &&
                          (Lq > Lk ? Lq : Lk) + (q_offset < 0 ? -q_offset : q_offset) + 2 * R < limit;
    if (!in_range)
        return std::string(PREFIX) + "sizes exceed the kernels' 32-bit index range / grid (B * H < 65536, " +
               "max(Lq, Lk) + |q_offset| + 2R < 2^31)";
    std::string err = check_placement("rel_table", table, q, device, q.dtype);
    if (!err.empty()) return err;
    if (!has_shape(table, {2 * R + 1, D}) || !is_contiguous(table))
        return shape_error("rel_table", table, ("a contiguous [2R+1, D] = [" + std::to_string(2 * R + 1) + ", " +
                                                std::to_string(D) + "] tensor").c_str());

    a = AttnArgs{};
    a.B = static_cast<int>(B); a.H = static_cast<int>(H); a.Lq = static_cast<int>(Lq); a.Lk = static_cast<int>(Lk);
    a.D = static_cast<int>(D); a.R = static_cast<int>(R); a.q_offset = static_cast<int>(q_offset);
    a.causal = causal;
    a.scale = static_cast<float>(scale);
    a.q = q.data; a.q_sb = q.strides[0]; a.q_sh = q.strides[1]; a.q_sl = q.strides[2];
    a.k = k.data; a.k_sb = k.strides[0]; a.k_sh = k.strides[1]; a.k_sl = k.strides[2];
    a.v = v.data; a.v_sb = v.strides[0]; a.v_sh = v.strides[1]; a.v_sl = v.strides[2];
    a.table = table.data;
    if (key_padding) {
        const TensorView& kp = *key_padding;
        if (!(err = check_placement("key_padding", kp, q, device, static_cast<int>(ScalarKind::BOOL))).empty())
            return err;
        if (!has_shape(kp, {B, Lk})) return shape_error("key_padding", kp, "bool [B, Lk]");
        a.key_padding = static_cast<const uint8_t*>(kp.data);
        a.kp_sb = kp.strides[0]; a.kp_sk = kp.strides[1];
    }
    if (additive_mask) {
        const TensorView& m = *additive_mask;
        if (!(err = check_placement("additive_mask", m, q, device, static_cast<int>(ScalarKind::F32))).empty())
            return err;
        if (!has_shape(m, {B, H, Lq, Lk}))
            return shape_error("additive_mask", m, "a float32 view of shape [B, H, Lq, Lk] (stride 0 on broadcast dims)");
        a.additive_mask = static_cast<const float*>(m.data);
        a.am_sb = m.strides[0]; a.am_sh = m.strides[1]; a.am_sq = m.strides[2]; a.am_sk = m.strides[3];
    }
    if (head_mask) {
        const TensorView& hm = *head_mask;
        if (!(err = check_placement("head_mask", hm, q, device, static_cast<int>(ScalarKind::F32))).empty())
            return err;
        if (!has_shape(hm, {B, H}) || !is_contiguous(hm))
            return shape_error("head_mask", hm, "a contiguous float32 [B, H] tensor");
        a.head_mask = static_cast<const float*>(hm.data);
    }
    a.dropout_p = static_cast<float>(dropout_p);
    a.dropout_seed = seed;
    dtype = static_cast<DType>(q.dtype);  // ScalarKind and DType agree on F16, BF16, F32
    return "";
}

// The backward's extra inputs: dout contiguous with q's shape and dtype, lse float32 [2, B, H, Lq] and delta
// float32 [B, H, Lq], both contiguous; "" or what is wrong.
inline std::string check_backward_inputs(const AttnArgs& a, const TensorView& q, const TensorView& dout,
                                         const TensorView& lse, const TensorView& delta, DeviceKind device) {
    using namespace args_detail;
    std::string err = check_placement("dout", dout, q, device, q.dtype);
    if (!err.empty()) return err;
    if (!has_shape(dout, {a.B, a.H, a.Lq, a.D}) || !is_contiguous(dout))
        return shape_error("dout", dout, "contiguous with q's shape");
    if (!(err = check_placement("lse", lse, q, device, static_cast<int>(ScalarKind::F32))).empty()) return err;
    if (!has_shape(lse, {2, a.B, a.H, a.Lq}) || !is_contiguous(lse))
        return shape_error("lse", lse, "contiguous float32 [2, B, H, Lq]");
    if (!(err = check_placement("delta", delta, q, device, static_cast<int>(ScalarKind::F32))).empty()) return err;
    if (!has_shape(delta, {a.B, a.H, a.Lq}) || !is_contiguous(delta))
        return shape_error("delta", delta, "contiguous float32 [B, H, Lq]");
    return "";
}

// An output the caller allocated (the emulator's; the binding allocates its own): contiguous, `shape`, `dtype`.
inline std::string check_output(const char* name, const TensorView& t, const TensorView& q, DeviceKind device,
                                int dtype, std::initializer_list<int64_t> shape) {
    using namespace args_detail;
    std::string err = check_placement(name, t, q, device, dtype);
    if (!err.empty()) return err;
    if (!has_shape(t, shape) || !is_contiguous(t)) return shape_error(name, t, "contiguous with the output's shape");
    return "";
}

// The rotation path's extended sinusoid tables (relattn.h, rotation_rows): rot_keys in q's dtype and rot_f32 float32,
// both contiguous [rows, D] with rows >= rotation_rows(R), on q's device. Sets a.rot_keys, a.rot_f32 and a.rot_rows
// (the tensor-core forward then takes the band from them, for PLAIN calls); "" or what is wrong.
inline std::string set_rotation_tables(AttnArgs& a, const TensorView& q, const TensorView& rot_keys,
                                       const TensorView& rot_f32, DeviceKind device) {
    using namespace args_detail;
    std::string err = check_placement("rot_keys", rot_keys, q, device, q.dtype);
    if (err.empty()) err = check_placement("rot_f32", rot_f32, q, device, static_cast<int>(ScalarKind::F32));
    if (!err.empty()) return err;
    const int64_t rows = rot_keys.ndim == 2 ? rot_keys.sizes[0] : 0;
    const std::string want = "a contiguous [rows, D] tensor with rows >= 2R + " +
                             std::to_string(rotation_rows(0)) + " = " + std::to_string(rotation_rows(a.R)) +
                             ", D = " + std::to_string(a.D) + ", rot_keys and rot_f32 alike";
    if (rows < rotation_rows(a.R) || rows >= (int64_t{1} << 31) || !has_shape(rot_keys, {rows, a.D}) ||
        !is_contiguous(rot_keys))
        return shape_error("rot_keys", rot_keys, want.c_str());
    if (!has_shape(rot_f32, {rows, a.D}) || !is_contiguous(rot_f32))
        return shape_error("rot_f32", rot_f32, want.c_str());
    a.rot_keys = rot_keys.data;
    a.rot_f32 = static_cast<const float*>(rot_f32.data);
    a.rot_rows = static_cast<int>(rows);
    return "";
}

// The kernel family of the binding's `impl` code (0 = SIMT, 1 = TC); "" or what is wrong.
inline std::string impl_of(int64_t code, Impl& impl) {
    if (code != 0 && code != 1)
        return std::string(args_detail::PREFIX) + "impl must be 0 (simt) or 1 (tc), got " + std::to_string(code);
    impl = static_cast<Impl>(code);
    return "";
}

// ---- padding-free (varlen) calls ----

// Fills `a` and `dtype` from q [Tq, H, D], k / v [Tk, H, D] (any head and row strides; unit stride on D), table
// [2R+1, D] contiguous, cu_seqlens_q / cu_seqlens_k int32 [B + 1] contiguous and head_mask float32 [B, H]
// contiguous (nullptr when absent); max_seqlen_q / max_seqlen_k size the grid (Lq / Lk of AttnArgs). The contents
// of cu_seqlens (0 .. T, non-decreasing) and max_seqlen >= every length are checked in Python
// (prepare_varlen_inputs): reading them here would synchronize with the device. "" or what is wrong.
inline std::string make_varlen_attn_args(const TensorView& q, const TensorView& k, const TensorView& v,
                                         const TensorView& table, const TensorView* head_mask,
                                         const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                                         int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t R, bool causal,
                                         double scale, double dropout_p, uint64_t seed, DeviceKind device,
                                         AttnArgs& a, DType& dtype) {
    using namespace args_detail;
    if (q.dtype != static_cast<int>(ScalarKind::F16) && q.dtype != static_cast<int>(ScalarKind::BF16) &&
        q.dtype != static_cast<int>(ScalarKind::F32))
        return std::string(PREFIX) + "q must be float16, bfloat16 or float32, got " + dtype_name(q.dtype);
    const TensorView* qkv[] = {&q, &k, &v};
    const char* names[] = {"q", "k", "v"};
    for (int t = 0; t < 3; ++t) {
        std::string err = check_placement(names[t], *qkv[t], q, device, q.dtype);
        if (!err.empty()) return err;
        if (qkv[t]->ndim != 3) return shape_error(names[t], *qkv[t], "3-D [T, H, D] (padding-free)");
        if (qkv[t]->strides[2] != 1) return std::string(PREFIX) + names[t] + " must have unit stride on the head dim";
    }
    const int64_t Tq = q.sizes[0], H = q.sizes[1], D = q.sizes[2], Tk = k.sizes[0];
    if (!has_shape(k, {Tk, H, D}) || !has_shape(v, {Tk, H, D}))
        return std::string(PREFIX) + "k and v must be [Tk, H, D] matching q " + shape_of(q) + ", got k " +
               shape_of(k) + " and v " + shape_of(v);
    const TensorView* cus[] = {&cu_seqlens_q, &cu_seqlens_k};
    const char* cu_names[] = {"cu_seqlens_q", "cu_seqlens_k"};
    for (int t = 0; t < 2; ++t) {
        std::string err = check_placement(cu_names[t], *cus[t], q, device, static_cast<int>(ScalarKind::INT32));
        if (!err.empty()) return err;
        if (cus[t]->ndim != 1 || cus[t]->sizes[0] < 1 || cus[t]->sizes[0] != cu_seqlens_q.sizes[0] ||
            !is_contiguous(*cus[t]))
            return shape_error(cu_names[t], *cus[t], "a contiguous int32 [B + 1] tensor, as long as cu_seqlens_q");
    }
    const int64_t B = cu_seqlens_q.sizes[0] - 1;
    // 32-bit rows, positions (i + Lk_b - Lq_b within (-Tq, Tk)) and indices, grid axis y = B * H.
    const int64_t limit = int64_t{1} << 31;
    const bool in_range = R >= 0 && R < limit && B < 65536 && H < 65536 && B * H < 65536 && Tq + Tk + 2 * R < limit &&
                          max_seqlen_q >= 0 && max_seqlen_q < limit && max_seqlen_k >= 0 && max_seqlen_k < limit;
    if (!in_range)
        return std::string(PREFIX) + "sizes exceed the kernels' 32-bit index range / grid (B * H < 65536, " +
               "Tq + Tk + 2R < 2^31, 0 <= max_seqlen < 2^31)";
    std::string err = check_placement("rel_table", table, q, device, q.dtype);
    if (!err.empty()) return err;
    if (!has_shape(table, {2 * R + 1, D}) || !is_contiguous(table))
        return shape_error("rel_table", table, ("a contiguous [2R+1, D] = [" + std::to_string(2 * R + 1) + ", " +
                                                std::to_string(D) + "] tensor").c_str());

    a = AttnArgs{};
    a.B = static_cast<int>(B); a.H = static_cast<int>(H); a.D = static_cast<int>(D); a.R = static_cast<int>(R);
    a.Lq = static_cast<int>(max_seqlen_q); a.Lk = static_cast<int>(max_seqlen_k); a.Tq = static_cast<int>(Tq);
    a.causal = causal;
    a.scale = static_cast<float>(scale);
    a.q = q.data; a.q_sh = q.strides[1]; a.q_sl = q.strides[0];
    a.k = k.data; a.k_sh = k.strides[1]; a.k_sl = k.strides[0];
    a.v = v.data; a.v_sh = v.strides[1]; a.v_sl = v.strides[0];
    a.table = table.data;
    a.cu_seqlens_q = static_cast<const int32_t*>(cu_seqlens_q.data);
    a.cu_seqlens_k = static_cast<const int32_t*>(cu_seqlens_k.data);
    if (head_mask) {
        const TensorView& hm = *head_mask;
        if (!(err = check_placement("head_mask", hm, q, device, static_cast<int>(ScalarKind::F32))).empty())
            return err;
        if (!has_shape(hm, {B, H}) || !is_contiguous(hm))
            return shape_error("head_mask", hm, "a contiguous float32 [B, H] tensor");
        a.head_mask = static_cast<const float*>(hm.data);
    }
    a.dropout_p = static_cast<float>(dropout_p);
    a.dropout_seed = seed;
    dtype = static_cast<DType>(q.dtype);
    return "";
}

// The padding-free backward's extra inputs: dout contiguous with q's shape and dtype, lse float32 [2, H, Tq] and
// delta float32 [H, Tq], both contiguous; "" or what is wrong.
inline std::string check_varlen_backward_inputs(const AttnArgs& a, const TensorView& q, const TensorView& dout,
                                                const TensorView& lse, const TensorView& delta, DeviceKind device) {
    using namespace args_detail;
    std::string err = check_placement("dout", dout, q, device, q.dtype);
    if (!err.empty()) return err;
    if (!has_shape(dout, {a.Tq, a.H, a.D}) || !is_contiguous(dout))
        return shape_error("dout", dout, "contiguous with q's shape");
    if (!(err = check_placement("lse", lse, q, device, static_cast<int>(ScalarKind::F32))).empty()) return err;
    if (!has_shape(lse, {2, a.H, a.Tq}) || !is_contiguous(lse))
        return shape_error("lse", lse, "contiguous float32 [2, H, Tq]");
    if (!(err = check_placement("delta", delta, q, device, static_cast<int>(ScalarKind::F32))).empty()) return err;
    if (!has_shape(delta, {a.H, a.Tq}) || !is_contiguous(delta))
        return shape_error("delta", delta, "contiguous float32 [H, Tq]");
    return "";
}

}  // namespace nezha
