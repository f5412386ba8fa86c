//! GroupNorm (NHWC) and LayerNorm on the CPU. Statistics are accumulated in f64 (biased
//! variance, as PyTorch), the affine apply in f32.

use rayon::prelude::*;

use super::silu;

/// Per-sample, per-group `(mean, 1/sqrt(var + eps))` of `[n, hw, c]` data, indexed
/// `sample * groups + group`.
pub fn group_norm_stats(
    x: &[f32],
    n: usize,
    hw: usize,
    c: usize,
    groups: usize,
    eps: f32,
) -> Vec<(f32, f32)> {
    let cg = c / groups;
    let per = hw * c;
    (0..n)
        .into_par_iter()
        .flat_map_iter(|b| {
            let xs = &x[b * per..(b + 1) * per];
            let mut s = vec![0.0f64; c];
            let mut ss = vec![0.0f64; c];
            for px in xs.chunks_exact(c) {
                for ((a, q), &v) in s.iter_mut().zip(ss.iter_mut()).zip(px) {
                    *a += v as f64;
                    *q += (v as f64) * (v as f64);
                }
            }
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
    let cg = c / groups;
    let stats = group_norm_stats(x, n, hw, c, groups, eps);
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .enumerate()
        .for_each(|(p, (o, xi))| {
            let b = p / hw;
            for ch in 0..c {
                let (mean, rstd) = stats[b * groups + ch / cg];
                let mut v = (xi[ch] - mean) * rstd * gamma[ch] + beta[ch];
                if let Some(ss) = ss {
                    v = v * (1.0 + ss[b * 2 * c + ch]) + ss[b * 2 * c + c + ch];
                }
                o[ch] = if apply_silu { silu(v) } else { v };
            }
        });
    out
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
