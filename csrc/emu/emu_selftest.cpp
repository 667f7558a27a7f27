// Toy kernels that check the emulator itself (tests/test_cuda_emulated.py):
//   mma_f16 / mma_bf16[_kmajor]: one m16n8k16 through the kernels' own fragment loaders (relattn_tc.cuh,
//     relattn_mma.h) and MmaOp<T>::run, against a plain matrix product in Python: the kernels' maps and the
//     emulator's independent transcription of the PTX layout must agree;
//   block_sum: barriers, __syncthreads_and and shuffles used correctly give the right answer;
//   early_exit, divergent_barrier, deadlock, partial_mask: the bugs the emulator must report, not hang on;
//   slow_thread: one thread 1.5 s late at a barrier trips a watchdog set below that (NEZHA_EMU_WATCHDOG_S);
//   smem_poison: unwritten dynamic shared memory reads as NaN;
//   smem_limit: a launch above 48 KiB without cudaFuncSetAttribute fails as on the device.
#ifndef NEZHA_CUDA_EMULATE
#error "emu_selftest.cpp is part of the CPU emulation: compile with -DNEZHA_CUDA_EMULATE"
#endif

#include <chrono>
#include <string>
#include <thread>

#include "../relattn_tc.cuh"

namespace nezha::selftest {

constexpr int LDS = 24;  // padded smem stride (16-bit elements) of the toy tiles

// a: [16][16] row-major, b: [16][8] (k, n) row-major; d: [16][8].
template <typename T>
__global__ void mma_kernel(const float* a, const float* b, float* d, int kmajor) {
    NZ_DYNAMIC_SMEM(__align__(16) unsigned char, smem_raw);
    T* As = reinterpret_cast<T*>(smem_raw);
    T* Bs = As + 16 * LDS;
    const int lane = threadIdx.x;
    for (int e = lane; e < 16 * 16; e += 32) As[(e / 16) * LDS + e % 16] = from_f<T>(a[e]);
    for (int e = lane; e < 16 * 8; e += 32) {
        const int k = e / 8, n = e % 8;
        Bs[kmajor ? k * LDS + n : n * LDS + k] = from_f<T>(b[e]);
    }
    __syncwarp();
    uint32_t af[4], bf[2];
    load_a(af, As, LDS, lane);
    if (kmajor)
        load_b_kmajor(bf, Bs, LDS, lane);
    else
        load_b_nmajor(bf, Bs, LDS, lane);
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    MmaOp<T>::run(c, af, bf);
    for (int e = 0; e < 4; ++e) {
        const FragRC x = mma_c_elem(lane, e);
        d[x.row * 8 + x.col] = c[e];
    }
}

// out[0] = sum of threadIdx.x over the block (shuffles + smem), out[1] = __syncthreads_and(all >= 0).
__global__ void block_sum_kernel(float* out) {
    NZ_DYNAMIC_SMEM(float, partial);
    float x = static_cast<float>(threadIdx.x);
    for (int o = 1; o < 32; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = x;
    const int all = __syncthreads_and(threadIdx.x < 1024);
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) s += partial[w];
        out[0] = s;
        out[1] = static_cast<float>(all);
    }
}

__global__ void early_exit_kernel(float* out) {
    if (threadIdx.x == 5) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

__global__ void divergent_barrier_kernel(float* out) {
    if (threadIdx.x < 64)
        __syncthreads();
    else
        __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Lane 0 of each warp waits at the block barrier for its warp-mates, which wait at __syncwarp for it.
__global__ void deadlock_kernel(float* out) {
    if (threadIdx.x % 32 == 0)
        __syncthreads();
    else
        __syncwarp();
    out[threadIdx.x] = 1.0f;
}

__global__ void slow_thread_kernel(float* out) {
    if (threadIdx.x == 7) std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

__global__ void partial_mask_kernel(float* out) {
    out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1.0f, 1);
}

__global__ void smem_poison_kernel(float* out) {
    NZ_DYNAMIC_SMEM(float, s);
    if (threadIdx.x == 0) s[1] = 2.0f;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}

const char* status() {
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace nezha::selftest

// Runs self-test `name` with inputs `a`, `b` and outputs `out` (sizes per test above); nullptr or the error.
extern "C" const char* nezha_emu_selftest(const char* name, const float* a, const float* b, float* out) {
    using namespace nezha::selftest;
    const std::string n = name;
    if (n == "mma_f16" || n == "mma_bf16" || n == "mma_f16_kmajor" || n == "mma_bf16_kmajor") {
        const int kmajor = n.find("kmajor") != std::string::npos;
        const size_t smem = 2 * (16 + 16) * LDS;
        if (n.rfind("mma_f16", 0) == 0) {
            auto kernel = mma_kernel<__half>;
            NZ_LAUNCH(kernel, 1, 32, smem, nullptr, a, b, out, kmajor);
        } else {
            auto kernel = mma_kernel<__nv_bfloat16>;
            NZ_LAUNCH(kernel, 1, 32, smem, nullptr, a, b, out, kmajor);
        }
        return status();
    }
    if (n == "block_sum") {
        NZ_LAUNCH(block_sum_kernel, 1, 128, 4 * sizeof(float), nullptr, out);
        return status();
    }
    if (n == "early_exit") {
        NZ_LAUNCH(early_exit_kernel, 1, 128, 0, nullptr, out);
        return status();
    }
    if (n == "divergent_barrier") {
        NZ_LAUNCH(divergent_barrier_kernel, 1, 128, 0, nullptr, out);
        return status();
    }
    if (n == "deadlock") {
        NZ_LAUNCH(deadlock_kernel, 1, 128, 0, nullptr, out);
        return status();
    }
    if (n == "slow_thread") {
        NZ_LAUNCH(slow_thread_kernel, 1, 32, 0, nullptr, out);
        return status();
    }
    if (n == "partial_mask") {
        NZ_LAUNCH(partial_mask_kernel, 1, 32, 0, nullptr, out);
        return status();
    }
    if (n == "smem_poison") {
        NZ_LAUNCH(smem_poison_kernel, 1, 32, 32 * sizeof(float), nullptr, out);
        return status();
    }
    if (n == "smem_limit") {
        NZ_LAUNCH(smem_poison_kernel, 1, 32, 64 * 1024, nullptr, out);
        return status();
    }
    return "unknown self-test";
}
