//! Vectorised element-wise kernels of the CPU backend: `exp` by range reduction and a degree-7
//! polynomial (within 2 ulp of `f32::exp` on the range softmax and SiLU use), the row softmax of
//! attention, and the GroupNorm apply (+ scale-shift + SiLU). Each kernel is one plain loop
//! compiled for AVX2 (and the GroupNorm apply also for AVX-512) when the CPU has it (chosen at
//! run time) and for the baseline; the arithmetic is the same in all (no fused multiply-add), so
//! all give the same bits.

/// `exp(x)` for `x` in `[-87.3, 88.7]` (clamped outside: `exp(-inf)` gives `1.22e-38`, not 0).
/// `x = n ln2 + r`, `|r| <= ln2/2`, `exp(x) = 2^n * p(r)` with the Taylor polynomial of degree 7.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer, kept in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let t = x * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2^n from the integer in t's mantissa (n in [-126, 128)).
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    p * scale
}

/// `x * sigmoid(x)` with [`exp`].
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// [`silu`] of every value of a block (whole vectors for the block's fixed size).
#[inline(always)]
fn silu_all<const N: usize>(v: &mut [f32; N]) {
    for vj in v.iter_mut() {
        *vj = silu(*vj);
    }
}

/// Lanes of the partial maxima and sums (independent accumulators the compiler vectorises).
const LANES: usize = 16;

#[inline(always)]
fn softmax_row_impl(row: &mut [f32], scale: f32) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (mi, x) in m.iter_mut().zip(c.iter_mut()) {
            *x *= scale;
            *mi = if *x > *mi { *x } else { *mi };
        }
    }
    for x in chunks.into_remainder() {
        *x *= scale;
        m[0] = if *x > m[0] { *x } else { m[0] };
    }
    let mx = m
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let mut s = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (si, x) in s.iter_mut().zip(c.iter_mut()) {
            *x = exp(*x - mx);
            *si += *x;
        }
    }
    for x in chunks.into_remainder() {
        *x = exp(*x - mx);
        s[0] += *x;
    }
    let inv = 1.0 / s.iter().sum::<f32>();
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// Per-pixel GroupNorm apply over one pixel's channels: `v = (x - mean) * rstd * gamma + beta`,
/// then `v * (1 + scale) + shift` when `ss` (`[2c]`: scale then shift) is given, then SiLU.
/// `mean`/`rstd` are per channel (the group's statistics repeated over its channels).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn norm_pixel_impl(
    x: &[f32],
    out: &mut [f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    ss: Option<&[f32]>,
    apply_silu: bool,
) {
    let c = x.len();
    let (out, mean, rstd, gamma, beta) = (
        &mut out[..c],
        &mean[..c],
        &rstd[..c],
        &gamma[..c],
        &beta[..c],
    );
    // Blocks of 16 channels as fixed-size arrays: each loop below becomes whole vectors (a loop
    // over `c` channels would leave a layer's 16-48 channels to the scalar remainder of an
    // unrolled vector loop); the arithmetic per element is the same in the block and the tail.
    let one = |ch: usize, v: f32| -> f32 {
        let mut v = (v - mean[ch]) * rstd[ch] * gamma[ch] + beta[ch];
        if let Some(ss) = ss {
            v = v * (1.0 + ss[ch]) + ss[c + ch];
        }
        v
    };
    let mut ch = 0;
    while ch + 16 <= c {
        let mut v = [0.0f32; 16];
        norm_block16(&x[ch..ch + 16], &mut v, ch, c, mean, rstd, gamma, beta, ss);
        if apply_silu {
            silu_all(&mut v);
        }
        out[ch..ch + 16].copy_from_slice(&v);
        ch += 16;
    }
    for k in ch..c {
        let v = one(k, x[k]);
        out[k] = if apply_silu { silu(v) } else { v };
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_row_avx2(row: &mut [f32], scale: f32) {
    softmax_row_impl(row, scale)
}

/// In place: `row = softmax(scale * row)`, f32, max-subtracted.
pub fn softmax_row(row: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { softmax_row_avx2(row, scale) };
    }
    softmax_row_impl(row, scale)
}

/// `d = a + b`, element-wise (blocks of 16 as whole vectors).
#[inline]
pub fn add_into(d: &mut [f32], a: &[f32], b: &[f32]) {
    let n = d.len();
    let (a, b) = (&a[..n], &b[..n]);
    let blocks = n / 16 * 16;
    for ((db, ab), bb) in d[..blocks]
        .chunks_exact_mut(16)
        .zip(a[..blocks].chunks_exact(16))
        .zip(b[..blocks].chunks_exact(16))
    {
        let db: &mut [f32; 16] = db.try_into().unwrap();
        let (ab, bb): (&[f32; 16], &[f32; 16]) = (ab.try_into().unwrap(), bb.try_into().unwrap());
        for j in 0..16 {
            db[j] = ab[j] + bb[j];
        }
    }
    for j in blocks..n {
        d[j] = a[j] + b[j];
    }
}

/// The GroupNorm apply ([`norm_pixel_impl`]) over consecutive pixels of `c = mean.len()`
/// channels each (one dispatch for the whole run): `x` and `out` hold whole pixels.
#[allow(clippy::too_many_arguments)]
pub fn norm_pixels(
    x: &[f32],
    out: &mut [f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    ss: Option<&[f32]>,
    apply_silu: bool,
) {
    let c = mean.len();
    assert!(c > 0 && x.len().is_multiple_of(c) && out.len() == x.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { norm_pixels_avx512(x, out, mean, rstd, gamma, beta, ss, apply_silu) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { norm_pixels_avx2(x, out, mean, rstd, gamma, beta, ss, apply_silu) };
    }
    norm_pixels_impl(x, out, mean, rstd, gamma, beta, ss, apply_silu)
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn norm_pixels_avx512(
    x: &[f32],
    out: &mut [f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    ss: Option<&[f32]>,
    apply_silu: bool,
) {
    norm_pixels_impl(x, out, mean, rstd, gamma, beta, ss, apply_silu)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn norm_pixels_impl(
    x: &[f32],
    out: &mut [f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    ss: Option<&[f32]>,
    apply_silu: bool,
) {
    let c = mean.len();
    if c.is_multiple_of(16) {
        // Runs of 64 values (four 16-channel vectors, of one pixel or of consecutive ones) as
        // one block: four independent chains through the exp polynomial and the division, which
        // the core overlaps (one vector at a time left it waiting on each chain's latency). The
        // arithmetic per value is that of `norm_pixel_impl`.
        let n = x.len();
        let (x, out) = (&x[..n], &mut out[..n]);
        let mut i = 0;
        while i + 64 <= n {
            let xs: &[f32; 64] = x[i..i + 64].try_into().unwrap();
            let mut v = [0.0f32; 64];
            for q in 0..4 {
                let ch = (i + 16 * q) % c;
                norm_block16(
                    &xs[16 * q..16 * q + 16],
                    &mut v[16 * q..16 * q + 16],
                    ch,
                    c,
                    mean,
                    rstd,
                    gamma,
                    beta,
                    ss,
                );
            }
            if apply_silu {
                silu_all(&mut v);
            }
            out[i..i + 64].copy_from_slice(&v);
            i += 64;
        }
        while i < n {
            let mut v = [0.0f32; 16];
            norm_block16(&x[i..i + 16], &mut v, i % c, c, mean, rstd, gamma, beta, ss);
            if apply_silu {
                silu_all(&mut v);
            }
            out[i..i + 16].copy_from_slice(&v);
            i += 16;
        }
        return;
    }
    for (xi, o) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        norm_pixel_impl(xi, o, mean, rstd, gamma, beta, ss, apply_silu);
    }
}

/// The affine (+ scale-shift) part of [`norm_pixel_impl`] for channels `ch..ch + 16` of a pixel
/// of `c` channels: `x` and `v` hold those 16 values.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn norm_block16(
    x: &[f32],
    v: &mut [f32],
    ch: usize,
    c: usize,
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    ss: Option<&[f32]>,
) {
    let r = ch..ch + 16;
    let xs: &[f32; 16] = x.try_into().unwrap();
    let v: &mut [f32; 16] = v.try_into().unwrap();
    let (m, rs): (&[f32; 16], &[f32; 16]) = (
        mean[r.clone()].try_into().unwrap(),
        rstd[r.clone()].try_into().unwrap(),
    );
    let (g, b): (&[f32; 16], &[f32; 16]) = (
        gamma[r.clone()].try_into().unwrap(),
        beta[r.clone()].try_into().unwrap(),
    );
    for j in 0..16 {
        v[j] = (xs[j] - m[j]) * rs[j] * g[j] + b[j];
    }
    if let Some(ss) = ss {
        let sc: &[f32; 16] = ss[r].try_into().unwrap();
        let sh: &[f32; 16] = ss[c + ch..c + ch + 16].try_into().unwrap();
        for j in 0..16 {
            v[j] = v[j] * (1.0 + sc[j]) + sh[j];
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn norm_pixels_avx2(
    x: &[f32],
    out: &mut [f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    ss: Option<&[f32]>,
    apply_silu: bool,
) {
    norm_pixels_impl(x, out, mean, rstd, gamma, beta, ss, apply_silu)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`exp`] against `f32::exp` over the softmax range and beyond: within 2 ulp.
    #[test]
    fn exp_is_within_two_ulp_of_the_library_exp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            let ulp = (want.to_bits() as f64 - got.to_bits() as f64).abs();
            worst = worst.max(ulp);
            x += 0.001_37;
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1.3e-38);
    }

    /// The vectorised softmax against the plain one at ragged lengths.
    #[test]
    fn softmax_row_equals_the_plain_softmax() {
        for len in [1usize, 7, 16, 17, 100, 1024] {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3)
                .collect();
            let scale = 0.125;
            let m = row
                .iter()
                .map(|v| v * scale)
                .fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = row.iter().map(|v| ((v * scale - m) as f64).exp()).collect();
            let s: f64 = e.iter().sum();
            let mut got = row.clone();
            softmax_row(&mut got, scale);
            for (g, w) in got.iter().zip(&e) {
                assert!(
                    (*g as f64 - w / s).abs() <= 1e-6 * (w / s) + 1e-12,
                    "{len}: {g} vs {}",
                    w / s
                );
            }
        }
    }
}
