//! `c[m, n] (+)= a[m, k] * b[k, n]` with `b` packed once (at model load) into column panels of
//! 32: `[ceil(n / 32)][k][32]`, zero-padded (below 32 columns `b` stays row-major and the
//! general GEMM multiplies). A convolution's weights are the `b` of every call,
//! so packing them at each call (as a general GEMM does) is wasted work, and for the few rows
//! of a small map at batch 1 it costs more than the product. Per panel, blocks of up to 14 rows
//! accumulate in 28 AVX-512 registers over all of k, reading the panel contiguously (it stays in
//! L2 while the row blocks pass) and broadcasting `a` once per row and k.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Columns per panel.
pub const NR: usize = 32;

/// Rows per register block.
const MR: usize = 14;

/// The columns of a packed `[k, n]` matrix: `n` rounded up to whole panels, or `n` itself
/// below one panel (kept row-major: an output layer of 1-16 channels is a matrix-vector product
/// the general GEMM does better than a panel of padding).
pub fn packed_cols(n: usize) -> usize {
    if n < NR {
        n
    } else {
        n.next_multiple_of(NR)
    }
}

/// The packed length of a `[k, n]` matrix.
pub fn packed_len(k: usize, n: usize) -> usize {
    k * packed_cols(n)
}

/// Pack row-major `b` (`[k, n]`) into panels (a copy when `n < NR`).
pub fn pack(k: usize, n: usize, b: &[f32]) -> Vec<f32> {
    assert!(b.len() >= k * n);
    if n < NR {
        return b[..k * n].to_vec();
    }
    let mut p = vec![0.0f32; packed_len(k, n)];
    for (pi, panel) in p.chunks_exact_mut(k * NR).enumerate() {
        let j0 = pi * NR;
        let w = NR.min(n - j0);
        for (kk, row) in panel.chunks_exact_mut(NR).enumerate() {
            row[..w].copy_from_slice(&b[kk * n + j0..kk * n + j0 + w]);
        }
    }
    p
}

/// Pack `e` row-major `[k, n]` matrices stored one after the other (`[e, k, n]`), each into its
/// panels: `e * packed_len(k, n)` floats.
pub fn pack_each(e: usize, k: usize, n: usize, b: &[f32]) -> Vec<f32> {
    assert!(b.len() >= e * k * n);
    let mut out = Vec::with_capacity(e * packed_len(k, n));
    for m in b[..e * k * n].chunks_exact(k * n) {
        out.extend_from_slice(&pack(k, n, m));
    }
    out
}

/// Whether this CPU has the AVX-512 kernel (else a plain loop computes the same products).
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `c (+)= a * b` for packed `bp` ([`pack`]); `a` rows `lda` apart, `c` rows `ldc` apart.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    bp: &[f32],
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k && ldc >= n && a.len() >= (m - 1) * lda + k);
    assert!(c.len() >= (m - 1) * ldc + n && bp.len() >= packed_len(k, n));
    if n < NR {
        // Kept row-major ([`packed_cols`]).
        // SAFETY: sizes checked above; `bp` holds k rows of n floats.
        unsafe {
            super::matmul::sgemm_strided(
                m,
                n,
                k,
                a.as_ptr(),
                lda as isize,
                1,
                bp.as_ptr(),
                n as isize,
                1,
                c.as_mut_ptr(),
                ldc as isize,
                accumulate,
                gemm_common::Parallelism::None,
            )
        };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F; sizes checked above.
        unsafe {
            sgemm_avx512(
                m,
                n,
                k,
                a.as_ptr(),
                lda,
                bp.as_ptr(),
                c.as_mut_ptr(),
                ldc,
                accumulate,
            )
        };
        return;
    }
    for i in 0..m {
        let cr = &mut c[i * ldc..i * ldc + n];
        if !accumulate {
            cr.fill(0.0);
        }
        for kk in 0..k {
            let av = a[i * lda + kk];
            for (j, cv) in cr.iter_mut().enumerate() {
                *cv += av * bp[(j / NR * k + kk) * NR + j % NR];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn sgemm_avx512(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // Row blocks split evenly (16 rows: 8 + 8, not 14 + 2).
    let blocks = m.div_ceil(MR);
    for pi in 0..n.div_ceil(NR) {
        let j0 = pi * NR;
        let w = NR.min(n - j0);
        let lo: __mmask16 = if w >= 16 { 0xffff } else { (1u16 << w) - 1 };
        let hi: __mmask16 = if w >= 32 {
            0xffff
        } else if w > 16 {
            (1u16 << (w - 16)) - 1
        } else {
            0
        };
        let mut i = 0;
        for blk in 0..blocks {
            let r = (m - i).div_ceil(blocks - blk);
            let p = Block {
                a: a.add(i * lda),
                lda,
                b: bp.add(pi * k * NR),
                c: c.add(i * ldc + j0),
                ldc,
                k,
                lo,
                hi,
                accumulate,
            };
            macro_rules! rows {
                ($($r:literal)*) => {
                    match r {
                        $($r => block::<$r>(&p),)*
                        _ => unreachable!(),
                    }
                };
            }
            rows!(1 2 3 4 5 6 7 8 9 10 11 12 13 14);
            i += r;
        }
    }
}

/// Up to 14 rows of `a` against one panel.
#[cfg(target_arch = "x86_64")]
struct Block {
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    k: usize,
    lo: __mmask16,
    hi: __mmask16,
    accumulate: bool,
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block<const R: usize>(p: &Block) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for kk in 0..p.k {
        let br = p.b.add(kk * NR);
        let b0 = _mm512_loadu_ps(br);
        let b1 = _mm512_loadu_ps(br.add(16));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*p.a.add(r * p.lda + kk));
            acc_r[0] = _mm512_fmadd_ps(av, b0, acc_r[0]);
            acc_r[1] = _mm512_fmadd_ps(av, b1, acc_r[1]);
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let cr = p.c.add(r * p.ldc);
        let (mut v0, mut v1) = (acc_r[0], acc_r[1]);
        if p.accumulate {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(p.lo, cr));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(p.hi, cr.add(16)));
        }
        _mm512_mask_storeu_ps(cr, p.lo, v0);
        _mm512_mask_storeu_ps(cr.add(16), p.hi, v1);
    }
}

#[cfg(test)]
mod tests {
    /// Against the f64 triple loop at odd sizes (partial row blocks and panels, strides wider
    /// than the rows), with and without accumulation; columns past `n` stay untouched.
    #[test]
    fn packed_product_equals_the_definition() {
        for (m, n, k) in [
            (1, 1, 1),
            (5, 17, 9),
            (14, 32, 64),
            (15, 33, 7),
            (40, 100, 31),
        ] {
            let (lda, ldc) = (k + 3, n + 2);
            let val = |i: usize, s: usize| ((i * 7919 + s * 104729) % 2001) as f32 / 1000.0 - 1.0;
            let a: Vec<f32> = (0..m * lda).map(|i| val(i, 1)).collect();
            let b: Vec<f32> = (0..k * n).map(|i| val(i, 2)).collect();
            let bp = super::pack(k, n, &b);
            for accumulate in [false, true] {
                let c0: Vec<f32> = (0..m * ldc).map(|i| val(i, 3)).collect();
                let mut c = c0.clone();
                super::sgemm(m, n, k, &a, lda, &bp, &mut c, ldc, accumulate);
                for i in 0..m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j] as f64;
                        let want = if j < n {
                            let s: f64 = (0..k)
                                .map(|q| a[i * lda + q] as f64 * b[q * n + j] as f64)
                                .sum();
                            s + if accumulate {
                                c0[i * ldc + j] as f64
                            } else {
                                0.0
                            }
                        } else {
                            c0[i * ldc + j] as f64
                        };
                        assert!(
                            (got - want).abs() <= 1e-5 * (k as f64 + 1.0),
                            "{m}x{n}x{k} acc={accumulate} [{i},{j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
