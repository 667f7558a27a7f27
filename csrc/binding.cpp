// pybind11 binding: checks torch tensors, then calls the torch-free launchers of relattn.h.
//
// Python passes the CUDA stream as an integer (torch.cuda.current_stream().cuda_stream), so this file
// needs no torch CUDA headers and builds against the CPU torch wheel too (calls then fail the checks).
#include <torch/extension.h>

#include <optional>

#include "relattn.h"

namespace {

using torch::Tensor;

nezha::DType dtype_of(const Tensor& t) {
    switch (t.scalar_type()) {
        case torch::kHalf: return nezha::DType::F16;
        case torch::kBFloat16: return nezha::DType::BF16;
        case torch::kFloat: return nezha::DType::F32;
        default: TORCH_CHECK(false, "nezha_kernels cuda backend: dtype must be float16, bfloat16 or float32, got ",
                             t.scalar_type());
    }
    return nezha::DType::F32;
}

void check_qkv(const char* name, const Tensor& t, const Tensor& q) {
    TORCH_CHECK(t.is_cuda(), "nezha_kernels cuda backend: ", name, " must be a CUDA tensor, got device ", t.device());
    TORCH_CHECK(t.dim() == 4, "nezha_kernels cuda backend: ", name, " must be 4-D [B, H, L, D], got ", t.dim(), "-D");
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), "nezha_kernels cuda backend: ", name, " dtype ", t.scalar_type(),
                " differs from q's ", q.scalar_type());
    TORCH_CHECK(t.device() == q.device(), "nezha_kernels cuda backend: ", name, " is on ", t.device(),
                " but q is on ", q.device());
    TORCH_CHECK(t.stride(3) == 1, "nezha_kernels cuda backend: ", name, " must have unit stride on the head dim");
}

void check_aux(const char* name, const Tensor& t, const Tensor& q, torch::ScalarType dtype) {
    TORCH_CHECK(t.is_cuda() && t.device() == q.device(), "nezha_kernels cuda backend: ", name,
                " must be a CUDA tensor on q's device, got ", t.device());
    TORCH_CHECK(t.scalar_type() == dtype, "nezha_kernels cuda backend: ", name, " must be ", dtype, ", got ",
                t.scalar_type());
}

nezha::Impl impl_of(int64_t impl) {
    TORCH_CHECK(impl == 0 || impl == 1, "nezha_kernels cuda backend: impl must be 0 (simt) or 1 (tc), got ", impl);
    return static_cast<nezha::Impl>(impl);
}

nezha::AttnArgs make_args(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& table,
                          const std::optional<Tensor>& key_padding, const std::optional<Tensor>& additive_mask,
                          const std::optional<Tensor>& head_mask, int64_t R, int64_t q_offset, bool causal,
                          double scale, double dropout_p, uint64_t seed) {
    check_qkv("q", q, q);
    check_qkv("k", k, q);
    check_qkv("v", v, q);
    dtype_of(q);
    const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3), Lk = k.size(2);
    TORCH_CHECK(k.size(0) == B && k.size(1) == H && k.size(3) == D && v.sizes() == k.sizes(),
                "nezha_kernels cuda backend: k and v must be [B, H, Lk, D] matching q");
    TORCH_CHECK(D == 32 || D == 64 || D == 128, "nezha_kernels cuda backend: head dim must be 32, 64 or 128, got ", D);
    TORCH_CHECK(R >= 1, "nezha_kernels cuda backend: max_relative_position must be >= 1");
    check_aux("rel_table", table, q, q.scalar_type());
    TORCH_CHECK(table.dim() == 2 && table.size(0) == 2 * R + 1 && table.size(1) == D && table.is_contiguous(),
                "nezha_kernels cuda backend: rel_table must be a contiguous [2R+1, D] tensor");
    TORCH_CHECK(Lq < (1LL << 31) && Lk < (1LL << 31) && q_offset + Lq < (1LL << 31) && B * H < 65536,
                "nezha_kernels cuda backend: sizes exceed the kernel's 32-bit index range / grid");

    nezha::AttnArgs a{};
    a.B = static_cast<int>(B); a.H = static_cast<int>(H); a.Lq = static_cast<int>(Lq); a.Lk = static_cast<int>(Lk);
    a.D = static_cast<int>(D); a.R = static_cast<int>(R); a.q_offset = static_cast<int>(q_offset);
    a.causal = causal;
    a.scale = static_cast<float>(scale);
    a.q = q.data_ptr(); a.q_sb = q.stride(0); a.q_sh = q.stride(1); a.q_sl = q.stride(2);
    a.k = k.data_ptr(); a.k_sb = k.stride(0); a.k_sh = k.stride(1); a.k_sl = k.stride(2);
    a.v = v.data_ptr(); a.v_sb = v.stride(0); a.v_sh = v.stride(1); a.v_sl = v.stride(2);
    a.table = table.data_ptr();
    if (key_padding) {
        const Tensor& kp = *key_padding;
        check_aux("key_padding", kp, q, torch::kBool);
        TORCH_CHECK(kp.dim() == 2 && kp.size(0) == B && kp.size(1) == Lk, "key_padding must be bool [B, Lk]");
        a.key_padding = reinterpret_cast<const uint8_t*>(kp.data_ptr<bool>());
        a.kp_sb = kp.stride(0); a.kp_sk = kp.stride(1);
    }
    if (additive_mask) {
        const Tensor& m = *additive_mask;
        check_aux("additive_mask", m, q, torch::kFloat);
        TORCH_CHECK(m.dim() == 4 && m.size(0) == B && m.size(1) == H && m.size(2) == Lq && m.size(3) == Lk,
                    "additive_mask must be a float32 view of shape [B, H, Lq, Lk] (stride 0 on broadcast dims)");
        a.additive_mask = m.data_ptr<float>();
        a.am_sb = m.stride(0); a.am_sh = m.stride(1); a.am_sq = m.stride(2); a.am_sk = m.stride(3);
    }
    if (head_mask) {
        const Tensor& hm = *head_mask;
        check_aux("head_mask", hm, q, torch::kFloat);
        TORCH_CHECK(hm.dim() == 2 && hm.size(0) == B && hm.size(1) == H && hm.is_contiguous(),
                    "head_mask must be a contiguous float32 [B, H] tensor");
        a.head_mask = hm.data_ptr<float>();
    }
    TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "dropout_p must be in [0, 1)");
    a.dropout_p = static_cast<float>(dropout_p);
    a.dropout_seed = seed;
    return a;
}

std::vector<Tensor> forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& table,
                            const std::optional<Tensor>& key_padding, const std::optional<Tensor>& additive_mask,
                            const std::optional<Tensor>& head_mask, int64_t R, int64_t q_offset, bool causal,
                            double scale, double dropout_p, uint64_t seed, int64_t stream, int64_t impl) {
    const nezha::AttnArgs a = make_args(q, k, v, table, key_padding, additive_mask, head_mask, R, q_offset, causal,
                                        scale, dropout_p, seed);
    Tensor out = torch::empty({a.B, a.H, a.Lq, a.D}, q.options());
    Tensor lse = torch::empty({2, a.B, a.H, a.Lq}, q.options().dtype(torch::kFloat));  // row max, log row sum
    const char* err = nezha::relattn_fwd(a, dtype_of(q), impl_of(impl), out.data_ptr(), lse.data_ptr<float>(),
                                         q.device().index(), reinterpret_cast<void*>(stream));
    TORCH_CHECK(err == nullptr, "nezha_kernels cuda forward failed: ", err ? err : "");
    return {out, lse};
}

std::vector<Tensor> backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& table, const std::optional<Tensor>& key_padding,
                             const std::optional<Tensor>& additive_mask, const std::optional<Tensor>& head_mask,
                             const Tensor& lse, const Tensor& delta, int64_t R, int64_t q_offset, bool causal,
                             double scale, double dropout_p, uint64_t seed, int64_t stream, int64_t impl) {
    const nezha::AttnArgs a = make_args(q, k, v, table, key_padding, additive_mask, head_mask, R, q_offset, causal,
                                        scale, dropout_p, seed);
    check_aux("dout", dout, q, q.scalar_type());
    TORCH_CHECK(dout.sizes() == q.sizes() && dout.is_contiguous(), "dout must be contiguous with q's shape");
    check_aux("lse", lse, q, torch::kFloat);
    TORCH_CHECK(lse.dim() == 4 && lse.size(0) == 2 && lse.size(1) == a.B && lse.size(2) == a.H &&
                    lse.size(3) == a.Lq && lse.is_contiguous(), "lse must be contiguous float32 [2, B, H, Lq]");
    check_aux("delta", delta, q, torch::kFloat);
    TORCH_CHECK(delta.dim() == 3 && delta.size(0) == a.B && delta.size(1) == a.H && delta.size(2) == a.Lq &&
                    delta.is_contiguous(), "delta must be contiguous float32 [B, H, Lq]");
    Tensor dq = torch::empty({a.B, a.H, a.Lq, a.D}, q.options());
    Tensor dk = torch::empty({a.B, a.H, a.Lk, a.D}, q.options());
    Tensor dv = torch::empty({a.B, a.H, a.Lk, a.D}, q.options());
    const char* err = nezha::relattn_bwd(a, dtype_of(q), impl_of(impl), dout.data_ptr(), lse.data_ptr<float>(),
                                         delta.data_ptr<float>(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                                         q.device().index(), reinterpret_cast<void*>(stream));
    TORCH_CHECK(err == nullptr, "nezha_kernels cuda backward failed: ", err ? err : "");
    return {dq, dk, dv};
}

// ---- padding-free (varlen) calls: q [Tq, H, D], k / v [Tk, H, D], cu_seqlens int32 [B + 1] ----
// The contents of cu_seqlens (0 .. T, non-decreasing) and max_seqlen >= every length are checked in Python
// (prepare_varlen_inputs): reading them here would synchronize with the device.

void check_packed(const char* name, const Tensor& t, const Tensor& q) {
    TORCH_CHECK(t.is_cuda(), "nezha_kernels cuda backend: ", name, " must be a CUDA tensor, got device ", t.device());
    TORCH_CHECK(t.dim() == 3, "nezha_kernels cuda backend: ", name, " must be 3-D [T, H, D], got ", t.dim(), "-D");
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), "nezha_kernels cuda backend: ", name, " dtype ", t.scalar_type(),
                " differs from q's ", q.scalar_type());
    TORCH_CHECK(t.device() == q.device(), "nezha_kernels cuda backend: ", name, " is on ", t.device(),
                " but q is on ", q.device());
    TORCH_CHECK(t.stride(2) == 1, "nezha_kernels cuda backend: ", name, " must have unit stride on the head dim");
}

nezha::AttnArgs make_varlen_args(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& table,
                                 const std::optional<Tensor>& head_mask, const Tensor& cu_seqlens_q,
                                 const Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t R,
                                 bool causal, double scale, double dropout_p, uint64_t seed) {
    check_packed("q", q, q);
    check_packed("k", k, q);
    check_packed("v", v, q);
    dtype_of(q);
    const int64_t Tq = q.size(0), H = q.size(1), D = q.size(2), Tk = k.size(0);
    TORCH_CHECK(k.size(1) == H && k.size(2) == D && v.sizes() == k.sizes(),
                "nezha_kernels cuda backend: k and v must be [Tk, H, D] matching q");
    TORCH_CHECK(D == 32 || D == 64 || D == 128, "nezha_kernels cuda backend: head dim must be 32, 64 or 128, got ", D);
    TORCH_CHECK(R >= 1, "nezha_kernels cuda backend: max_relative_position must be >= 1");
    check_aux("rel_table", table, q, q.scalar_type());
    TORCH_CHECK(table.dim() == 2 && table.size(0) == 2 * R + 1 && table.size(1) == D && table.is_contiguous(),
                "nezha_kernels cuda backend: rel_table must be a contiguous [2R+1, D] tensor");
    check_aux("cu_seqlens_q", cu_seqlens_q, q, torch::kInt);
    check_aux("cu_seqlens_k", cu_seqlens_k, q, torch::kInt);
    TORCH_CHECK(cu_seqlens_q.dim() == 1 && cu_seqlens_q.size(0) >= 1 && cu_seqlens_q.is_contiguous() &&
                    cu_seqlens_k.sizes() == cu_seqlens_q.sizes() && cu_seqlens_k.is_contiguous(),
                "nezha_kernels cuda backend: cu_seqlens_q / cu_seqlens_k must be contiguous int32 [B + 1]");
    const int64_t B = cu_seqlens_q.size(0) - 1;
    TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_k >= 0 && max_seqlen_q <= Tq && max_seqlen_k <= Tk,
                "nezha_kernels cuda backend: max_seqlen_q / max_seqlen_k must be in [0, T]");
    TORCH_CHECK(Tq < (1LL << 31) && Tk < (1LL << 31) && Tq * H < (1LL << 31) && B * H < 65536,
                "nezha_kernels cuda backend: sizes exceed the kernel's 32-bit index range / grid");

    nezha::AttnArgs a{};
    a.B = static_cast<int>(B); a.H = static_cast<int>(H); a.D = static_cast<int>(D); a.R = static_cast<int>(R);
    a.Lq = static_cast<int>(max_seqlen_q); a.Lk = static_cast<int>(max_seqlen_k); a.Tq = static_cast<int>(Tq);
    a.causal = causal;
    a.scale = static_cast<float>(scale);
    a.q = q.data_ptr(); a.q_sh = q.stride(1); a.q_sl = q.stride(0);
    a.k = k.data_ptr(); a.k_sh = k.stride(1); a.k_sl = k.stride(0);
    a.v = v.data_ptr(); a.v_sh = v.stride(1); a.v_sl = v.stride(0);
    a.table = table.data_ptr();
    a.cu_seqlens_q = cu_seqlens_q.data_ptr<int32_t>();
    a.cu_seqlens_k = cu_seqlens_k.data_ptr<int32_t>();
    if (head_mask) {
        const Tensor& hm = *head_mask;
        check_aux("head_mask", hm, q, torch::kFloat);
        TORCH_CHECK(hm.dim() == 2 && hm.size(0) == B && hm.size(1) == H && hm.is_contiguous(),
                    "head_mask must be a contiguous float32 [B, H] tensor");
        a.head_mask = hm.data_ptr<float>();
    }
    TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "dropout_p must be in [0, 1)");
    a.dropout_p = static_cast<float>(dropout_p);
    a.dropout_seed = seed;
    return a;
}

std::vector<Tensor> forward_varlen(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& table,
                                   const std::optional<Tensor>& head_mask, const Tensor& cu_seqlens_q,
                                   const Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t R,
                                   bool causal, double scale, double dropout_p, uint64_t seed, int64_t stream,
                                   int64_t impl) {
    const nezha::AttnArgs a = make_varlen_args(q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                               max_seqlen_k, R, causal, scale, dropout_p, seed);
    Tensor out = torch::empty({a.Tq, a.H, a.D}, q.options());
    Tensor lse = torch::empty({2, a.H, a.Tq}, q.options().dtype(torch::kFloat));  // row max, log row sum
    const char* err = nezha::relattn_fwd(a, dtype_of(q), impl_of(impl), out.data_ptr(), lse.data_ptr<float>(),
                                         q.device().index(), reinterpret_cast<void*>(stream));
    TORCH_CHECK(err == nullptr, "nezha_kernels cuda forward failed: ", err ? err : "");
    return {out, lse};
}

std::vector<Tensor> backward_varlen(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& table, const std::optional<Tensor>& head_mask, const Tensor& lse,
                                    const Tensor& delta, const Tensor& cu_seqlens_q, const Tensor& cu_seqlens_k,
                                    int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t R, bool causal, double scale,
                                    double dropout_p, uint64_t seed, int64_t stream, int64_t impl) {
    const nezha::AttnArgs a = make_varlen_args(q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                               max_seqlen_k, R, causal, scale, dropout_p, seed);
    check_aux("dout", dout, q, q.scalar_type());
    TORCH_CHECK(dout.sizes() == q.sizes() && dout.is_contiguous(), "dout must be contiguous with q's shape");
    check_aux("lse", lse, q, torch::kFloat);
    TORCH_CHECK(lse.dim() == 3 && lse.size(0) == 2 && lse.size(1) == a.H && lse.size(2) == a.Tq &&
                    lse.is_contiguous(), "lse must be contiguous float32 [2, H, Tq]");
    check_aux("delta", delta, q, torch::kFloat);
    TORCH_CHECK(delta.dim() == 2 && delta.size(0) == a.H && delta.size(1) == a.Tq && delta.is_contiguous(),
                "delta must be contiguous float32 [H, Tq]");
    // Every row is written: a sequence without keys gets dq = 0, one without queries dk = dv = 0.
    Tensor dq = torch::empty(q.sizes(), q.options());
    Tensor dk = torch::empty(k.sizes(), q.options());
    Tensor dv = torch::empty(k.sizes(), q.options());
    const char* err = nezha::relattn_bwd(a, dtype_of(q), impl_of(impl), dout.data_ptr(), lse.data_ptr<float>(),
                                         delta.data_ptr<float>(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                                         q.device().index(), reinterpret_cast<void*>(stream));
    TORCH_CHECK(err == nullptr, "nezha_kernels cuda backward failed: ", err ? err : "");
    return {dq, dk, dv};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "nezha_kernels fused relative attention (CUDA)";
    namespace py = pybind11;
    // `impl`: 1 = tensor-core kernels for fp16 / bf16 (float32 always runs SIMT), 0 = SIMT kernels.
    m.def("forward", &forward, "(out [B,H,Lq,D], lse [2,B,H,Lq] f32: row max, log row sum) = forward(q, k, v, "
          "table, key_padding, additive_mask, head_mask, R, q_offset, causal, scale, dropout_p, seed, stream, impl=1)",
          py::arg("q"), py::arg("k"), py::arg("v"), py::arg("table"), py::arg("key_padding"),
          py::arg("additive_mask"), py::arg("head_mask"), py::arg("R"), py::arg("q_offset"), py::arg("causal"),
          py::arg("scale"), py::arg("dropout_p"), py::arg("seed"), py::arg("stream"), py::arg("impl") = 1);
    m.def("backward", &backward, "(dq, dk, dv) = backward(dout, q, k, v, table, key_padding, additive_mask, "
          "head_mask, lse, delta, R, q_offset, causal, scale, dropout_p, seed, stream, impl=1)",
          py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("table"), py::arg("key_padding"),
          py::arg("additive_mask"), py::arg("head_mask"), py::arg("lse"), py::arg("delta"), py::arg("R"),
          py::arg("q_offset"), py::arg("causal"), py::arg("scale"), py::arg("dropout_p"), py::arg("seed"),
          py::arg("stream"), py::arg("impl") = 1);
    m.def("forward_varlen", &forward_varlen, "(out [Tq,H,D], lse [2,H,Tq] f32) = forward_varlen(q, k, v, table, "
          "head_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, R, causal, scale, dropout_p, seed, "
          "stream, impl=1)",
          py::arg("q"), py::arg("k"), py::arg("v"), py::arg("table"), py::arg("head_mask"), py::arg("cu_seqlens_q"),
          py::arg("cu_seqlens_k"), py::arg("max_seqlen_q"), py::arg("max_seqlen_k"), py::arg("R"), py::arg("causal"),
          py::arg("scale"), py::arg("dropout_p"), py::arg("seed"), py::arg("stream"), py::arg("impl") = 1);
    m.def("backward_varlen", &backward_varlen, "(dq [Tq,H,D], dk, dv [Tk,H,D]) = backward_varlen(dout, q, k, v, "
          "table, head_mask, lse, delta, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, R, causal, scale, "
          "dropout_p, seed, stream, impl=1)",
          py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("table"), py::arg("head_mask"),
          py::arg("lse"), py::arg("delta"), py::arg("cu_seqlens_q"), py::arg("cu_seqlens_k"), py::arg("max_seqlen_q"),
          py::arg("max_seqlen_k"), py::arg("R"), py::arg("causal"), py::arg("scale"), py::arg("dropout_p"),
          py::arg("seed"), py::arg("stream"), py::arg("impl") = 1);
}
