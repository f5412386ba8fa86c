// Element-wise ops on f16 tensors (f32 arithmetic). Grid-stride loops over `n` elements.
// Bytes per element: 4 (activation), 6 (add, add_per_sample); no FLOP-bound work here.
#include "uq_common.cuh"

/// y[i] = act(x[i]).
extern "C" __global__ void activation_f16(const f16* __restrict__ x, f16* __restrict__ y, long long n, int act) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        uq_st(y + i, uq_activate(uq_ld(x + i), act));
}

/// y[i] = a[i] + b[i].
extern "C" __global__ void add_f16(const f16* __restrict__ a, const f16* __restrict__ b, f16* __restrict__ y,
                                    long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        uq_st(y + i, uq_ld(a + i) + uq_ld(b + i));
}

/// y[s, j, ch] = x[s, j, ch] + v[s, ch] for `per_sample` = positions * c elements per sample.
extern "C" __global__ void add_per_sample_f16(const f16* __restrict__ x, const f16* __restrict__ v,
                                               f16* __restrict__ y, long long n, long long per_sample, int c) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long s = i / per_sample;
        const int ch = (int)(i % c);
        uq_st(y + i, uq_ld(x + i) + uq_ld(v + s * c + ch));
    }
}

/// y[i] = x[i] (slices and concatenations along the batch: the caller offsets the pointers).
extern "C" __global__ void copy_f16(const f16* __restrict__ x, f16* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = x[i];
}

/// y[i] = x[i] for f32 parameters (stacking per-member biases).
extern "C" __global__ void copy_f32(const float* __restrict__ x, float* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = x[i];
}
