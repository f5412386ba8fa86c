// Shared definitions of uqengine's kernels. On the device: the CUDA half-precision headers; on
// the host (UQ_EMU): the emulation header. Kernels reach device features only through these
// names and the helpers of uq_mma.cuh, all of which have an emulated twin.
#pragma once

#ifdef UQ_EMU
#include "uq_emu.h"
/// Dynamic shared memory of the launch as `T* name`.
#define UQ_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(uq_emu::dyn_smem())
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define UQ_DYNAMIC_SMEM(T, name)                                  \
    extern __shared__ __align__(16) unsigned char uq_dyn_smem_[]; \
    T* name = reinterpret_cast<T*>(uq_dyn_smem_)
#endif

/// The activations' storage type: IEEE half (11 significant bits, range +-65504), the precision
/// the models' own fp16 inference uses; arithmetic is f32.
typedef __half f16;

#define UQ_FULL_MASK 0xffffffffu
#define UQ_NEG_INF __uint_as_float(0xff800000u)

/// Activation codes shared with the Rust side (`Activation` as i32).
#define UQ_ACT_NONE 0
#define UQ_ACT_SILU 1
#define UQ_ACT_QUICK_GELU 2
#define UQ_ACT_GELU 3

__device__ __forceinline__ float uq_ld(const f16* p) { return __half2float(*p); }
__device__ __forceinline__ void uq_st(f16* p, float v) { *p = __float2half_rn(v); }

/// Two f16 (round to nearest even) in one 32-bit word, `a` in the low half.
__device__ __forceinline__ unsigned uq_pack_f16x2(float a, float b) {
    return (unsigned)__half_as_ushort(__float2half_rn(a)) | ((unsigned)__half_as_ushort(__float2half_rn(b)) << 16);
}
/// The low / high f16 of a packed word, as f32 (exact).
__device__ __forceinline__ float uq_f16_lo(unsigned u) { return __half2float(__ushort_as_half((unsigned short)(u & 0xffffu))); }
__device__ __forceinline__ float uq_f16_hi(unsigned u) { return __half2float(__ushort_as_half((unsigned short)(u >> 16))); }

__device__ __forceinline__ float uq_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/// Apply activation `act` (UQ_ACT_*) to one value in f32.
__device__ __forceinline__ float uq_activate(float x, int act) {
    switch (act) {
        case UQ_ACT_SILU: return x * uq_sigmoid(x);
        case UQ_ACT_QUICK_GELU: return x * uq_sigmoid(1.702f * x);
        case UQ_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
        default: return x;
    }
}

/// Sum over the 32 lanes of a warp (butterfly; every lane gets the total).
__device__ __forceinline__ float uq_warp_sum(float v) {
#ifdef UQ_EMU
    return uq_emu::warp_butterfly(v, [](float a, float b) { return a + b; });
#else
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(UQ_FULL_MASK, v, o);
    return v;
#endif
}
/// Maximum over the 32 lanes of a warp.
__device__ __forceinline__ float uq_warp_max(float v) {
#ifdef UQ_EMU
    return uq_emu::warp_butterfly(v, [](float a, float b) { return fmaxf(a, b); });
#else
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(UQ_FULL_MASK, v, o));
    return v;
#endif
}

/// Deterministic sum over a block of `blockDim.x` threads (a multiple of 32, at most 1024):
/// warp butterflies, then the first warp reduces the warp totals. Every thread gets the total.
/// `scratch` is shared memory of at least 33 floats.
__device__ __forceinline__ float uq_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = uq_warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < nwarps ? scratch[lane] : 0.0f;
        t = uq_warp_sum(t);
        if (lane == 0) scratch[32] = t;
    }
    __syncthreads();
    const float total = scratch[32];
    __syncthreads();
    return total;
}
