// C API of the emulated CUDA kernels (host pointers), loaded by nezha_kernels/cuda_ext/emulator.py.
//
// The kernel sources are compiled unchanged, as C++, against the emulator (cuda_emu.h), one translation unit
// each (emu_kernels_*.cpp, built in parallel), and run through the binding's argument handling (relattn_args.h:
// tensor views -> AttnArgs) and the same launchers the extension calls (relattn_fwd / relattn_bwd of relattn.h):
// the argument checks, shared-memory sizing and dispatch are the code under test too.
#ifndef NEZHA_CUDA_EMULATE
#error "emu_api.cpp builds the CPU emulation: compile with -DNEZHA_CUDA_EMULATE"
#endif

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../relattn.h"
#include "../relattn_args.h"
#include "cuda_emu.h"

namespace {

using nezha::DeviceKind;
using nezha::TensorView;

// The last error message of this thread's call (returned as a C string that stays valid until the next call).
thread_local std::string last_error;

const char* fail(std::string message) {
    last_error = std::move(message);
    return last_error.c_str();
}

// The binding's backward dispatch: the two-kernel backward (deterministic, and every SIMT call) or the fused
// tensor-core backward with its zeroed float32 dQ accumulator (the binding's torch::zeros).
const char* run_backward(const nezha::AttnArgs& a, nezha::DType dtype, nezha::Impl impl, bool deterministic,
                         const TensorView* dout, const TensorView* lse, const TensorView* delta, const TensorView* dq,
                         const TensorView* dk, const TensorView* dv, int device) {
    const float* l = static_cast<const float*>(lse->data);
    const float* d = static_cast<const float*>(delta->data);
    void *gq = const_cast<void*>(dq->data), *gk = const_cast<void*>(dk->data), *gv = const_cast<void*>(dv->data);
    const char* launch = nullptr;
    if (impl == nezha::Impl::TC && !deterministic && nezha::fused_bwd_head_dim(a.D)) {
        int64_t n = 1;
        for (int i = 0; i < dq->ndim; ++i) n *= dq->sizes[i];
        std::vector<float> dq_acc(static_cast<size_t>(n), 0.0f);
        launch = nezha::relattn_bwd_tc_fused(a, dtype, dout->data, l, d, dq_acc.data(), gq, gk, gv, device, nullptr);
    } else {
        launch = nezha::relattn_bwd(a, dtype, impl, dout->data, l, d, gq, gk, gv, device, nullptr);
    }
    return launch ? fail(std::string("nezha_kernels cuda backward failed: ") + launch) : nullptr;
}

// The binding's add_rotation_tables: the forward's optional extended sinusoid tables, both or neither.
std::string add_rotation_tables(nezha::AttnArgs& a, const TensorView* q, const TensorView* rot_keys,
                                const TensorView* rot_f32) {
    if ((rot_keys == nullptr) != (rot_f32 == nullptr))
        return "nezha_kernels cuda backend: rot_keys and rot_f32 go together (both or neither)";
    return rot_keys ? nezha::set_rotation_tables(a, *q, *rot_keys, *rot_f32, DeviceKind::CPU) : "";
}

}  // namespace

extern "C" {

// sizeof(TensorView) then the offset of every field in declaration order: Python checks its ctypes description.
int nezha_emu_view_layout(int64_t* out, int capacity) {
    const int64_t layout[] = {
        sizeof(TensorView), offsetof(TensorView, data), offsetof(TensorView, dtype),
        offsetof(TensorView, device_type), offsetof(TensorView, device_index), offsetof(TensorView, ndim),
        offsetof(TensorView, sizes), offsetof(TensorView, strides),
    };
    const int n = static_cast<int>(sizeof(layout) / sizeof(layout[0]));
    for (int i = 0; i < n && i < capacity; ++i) out[i] = layout[i];
    return n;
}

// The binding's forward on emulated device `device` (CPU tensors, outputs allocated by the caller): the
// arguments go through the binding's own checks (relattn_args.h); nullptr or the error message.
const char* nezha_emu_fwd(const TensorView* q, const TensorView* k, const TensorView* v, const TensorView* table,
                          const TensorView* key_padding, const TensorView* additive_mask, const TensorView* head_mask,
                          int64_t R, int64_t q_offset, bool causal, double scale, double dropout_p, uint64_t seed,
                          int64_t impl_code, const TensorView* out, const TensorView* lse, int device,
                          const TensorView* rot_keys, const TensorView* rot_f32) {
    nezha::AttnArgs a;
    nezha::DType dtype;
    nezha::Impl impl;
    std::string err = nezha::make_attn_args(*q, *k, *v, *table, key_padding, additive_mask, head_mask, R, q_offset,
                                            causal, scale, dropout_p, seed, DeviceKind::CPU, a, dtype);
    if (err.empty()) err = nezha::impl_of(impl_code, impl);
    if (err.empty()) err = add_rotation_tables(a, q, rot_keys, rot_f32);
    if (err.empty()) err = nezha::check_output("out", *out, *q, DeviceKind::CPU, q->dtype, {a.B, a.H, a.Lq, a.D});
    if (err.empty())
        err = nezha::check_output("lse", *lse, *q, DeviceKind::CPU, static_cast<int>(nezha::ScalarKind::F32),
                                  {2, a.B, a.H, a.Lq});
    if (!err.empty()) return fail(err);
    const char* launch = nezha::relattn_fwd(a, dtype, impl, const_cast<void*>(out->data),
                                            static_cast<float*>(const_cast<void*>(lse->data)), device, nullptr);
    return launch ? fail(std::string("nezha_kernels cuda forward failed: ") + launch) : nullptr;
}

const char* nezha_emu_bwd(const TensorView* dout, const TensorView* q, const TensorView* k, const TensorView* v,
                          const TensorView* table, const TensorView* key_padding, const TensorView* additive_mask,
                          const TensorView* head_mask, const TensorView* lse, const TensorView* delta, int64_t R,
                          int64_t q_offset, bool causal, double scale, double dropout_p, uint64_t seed,
                          int64_t impl_code, bool deterministic, const TensorView* dq, const TensorView* dk,
                          const TensorView* dv, int device) {
    nezha::AttnArgs a;
    nezha::DType dtype;
    nezha::Impl impl;
    std::string err = nezha::make_attn_args(*q, *k, *v, *table, key_padding, additive_mask, head_mask, R, q_offset,
                                            causal, scale, dropout_p, seed, DeviceKind::CPU, a, dtype);
    if (err.empty()) err = nezha::impl_of(impl_code, impl);
    if (err.empty()) err = nezha::check_backward_inputs(a, *q, *dout, *lse, *delta, DeviceKind::CPU);
    if (err.empty()) err = nezha::check_output("dq", *dq, *q, DeviceKind::CPU, q->dtype, {a.B, a.H, a.Lq, a.D});
    if (err.empty()) err = nezha::check_output("dk", *dk, *q, DeviceKind::CPU, q->dtype, {a.B, a.H, a.Lk, a.D});
    if (err.empty()) err = nezha::check_output("dv", *dv, *q, DeviceKind::CPU, q->dtype, {a.B, a.H, a.Lk, a.D});
    if (!err.empty()) return fail(err);
    return run_backward(a, dtype, impl, deterministic, dout, lse, delta, dq, dk, dv, device);
}

// The binding's forward_varlen / backward_varlen on emulated device `device` (q [Tq, H, D], k / v [Tk, H, D],
// cu_seqlens int32 [B + 1]; outputs allocated by the caller): nullptr or the error message.
const char* nezha_emu_fwd_varlen(const TensorView* q, const TensorView* k, const TensorView* v,
                                 const TensorView* table, const TensorView* head_mask, const TensorView* cu_seqlens_q,
                                 const TensorView* cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
                                 int64_t R, bool causal, double scale, double dropout_p, uint64_t seed,
                                 int64_t impl_code, const TensorView* out, const TensorView* lse, int device,
                                 const TensorView* rot_keys, const TensorView* rot_f32) {
    nezha::AttnArgs a;
    nezha::DType dtype;
    nezha::Impl impl;
    std::string err = nezha::make_varlen_attn_args(*q, *k, *v, *table, head_mask, *cu_seqlens_q, *cu_seqlens_k,
                                                   max_seqlen_q, max_seqlen_k, R, causal, scale, dropout_p, seed,
                                                   DeviceKind::CPU, a, dtype);
    if (err.empty()) err = nezha::impl_of(impl_code, impl);
    if (err.empty()) err = add_rotation_tables(a, q, rot_keys, rot_f32);
    if (err.empty()) err = nezha::check_output("out", *out, *q, DeviceKind::CPU, q->dtype, {a.Tq, a.H, a.D});
    if (err.empty())
        err = nezha::check_output("lse", *lse, *q, DeviceKind::CPU, static_cast<int>(nezha::ScalarKind::F32),
                                  {2, a.H, a.Tq});
    if (!err.empty()) return fail(err);
    const char* launch = nezha::relattn_fwd(a, dtype, impl, const_cast<void*>(out->data),
                                            static_cast<float*>(const_cast<void*>(lse->data)), device, nullptr);
    return launch ? fail(std::string("nezha_kernels cuda forward failed: ") + launch) : nullptr;
}

const char* nezha_emu_bwd_varlen(const TensorView* dout, const TensorView* q, const TensorView* k,
                                 const TensorView* v, const TensorView* table, const TensorView* head_mask,
                                 const TensorView* lse, const TensorView* delta, const TensorView* cu_seqlens_q,
                                 const TensorView* cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
                                 int64_t R, bool causal, double scale, double dropout_p, uint64_t seed,
                                 int64_t impl_code, bool deterministic, const TensorView* dq, const TensorView* dk,
                                 const TensorView* dv, int device) {
    nezha::AttnArgs a;
    nezha::DType dtype;
    nezha::Impl impl;
    std::string err = nezha::make_varlen_attn_args(*q, *k, *v, *table, head_mask, *cu_seqlens_q, *cu_seqlens_k,
                                                   max_seqlen_q, max_seqlen_k, R, causal, scale, dropout_p, seed,
                                                   DeviceKind::CPU, a, dtype);
    if (err.empty()) err = nezha::impl_of(impl_code, impl);
    if (err.empty()) err = nezha::check_varlen_backward_inputs(a, *q, *dout, *lse, *delta, DeviceKind::CPU);
    const int64_t Tk = k->sizes[0];
    if (err.empty()) err = nezha::check_output("dq", *dq, *q, DeviceKind::CPU, q->dtype, {a.Tq, a.H, a.D});
    if (err.empty()) err = nezha::check_output("dk", *dk, *q, DeviceKind::CPU, q->dtype, {Tk, a.H, a.D});
    if (err.empty()) err = nezha::check_output("dv", *dv, *q, DeviceKind::CPU, q->dtype, {Tk, a.H, a.D});
    if (!err.empty()) return fail(err);
    return run_backward(a, dtype, impl, deterministic, dout, lse, delta, dq, dk, dv, device);
}

// The calling thread's current emulated device (cudaGetDevice / cudaSetDevice): -1 on an invalid ordinal.
int nezha_emu_get_device() {
    int device = -1;
    return cudaGetDevice(&device) == cudaSuccess ? device : -1;
}

int nezha_emu_set_device(int device) { return cudaSetDevice(device) == cudaSuccess ? 0 : -1; }

// out[i] = float(round(x[i])) through the emulated fp16 (dtype 0) or bf16 (dtype 1) conversion intrinsics.
void nezha_emu_round(int dtype, const float* x, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        out[i] = dtype == 0 ? __half2float(__float2half_rn(x[i])) : __bfloat162float(__float2bfloat16_rn(x[i]));
}

}  // extern "C"
