//! Precision, recall, density and coverage with `k` nearest neighbours, over blocks of rows.

use rayon::prelude::*;

use super::FeatureSet;
use crate::error::{Error, Result};

/// The four k-NN metrics of a generated set against a reference set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prdc {
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
}

/// Reference rows per parallel task, and generated rows per cache block within a task.
const ROWS_PER_TASK: usize = 32;
const COLUMNS_PER_BLOCK: usize = 256;

/// Squared Euclidean distance, accumulated in f64.
fn dist2(a: &[f32], b: &[f32]) -> f64 {
    let mut s = [0.0f64; 4];
    let n4 = a.len() / 4 * 4;
    for (ca, cb) in a[..n4].chunks_exact(4).zip(b[..n4].chunks_exact(4)) {
        for i in 0..4 {
            let d = ca[i] as f64 - cb[i] as f64;
            s[i] += d * d;
        }
    }
    let mut tail = 0.0;
    for i in n4..a.len() {
        let d = a[i] as f64 - b[i] as f64;
        tail += d * d;
    }
    (s[0] + s[1]) + (s[2] + s[3]) + tail
}

/// Squared distance from every row to its `k`-th nearest other row of the same set: the
/// `(k + 1)`-th smallest squared distance with the row itself (0) counted, as `prdc` does.
pub fn knn_radii2(set: &FeatureSet, k: usize) -> Vec<f64> {
    (0..set.n)
        .into_par_iter()
        .map(|i| {
            let x = set.row(i);
            // The k + 1 smallest values seen, ascending.
            let mut best: Vec<f64> = Vec::with_capacity(k + 2);
            for j in 0..set.n {
                let d = if i == j { 0.0 } else { dist2(x, set.row(j)) };
                if best.len() <= k || d < best[k] {
                    let at = best.partition_point(|&b| b <= d);
                    best.insert(at, d);
                    best.truncate(k + 1);
                }
            }
            best[k]
        })
        .collect()
}

/// Partial sums of the cross pass over a block of reference rows.
struct Partial {
    /// For every generated row: how many reference balls hold it.
    held: Vec<u32>,
    /// Reference rows within some generated row's ball.
    recalled: usize,
    /// Reference rows whose nearest generated row is inside their own ball.
    covered: usize,
}

/// Precision, recall, density and coverage of `fake` against `real` with `k` neighbours.
pub fn prdc(real: &FeatureSet, fake: &FeatureSet, k: usize) -> Result<Prdc> {
    if real.dim != fake.dim {
        return Err(Error::arg(format!(
            "reference features have dimension {}, generated features {}",
            real.dim, fake.dim
        )));
    }
    if k == 0 || real.n <= k || fake.n <= k {
        return Err(Error::arg(format!(
            "k = {k} nearest neighbours need k >= 1 and more than k samples per set (reference {}, generated {})",
            real.n, fake.n
        )));
    }
    let r_real = knn_radii2(real, k);
    let r_fake = knn_radii2(fake, k);
    let empty = || Partial {
        held: vec![0; fake.n],
        recalled: 0,
        covered: 0,
    };
    let rows: Vec<usize> = (0..real.n).collect();
    let total = rows
        .par_chunks(ROWS_PER_TASK)
        .fold(empty, |mut acc, chunk| {
            let mut nearest = vec![f64::INFINITY; chunk.len()];
            let mut recalled = vec![false; chunk.len()];
            for lo in (0..fake.n).step_by(COLUMNS_PER_BLOCK) {
                let hi = (lo + COLUMNS_PER_BLOCK).min(fake.n);
                for (c, &i) in chunk.iter().enumerate() {
                    let x = real.row(i);
                    for (j, &r_j) in r_fake.iter().enumerate().take(hi).skip(lo) {
                        let d = dist2(x, fake.row(j));
                        if d < r_real[i] {
                            acc.held[j] += 1;
                        }
                        if d < r_j {
                            recalled[c] = true;
                        }
                        nearest[c] = nearest[c].min(d);
                    }
                }
            }
            acc.recalled += recalled.iter().filter(|&&r| r).count();
            acc.covered += chunk
                .iter()
                .zip(&nearest)
                .filter(|(&i, &d)| d < r_real[i])
                .count();
            acc
        })
        .reduce(empty, |mut a, b| {
            for (x, y) in a.held.iter_mut().zip(&b.held) {
                *x += y;
            }
            a.recalled += b.recalled;
            a.covered += b.covered;
            a
        });
    let n_fake = fake.n as f64;
    Ok(Prdc {
        precision: total.held.iter().filter(|&&h| h > 0).count() as f64 / n_fake,
        recall: total.recalled as f64 / real.n as f64,
        density: total.held.iter().map(|&h| h as f64).sum::<f64>() / (k as f64 * n_fake),
        coverage: total.covered as f64 / real.n as f64,
    })
}
