// GroupNorm and LayerNorm on f16 activations with f32 statistics. Deterministic: statistics are
// block reductions in a fixed order, no atomics. Two passes (mean, then centred variance) for
// accuracy. Bytes: stats reads the group twice (4 B/elem), apply reads 2 + writes 2 B/elem.
#include "uq_common.cuh"

/// GroupNorm statistics of NHWC x[n, hw, c]: one block per (group, sample), grid (groups, n).
/// stats[(s * groups + g) * 2] = mean, [.. + 1] = 1 / sqrt(var + eps) (biased variance).
extern "C" __global__ void __launch_bounds__(256) group_norm_stats(const f16* __restrict__ x, float* __restrict__ stats,
                                                                   int hw, int c, int groups, float eps) {
    __shared__ float scratch[33];
    const int g = blockIdx.x, s = blockIdx.y, cpg = c / groups;
    const long long count = (long long)hw * cpg;
    const f16* base = x + (long long)s * hw * c + g * cpg;
    float acc = 0.0f;
    for (long long j = threadIdx.x; j < count; j += blockDim.x) acc += uq_ld(base + (j / cpg) * c + (j % cpg));
    const float mean = uq_block_sum(acc, scratch) / (float)count;
    float acc2 = 0.0f;
    for (long long j = threadIdx.x; j < count; j += blockDim.x) {
        const float d = uq_ld(base + (j / cpg) * c + (j % cpg)) - mean;
        acc2 += d * d;
    }
    const float var = uq_block_sum(acc2, scratch) / (float)count;
    if (threadIdx.x == 0) {
        stats[(s * groups + g) * 2] = mean;
        stats[(s * groups + g) * 2 + 1] = rsqrtf(var + eps);
    }
}

/// y = (x - mean) * rstd * gamma[c] + beta[c], then SiLU if `silu`; x, y NHWC with `hw`
/// positions per sample, `n` elements in all.
extern "C" __global__ void group_norm_apply(const f16* __restrict__ x, const float* __restrict__ stats,
                                            const float* __restrict__ gamma, const float* __restrict__ beta,
                                            f16* __restrict__ y, long long n, int hw, int c, int groups, int silu) {
    const int cpg = c / groups;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const int ch = (int)(i % c);
        const long long s = i / ((long long)hw * c);
        const float* st = stats + (s * groups + ch / cpg) * 2;
        float v = (uq_ld(x + i) - st[0]) * st[1] * gamma[ch] + beta[ch];
        if (silu) v = v * uq_sigmoid(v);
        uq_st(y + i, v);
    }
}

/// The scale-shift norm: y = act(((x - mean) * rstd * gamma[c] + beta[c]) * (1 + ss[s, c]) +
/// ss[s, C + c]) with `ss` [n, 2C] (f16: the time projection's output) holding each sample's
/// scale then shift. Bytes: reads 2 (+ the small ss rows), writes 2 B/elem.
extern "C" __global__ void group_norm_scale_shift_apply(const f16* __restrict__ x, const float* __restrict__ stats,
                                                        const float* __restrict__ gamma,
                                                        const float* __restrict__ beta, const f16* __restrict__ ss,
                                                        f16* __restrict__ y, long long n, int hw, int c, int groups,
                                                        int silu) {
    const int cpg = c / groups;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const int ch = (int)(i % c);
        const long long s = i / ((long long)hw * c);
        const float* st = stats + (s * groups + ch / cpg) * 2;
        float v = (uq_ld(x + i) - st[0]) * st[1] * gamma[ch] + beta[ch];
        v = v * (1.0f + uq_ld(ss + s * 2 * c + ch)) + uq_ld(ss + s * 2 * c + c + ch);
        if (silu) v = v * uq_sigmoid(v);
        uq_st(y + i, v);
    }
}

/// LayerNorm over the last dimension: one block per row of x[rows, dim].
extern "C" __global__ void __launch_bounds__(256) layer_norm_f16(const f16* __restrict__ x, const float* __restrict__ gamma,
                                                                  const float* __restrict__ beta, f16* __restrict__ y,
                                                                  int dim, float eps) {
    __shared__ float scratch[33];
    const f16* row = x + (long long)blockIdx.x * dim;
    f16* out = y + (long long)blockIdx.x * dim;
    float acc = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) acc += uq_ld(row + j);
    const float mean = uq_block_sum(acc, scratch) / (float)dim;
    float acc2 = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        const float d = uq_ld(row + j) - mean;
        acc2 += d * d;
    }
    const float rstd = rsqrtf(uq_block_sum(acc2, scratch) / (float)dim + eps);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) uq_st(out + j, (uq_ld(row + j) - mean) * rstd * gamma[j] + beta[j]);
}
