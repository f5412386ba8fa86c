// Spatial resampling and channel concatenation of NHWC bf16 tensors. One thread per output
// element (grid-stride). Bytes per output element: 2 + 2.
#include "uq_common.cuh"

/// Nearest-neighbour 2x upsampling: y[n, 2h, 2w, c] from x[n, h, w, c].
extern "C" __global__ void upsample_nearest2x_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, int n, int h,
                                                   int w, int c) {
    const long long total = (long long)n * 4 * h * w * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int ch = (int)(i % c);
        long long r = i / c;
        const int ox = (int)(r % (2 * w));
        r /= 2 * w;
        const int oy = (int)(r % (2 * h));
        const long long s = r / (2 * h);
        y[i] = x[((s * h + oy / 2) * w + ox / 2) * c + ch];
    }
}

/// y[p, 0:ca] = a[p, :], y[p, ca:ca+cb] = b[p, :] for `pixels` positions.
extern "C" __global__ void concat_channels_bf16(const bf16* __restrict__ a, const bf16* __restrict__ b,
                                                bf16* __restrict__ y, long long pixels, int ca, int cb) {
    const int c = ca + cb;
    const long long total = pixels * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long p = i / c;
        const int ch = (int)(i % c);
        y[i] = ch < ca ? a[p * ca + ch] : b[p * cb + (ch - ca)];
    }
}
