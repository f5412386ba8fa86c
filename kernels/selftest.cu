// Self-tests of the device features the kernels rely on (warp shuffles and votes, block
// reductions, early exit, dynamic shared memory, ldmatrix + f16 mma fragments). They run on the
// emulated device and on a GPU alike, so a GPU run checks that the emulator's layouts match the
// hardware (tests/emu_selftest.rs).
#include "uq_common.cuh"
#include "uq_mma.cuh"

/// One block of `blockDim.x` threads (a multiple of 32). Per thread t, out[t * 8 + i] holds:
/// 0 shfl from lane 5, 1 shfl_xor 3, 2 shfl_down 4, 3 shfl_up 2, 4 ballot(t odd), 5 any(t == 7),
/// 6 all(t < 1000), 7 warp sum of t.
extern "C" __global__ void selftest_warp(int* out) {
    const int t = threadIdx.x;
    int* o = out + t * 8;
    o[0] = __shfl_sync(UQ_FULL_MASK, t * 10, 5);
    o[1] = __shfl_xor_sync(UQ_FULL_MASK, t * 10, 3);
    o[2] = __shfl_down_sync(UQ_FULL_MASK, t * 10, 4);
    o[3] = __shfl_up_sync(UQ_FULL_MASK, t * 10, 2);
    o[4] = (int)__ballot_sync(UQ_FULL_MASK, t & 1);
    o[5] = __any_sync(UQ_FULL_MASK, t == 7);
    o[6] = __all_sync(UQ_FULL_MASK, t < 1000);
    o[7] = (int)uq_warp_sum((float)t);
}

/// out[b] = sum of x[b * per_block ..][..per_block]. Threads at or above `exit_from` (a multiple
/// of 32) return after publishing their partial sums in dynamic shared memory, so the later
/// barrier runs with exited threads, as kernels with tail guards do.
extern "C" __global__ void selftest_block_sum(const float* __restrict__ x, float* __restrict__ out, int per_block,
                                              int exit_from) {
    __shared__ float scratch[33];
    UQ_DYNAMIC_SMEM(float, partial);
    float v = 0.0f;
    for (int i = threadIdx.x; i < per_block; i += blockDim.x) v += x[(long long)blockIdx.x * per_block + i];
    partial[threadIdx.x] = v;
    __syncthreads();
    if ((int)threadIdx.x >= exit_from) return;
    // The remaining threads (a multiple of 32 of them) also sum the exited threads' partials.
    float w = partial[threadIdx.x];
    for (int j = threadIdx.x + exit_from; j < (int)blockDim.x; j += exit_from) w += partial[j];
    // uq_block_sum needs every thread of the block; do a warp-level reduction instead.
    w = uq_warp_sum(w);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = w;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int k = 0; k < exit_from / 32; ++k) s += scratch[k];
        out[blockIdx.x] = s;
    }
}

/// One warp: C[16][8] = A[16][16] * B[16][8] with A row-major and B given as bt[8][16] (n-major),
/// through ldmatrix_x4 / ldmatrix_x2 and mma_m16n8k16_f16; and, from the same B stored k-major
/// (b[16][8]), through ldmatrix_x2_trans into c2.
extern "C" __global__ void selftest_mma(const f16* __restrict__ a, const f16* __restrict__ bt,
                                        const f16* __restrict__ b, float* __restrict__ c, float* __restrict__ c2) {
    __shared__ __align__(16) f16 As[16][24];
    __shared__ __align__(16) f16 Bs[8][24];
    __shared__ __align__(16) f16 Bk[16][16];
    const int l = threadIdx.x;
    for (int i = l; i < 256; i += 32) As[i / 16][i % 16] = a[i];
    for (int i = l; i < 128; i += 32) {
        Bs[i / 16][i % 16] = bt[i];
        Bk[i / 8][i % 8] = b[i];
    }
    __syncthreads();
    unsigned af[4], bf[2], bk[2];
    const int j = l / 8, r = l % 8;
    ldmatrix_x4(af, &As[r + (j & 1) * 8][(j >> 1) * 8]);
    ldmatrix_x2(bf, &Bs[r][(j & 1) * 8]);
    ldmatrix_x2_trans(bk, &Bk[r + (j & 1) * 8][0]);
    const float z[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float d[4], d2[4];
    mma_m16n8k16_f16(d, af, bf, z);
    mma_m16n8k16_f16(d2, af, bk, z);
    const int g = l / 4, t = l % 4;
    c[g * 8 + 2 * t] = d[0];
    c[g * 8 + 2 * t + 1] = d[1];
    c[(g + 8) * 8 + 2 * t] = d[2];
    c[(g + 8) * 8 + 2 * t + 1] = d[3];
    c2[g * 8 + 2 * t] = d2[0];
    c2[g * 8 + 2 * t + 1] = d2[1];
    c2[(g + 8) * 8 + 2 * t] = d2[2];
    c2[(g + 8) * 8 + 2 * t + 1] = d2[3];
}

/// y[i] = bits of bf16(x[i]) and f16(x[i]) (round to nearest even), one element per thread.
extern "C" __global__ void selftest_convert(const float* __restrict__ x, unsigned* __restrict__ y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = (unsigned)__bfloat16_as_ushort(__float2bfloat16(x[i])) |
           ((unsigned)__half_as_ushort(__float2half(x[i])) << 16);
}
