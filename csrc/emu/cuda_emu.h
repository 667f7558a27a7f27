// CUDA execution emulator: the part of CUDA that the kernels of csrc/ use, in plain C++.
//
// With -DNEZHA_CUDA_EMULATE, relattn_tile.cuh includes this header instead of the CUDA headers, and g++
// compiles the unchanged kernel sources for the CPU (csrc/emu/emu_api.cpp, built by
// nezha_kernels/cuda_ext/emulator.py). A launch runs the grid's blocks one after another; each block runs
// one OS thread per CUDA thread, so __syncthreads, warp shuffles and mma.sync are real rendezvous of
// real threads (emu_runtime.cpp): divergent barriers, threads exiting while others wait and deadlocks
// fail the launch with a message instead of hanging, and ThreadSanitizer sees shared-memory races.
// Dynamic shared memory is a per-block heap buffer of exactly the launch's size (AddressSanitizer sees
// overflows), filled with 0xFF bytes (NaN as float, half and bfloat16) so reads of unwritten smem show.
//
// atomicAdd(float*) is a std::atomic_ref fetch_add (blocks run one after another, so only a block's own threads
// race on an address; their order, like the device's, is the scheduler's).
// Numerics: fp16 / bf16 conversions round to nearest even like the device intrinsics; mma.sync
// m16n8k16 sums in fp32 (emu_runtime.cpp); expf / logf / fmaf are the host's libm (the device's differ
// by an ulp or two). Not emulated: warp-synchronous behaviour without __syncwarp (lanes here run
// independently, like Volta+'s independent thread scheduling), memory-ordering subtleties, bank
// conflicts, timing.
#pragma once

#ifndef NEZHA_CUDA_EMULATE
#error "cuda_emu.h is the emulation shim: compile with -DNEZHA_CUDA_EMULATE"
#endif

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- qualifiers ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Only used on the dynamic shared-memory declarations, whose emulated buffer is 16-byte aligned anyway.
#define __align__(n)

// ---- vector types and thread coordinates ----
struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

// Set by the runtime for each emulated thread.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// ---- 16-bit floating point (bit-exact storage, round-to-nearest-even conversions) ----
struct __half {
    uint16_t bits;
};
struct __half2 {  // .x is the low 16 bits of the 32-bit register
    __half x, y;
};
struct __nv_bfloat16 {
    uint16_t bits;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
static_assert(sizeof(__half) == 2 && sizeof(__half2) == 4 && sizeof(__nv_bfloat162) == 4, "16-bit types");

namespace nezha::emu {

inline uint32_t float_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

inline float bits_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// IEEE binary16 from binary32, round to nearest even; overflow to +-inf, NaN to the canonical 0x7fff.
inline uint16_t half_bits_rn(float f) {
    const uint32_t x = float_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;
    if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
    if (ax >= 0x38800000u) {                                              // normal half (>= 2^-14)
        const uint32_t exp = (ax >> 23) - 127 + 15, mant = ax & 0x7fffffu;
        uint32_t h = (exp << 10) | (mant >> 13);
        const uint32_t rem = mant & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
        return static_cast<uint16_t>(sign | h);
    }
    if (ax <= 0x33000000u) return static_cast<uint16_t>(sign);  // <= 2^-25: ties to even zero
    // Subnormal half: units of 2^-24. value = m * 2^(e - 150), so value / 2^-24 = m >> (126 - e).
    const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14 .. 24
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;  // may carry into the smallest normal
    return static_cast<uint16_t>(sign | h);
}

inline float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0) {
        const float v = static_cast<float>(mant) * 0x1p-24f;  // exact
        return sign ? -v : v;
    }
    if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
    return bits_float(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

inline uint16_t bf16_bits_rn(float f) {
    const uint32_t x = float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

}  // namespace nezha::emu

inline __half __float2half_rn(float f) { return __half{nezha::emu::half_bits_rn(f)}; }
inline float __half2float(__half h) { return nezha::emu::half_to_float(h.bits); }
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__float2half_rn(lo), __float2half_rn(hi)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{nezha::emu::bf16_bits_rn(f)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return nezha::emu::bf16_to_float(h.bits); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}

// ---- runtime API (one emulated device, H100-class limits) ----
enum cudaError_t : int {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;
enum cudaDeviceAttr : int { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace nezha::emu {

// The opt-in shared memory per block of an H100 (227 KiB): the launchers' "too much shared memory" check
// and the per-kernel attribute below are checked against it, as on the device.
constexpr int MAX_SMEM_OPTIN = 227 * 1024;
constexpr int DEFAULT_MAX_DYNAMIC_SMEM = 48 * 1024;
// Two identical devices, so that tests can see a launcher restore the caller's current device.
constexpr int DEVICE_COUNT = 2;

cudaError_t set_device(int device);
cudaError_t get_device(int* device);
cudaError_t device_attribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value);
cudaError_t get_last_error();
const char* error_string(cudaError_t e);

// ---- device-side primitives (emu_runtime.cpp); file/line name the call site in error messages ----
void syncthreads(const char* file, int line);
int syncthreads_and(int predicate, const char* file, int line);
void syncwarp(const char* file, int line, unsigned mask = 0xffffffffu);
float shfl_xor(const char* file, int line, unsigned mask, float value, int lane_mask, int width = 32);
enum class MmaType { F16, BF16 };
// One warp-wide mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 with D = C in place.
void mma_m16n8k16(MmaType type, float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file,
                  int line);
void* dynamic_smem();
// cp.async.cg.shared.global [dst], [src], 16, src_bytes (src_bytes 0 or 16: 0 zero-fills): the copy is queued in the
// issuing thread and the destination poisoned (0xFF: NaN in every float type) until a cp_async_wait delivers it,
// so a read before the wait (or before the barrier that publishes it) shows as NaN. dst must be 16-byte aligned.
void cp_async16(void* dst, const void* src, int src_bytes, const char* file, int line);
// cp.async.ca.shared.global [dst], [src], size, src_bytes with size 4, 8 or 16 (the same model).
void cp_async(void* dst, const void* src, int size, int src_bytes, const char* file, int line);
// cp.async.commit_group: the copies issued since the last commit form one group.
void cp_async_commit();
// cp.async.wait_group n: delivers every committed group but the n most recent.
void cp_async_wait(int n);
// ldmatrix.sync.aligned.m8n8.x{num}[.trans].shared.b16: warp-wide; this lane's row address (lanes 8m .. 8m + 7 give
// the rows of matrix m), out[m] the lane's 32-bit register of matrix m. Row addresses must be 16-byte aligned.
void ldmatrix(uint32_t* out, int num, bool trans, const void* row, const char* file, int line);

// ---- launches ----
using KernelBody = void (*)(const void* closure);

// Runs `body(closure)` for every thread of every block; returns the error (also kept for cudaGetLastError).
cudaError_t run_grid(const char* kernel_name, const void* kernel, dim3 grid, dim3 block, size_t smem,
                     KernelBody body, const void* closure);
// Demangled name of `kernel` (a function address) or `fallback`.
const char* kernel_name(const void* kernel, const char* fallback);

template <typename... P>
struct Launch {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> params;  // converted once, like a launch's parameter buffer

    static void run(const void* self) {
        const Launch& l = *static_cast<const Launch*>(self);
        std::apply(l.kernel, l.params);
    }
};

template <typename... P, typename... A>
void launch(const char* kernel_expr, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
            A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
    const Launch<P...> l{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    const void* address = reinterpret_cast<const void*>(kernel);
    run_grid(kernel_name(address, kernel_expr), address, grid, block, smem, &Launch<P...>::run, &l);
}

}  // namespace nezha::emu

inline cudaError_t cudaSetDevice(int device) { return nezha::emu::set_device(device); }
inline cudaError_t cudaGetDevice(int* device) { return nezha::emu::get_device(device); }
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
    return nezha::emu::device_attribute(value, attr, device);
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
    return nezha::emu::func_set_attribute(reinterpret_cast<const void*>(func), attr, value);
}
inline cudaError_t cudaGetLastError() { return nezha::emu::get_last_error(); }
inline const char* cudaGetErrorString(cudaError_t e) { return nezha::emu::error_string(e); }

// atomicAdd on a float in global (or shared) memory: a relaxed atomic read-modify-write, so that the emulated
// threads of a block (one OS thread each) that add to one address never lose an update; returns the old value.
inline float atomicAdd(float* address, float value) {
    return std::atomic_ref<float>(*address).fetch_add(value, std::memory_order_relaxed);
}

#define __syncthreads() ::nezha::emu::syncthreads(__FILE__, __LINE__)
#define __syncthreads_and(predicate) ::nezha::emu::syncthreads_and((predicate), __FILE__, __LINE__)
#define __syncwarp(...) ::nezha::emu::syncwarp(__FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_xor_sync(mask, value, ...) ::nezha::emu::shfl_xor(__FILE__, __LINE__, (mask), (value), __VA_ARGS__)
