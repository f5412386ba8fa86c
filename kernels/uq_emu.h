// Host emulation of the CUDA device features used by uqengine's kernels (C++20, g++ >= 12).
//
// The kernel sources in kernels/*.cu compile unchanged for the host with this header (through
// uq_common.cuh, which includes it when UQ_EMU is defined). Execution model of a launch:
//   - the threads of one block run as fibers (user-space contexts with their own stacks) on the
//     launching OS thread: a fiber runs until it waits at a barrier, then the next one runs, so a
//     barrier costs a few context switches in user space, not OS thread switches;
//   - blocks run one after another, so `__shared__` can be a function-local `static`;
//   - `__syncthreads` is a barrier over the block, warp operations (shuffles, votes, the
//     tensor-core fragment helpers of uq_mma.cuh) use one barrier per warp;
//   - a thread that returns early drops out of both barriers, as an exited GPU thread does;
//   - a barrier that can never complete (a thread waits at a `__syncthreads` the others never
//     reach) aborts the process with a message, where a GPU would hang;
//   - one launch runs at a time in the process (kernels' static shared memory is process-wide).
// The fibers switch by a few lines of x86-64 assembly (ucontext elsewhere); under
// AddressSanitizer the switches are announced to it.
// Warp operations must be reached by every thread of the warp (our kernels use full masks).
#pragma once

#ifndef UQ_EMU
#define UQ_EMU 1
#endif

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __constant__ static const

// ---------------------------------------------------------------------------------------------
// Built-in vector types and index variables.

struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local uint3 blockDim{1, 1, 1};
inline thread_local uint3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// Launch machinery.

namespace uq_emu {

// ---- Fibers ---------------------------------------------------------------------------------

#if defined(__x86_64__)
/// Save the callee-saved registers and the stack pointer in `*save`, continue on `load`.
__attribute__((naked, noinline)) static void switch_context(void** /*save*/, void* /*load*/) {
    asm volatile(
        "pushq %rbp\n\tpushq %rbx\n\tpushq %r12\n\tpushq %r13\n\tpushq %r14\n\tpushq %r15\n\t"
        "movq %rsp, (%rdi)\n\tmovq %rsi, %rsp\n\t"
        "popq %r15\n\tpopq %r14\n\tpopq %r13\n\tpopq %r12\n\tpopq %rbx\n\tpopq %rbp\n\tret\n\t");
}
#endif

/// One emulated GPU thread: a stack (with a guard page below it) and its saved context.
struct Fiber {
    unsigned char* map = nullptr;  // guard page + stack
    size_t map_bytes = 0;
    void* sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t ctx;
#endif
    unsigned tid = 0;
    bool done = true;

    static constexpr size_t kStack = 256 * 1024;

    Fiber() {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        map_bytes = kStack + page;
        void* m = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            std::fprintf(stderr, "uq_emu: cannot map a %zu-byte fiber stack\n", map_bytes);
            std::abort();
        }
        map = static_cast<unsigned char*>(m);
        mprotect(map, page, PROT_NONE);  // a stack overflow faults instead of corrupting memory
    }
    ~Fiber() { munmap(map, map_bytes); }
    Fiber(const Fiber&) = delete;
    Fiber& operator=(const Fiber&) = delete;
    unsigned char* stack_bottom() const { return map + (map_bytes - kStack); }
};

/// A reusable barrier whose participants may drop out (an exited thread). All participants are
/// fibers of one OS thread: waiting is yielding to the scheduler until the phase moves on.
struct Barrier {
    unsigned expected = 0, arrived = 0, phase = 0;

    void arm(unsigned n) {
        expected = n;
        arrived = 0;
    }

    template <class F>
    void complete(F&& on_complete) {
        on_complete();
        arrived = 0;
        ++phase;
    }

    template <class F>
    void arrive_and_wait(F&& on_complete);
    void arrive_and_wait() {
        arrive_and_wait([] {});
    }

    void drop();
};

/// Barrier and exchange slots of one warp (shuffles, votes, fragment helpers).
struct Warp {
    unsigned lanes = 32;
    Barrier bar;
    alignas(16) unsigned char slot[32][128];  // 16 words of 8 bytes per lane
    // Work done once per warp after an exchange's barrier, by the first lane to resume (fibers
    // run one at a time), instead of by every lane: the tensor-core helpers' fragments decoded to
    // f32 (A tiles [m][row][k], B [n][k][col]) and every lane's warp_butterfly result. `*_phase`
    // is the barrier phase they were computed for.
    float mma_a[4][16][16];
    float mma_b[8][16][8];
    float butterfly[32];
    unsigned mma_phase = ~0u, butterfly_phase = ~0u;
    void sync() { bar.arrive_and_wait(); }
    /// After a barrier: true for the first lane to resume, which then does the warp's shared work.
    bool first_after_barrier(unsigned& done_phase) {
        if (done_phase == bar.phase) return false;
        done_phase = bar.phase;
        return true;
    }
};

/// What the threads of the launch in flight share.
struct LaunchState {
    dim3 grid, block;
    unsigned nthreads = 0;
    unsigned char* dyn_smem = nullptr;
    const std::function<void()>* body = nullptr;
    Barrier block_bar;  // __syncthreads
    std::unique_ptr<Warp[]> warps;
    unsigned nwarps = 0;

    void rearm() {
        block_bar.arm(nthreads);
        for (unsigned w = 0; w < nwarps; ++w) warps[w].bar.arm(warps[w].lanes);
    }
};

inline thread_local Warp* tl_warp = nullptr;
inline thread_local unsigned tl_lane = 0;
inline thread_local LaunchState* tl_launch = nullptr;

/// Dynamic shared memory of the launch in flight (`extern __shared__` arrays).
inline unsigned char* dyn_smem() { return tl_launch->dyn_smem; }

/// Runs a launch's blocks one after another, each block's threads as fibers.
class Pool {
  public:
    /// Run `body` on `grid` x `block`; returns when every block has finished. One launch at a
    /// time per process.
    void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body) {
        std::lock_guard<std::mutex> guard(launch_mutex_);
        const unsigned n = block.x * block.y * block.z;
        if (n == 0 || grid.x * grid.y * grid.z == 0) return;
        while (fibers_.size() < n) fibers_.push_back(std::make_unique<Fiber>());
        LaunchState L;
        L.grid = grid;
        L.block = block;
        L.nthreads = n;
        L.body = &body;
        std::vector<uint64_t> smem(smem_bytes / 8 + 2, 0);
        L.dyn_smem = reinterpret_cast<unsigned char*>(smem.data());
        L.nwarps = (n + 31) / 32;
        L.warps.reset(new Warp[L.nwarps]);
        for (unsigned w = 0; w < L.nwarps; ++w) L.warps[w].lanes = std::min(32u, n - 32 * w);
        tl_launch = &L;
        blockDim = {block.x, block.y, block.z};
        gridDim = {grid.x, grid.y, grid.z};
        for (unsigned bz = 0; bz < grid.z; ++bz)
            for (unsigned by = 0; by < grid.y; ++by)
                for (unsigned bx = 0; bx < grid.x; ++bx) {
                    blockIdx = {bx, by, bz};
                    run_block(L);
                }
        tl_launch = nullptr;
        tl_warp = nullptr;
    }

    /// From a fiber: give the OS thread back to the scheduler.
    void yield() {
        Fiber& f = *fibers_[current_];
        switch_to_scheduler(f);
    }

    /// Something moved (an arrival, a completed phase, an exit): the scheduler is not stuck.
    void note_progress() { progress_ = true; }

  private:
    std::vector<std::unique_ptr<Fiber>> fibers_;
    unsigned current_ = 0, running_ = 0;
    bool progress_ = false;
    void* scheduler_sp_ = nullptr;
#if !defined(__x86_64__)
    ucontext_t scheduler_ctx_;
#endif
#if defined(__SANITIZE_ADDRESS__)
    const void* scheduler_stack_ = nullptr;
    size_t scheduler_stack_size_ = 0;
#endif
    std::mutex launch_mutex_;

    void run_block(LaunchState& L) {
        L.rearm();
        const unsigned n = L.nthreads;
        for (unsigned t = 0; t < n; ++t) start_fiber(*fibers_[t], t);
        running_ = n;
        while (running_ > 0) {
            progress_ = false;
            for (unsigned t = 0; t < n; ++t) {
                Fiber& f = *fibers_[t];
                if (f.done) continue;
                current_ = t;
                tl_lane = t % 32;
                tl_warp = &L.warps[t / 32];
                threadIdx = {t % L.block.x, (t / L.block.x) % L.block.y, t / (L.block.x * L.block.y)};
                switch_to_fiber(f);
            }
            if (!progress_ && running_ > 0) {
                std::fprintf(stderr,
                             "uq_emu: deadlock in block (%u, %u, %u): %u of %u threads wait at a barrier "
                             "(__syncthreads or a warp operation) that the others never reach\n",
                             blockIdx.x, blockIdx.y, blockIdx.z, running_, n);
                std::abort();
            }
        }
    }

    static void fiber_main();

    void start_fiber(Fiber& f, unsigned tid) {
        f.tid = tid;
        f.done = false;
        unsigned char* top = f.stack_bottom() + Fiber::kStack;
#if defined(__x86_64__)
        // Frame popped by switch_context: six callee-saved registers, then the return address
        // fiber_main; above it a zero "return address" keeps the ABI's 16-byte alignment.
        void** sp = reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15));
        *--sp = nullptr;
        *--sp = reinterpret_cast<void*>(&Pool::fiber_main);
        for (int i = 0; i < 6; ++i) *--sp = nullptr;
        f.sp = sp;
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack_bottom();
        f.ctx.uc_stack.ss_size = Fiber::kStack;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, &Pool::fiber_main, 0);
#endif
    }

    void switch_to_fiber(Fiber& f) {
#if defined(__SANITIZE_ADDRESS__)
        void* fake = nullptr;
        __sanitizer_start_switch_fiber(&fake, f.stack_bottom(), Fiber::kStack);
#endif
#if defined(__x86_64__)
        switch_context(&scheduler_sp_, f.sp);
#else
        swapcontext(&scheduler_ctx_, &f.ctx);
#endif
        asm volatile("" ::: "memory");  // the fibers changed memory: reload everything
#if defined(__SANITIZE_ADDRESS__)
        __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    }

    void switch_to_scheduler(Fiber& f) {
#if defined(__SANITIZE_ADDRESS__)
        void* fake = nullptr;
        __sanitizer_start_switch_fiber(f.done ? nullptr : &fake, scheduler_stack_, scheduler_stack_size_);
#endif
#if defined(__x86_64__)
        switch_context(&f.sp, scheduler_sp_);
#else
        swapcontext(&f.ctx, &scheduler_ctx_);
#endif
        asm volatile("" ::: "memory");  // other fibers changed memory: reload everything
#if defined(__SANITIZE_ADDRESS__)
        __sanitizer_finish_switch_fiber(fake, &scheduler_stack_, &scheduler_stack_size_);
#endif
    }

    friend Pool& pool();
};

inline Pool& pool() {
    static Pool p;
    return p;
}

inline void Pool::fiber_main() {
    Pool& p = pool();
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(nullptr, &p.scheduler_stack_, &p.scheduler_stack_size_);
#endif
    LaunchState& L = *tl_launch;
    (*L.body)();
    // Leaving the kernel: no longer a participant of this block's barriers.
    L.block_bar.drop();
    tl_warp->bar.drop();
    Fiber& f = *p.fibers_[p.current_];
    f.done = true;
    --p.running_;
    p.note_progress();
    p.switch_to_scheduler(f);
    std::abort();  // a finished fiber is never resumed
}

template <class F>
inline void Barrier::arrive_and_wait(F&& on_complete) {
    pool().note_progress();
    const unsigned ph = phase;
    if (++arrived == expected) {
        complete(on_complete);
        return;
    }
    while (phase == ph) pool().yield();
}

inline void Barrier::drop() {
    --expected;
    if (expected > 0 && arrived == expected) complete([] {});
}

/// Launch a kernel call expression on the emulated device.
template <class F>
void launch(dim3 grid, dim3 block, size_t smem, F&& f) {
    const std::function<void()> body(std::forward<F>(f));
    pool().launch(grid, block, smem, body);
}

inline Warp& warp() { return *tl_warp; }
inline unsigned lane() { return tl_lane; }

template <class T>
inline void put(unsigned l, unsigned word, const T& v) {
    static_assert(sizeof(T) <= 8, "warp slot holds at most 8 bytes per word");
    std::memcpy(&warp().slot[l][word * 8], &v, sizeof(T));
}
template <class T>
inline T get(unsigned l, unsigned word) {
    T v;
    std::memcpy(&v, &warp().slot[l][word * 8], sizeof(T));
    return v;
}

}  // namespace uq_emu

// ---------------------------------------------------------------------------------------------
// Synchronisation, warp shuffles and votes.

inline void __syncthreads() { uq_emu::tl_launch->block_bar.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { uq_emu::warp().sync(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

namespace uq_emu {
/// Exchange `v` across the warp: every lane publishes its value, then reads lane `src(lane)`'s.
/// A source outside the warp's live lanes yields the lane's own value.
template <class T, class Src>
inline T exchange(T v, Src src) {
    Warp& w = warp();
    const unsigned l = lane();
    put(l, 0, v);
    w.sync();
    const int s = src(l);
    T r = (s < 0 || s >= (int)w.lanes) ? v : get<T>((unsigned)s, 0);
    w.sync();
    return r;
}
}  // namespace uq_emu

namespace uq_emu {
/// The butterfly `for o in 16, 8, 4, 2, 1: v = op(v, shfl_xor(v, o))` with one exchange instead
/// of five: the stages are replayed on the published values, so each lane gets exactly the
/// value (and rounding) the shuffle sequence gives it on a GPU.
template <class F>
inline float warp_butterfly(float v, F op) {
    Warp& w = warp();
    const unsigned l = lane();
    put(l, 0, v);
    w.sync();
    // The first lane to resume replays the stages once for the warp.
    if (w.first_after_barrier(w.butterfly_phase)) {
        float vals[32];
        for (unsigned i = 0; i < w.lanes; ++i) vals[i] = get<float>(i, 0);
        for (unsigned o = 16; o > 0; o >>= 1) {
            float next[32];
            for (unsigned i = 0; i < w.lanes; ++i) {
                const unsigned p = i ^ o;
                next[i] = op(vals[i], p < w.lanes ? vals[p] : vals[i]);
            }
            for (unsigned i = 0; i < w.lanes; ++i) vals[i] = next[i];
        }
        for (unsigned i = 0; i < w.lanes; ++i) w.butterfly[i] = vals[i];
    }
    const float r = w.butterfly[l];
    w.sync();
    return r;
}
}  // namespace uq_emu

template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    return uq_emu::exchange(v, [&](unsigned l) { return int(l & ~unsigned(width - 1)) + (src & (width - 1)); });
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    return uq_emu::exchange(v, [&](unsigned l) {
        const int s = int(l ^ unsigned(mask));
        return (s & ~(width - 1)) == int(l & ~unsigned(width - 1)) ? s : int(l);
    });
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    return uq_emu::exchange(v, [&](unsigned l) {
        return (l & unsigned(width - 1)) + delta < unsigned(width) ? int(l + delta) : int(l);
    });
}
template <class T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    return uq_emu::exchange(v, [&](unsigned l) { return (l & unsigned(width - 1)) >= delta ? int(l - delta) : int(l); });
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
    uq_emu::Warp& w = uq_emu::warp();
    const unsigned l = uq_emu::lane();
    uq_emu::put(l, 0, int(pred != 0));
    w.sync();
    unsigned bits = 0;
    for (unsigned i = 0; i < w.lanes; ++i)
        if (uq_emu::get<int>(i, 0)) bits |= 1u << i;
    w.sync();
    return bits & mask;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
    const unsigned live = uq_emu::warp().lanes == 32 ? 0xffffffffu : ((1u << uq_emu::warp().lanes) - 1);
    return __ballot_sync(mask, pred) == (mask & live);
}
inline unsigned __activemask() {
    const unsigned n = uq_emu::warp().lanes;
    return n == 32 ? 0xffffffffu : ((1u << n) - 1);
}

// ---------------------------------------------------------------------------------------------
// Atomics (device-wide; the emulated device is the host's memory).

template <class T>
inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
template <class T>
inline T atomicSub(T* p, T v) { return std::atomic_ref<T>(*p).fetch_sub(v); }
template <class T>
inline T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v); }
template <class T>
inline T atomicCAS(T* p, T expected, T desired) {
    std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
    return expected;
}
template <class T>
inline T atomicMax(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
template <class T>
inline T atomicOr(T* p, T v) { return std::atomic_ref<T>(*p).fetch_or(v); }
template <class T>
inline T atomicAnd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_and(v); }

// ---------------------------------------------------------------------------------------------
// Math. The standard float functions (expf, logf, erff, tanhf, sqrtf, fmaf, ...) come from
// <cmath>; here are the CUDA-only names.

inline float __bits_to_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint32_t __float_to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned u) { return __bits_to_float(u); }
inline unsigned __float_as_uint(float f) { return __float_to_bits(f); }
inline float __int_as_float(int i) { return __bits_to_float((uint32_t)i); }
inline int __float_as_int(float f) { return (int)__float_to_bits(f); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __double2float_rn(double x) { return (float)x; }
inline int __float2int_rn(float x) { return (int)std::nearbyint(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float exp10f(float x) { return std::pow(10.0f, x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
template <class T>
inline T __ldg(const T* p) { return *p; }
inline unsigned __cvta_generic_to_shared(const void* p) { return (unsigned)(uintptr_t)p; }

// ---------------------------------------------------------------------------------------------
// Half-precision types with CUDA's conversions (round to nearest even; NaN -> canonical NaN).

struct __nv_bfloat16_raw { unsigned short x; };
struct __half_raw { unsigned short x; };

namespace uq_emu {
inline unsigned short f32_to_bf16_bits(float f) {
    uint32_t u = __float_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
inline float bf16_bits_to_f32(unsigned short h) { return __bits_to_float(uint32_t(h) << 16); }

inline unsigned short f32_to_f16_bits(float f) {
    const uint32_t u = __float_to_bits(f);
    const unsigned short sign = (unsigned short)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7fff;
    if (a >= 0x47800000u) return sign | 0x7c00;  // >= 65536 (and inf): overflow
    if (a < 0x38800000u) {
        // Half subnormal (or zero): value = m * 2^-24, m rounded to nearest even. Scaling by a
        // power of two is exact; nearbyint rounds half to even in the default mode.
        const float m = std::nearbyint(__bits_to_float(a) * 16777216.0f);
        return sign | (unsigned short)m;  // m == 1024 is the smallest normal's encoding
    }
    const uint32_t e = (a >> 23) - 127 + 15, mant = a & 0x7fffffu;
    uint32_t h = (e << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry rolls into the exponent
    return sign | (unsigned short)h;
}
inline float f16_bits_to_f32(unsigned short h) {
    // The exponent and mantissa moved into f32's fields, then scaled by 2^(127-15): exact for
    // normal and subnormal halves alike (the scaling of a subnormal f32 pattern renormalises it).
    const uint32_t sign = uint32_t(h & 0x8000u) << 16, em = uint32_t(h & 0x7fffu) << 13;
    if ((h & 0x7c00u) == 0x7c00u) return __bits_to_float(sign | 0x7f800000u | em);  // inf, NaN
    return __bits_to_float(sign | __float_to_bits(__bits_to_float(em) * 5.192296858534828e33f));  // 2^112
}
}  // namespace uq_emu

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(uq_emu::f32_to_bf16_bits(f)) {}
    __nv_bfloat16(__nv_bfloat16_raw r) : __x(r.x) {}
    operator float() const { return uq_emu::bf16_bits_to_f32(__x); }
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
struct __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(uq_emu::f32_to_f16_bits(f)) {}
    __half(__half_raw r) : __x(r.x) {}
    operator float() const { return uq_emu::f16_bits_to_f32(__x); }
};
struct __half2 {
    __half x, y;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;
typedef __half half;
typedef __half2 half2;

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return float(h); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {float(h.x), float(h.y)}; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16(__nv_bfloat16_raw{u}); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline float2 __half22float2(__half2 h) { return {float(h.x), float(h.y)}; }
inline __half __ushort_as_half(unsigned short u) { return __half(__half_raw{u}); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
