// The sampler on the device: its f32 state x_t, the Philox4x32-10 noise streams of the host
// (src/rng.rs), the DDIM/DDPM update (src/sampler/mod.rs `apply_step`), the conversions between
// the state and the trunk's f16 input, the row copies of the member schedules and the
// sinusoidal timestep features. Grid-stride loops; every value depends only on its indices, so
// results do not depend on the launch geometry.
//
// Bit-exactness with the host: every multiply, add and divide of the update is rounded
// separately (__fmul_rn / __fadd_rn / __fdiv_rn: no contraction into FMA), as the host computes
// it; the uniforms are exact; sqrtf is IEEE. logf, sinf and cosf are CUDA's full-precision
// functions (1-2 ulp), so on a GPU a normal number agrees with the host's to a few ulps (exactly
// in the emulation, which uses the host's functions).
#include "uq_common.cuh"

/// Philox4x32 with 10 rounds (Random123): `c` is the counter in, the block out.
__device__ __forceinline__ void uq_philox4x32_10(unsigned c[4], unsigned k0, unsigned k1) {
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const unsigned long long p0 = (unsigned long long)0xD2511F53u * c[0];
        const unsigned long long p1 = (unsigned long long)0xCD9E8D57u * c[2];
        const unsigned n0 = (unsigned)(p1 >> 32) ^ c[1] ^ k0;
        const unsigned n1 = (unsigned)p1;
        const unsigned n2 = (unsigned)(p0 >> 32) ^ c[3] ^ k1;
        const unsigned n3 = (unsigned)p0;
        c[0] = n0;
        c[1] = n1;
        c[2] = n2;
        c[3] = n3;
    }
}

/// Element `j` of the standard normals a fresh host `Stream::new(seed, index, purpose, sub)`
/// gives to `fill_normal`: block `j / 4`, Box-Muller on the words (w0, w1) for elements 4q, 4q+1
/// and (w2, w3) for 4q+2, 4q+3 (cos for the even element, sin for the odd one).
__device__ __forceinline__ float uq_stream_normal(unsigned k0, unsigned k1, unsigned idx_lo, unsigned idx_hi,
                                                  unsigned purpose, unsigned sub, unsigned long long j) {
    unsigned c[4] = {(unsigned)(j >> 2), idx_lo, purpose | (idx_hi << 8), sub};
    uq_philox4x32_10(c, k0, k1);
    const int q = (int)(j & 3);
    const unsigned a = q < 2 ? c[0] : c[2];
    const unsigned b = q < 2 ? c[1] : c[3];
    const float u1 = (float)((a >> 8) + 1u) * 5.9604644775390625e-8f;  // exact: 24-bit integer x 2^-24
    const float u2 = (float)(b >> 8) * 5.9604644775390625e-8f;
    const float r = sqrtf(__fmul_rn(-2.0f, logf(u1)));
    const float theta = __fmul_rn(6.2831855f, u2);
    return __fmul_rn(r, (q & 1) ? sinf(theta) : cosf(theta));
}

/// The NCHW generation index of NHWC element `p` of a sample with `c` channels and `hw` pixels.
__device__ __forceinline__ unsigned long long uq_nchw_index(long long p, int c, int hw) {
    const long long pixel = p / c;
    const int ch = (int)(p - pixel * c);
    return (unsigned long long)ch * (unsigned long long)hw + (unsigned long long)pixel;
}

/// y = the normals of stream (key, sample index, purpose, sub) per sample, NHWC `[rows, hw, c]`
/// f32, each sample's numbers repeated on its `rows_per_sample` consecutive rows. `index_words`
/// holds each sample's index as (low, high) 32-bit words; `n = rows * hw * c`.
extern "C" __global__ void normal_state_f32(float* __restrict__ y, const unsigned* __restrict__ index_words,
                                            unsigned k0, unsigned k1, unsigned purpose, unsigned sub, int c, int hw,
                                            int rows_per_sample, long long n) {
    const long long per = (long long)hw * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / per;
        const long long sample = row / rows_per_sample;
        const unsigned long long j = uq_nchw_index(i - row * per, c, hw);
        y[i] = uq_stream_normal(k0, k1, index_words[2 * sample], index_words[2 * sample + 1], purpose, sub, j);
    }
}

/// The step of one state element (`apply_step_learned` of src/sampler/mod.rs): `xv` the state,
/// `mv` the model's prediction, `mvar` its variance channel (read only with `learned_range`), `z`
/// the step noise (read only when `noise_scale != 0`).
__device__ __forceinline__ float uq_step_value(float xv, float mv, float mvar, float z, int prediction, int clip,
                                               float clip_range, float sqrt_alpha, float sqrt_beta,
                                               float pred_original_coeff, float pred_epsilon_coeff,
                                               float current_sample_coeff, float noise_scale,
                                               int eps_from_clipped, int learned_range, float min_log,
                                               float max_log) {
    float x0;
    if (prediction == 0)
        x0 = __fdiv_rn(__fadd_rn(xv, -__fmul_rn(sqrt_beta, mv)), sqrt_alpha);
    else if (prediction == 1)
        x0 = __fadd_rn(__fmul_rn(sqrt_alpha, xv), -__fmul_rn(sqrt_beta, mv));
    else
        x0 = mv;
    float eps = 0.0f;
    if (pred_epsilon_coeff != 0.0f) {
        if (prediction == 0)
            eps = mv;
        else if (prediction == 1)
            eps = __fadd_rn(__fmul_rn(sqrt_alpha, mv), __fmul_rn(sqrt_beta, xv));
        else
            eps = __fdiv_rn(__fadd_rn(xv, -__fmul_rn(sqrt_alpha, x0)), sqrt_beta);
    }
    // Comparisons, not fminf/fmaxf: a NaN stays NaN (as Rust's clamp keeps it), so a diverged
    // sample is still detected after the step.
    if (clip != 0) {
        x0 = x0 < -clip_range ? -clip_range : (x0 > clip_range ? clip_range : x0);
        if (eps_from_clipped != 0 && pred_epsilon_coeff != 0.0f)
            eps = __fdiv_rn(__fadd_rn(xv, -__fmul_rn(sqrt_alpha, x0)), sqrt_beta);
    }
    float out = __fmul_rn(pred_original_coeff, x0);
    if (pred_epsilon_coeff != 0.0f) out = __fadd_rn(out, __fmul_rn(pred_epsilon_coeff, eps));
    if (current_sample_coeff != 0.0f) out = __fadd_rn(out, __fmul_rn(current_sample_coeff, xv));
    if (noise_scale != 0.0f) {
        float scale = noise_scale;
        if (learned_range != 0) {
            const float frac = __fdiv_rn(__fadd_rn(mvar, 1.0f), 2.0f);
            scale = expf(
                __fmul_rn(0.5f, __fadd_rn(__fmul_rn(frac, max_log), __fmul_rn(__fadd_rn(1.0f, -frac), min_log))));
        }
        out = __fadd_rn(out, __fmul_rn(scale, z));
    }
    return out;
}

/// The step noise of NHWC state element `i` (`per = hw * c` values per row).
__device__ __forceinline__ float uq_step_noise(long long i, long long per, int c, int hw, int rows_per_sample,
                                               const unsigned* __restrict__ index_words, unsigned k0, unsigned k1,
                                               unsigned purpose, unsigned sub) {
    const long long row = i / per;
    const long long sample = row / rows_per_sample;
    const unsigned long long j = uq_nchw_index(i - row * per, c, hw);
    return uq_stream_normal(k0, k1, index_words[2 * sample], index_words[2 * sample + 1], purpose, sub, j);
}

/// One sampler step, `apply_step_learned` of src/sampler/mod.rs element-wise: `x` the state
/// (f32, `c` channels), `m` the model output (f16, `mc` channels: `c`, or `2c` with the
/// variance channels after the prediction), `y` the next state. The step noise (when
/// `noise_scale != 0`) is generated here from the samples' StepNoise streams (purpose `purpose`,
/// sub = `sub`), the same number on each of a sample's `rows_per_sample` rows; with
/// `learned_range` its scale is `exp(0.5 * (frac * max_log + (1 - frac) * min_log))`, `frac = (v
/// + 1) / 2`. `eps_from_clipped`: DDIM's eps re-derived from the clipped x0. `prediction`:
/// 0 epsilon, 1 v_prediction, 2 sample.
extern "C" __global__ void sampler_step_f32(const float* __restrict__ x, const f16* __restrict__ m,
                                            float* __restrict__ y, const unsigned* __restrict__ index_words,
                                            unsigned k0, unsigned k1, unsigned purpose, unsigned sub, int c, int hw,
                                            int rows_per_sample, long long n, int prediction, int clip,
                                            float clip_range, float sqrt_alpha, float sqrt_beta,
                                            float pred_original_coeff, float pred_epsilon_coeff,
                                            float current_sample_coeff, float noise_scale, int mc,
                                            int eps_from_clipped, int learned_range, float min_log,
                                            float max_log) {
    const long long per = (long long)hw * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long mi = (i / c) * mc + i % c;
        const float mvar = learned_range != 0 ? uq_ld(m + mi + c) : 0.0f;
        const float z = noise_scale != 0.0f
                            ? uq_step_noise(i, per, c, hw, rows_per_sample, index_words, k0, k1, purpose, sub)
                            : 0.0f;
        y[i] = uq_step_value(x[i], uq_ld(m + mi), mvar, z, prediction, clip, clip_range, sqrt_alpha, sqrt_beta,
                             pred_original_coeff, pred_epsilon_coeff, current_sample_coeff, noise_scale,
                             eps_from_clipped, learned_range, min_log, max_log);
    }
}

/// One output value of the last layer, f32: `sum over (ky, kx, ci) of h * w + bias`, stride 1,
/// as `conv2d_simple` sums it (weights `[member][mc][ky][kx][cin]`, `h` NHWC `[rows, s, s, cin]`).
__device__ __forceinline__ float uq_last_layer_value(const f16* __restrict__ h, const float* __restrict__ w,
                                                     const float* __restrict__ bias, long long row, int oy, int ox,
                                                     int co, int member, int s, int cin, int mc, int ksize,
                                                     int pad) {
    const int K = ksize * ksize * cin;
    const float* wr = w + ((long long)member * mc + co) * K;
    float sum = 0.0f;
    for (int ky = 0; ky < ksize; ++ky) {
        const int iy = oy - pad + ky;
        if (iy < 0 || iy >= s) continue;
        for (int kx = 0; kx < ksize; ++kx) {
            const int ix = ox - pad + kx;
            if (ix < 0 || ix >= s) continue;
            const f16* xp = h + ((row * s + iy) * s + ix) * cin;
            const float* wp = wr + (ky * ksize + kx) * cin;
            for (int ci = 0; ci < cin; ++ci) sum += uq_ld(xp + ci) * wp[ci];
        }
    }
    if (bias) sum += bias[member * mc + co];
    return sum;
}

/// The last layer and the sampler step fused: state element `i` (row r, pixel, channel ch) takes
/// the model output of channel ch (and ch + c, the variance, with `learned_range`) from the last
/// convolution of member `r % members` (stride 1, `s x s` maps, `mc` output channels) on the
/// trunk's features `h`, kept in f32 (not rounded to f16 as a separate convolution stores it),
/// then the step of `sampler_step_f32`. One launch instead of two and no model-output buffer.
extern "C" __global__ void last_layer_step_f32(const f16* __restrict__ h, const float* __restrict__ w,
                                               const float* __restrict__ bias, int cin, int ksize, int pad,
                                               int members, const float* __restrict__ x, float* __restrict__ y,
                                               const unsigned* __restrict__ index_words, unsigned k0, unsigned k1,
                                               unsigned purpose, unsigned sub, int c, int s, int rows_per_sample,
                                               long long n, int prediction, int clip, float clip_range,
                                               float sqrt_alpha, float sqrt_beta, float pred_original_coeff,
                                               float pred_epsilon_coeff, float current_sample_coeff,
                                               float noise_scale, int mc, int eps_from_clipped, int learned_range,
                                               float min_log, float max_log) {
    const int hw = s * s;
    const long long per = (long long)hw * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / per;
        const long long in_row = i - row * per;
        const int p = (int)(in_row / c), ch = (int)(in_row % c);
        const int oy = p / s, ox = p % s, member = (int)(row % members);
        const float mv = uq_last_layer_value(h, w, bias, row, oy, ox, ch, member, s, cin, mc, ksize, pad);
        const float mvar = learned_range != 0
                               ? uq_last_layer_value(h, w, bias, row, oy, ox, ch + c, member, s, cin, mc, ksize, pad)
                               : 0.0f;
        const float z = noise_scale != 0.0f
                            ? uq_step_noise(i, per, c, hw, rows_per_sample, index_words, k0, k1, purpose, sub)
                            : 0.0f;
        y[i] = uq_step_value(x[i], mv, mvar, z, prediction, clip, clip_range, sqrt_alpha, sqrt_beta,
                             pred_original_coeff, pred_epsilon_coeff, current_sample_coeff, noise_scale,
                             eps_from_clipped, learned_range, min_log, max_log);
    }
}

/// The trunk's f16 input from the state: `y = x` or, for a model with `center_input_sample`,
/// `y = 2x - 1` (computed in f32, rounded once).
extern "C" __global__ void state_to_input_f16(const float* __restrict__ x, f16* __restrict__ y, long long n,
                                               int center) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        uq_st(y + i, center ? __fadd_rn(__fmul_rn(2.0f, x[i]), -1.0f) : x[i]);
}

/// Row `r` of `y` is row `r / k` of `x` (each row of `per` values repeated `k` times);
/// `n = rows_out * per`.
extern "C" __global__ void repeat_rows_f32(const float* __restrict__ x, float* __restrict__ y, long long per, int k,
                                           long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / per;
        y[i] = x[(row / k) * per + (i - row * per)];
    }
}

/// The f16 twin of `repeat_rows_f32` (trunk features shared by every member).
extern "C" __global__ void repeat_rows_f16(const f16* __restrict__ x, f16* __restrict__ y, long long per, int k,
                                            long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / per;
        y[i] = x[(row / k) * per + (i - row * per)];
    }
}

/// Row `r` of `y` is row `r * k` of `x` (the first member of every sample); `n = rows_out * per`.
extern "C" __global__ void every_kth_row_f32(const float* __restrict__ x, float* __restrict__ y, long long per,
                                             int k, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / per;
        y[i] = x[row * k * per + (i - row * per)];
    }
}

/// Sinusoidal timestep features `[rows, 2 * half]` (f16) of one timestep `t` for every row:
/// `a = t * freqs[i]`, `(sin a, cos a)` in the halves, or `(cos a, sin a)` with `flip`.
extern "C" __global__ void timestep_features_f16(const float* __restrict__ freqs, f16* __restrict__ y, int rows,
                                                  int half, float t, int flip) {
    const long long n = (long long)rows * half;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / half;
        const int f = (int)(i - row * half);
        const float a = __fmul_rn(t, freqs[f]);
        const float s = sinf(a), co = cosf(a);
        f16* out = y + row * 2 * half;
        uq_st(out + f, flip ? co : s);
        uq_st(out + half + f, flip ? s : co);
    }
}
