// Spatial resampling and channel concatenation of NHWC f16 tensors. One thread per output
// element (grid-stride). Bytes per output element: 2 + 2.
#include "uq_common.cuh"

/// Nearest-neighbour 2x upsampling: y[n, 2h, 2w, c] from x[n, h, w, c].
extern "C" __global__ void upsample_nearest2x_f16(const f16* __restrict__ x, f16* __restrict__ y, int n, int h,
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

/// 2x2 average pooling, stride 2: y[n, h/2, w/2, c] from x[n, h, w, c] (F.avg_pool2d(x, 2); an
/// odd last row or column is dropped). The window is summed in f32 in PyTorch's order, then
/// divided by 4. Bytes per output element: 8 + 2.
extern "C" __global__ void avg_pool2x_f16(const f16* __restrict__ x, f16* __restrict__ y, int n, int h, int w,
                                           int c) {
    const int oh = h / 2, ow = w / 2;
    const long long total = (long long)n * oh * ow * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int ch = (int)(i % c);
        long long r = i / c;
        const int ox = (int)(r % ow);
        r /= ow;
        const int oy = (int)(r % oh);
        const long long s = r / oh;
        const f16* p = x + ((s * h + 2 * oy) * w + 2 * ox) * c + ch;
        const float sum = uq_ld(p) + uq_ld(p + c) + uq_ld(p + (long long)w * c) + uq_ld(p + (long long)w * c + c);
        uq_st(y + i, sum / 4.0f);
    }
}

/// y[p, 0:ca] = a[p, :], y[p, ca:ca+cb] = b[p, :] for `pixels` positions.
extern "C" __global__ void concat_channels_f16(const f16* __restrict__ a, const f16* __restrict__ b,
                                                f16* __restrict__ y, long long pixels, int ca, int cb) {
    const int c = ca + cb;
    const long long total = pixels * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long p = i / c;
        const int ch = (int)(i % c);
        y[i] = ch < ca ? a[p * ca + ch] : b[p * cb + (ch - ca)];
    }
}
