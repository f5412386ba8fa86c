//! Uncertainty estimators over member features.
//!
//! Every sample has `K` members (member 0 is the MAP model, members 1.. are weight draws of
//! the last-layer posterior), each mapped to a `D`-dimensional feature vector `e_k` (CLIP image
//! embedding in the paper). Features of `N` samples are laid out `[N, K, D]`, row-major, f32.
//!
//! The paper's estimator (Jazbec et al. 2025, semantic likelihood) is the entropy of the Gaussian
//! `N(mean_k e_k, diag(v) + sigma2 I)`:
//! `v_d = mean_k(e_d^2) - mean_k(e_d)^2` (biased, over all `K` members), clipped at 0, and
//! `U = 0.5 * sum_d log(v_d + sigma2) + 0.5 * D * (log(2 pi) + 1)`.
//! Lower `U` means more certain.

use std::cmp::Ordering;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Options of the Gaussian entropy estimator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EntropyOptions {
    /// Variance added to every feature dimension (`sigma^2` of the paper), > 0.
    pub sigma2: f64,
}

impl Default for EntropyOptions {
    fn default() -> Self {
        EntropyOptions { sigma2: 1e-3 }
    }
}

/// An uncertainty estimator: maps `[N, K, D]` member features to one score per sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Estimator {
    /// Entropy of the diagonal Gaussian semantic likelihood (the paper's default).
    GaussianEntropy(EntropyOptions),
}

impl Default for Estimator {
    fn default() -> Self {
        Estimator::GaussianEntropy(EntropyOptions::default())
    }
}

impl Estimator {
    /// Short name, as written into score tables.
    pub fn name(&self) -> &'static str {
        match self {
            Estimator::GaussianEntropy(_) => "gaussian_entropy",
        }
    }

    /// The estimator's name and parameters, as recorded in score tables and summaries
    /// (`{"estimator": name, ...parameters}`).
    pub fn meta(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("estimator".into(), self.name().into());
        match self {
            Estimator::GaussianEntropy(opts) => m.insert("sigma2".into(), opts.sigma2.into()),
        };
        m
    }

    /// Check the estimator's parameters (before any work that needs them).
    pub fn validate(&self) -> Result<()> {
        match self {
            Estimator::GaussianEntropy(o) if !(o.sigma2.is_finite() && o.sigma2 > 0.0) => {
                Err(Error::arg(format!(
                    "--sigma2 {}: sigma^2 of the Gaussian entropy must be finite and > 0",
                    o.sigma2
                )))
            }
            Estimator::GaussianEntropy(_) => Ok(()),
        }
    }

    /// The estimator [`Estimator::meta`] describes.
    pub fn from_meta(meta: &serde_json::Value) -> Result<Self> {
        match meta["estimator"].as_str() {
            Some("gaussian_entropy") => match meta["sigma2"].as_f64() {
                Some(sigma2) => Ok(Estimator::GaussianEntropy(EntropyOptions { sigma2 })),
                None => Err(Error::arg(format!("estimator {meta}: no sigma2"))),
            },
            _ => Err(Error::arg(format!("unknown estimator {meta}"))),
        }
    }

    /// Score `n` samples of `k` members with `d`-dimensional features (`[N, K, D]`, f32).
    /// Lower is more certain.
    pub fn score(&self, features: &[f32], n: usize, k: usize, d: usize) -> Result<Vec<f64>> {
        match self {
            Estimator::GaussianEntropy(opts) => gaussian_entropy(features, n, k, d, opts),
        }
    }

    /// [`Estimator::score`] where the features are (`[N * K, D]` sample-major on `b`): one
    /// reduction on the backend, only the `N` scores come back (as f32 values). A sample with a
    /// non-finite feature gets a NaN score.
    pub fn score_on(&self, b: &dyn Backend, features: &Tensor, k: usize) -> Result<Vec<f64>> {
        match self {
            Estimator::GaussianEntropy(opts) => Ok(b
                .member_entropy(features, k, opts.sigma2)?
                .into_iter()
                .map(f64::from)
                .collect()),
        }
    }
}

/// Gaussian entropy of each sample's member features, in nats.
///
/// `features`: `[N, K, D]` row-major f32 (member 0 = MAP, included in the variance like every
/// other member). One pass over the members: per dimension the sums of `e` and `e^2` are
/// accumulated in f64, member after member, then `v_d = S2 / K - (S1 / K)^2`, clipped at 0.
/// f64 matters: features near 1e3 lose the whole variance to cancellation in f32.
///
/// Errors: `K < 2` (a variance needs two members), `D == 0`, a length that is not `N*K*D`, a
/// `sigma2` that is not finite and positive, or a non-finite feature (named by sample, member and
/// dimension).
pub fn gaussian_entropy(
    features: &[f32],
    n: usize,
    k: usize,
    d: usize,
    opts: &EntropyOptions,
) -> Result<Vec<f64>> {
    if k < 2 {
        return Err(Error::arg(format!(
            "gaussian entropy needs at least 2 members per sample (MAP + >= 1 posterior draw), got K = {k}"
        )));
    }
    if d == 0 {
        return Err(Error::arg("gaussian entropy: feature dimension D is 0"));
    }
    let expected = n
        .checked_mul(k)
        .and_then(|n| n.checked_mul(d))
        .ok_or_else(|| Error::arg(format!("gaussian entropy: shape [{n}, {k}, {d}] overflows")))?;
    if features.len() != expected {
        return Err(Error::arg(format!(
            "gaussian entropy: {} feature values, expected N*K*D = {n}*{k}*{d} = {expected}",
            features.len()
        )));
    }
    if !(opts.sigma2.is_finite() && opts.sigma2 > 0.0) {
        return Err(Error::arg(format!(
            "gaussian entropy: sigma2 must be finite and > 0, got {}",
            opts.sigma2
        )));
    }
    if let Some(i) = features.iter().position(|v| !v.is_finite()) {
        return Err(Error::arg(format!(
            "gaussian entropy: non-finite feature {} at sample {}, member {}, dimension {}",
            features[i],
            i / (k * d),
            i / d % k,
            i % d
        )));
    }

    let constant = 0.5 * d as f64 * ((2.0 * std::f64::consts::PI).ln() + 1.0);
    let kf = k as f64;
    let mut s1 = vec![0.0f64; d];
    let mut s2 = vec![0.0f64; d];
    let mut out = Vec::with_capacity(n);
    for sample in features.chunks_exact(k * d) {
        s1.fill(0.0);
        s2.fill(0.0);
        for member in sample.chunks_exact(d) {
            for ((a1, a2), &e) in s1.iter_mut().zip(s2.iter_mut()).zip(member) {
                let e = e as f64;
                *a1 += e;
                *a2 += e * e;
            }
        }
        let mut log_det = 0.0f64;
        for (&a1, &a2) in s1.iter().zip(&s2) {
            let mean = a1 / kf;
            let v = (a2 / kf - mean * mean).max(0.0);
            log_det += (v + opts.sigma2).ln();
        }
        out.push(0.5 * log_det + constant);
    }
    Ok(out)
}

/// Rank of every score in ascending order: `rank[i] = 0` for the smallest score (the most
/// certain sample). Ties keep index order; NaN scores rank after all numbers.
pub fn rank_ascending(scores: &[f64]) -> Vec<usize> {
    let order = order_ascending(scores);
    let mut rank = vec![0; scores.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    rank
}

/// Sample indices sorted by ascending score (most certain first); ties keep index order, NaN
/// last. The inverse permutation of [`rank_ascending`].
pub fn order_ascending(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| cmp_nan_last(scores[a], scores[b]));
    order
}

fn cmp_nan_last(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_members_give_log_sigma2_per_dimension() {
        let f = vec![0.3f32; 4 * 3];
        let u = gaussian_entropy(&f, 1, 4, 3, &EntropyOptions { sigma2: 0.01 }).unwrap();
        let want = 1.5 * 0.01f64.ln() + 1.5 * ((2.0 * std::f64::consts::PI).ln() + 1.0);
        assert!((u[0] - want).abs() < 1e-12, "{} vs {want}", u[0]);
    }

    #[test]
    fn ranks_and_order_are_inverse_with_ties_by_index() {
        let s = [3.0, 1.0, f64::NAN, 1.0, -2.0];
        assert_eq!(order_ascending(&s), vec![4, 1, 3, 0, 2]);
        assert_eq!(rank_ascending(&s), vec![3, 1, 4, 2, 0]);
    }
}
