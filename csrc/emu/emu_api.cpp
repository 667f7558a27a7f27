// C API of the emulated CUDA kernels (host pointers), loaded by nezha_kernels/cuda_ext/emulator.py.
//
// The four kernel sources are compiled here unchanged, as C++, against the emulator (cuda_emu.h), and
// run through the same launchers the extension calls (relattn_fwd / relattn_bwd of relattn.h): the
// launchers' argument checks, shared-memory sizing and dispatch are the code under test too.
#ifndef NEZHA_CUDA_EMULATE
#error "emu_api.cpp builds the CPU emulation: compile with -DNEZHA_CUDA_EMULATE"
#endif

#include <cstddef>
#include <cstdint>

#include "../relattn_bwd.cu"
#include "../relattn_bwd_tc.cu"
#include "../relattn_fwd.cu"
#include "../relattn_fwd_tc.cu"

namespace {

nezha::DType dtype_of(int code) { return static_cast<nezha::DType>(code); }
nezha::Impl impl_of(int code) { return static_cast<nezha::Impl>(code); }

}  // namespace

extern "C" {

// sizeof(AttnArgs) then the offset of every field in declaration order: Python checks its ctypes mirror.
int nezha_emu_args_layout(int64_t* out, int capacity) {
    using nezha::AttnArgs;
    const int64_t layout[] = {
        sizeof(AttnArgs),
        offsetof(AttnArgs, B), offsetof(AttnArgs, H), offsetof(AttnArgs, Lq), offsetof(AttnArgs, Lk),
        offsetof(AttnArgs, D), offsetof(AttnArgs, R), offsetof(AttnArgs, q_offset), offsetof(AttnArgs, causal),
        offsetof(AttnArgs, scale),
        offsetof(AttnArgs, q), offsetof(AttnArgs, q_sb), offsetof(AttnArgs, q_sh), offsetof(AttnArgs, q_sl),
        offsetof(AttnArgs, k), offsetof(AttnArgs, k_sb), offsetof(AttnArgs, k_sh), offsetof(AttnArgs, k_sl),
        offsetof(AttnArgs, v), offsetof(AttnArgs, v_sb), offsetof(AttnArgs, v_sh), offsetof(AttnArgs, v_sl),
        offsetof(AttnArgs, table), offsetof(AttnArgs, key_padding), offsetof(AttnArgs, kp_sb),
        offsetof(AttnArgs, kp_sk), offsetof(AttnArgs, additive_mask), offsetof(AttnArgs, am_sb),
        offsetof(AttnArgs, am_sh), offsetof(AttnArgs, am_sq), offsetof(AttnArgs, am_sk),
        offsetof(AttnArgs, dropout_p), offsetof(AttnArgs, dropout_seed), offsetof(AttnArgs, head_mask),
        offsetof(AttnArgs, cu_seqlens_q), offsetof(AttnArgs, cu_seqlens_k), offsetof(AttnArgs, Tq),
    };
    const int n = static_cast<int>(sizeof(layout) / sizeof(layout[0]));
    for (int i = 0; i < n && i < capacity; ++i) out[i] = layout[i];
    return n;
}

// relattn_fwd on emulated device `device`: nullptr or the launcher's error message.
const char* nezha_emu_fwd(const nezha::AttnArgs* a, int dtype, int impl, void* out, float* lse, int device) {
    return nezha::relattn_fwd(*a, dtype_of(dtype), impl_of(impl), out, lse, device, nullptr);
}

const char* nezha_emu_bwd(const nezha::AttnArgs* a, int dtype, int impl, const void* dout, const float* lse,
                          const float* delta, void* dq, void* dk, void* dv, int device) {
    return nezha::relattn_bwd(*a, dtype_of(dtype), impl_of(impl), dout, lse, delta, dq, dk, dv, device, nullptr);
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
