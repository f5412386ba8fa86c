// Tensor-core fragment helpers (f16 mma.sync m16n8k16 with f32 accumulation, ldmatrix loads).
// On the device they are single PTX instructions; under UQ_EMU the same per-lane fragment layouts
// (PTX ISA, "Matrix fragments for mma.m16n8k16" and "ldmatrix") are computed on the host through
// the warp's exchange slots.
//
// Fragment layouts, lane l, g = l / 4, t = l % 4 (each 32-bit register holds two f16, the lower
// column/row index in the low half):
//   A (16x16, row-major): a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] = A[g][2t+8..],
//                         a[3] = A[g+8][2t+8..]
//   B (16x8, "col"):      b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]
//   C, D (16x8 f32):      c[0], c[1] = C[g][2t], C[g][2t+1]; c[2], c[3] = C[g+8][2t], C[g+8][2t+1]
#pragma once
#include "uq_common.cuh"

#ifndef UQ_EMU

/// d = A * B + c for one 16x8x16 tile (f16 inputs, f32 accumulators), warp-wide.
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}

/// Four 8x8 b16 matrices from shared memory: lanes 8j..8j+7 give the row addresses of matrix j
/// (16-byte aligned rows of 8 elements); r[j] = matrix j's elements (g, 2t), (g, 2t+1).
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* row) {
    const unsigned addr = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
/// Two 8x8 b16 matrices (row addresses from lanes 0..15).
__device__ __forceinline__ void ldmatrix_x2(unsigned r[2], const void* row) {
    const unsigned addr = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}
/// Transposed form: r[j] = matrix j's elements (2t, g), (2t+1, g).
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const void* row) {
    const unsigned addr = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned r[2], const void* row) {
    const unsigned addr = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}

/// acc[m][n] += A_m * B_n for an M x N grid of 16x8x16 tiles (one warp tile of a GEMM).
template <int M, int N>
__device__ __forceinline__ void mma_tile_m16n8k16_f16(float (&acc)[M][N][4], const unsigned (&a)[M][4],
                                                       const unsigned (&b)[N][2]) {
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int n = 0; n < N; ++n) mma_m16n8k16_f16(acc[m][n], a[m], b[n], acc[m][n]);
}

/// N independent ldmatrix_x4 loads (row addresses rows[i], results r[i]).
template <int N>
__device__ __forceinline__ void ldmatrix_x4_multi(unsigned (&r)[N][4], const void* const (&rows)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) ldmatrix_x4(r[i], rows[i]);
}

#else  // UQ_EMU

namespace uq_emu {
inline float f16_lo(unsigned r) { return f16_bits_to_f32((unsigned short)(r & 0xffffu)); }
inline float f16_hi(unsigned r) { return f16_bits_to_f32((unsigned short)(r >> 16)); }
inline float f16_half(unsigned r, int hi) { return hi ? f16_hi(r) : f16_lo(r); }

/// Element (row, k) of the A fragments the warp published at slot words base..base+3.
inline float frag_a(int base, int row, int k) {
    const int l = (row % 8) * 4 + (k % 8) / 2, reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
    return f16_half(get<unsigned>(l, base + reg), k & 1);
}
/// Element (k, n) of the B fragments the warp published at slot words base, base+1.
inline float frag_b(int base, int k, int n) {
    const int l = n * 4 + (k % 8) / 2, reg = k >= 8 ? 1 : 0;
    return f16_half(get<unsigned>(l, base + reg), k & 1);
}

template <int N, bool Trans>
inline void ldmatrix(unsigned* r, const void* row) {
    Warp& w = warp();
    const unsigned l = lane();
    put(l, 0, row);
    w.sync();
    const unsigned g = l / 4, t = l % 4;
    for (int j = 0; j < N; ++j) {
        unsigned short lo, hi;
        if (!Trans) {
            const auto* p = static_cast<const unsigned short*>(get<const void*>(8 * j + g, 0));
            lo = p[2 * t];
            hi = p[2 * t + 1];
        } else {
            const auto* p0 = static_cast<const unsigned short*>(get<const void*>(8 * j + 2 * t, 0));
            const auto* p1 = static_cast<const unsigned short*>(get<const void*>(8 * j + 2 * t + 1, 0));
            lo = p0[g];
            hi = p1[g];
        }
        r[j] = unsigned(lo) | (unsigned(hi) << 16);
    }
    w.sync();
}
}  // namespace uq_emu

// The batched helpers exchange all fragments at once: two warp barriers instead of two per tile.
template <int M, int N>
inline void mma_tile_m16n8k16_f16(float (&acc)[M][N][4], const unsigned (&a)[M][4], const unsigned (&b)[N][2]) {
    static_assert(M * 4 + N * 2 <= 16, "fragments exceed the warp's exchange slots");
    uq_emu::Warp& w = uq_emu::warp();
    const unsigned l = uq_emu::lane();
    for (int m = 0; m < M; ++m)
        for (int i = 0; i < 4; ++i) uq_emu::put(l, m * 4 + i, a[m][i]);
    for (int n = 0; n < N; ++n)
        for (int j = 0; j < 2; ++j) uq_emu::put(l, M * 4 + n * 2 + j, b[n][j]);
    static_assert(M <= 4 && N <= 8, "decoded tiles exceed the warp's buffers");
    w.sync();
    // The first lane to resume decodes every published fragment to f32 once for the warp.
    if (w.first_after_barrier(w.mma_phase)) {
        for (int m = 0; m < M; ++m)
            for (int row = 0; row < 16; ++row)
                for (int k = 0; k < 16; ++k) w.mma_a[m][row][k] = uq_emu::frag_a(m * 4, row, k);
        for (int n = 0; n < N; ++n)
            for (int k = 0; k < 16; ++k)
                for (int col = 0; col < 8; ++col) w.mma_b[n][k][col] = uq_emu::frag_b(M * 4 + n * 2, k, col);
    }
    // This lane's D elements, each summed over k in order from zero, then added to acc.
    const int g = (int)l / 4, t = (int)l % 4;
    float out[M][N][4];
    for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n)
            for (int i = 0; i < 4; ++i) {
                const float* ar = w.mma_a[m][g + (i >= 2 ? 8 : 0)];
                const int col = 2 * t + (i & 1);
                float s = 0.0f;
                for (int k = 0; k < 16; ++k) s += ar[k] * w.mma_b[n][k][col];
                out[m][n][i] = s;
            }
    w.sync();
    for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n)
            for (int i = 0; i < 4; ++i) acc[m][n][i] += out[m][n][i];
}
/// One tile: the batched helper with a single A and B fragment.
inline void mma_m16n8k16_f16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    float acc[1][1][4] = {{{c[0], c[1], c[2], c[3]}}};
    const unsigned af[1][4] = {{a[0], a[1], a[2], a[3]}};
    const unsigned bf[1][2] = {{b[0], b[1]}};
    mma_tile_m16n8k16_f16<1, 1>(acc, af, bf);
    for (int i = 0; i < 4; ++i) d[i] = acc[0][0][i];
}

template <int N>
inline void ldmatrix_x4_multi(unsigned (&r)[N][4], const void* const (&rows)[N]) {
    static_assert(N <= 16, "addresses exceed the warp's exchange slots");
    uq_emu::Warp& w = uq_emu::warp();
    const unsigned l = uq_emu::lane(), g = l / 4, t = l % 4;
    for (int i = 0; i < N; ++i) uq_emu::put(l, i, rows[i]);
    w.sync();
    for (int i = 0; i < N; ++i)
        for (int j = 0; j < 4; ++j) {
            const auto* p = static_cast<const unsigned short*>(uq_emu::get<const void*>(8 * j + g, i));
            r[i][j] = unsigned(p[2 * t]) | (unsigned(p[2 * t + 1]) << 16);
        }
    w.sync();
}
inline void ldmatrix_x4(unsigned r[4], const void* row) { uq_emu::ldmatrix<4, false>(r, row); }
inline void ldmatrix_x2(unsigned r[2], const void* row) { uq_emu::ldmatrix<2, false>(r, row); }
inline void ldmatrix_x4_trans(unsigned r[4], const void* row) { uq_emu::ldmatrix<4, true>(r, row); }
inline void ldmatrix_x2_trans(unsigned r[2], const void* row) { uq_emu::ldmatrix<2, true>(r, row); }

#endif
