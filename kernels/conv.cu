// Convolution (and linear layers, as 1x1 convolutions over a 1 x rows image), NHWC f16 with f32
// accumulation, as an implicit GEMM: no im2col buffer. Per sample s the GEMM has
//   rows = output pixels (ho * wo), columns = cout, K = ksize * ksize * cin,
// with weights prepared as w[member][cout][ky][kx][cin] (K contiguous per output channel).
//
//   y[s, p, co] = act(sum_k in'[s, p, k] * w[s % members][co][k] + bias[s % members][co]) + residual[s, p, co]
//
// in' = x, or (when `stats` is not null) the fused GroupNorm(+SiLU) prologue applied while tiles
// are loaded: (x - mean) * rstd * gamma + beta (then SiLU); zero padding stays zero, as in
// conv(silu(group_norm(x))). `members` > 1 gives the per-member last layer (sample s uses weight
// set s % members). FLOPs: 2 * n * ho * wo * cout * K; bytes: activations once per column tile,
// weights once per row tile.
#include "uq_common.cuh"
#include "uq_mma.cuh"

#define CONV_BM 64
#define CONV_BN 64
#define CONV_BK 32
// Row stride of the shared tiles: 40 f16 = 80 bytes keeps ldmatrix rows 16-byte aligned and
// spreads the 8 rows of each 8x8 matrix over distinct bank groups.
#define CONV_LDS (CONV_BK + 8)

/// One input element of the implicit im2col matrix with the optional GroupNorm(+SiLU) prologue.
__device__ __forceinline__ float conv_prologue(float v, int s, int ci, const float* __restrict__ stats,
                                               const float* __restrict__ gamma, const float* __restrict__ beta,
                                               int groups, int cpg, int norm_silu) {
    const float* st = stats + (s * groups + ci / cpg) * 2;
    v = (v - st[0]) * st[1] * gamma[ci] + beta[ci];
    if (norm_silu) v = v * uq_sigmoid(v);
    return v;
}

/// Tensor-core path: 64x64 output tile per block of 128 threads (4 warps of 32x32), K in steps
/// of 32, f16 mma.sync m16n8k16 with f32 accumulators. Grid (ceil(ho*wo/64), ceil(cout/64), n).
/// Launch bounds (128 threads, 4 blocks per SM): ptxas may use 128 registers (4 blocks fill the
/// register file); with the thread count alone it chose 96 and spilled one word on sm_90.
extern "C" __global__ void __launch_bounds__(128, 4) conv2d_mma(
    const f16* __restrict__ x, const f16* __restrict__ w, const float* __restrict__ bias,
    const f16* __restrict__ residual, f16* __restrict__ y, const float* __restrict__ stats,
    const float* __restrict__ gamma, const float* __restrict__ beta, int h, int wd, int cin, int ho, int wo,
    int cout, int ksize, int stride, int pad, int members, int groups, int norm_silu, int act) {
    __shared__ __align__(16) f16 As[2][CONV_BM][CONV_LDS];
    __shared__ __align__(16) f16 Bs[2][CONV_BN][CONV_LDS];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    const int s = blockIdx.z, member = s % members;
    const int P = ho * wo, K = ksize * ksize * cin;
    const int row0 = blockIdx.x * CONV_BM, col0 = blockIdx.y * CONV_BN;
    const bool norm = stats != nullptr;
    const int cpg = norm ? cin / groups : 1;
    const bool vec_a = (cin % 8) == 0 && (((unsigned long long)x) & 15) == 0;
    const bool vec_b = (K % 8) == 0 && (((unsigned long long)w) & 15) == 0;
    const f16* wm_base = w + (long long)member * cout * K;

    // Each thread loads two 8-element chunks of each tile: chunk c -> row c / 4, k offset (c % 4) * 8.
    int a_iy0[2], a_ix0[2], a_ok[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int c = tid + 128 * i, pix = row0 + (c >> 2);
        a_ok[i] = pix < P;
        const int oy = a_ok[i] ? pix / wo : 0, ox = a_ok[i] ? pix % wo : 0;
        a_iy0[i] = oy * stride - pad;
        a_ix0[i] = ox * stride - pad;
    }

    float acc[2][4][4];
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[a][b][e] = 0.0f;

    // Global -> registers for the K step starting at k0 (8 consecutive k per chunk).
    auto load = [&](int k0, uint4(&ra)[2], uint4(&rb)[2]) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int c = tid + 128 * i, kc = (c & 3) * 8, kg = k0 + kc;
            // A chunk: 8 consecutive k of one output pixel.
            unsigned pa[4];
            if (vec_a) {
                bool ok = a_ok[i] && kg < K;
                int tap = 0, ci = 0, iy = 0, ix = 0;
                if (ok) {
                    tap = kg / cin;
                    ci = kg - tap * cin;
                    iy = a_iy0[i] + tap / ksize;
                    ix = a_ix0[i] + tap % ksize;
                    ok = iy >= 0 && iy < h && ix >= 0 && ix < wd;
                }
                uint4 raw = make_uint4(0u, 0u, 0u, 0u);
                if (ok) raw = *reinterpret_cast<const uint4*>(x + (((long long)s * h + iy) * wd + ix) * cin + ci);
                pa[0] = raw.x;
                pa[1] = raw.y;
                pa[2] = raw.z;
                pa[3] = raw.w;
                if (norm && ok) {
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        pa[j] = uq_pack_f16x2(
                            conv_prologue(uq_f16_lo(pa[j]), s, ci + 2 * j, stats, gamma, beta, groups, cpg, norm_silu),
                            conv_prologue(uq_f16_hi(pa[j]), s, ci + 2 * j + 1, stats, gamma, beta, groups, cpg, norm_silu));
                }
            } else {
                float va[8];
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const int kk = kg + j;
                    float v = 0.0f;
                    if (a_ok[i] && kk < K) {
                        const int tap = kk / cin, ci = kk - tap * cin;
                        const int iy = a_iy0[i] + tap / ksize, ix = a_ix0[i] + tap % ksize;
                        if (iy >= 0 && iy < h && ix >= 0 && ix < wd) {
                            v = uq_ld(x + (((long long)s * h + iy) * wd + ix) * cin + ci);
                            if (norm) v = conv_prologue(v, s, ci, stats, gamma, beta, groups, cpg, norm_silu);
                        }
                    }
                    va[j] = v;
                }
#pragma unroll
                for (int j = 0; j < 4; ++j) pa[j] = uq_pack_f16x2(va[2 * j], va[2 * j + 1]);
            }
            ra[i] = make_uint4(pa[0], pa[1], pa[2], pa[3]);
            // B chunk: 8 consecutive k of one output channel.
            const int co = col0 + (c >> 2);
            if (co < cout && vec_b && kg + 8 <= K) {
                rb[i] = *reinterpret_cast<const uint4*>(wm_base + (long long)co * K + kg);
            } else {
                unsigned pb[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int k1 = kg + 2 * j;
                    const float b0 = (co < cout && k1 < K) ? uq_ld(wm_base + (long long)co * K + k1) : 0.0f;
                    const float b1 = (co < cout && k1 + 1 < K) ? uq_ld(wm_base + (long long)co * K + k1 + 1) : 0.0f;
                    pb[j] = uq_pack_f16x2(b0, b1);
                }
                rb[i] = make_uint4(pb[0], pb[1], pb[2], pb[3]);
            }
        }
    };
    auto store = [&](int buf, const uint4(&ra)[2], const uint4(&rb)[2]) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int c = tid + 128 * i;
            *reinterpret_cast<uint4*>(&As[buf][c >> 2][(c & 3) * 8]) = ra[i];
            *reinterpret_cast<uint4*>(&Bs[buf][c >> 2][(c & 3) * 8]) = rb[i];
        }
    };

    // Double-buffered main loop: the next step's global loads are in flight while the tensor
    // cores work on the current shared tiles; one barrier per step.
    uint4 ra[2], rb[2];
    load(0, ra, rb);
    store(0, ra, rb);
    __syncthreads();
    int buf = 0;
    for (int k0 = 0; k0 < K; k0 += CONV_BK) {
        const bool more = k0 + CONV_BK < K;
        if (more) load(k0 + CONV_BK, ra, rb);
#pragma unroll
        for (int kk = 0; kk < CONV_BK; kk += 16) {
            // Fragments of the warp's 32x32 tile: A for two m16 tiles, B for four n8 tiles (two
            // x4 loads of 16 columns each), then 2 x 4 mma.sync.
            const void* rows[4] = {
                &As[buf][wm * 32 + (lane & 7) + ((lane >> 3) & 1) * 8][kk + (lane >> 4) * 8],
                &As[buf][wm * 32 + 16 + (lane & 7) + ((lane >> 3) & 1) * 8][kk + (lane >> 4) * 8],
                &Bs[buf][wn * 32 + (lane & 7) + (lane >> 4) * 8][kk + ((lane >> 3) & 1) * 8],
                &Bs[buf][wn * 32 + 16 + (lane & 7) + (lane >> 4) * 8][kk + ((lane >> 3) & 1) * 8],
            };
            unsigned fr[4][4];
            ldmatrix_x4_multi<4>(fr, rows);
            unsigned af[2][4], bfr[4][2];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                af[0][i] = fr[0][i];
                af[1][i] = fr[1][i];
            }
#pragma unroll
            for (int np = 0; np < 2; ++np) {
                bfr[2 * np][0] = fr[2 + np][0];
                bfr[2 * np][1] = fr[2 + np][1];
                bfr[2 * np + 1][0] = fr[2 + np][2];
                bfr[2 * np + 1][1] = fr[2 + np][3];
            }
            mma_tile_m16n8k16_f16<2, 4>(acc, af, bfr);
        }
        if (more) store(buf ^ 1, ra, rb);
        __syncthreads();
        buf ^= 1;
    }

    // Epilogue: bias, activation, residual; accumulator (mt, nt, e) sits at row g (+8 for e >= 2),
    // column 2t + (e & 1) of its 16x8 tile.
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int row = row0 + wm * 32 + mt * 16 + g + (e >= 2 ? 8 : 0);
                const int co = col0 + wn * 32 + nt * 8 + 2 * t + (e & 1);
                if (row >= P || co >= cout) continue;
                float v = acc[mt][nt][e];
                if (bias) v += bias[member * cout + co];
                v = uq_activate(v, act);
                const long long idx = ((long long)s * P + row) * cout + co;
                if (residual) v += uq_ld(residual + idx);
                uq_st(y + idx, v);
            }
}

/// Plain f32 path for the edges of a network (few input or output channels, where a 64x64
/// tensor-core tile would be mostly padding): one thread per output element, same semantics as
/// conv2d_mma, with f32 weights (these layers are small; the last layer's members differ by
/// posterior draws finer than f16's spacing). Grid-stride over n * ho * wo * cout outputs.
extern "C" __global__ void conv2d_simple(const f16* __restrict__ x, const float* __restrict__ w,
                                         const float* __restrict__ bias, const f16* __restrict__ residual,
                                         f16* __restrict__ y, const float* __restrict__ stats,
                                         const float* __restrict__ gamma, const float* __restrict__ beta, int n, int h,
                                         int wd, int cin, int ho, int wo, int cout, int ksize, int stride, int pad,
                                         int members, int groups, int norm_silu, int act) {
    const long long total = (long long)n * ho * wo * cout;
    const int K = ksize * ksize * cin;
    const bool norm = stats != nullptr;
    const int cpg = norm ? cin / groups : 1;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int co = (int)(i % cout);
        long long r = i / cout;
        const int ox = (int)(r % wo);
        r /= wo;
        const int oy = (int)(r % ho);
        const int s = (int)(r / ho), member = s % members;
        const float* wr = w + ((long long)member * cout + co) * K;
        float sum = 0.0f;
        for (int ky = 0; ky < ksize; ++ky) {
            const int iy = oy * stride - pad + ky;
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < ksize; ++kx) {
                const int ix = ox * stride - pad + kx;
                if (ix < 0 || ix >= wd) continue;
                const f16* xp = x + (((long long)s * h + iy) * wd + ix) * cin;
                const float* wp = wr + (ky * ksize + kx) * cin;
                for (int ci = 0; ci < cin; ++ci) {
                    float v = uq_ld(xp + ci);
                    if (norm) v = conv_prologue(v, s, ci, stats, gamma, beta, groups, cpg, norm_silu);
                    sum += v * wp[ci];
                }
            }
        }
        if (bias) sum += bias[member * cout + co];
        sum = uq_activate(sum, act);
        if (residual) sum += uq_ld(residual + i);
        uq_st(y + i, sum);
    }
}
