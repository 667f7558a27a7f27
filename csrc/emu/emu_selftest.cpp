// Toy kernels that check the emulator itself (tests/test_cuda_emulated.py):
//   mma_f16 / mma_bf16[_kmajor]: one m16n8k16 through the kernels' own fragment loaders (relattn_tc.cuh,
//     relattn_mma.h) and MmaOp<T>::run, against a plain matrix product in Python: the kernels' maps and the
//     emulator's independent transcription of the PTX layout must agree;
//   block_sum: barriers, __syncthreads_and and shuffles used correctly give the right answer;
//   early_exit, divergent_barrier, deadlock, partial_mask: the bugs the emulator must report, not hang on;
//   slow_thread: one thread 1.5 s late at a barrier trips a watchdog set below that (NEZHA_EMU_WATCHDOG_S);
//   smem_poison: unwritten dynamic shared memory reads as NaN;
//   smem_limit: a launch above 48 KiB without cudaFuncSetAttribute fails as on the device;
//   ldmatrix / ldmatrix_trans: one ldmatrix .x4 of four 8 x 8 fp16 matrices whose rows the lanes address in a
//     shuffled order, every lane's registers out, for Python to compare with the PTX ISA's fragment description;
//   ldmatrix_vs_loaders: the kernels' ldmatrix offsets (relattn_async.cuh) against their scalar fragment loaders
//     (relattn_tc.cuh) for A, n-major B and k-major B (.trans): mismatch counts out;
//   cp_async: a copy read before its wait (poison), after wait_group 1 (only the older group landed), after
//     wait_group 0, and a zero-filling copy.
//   atomic_add: every thread of 2 blocks of 128 adds 1.0f to one float ATOMIC_ROUNDS times and records the old values
//     atomicAdd returns: exactly 0 .. 2 * 128 * ATOMIC_ROUNDS - 1 once each when no update is lost or doubled.
#ifndef NEZHA_CUDA_EMULATE
#error "emu_selftest.cpp is part of the CPU emulation: compile with -DNEZHA_CUDA_EMULATE"
#endif

#include <chrono>
#include <string>
#include <thread>

#include "../relattn_async.cuh"
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

// a: 256 values (4 matrices x 8 rows x 8 columns, exact in fp16); lane l addresses storage row (5 l + 3) % 32,
// which holds row l % 8 of matrix l / 8. out[l * 8 + 2 m + h]: half h (0 low, 1 high) of lane l's register m.
__global__ void ldmatrix_kernel(const float* a, float* out, int trans) {
    NZ_DYNAMIC_SMEM(__align__(16) __half, tile);
    const int lane = threadIdx.x;
    const int row = (5 * lane + 3) % 32;
    for (int c = 0; c < 8; ++c) tile[row * 8 + c] = __float2half_rn(a[lane * 8 + c]);
    __syncwarp();
    uint32_t r[4];
    if (trans) ldsm_x4_trans(r, tile + row * 8);
    else ldsm_x4(r, tile + row * 8);
    for (int m = 0; m < 4; ++m)
        for (int h = 0; h < 2; ++h)
            out[lane * 8 + 2 * m + h] = __half2float(__half{static_cast<uint16_t>(h ? r[m] >> 16 : r[m] & 0xffffu)});
}

// A 32 x 24 fp16 tile (stride LDS) of distinct values; out[0..2]: lanes x registers where ldmatrix and the scalar
// loaders disagree, for the A fragment, two n-major B n-tiles and two k-major B n-tiles.
__global__ void ldmatrix_vs_loaders_kernel(float* out) {
    NZ_DYNAMIC_SMEM(__align__(16) __half, tile);
    const int lane = threadIdx.x;
    for (int e = lane; e < 32 * LDS; e += 32) tile[e] = __float2half_rn(static_cast<float>(e % 2039));
    __syncwarp();
    int bad[3] = {0, 0, 0};
    uint32_t r[4], s[4], b[2];
    ldsm_x4(r, tile + ldsm_a_offset(lane, LDS));
    load_a(s, tile, LDS, lane);
    for (int i = 0; i < 4; ++i) bad[0] += r[i] != s[i];
    ldsm_x4(r, tile + ldsm_b_nmajor_offset(lane, LDS));
    for (int nt = 0; nt < 2; ++nt) {
        load_b_nmajor(b, tile + nt * 8 * LDS, LDS, lane);
        bad[1] += (r[2 * nt] != b[0]) + (r[2 * nt + 1] != b[1]);
    }
    ldsm_x4_trans(r, tile + ldsm_b_kmajor_offset(lane, LDS));
    for (int nt = 0; nt < 2; ++nt) {
        load_b_kmajor(b, tile + nt * 8, LDS, lane);
        bad[2] += (r[2 * nt] != b[0]) + (r[2 * nt + 1] != b[1]);
    }
    for (int i = 0; i < 3; ++i) {
        float x = static_cast<float>(bad[i]);
        for (int o = 1; o < 32; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
        if (lane == 0) out[i] = x;
    }
}

// a: 8 floats (two 16-byte chunks). Thread 0 copies chunk 0 (group 0), chunk 1 (group 1) and a zero-filled chunk
// (group 1). out[0..3]: chunk 0 read by thread 1 before any wait; out[4..7]: chunk 0 and out[8..11]: chunk 1 after
// wait_group 1 (chunk 1 still poisoned); out[12..15]: chunk 1, out[16..19]: the zero fill after wait_group 0.
__global__ void cp_async_kernel(const float* a, float* out) {
    NZ_DYNAMIC_SMEM(__align__(16) float, s);
    if (threadIdx.x == 0) {
        cp_async16(s, a, true);
        cp_async_commit();
        cp_async16(s + 4, a + 4, true);
        cp_async16(s + 8, a, false);
        cp_async_commit();
    }
    __syncthreads();
    if (threadIdx.x == 1)
        for (int i = 0; i < 4; ++i) out[i] = s[i];
    __syncthreads();
    if (threadIdx.x == 0) cp_async_wait<1>();
    __syncthreads();
    if (threadIdx.x == 1)
        for (int i = 0; i < 8; ++i) out[4 + i] = s[i];
    __syncthreads();
    if (threadIdx.x == 0) cp_async_wait<0>();
    __syncthreads();
    if (threadIdx.x == 1)
        for (int i = 0; i < 8; ++i) out[12 + i] = s[4 + i];
}

constexpr int ATOMIC_ROUNDS = 64;

// out[0]: the sum; out[1 + (block * 128 + thread) * ATOMIC_ROUNDS + r]: the value atomicAdd returned in round r.
__global__ void atomic_add_kernel(float* out) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    for (int r = 0; r < ATOMIC_ROUNDS; ++r) out[1 + t * ATOMIC_ROUNDS + r] = atomicAdd(out, 1.0f);
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
    if (n == "ldmatrix" || n == "ldmatrix_trans") {
        NZ_LAUNCH(ldmatrix_kernel, 1, 32, 32 * 8 * 2, nullptr, a, out, static_cast<int>(n == "ldmatrix_trans"));
        return status();
    }
    if (n == "ldmatrix_vs_loaders") {
        NZ_LAUNCH(ldmatrix_vs_loaders_kernel, 1, 32, 32 * LDS * 2, nullptr, out);
        return status();
    }
    if (n == "cp_async") {
        NZ_LAUNCH(cp_async_kernel, 1, 32, 12 * sizeof(float), nullptr, a, out);
        return status();
    }
    if (n == "atomic_add") {
        out[0] = 0.0f;
        NZ_LAUNCH(atomic_add_kernel, 2, 128, 0, nullptr, out);
        return status();
    }
    return "unknown self-test";
}
