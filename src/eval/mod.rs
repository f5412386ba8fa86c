//! Evaluation of a generated set against a reference set in a feature space: the Fréchet
//! distance of Gaussians fitted to the features, precision and recall (Kynkäänniemi et al.
//! 2019) and density and coverage (Naeem et al. 2020) with `k` nearest neighbours.
//!
//! Definitions (those of pytorch-fid and the `prdc` package):
//! - `fd = |mu_r - mu_f|^2 + tr C_r + tr C_f - 2 tr (C_r C_f)^(1/2)`, unbiased covariances;
//! - `r_i`: distance from reference point `i` to its `k`-th nearest other reference point
//!   (likewise `s_j` within the generated set);
//! - precision: fraction of generated points within `r_i` of some reference point `i`;
//! - recall: fraction of reference points within `s_j` of some generated point `j`;
//! - density: `1/k` times the mean over generated points of how many reference balls hold them;
//! - coverage: fraction of reference points whose nearest generated point lies within `r_i`.
//!
//! "Within" is strict (`<`). Distances are Euclidean, accumulated in f64. Nearest-neighbour
//! searches run over blocks of rows, so memory grows with the number of points, never with its
//! square: 50,000 x 50,000 needs no distance matrix.

mod features;
mod prdc;
mod run;

pub use features::{encode_images, load_features, FeatureCache};
pub use prdc::{prdc, Prdc};
pub use run::{run_extractor, run_sets, RunSets};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::linalg::symeig::sym_eig;

/// A set of `n` feature vectors of dimension `dim`, row-major f32.
#[derive(Clone, Debug)]
pub struct FeatureSet {
    pub n: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl FeatureSet {
    /// A set from `[n, dim]` values; `what` names it in errors. Non-finite values are errors
    /// naming the row.
    pub fn new(what: &str, n: usize, dim: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != n * dim || dim == 0 {
            return Err(Error::arg(format!(
                "{what}: {} values are not {n} rows of dimension {dim} (dimension must be >= 1)",
                data.len()
            )));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::arg(format!(
                "{what}: non-finite feature {} in row {}, dimension {}",
                data[i],
                i / dim,
                i % dim
            )));
        }
        Ok(FeatureSet { n, dim, data })
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> FeatureSet {
        let mut data = Vec::with_capacity(indices.len() * self.dim);
        for &i in indices {
            data.extend_from_slice(self.row(i));
        }
        FeatureSet {
            n: indices.len(),
            dim: self.dim,
            data,
        }
    }
}

/// All metrics of a generated set against a reference set.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Metrics {
    pub fd: f64,
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
    /// Nearest neighbours of the k-NN metrics.
    pub k: usize,
    pub n_real: usize,
    pub n_fake: usize,
    pub dim: usize,
}

/// Every metric of `fake` against `real` with `k` nearest neighbours.
pub fn evaluate(real: &FeatureSet, fake: &FeatureSet, k: usize) -> Result<Metrics> {
    let fd = frechet_distance(real, fake)?;
    let p = prdc(real, fake, k)?;
    Ok(Metrics {
        fd,
        precision: p.precision,
        recall: p.recall,
        density: p.density,
        coverage: p.coverage,
        k,
        n_real: real.n,
        n_fake: fake.n,
        dim: real.dim,
    })
}

/// Mean and unbiased covariance (`n - 1`) of a set, f64.
fn mean_cov(set: &FeatureSet) -> (Vec<f64>, Vec<f64>) {
    let d = set.dim;
    let mut mean = vec![0.0f64; d];
    for i in 0..set.n {
        for (m, &v) in mean.iter_mut().zip(set.row(i)) {
            *m += v as f64;
        }
    }
    for m in &mut mean {
        *m /= set.n as f64;
    }
    let mut cov = vec![0.0f64; d * d];
    let mut centred = vec![0.0f64; d];
    for i in 0..set.n {
        for ((c, &v), m) in centred.iter_mut().zip(set.row(i)).zip(&mean) {
            *c = v as f64 - m;
        }
        for r in 0..d {
            let cr = centred[r];
            let row = &mut cov[r * d..r * d + r + 1];
            for (x, &cc) in row.iter_mut().zip(&centred[..=r]) {
                *x += cr * cc;
            }
        }
    }
    let denom = (set.n - 1) as f64;
    for r in 0..d {
        for c in 0..=r {
            let v = cov[r * d + c] / denom;
            cov[r * d + c] = v;
            cov[c * d + r] = v;
        }
    }
    (mean, cov)
}

/// `a * b` for row-major `d x d` matrices.
fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            if aik == 0.0 {
                continue;
            }
            for (o, &bv) in out[i * d..(i + 1) * d]
                .iter_mut()
                .zip(&b[k * d..(k + 1) * d])
            {
                *o += aik * bv;
            }
        }
    }
    out
}

/// Fréchet distance between Gaussians fitted to the two sets. `tr (C_r C_f)^(1/2)` is computed
/// as `tr (S C_f S)^(1/2)` with `S = C_r^(1/2)`, both by symmetric eigen-decompositions (the
/// same trace; negative eigenvalues of round-off are clipped at 0). Needs 2 rows per set.
pub fn frechet_distance(real: &FeatureSet, fake: &FeatureSet) -> Result<f64> {
    if real.dim != fake.dim {
        return Err(Error::arg(format!(
            "reference features have dimension {}, generated features {}",
            real.dim, fake.dim
        )));
    }
    if real.n < 2 || fake.n < 2 {
        return Err(Error::arg(format!(
            "the Fréchet distance needs at least 2 samples per set (reference {}, generated {})",
            real.n, fake.n
        )));
    }
    let d = real.dim;
    let (mu_r, c_r) = mean_cov(real);
    let (mu_f, c_f) = mean_cov(fake);
    let eig = sym_eig(&c_r, d)?;
    // S = V diag(sqrt(max(w, 0))) V^T
    let mut vs = eig.vectors.clone();
    for r in 0..d {
        for (j, w) in eig.values.iter().enumerate() {
            vs[r * d + j] *= w.max(0.0).sqrt();
        }
    }
    let mut vt = vec![0.0; d * d];
    for r in 0..d {
        for c in 0..d {
            vt[c * d + r] = eig.vectors[r * d + c];
        }
    }
    let s = matmul(&vs, &vt, d);
    let m = matmul(&matmul(&s, &c_f, d), &s, d);
    let m_sym: Vec<f64> = (0..d * d)
        .map(|i| 0.5 * (m[i] + m[(i % d) * d + i / d]))
        .collect();
    let tr_sqrt: f64 = sym_eig(&m_sym, d)?
        .values
        .iter()
        .map(|w| w.max(0.0).sqrt())
        .sum();
    let diff: f64 = mu_r.iter().zip(&mu_f).map(|(a, b)| (a - b) * (a - b)).sum();
    let tr_r: f64 = (0..d).map(|i| c_r[i * d + i]).sum();
    let tr_f: f64 = (0..d).map(|i| c_f[i * d + i]).sum();
    Ok(diff + tr_r + tr_f - 2.0 * tr_sqrt)
}
