// The extractor's preprocessing of final samples on the device: transformers'
// CLIPImageProcessor (its PIL path) as src/models/clip_preprocess.rs runs it on the host, step for
// step and bit for bit: 8-bit quantisation as a PNG stores it (or float images in [0, 1]), PIL's
// two-pass resampling (22-bit fixed point and clipping to u8 after each pass for 8-bit images;
// f64 weights and sums stored as f32 for float images), the center crop with zero padding, the
// conversion of one channel to RGB, rescaling and normalisation, written as the extractor's f16
// NHWC input. Every multiply and add that rounds is an explicit _rn intrinsic, so no fused
// multiply-add changes a result. Images are NHWC f32 (8-bit values held as exact integers).
// One thread per output element (grid-stride).
#include "uq_common.cuh"

/// Final samples (model space, [-1, 1]) as images: with `quantize`, the 8-bit value PNG files
/// store (round half to even of clamp(x / 2 + 0.5, 0, 1) * 255), else the float
/// image clamp(x / 2 + 0.5, 0, 1) (NaN gives 0 too: such a sample is marked invalid or stops
/// the run). y and x have n elements.
extern "C" __global__ void pixels_from_state_f32(const float* __restrict__ x, float* __restrict__ y, long long n,
                                                 int quantize) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float v = __fadd_rn(__fmul_rn(x[i], 0.5f), 0.5f);
        float c = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
        if (v != v) c = 0.0f;
        y[i] = quantize ? (float)__float2int_rn(__fmul_rn(c, 255.0f)) : c;
    }
}

/// PIL clip8: a 22-bit fixed-point sum as a u8 value, clipped to [0, 255].
__device__ __forceinline__ float uq_clip8(long long ss) {
    if (ss >= (1ll << 30)) return 255.0f;
    if (ss <= 0) return 0.0f;
    return (float)(ss >> 22);
}

/// One output sample of a resampling pass: `taps` inputs `at(t)` weighted by row `j` of the
/// tables. 8-bit images: fixed-point weights, half added first, clipped; float images: f64
/// weights and sum, stored as f32.
template <class At>
__device__ __forceinline__ float uq_resample_tap_sum(int u8, const int* __restrict__ fixed,
                                                     const double* __restrict__ weights, long long row, int taps,
                                                     At at) {
    if (u8) {
        long long ss = 1ll << 21;
        for (int t = 0; t < taps; ++t) ss += (long long)at(t) * fixed[row + t];
        return uq_clip8(ss);
    }
    double ss = 0.0;
    for (int t = 0; t < taps; ++t) ss = __dadd_rn(ss, __dmul_rn((double)at(t), weights[row + t]));
    return __double2float_rn(ss);
}

/// PIL's horizontal pass: y[n, rows, ow, c] from rows row0 .. row0 + rows of x[n, h, w, c].
/// `bounds` holds (first input column, taps) per output column, `fixed` / `weights` ksize
/// weights per output column (`quantized` picks the 8-bit arithmetic).
extern "C" __global__ void resample_rows_f32(const float* __restrict__ x, float* __restrict__ y,
                                             const int* __restrict__ bounds, const int* __restrict__ fixed,
                                             const double* __restrict__ weights, int ksize, int quantized, int n, int h,
                                             int w, int c, int row0, int rows, int ow) {
    const long long total = (long long)n * rows * ow * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int ch = (int)(i % c);
        long long r = i / c;
        const int xx = (int)(r % ow);
        r /= ow;
        const int row = (int)(r % rows);
        const long long img = r / rows;
        const int xmin = bounds[2 * xx], taps = bounds[2 * xx + 1];
        const float* src = x + ((img * h + row0 + row) * w + xmin) * (long long)c + ch;
        y[i] = uq_resample_tap_sum(quantized, fixed, weights, (long long)xx * ksize, taps,
                                   [&](int t) { return src[(long long)t * c]; });
    }
}

/// PIL's vertical pass: y[n, oh, w, c] from x[n, h, w, c] whose row 0 is input row `row0`.
/// `bounds` holds (first input row, taps) per output row; weights as in resample_rows_f32.
extern "C" __global__ void resample_cols_f32(const float* __restrict__ x, float* __restrict__ y,
                                             const int* __restrict__ bounds, const int* __restrict__ fixed,
                                             const double* __restrict__ weights, int ksize, int quantized, int n, int h,
                                             int w, int c, int row0, int oh) {
    const long long per_row = (long long)w * c;
    const long long total = (long long)n * oh * per_row;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long e = i % per_row;
        long long r = i / per_row;
        const int yy = (int)(r % oh);
        const long long img = r / oh;
        const int ymin = bounds[2 * yy], taps = bounds[2 * yy + 1];
        const float* src = x + (img * h + ymin - row0) * per_row + e;
        y[i] = uq_resample_tap_sum(quantized, fixed, weights, (long long)yy * ksize, taps,
                                   [&](int t) { return src[t * per_row]; });
    }
}

/// The extractor's input y[n, oh, ow, co] (f16) from resized images x[n, h, w, c]: the crop
/// window starts at (y0, x0) of the image padded by (top_pad, left_pad) zeros; channel ch reads
/// input channel min(ch, c - 1) (one channel to RGB); float images are clamped to [0, 1] first
/// (`clamp01`); then v * scale[0] in f64 stored as f32 (unless `scale` is null), then (v - mean) / std in
/// f32 (when `normalize`; mean and std have co values).
extern "C" __global__ void clip_pixels_f16(const float* __restrict__ x, f16* __restrict__ y,
                                            const float* __restrict__ mean, const float* __restrict__ stdev, int n,
                                            int h, int w, int c, int oh, int ow, int co, int y0, int x0, int top_pad,
                                            int left_pad, int clamp01, const double* __restrict__ scale,
                                            int normalize) {
    const long long total = (long long)n * oh * ow * co;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int ch = (int)(i % co);
        long long r = i / co;
        const int ox = (int)(r % ow);
        r /= ow;
        const int oy = (int)(r % oh);
        const long long img = r / oh;
        const int py = oy + y0 - top_pad, px = ox + x0 - left_pad;
        float v = 0.0f;
        if (py >= 0 && py < h && px >= 0 && px < w) {
            v = x[((img * h + py) * w + px) * (long long)c + min(ch, c - 1)];
            if (clamp01) v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
        }
        if (scale) v = __double2float_rn(__dmul_rn((double)v, *scale));
        if (normalize) v = __fdiv_rn(__fsub_rn(v, mean[ch]), stdev[ch]);
        y[i] = __float2half_rn(v);
    }
}
