// Runtime of the CUDA emulator (see cuda_emu.h): launches, block barriers, warp collectives, mma.sync.
//
// Each block runs one std::thread per CUDA thread. Every rendezvous (the block's __syncthreads, a warp's
// __syncwarp / __shfl_xor_sync / mma.sync) is a Barrier: a mutex, a condition variable and the call site
// of the first arrival. Arrivals at a different call site, a thread exiting while others wait, a state in
// which every live thread waits (deadlock) and a barrier that does not complete within the watchdog time
// fail the block: every waiting thread is woken and unwinds, and the launch reports which kernel, block,
// threads and barriers were involved. Each warp and the block have their own mutex, so the only
// happens-before edges ThreadSanitizer sees between threads are the ones the real barriers provide
// (the running-thread counter used for deadlock detection is a relaxed atomic, which TSan does not
// count as synchronization).
#include "cuda_emu.h"

#include <cxxabi.h>
#include <dlfcn.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace nezha::emu {
namespace {

struct Abort {};  // unwinds an emulated thread once its block has failed

enum class State : int { Running, AtBlockBarrier, AtWarpBarrier, Exited };

struct Site {
    const char* what = nullptr;  // "__syncthreads", "__shfl_xor_sync", ...
    const char* file = nullptr;
    int line = 0;
};

std::string describe(const Site& s) {
    std::ostringstream o;
    const char* slash = s.file ? std::strrchr(s.file, '/') : nullptr;
    o << (s.what ? s.what : "?") << " (" << (slash ? slash + 1 : (s.file ? s.file : "?")) << ":" << s.line << ")";
    return o.str();
}

bool same_site(const Site& a, const Site& b) {
    return a.line == b.line && a.what == b.what && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

struct Barrier {
    std::mutex m;
    std::condition_variable cv;
    int size = 0;     // members that must arrive
    int arrived = 0;  // of the current generation
    int exited = 0;   // members that have left the kernel
    uint64_t generation = 0;
    Site site;  // call site of the current generation's first arrival
    int first_tid = -1;
};

struct Warp {
    Barrier bar;
    int first_tid = 0;
    // __shfl_xor_sync: each lane deposits (value, lane mask); the completing lane computes every result.
    float shfl_in[32];
    int shfl_xor_mask[32];
    unsigned shfl_member_mask[32];
    int shfl_width[32];
    float shfl_out[32];
    // mma.sync: each lane deposits its A / B registers; the completing lane scatters them into matrices.
    uint32_t mma_a[32][4];
    uint32_t mma_b[32][2];
    MmaType mma_type[32];
    float A[16][16];
    float B[16][8];
    // ldmatrix: each lane deposits its row address; the completing lane gathers every lane's registers.
    const unsigned char* ldsm_row[32];
    int ldsm_num[32];
    bool ldsm_trans[32];
    uint32_t ldsm_out[32][4];
};

// One cp.async of `size` (4, 8 or 16) bytes, held by its issuing thread until a wait delivers it.
struct AsyncCopy {
    unsigned char* dst;
    int size;
    unsigned char data[16];
};

struct ThreadInfo {
    std::atomic<int> state{static_cast<int>(State::Running)};
    std::atomic<const char*> what{nullptr};
    std::atomic<const char*> file{nullptr};
    std::atomic<int> line{0};
};

struct Block {
    const char* kernel = "?";
    dim3 index;
    int nthreads = 0;
    Barrier bar;
    int and_accum = 1;
    int and_result = 1;
    std::vector<std::unique_ptr<Warp>> warps;
    std::unique_ptr<ThreadInfo[]> info;
    std::atomic<int> running{0};  // threads neither waiting nor exited (relaxed: no synchronization)
    std::atomic<int> live{0};     // threads that have not exited
    std::atomic<bool> failed{false};
    std::mutex error_m;
    std::string error;
    unsigned char* smem = nullptr;
    std::chrono::milliseconds watchdog{120000};
};

struct ThreadCtx {
    Block* block;
    int tid;
    int warp;
    int lane;
    std::vector<AsyncCopy> open_copies;                 // issued since the last commit
    std::vector<std::vector<AsyncCopy>> copy_groups;  // committed, oldest first
};

thread_local ThreadCtx* ctx = nullptr;

ThreadCtx& current() {
    if (ctx == nullptr) {
        std::fprintf(stderr, "nezha CUDA emulator: a device primitive was called outside an emulated kernel\n");
        std::abort();
    }
    return *ctx;
}

std::string thread_name(const Block& b, int tid) {
    std::ostringstream o;
    o << "thread " << tid << " (warp " << tid / 32 << ", lane " << tid % 32 << ")";
    (void)b;
    return o.str();
}

// "threads 0-31 wait at __syncwarp (x.cu:12); threads 32-127 exited" from the per-thread states.
std::string describe_threads(const Block& b) {
    std::ostringstream o;
    auto key = [&](int t) {
        const ThreadInfo& i = b.info[t];
        const State s = static_cast<State>(i.state.load(std::memory_order_relaxed));
        if (s == State::Exited) return std::string("exited");
        if (s == State::Running) return std::string("running");
        Site site{i.what.load(std::memory_order_relaxed), i.file.load(std::memory_order_relaxed),
                  i.line.load(std::memory_order_relaxed)};
        return "waiting at " + describe(site);
    };
    int start = 0;
    std::string cur = key(0);
    bool first = true;
    for (int t = 1; t <= b.nthreads; ++t) {
        const std::string k = t < b.nthreads ? key(t) : std::string();
        if (t < b.nthreads && k == cur) continue;
        o << (first ? "" : "; ") << (t - start == 1 ? "thread " : "threads ") << start;
        if (t - start > 1) o << "-" << t - 1;
        o << " " << cur;
        first = false;
        start = t;
        cur = k;
    }
    return o.str();
}

void wake_all(Block& b) {
    {
        std::lock_guard<std::mutex> g(b.bar.m);
        b.bar.cv.notify_all();
    }
    for (auto& w : b.warps) {
        std::lock_guard<std::mutex> g(w->bar.m);
        w->bar.cv.notify_all();
    }
}

// Record the block's first error, wake every waiting thread and unwind this one. `held` (the lock of the
// barrier this thread is in, if any) is released first so that wake_all never nests two barrier locks.
[[noreturn]] void fail(Block& b, const std::string& message, std::unique_lock<std::mutex>* held = nullptr) {
    {
        std::lock_guard<std::mutex> g(b.error_m);
        if (b.error.empty()) b.error = message;
    }
    b.failed.store(true);
    if (held != nullptr && held->owns_lock()) held->unlock();
    wake_all(b);
    throw Abort{};
}

void set_state(ThreadCtx& c, State s, const Site& site = Site{}) {
    ThreadInfo& i = c.block->info[c.tid];
    i.what.store(site.what, std::memory_order_relaxed);
    i.file.store(site.file, std::memory_order_relaxed);
    i.line.store(site.line, std::memory_order_relaxed);
    i.state.store(static_cast<int>(s), std::memory_order_relaxed);
}

// Arrive at `bar`: `deposit` runs under the barrier's lock on arrival, `complete` under the lock in the
// last arriving thread, before anyone is released; every member returns after `complete`.
template <typename Deposit, typename Complete>
void rendezvous(Barrier& bar, const Site& site, State wait_state, const char* scope, Deposit&& deposit,
                Complete&& complete) {
    ThreadCtx& c = current();
    Block& b = *c.block;
    std::unique_lock<std::mutex> lock(bar.m);
    if (b.failed.load()) throw Abort{};
    if (bar.exited > 0) {
        fail(b, thread_name(b, c.tid) + " reached " + describe(site) + " but " + std::to_string(bar.exited) +
                    " thread(s) of its " + scope + " already exited: the barrier can never complete",
             &lock);
    }
    if (bar.arrived == 0) {
        bar.site = site;
        bar.first_tid = c.tid;
    } else if (!same_site(bar.site, site)) {
        fail(b, "divergent " + std::string(scope) + " barrier: " + thread_name(b, bar.first_tid) + " waits at " +
                    describe(bar.site) + " but " + thread_name(b, c.tid) + " arrived at " + describe(site),
             &lock);
    }
    deposit();
    if (++bar.arrived == bar.size) {
        complete();
        bar.arrived = 0;
        ++bar.generation;
        b.running.fetch_add(bar.size - 1, std::memory_order_relaxed);
        bar.cv.notify_all();
        return;
    }
    const uint64_t generation = bar.generation;
    set_state(c, wait_state, site);
    if (b.running.fetch_sub(1, std::memory_order_relaxed) == 1) {
        fail(b, "deadlock: every live thread waits and none can release the others: " + describe_threads(b), &lock);
    }
    const auto start = std::chrono::steady_clock::now();
    while (bar.generation == generation) {
        if (b.failed.load()) throw Abort{};
        bar.cv.wait_for(lock, std::chrono::milliseconds(500));
        if (bar.generation == generation && !b.failed.load() &&
            std::chrono::steady_clock::now() - start > b.watchdog) {
            fail(b, describe(site) + " did not complete within the watchdog time (" +
                        std::to_string(b.watchdog.count() / 1000) + " s; NEZHA_EMU_WATCHDOG_S): " +
                        std::to_string(bar.arrived) + " of " + std::to_string(bar.size) + " arrived; " +
                        describe_threads(b),
                 &lock);
        }
    }
    set_state(c, State::Running);
}

Warp& my_warp(ThreadCtx& c) { return *c.block->warps[c.warp]; }

void require_full_warp(ThreadCtx& c, unsigned mask, const Site& site) {
    Block& b = *c.block;
    if (mask != 0xffffffffu)
        fail(b, thread_name(b, c.tid) + ": " + describe(site) + " with member mask " + std::to_string(mask) +
                    " (the kernels only use full-warp collectives; the emulator checks mask == 0xffffffff)");
    if (my_warp(c).bar.size != 32)
        fail(b, describe(site) + " in a partial warp (block of " + std::to_string(b.nthreads) + " threads)");
}

// Element i of a register pair: element 2r is the low half of 32-bit register r.
uint16_t half_of(uint32_t reg, int i) { return static_cast<uint16_t>(i & 1 ? reg >> 16 : reg & 0xffffu); }

float to_float(MmaType t, uint16_t bits) { return t == MmaType::F16 ? half_to_float(bits) : bf16_to_float(bits); }

struct FuncAttributes {
    std::mutex m;
    std::map<const void*, int> max_dynamic_smem;
};

FuncAttributes& func_attributes() {
    static FuncAttributes f;
    return f;
}

thread_local cudaError_t last_error = cudaSuccess;
thread_local cudaError_t last_message_code = cudaSuccess;
thread_local std::string last_message;

cudaError_t raise(cudaError_t e, const std::string& message) {
    last_error = e;
    last_message_code = e;
    last_message = message;
    return e;
}

std::chrono::milliseconds watchdog_time() {
    const char* env = std::getenv("NEZHA_EMU_WATCHDOG_S");
    const double s = env != nullptr ? std::atof(env) : 0.0;
    return std::chrono::milliseconds(static_cast<long long>((s > 0 ? s : 120.0) * 1000.0));
}

void thread_main(Block& b, int tid, dim3 grid, dim3 block, KernelBody body, const void* closure) {
    ThreadCtx c{&b, tid, tid / 32, tid % 32, {}, {}};
    ctx = &c;
    threadIdx = uint3{tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
    blockIdx = uint3{b.index.x, b.index.y, b.index.z};
    blockDim = block;
    gridDim = grid;
    try {
        body(closure);
        set_state(c, State::Exited);
        Warp& w = my_warp(c);
        for (Barrier* bar : {&w.bar, &b.bar}) {
            std::unique_lock<std::mutex> lock(bar->m);
            ++bar->exited;
            if (bar->arrived > 0)
                fail(b, thread_name(b, tid) + " exited while " + std::to_string(bar->arrived) + " thread(s) wait at " +
                            describe(bar->site) + " (divergent barrier)",
                     &lock);
        }
        b.live.fetch_sub(1, std::memory_order_relaxed);
        if (b.running.fetch_sub(1, std::memory_order_relaxed) == 1 && b.live.load(std::memory_order_relaxed) > 0 &&
            !b.failed.load())
            fail(b, "deadlock after " + thread_name(b, tid) + " exited: " + describe_threads(b));
    } catch (const Abort&) {
    } catch (const std::exception& e) {
        try {
            fail(b, thread_name(b, tid) + " threw " + e.what());
        } catch (const Abort&) {
        }
    }
    ctx = nullptr;
}

// Runs one block; returns its error message ("" on success).
std::string run_block(const char* kernel, dim3 index, dim3 grid, dim3 block, size_t smem, KernelBody body,
                      const void* closure) {
    Block b;
    b.kernel = kernel;
    b.index = index;
    b.nthreads = static_cast<int>(block.x * block.y * block.z);
    b.bar.size = b.nthreads;
    b.info.reset(new ThreadInfo[b.nthreads]);
    for (int w = 0; w * 32 < b.nthreads; ++w) {
        b.warps.emplace_back(new Warp());
        b.warps.back()->bar.size = std::min(32, b.nthreads - 32 * w);
        b.warps.back()->first_tid = 32 * w;
    }
    b.running.store(b.nthreads);
    b.live.store(b.nthreads);
    b.watchdog = watchdog_time();
    // Exactly the launch's bytes (AddressSanitizer flags overflows), 16-byte aligned, NaN-filled.
    const size_t bytes = smem > 0 ? smem : 1;
    b.smem = static_cast<unsigned char*>(::operator new(bytes, std::align_val_t(16)));
    std::memset(b.smem, 0xff, bytes);
    std::vector<std::thread> threads;
    threads.reserve(b.nthreads);
    for (int t = 0; t < b.nthreads; ++t) threads.emplace_back(thread_main, std::ref(b), t, grid, block, body, closure);
    for (auto& t : threads) t.join();
    ::operator delete(b.smem, std::align_val_t(16));
    return b.failed.load() ? b.error : std::string();
}

}  // namespace

// ---- device-side primitives ----

void syncthreads(const char* file, int line) {
    ThreadCtx& c = current();
    rendezvous(c.block->bar, Site{"__syncthreads", file, line}, State::AtBlockBarrier, "block", [] {}, [] {});
}

int syncthreads_and(int predicate, const char* file, int line) {
    ThreadCtx& c = current();
    Block& b = *c.block;
    rendezvous(
        b.bar, Site{"__syncthreads_and", file, line}, State::AtBlockBarrier, "block",
        [&] { b.and_accum = b.and_accum && predicate != 0; },
        [&] {
            b.and_result = b.and_accum;
            b.and_accum = 1;
        });
    return b.and_result;  // stable until every thread has arrived at the next block barrier
}

void syncwarp(const char* file, int line, unsigned mask) {
    ThreadCtx& c = current();
    const Site site{"__syncwarp", file, line};
    require_full_warp(c, mask, site);
    rendezvous(my_warp(c).bar, site, State::AtWarpBarrier, "warp", [] {}, [] {});
}

float shfl_xor(const char* file, int line, unsigned mask, float value, int lane_mask, int width) {
    ThreadCtx& c = current();
    const Site site{"__shfl_xor_sync", file, line};
    require_full_warp(c, mask, site);
    Warp& w = my_warp(c);
    const int lane = c.lane;
    rendezvous(
        w.bar, site, State::AtWarpBarrier, "warp",
        [&] {
            w.shfl_in[lane] = value;
            w.shfl_xor_mask[lane] = lane_mask;
            w.shfl_width[lane] = width;
        },
        [&] {
            for (int l = 0; l < 32; ++l) {
                // Within segments of `width` lanes; a source outside the segment returns the lane's own value.
                const int src = l ^ w.shfl_xor_mask[l];
                const int seg = l / w.shfl_width[l];
                w.shfl_out[l] = src / w.shfl_width[l] == seg && src < 32 ? w.shfl_in[src] : w.shfl_in[l];
            }
        });
    return w.shfl_out[lane];  // stable until every lane has arrived at the warp's next collective
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, fragment layouts transcribed from the
// PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type"), independently of relattn_mma.h:
//   groupID = laneid >> 2, threadID_in_group = laneid % 4
//   A a0..a7: row = groupID for 0 <= i < 2 || 4 <= i < 6, else groupID + 8;
//             col = threadID_in_group * 2 + (i & 1), + 8 for i >= 4
//   B b0..b3: row = threadID_in_group * 2 + (i & 1), + 8 for i >= 2; col = groupID
//   C/D c0..c3: row = groupID for i < 2, else groupID + 8; col = threadID_in_group * 2 + (i & 1)
// Elements (2r, 2r + 1) of A and B are the (low, high) halves of 32-bit register r.
void mma_m16n8k16(MmaType type, float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file,
                  int line) {
    ThreadCtx& t = current();
    const Site site{"mma.sync.m16n8k16", file, line};
    require_full_warp(t, 0xffffffffu, site);
    Warp& w = my_warp(t);
    const int lane = t.lane;
    rendezvous(
        w.bar, site, State::AtWarpBarrier, "warp",
        [&] {
            for (int r = 0; r < 4; ++r) w.mma_a[lane][r] = a[r];
            for (int r = 0; r < 2; ++r) w.mma_b[lane][r] = b[r];
            w.mma_type[lane] = type;
        },
        [&] {
            // One call site per operand type (MmaOp<T>::run), so the site check keeps the types uniform.
            for (int l = 0; l < 32; ++l) {
                const int group = l >> 2, tig = l % 4;
                for (int i = 0; i < 8; ++i) {
                    const int row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
                    const int col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
                    w.A[row][col] = to_float(w.mma_type[l], half_of(w.mma_a[l][i / 2], i));
                }
                for (int i = 0; i < 4; ++i) {
                    const int row = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0);
                    w.B[row][group] = to_float(w.mma_type[l], half_of(w.mma_b[l][i / 2], i));
                }
            }
        });
    const int group = lane >> 2, tig = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const int row = i < 2 ? group : group + 8;
        const int col = tig * 2 + (i & 1);
        float d = c[i];
        for (int k = 0; k < 16; ++k) d = std::fmaf(w.A[row][k], w.B[k][col], d);  // products are exact in fp32
        c[i] = d;
    }
}

void* dynamic_smem() { return current().block->smem; }

void cp_async(void* dst, const void* src, int size, int src_bytes, const char* file, int line) {
    ThreadCtx& c = current();
    const bool size_ok = size == 4 || size == 8 || size == 16;
    if (!size_ok || reinterpret_cast<uintptr_t>(dst) % size != 0 || reinterpret_cast<uintptr_t>(src) % size != 0 ||
        (src_bytes != 0 && src_bytes != size))
        fail(*c.block, thread_name(*c.block, c.tid) + ": cp.async at " + file + ":" + std::to_string(line) +
                           " needs a size of 4, 8 or 16 bytes, addresses aligned to it and a source size of 0 or it");
    AsyncCopy copy{static_cast<unsigned char*>(dst), size, {}};
    if (src_bytes == size) std::memcpy(copy.data, src, size);
    std::memset(dst, 0xFF, size);  // poisoned until delivered
    c.open_copies.push_back(copy);
}

void cp_async16(void* dst, const void* src, int src_bytes, const char* file, int line) {
    cp_async(dst, src, 16, src_bytes, file, line);
}

void cp_async_commit() {
    ThreadCtx& c = current();
    c.copy_groups.push_back(std::move(c.open_copies));
    c.open_copies.clear();
}

void cp_async_wait(int n) {
    ThreadCtx& c = current();
    while (static_cast<int>(c.copy_groups.size()) > n) {
        for (const AsyncCopy& copy : c.copy_groups.front()) std::memcpy(copy.dst, copy.data, copy.size);
        c.copy_groups.erase(c.copy_groups.begin());
    }
}

// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16, transcribed from the PTX ISA ("Warp-level matrix load
// instruction: ldmatrix"), independently of the kernels' loaders: threads 8m .. 8m + 7 give the addresses of rows
// 0 .. 7 of matrix m (each row 8 contiguous 16-bit elements); lane l receives, for each matrix, the elements
// (row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1) in the low and high halves of one register; with .trans the
// element (row, col) is read from (col, row), i.e. row 2 (l % 4) and 2 (l % 4) + 1 at column l / 4.
void ldmatrix(uint32_t* out, int num, bool trans, const void* row, const char* file, int line) {
    ThreadCtx& t = current();
    const Site site{"ldmatrix", file, line};
    require_full_warp(t, 0xffffffffu, site);
    if (num != 1 && num != 2 && num != 4)
        fail(*t.block, describe(site) + ": ldmatrix takes .x1, .x2 or .x4");
    Warp& w = my_warp(t);
    const int lane = t.lane;
    // One call site, one shape (the site check of the rendezvous keeps .x / .trans uniform across the warp).
    if (lane < 8 * num && reinterpret_cast<uintptr_t>(row) % 16 != 0)
        fail(*t.block, thread_name(*t.block, t.tid) + ": " + describe(site) + " row address not 16-byte aligned");
    rendezvous(
        w.bar, site, State::AtWarpBarrier, "warp",
        [&] {
            w.ldsm_row[lane] = static_cast<const unsigned char*>(row);
            w.ldsm_num[lane] = num;
            w.ldsm_trans[lane] = trans;
        },
        [&] {
            auto elem = [&](int m, int r, int col) {  // element (r, col) of matrix m
                uint16_t v;
                std::memcpy(&v, w.ldsm_row[8 * m + r] + 2 * col, 2);
                return static_cast<uint32_t>(v);
            };
            for (int l = 0; l < 32; ++l) {
                const int g = l / 4, c2 = 2 * (l % 4);
                for (int m = 0; m < w.ldsm_num[0]; ++m) {
                    const uint32_t lo = w.ldsm_trans[0] ? elem(m, c2, g) : elem(m, g, c2);
                    const uint32_t hi = w.ldsm_trans[0] ? elem(m, c2 + 1, g) : elem(m, g, c2 + 1);
                    w.ldsm_out[l][m] = lo | (hi << 16);
                }
            }
        });
    for (int m = 0; m < num; ++m) out[m] = w.ldsm_out[lane][m];  // stable until the warp's next collective completes
}

// ---- runtime API ----

// The host thread's current device, as in the CUDA runtime: per host thread, device 0 until set.
thread_local int current_device = 0;

bool valid_device(int device) { return device >= 0 && device < DEVICE_COUNT; }

cudaError_t invalid_device() {
    return raise(cudaErrorInvalidDevice, "invalid device ordinal (the emulator has 2 devices)");
}

cudaError_t set_device(int device) {
    if (!valid_device(device)) return invalid_device();
    current_device = device;
    return cudaSuccess;
}

cudaError_t get_device(int* device) {
    *device = current_device;
    return cudaSuccess;
}

cudaError_t device_attribute(int* value, cudaDeviceAttr attr, int device) {
    if (!valid_device(device)) return invalid_device();
    if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return raise(cudaErrorInvalidValue, "attribute not emulated");
    *value = MAX_SMEM_OPTIN;
    return cudaSuccess;
}

cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize)
        return raise(cudaErrorInvalidValue, "attribute not emulated");
    if (value < 0 || value > MAX_SMEM_OPTIN) return raise(cudaErrorInvalidValue, "invalid argument");
    FuncAttributes& f = func_attributes();
    std::lock_guard<std::mutex> g(f.m);
    f.max_dynamic_smem[func] = value;
    return cudaSuccess;
}

cudaError_t get_last_error() {
    const cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

const char* error_string(cudaError_t e) {
    if (e == last_message_code && !last_message.empty()) return last_message.c_str();
    switch (e) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unknown error";
}

const char* kernel_name(const void* kernel, const char* fallback) {
    static std::mutex m;
    static std::map<const void*, std::string> names;
    std::lock_guard<std::mutex> g(m);
    auto it = names.find(kernel);
    if (it != names.end()) return it->second.c_str();
    std::string name = fallback;
    Dl_info info;
    if (dladdr(kernel, &info) != 0 && info.dli_sname != nullptr) {
        int status = 0;
        char* demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
        name = status == 0 && demangled != nullptr ? demangled : info.dli_sname;
        std::free(demangled);
    }
    return names.emplace(kernel, name).first->second.c_str();
}

cudaError_t run_grid(const char* kernel_name, const void* kernel, dim3 grid, dim3 block, size_t smem,
                     KernelBody body, const void* closure) {
    const unsigned long long threads = 1ull * block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
        return raise(cudaErrorInvalidConfiguration, "invalid configuration argument (grid or block dimensions)");
    int limit = DEFAULT_MAX_DYNAMIC_SMEM;
    {
        FuncAttributes& f = func_attributes();
        std::lock_guard<std::mutex> g(f.m);
        auto it = f.max_dynamic_smem.find(kernel);
        if (it != f.max_dynamic_smem.end()) limit = it->second;
    }
    if (smem > static_cast<size_t>(limit))
        return raise(cudaErrorInvalidValue, "invalid argument: " + std::to_string(smem) +
                                                " bytes of dynamic shared memory above the kernel's limit of " +
                                                std::to_string(limit) + " (cudaFuncSetAttribute)");
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                const std::string error = run_block(kernel_name, dim3(x, y, z), grid, block, smem, body, closure);
                if (!error.empty()) {
                    std::ostringstream o;
                    o << "emulated kernel " << kernel_name << " failed in block (" << x << ", " << y << ", " << z
                      << "): " << error;
                    std::fprintf(stderr, "nezha CUDA emulator: %s\n", o.str().c_str());
                    return raise(cudaErrorLaunchFailure, o.str());
                }
            }
    return cudaSuccess;
}

}  // namespace nezha::emu
