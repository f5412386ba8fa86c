//! GroupNorm (NHWC) and LayerNorm on the CPU. Statistics are accumulated in f64 (biased
//! variance, as PyTorch), the affine apply in f32 (vectorised, SiLU with [`fastmath::exp`]).

use rayon::prelude::*;

use super::fastmath;

/// Per-sample, per-group `(mean, 1/sqrt(var + eps))` of `[n, hw, c]` data, indexed
/// `sample * groups + group`; of `x + add[sample]` (the sum rounded to f32 first, as a separate
/// add would store it) when `add` (`[n, c]`) is given, without forming the sum.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_stats(
    x: &[f32],
    add: Option<&[f32]>,
    n: usize,
    hw: usize,
    c: usize,
    groups: usize,
    eps: f32,
) -> Vec<(f32, f32)> {
    let cg = c / groups;
    let per = hw * c;
    let zeros = vec![0.0f32; c];
    (0..n)
        .into_par_iter()
        .flat_map_iter(|b| {
            let xs = &x[b * per..(b + 1) * per];
            let mut s = vec![0.0f64; c];
            let mut ss = vec![0.0f64; c];
            // Adding 0.0 leaves every value (but a -0.0) as it is, and its square's sum too.
            let ab = add.map_or(&zeros[..], |a| &a[b * c..(b + 1) * c]);
            channel_sums(xs, ab, &mut s, &mut ss);
            let cnt = (hw * cg) as f64;
            (0..groups)
                .map(|g| {
                    let sum: f64 = s[g * cg..(g + 1) * cg].iter().sum();
                    let sq: f64 = ss[g * cg..(g + 1) * cg].iter().sum();
                    let mean = sum / cnt;
                    let var = (sq / cnt - mean * mean).max(0.0);
                    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Per channel, the f64 sums of the values `x + add` (f32) and of their squares over the
/// pixels of `xs` (`c = s.len()` channels per pixel), added to `s` and `ss`; vectorised where the
/// CPU allows (the same additions in the same order either way).
fn channel_sums(xs: &[f32], add: &[f32], s: &mut [f64], ss: &mut [f64]) {
    /// Blocks of `W` channels (whole vectors): every pixel of the block's channels added into
    /// accumulators held in registers, channel block by channel block. Per channel the additions
    /// are those of a plain loop over the pixels, in pixel order.
    #[inline(always)]
    fn block<const W: usize>(
        xs: &[f32],
        add: &[f32],
        s: &mut [f64],
        ss: &mut [f64],
        k: usize,
        c: usize,
    ) {
        let mut sa: [f64; W] = s[k..k + W].try_into().unwrap();
        let mut qa: [f64; W] = ss[k..k + W].try_into().unwrap();
        let ab: &[f32; W] = add[k..k + W].try_into().unwrap();
        for px in xs.chunks_exact(c) {
            let pb: &[f32; W] = px[k..k + W].try_into().unwrap();
            for j in 0..W {
                let v = (pb[j] + ab[j]) as f64;
                sa[j] += v;
                qa[j] += v * v;
            }
        }
        s[k..k + W].copy_from_slice(&sa);
        ss[k..k + W].copy_from_slice(&qa);
    }
    #[inline(always)]
    fn imp(xs: &[f32], add: &[f32], s: &mut [f64], ss: &mut [f64]) {
        let c = s.len();
        let (ss, add) = (&mut ss[..c], &add[..c]);
        let mut k = 0;
        while k + 16 <= c {
            block::<16>(xs, add, s, ss, k, c);
            k += 16;
        }
        while k + 8 <= c {
            block::<8>(xs, add, s, ss, k, c);
            k += 8;
        }
        for ch in k..c {
            for px in xs.chunks_exact(c) {
                let v = (px[ch] + add[ch]) as f64;
                s[ch] += v;
                ss[ch] += v * v;
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(xs: &[f32], add: &[f32], s: &mut [f64], ss: &mut [f64]) {
        imp(xs, add, s, ss)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(xs: &[f32], add: &[f32], s: &mut [f64], ss: &mut [f64]) {
        imp(xs, add, s, ss)
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { avx512(xs, add, s, ss) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { avx2(xs, add, s, ss) };
        }
    }
    imp(xs, add, s, ss)
}

/// GroupNorm over `[n, hw, c]` data with `groups` groups, optionally followed by SiLU.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_nhwc(
    x: &[f32],
    n: usize,
    hw: usize,
    c: usize,
    groups: usize,
    eps: f32,
    gamma: &[f32],
    beta: &[f32],
    apply_silu: bool,
) -> Vec<f32> {
    group_norm_modulated(x, n, hw, c, groups, eps, gamma, beta, None, apply_silu)
}

/// [`group_norm_nhwc`] with ADM's scale-shift modulation between the norm and the activation:
/// `v * (1 + ss[b, ch]) + ss[b, c + ch]` for sample `b` when `ss` (`[n, 2c]`) is given.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_modulated(
    x: &[f32],
    n: usize,
    hw: usize,
    c: usize,
    groups: usize,
    eps: f32,
    gamma: &[f32],
    beta: &[f32],
    ss: Option<&[f32]>,
    apply_silu: bool,
) -> Vec<f32> {
    let per_channel = channel_stats(x, None, n, hw, c, groups, eps);
    let mut out = vec![0.0f32; x.len()];
    // Runs of pixels of one sample per task (at most 1024 floats' worth of pixels per run).
    let run = (1024 / c.max(1)).clamp(1, hw.max(1));
    out.par_chunks_mut(hw * c)
        .zip(x.par_chunks(hw * c))
        .enumerate()
        .flat_map(|(b, (o, xs))| {
            o.par_chunks_mut(run * c)
                .zip(xs.par_chunks(run * c))
                .map(move |pair| (b, pair))
        })
        .for_each(|(b, (o, xi))| {
            let mr = &per_channel[b * 2 * c..(b + 1) * 2 * c];
            let ssb = ss.map(|ss| &ss[b * 2 * c..(b + 1) * 2 * c]);
            fastmath::norm_pixels(xi, o, &mr[..c], &mr[c..], gamma, beta, ssb, apply_silu);
        });
    out
}

/// Per sample, the group statistics (of `x + add[sample]` when `add`, `[n, c]`, is given)
/// repeated over each group's channels: `[n, 2c]`, the `c` means then the `c` values
/// `1/sqrt(var + eps)`.
pub fn channel_stats(
    x: &[f32],
    add: Option<&[f32]>,
    n: usize,
    hw: usize,
    c: usize,
    groups: usize,
    eps: f32,
) -> Vec<f32> {
    let cg = c / groups;
    let stats = group_norm_stats(x, add, n, hw, c, groups, eps);
    let mut per_channel = vec![0.0f32; n * 2 * c];
    for (b, mr) in per_channel.chunks_exact_mut(2 * c).enumerate() {
        for ch in 0..c {
            let (mean, rstd) = stats[b * groups + ch / cg];
            mr[ch] = mean;
            mr[c + ch] = rstd;
        }
    }
    per_channel
}

/// LayerNorm over the last dimension `d` of `[rows, d]` data.
pub fn layer_norm(x: &[f32], d: usize, eps: f32, gamma: &[f32], beta: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(o, xi)| {
            let mean = xi.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = xi.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            for i in 0..d {
                o[i] = ((xi[i] as f64 - mean) * rstd) as f32 * gamma[i] + beta[i];
            }
        });
    out
}
