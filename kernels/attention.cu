// Fused scaled dot-product attention, f16 in/out, f32 scores and online softmax (one pass over
// the keys, no score matrix in memory). q: [n, lq, heads * dh], k, v: [n, lk, heads * dh].
// Block: 16 query rows of one head of one sample, 4 warps x 4 rows; keys in tiles of 32 (lane j
// scores key j). FLOPs: 4 * n * heads * lq * lk * dh; bytes: q, out once, k, v once per 16 rows.
#include "uq_common.cuh"

#define ATT_ROWS 16
#define ATT_KT 32
#define ATT_MAX_DH 256

/// Dynamic shared memory: (16 * dh + 32 * (dh + 1) + 32 * dh + 4 * 32) floats. dh <= 256.
/// Grid (ceil(lq / 16), heads, n), block 128.
extern "C" __global__ void __launch_bounds__(128) attention_f16(const f16* __restrict__ q, const f16* __restrict__ k,
                                                                 const f16* __restrict__ v, f16* __restrict__ out,
                                                                 int lq, int lk, int heads, int dh, float scale) {
    UQ_DYNAMIC_SMEM(float, sm);
    float* Qs = sm;                          // [16][dh], pre-scaled
    float* Ks = Qs + ATT_ROWS * dh;          // [32][dh + 1]
    float* Vs = Ks + ATT_KT * (dh + 1);      // [32][dh]
    float* Ps = Vs + ATT_KT * dh;            // [4 warps][32]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int q0 = blockIdx.x * ATT_ROWS, hh = blockIdx.y, s = blockIdx.z;
    const long long ld = (long long)heads * dh;
    const f16* qb = q + (long long)s * lq * ld + hh * dh;
    const f16* kb = k + (long long)s * lk * ld + hh * dh;
    const f16* vb = v + (long long)s * lk * ld + hh * dh;

    for (int i = tid; i < ATT_ROWS * dh; i += blockDim.x) {
        const int r = i / dh, d = i % dh;
        Qs[i] = q0 + r < lq ? uq_ld(qb + (q0 + r) * ld + d) * scale : 0.0f;
    }
    float m[4], l[4], acc[4][ATT_MAX_DH / 32];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        m[r] = UQ_NEG_INF;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_MAX_DH / 32; ++i) acc[r][i] = 0.0f;
    }

    for (int kt = 0; kt < lk; kt += ATT_KT) {
        __syncthreads();  // previous tile consumed (and Qs written, on the first pass)
        for (int i = tid; i < ATT_KT * dh; i += blockDim.x) {
            const int j = i / dh, d = i % dh;
            const bool ok = kt + j < lk;
            Ks[j * (dh + 1) + d] = ok ? uq_ld(kb + (kt + j) * ld + d) : 0.0f;
            Vs[j * dh + d] = ok ? uq_ld(vb + (kt + j) * ld + d) : 0.0f;
        }
        __syncthreads();
        const bool key_ok = kt + lane < lk;
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const float* qr = Qs + (warp * 4 + r) * dh;
            const float* kr = Ks + lane * (dh + 1);
            float sc = 0.0f;
            for (int d = 0; d < dh; ++d) sc += qr[d] * kr[d];
            if (!key_ok) sc = UQ_NEG_INF;
            const float m_new = fmaxf(m[r], uq_warp_max(sc));
            const float p = key_ok ? expf(sc - m_new) : 0.0f;
            const float alpha = expf(m[r] - m_new);
            l[r] = l[r] * alpha + uq_warp_sum(p);
            m[r] = m_new;
            Ps[warp * 32 + lane] = p;
            __syncwarp();
#pragma unroll
            for (int i = 0; i < ATT_MAX_DH / 32; ++i) {
                const int d = lane + 32 * i;
                if (d < dh) {
                    float a = acc[r][i] * alpha;
                    for (int j = 0; j < ATT_KT; ++j) a += Ps[warp * 32 + j] * Vs[j * dh + d];
                    acc[r][i] = a;
                }
            }
            __syncwarp();
        }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int qi = q0 + warp * 4 + r;
        if (qi >= lq) continue;
        const float inv = 1.0f / l[r];
#pragma unroll
        for (int i = 0; i < ATT_MAX_DH / 32; ++i) {
            const int d = lane + 32 * i;
            if (d < dh) uq_st(out + (long long)s * lq * ld + qi * ld + hh * dh + d, acc[r][i] * inv);
        }
    }
}
