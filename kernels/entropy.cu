// The semantic likelihood's Gaussian entropy on the device: one block per sample reduces its K
// member feature vectors to one score (src/uncertainty.rs `gaussian_entropy`).
//
// Per dimension the sums of e and e^2 over the members are accumulated in double, member after
// member, as on the host: features near 1e3 would lose the whole variance to cancellation in
// f32. The log terms are summed in double by a fixed tree over the block's threads, so the
// result does not depend on timing (no atomics). Bytes read: 4 * K * D per sample.
#include "uq_common.cuh"

#define UQ_ENTROPY_THREADS 128

__device__ __forceinline__ float uq_feature(const float* p) { return *p; }
__device__ __forceinline__ float uq_feature(const f16* p) { return uq_ld(p); }

/// out[i] = 0.5 * sum_d log(v_d + sigma2) + 0.5 * D * (log(2 pi) + 1) for sample i of `f`
/// ([n, k, d]), v_d the biased variance over the k members, clipped at 0; NaN when a feature of
/// the sample is not finite. sigma2 = sigma2_hi + sigma2_lo (a double passed as two floats).
/// Launch: n blocks of UQ_ENTROPY_THREADS threads.
template <class T>
__device__ __forceinline__ void uq_gaussian_entropy(const T* __restrict__ f, float* __restrict__ out, int k, int d,
                                                    float sigma2_hi, float sigma2_lo) {
    __shared__ double part[UQ_ENTROPY_THREADS];
    __shared__ int bad[UQ_ENTROPY_THREADS];
    const long long base = (long long)blockIdx.x * k * d;
    const double sigma2 = (double)sigma2_hi + (double)sigma2_lo;
    double acc = 0.0;
    int nonfinite = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        double s1 = 0.0, s2 = 0.0;
        for (int m = 0; m < k; ++m) {
            const double e = (double)uq_feature(f + base + (long long)m * d + j);
            nonfinite |= !(fabs(e) <= 1.7976931348623157e308);  // inf or NaN
            s1 += e;
            s2 += e * e;
        }
        const double mean = s1 / k;
        double v = s2 / k - mean * mean;
        if (v < 0.0) v = 0.0;
        acc += log(v + sigma2);
    }
    part[threadIdx.x] = acc;
    bad[threadIdx.x] = nonfinite;
    __syncthreads();
    for (int s = UQ_ENTROPY_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            part[threadIdx.x] += part[threadIdx.x + s];
            bad[threadIdx.x] |= bad[threadIdx.x + s];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const double c = 0.5 * d * (1.8378770664093453 + 1.0);  // log(2 pi) + 1
        out[blockIdx.x] = bad[0] ? __uint_as_float(0x7fc00000u) : (float)(0.5 * part[0] + c);
    }
}

/// Features in f32.
extern "C" __global__ void gaussian_entropy_f32(const float* __restrict__ f, float* __restrict__ out, int k, int d,
                                                float sigma2_hi, float sigma2_lo) {
    uq_gaussian_entropy(f, out, k, d, sigma2_hi, sigma2_lo);
}

/// Features in f16 (the extractor's output on the device).
extern "C" __global__ void gaussian_entropy_f16(const f16* __restrict__ f, float* __restrict__ out, int k, int d,
                                                 float sigma2_hi, float sigma2_lo) {
    uq_gaussian_entropy(f, out, k, d, sigma2_hi, sigma2_lo);
}
