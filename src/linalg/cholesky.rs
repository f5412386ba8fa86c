//! Dense f64 linear algebra for the Kronecker-factored posterior: Cholesky factorisation and the
//! triangular solve that turns standard normals into draws. Matrices are row-major `n x n`.

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Rows below which the column update runs on one thread.
const PARALLEL_MIN_ROWS: usize = 192;

#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four partial sums: shorter dependency chains, and the compiler vectorises them.
    let mut s = [0.0f64; 4];
    let n4 = a.len() / 4 * 4;
    for (ca, cb) in a[..n4].chunks_exact(4).zip(b[..n4].chunks_exact(4)) {
        for i in 0..4 {
            s[i] += ca[i] * cb[i];
        }
    }
    let mut tail = 0.0;
    for i in n4..a.len() {
        tail += a[i] * b[i];
    }
    (s[0] + s[1]) + (s[2] + s[3]) + tail
}

/// The lower Cholesky factor `L` of a symmetric positive-definite `p` (`p = L L^T`), row-major
/// `n x n` with zeros above the diagonal. Only the lower triangle of `p` is read. A matrix that is
/// not positive definite is an error naming the failing pivot.
pub fn cholesky_lower(p: &[f64], n: usize) -> Result<Vec<f64>> {
    assert_eq!(p.len(), n * n, "cholesky_lower: matrix is not {n}x{n}");
    let mut l = vec![0.0f64; n * n];
    for i in 0..n {
        l[i * n..i * n + i + 1].copy_from_slice(&p[i * n..i * n + i + 1]);
    }
    // Left-looking by columns: column j needs rows of L left of column j only.
    for j in 0..n {
        let (upper, lower) = l.split_at_mut((j + 1) * n);
        let row_j = &mut upper[j * n..];
        let d = row_j[j] - dot(&row_j[..j], &row_j[..j]);
        if !(d > 0.0 && d.is_finite()) {
            return Err(Error::arg(format!(
                "matrix of size {n} is not positive definite (pivot {j} is {d:e})"
            )));
        }
        let ljj = d.sqrt();
        row_j[j] = ljj;
        let row_j = &row_j[..j];
        let update = |row: &mut [f64]| row[j] = (row[j] - dot(&row[..j], row_j)) / ljj;
        if n - j > PARALLEL_MIN_ROWS {
            lower.par_chunks_mut(n).for_each(update);
        } else {
            lower.chunks_mut(n).for_each(update);
        }
    }
    Ok(l)
}

/// Solves `L^T x = z` in place (`z` becomes `x`) for the lower-triangular row-major `l`. With
/// `z ~ N(0, I)`, `x ~ N(0, (L L^T)^{-1})`.
pub fn solve_lower_transpose_in_place(l: &[f64], n: usize, z: &mut [f64]) {
    assert_eq!(l.len(), n * n);
    assert_eq!(z.len(), n);
    // Row i of L is column i of L^T: eliminate x_i from the equations of rows k < i.
    for i in (0..n).rev() {
        let row = &l[i * n..i * n + i + 1];
        let xi = z[i] / row[i];
        z[i] = xi;
        for (zk, lik) in z[..i].iter_mut().zip(&row[..i]) {
            *zk -= lik * xi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize) -> Vec<f64> {
        // M M^T + n I from a deterministic pseudo-random M.
        let m: Vec<f64> = (0..n * n)
            .map(|i| (((i * 7919) % 103) as f64 / 51.0) - 1.0)
            .collect();
        let mut p = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                p[i * n + j] = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum::<f64>()
                    + if i == j { n as f64 } else { 0.0 };
            }
        }
        p
    }

    #[test]
    fn cholesky_reconstructs_the_matrix() {
        for n in [1, 5, 300] {
            let p = spd(n);
            let l = cholesky_lower(&p, n).unwrap();
            let mut err = 0.0f64;
            for i in 0..n {
                for j in 0..n {
                    let v: f64 = (0..n).map(|k| l[i * n + k] * l[j * n + k]).sum();
                    err = err.max((v - p[i * n + j]).abs());
                    if j > i {
                        assert_eq!(l[i * n + j], 0.0);
                    }
                }
            }
            assert!(err < 1e-9 * n as f64 * n as f64, "n {n}: {err}");
        }
    }

    #[test]
    fn solve_inverts_l_transpose() {
        let n = 40;
        let l = cholesky_lower(&spd(n), n).unwrap();
        let x0: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
        // z = L^T x0
        let mut z: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|k| l[k * n + i] * x0[k]).sum())
            .collect();
        solve_lower_transpose_in_place(&l, n, &mut z);
        for (a, b) in z.iter().zip(&x0) {
            assert!((a - b).abs() < 1e-10);
        }
    }

    #[test]
    fn indefinite_matrix_is_an_error() {
        let p = [1.0, 2.0, 2.0, 1.0];
        let e = cholesky_lower(&p, 2).unwrap_err().to_string();
        assert!(e.contains("not positive definite"), "{e}");
    }
}
