// pybind11 binding: describes torch tensors as plain views, lets relattn_args.h check them and fill AttnArgs,
// allocates the outputs, then calls the torch-free launchers of relattn.h.
//
// Python passes the CUDA stream as an integer (torch.cuda.current_stream(device).cuda_stream), so this file
// needs no torch CUDA headers and builds against the CPU torch wheel too (calls then fail the device check).
#include <torch/extension.h>

#include <optional>

#include "relattn.h"
#include "relattn_args.h"

namespace {

using torch::Tensor;

nezha::TensorView view_of(const Tensor& t) {
    nezha::TensorView v{};
    v.data = t.data_ptr();
    switch (t.scalar_type()) {
        case torch::kHalf: v.dtype = static_cast<int>(nezha::ScalarKind::F16); break;
        case torch::kBFloat16: v.dtype = static_cast<int>(nezha::ScalarKind::BF16); break;
        case torch::kFloat: v.dtype = static_cast<int>(nezha::ScalarKind::F32); break;
        case torch::kBool: v.dtype = static_cast<int>(nezha::ScalarKind::BOOL); break;
        case torch::kInt: v.dtype = static_cast<int>(nezha::ScalarKind::INT32); break;
        default: v.dtype = static_cast<int>(nezha::ScalarKind::OTHER);
    }
    v.device_type = static_cast<int>(t.is_cuda() ? nezha::DeviceKind::CUDA
                                                 : t.is_cpu() ? nezha::DeviceKind::CPU : nezha::DeviceKind::OTHER);
    v.device_index = t.device().index();
    v.ndim = static_cast<int>(t.dim());
    for (int d = 0; d < v.ndim && d < nezha::MAX_VIEW_RANK; ++d) {
        v.sizes[d] = t.size(d);
        v.strides[d] = t.stride(d);
    }
    return v;
}

// Views of the optional tensors: storage, and the pointer make_attn_args takes (nullptr when absent).
struct OptionalViews {
    nezha::TensorView kp{}, am{}, hm{};
    const nezha::TensorView *kp_ptr = nullptr, *am_ptr = nullptr, *hm_ptr = nullptr;

    OptionalViews(const std::optional<Tensor>& key_padding, const std::optional<Tensor>& additive_mask,
                  const std::optional<Tensor>& head_mask) {
        if (key_padding) kp = view_of(*key_padding), kp_ptr = &kp;
        if (additive_mask) am = view_of(*additive_mask), am_ptr = &am;
        if (head_mask) hm = view_of(*head_mask), hm_ptr = &hm;
    }
};

struct Checked {
    nezha::AttnArgs a;
    nezha::DType dtype;
    nezha::Impl impl;
};

Checked checked_args(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& table,
                     const std::optional<Tensor>& key_padding, const std::optional<Tensor>& additive_mask,
                     const std::optional<Tensor>& head_mask, int64_t R, int64_t q_offset, bool causal, double scale,
                     double dropout_p, uint64_t seed, int64_t impl) {
    Checked c{};
    const OptionalViews opt(key_padding, additive_mask, head_mask);
    std::string err = nezha::make_attn_args(view_of(q), view_of(k), view_of(v), view_of(table), opt.kp_ptr,
                                            opt.am_ptr, opt.hm_ptr, R, q_offset, causal, scale, dropout_p, seed,
                                            nezha::DeviceKind::CUDA, c.a, c.dtype);
    TORCH_CHECK(err.empty(), err);
    err = nezha::impl_of(impl, c.impl);
    TORCH_CHECK(err.empty(), err);
    return c;
}

// The forward's optional extended sinusoid tables (both or neither): the rotation path of the tensor-core forward.
void add_rotation_tables(Checked& c, const Tensor& q, const std::optional<Tensor>& rot_keys,
                         const std::optional<Tensor>& rot_f32) {
    TORCH_CHECK(rot_keys.has_value() == rot_f32.has_value(),
                "nezha_kernels cuda backend: rot_keys and rot_f32 go together (both or neither)");
    if (!rot_keys) return;
    const std::string err = nezha::set_rotation_tables(c.a, view_of(q), view_of(*rot_keys), view_of(*rot_f32),
                                                       nezha::DeviceKind::CUDA);
    TORCH_CHECK(err.empty(), err);
}

std::vector<Tensor> forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& table,
                            const std::optional<Tensor>& key_padding, const std::optional<Tensor>& additive_mask,
                            const std::optional<Tensor>& head_mask, int64_t R, int64_t q_offset, bool causal,
                            double scale, double dropout_p, uint64_t seed, int64_t stream, int64_t impl,
                            const std::optional<Tensor>& rot_keys, const std::optional<Tensor>& rot_f32) {
    Checked c = checked_args(q, k, v, table, key_padding, additive_mask, head_mask, R, q_offset, causal, scale,
                             dropout_p, seed, impl);
    add_rotation_tables(c, q, rot_keys, rot_f32);
    const nezha::AttnArgs& a = c.a;
    Tensor out = torch::empty({a.B, a.H, a.Lq, a.D}, q.options());
    Tensor lse = torch::empty({2, a.B, a.H, a.Lq}, q.options().dtype(torch::kFloat));  // row max, log row sum
    const char* err = nezha::relattn_fwd(a, c.dtype, c.impl, out.data_ptr(), lse.data_ptr<float>(),
                                         q.device().index(), reinterpret_cast<void*>(stream));
    TORCH_CHECK(err == nullptr, "nezha_kernels cuda forward failed: ", err ? err : "");
    return {out, lse};
}

// The backward's launch: the two-kernel backward (relattn_bwd; deterministic, and every SIMT call) or the fused
// tensor-core backward with its zeroed float32 dQ accumulator (dQ's summation order then depends on the schedule).
void run_backward(const Checked& c, bool deterministic, const Tensor& q, const Tensor& dout, const Tensor& lse,
                  const Tensor& delta, Tensor& dq, Tensor& dk, Tensor& dv, int64_t stream) {
    const char* err = nullptr;
    void* s = reinterpret_cast<void*>(stream);
    if (c.impl == nezha::Impl::TC && !deterministic && nezha::fused_bwd_head_dim(c.a.D)) {
        Tensor dq_acc = torch::zeros(dq.sizes(), q.options().dtype(torch::kFloat));
        err = nezha::relattn_bwd_tc_fused(c.a, c.dtype, dout.data_ptr(), lse.data_ptr<float>(),
                                          delta.data_ptr<float>(), dq_acc.data_ptr<float>(), dq.data_ptr(),
                                          dk.data_ptr(), dv.data_ptr(), q.device().index(), s);
    } else {
        err = nezha::relattn_bwd(c.a, c.dtype, c.impl, dout.data_ptr(), lse.data_ptr<float>(),
                                 delta.data_ptr<float>(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                                 q.device().index(), s);
    }
    TORCH_CHECK(err == nullptr, "nezha_kernels cuda backward failed: ", err ? err : "");
}

std::vector<Tensor> backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& table, const std::optional<Tensor>& key_padding,
                             const std::optional<Tensor>& additive_mask, const std::optional<Tensor>& head_mask,
                             const Tensor& lse, const Tensor& delta, int64_t R, int64_t q_offset, bool causal,
                             double scale, double dropout_p, uint64_t seed, int64_t stream, int64_t impl,
                             bool deterministic) {
    const Checked c = checked_args(q, k, v, table, key_padding, additive_mask, head_mask, R, q_offset, causal, scale,
                                   dropout_p, seed, impl);
    const nezha::AttnArgs& a = c.a;
    const std::string bad = nezha::check_backward_inputs(a, view_of(q), view_of(dout), view_of(lse), view_of(delta),
                                                         nezha::DeviceKind::CUDA);
    TORCH_CHECK(bad.empty(), bad);
    Tensor dq = torch::empty({a.B, a.H, a.Lq, a.D}, q.options());
    Tensor dk = torch::empty({a.B, a.H, a.Lk, a.D}, q.options());
    Tensor dv = torch::empty({a.B, a.H, a.Lk, a.D}, q.options());
    run_backward(c, deterministic, q, dout, lse, delta, dq, dk, dv, stream);
    return {dq, dk, dv};
}

// Padding-free calls: q [Tq, H, D], k / v [Tk, H, D], cu_seqlens int32 [B + 1] (relattn_args.h make_varlen_attn_args).
Checked checked_varlen_args(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& table,
                            const std::optional<Tensor>& head_mask, const Tensor& cu_seqlens_q,
                            const Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t R,
                            bool causal, double scale, double dropout_p, uint64_t seed, int64_t impl) {
    Checked c{};
    const OptionalViews opt(std::nullopt, std::nullopt, head_mask);
    std::string err = nezha::make_varlen_attn_args(view_of(q), view_of(k), view_of(v), view_of(table), opt.hm_ptr,
                                                   view_of(cu_seqlens_q), view_of(cu_seqlens_k), max_seqlen_q,
                                                   max_seqlen_k, R, causal, scale, dropout_p, seed,
                                                   nezha::DeviceKind::CUDA, c.a, c.dtype);
    TORCH_CHECK(err.empty(), err);
    err = nezha::impl_of(impl, c.impl);
    TORCH_CHECK(err.empty(), err);
    return c;
}

std::vector<Tensor> forward_varlen(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& table,
                                   const std::optional<Tensor>& head_mask, const Tensor& cu_seqlens_q,
                                   const Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t R,
                                   bool causal, double scale, double dropout_p, uint64_t seed, int64_t stream,
                                   int64_t impl, const std::optional<Tensor>& rot_keys,
                                   const std::optional<Tensor>& rot_f32) {
    Checked c = checked_varlen_args(q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                    R, causal, scale, dropout_p, seed, impl);
    add_rotation_tables(c, q, rot_keys, rot_f32);
    const nezha::AttnArgs& a = c.a;
    Tensor out = torch::empty({a.Tq, a.H, a.D}, q.options());
    Tensor lse = torch::empty({2, a.H, a.Tq}, q.options().dtype(torch::kFloat));  // row max, log row sum
    const char* err = nezha::relattn_fwd(a, c.dtype, c.impl, out.data_ptr(), lse.data_ptr<float>(),
                                         q.device().index(), reinterpret_cast<void*>(stream));
    TORCH_CHECK(err == nullptr, "nezha_kernels cuda forward failed: ", err ? err : "");
    return {out, lse};
}

std::vector<Tensor> backward_varlen(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& table, const std::optional<Tensor>& head_mask, const Tensor& lse,
                                    const Tensor& delta, const Tensor& cu_seqlens_q, const Tensor& cu_seqlens_k,
                                    int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t R, bool causal, double scale,
                                    double dropout_p, uint64_t seed, int64_t stream, int64_t impl,
                                    bool deterministic) {
    const Checked c = checked_varlen_args(q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                          max_seqlen_k, R, causal, scale, dropout_p, seed, impl);
    const nezha::AttnArgs& a = c.a;
    const std::string bad = nezha::check_varlen_backward_inputs(a, view_of(q), view_of(dout), view_of(lse),
                                                                view_of(delta), nezha::DeviceKind::CUDA);
    TORCH_CHECK(bad.empty(), bad);
    // Every row is written: a sequence without keys gets dq = 0, one without queries dk = dv = 0.
    Tensor dq = torch::empty(q.sizes(), q.options());
    Tensor dk = torch::empty(k.sizes(), q.options());
    Tensor dv = torch::empty(k.sizes(), q.options());
    run_backward(c, deterministic, q, dout, lse, delta, dq, dk, dv, stream);
    return {dq, dk, dv};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "nezha_kernels fused relative attention (CUDA)";
    namespace py = pybind11;
    // `impl`: 1 = tensor-core kernels (fp16 / bf16 only), 0 = SIMT kernels; the caller picks (cuda_backend.impl_name).
    m.def("forward", &forward, "(out [B,H,Lq,D], lse [2,B,H,Lq] f32: row max, log row sum) = forward(q, k, v, "
          "table, key_padding, additive_mask, head_mask, R, q_offset, causal, scale, dropout_p, seed, stream, impl, "
          "rot_keys=None, rot_f32=None)",
          py::arg("q"), py::arg("k"), py::arg("v"), py::arg("table"), py::arg("key_padding"),
          py::arg("additive_mask"), py::arg("head_mask"), py::arg("R"), py::arg("q_offset"), py::arg("causal"),
          py::arg("scale"), py::arg("dropout_p"), py::arg("seed"), py::arg("stream"), py::arg("impl"),
          py::arg("rot_keys") = py::none(), py::arg("rot_f32") = py::none());
    // `deterministic`: false runs the fused tensor-core backward (dQ by atomics) for impl 1; true (the default), the
    // two-kernel backward. The caller passes torch.are_deterministic_algorithms_enabled() (cuda_ext/launch.py).
    m.def("backward", &backward, "(dq, dk, dv) = backward(dout, q, k, v, table, key_padding, additive_mask, "
          "head_mask, lse, delta, R, q_offset, causal, scale, dropout_p, seed, stream, impl, deterministic=True)",
          py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("table"), py::arg("key_padding"),
          py::arg("additive_mask"), py::arg("head_mask"), py::arg("lse"), py::arg("delta"), py::arg("R"),
          py::arg("q_offset"), py::arg("causal"), py::arg("scale"), py::arg("dropout_p"), py::arg("seed"),
          py::arg("stream"), py::arg("impl"), py::arg("deterministic") = true);
    m.def("forward_varlen", &forward_varlen, "(out [Tq,H,D], lse [2,H,Tq] f32) = forward_varlen(q, k, v, table, "
          "head_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, R, causal, scale, dropout_p, seed, "
          "stream, impl, rot_keys=None, rot_f32=None)",
          py::arg("q"), py::arg("k"), py::arg("v"), py::arg("table"), py::arg("head_mask"), py::arg("cu_seqlens_q"),
          py::arg("cu_seqlens_k"), py::arg("max_seqlen_q"), py::arg("max_seqlen_k"), py::arg("R"), py::arg("causal"),
          py::arg("scale"), py::arg("dropout_p"), py::arg("seed"), py::arg("stream"), py::arg("impl"),
          py::arg("rot_keys") = py::none(), py::arg("rot_f32") = py::none());
    m.def("backward_varlen", &backward_varlen, "(dq [Tq,H,D], dk, dv [Tk,H,D]) = backward_varlen(dout, q, k, v, "
          "table, head_mask, lse, delta, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, R, causal, scale, "
          "dropout_p, seed, stream, impl, deterministic=True)",
          py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("table"), py::arg("head_mask"),
          py::arg("lse"), py::arg("delta"), py::arg("cu_seqlens_q"), py::arg("cu_seqlens_k"), py::arg("max_seqlen_q"),
          py::arg("max_seqlen_k"), py::arg("R"), py::arg("causal"), py::arg("scale"), py::arg("dropout_p"),
          py::arg("seed"), py::arg("stream"), py::arg("impl"), py::arg("deterministic") = true);
}
